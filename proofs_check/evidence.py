"""Small helpers that turn a comparison into an :class:`Outcome` with an informative detail."""

from __future__ import annotations

from typing import Iterable

import sympy as sp
import torch

from .registry import Outcome


def symbolic_zero(expr: sp.Expr | sp.MatrixBase, what: str) -> Outcome:
    """Pass iff ``expr`` simplifies to exactly zero (every entry, for a matrix)."""
    entries = list(expr) if isinstance(expr, sp.MatrixBase) else [expr]
    for entry in entries:
        residual = sp.simplify(sp.expand(entry))
        if residual != 0:
            return Outcome(False, f"{what}: residual {sp.sstr(residual)[:160]} != 0")
    return Outcome(True, f"{what}: difference simplifies to 0")


def all_of(outcomes: Iterable[Outcome]) -> Outcome:
    """Pass iff every outcome passes; the detail joins them (the first failure first)."""
    outcomes = list(outcomes)
    failed = [o for o in outcomes if not o.passed]
    shown = failed[:1] + [o for o in outcomes if o not in failed[:1]]
    return Outcome(not failed, "; ".join(o.detail for o in shown))


def close(actual, expected, *, rtol: float, atol: float = 0.0, what: str) -> Outcome:
    """Pass iff ``|actual - expected| <= atol + rtol |expected|`` everywhere; reports the worst."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    error = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    worst = float((error / bound.clamp_min(1e-300)).max())
    passed = bool(torch.all(error <= bound)) and bool(torch.all(torch.isfinite(actual)))
    return Outcome(passed, f"{what}: max |err| {float(error.max()):.2e} ({worst:.2g} x tolerance)")
