"""Array inputs of the public API: torch tensors, numpy arrays and nested lists alike.

pathkl computes in float64 torch tensors. A public function that takes points or vectors converts a
numpy array or a (nested) list or tuple of numbers to a float64 tensor on the CPU; a tensor is used
as it is (its device and floating dtype are the caller's choice), except that an integer or boolean
tensor is promoted to float64. Complex or non-numeric input is refused with one line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from .errors import InputError
from .schedules import DTYPE

F = TypeVar("F", bound=Callable)


def as_tensor(value, what: str = "an array argument") -> torch.Tensor:
    """``value`` as a real floating tensor (module docstring)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise InputError(f"{what} must be real, got a {value.dtype} tensor")
        return value if value.is_floating_point() else value.to(DTYPE)
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise InputError(f"{what} must be a rectangular array of numbers ({err})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"{what} must be real numbers (a torch tensor, numpy array or nested list), got "
                         f"{type(value).__name__} of dtype {array.dtype}")
    return torch.as_tensor(array, dtype=DTYPE)


def _array_like(value) -> bool:
    return isinstance(value, np.ndarray | list | tuple) or (
        isinstance(value, torch.Tensor) and not value.is_floating_point())


def array_arguments(fn: F) -> F:
    """Decorate ``fn`` so that its positional array arguments (numpy arrays, lists, tuples, integer
    tensors) arrive as float64 tensors (:func:`as_tensor`); other arguments pass unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(as_tensor(a, f"argument {i} of {fn.__qualname__}") if _array_like(a) else a
                    for i, a in enumerate(args)), **kwargs)

    return wrapper  # type: ignore[return-value]
