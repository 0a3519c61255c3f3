"""Few-step sampling quality against T for each covariance family, with the exact posterior mean
(OCM, Ou et al. 2025, Figure 3c/d in spirit).

Each point (reference, family, T, seed) draws ``samples`` points by ancestral DDPM sampling
(:func:`pathkl.sampling.sample`, exact mean, the family's covariance) and compares them with as many
exact draws from the reference: unbiased ``MMD^2`` with the OCM bandwidths (:func:`pathkl.metrics.mmd`)
in low dimension, or the sliced Wasserstein ``SW_2^2`` (:func:`pathkl.metrics.sliced_wasserstein`),
each with its block standard error. ``cov_products`` is the number of covariance-vector products the
family spent. Reference draws use seed ``seed + 10^6`` so they are independent of the sampler's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.families import parse_family
from pathkl.metrics import mmd, sliced_wasserstein
from pathkl.refspec import load_reference
from pathkl.sampling import sample
from pathkl.schedules import get_schedule

from .results import ResultsTable
from .runner import Study, figure_suffix

METRICS = {"mmd": mmd, "sw": sliced_wasserstein}


@dataclass(frozen=True)
class FewStepSamplingConfig:
    references: tuple[str, ...] = ("gaussian-2d",)
    schedule: str = "vp-linear"
    families: tuple[str, ...] = ("beta", "beta_tilde", "analytic", "diag", "full",
                                 "rademacher:4", "lanczos:2")
    T: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    samples: int = 4000
    seeds: tuple[int, ...] = (0,)
    metric: str = "mmd"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise InputError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        if not self.T or min(self.T) < 1 or self.samples < 20:
            raise InputError("need T >= 1 and at least 20 samples (10 blocks of 2)")
        get_schedule(self.schedule)
        for f in self.families:
            parse_family(f)


def points(config: FewStepSamplingConfig):
    return [{"reference": r, "family": f, "T": t, "seed": s} for r in config.references
            for f in config.families for t in config.T for s in config.seeds]


def run_point(config: FewStepSamplingConfig, point) -> dict:
    reference = load_reference(point["reference"])
    grid = get_schedule(config.schedule).grid(point["T"])
    run = sample(reference, grid, point["family"], n=config.samples, seed=point["seed"])
    exact = reference.sample(config.samples,
                             generator=torch.Generator().manual_seed(point["seed"] + 10**6))
    estimate = METRICS[config.metric](run.samples, exact)
    return {"metric": estimate.value, "metric_stderr": estimate.stderr,
            "cov_products": run.cov_products}


def figures(table: ResultsTable) -> dict:
    """Per reference: the metric against T (log x), mean over seeds, with standard errors, on a
    symmetric-log y axis: linear within twice the median standard error of 0 (the shaded band, where
    a value cannot be told from 0), logarithmic beyond, so that the families close to the floor stay
    apart from the one far above them (``beta_tilde`` at small T)."""
    out = {}
    for reference in table.distinct("reference"):
        fig, (ax,) = plotting.new_figure(columns=1, aspect=1.05)
        noise = 2.0 * statistics.median(r["metric_stderr"] for r in table.rows if r["reference"] == reference)
        ax.axhspan(-noise, noise, color="0.9", lw=0, zorder=0, label=r"$\pm 2$ median s.e.")
        for family in table.distinct("family"):
            colour, marker = plotting.family_style(family)
            rows = [r for r in table.rows if (r["reference"], r["family"]) == (reference, family)]
            ts = sorted({r["T"] for r in rows})
            means, errs = [], []
            for T in ts:
                at = [r for r in rows if r["T"] == T]
                means.append(sum(r["metric"] for r in at) / len(at))
                errs.append(sum(r["metric_stderr"] ** 2 for r in at) ** 0.5 / len(at))
            ax.errorbar(ts, means, yerr=errs, marker=marker, color=colour, capsize=1.5,
                        gid=f"data:{family}", label=plotting.family_label(family))
        ax.axhline(0.0, color="0.6", lw=0.6)
        metric = table.meta["config"]["metric"]
        ax.set_yscale("symlog", linthresh=noise, linscale=0.6)
        ax.set(xscale="log", xlabel="number of steps $T$",
               ylabel="MMD$^2$" if metric == "mmd" else "SW$_2^2$",
               title=f"sampling with the exact mean, {reference}")
        plotting.integer_log_ticks(ax, sorted(table.distinct("T")))  # after the log scale is set
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, fontsize="small")
        out[figure_suffix(reference)] = fig
    return out


STUDY = Study(
    name="few_step_sampling",
    description="sample quality (MMD or sliced W2) vs T per family, exact posterior mean",
    config_type=FewStepSamplingConfig,
    points=points,
    run_point=run_point,
    key_columns=("reference", "family", "T", "seed"),
    value_columns=("metric", "metric_stderr", "cov_products"),
    small={"T": (2, 8), "families": ("beta", "full", "lanczos:2"), "samples": 400},
    figures=figures,
)
