"""Exact reference distributions: every closed form a path-space KL needs, at every noise level."""

from .gaussian import GaussianReference
from .mixture import MixtureKernel, MixtureReference

__all__ = ["GaussianReference", "MixtureKernel", "MixtureReference"]
