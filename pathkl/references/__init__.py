"""Exact reference distributions: every closed form a path-space KL needs, at every noise level."""

from .gaussian import GaussianReference

__all__ = ["GaussianReference"]
