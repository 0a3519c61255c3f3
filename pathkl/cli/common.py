"""Options and output helpers shared by the subcommands.

Light on purpose: ``pathkl --help``, ``pathkl COMMAND --help`` and argument errors must not wait for
torch, scipy or matplotlib (seconds), so this module and every command's ``register`` use only the
standard library; the names the parser offers (families, presets, schedules) are listed here and
tests/test_bad_input.py checks them against the library's registries. The library is imported by
each command's ``run``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError

#: ``pathkl.families.FAMILIES``, in order.
FAMILY_NAMES = ("beta", "beta_tilde", "analytic", "diag", "full")
#: ``pathkl.families.FAMILY_NAMES``: the families above plus the sampling-only ones.
SAMPLING_FAMILY_NAMES = FAMILY_NAMES + ("rademacher:M", "lanczos:k")
#: ``pathkl.families.SIZED_FAMILIES``: kind -> (the letter of N, the least N, what N counts).
SIZED_FAMILIES = {"rademacher": ("M", 2, "Rademacher probes (two or more give a standard error)"),
                  "lanczos": ("k", 1, "Lanczos steps (covariance-vector products per reverse step)")}
#: ``pathkl.sampling.ROUTES``.
SAMPLING_ROUTES = ("closed", "jvp", "linearize", "difference")
#: ``pathkl.presets.PRESETS``, in order.
PRESET_NAMES = ("mog-1d", "gaussian-5d", "gaussian-5d-axis", "gaussian-2d", "image-3x32x32", "image-3x64x64",
                "mog-ocm-grid", "mog-ocm-grid-2d", "mog-rotated")
#: ``pathkl.schedules.SCHEDULES``.
SCHEDULE_NAMES = ("vp-linear", "cosine", "ddpm-linear")
#: ``pathkl.rules.MonteCarlo`` defaults: points per component of q_t, draws per point.
MC_OUTER, MC_INNER = 256, 64

REF_HELP = (
    "reference distribution: a preset (" + ", ".join(PRESET_NAMES) + ") or a JSON file, e.g. "
    '{"kind": "gaussian", "mean": [0, 0], "cov": [[1, 0.5], [0.5, 2]]}, '
    '{"kind": "gaussian", "eigenvalues": [0.1, 1, 4]}, '
    '{"kind": "gaussian-image", "shape": [3, 64, 64], "spectrum": {"type": "power-law", '
    '"exponent": 2, "floor": 1, "variance": 1}}'
)
JSON_HELP = "print one JSON document instead of a table; +inf/-inf/NaN are written as the strings \"inf\", \"-inf\", \"nan\""


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_family_option(parser: argparse.ArgumentParser) -> None:
    """``--cov FAMILY`` (one covariance family, default analytic), as ``kl`` and ``grid`` take it."""
    parser.add_argument("--cov", default="analytic",
                        help=f"covariance family: {', '.join(FAMILY_NAMES)} (default: analytic)")


def add_reference_options(parser: argparse.ArgumentParser, *, default_ref: str) -> None:
    parser.add_argument("--ref", default=default_ref, help=REF_HELP + f" (default: {default_ref})")
    parser.add_argument(
        "--schedule", default="vp-linear", choices=sorted(SCHEDULE_NAMES),
        help="noise schedule (default: vp-linear)",
    )


def parse_number_list(text: str, kind: Callable[[str], Any], what: str) -> list:
    """Comma-separated numbers, or ``@FILE`` with numbers separated by commas or whitespace."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as err:
            raise InputError(f"cannot read {what} from {text[1:]!r}: {err.strerror}") from None
    items = [s for s in text.replace(",", " ").split() if s]
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise InputError(f"{what} must be a comma-separated list of numbers, got {text.strip()!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise InputError(f"{what} contains NaN or inf")
    return values


def parse_integer(text: str) -> int:
    """An integer, also written in exponent notation (``1e6``) when its value is a whole number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(value)


def positive_int(text: str) -> int:
    try:
        value = parse_integer(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def format_estimate(value: float, error: float) -> str:
    """``value +- error`` with the digits the error leaves; exact values (error 0) say so."""
    if not math.isfinite(value) or error == 0:
        return f"{value:.12g} (exact)"
    digits = max(1, min(15, math.floor(math.log10(abs(value) / error)) + 2)) if value != 0 and error > 0 else 3
    return f"{value:.{digits}g} +- {error:.2g}"


def warn(message: str) -> None:
    """One line on stderr that the result is printed but falls short of what was asked."""
    sys.stderr.write(f"pathkl: warning: {message}\n")


def make_grid(schedule_name: str, *, steps: int | None, taus: str | None, indices: str | None):
    """The grid from exactly one of ``--steps``, ``--taus`` (continuous schedules) or ``--indices``
    (a subsequence ``0 = i_0 < ... < i_T = N`` of the ddpm-linear chain of length N)."""
    from ..schedules import get_schedule, grid_from_chain, grid_from_taus

    schedule = get_schedule(schedule_name)
    if taus is not None:
        return grid_from_taus(schedule, parse_number_list(taus, float, "--taus"))
    if indices is not None:
        if schedule.name != "ddpm-linear":
            raise InputError("--indices selects steps of the discrete ddpm-linear chain; use --taus otherwise")
        idx = parse_number_list(indices, parse_integer, "--indices")
        return grid_from_chain(schedule, idx[-1], idx)
    return schedule.grid(steps)


def reference_from(args: argparse.Namespace):
    from ..refspec import load_reference

    return load_reference(args.ref)


def jsonable(value: Any) -> Any:
    """Floats to JSON, with non-finite values as the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


def check_output_path(path: str, suffixes: tuple[str, ...]) -> Path:
    """Validate an output file before any work: its folder exists and its suffix is supported."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise InputError(f"{path}: unsupported file type; use one of {', '.join(suffixes)}")
    if not out.parent.resolve().is_dir():
        raise InputError(f"{path}: folder {str(out.parent)!r} does not exist")
    return out


def write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
