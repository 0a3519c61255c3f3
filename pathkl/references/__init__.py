"""Exact reference distributions: every closed form a path-space KL needs, at every noise level."""

from .empirical import EmpiricalReference
from .gaussian import GaussianReference
from .mixture import MixtureKernel, MixtureReference
from .product import ProductReference

__all__ = ["EmpiricalReference", "GaussianReference", "MixtureKernel", "MixtureReference", "ProductReference"]
