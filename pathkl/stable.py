"""Cancellation-free scalar kernels shared by every KL computation.

Per-step KLs are O(T^-2) to O(T^-3), so the two functions below are evaluated without ever
subtracting nearly equal numbers.
"""

from __future__ import annotations

import torch

# Coefficients 1/(2k+3), k = 0..13: with |s| <= 1/4 the truncated tail is below 4^-28 / 31 < 1e-18
# relative to the leading term, i.e. far below float64 rounding.
_ATANH_TAIL = tuple(1.0 / (2 * k + 3) for k in range(14))
_SERIES_LIMIT = 0.25


def _series_terms(s2_max: float) -> int:
    """Fewest atanh-tail terms whose remainder is below float64 rounding when s^2 <= s2_max."""
    if s2_max == 0.0:
        return 1
    return next((k for k in range(1, len(_ATANH_TAIL)) if s2_max**k < 2.0**-56), len(_ATANH_TAIL))


def u_minus_log1p(u: torch.Tensor) -> torch.Tensor:
    """phi(u) = u - log(1 + u) for u > -1, accurate to a few ulps for all u, including |u| << 1.

    With s = u / (2 + u) one has log1p(u) = 2 atanh(s), hence
    phi(u) = u^2 / (2 + u) - 2 s^3 (1/3 + s^2/5 + s^4/7 + ...),
    a sum of two terms that never cancel for |s| <= 1/4 (their ratio is below 1/6); the tail is cut
    where its remainder drops below rounding (3 terms when all |u| < 1e-3).
    Outside that range the direct formula loses at most one digit.  phi(-1) = phi(+inf) = +inf.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    s = u / (2.0 + u)
    s2 = s * s
    in_series = s.abs() <= _SERIES_LIMIT
    s2_max = float(torch.where(in_series, s2, 0.0).max()) if u.numel() else 0.0
    terms = _ATANH_TAIL[: _series_terms(s2_max)]
    tail = torch.full_like(u, terms[-1])
    for coefficient in reversed(terms[:-1]):
        tail.mul_(s2).add_(coefficient)
    series = u * u / (2.0 + u) - 2.0 * s * s2 * tail
    if bool(in_series.all()):
        return series
    direct = torch.where(torch.isinf(u), u, u - torch.log1p(u))
    return torch.where(in_series, series, direct)


def one_plus_e_log_one_plus_e_minus_e(e: torch.Tensor) -> torch.Tensor:
    """psi(e) = (1 + e) log(1 + e) - e >= 0 for e >= -1, accurate also for |e| << 1.

    This is the integrand of KL(r q || q) = E_q[psi(r - 1)] for a density ratio r. It is evaluated as
    psi(e) = (1 + e) phi(-e / (1 + e)) with phi = u_minus_log1p, since
    log(1 + (-e / (1 + e))) = -log(1 + e).  psi(-1) = 1.
    """
    e = torch.as_tensor(e, dtype=torch.float64)
    one_plus_e = 1.0 + e
    inside = torch.where(one_plus_e > 0, -e / one_plus_e, torch.zeros_like(e))
    return torch.where(one_plus_e > 0, one_plus_e * u_minus_log1p(inside), torch.ones_like(e))
