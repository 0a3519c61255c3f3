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
in the 2-D FFT order of ``numpy.fft.fftfreq``; must be symmetric under k -> -k).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import InputError
from .presets import PRESETS, power_law_spectrum
from .references import GaussianReference, MixtureReference
from .schedules import DTYPE


def _array(spec: dict, key: str, ndim: int) -> torch.Tensor:
    try:
        value = torch.as_tensor(spec[key], dtype=DTYPE)
    except KeyError:
        raise InputError(f"reference JSON needs the key {key!r}") from None
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"reference JSON key {key!r} must be a numeric array") from None
    if value.ndim != ndim:
        raise InputError(f"reference JSON key {key!r} must have {ndim} dimension(s), got {value.ndim}")
    return value


def _gaussian(spec: dict) -> GaussianReference:
    mean = _array(spec, "mean", 1) if "mean" in spec else None
    if "cov" in spec:
        return GaussianReference.from_covariance(_array(spec, "cov", 2), mean=mean)
    if "eigenvalues" in spec:
        return GaussianReference.from_eigenvalues(_array(spec, "eigenvalues", 1), mean=mean)
    raise InputError("a gaussian reference needs 'cov' or 'eigenvalues'")


def _gaussian_image(spec: dict) -> GaussianReference:
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise InputError("a gaussian-image reference needs 'shape': [C, H, W] with positive integers")
    spectrum = spec.get("spectrum", {"type": "power-law"})
    if isinstance(spectrum, dict):
        if spectrum.get("type", "power-law") != "power-law":
            raise InputError(f"unknown spectrum type {spectrum.get('type')!r}; use 'power-law' or a list")
        options = {k: spectrum[k] for k in ("exponent", "floor", "variance") if k in spectrum}
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in options.values()):
            raise InputError("power-law spectrum options must be finite numbers")
        if options.get("floor", 1.0) <= 0 or options.get("variance", 1.0) <= 0:
            raise InputError("power-law 'floor' and 'variance' must be > 0")
        values = power_law_spectrum(tuple(shape), **options)
    else:
        values = _array({"spectrum": spectrum}, "spectrum", len(torch.as_tensor(spectrum).shape))
        if values.shape == tuple(shape[1:]):
            values = values.expand(*shape).clone()
        if values.shape != tuple(shape):
            raise InputError(f"spectrum shape {tuple(values.shape)} does not match [C, H, W] = {shape}")
    if not (values > 0).all():
        raise InputError("spectrum values must be > 0 (a positive definite covariance)")
    mean = spec.get("mean")
    return GaussianReference.image(values, mean=None if mean is None else torch.as_tensor(mean, dtype=DTYPE))


def _mog(spec: dict) -> MixtureReference:
    covariance = {"covs": 3, "variances": 2, "stds": 1}
    given = [key for key in covariance if key in spec]
    if len(given) != 1:
        raise InputError("a mog reference needs exactly one of 'covs' (full), 'variances' (diagonal), 'stds'")
    key = given[0]
    return MixtureReference.from_components(
        _array(spec, "weights", 1), _array(spec, "means", 2), **{key: _array(spec, key, covariance[key])}
    )


def _empirical(spec: dict) -> MixtureReference:
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{ref}: malformed JSON ({err})") from None
    if not isinstance(spec, dict) or spec.get("kind") not in JSON_KINDS:
        raise InputError(f"{ref}: JSON must be an object with 'kind' one of {', '.join(JSON_KINDS)}")
    try:
        return JSON_KINDS[spec["kind"]](spec)
    except InputError as err:
        raise InputError(f"{ref}: {err}") from None
