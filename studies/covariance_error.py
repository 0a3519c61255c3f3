"""Covariance error against noise level, for each family with the exact score (OCM, Ou et al. 2025,
Figure 3a in spirit).

With the exact mean, the only error of step t is the covariance's, measured by the kernel KL
``KL(N(mu*, Sigma*_t) || N(mu*, Sigma_t))`` ``~ (1/4) ||Sigma_t^{-1/2} Sigma*_t Sigma_t^{-1/2} - I||_F^2``
(the ``per_step`` entries of :func:`pathkl.pathspace.path_kl`; for non-Gaussian data the expected KL
of the exact kernel). A family of order p has ``T^(p+1) KL_t -> c beta(tau)^(p+1) E_{q_tau}||D||^2``
(docs/theory.md section 6), the integrand of its predicted leading constant, so the rows carry both the
scaled measurement and that closed-form ``leading`` curve at the step's midpoint ``tau``.
One point is one (reference, family, T); it returns one row per step t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.families import get_family
from pathkl.pathspace import leading_integrand, path_kl
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, get_schedule

from .results import ResultsTable
from .runner import Study, figure_suffix


@dataclass(frozen=True)
class CovarianceErrorConfig:
    references: tuple[str, ...] = ("gaussian-5d",)
    schedule: str = "vp-linear"
    families: tuple[str, ...] = ("beta", "beta_tilde", "analytic", "diag", "full")
    T: tuple[int, ...] = (25, 50, 100, 200)

    def __post_init__(self):
        if not self.T or min(self.T) < 2:
            raise InputError("T must be a non-empty list of integers >= 2")
        get_schedule(self.schedule)
        for f in self.families:
            get_family(f)


def points(config: CovarianceErrorConfig):
    return [{"reference": r, "family": f, "T": t}
            for r in config.references for f in config.families for t in config.T]


def run_point(config: CovarianceErrorConfig, point) -> list[dict]:
    family = get_family(point["family"])
    schedule = get_schedule(config.schedule)
    reference = load_reference(point["reference"])
    grid = schedule.grid(point["T"])
    per_step = path_kl(reference, grid, family).per_step.tolist()
    mids = ((grid.taus[:-1] + grid.taus[1:]) / 2).tolist()
    rows = []
    for t, (kl, tau) in enumerate(zip(per_step, mids), start=1):
        scaled = leading = math.nan
        rate = family.rate(reference)
        if rate.order is not None:
            p = rate.order
            tau_t = torch.tensor(tau, dtype=DTYPE)
            scaled = point["T"] ** (p + 1) * kl
            leading = (rate.coefficient * float(schedule.beta_rate(tau_t)) ** (p + 1)
                       * leading_integrand(reference, family, schedule.level(tau_t)).value)
        rows.append({"t": t, "tau": tau, "kernel_kl": kl, "scaled": scaled, "leading": leading})
    return rows


def _panel_kl(ax, table: ResultsTable, reference: str, T: int) -> None:
    for family in table.distinct("family"):
        rows = [r for r in table.rows if (r["reference"], r["family"], r["T"]) == (reference, family, T)
                and 0.0 < r["kernel_kl"] < math.inf]
        colour, _ = plotting.family_style(family)
        if not rows:
            if all(r["kernel_kl"] == 0.0 for r in table.rows
                   if (r["reference"], r["family"]) == (reference, family)):
                ax.plot([], [], color=colour, label=f"{plotting.family_label(family)}: 0 at every $t$")
            continue
        ax.plot([r["tau"] for r in rows], [r["kernel_kl"] for r in rows], color=colour,
                gid=f"data:{family}", label=plotting.family_label(family))
    ax.set(yscale="log", xlabel=r"noise level $\tau$", ylabel="kernel KL of step $t$",
           title=f"(a) {reference}, $T = {T}$")
    ax.legend(loc="best")


def _panel_scaled(bx, table: ResultsTable, reference: str) -> None:
    ts = sorted(table.distinct("T"))
    for family in table.distinct("family"):
        colour, _ = plotting.family_style(family)
        for i, T in enumerate(ts):
            rows = [r for r in table.rows if (r["reference"], r["family"], r["T"]) == (reference, family, T)
                    and math.isfinite(r["scaled"]) and r["scaled"] > 0]
            if not rows:
                continue
            bx.plot([r["tau"] for r in rows], [r["scaled"] for r in rows], color=colour,
                    alpha=0.35 + 0.65 * (i + 1) / len(ts), lw=0.8, gid=f"scaled:{family}:{T}",
                    label=f"{plotting.family_label(family)}" if i == len(ts) - 1 else None)
        if rows:
            bx.plot([r["tau"] for r in rows], [r["leading"] for r in rows], color="k", ls="--",
                    lw=0.7, gid=f"leading:{family}")
    bx.plot([], [], color="k", ls="--", lw=0.7, label=r"$c\,\beta(\tau)^{p+1}E\|D_\tau\|_F^2$")
    bx.set(yscale="log", xlabel=r"noise level $\tau$", ylabel=r"$T^{p+1}\times$ kernel KL",
           title=f"(b) $T = {', '.join(map(str, ts))}$ (darker: larger)")
    bx.legend(loc="best")


def figures(table: ResultsTable) -> dict:
    """Per reference: (a) kernel KL against tau at the largest T; (b) the scaled KL for every T
    approaching the closed-form leading curve."""
    out = {}
    for reference in table.distinct("reference"):
        fig, (ax, bx) = plotting.new_figure(columns=2, aspect=0.8, ncols=2)
        _panel_kl(ax, table, reference, max(table.distinct("T")))
        _panel_scaled(bx, table, reference)
        out[figure_suffix(reference)] = fig
    return out


STUDY = Study(
    name="covariance_error",
    description="covariance error (kernel KL with the exact mean) vs noise level, per family",
    config_type=CovarianceErrorConfig,
    points=points,
    run_point=run_point,
    key_columns=("reference", "family", "T"),
    row_columns=("t",),
    value_columns=("tau", "kernel_kl", "scaled", "leading"),
    small={"T": (10, 20), "families": ("beta", "analytic", "full")},
    figures=figures,
)
