"""Registers the image-dimension sampling study of :mod:`studies.image_sampling` with the runner.

One point is one (family, T): :func:`studies.image_sampling.run` on the configuration narrowed to
that family and T (its exact-reference samples and floors depend only on the configuration and
seed, so every point sees the same ones). Wall-clock seconds go to the sidecar's timings, not to the
rows, so resumed and parallel runs still give identical rows.
"""

from __future__ import annotations

import dataclasses
import math

from . import register
from .image_sampling import ImageSamplingConfig, run
from .runner import Study

VALUE_COLUMNS = ("sw", "sw_stderr", "sw_floor", "spectrum_error", "spectrum_floor", "path_kl_steps",
                 "mean_evals", "cov_products")


def points(config: ImageSamplingConfig):
    return [{"family": f, "T": t} for f in config.families for t in config.steps]


def run_point(config: ImageSamplingConfig, point) -> dict:
    (row,) = run(dataclasses.replace(config, families=(point["family"],), steps=(point["T"],)))
    values = dataclasses.asdict(row)
    return {c: math.nan if values[c] is None else values[c] for c in VALUE_COLUMNS}


STUDY = register(Study(
    name="image_sampling",
    description="image-dimension DDPM sampling: LGS (lanczos:k) vs analytic and diag, SW and spectrum",
    config_type=ImageSamplingConfig,
    points=points,
    run_point=run_point,
    key_columns=("family", "T"),
    value_columns=VALUE_COLUMNS,
    small={"families": ("analytic", "lanczos:2"), "steps": (2,), "n": 40},
))
