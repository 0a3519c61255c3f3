"""The path-KL rate study shared by ``gaussian_rates`` and ``mixture_rates``.

Each point is one (reference, schedule, family, T): ``terminal``, ``steps`` and ``total`` of
:func:`pathkl.pathspace.path_kl` on the schedule's uniform grid, each with the absolute error pathkl
vouches for (``terminal_error``, ``steps_error``, ``total_error``: docs/errors.md), whether that error
met the default ``rtol`` (``met_rtol``, 1 or 0) and the ``method`` that computed it, and the family's predicted leading constant ``lim T^p steps``
(:func:`pathkl.rates.predicted_constant`, docs/theory.md section 6) so that figures need nothing but the
results. References are named as ``--ref`` names them (a preset or a JSON file,
:func:`pathkl.refspec.load_reference`). ``beta_tilde`` (no vanishing rate, infinite step t = 1) is
summed from t = 2.

Figure, per reference: panel (a) ``steps`` against T on log-log axes with the fitted order and its 95%
interval in the legend (:func:`pathkl.rates.fit_order`), error bars ``steps_error`` (drawn where
they are visible), and reference slopes -1 and -2; panel (b) ``T^p steps / C`` against T converging to
1 (dashed), ``C`` the predicted constant, with ``C`` and the Richardson estimate
(:func:`pathkl.rates.measured_constant`, its error including the KLs' errors) in the legend. Plotted data lines carry ``gid = "data:<family>"``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.families import get_family
from pathkl.pathspace import path_kl
from pathkl.rates import fit_order, measured_constant, predicted_constant
from pathkl.refspec import load_reference
from pathkl.schedules import get_schedule

from .results import ResultsTable
from .runner import figure_suffix

KEY_COLUMNS = ("reference", "schedule", "family", "T")
VALUE_COLUMNS = ("terminal", "terminal_error", "steps", "steps_error", "total", "total_error", "met_rtol",
                 "method", "first_step", "order", "predicted_constant", "predicted_constant_error")


@dataclass(frozen=True)
class RateConfig:
    references: tuple[str, ...] = ("gaussian-5d",)
    schedules: tuple[str, ...] = ("vp-linear",)
    families: tuple[str, ...] = ("beta", "analytic", "diag", "full", "beta_tilde")
    T: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120)

    def __post_init__(self):
        if not self.T or list(self.T) != sorted(set(self.T)) or self.T[0] < 2:
            raise InputError("T must be a strictly increasing list of integers >= 2")
        for s in self.schedules:
            get_schedule(s)
        for f in self.families:
            get_family(f)


_reference = functools.lru_cache(maxsize=8)(load_reference)


_PREDICTED: dict[tuple[str, str, str], tuple[float, float]] = {}


def _predicted(reference: str, family: str, schedule: str) -> tuple[float, float]:
    """``lim T^p steps`` and its error (NaN for a family without a rate), memoised: the constant of
    one (reference, family, schedule) serves every T."""
    key = (reference, family, schedule)
    if key not in _PREDICTED:
        fam = get_family(family)
        if fam.order(_reference(reference)) is None:
            _PREDICTED[key] = (math.nan, math.nan)
        else:
            pc = predicted_constant(fam, _reference(reference), get_schedule(schedule))
            _PREDICTED[key] = (pc.value, pc.error)
    return _PREDICTED[key]


def prepare(config: RateConfig) -> dict[tuple[str, str, str], tuple[float, float]]:
    """Every predicted constant of the sweep, computed once (by the driving process)."""
    return {(r, f, s): _predicted(r, get_family(f).name, s)
            for r in config.references for s in config.schedules for f in config.families}


def install(constants: dict[tuple[str, str, str], tuple[float, float]]) -> None:
    """Put the constants of :func:`prepare` into this process's memo."""
    _PREDICTED.update(constants)


def points(config: RateConfig):
    return [{"reference": r, "schedule": s, "family": f, "T": t} for r in config.references
            for s in config.schedules for f in config.families for t in config.T]


def run_point(config: RateConfig, point) -> dict[str, float]:
    family = get_family(point["family"])
    first, reference = family.first_step, _reference(point["reference"])
    order = family.order(reference)
    grid = get_schedule(point["schedule"]).grid(point["T"])
    kl = path_kl(reference, grid, family, first_step=first)
    value, error = _predicted(point["reference"], family.name, point["schedule"])
    return {"terminal": kl.terminal, "terminal_error": kl.terminal_error, "steps": kl.steps,
            "steps_error": kl.steps_error, "total": kl.total, "total_error": kl.total_error,
            "met_rtol": int(kl.met_rtol), "method": kl.method, "first_step": first,
            "order": math.nan if order is None else order,
            "predicted_constant": value, "predicted_constant_error": error}


def _fit_label(name: str, ts: list[float], steps: list[float], order: float) -> str:
    if len(ts) < 4 or not math.isfinite(order):
        return name
    fit = fit_order(ts, steps)
    return plotting.slope_label(name, fit.slope, *fit.interval)


def _constant_panel(bx, ts, steps, errors, order: int, predicted: float, colour, marker, name) -> None:
    ratio = [t**order * s / predicted for t, s in zip(ts, steps)]
    label = f"{plotting.family_label(name)}: $C = {predicted:.4g}$"
    if len(ts) >= 3:
        measured = measured_constant(ts, steps, order, errors)
        label += f", measured ${measured.value:.4g} \\pm {measured.error:.1g}$"
    bx.plot(ts, ratio, marker=marker, color=colour, gid=f"scaled:{name}", label=label)


def rate_figure(table: ResultsTable, reference: str, schedule: str):
    """The two-panel rate figure of one reference on one schedule."""
    fig, (ax, bx) = plotting.new_figure(columns=2, aspect=1.2, ncols=2)
    exact_zero, anchor, all_t = [], 0.0, []
    for family in table.distinct("family"):
        rows = sorted((r for r in table.rows if (r["reference"], r["schedule"], r["family"])
                       == (reference, schedule, family)), key=lambda r: r["T"])
        colour, marker = plotting.family_style(family)
        if rows and all(r["steps"] == 0.0 for r in rows):
            exact_zero.append(family)
            continue
        rows = [r for r in rows if 0.0 < r["steps"] < math.inf]
        if not rows:
            continue
        ts = [float(r["T"]) for r in rows]
        steps = [float(r["steps"]) for r in rows]
        order = float(rows[0]["order"])
        name = plotting.family_label(family)
        if rows[0]["first_step"] > 1:
            name += f" (from $t = {rows[0]['first_step']}$)"
        all_t += ts
        anchor = max(anchor, steps[0])
        label = _fit_label(name, ts, steps, order)
        errors = [float(r["steps_error"]) for r in rows]
        if any(e > 1e-3 * s for e, s in zip(errors, steps)):
            ax.errorbar(ts, steps, yerr=errors, marker=marker, color=colour, gid=f"data:{family}",
                        label=label)
        else:
            ax.plot(ts, steps, marker=marker, color=colour, gid=f"data:{family}", label=label)
        if math.isfinite(order):
            predicted = float(rows[0]["predicted_constant"])
            if predicted > 0:
                _constant_panel(bx, ts, steps, errors, int(order), predicted, colour, marker, family)
    if all_t:
        plotting.reference_slopes(ax, all_t, anchor=anchor)
    for family in exact_zero:
        colour, marker = plotting.family_style(family)
        ax.plot([], [], ls="none", marker=marker, color=colour,
                label=f"{plotting.family_label(family)}: steps $= 0$ at every $T$")
    ax.set(xscale="log", yscale="log", xlabel="number of steps $T$",
           ylabel="path KL, sum of steps", title=f"(a) {reference}, {schedule}")
    bx.axhline(1.0, color="0.4", ls="--", lw=0.8)
    bx.set(xscale="log", xlabel="number of steps $T$", ylabel="$T^p \\times$ steps, over\nits predicted limit $C$",
           title="(b) against the predicted constant $C$")
    for panel in (ax, bx):
        panel.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), fontsize="small")
    return fig


def figures(table: ResultsTable) -> dict:
    """One rate figure per reference and schedule, suffixed by the reference's name (and the
    schedule's, when there are several)."""
    schedules = table.distinct("schedule")
    return {figure_suffix(ref) + (f"-{figure_suffix(s)}" if len(schedules) > 1 else ""):
            rate_figure(table, ref, s) for ref in table.distinct("reference") for s in schedules}
