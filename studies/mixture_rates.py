"""Path-KL rates on Gaussian mixtures, every family: on the rotated, correlated mixture ``beta``,
``analytic`` and ``diag`` are Theta(1/T) and ``full`` is O(1/T^2) (approached slowly, hence the
Richardson-corrected fit); on the OCM 3x3 grid (product form, diagonal Hessians) ``diag`` and ``full``
coincide at O(1/T^2). See :mod:`studies.rate_study` for the rows and the figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rate_study
from .runner import Study

#: Preset names of the rotated correlated 2-D mixture and the OCM paper's 3x3 grid toy.
PRESET_NAMES = ("mog-rotated", "mog-ocm-grid")


@dataclass(frozen=True)
class MixtureRatesConfig(rate_study.RateConfig):
    references: tuple[str, ...] = PRESET_NAMES
    T: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)


STUDY = Study(
    name="mixture_rates",
    description="path KL vs T on the rotated mixture and the OCM 3x3 grid, every family",
    config_type=MixtureRatesConfig,
    points=rate_study.points,
    run_point=rate_study.run_point,
    key_columns=rate_study.KEY_COLUMNS,
    value_columns=rate_study.VALUE_COLUMNS,
    small={"references": PRESET_NAMES[:1], "T": (4, 8, 16, 32), "families": ("beta", "full")},
    figures=rate_study.figures,
    prepare=rate_study.prepare,
    install=rate_study.install,
)
