"""Registers the image-dimension sampling study of :mod:`studies.image_sampling` with the runner.

One point is one (family, T): :func:`studies.image_sampling.run` on the configuration narrowed to
that family and T (its exact-reference samples and floors depend only on the configuration and
seed, so every point sees the same ones). Wall-clock seconds go to the sidecar's timings, not to the
rows, so resumed and parallel runs still give identical rows.
"""

from __future__ import annotations

import dataclasses
import math

from pathkl import plotting

from .image_sampling import ImageSamplingConfig, run
from .results import ResultsTable
from .runner import Study

VALUE_COLUMNS = ("sw", "sw_stderr", "sw_floor", "spectrum_error", "spectrum_floor", "path_kl_steps",
                 "mean_evals", "cov_products")


def points(config: ImageSamplingConfig):
    return [{"family": f, "T": t} for f in config.families for t in config.steps]


def run_point(config: ImageSamplingConfig, point) -> dict:
    (row,) = run(dataclasses.replace(config, families=(point["family"],), steps=(point["T"],)))
    values = dataclasses.asdict(row)
    return {c: math.nan if values[c] is None else values[c] for c in VALUE_COLUMNS}


def figures(table: ResultsTable) -> dict:
    """(a) ``SW_2^2`` to exact samples and (b) the spectrum error against T per family, each with the
    floor of two exact samples (dotted): values at the floor are indistinguishable from exact. One
    legend below both panels names every line, the floor included."""
    fig, (ax, bx) = plotting.new_figure(columns=2, aspect=0.95, ncols=2)
    ts = sorted(table.distinct("T"))
    for family in table.distinct("family"):
        colour, marker = plotting.family_style(family)
        rows = sorted((r for r in table.rows if r["family"] == family), key=lambda r: r["T"])
        x = [r["T"] for r in rows]
        ax.errorbar(x, [r["sw"] for r in rows], yerr=[r["sw_stderr"] for r in rows], marker=marker,
                    color=colour, capsize=1.5, gid=f"data:{family}",
                    label=plotting.family_label(family))
        bx.plot(x, [r["spectrum_error"] for r in rows], marker=marker, color=colour,
                gid=f"spectrum:{family}", label=plotting.family_label(family))
    for panel, column in ((ax, "sw_floor"), (bx, "spectrum_floor")):
        panel.axhline(float(table.rows[0][column]), color="0.4", ls=":", lw=0.8,
                      label="two exact samples")
        panel.set(xscale="log", xlabel="number of steps $T$")
        plotting.integer_log_ticks(panel, ts)
    bx.set(yscale="log")
    reference = table.meta["config"]["ref"].rsplit("/", 1)[-1]
    ax.set(ylabel="SW$_2^2$ to exact samples", title=f"(a) {reference}")
    bx.set(ylabel=r"mean $|\hat v_k / \lambda_k - 1|$", title="(b) power spectrum error")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4)
    return {"": fig}


STUDY = Study(
    name="image_sampling",
    description="image-dimension DDPM sampling: LGS (lanczos:k) vs analytic and diag, SW and spectrum",
    config_type=ImageSamplingConfig,
    points=points,
    run_point=run_point,
    key_columns=("family", "T"),
    value_columns=VALUE_COLUMNS,
    small={"families": ("analytic", "lanczos:2"), "steps": (2,), "n": 40},
    figures=figures,
)
