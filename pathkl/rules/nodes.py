"""Rules for ``E_{N(0, I_d)} f``: tensor Gauss-Hermite and trapezoid lattices, the nodes every
quadrature in pathkl is built from (pathkl.rules.quadrature places them in each component's
coordinates; docs/errors.md says how they are paired for error estimates)."""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.special
import torch

from ..errors import InputError
from ..schedules import DTYPE

#: Lattice ball radius: the standard normal density there is exp(-R^2 / 2) = 1e-18 of its peak.
RADIUS = math.sqrt(2.0 * math.log(1e18))
#: Largest lattice (nodes per component) a rule may build: ~1 GB of work arrays per step.
MAX_LATTICE = 4e5


@functools.lru_cache(maxsize=32)
def hermite(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor Gauss-Hermite rule for E_{N(0, I_d)}: nodes (n^d, d), weights (n^d,) summing to 1."""
    x, w = scipy.special.roots_hermitenorm(n)  # numpy's hermegauss overflows beyond ~150 nodes
    w = w / w.sum()
    grids = np.meshgrid(*([x] * d), indexing="ij")
    weights = functools.reduce(np.multiply.outer, [w] * d).reshape(-1)
    nodes = np.stack([g.reshape(-1) for g in grids], axis=1)
    # Product nodes of weight < 1e-18 carry less than 1e-18 * n^d of the mass: dropped.
    keep = weights >= 1e-18
    nodes, weights = nodes[keep], weights[keep]
    return torch.from_numpy(nodes).to(DTYPE), torch.from_numpy(weights).to(DTYPE)


def lattice_size(h: float, d: int) -> float:
    """About how many nodes ``h Z^d`` has inside the ball of radius 9.1."""
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * (RADIUS / h) ** d


@functools.lru_cache(maxsize=64)
def lattice(h: float, d: int, offset: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trapezoid rule for E_{N(0, I_d)} on ``h (Z^d + offset / 2)`` inside the ball of radius 9.1
    (``offset`` per axis 0 or 1; None: all 0): nodes, weights."""
    size = lattice_size(h, d)
    if size > MAX_LATTICE:
        raise InputError(f"a lattice of {size:.1e} nodes per component (d = {d}, spacing {h:.3g}) does not "
                         f"fit in memory")
    m = int(RADIUS / h)
    axes = [(np.arange(-m - 1, m + 1) + 0.5) * h if half else np.arange(-m, m + 1) * h for half in offset or (0,) * d]
    nodes = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    nodes = nodes[(nodes**2).sum(1) <= RADIUS**2]
    weights = np.exp(-0.5 * (nodes**2).sum(1))
    return torch.from_numpy(nodes).to(DTYPE), torch.from_numpy(weights / weights.sum()).to(DTYPE)


def cosets(d: int) -> tuple[tuple[int, ...], ...]:
    """The offsets (halves of h per axis, :func:`lattice`) of the lattices a paired rule uses: ``0``,
    the centres ``(1, ..., 1)``, and the half-shifts ``e_i`` along each axis but the last.

    The trapezoid rule on ``h (Z^d + c / 2)`` has error ``sum_(k != 0) fhat(2 pi k / h) (-1)^(k . c)``,
    so the difference of two offsets sees the aliasing terms of the classes ``sigma = k mod 2`` on which
    their characters differ, and no single pair sees them all: the pair's mean, the value, keeps the
    classes of even ``|sigma|``, ``(1, 1)`` among them, which hold the leading terms of an integrand
    that varies along a diagonal (a switching band at 45 degrees: error 1.6e-7 at h = 0.3 where the
    pair's difference was 3e-17). Against ``0``, the centres see every class of odd ``|sigma|`` and
    ``e_i`` every class with ``sigma_i = 1``, so together every class but 0 (docs/errors.md)."""
    axes = tuple(tuple(int(i == j) for j in range(d)) for i in range(d - 1))
    return ((0,) * d, (1,) * d) + axes


def companion(n: int) -> int:
    """The node count paired with an n-node Gauss-Hermite rule for its error estimate."""
    return n + max(2, n // 2)


def affordable(h: torch.Tensor, d: int) -> torch.Tensor:
    """Which spacings (Gauss-Hermite where inf) have lattices that fit in memory."""
    return torch.tensor([lattice_size(v, d) <= MAX_LATTICE for v in h.tolist()], dtype=torch.bool)


def finest_affordable(h: float, d: int) -> float:
    """h, or the finest spacing whose lattice fits in memory if h's does not (the paired rule's
    estimate then reports the coarser lattice's error)."""
    return h if lattice_size(h, d) <= MAX_LATTICE else RADIUS * (math.pi ** (d / 2) / math.gamma(d / 2 + 1) / MAX_LATTICE) ** (1 / d) * 1.001