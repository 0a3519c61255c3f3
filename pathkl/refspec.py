"""``--ref``: a preset name or a JSON file describing a reference distribution.

JSON forms::

    {"kind": "gaussian", "mean": [...], "cov": [[...], ...]}          # mean optional (zero)
    {"kind": "gaussian", "eigenvalues": [...]}                          # zero mean, axis-aligned
    {"kind": "gaussian-image", "shape": [C, H, W], "spectrum": SPEC}    # stationary, FFT-diagonal
    {"kind": "mog", "weights": [...], "means": [[...]], "covs": [[[...]]]}  # or "variances" [[...]]
                                                                        # (diagonal) or "stds" [...]
    {"kind": "empirical", "points": [[...]]}                            # "weights" optional (equal)

where SPEC is ``{"type": "power-law", "exponent": 2.0, "floor": 1.0, "variance": 1.0}`` (all keys
optional: eigenvalue ``(floor + kh^2 + kw^2)^(-exponent/2)`` at integer frequency (kh, kw), scaled to
the given per-pixel variance) or an explicit nested list of shape [C, H, W] or [H, W] (eigenvalues
in the 2-D FFT order of ``numpy.fft.fftfreq``; must be symmetric under k -> -k). An image ``mean`` is
a number (every pixel) or an array of shape [C, H, W].

Everything is checked before it is used: a key that is not one of its kind's (a typo such as
``"means"`` in a Gaussian would otherwise be dropped silently), keys that exclude each other, values
that are not numeric arrays of the right shape, empty arrays, and variances below the smallest normal
float64 (their relative precision is gone, so the Cholesky factors and logarithms built from them
fail or lie). A mixture whose only component of non-zero weight is a Gaussian is loaded as that
Gaussian (exact: the closed forms instead of quadrature).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import InputError
from .presets import PRESETS, power_law_spectrum
from .references import GaussianReference, MixtureReference
from .schedules import DTYPE, check_memory

#: The keys each JSON kind may have.
KEYS: dict[str, tuple[str, ...]] = {
    "gaussian": ("kind", "mean", "cov", "eigenvalues"),
    "gaussian-image": ("kind", "shape", "spectrum", "mean"),
    "mog": ("kind", "weights", "means", "covs", "variances", "stds"),
    "empirical": ("kind", "points", "weights"),
}
POWER_LAW_KEYS = ("type", "exponent", "floor", "variance")
#: Smallest normal float64: below it a variance keeps fewer than 53 significant bits.
SMALLEST_VARIANCE = torch.finfo(DTYPE).tiny
#: Bytes per pixel to build a stationary image Gaussian and take its path KL (the spectrum, its
#: eigenvalues, mean and Fourier workspaces; measured about 330 at 3x1024x1024).
BYTES_PER_PIXEL = 384


def _check_keys(spec: dict, allowed: tuple[str, ...], what: str) -> None:
    unknown = [key for key in spec if key not in allowed]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown key {key!r} in {what}{hint}; its keys are {', '.join(allowed)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_number(value) -> bool:
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # a JSON integer beyond float64
        return False


def _whole_number(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (_finite_number(value) and value.is_integer())


def _nested_numbers(value) -> bool:
    """A number or a (nested) list of numbers; booleans, strings and null are not numbers."""
    if isinstance(value, list):
        return all(_nested_numbers(v) for v in value)
    return _is_number(value)


def _tensor(value, key: str, ndim: int | tuple[int, ...]) -> torch.Tensor:
    """``value`` (from JSON) as a float64 tensor with ``ndim`` dimensions (one of them), none empty."""
    dims = (ndim,) if isinstance(ndim, int) else ndim
    what = " or ".join(f"{n}-dimensional" for n in dims)
    if not _nested_numbers(value):
        raise InputError(f"key {key!r} must be a {what} array of numbers, got {json.dumps(value)[:60]}")
    try:
        tensor = torch.as_tensor(value, dtype=DTYPE)
    except OverflowError:
        raise InputError(f"key {key!r} holds a number beyond the float64 range") from None
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"key {key!r} must be a rectangular {what} array of numbers (rows of equal length)") from None
    if tensor.ndim not in dims:
        raise InputError(f"key {key!r} must be a {what} array, got {tensor.ndim} dimension(s)")
    if tensor.numel() == 0:
        raise InputError(f"key {key!r} is empty (shape {list(tensor.shape)})")
    return tensor


def _array(spec: dict, key: str, ndim: int) -> torch.Tensor:
    if key not in spec:
        raise InputError(f"reference JSON needs the key {key!r}")
    return _tensor(spec[key], key, ndim)


def _normal_variances(values: torch.Tensor, what: str) -> None:
    """Variances must be normal float64 numbers (the ``> 0`` checks come first, in the constructors)."""
    low = values[(values > 0) & (values < SMALLEST_VARIANCE)]
    if low.numel():
        raise InputError(f"{what} {float(low.min()):.3g} is below the smallest normal float64 ({SMALLEST_VARIANCE:.3g}):"
                         " it has lost its relative precision (rescale the data)")


def _exactly_one(spec: dict, keys: tuple[str, ...], what: str) -> str:
    given = [key for key in keys if key in spec]
    if len(given) != 1:
        listed = ", ".join(repr(k) for k in keys)
        raise InputError(f"{what} needs exactly one of {listed}, got {', '.join(map(repr, given)) or 'none'}")
    return given[0]


def _gaussian(spec: dict) -> GaussianReference:
    _check_keys(spec, KEYS["gaussian"], "a gaussian reference")
    key = _exactly_one(spec, ("cov", "eigenvalues"), "a gaussian reference")
    mean = _array(spec, "mean", 1) if "mean" in spec else None
    if key == "cov":
        ref = GaussianReference.from_covariance(_array(spec, "cov", 2), mean=mean)
    else:
        ref = GaussianReference.from_eigenvalues(_array(spec, "eigenvalues", 1), mean=mean)
    _normal_variances(ref.eigenvalues, "a covariance eigenvalue")
    return ref


def _shape(spec: dict) -> tuple[int, int, int]:
    shape = spec.get("shape")
    if not (isinstance(shape, list) and all(_whole_number(n) for n in shape) and len(shape) == 3 and all(n > 0 for n in shape)):
        raise InputError(f"a gaussian-image reference needs 'shape': [C, H, W] with positive integers, got "
                         f"{json.dumps(shape)[:60]}")
    c, h, w = shape = [int(n) for n in shape]  # 1e5 in JSON is the float 100000.0
    check_memory(BYTES_PER_PIXEL * c * h * w, f"an image of shape {shape} (d = {c * h * w}, {BYTES_PER_PIXEL} bytes a pixel)")
    return c, h, w


def _gaussian_image(spec: dict) -> GaussianReference:
    _check_keys(spec, KEYS["gaussian-image"], "a gaussian-image reference")
    shape = _shape(spec)
    spectrum = spec.get("spectrum", {"type": "power-law"})
    if isinstance(spectrum, dict):
        _check_keys(spectrum, POWER_LAW_KEYS, "a power-law spectrum")
        if spectrum.get("type", "power-law") != "power-law":
            raise InputError(f"unknown spectrum type {spectrum.get('type')!r}; use 'power-law' or a list")
        options = {k: spectrum[k] for k in ("exponent", "floor", "variance") if k in spectrum}
        if not all(_finite_number(v) for v in options.values()):
            raise InputError("power-law spectrum options 'exponent', 'floor', 'variance' must be finite numbers")
        if options.get("floor", 1.0) <= 0 or options.get("variance", 1.0) <= 0:
            raise InputError("power-law 'floor' and 'variance' must be > 0")
        values = power_law_spectrum(shape, **options)
    else:
        values = _tensor(spectrum, "spectrum", (2, 3))
        if values.shape == shape[1:]:
            values = values.expand(*shape).clone()
        if values.shape != shape:
            raise InputError(f"spectrum shape {list(values.shape)} is neither [C, H, W] = {list(shape)} nor [H, W]")
    if not torch.isfinite(values).all():
        raise InputError("spectrum values contain NaN or inf")
    if not (values > 0).all():
        raise InputError("spectrum values must be > 0 (a positive definite covariance)")
    _normal_variances(values, "a spectrum value")
    mean = spec.get("mean")
    if mean is not None:
        if _is_number(mean):
            mean = torch.tensor(float(mean), dtype=DTYPE)
        else:
            mean = _tensor(mean, "mean", 3)
            if mean.shape != shape:
                raise InputError(f"an image 'mean' must be a number or an array of shape [C, H, W] = {list(shape)},"
                                 f" got {list(mean.shape)}")
            mean = mean.flatten()
    return GaussianReference.image(values, mean=mean)


def _as_gaussian(mix: MixtureReference) -> GaussianReference:
    """The one component of a single-component mixture, as the Gaussian it is."""
    lam = mix.eigenvalues[0].expand(mix.dim)
    rotations = mix.covs.rotations
    return GaussianReference.from_eigenvalues(lam, mean=mix.means[0], basis=None if rotations is None else rotations[0])


def _mog(spec: dict):
    _check_keys(spec, KEYS["mog"], "a mog reference")
    covariance = {"covs": 3, "variances": 2, "stds": 1}
    key = _exactly_one(spec, tuple(covariance), "a mog reference (full, diagonal or isotropic components)")
    mix = MixtureReference.from_components(
        _array(spec, "weights", 1), _array(spec, "means", 2), **{key: _array(spec, key, covariance[key])}
    )
    _normal_variances(mix.eigenvalues, "a component variance")
    return _as_gaussian(mix) if mix.size == 1 else mix


def _empirical(spec: dict) -> MixtureReference:
    _check_keys(spec, KEYS["empirical"], "an empirical reference")
    weights = _array(spec, "weights", 1) if "weights" in spec else None
    return MixtureReference.empirical(_array(spec, "points", 2), weights=weights)


JSON_KINDS: dict[str, Callable[[dict], object]] = {
    "gaussian": _gaussian,
    "gaussian-image": _gaussian_image,
    "mog": _mog,
    "empirical": _empirical,
}


def load_reference(ref: str):
    """The reference named by ``ref``: a preset name (see ``PRESETS``) or a path to a JSON file."""
    if ref in PRESETS:
        return PRESETS[ref][1]()
    path = Path(ref)
    if not path.is_file():
        raise InputError(f"--ref {ref!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(f"{ref}: malformed JSON ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise InputError(f"{ref}: cannot read ({err.strerror})") from None
    if not isinstance(spec, dict) or spec.get("kind") not in JSON_KINDS:
        raise InputError(f"{ref}: JSON must be an object with 'kind' one of {', '.join(JSON_KINDS)}")
    try:
        return JSON_KINDS[spec["kind"]](spec)
    except InputError as err:
        raise InputError(f"{ref}: {err}") from None
