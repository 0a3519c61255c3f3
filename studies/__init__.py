"""Studies: each module runs one experiment with pathkl's public API; results go outside the package."""
