"""pathkl: exact path-space KL divergences for Gaussian diffusion models (see README.md).

Importing the package loads nothing else (torch included): import the modules you need.
"""

__version__ = "0.1.0"
