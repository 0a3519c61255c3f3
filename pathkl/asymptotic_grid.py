"""The asymptotically optimal time grid of an order-p family: the leading term's minimiser (docs/grids.md).

A grid with K steps and point density ``rho(tau)`` (``int_0^1 rho = 1``, step ``~ 1 / (K rho)``) has
``steps ~ K^-p * coefficient * int_0^1 f(tau) / rho(tau)^p dtau`` with
``f = beta(tau)^(p+1) E_{q_tau} ||D||_F^2``, the integrand of the family's leading constant
(pathkl.covariances, :func:`pathkl.pathspace.leading_integrand`; the uniform grid is ``rho = 1``).
By Hoelder's inequality, ``int f / rho^p >= (int f^(1/(p+1)))^(p+1)`` with equality iff
``rho ∝ f^(1/(p+1))``: the optimal grid puts its k-th level where the cumulative density reaches k/K.
Its leading term is ``K^-p coefficient (int f^(1/(p+1)))^(p+1)``, against ``K^-p coefficient int f``
for the uniform grid.

The CDF is the midpoint rule in ``u = sqrt(tau)`` (the integrand is finite inside (0, 1); the cosine
schedule's ``beta`` diverges at tau = 1, where ``E ||D||^2`` vanishes), inverted linearly. The grid is a
heuristic choice, so no error is claimed for its levels; its KL is exact (pathkl.pathspace).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .covariances import Family
from .errors import InputError
from .pathspace import leading_integrand
from .references import GaussianReference
from .schedules import DTYPE, DDPMLinear, Grid, Schedule, grid_from_chain, grid_from_taus

#: Midpoint cells of the density's CDF in ``u = sqrt(tau)`` (finer in tau near 0, where the
#: integrand changes fastest): a closed-form integrand costs some 0.07 s at d = 12288, a mixture's
#: is a quadrature.
GAUSSIAN_NODES, MIXTURE_NODES = 256, 64


def leading_density(reference, schedule: Schedule, family: Family, taus: torch.Tensor) -> np.ndarray:
    """``f(tau)^(1/(p+1)) = beta(tau) (E_{q_tau} ||D||_F^2)^(1/(p+1))`` at ``taus`` (unnormalised)."""
    order = family.order(reference)
    if order is None:
        raise InputError(f"family {family.name!r} claims no vanishing rate, so it has no asymptotic grid")
    continuum = schedule.continuum() if isinstance(schedule, DDPMLinear) else schedule
    inner = np.array([leading_integrand(reference, family, continuum.level(t)).value for t in taus])
    return continuum.beta_rate(taus).numpy() * np.maximum(inner, 0.0) ** (1.0 / (order + 1))


@dataclass(frozen=True)
class AsymptoticDensity:
    """The CDF of ``rho ∝ f^(1/(p+1))`` at the cell edges ``u`` (``tau = u^2``), computed once for
    every K; :meth:`taus` inverts it."""

    family: Family
    edges: np.ndarray
    cdf: np.ndarray

    def taus(self, steps: int) -> torch.Tensor:
        """The K + 1 levels ``0 = tau_0 < ... < tau_K = 1`` with ``CDF(tau_k) = k / K``."""
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"the number of steps K must be an integer >= 1, got {steps!r}")
        u = np.interp(np.arange(steps + 1) / steps, self.cdf, self.edges)
        taus = torch.from_numpy(u * u)
        taus[0], taus[-1] = 0.0, 1.0
        return taus


def asymptotic_density(reference, schedule: Schedule, family: Family, *, nodes: int | None = None) -> AsymptoticDensity:
    """:class:`AsymptoticDensity` of ``family`` on ``reference``: the midpoint rule in ``u = sqrt(tau)``
    on ``nodes`` cells (default :data:`GAUSSIAN_NODES` or :data:`MIXTURE_NODES`)."""
    if nodes is None:
        nodes = GAUSSIAN_NODES if isinstance(reference, GaussianReference) else MIXTURE_NODES
    mids = (torch.arange(nodes, dtype=DTYPE) + 0.5) / nodes
    density = leading_density(reference, schedule, family, mids * mids) * 2.0 * mids.numpy()
    if not np.isfinite(density).all() or not density.sum() > 0:
        raise InputError(f"{family.name!r} has a vanishing (or non-finite) leading term on this reference, so "
                         "there is no asymptotic density (every grid has the same leading term)")
    cdf = np.concatenate([[0.0], np.cumsum(density)])
    return AsymptoticDensity(family, np.linspace(0.0, 1.0, nodes + 1), cdf / cdf[-1])


def asymptotic_grid(density: AsymptoticDensity, schedule: Schedule, steps: int, *,
                    chain_length: int = 1000) -> tuple[Grid, tuple[int, ...] | None]:
    """The K-step grid of ``density`` (:meth:`AsymptoticDensity.taus`) and, for the discrete
    ddpm-linear chain of length ``chain_length``, the chain indices it rounds to (None for a
    continuous schedule)."""
    taus = density.taus(steps)
    if not (taus[1:] > taus[:-1]).all():
        raise InputError(f"the asymptotic density of {density.family.name!r} is too concentrated for "
                         f"{steps} distinct levels")
    if not isinstance(schedule, DDPMLinear):
        return grid_from_taus(schedule, taus), None
    indices = np.round(taus.numpy() * chain_length).astype(np.int64)
    if not (np.diff(indices) > 0).all():
        raise InputError(f"the asymptotic grid of {steps} steps does not round to distinct indices of a chain "
                         f"of length {chain_length}; give a longer chain (--candidates)")
    return grid_from_chain(schedule, chain_length, indices), tuple(int(i) for i in indices)
