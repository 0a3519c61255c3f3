"""The theorem registry: every claim of the source papers, with how it is checked.

A claim is registered with :func:`claim` on a function that returns an :class:`Outcome`.  The
function must be able to fail: it compares the paper's formula (kept in a module-level
``claimed_*`` function so that a test can break it) with something derived independently
(a sympy derivation from first principles, exact enumeration, autodiff, dense linear algebra,
higher-precision quadrature).
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Method = Literal["symbolic", "numeric", "both"]

#: Modules holding the claims, one per source.
SOURCE_MODULES = (
    "proofs_check.tweedie",
    "proofs_check.ocm",
    "proofs_check.analytic_dpm",
    "proofs_check.lgs",
    "proofs_check.reeves_pfister",
    "proofs_check.diffusion_fisher",
    "proofs_check.optimal_grids",
)


@dataclass(frozen=True)
class Outcome:
    """Result of one check: ``passed`` and a one-line ``detail`` (what was compared, how close)."""

    passed: bool
    detail: str


@dataclass(frozen=True)
class Claim:
    """One claim: ``id`` (``source.short-name``), ``source`` (paper and equation), a one-line
    ``statement``, the ``method`` used and the ``check`` that verifies it."""

    id: str
    source: str
    statement: str
    method: Method
    check: Callable[[], Outcome]


@dataclass(frozen=True)
class Result:
    """A claim after running its check, with the wall time in seconds."""

    claim: Claim
    outcome: Outcome
    seconds: float


_REGISTRY: dict[str, Claim] = {}


def claim(*, id: str, source: str, statement: str, method: Method):
    """Decorator registering ``check`` (a function with no arguments returning an Outcome)."""
    if method not in ("symbolic", "numeric", "both"):
        raise ValueError(f"method must be symbolic, numeric or both, not {method!r}")

    def register(check: Callable[[], Outcome]) -> Callable[[], Outcome]:
        if id in _REGISTRY:
            raise ValueError(f"claim {id!r} registered twice")
        _REGISTRY[id] = Claim(id, source, statement, method, check)
        return check

    return register


def all_claims() -> tuple[Claim, ...]:
    """Every registered claim, in registration order (imports the source modules)."""
    for module in SOURCE_MODULES:
        importlib.import_module(module)
    return tuple(_REGISTRY.values())


def get_claim(claim_id: str) -> Claim:
    """The claim with this id; ``KeyError`` if there is none."""
    all_claims()
    return _REGISTRY[claim_id]


def run_claim(item: Claim) -> Result:
    """Run one check; an exception inside it is a failure whose detail names the exception."""
    start = time.perf_counter()
    try:
        outcome = item.check()
        if not isinstance(outcome, Outcome):
            outcome = Outcome(False, f"check returned {type(outcome).__name__}, not Outcome")
    except Exception as exc:  # noqa: BLE001  a crashing check is a failing check, reported
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outcome = Outcome(False, f"{type(exc).__name__}: {exc} (at {where.name}:{where.lineno})")
    return Result(item, outcome, time.perf_counter() - start)
