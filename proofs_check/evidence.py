"""Small helpers that turn a comparison into an :class:`Outcome` with an informative detail."""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp
import torch

from .registry import Outcome


def _probe_value(expr: sp.Expr) -> complex | None:
    """``expr`` at a fixed irrational-looking point (positive symbols get positive values), or
    None if it cannot be evaluated there."""
    point = {s: sp.Rational(37 + 11 * i, 97) for i, s in enumerate(sorted(expr.free_symbols, key=str))}
    try:
        value = complex(expr.subs(point).evalf(30))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value


def symbolic_zero(expr: sp.Expr | sp.MatrixBase, what: str) -> Outcome:
    """Pass iff ``expr`` simplifies to exactly zero (every entry, for a matrix).

    A nonzero value at a sample point (30 digits) proves the expression is not identically zero, so a
    wrong formula fails without an expensive ``simplify``; a pass always requires exact zero.
    """
    entries = list(expr) if isinstance(expr, sp.MatrixBase) else [expr]
    for entry in entries:
        residual = sp.expand(entry)
        if residual == 0:
            continue
        value = _probe_value(residual)
        if value is not None and abs(value) > 1e-20:
            return Outcome(False, f"{what}: residual {sp.sstr(residual)[:120]} = {value:.3g} at a "
                                  f"sample point, not identically 0")
        if sp.cancel(sp.together(residual)) == 0:  # exact for rational functions, and fast
            continue
        residual = sp.simplify(residual)
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
