"""Hypothesis strategies for property-based tests of pathkl and of code built on it.

Import them in your own tests::

    from hypothesis import given, settings
    from pathkl.testing import spd_matrices, gaussian_references, grids

    settings.load_profile("ci")          # deterministic and fast; "dev" and "deep" explore more
                                         # (or decorate one test: @settings.get_profile("ci"))

    @given(spd_matrices(dim=3, condition=100.0))
    def test_my_identity(cov): ...

Every tensor is torch float64.  Random matrices are built from hypothesis-drawn entries (so
failures shrink and replay), never from an unseeded global generator.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .references.gaussian import GaussianReference
from .schedules import SCHEDULES, Grid, NoiseLevel, get_schedule, grid_from_taus

DTYPE = torch.float64
#: ddpm-linear's per-step beta is 20/T at the end, so its chain needs T >= 21.
DDPM_MIN_STEPS = 21

#: Settings profiles: ``ci`` (deterministic, few examples, no deadline), ``dev``, ``deep``.
PROFILES = {
    "ci": {"derandomize": True, "max_examples": 20, "deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow]},
    "dev": {"max_examples": 100, "deadline": None},
    "deep": {"max_examples": 1000, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]},
}
for _name, _options in PROFILES.items():
    settings.register_profile(_name, **_options)


def _unit_floats():
    return st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def orthogonal_matrices(draw, dim: int) -> torch.Tensor:
    """A ``dim x dim`` orthogonal matrix: the Q factor (signs fixed by R's diagonal) of a drawn matrix.

    Householder QR returns an orthogonal Q even for a rank-deficient input, so every draw is valid.
    """
    entries = draw(st.lists(_unit_floats(), min_size=dim * dim, max_size=dim * dim))
    a = torch.tensor(entries, dtype=DTYPE).reshape(dim, dim)
    q, r = torch.linalg.qr(a)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(DTYPE)
    return q * signs


@st.composite
def spectra(draw, dim: int, *, low: float = 1e-2, high: float = 1e2,
            condition: float | None = None) -> torch.Tensor:
    """``dim`` positive eigenvalues (sorted ascending).

    Without ``condition``: log-uniform in ``[low, high]``.  With ``condition`` = kappa: the smallest
    is drawn log-uniform in ``[low, high / kappa]``, the largest is exactly kappa times it, and the
    others lie in between, so the condition number is kappa (for ``dim >= 2``).
    """
    if not 0 < low <= high:
        raise ValueError("need 0 < low <= high")
    if condition is None:
        logs = draw(st.lists(st.floats(math.log(low), math.log(high)), min_size=dim, max_size=dim))
        return torch.tensor(sorted(logs), dtype=DTYPE).exp()
    if condition < 1 or low * condition > high:
        raise ValueError("need condition >= 1 and low * condition <= high")
    base = draw(st.floats(math.log(low), math.log(high / condition)))
    inner = draw(st.lists(st.floats(0.0, 1.0), min_size=max(dim - 2, 0), max_size=max(dim - 2, 0)))
    fractions = [0.0] + sorted(inner) + [1.0] if dim >= 2 else [0.0]
    return torch.tensor([base + f * math.log(condition) for f in fractions], dtype=DTYPE).exp()


@st.composite
def spd_matrices(draw, dim: int, *, eigenvalues: torch.Tensor | None = None, low: float = 1e-2,
                 high: float = 1e2, condition: float | None = None) -> torch.Tensor:
    """A symmetric positive definite ``Q diag(lambda) Q^T`` with a drawn orthogonal Q and the given
    (or drawn, see :func:`spectra`) eigenvalues; exactly symmetric."""
    lam = (torch.as_tensor(eigenvalues, dtype=DTYPE) if eigenvalues is not None
           else draw(spectra(dim, low=low, high=high, condition=condition)))
    q = draw(orthogonal_matrices(dim))
    m = (q * lam) @ q.T
    return (m + m.T) / 2


@st.composite
def gaussian_references(draw, *, dims: tuple[int, int] = (1, 5), low: float = 1e-2, high: float = 1e2,
                        condition: float | None = None, with_mean: bool = True) -> GaussianReference:
    """A :class:`GaussianReference` with dimension in ``dims`` (inclusive), a drawn rotation and
    spectrum (see :func:`spectra`) and, if ``with_mean``, a mean with entries in [-2, 2]."""
    dim = draw(st.integers(*dims))
    lam = draw(spectra(dim, low=low, high=high, condition=condition))
    basis = draw(orthogonal_matrices(dim))
    mean = None
    if with_mean:
        mean = torch.tensor(draw(st.lists(st.floats(-2.0, 2.0), min_size=dim, max_size=dim)), dtype=DTYPE)
    return GaussianReference.from_eigenvalues(lam, mean=mean, basis=basis)


def schedules():
    """One of the built-in schedules (``vp-linear``, ``cosine``, ``ddpm-linear``)."""
    return st.sampled_from(sorted(SCHEDULES)).map(get_schedule)


@st.composite
def grids(draw, *, min_steps: int = 2, max_steps: int = 64, uniform: bool | None = None) -> Grid:
    """A grid of a drawn schedule with T in ``[min_steps, max_steps]``: uniform, or with strictly
    increasing drawn taus from 0 to 1 (``uniform=None`` draws which).  ``ddpm-linear`` is a discrete
    chain (uniform grids only, T >= 21) and is drawn only when ``max_steps >= 21``."""
    names = [n for n in sorted(SCHEDULES) if n != "ddpm-linear" or max_steps >= DDPM_MIN_STEPS]
    schedule = get_schedule(draw(st.sampled_from(names)))
    low = max(min_steps, DDPM_MIN_STEPS) if schedule.name == "ddpm-linear" else min_steps
    steps = draw(st.integers(low, max_steps))
    if uniform is None:
        uniform = draw(st.booleans())
    if uniform or schedule.name == "ddpm-linear":
        return schedule.grid(steps)
    gaps = draw(st.lists(st.floats(0.05, 1.0), min_size=steps, max_size=steps))
    cumulative = torch.tensor(gaps, dtype=DTYPE).cumsum(0)
    taus = torch.cat([torch.zeros(1, dtype=DTYPE), cumulative / cumulative[-1]])
    taus[-1] = 1.0
    return grid_from_taus(schedule, taus)


@st.composite
def noise_levels(draw, *, tau_min: float = 1e-3, tau_max: float = 1.0) -> NoiseLevel:
    """The noise level of a drawn schedule at a drawn ``tau`` in ``[tau_min, tau_max]``."""
    schedule = draw(schedules())
    return schedule.level(draw(st.floats(tau_min, tau_max)))


@st.composite
def rademacher_probes(draw, dim: int, count: int = 1) -> torch.Tensor:
    """``count`` Rademacher vectors (entries +-1), shape ``(count, dim)``."""
    signs = draw(st.lists(st.booleans(), min_size=dim * count, max_size=dim * count))
    return (torch.tensor(signs, dtype=DTYPE) * 2 - 1).reshape(count, dim)
