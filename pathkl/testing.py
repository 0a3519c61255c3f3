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
from .refspec import KEYS
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


# ---- reference JSON specs (``--ref FILE``), valid and malformed ------------------------------------
def _small_floats(low: float, high: float):
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def reference_specs(draw, *, max_dim: int = 3, max_components: int = 3) -> dict:
    """A valid reference JSON object (as ``json.loads`` gives it) of a drawn kind: ``gaussian`` (``cov``
    or ``eigenvalues``), ``gaussian-image`` (a small power law), ``mog`` (``covs``, ``variances`` or
    ``stds``) or ``empirical``; :func:`pathkl.refspec.load_reference` accepts every one."""
    kind = draw(st.sampled_from(["gaussian", "gaussian-image", "mog", "empirical"]))
    d = draw(st.integers(1, max_dim))
    vector = st.lists(_small_floats(-2.0, 2.0), min_size=d, max_size=d)
    if kind == "gaussian":
        spec = {"kind": kind, "mean": draw(vector)}
        if draw(st.booleans()):
            spec["eigenvalues"] = draw(spectra(d)).tolist()
        else:
            spec["cov"] = draw(spd_matrices(d)).tolist()
        return spec
    if kind == "gaussian-image":
        shape = [draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))]
        return {"kind": kind, "shape": shape,
                "spectrum": {"type": "power-law", "exponent": draw(_small_floats(0.0, 3.0)),
                             "floor": draw(_small_floats(0.5, 2.0)), "variance": draw(_small_floats(0.5, 2.0))}}
    k = draw(st.integers(1, max_components))
    weights = [1.0 / k] * k
    means = [draw(vector) for _ in range(k)]
    if kind == "empirical":
        return {"kind": kind, "points": means}
    form = draw(st.sampled_from(["covs", "variances", "stds"]))
    if form == "covs":
        values = [draw(spd_matrices(d)).tolist() for _ in range(k)]
    elif form == "variances":
        values = [draw(spectra(d)).tolist() for _ in range(k)]
    else:
        values = draw(st.lists(_small_floats(0.1, 2.0), min_size=k, max_size=k))
    return {"kind": kind, "weights": weights, "means": means, form: values}


#: Values of the wrong type for any numeric field (JSON null, booleans, strings, objects, ragged lists).
WRONG_TYPES = (None, True, "1", {"a": 1}, [[1.0], [1.0, 2.0]], [[]], ["x"])

_ARRAY_KEYS = {"gaussian": ("mean", "cov", "eigenvalues"), "gaussian-image": ("shape", "spectrum"),
               "mog": ("weights", "means", "covs", "variances", "stds"), "empirical": ("points", "weights")}


@st.composite
def malformed_reference_specs(draw, **kwargs) -> tuple[dict, str]:
    """``(spec, defect)``: a :func:`reference_specs` object with one defect that
    :func:`pathkl.refspec.load_reference` must report as an ``InputError`` (never another exception,
    never a silently different reference). Defects: ``unknown key`` (a typo of a real key or a new
    one), ``missing key``, ``wrong type``, ``empty array``, ``non-positive std``, ``subnormal
    variance``, ``huge mean``, ``two forms`` (``cov`` and ``eigenvalues``, or two component forms)."""
    spec = draw(reference_specs(**kwargs))
    kind = spec["kind"]
    present = [key for key in _ARRAY_KEYS[kind] if key in spec]
    defects = ["unknown key", "missing key", "wrong type", "empty array"]
    if kind == "mog" and "stds" in spec:
        defects.append("non-positive std")
    if kind in ("gaussian", "mog"):
        defects += ["subnormal variance", "two forms"]
    if kind in ("mog", "empirical"):
        defects.append("huge mean")
    defect = draw(st.sampled_from(defects))
    if defect == "unknown key":  # a typo of a key present (its value moved or copied) or a new key
        key = draw(st.sampled_from(present))
        typo = draw(st.sampled_from([key + "s", key[:-1], key.upper(), "extra"]))
        if typo in KEYS[kind]:
            typo = "_" + key
        spec[typo] = spec.pop(key) if draw(st.booleans()) else spec[key]
        return spec, defect
    if defect == "missing key":
        if kind == "gaussian":
            required = ["cov" if "cov" in spec else "eigenvalues"]
        elif kind == "mog":
            required = ["weights", "means", next(k for k in ("covs", "variances", "stds") if k in spec)]
        else:
            required = ["shape" if kind == "gaussian-image" else "points"]
        del spec[draw(st.sampled_from(required))]
        return spec, defect
    if defect == "wrong type":
        key = draw(st.sampled_from(present))
        spec[key] = draw(st.sampled_from(WRONG_TYPES))
        return spec, defect
    if defect == "empty array":
        key = draw(st.sampled_from([k for k in present if k != "shape"] or present))
        spec[key] = []
        return spec, defect
    if defect == "non-positive std":
        stds = list(spec["stds"])
        stds[draw(st.integers(0, len(stds) - 1))] = draw(st.sampled_from([0.0, -0.1, -1.0]))
        spec["stds"] = stds
        return spec, defect
    if defect == "subnormal variance":
        tiny = draw(st.sampled_from([1e-310, 1e-320, 5e-324]))
        if kind == "gaussian":
            spec.pop("cov", None)
            spec["eigenvalues"] = [tiny] + [1.0] * (len(spec["mean"]) - 1)
        else:
            for form in ("covs", "variances"):
                spec.pop(form, None)
            spec["stds"] = [math.sqrt(tiny)] * len(spec["weights"])
        return spec, defect
    if defect == "huge mean":
        key = "points" if kind == "empirical" else "means"
        spec[key] = [[draw(st.sampled_from([1e101, -1e200, 1e308]))] + row[1:] for row in spec[key]]
        return spec, defect
    # two forms
    if kind == "gaussian":
        d = len(spec["mean"])
        spec["cov"], spec["eigenvalues"] = torch.eye(d, dtype=DTYPE).tolist(), [1.0] * d
    else:
        k = len(spec["weights"])
        spec["stds" if "stds" not in spec else "variances"] = ([1.0] * k if "stds" not in spec
                                                              else [[1.0] * len(spec["means"][0])] * k)
    return spec, defect
