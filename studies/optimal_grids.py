"""Optimal time grids: the exact path KL against the number of steps K of five K-step grids,
for ``analytic``, ``diag`` and ``full``, on a Gaussian image reference and on the rotated mixture.

Grids (all on the vp-linear schedule):

- ``uniform``: ``tau_k = k / K``;
- ``quadratic``: ``tau_k = (k / K)^2``, DDIM's "quadratic" skip (Song et al. 2021), dense at low noise;
- ``cosine``: the noise levels the cosine schedule (Nichol & Dhariwal 2021) puts at ``k / K``, mapped
  onto vp-linear by ``abar`` (the last level is tau = 1);
- ``asymptotic``: the leading-term optimum ``rho ~ f^(1/(p+1))`` (pathkl.asymptotic_grid), where the
  family has a leading term on the reference (not ``full`` on a Gaussian: its KL is 0 on every grid);
- ``dp``: the best K-step subsequence of ``tau = (k / N)^2`` (``spacing``; pathkl.optimal_grid),
  N = ``candidates`` (Gaussian) or ``mixture_candidates`` (mixture pair costs are quadratures, at
  ``mixture_rtol``). The quadratic lattice: with N = 32 the uniform one has no level below 1/32,
  where the asymptotic grid puts several of its first levels, and the DP lost to it (K >= 4).

Each row holds the grid's exact KL (``total``, with ``steps`` and ``terminal``) and errors, its levels
(``taus``, space-separated) and, for ``dp``, the regret bound of pathkl.optimal_grid.BestGrid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import NullFormatter

from pathkl import plotting
from pathkl.asymptotic_grid import asymptotic_density
from pathkl.errors import InputError
from pathkl.families import get_family
from pathkl.optimal_grid import Candidates, best_grid, pair_costs
from pathkl.pathspace import path_kl
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, get_schedule, grid_from_taus

from .results import ResultsTable
from .runner import Study, figure_suffix

GRIDS = ("uniform", "quadratic", "cosine", "asymptotic", "dp")


@dataclass(frozen=True)
class OptimalGridsConfig:
    """The references, families and K ladders; the DP's candidates.

    The mixture is where the cost is: N = 64 candidates are N(N+1)/2 = 2080 two-level quadratures
    per family at ``mixture_rtol`` (the committed paper_figs/results/optimal_grids took 24 minutes
    wall with --jobs 2 on the 2-core machine, each engine call on one thread). With N fixed the DP is
    optimal only over its lattice: at K = 50 of 64 candidates it loses to the cosine and asymptotic
    grids (1.1-2.4x), and from K = 10 it trails the asymptotic grid by 1-10%; the lattice, not the
    DP, is the limit. The Gaussian image has N = 1000 (seconds per family).
    """

    gaussian: str = "image-3x64x64"
    mixture: str = "mog-rotated"
    families: tuple[str, ...] = ("analytic", "diag", "full")
    K: tuple[int, ...] = (2, 4, 6, 10, 16, 25, 40, 50, 64, 100)
    mixture_K: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 16, 25, 32, 40, 50)
    candidates: int = 1000
    mixture_candidates: int = 64
    mixture_rtol: float = 1e-4
    spacing: str = "quadratic"

    def __post_init__(self):
        if max(self.K) > self.candidates or max(self.mixture_K) > self.mixture_candidates:
            raise InputError("every K must be at most its number of candidate steps")


def points(config: OptimalGridsConfig):
    """One point per reference and family (a mixture family's pair costs take minutes)."""
    return [{"reference": ref, "family": f} for ref in (config.gaussian, config.mixture) for f in config.families]


def cosine_levels(steps: int) -> torch.Tensor:
    """vp-linear taus with ``abar_vp(tau_k) = abar_cos(k / K)`` for k < K, and tau_K = 1:
    ``tau = (-b0 + sqrt(b0^2 + 2 (b1 - b0) L)) / (b1 - b0)``, ``L = -log abar``."""
    vp, cos = get_schedule("vp-linear"), get_schedule("cosine")
    log_abar = -cos.log_abar(torch.arange(steps, dtype=DTYPE) / steps)
    slope = vp.beta_max - vp.beta_min
    taus = (-vp.beta_min + torch.sqrt(vp.beta_min**2 + 2 * slope * log_abar)) / slope
    return torch.cat([taus, torch.ones(1, dtype=DTYPE)])


def _grids(steps: int, density, costs):
    """The five grids of K steps (None where a grid does not exist), with the DP's account."""
    schedule = get_schedule("vp-linear")
    uniform = torch.arange(steps + 1, dtype=DTYPE) / steps
    out = {"uniform": (schedule.grid(steps), None), "quadratic": (grid_from_taus(schedule, uniform**2), None),
           "cosine": (grid_from_taus(schedule, cosine_levels(steps)), None),
           "asymptotic": (None if density is None else grid_from_taus(schedule, density.taus(steps)), None)}
    best = best_grid(costs, steps)
    out["dp"] = (costs.candidates.grid(best.positions), best)
    return out


def run_point(config: OptimalGridsConfig, point) -> list[dict]:
    """Every grid of every K for one family on one reference: its exact path KL (pathkl.path_kl on
    the grid itself), its levels and, for ``dp``, the regret bound."""
    reference = load_reference(point["reference"])
    gaussian = point["reference"] == config.gaussian
    family = get_family(point["family"])
    schedule = get_schedule("vp-linear")
    pool = Candidates.uniform(schedule, config.candidates if gaussian else config.mixture_candidates,
                              spacing=config.spacing)
    rtol = 1e-6 if gaussian else config.mixture_rtol
    costs = pair_costs(reference, pool, family, rtol=rtol)
    try:
        density = asymptotic_density(reference, schedule, family)
    except InputError:  # no leading term (full on a Gaussian: KL 0 on every grid): no asymptotic grid
        density = None
    rows = []
    for steps in config.K if gaussian else config.mixture_K:
        for kind, (grid, best) in _grids(steps, density, costs).items():
            if grid is None:
                continue
            kl = path_kl(reference, grid, family, rtol=rtol)
            rows.append({"grid": kind, "K": steps, "total": kl.total, "total_error": kl.total_error,
                         "steps": kl.steps, "steps_error": kl.steps_error, "terminal": kl.terminal,
                         "regret_bound": best.regret_bound if best else math.nan,
                         "taus": " ".join(repr(t) for t in grid.taus.tolist())})
    return rows


_STYLE = {"uniform": ("0.4", "o"), "quadratic": (plotting.OKABE_ITO[1], "s"), "cosine": (plotting.OKABE_ITO[2], "^"),
          "asymptotic": (plotting.OKABE_ITO[4], "v"), "dp": (plotting.OKABE_ITO[0], "D")}


#: K labelled on the log axes (those of the ladder that are among them).
_TICKS = (2, 4, 8, 10, 16, 25, 50, 100)


def _series(rows, family, kind):
    return sorted((r for r in rows if r["family"] == family and r["grid"] == kind), key=lambda r: r["K"])


def _kl_panels(ax, bx, rows, family):
    """``ax``: KL (steps) against K per grid; ``bx``: each grid's KL over the DP grid's at the same K."""
    dp = {r["K"]: r["steps"] for r in _series(rows, family, "dp")}
    for kind in GRIDS:
        chosen = _series(rows, family, kind)
        if not chosen or all(r["steps"] == 0 for r in chosen):
            continue
        colour, marker = _STYLE[kind]
        ks = [r["K"] for r in chosen]
        ax.errorbar(ks, [r["steps"] for r in chosen], yerr=[r["steps_error"] for r in chosen],
                    color=colour, marker=marker, ms=2.5, lw=0.8, label=kind, gid=f"data:{family}:{kind}")
        bx.plot(ks, [r["steps"] / dp[r["K"]] for r in chosen], color=colour, marker=marker, ms=2.5, lw=0.8,
                gid=f"ratio:{family}:{kind}")
    ax.set(xscale="log", yscale="log", title=plotting.family_label(family))
    ax.yaxis.set_minor_formatter(NullFormatter())
    bx.set(xscale="log", xlabel="steps $K$")
    for panel in (ax, bx):
        plotting.integer_log_ticks(panel, [k for k in sorted(dp) if k in _TICKS])


def _levels_panel(ax, rows, family):
    """The levels of each grid at the K nearest 10, on a square-root axis (they crowd at low noise)."""
    steps = min({r["K"] for r in rows}, key=lambda k: abs(k - 10))
    for y, kind in enumerate(GRIDS):
        row = next((r for r in rows if r["family"] == family and r["grid"] == kind and r["K"] == steps), None)
        if row is None:
            continue
        taus = [float(t) for t in str(row["taus"]).split()]
        ax.plot(taus, [y] * len(taus), "|", color=_STYLE[kind][0], ms=6, mew=1.0, clip_on=False,
                gid=f"levels:{kind}")
    ax.set_xscale("function", functions=(np.sqrt, np.square))
    ax.set(yticks=range(len(GRIDS)), yticklabels=GRIDS, xlabel=r"$\tau$ (square-root axis)", xlim=(0, 1),
           ylim=(-0.6, len(GRIDS) - 0.4), title=f"levels, $K = {steps}$")
    ax.set_xticks([0, 0.05, 0.2, 0.5, 1], ["0", "0.05", "0.2", "0.5", "1"])


def figures(table: ResultsTable) -> dict:
    """Per reference, one column per family (those whose KL is not 0 on every grid: not ``full`` on a
    Gaussian): top, ``steps`` (the grid-dependent part; the terminal term is the same on every
    vp-linear grid) against K per grid; bottom, each grid's over the DP grid's. Last column: the
    levels of the K = 10 grids of the first family, and the legend."""
    out = {}
    for reference in table.distinct("reference"):
        rows = [r for r in table.rows if r["reference"] == reference]
        families = list(dict.fromkeys(r["family"] for r in rows))
        shown = [f for f in families if any(r["family"] == f and r["steps"] > 0 for r in rows)]
        ncols = len(shown) + 1
        fig, axes = plotting.new_figure(columns=2, aspect=0.75, ncols=ncols, nrows=2)
        for i, family in enumerate(shown):
            _kl_panels(axes[i], axes[ncols + i], rows, family)
        axes[0].set_ylabel("path KL (steps)")
        axes[ncols].set_ylabel("KL / KL of DP")
        _levels_panel(axes[ncols - 1], rows, shown[0])
        legend = axes[-1]
        legend.axis("off")
        legend.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize="small",
                      title=f"grid ({shown[0]} levels above)")
        out[figure_suffix(reference)] = fig
    return out


STUDY = Study(
    name="optimal_grids",
    description="exact path KL vs K of uniform, quadratic, cosine, asymptotic and DP-optimal grids",
    config_type=OptimalGridsConfig,
    points=points,
    run_point=run_point,
    key_columns=("reference", "family"),
    row_columns=("grid", "K"),
    value_columns=("total", "total_error", "steps", "steps_error", "terminal", "regret_bound", "taus"),
    small={"gaussian": "gaussian-5d", "mixture": "mog-1d", "families": ("analytic", "full"), "K": (2, 4, 8),
           "mixture_K": (2,), "candidates": 40, "mixture_candidates": 4, "mixture_rtol": 1e-3},
    figures=figures,
)
