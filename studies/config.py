"""Typed study configurations: defaults in code, overridden from a TOML file and then from ``key=value``.

A configuration is a frozen dataclass whose fields have one of the types ``int``, ``float``, ``str``,
``bool`` or ``tuple[X, ...]`` of those. Overrides are checked against these types, unknown keys are
rejected, and every problem is an :class:`~pathkl.errors.InputError` naming the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pathkl.errors import InputError

_SCALARS = (bool, int, float, str)


def field_types(config_type: type) -> dict[str, Any]:
    """The resolved type of every field of the configuration dataclass ``config_type``."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


def _coerce_scalar(key: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise InputError(f"configuration key {key!r}: expected {kind.__name__}, got {value!r}")


def coerce(key: str, kind: Any, value: Any) -> Any:
    """``value`` (from TOML, or a string from the command line) converted to the field type ``kind``.

    Tuples are given as TOML arrays or as comma-separated strings (``T=8,16,32``).
    """
    if typing.get_origin(kind) is tuple:
        (item, ellipsis) = typing.get_args(kind)
        assert ellipsis is Ellipsis, f"field {key!r} must be typed tuple[X, ...]"
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"configuration key {key!r}: expected a list, got {value!r}")
        return tuple(_coerce_scalar(key, item, v) for v in value)
    if kind not in _SCALARS:
        raise TypeError(f"configuration field {key!r} has unsupported type {kind!r}")
    return _coerce_scalar(key, kind, value)


def apply_overrides(config: Any, overrides: Mapping[str, Any], *, source: str) -> Any:
    """A copy of ``config`` with ``overrides`` applied (keys checked, values coerced)."""
    types = field_types(type(config))
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise InputError(
            f"{source}: unknown configuration key(s) {', '.join(unknown)}; "
            f"known: {', '.join(types)}"
        )
    changes = {k: coerce(k, types[k], v) for k, v in overrides.items()}
    return dataclasses.replace(config, **changes)


def parse_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """``["T=8,16", "seed=3"]`` -> ``{"T": "8,16", "seed": "3"}``."""
    out: dict[str, str] = {}
    for a in assignments:
        key, sep, value = a.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects key=value, got {a!r}")
        out[key.strip()] = value.strip()
    return out


def load_toml(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML file, with read and syntax errors as :class:`InputError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise InputError(f"cannot read configuration file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"configuration file {path} is not valid TOML: {e}") from None


def build_config(
    config_type: type,
    *,
    base: Mapping[str, Any] | None = None,
    toml_path: Path | None = None,
    assignments: Sequence[str] = (),
) -> Any:
    """Defaults of ``config_type``, then ``base`` (e.g. a study's small preset), the TOML file, ``--set``."""
    config = config_type()
    if base:
        config = apply_overrides(config, base, source="preset")
    if toml_path is not None:
        config = apply_overrides(config, load_toml(toml_path), source=str(toml_path))
    if assignments:
        config = apply_overrides(config, parse_assignments(assignments), source="--set")
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as a JSON- and TOML-compatible dict (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
