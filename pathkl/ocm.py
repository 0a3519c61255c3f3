"""The covariance-matching objectives of a diagonal head (OCM paper: Ou et al., "Improved diffusion
models with optimal covariance matching", ICLR 2025, arXiv 2406.10808, eqs. (9)-(11);
docs/theory.md sections 7.1-7.2).

A head ``h(x)`` is trained towards ``diag H(x)``, ``H`` the Hessian of ``log q`` (or of any symmetric
operator reached through products ``v -> H v``, e.g. a JVP of a score network), from Rademacher probes
``v`` (independent entries +-1), for which ``E_v[v * (H v)] = diag H``:

- :func:`ocm_loss`, eq. (11): ``mean over probes and points of ||h - v * (H v)||^2`` (one term per
  probe; the paper uses M = 1). Its expectation over probes is ``||h - diag H||^2 + sum_{i != j} H_ij^2``,
  so its gradient in h is, in expectation, that of the oracle loss ``||h - diag H||^2`` (Theorem 2).
- :func:`probe_regression_loss`, eq. (10): ``||h - (1/M) sum_m v_m * (H v_m)||^2``, the regression on
  the M-probe average. With probes redrawn for every point its expectation is
  ``||h - diag H||^2 + (1/M) sum_{i != j} H_ij^2``: the same minimiser ``diag H`` for every M, only a
  smaller constant (claim ``ocm.eq10-probe-regression``). Held fixed per point, either loss is
  minimised by that point's probe estimate, whose error is the estimator's variance.

The targets are detached: the losses train h only (the paper fixes the score network).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError

#: ``v -> H v`` for a batch of vectors (n, d) at the batch's points.
HessianProducts = Callable[[torch.Tensor], torch.Tensor]


def rademacher_probes(n: int, d: int, m: int = 1, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """``m`` Rademacher probes for each of ``n`` points: shape (m, n, d), entries +-1."""
    if min(n, d, m) < 1:
        raise InputError(f"probes need n, d, m >= 1, got n = {n}, d = {d}, m = {m}")
    bits = torch.randint(0, 2, (m, n, d), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def probe_products(hvp: HessianProducts, probes: torch.Tensor) -> torch.Tensor:
    """``v * (H v)`` for each probe, (m, n, d), detached (OCM eq. (9) before the average)."""
    if probes.ndim != 3:
        raise InputError(f"probes must have shape (m, n, d), got {tuple(probes.shape)}")
    with torch.no_grad():
        return torch.stack([v * hvp(v) for v in probes])


def _checked(h: torch.Tensor, probes: torch.Tensor) -> None:
    if probes.ndim != 3 or probes.shape[1:] != h.shape:
        raise InputError(f"probes must have shape (m, n, d) with (n, d) = {tuple(h.shape)}, got {tuple(probes.shape)}")


def ocm_loss(h: torch.Tensor, hvp: HessianProducts, probes: torch.Tensor) -> torch.Tensor:
    """OCM eq. (11): ``(1/(m n)) sum_{m, n} ||h(x_n) - v_mn * (H(x_n) v_mn)||^2`` for h (n, d) and
    probes (m, n, d); differentiable in h."""
    _checked(h, probes)
    return ((h - probe_products(hvp, probes)) ** 2).sum(-1).mean()


def probe_regression_loss(h: torch.Tensor, hvp: HessianProducts, probes: torch.Tensor) -> torch.Tensor:
    """OCM eq. (10): ``(1/n) sum_n ||h(x_n) - (1/m) sum_m v_mn * (H(x_n) v_mn)||^2``; differentiable in h."""
    _checked(h, probes)
    return ((h - probe_products(hvp, probes).mean(0)) ** 2).sum(-1).mean()
