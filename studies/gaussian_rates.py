"""Path-KL rates on Gaussian data: ``beta``, ``analytic`` and (rotated basis) ``diag`` are
Theta(1/T) with the predicted leading constant; ``full`` is exactly 0 (every reverse kernel is
Gaussian); on the axis-aligned reference ``diag`` is exact as well. See :mod:`studies.rate_study`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rate_study
from .runner import Study


@dataclass(frozen=True)
class GaussianRatesConfig(rate_study.RateConfig):
    references: tuple[str, ...] = ("gaussian-5d", "gaussian-5d-axis")


STUDY = Study(
    name="gaussian_rates",
    description="path KL vs T on Gaussian data: isotropic families Theta(1/T), full exactly 0",
    config_type=GaussianRatesConfig,
    points=rate_study.points,
    run_point=rate_study.run_point,
    key_columns=rate_study.KEY_COLUMNS,
    value_columns=rate_study.VALUE_COLUMNS,
    small={"references": ("gaussian-5d",), "T": (8, 16, 32, 64),
           "families": ("beta", "analytic", "full")},
    figures=rate_study.figures,
    prepare=rate_study.prepare,
    install=rate_study.install,
)
