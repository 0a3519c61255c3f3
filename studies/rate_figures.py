"""The rate figure shared by the path-KL rate studies.

Panel (a): ``steps`` against T on log-log axes, one series per family, with the fitted order and its
95% interval in the legend (:func:`pathkl.rates.fit_order`) and reference slopes -1 and -2.
Panel (b): ``T^p steps`` against T for each family with a claimed order p, converging to the predicted
leading constant (dashed, from the results' ``predicted_constant`` column); the legend gives the
prediction and the Richardson estimate (:func:`pathkl.rates.measured_constant`).

Every plotted data line carries ``gid = "data:<family>"`` so tests can compare it with the results.
"""

from __future__ import annotations

import math

from pathkl import plotting
from pathkl.rates import fit_order, measured_constant

from .results import ResultsTable

RATE_COLUMNS = ("terminal", "steps", "total", "first_step", "order", "predicted_constant",
                "predicted_constant_error")


def _series(table: ResultsTable, family: str, **where) -> tuple[list[float], list[float]]:
    ts = table.column("T", family=family, **where)
    steps = table.column("steps", family=family, **where)
    pairs = sorted(zip(ts, steps))
    return [float(t) for t, _ in pairs], [float(s) for _, s in pairs]


def _fit_label(family: str, ts: list[float], steps: list[float], order: float,
               first_step: int) -> str:
    name = plotting.family_label(family)
    if first_step > 1:
        name += f" (from $t = {first_step}$)"
    if len(ts) < 4 or not math.isfinite(order):
        return name
    fit = fit_order(ts, steps)
    return plotting.slope_label(name, fit.slope, *fit.interval)


def rate_figure(table: ResultsTable, *, title: str = "", **where):
    """Both panels for the rows of ``table`` matching ``where`` (e.g. ``reference="rotated"``)."""
    fig, (ax, bx) = plotting.new_figure(columns=2, aspect=0.8, ncols=2)
    exact_zero = []
    anchor = None
    all_t: list[float] = []
    for family in table.distinct("family"):
        ts, steps = _series(table, family, **where)
        if not ts:
            continue
        colour, marker = plotting.family_style(family)
        if all(s == 0.0 for s in steps):
            exact_zero.append(family)
            continue
        keep = [(t, s) for t, s in zip(ts, steps) if 0.0 < s < math.inf]
        if not keep:
            continue
        ts, steps = [t for t, _ in keep], [s for _, s in keep]
        all_t += ts
        anchor = steps[0] if anchor is None else max(anchor, steps[0])
        order = float(table.column("order", family=family, **where)[0])
        ax.plot(ts, steps, ls="-", marker=marker, color=colour, gid=f"data:{family}",
                label=_fit_label(family, ts, steps, order,
                                 int(table.column("first_step", family=family, **where)[0])))
        if not math.isfinite(order):
            continue
        p = int(order)
        scaled = [t**p * s for t, s in zip(ts, steps)]
        bx.plot(ts, scaled, marker=marker, color=colour, gid=f"scaled:{family}",
                label=f"{plotting.family_label(family)}: $T^{{{p}}}\\,$steps")
        predicted = float(table.column("predicted_constant", family=family, **where)[0])
        text = f"predicted ${predicted:.4g}$"
        if len(ts) >= 3:
            text += f", measured ${measured_constant(ts, steps, p).value:.4g}$"
        bx.axhline(predicted, color=colour, ls="--", lw=0.8, label=text)
    if anchor is not None:
        plotting.reference_slopes(ax, all_t, anchor=anchor)
    for family in exact_zero:
        colour, marker = plotting.family_style(family)
        ax.plot([], [], ls="none", marker=marker, color=colour,
                label=f"{plotting.family_label(family)}: steps $= 0$ at every $T$")
    ax.set(xscale="log", yscale="log", xlabel="number of steps $T$",
           ylabel="path KL, sum of steps", title=f"(a) {title}".strip())
    bx.set(xscale="log", xlabel="number of steps $T$", ylabel="$T^p\\times$ steps",
           title="(b) leading constant")
    ax.legend(loc="lower left")
    bx.legend(loc="best")
    return fig
