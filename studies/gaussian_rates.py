"""Path-KL rates on Gaussian data: isotropic families are Theta(1/T), ``full`` is exactly 0.

The reference is ``N(0, U diag(eigenvalues) U^T)`` with ``U`` a random rotation drawn from ``seed``
(``rotate = false``: axis-aligned, where ``diag`` is exact too). Each point is one (family, T): the
exact ``terminal``, ``steps`` and ``total`` of :func:`pathkl.pathspace.path_kl`, and the family's
predicted leading constant ``lim T^p steps`` (:func:`pathkl.rates.predicted_constant`, DESIGN.md
section 3). ``beta_tilde`` is summed from t = 2 (its t = 1 step is infinite).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from pathkl.covariances import get_family
from pathkl.errors import InputError
from pathkl.pathspace import path_kl
from pathkl.rates import predicted_constant
from pathkl.references import GaussianReference
from pathkl.schedules import get_schedule

from . import register
from .rate_figures import RATE_COLUMNS, rate_figure
from .runner import Study


@dataclass(frozen=True)
class GaussianRatesConfig:
    schedule: str = "vp-linear"
    eigenvalues: tuple[float, ...] = (0.05, 0.2, 1.0, 3.0, 10.0)
    rotate: bool = True
    families: tuple[str, ...] = ("beta", "analytic", "diag", "full", "beta_tilde")
    T: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120)
    seed: int = 0

    def __post_init__(self):
        if list(self.T) != sorted(set(self.T)) or self.T[0] < 2:
            raise InputError("T must be a strictly increasing list of integers >= 2")
        for f in self.families:
            get_family(f)


@functools.lru_cache(maxsize=4)
def reference(eigenvalues: tuple[float, ...], rotate: bool, seed: int) -> GaussianReference:
    """The Gaussian reference of a configuration (rotation from a seeded QR of a normal matrix)."""
    d = len(eigenvalues)
    basis = None
    if rotate:
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        basis = q * torch.sign(torch.diagonal(r))
    return GaussianReference.from_eigenvalues(eigenvalues, basis=basis)


@functools.lru_cache(maxsize=32)
def _predicted(family: str, eigenvalues: tuple[float, ...], rotate: bool, seed: int,
               schedule: str) -> tuple[float, float]:
    fam = get_family(family)
    if fam.order is None:
        return math.nan, math.nan
    pc = predicted_constant(fam, reference(eigenvalues, rotate, seed), get_schedule(schedule))
    return pc.value, pc.error


def points(config: GaussianRatesConfig):
    return [{"family": f, "T": t} for f in config.families for t in config.T]


def run_point(config: GaussianRatesConfig, point) -> dict[str, float]:
    family = get_family(point["family"])
    ref = reference(config.eigenvalues, config.rotate, config.seed)
    first = 2 if family.order is None else 1
    kl = path_kl(ref, get_schedule(config.schedule).grid(point["T"]), family, first_step=first)
    value, error = _predicted(family.name, config.eigenvalues, config.rotate, config.seed,
                              config.schedule)
    return {"terminal": kl.terminal, "steps": kl.steps, "total": kl.total, "first_step": first,
            "order": math.nan if family.order is None else family.order,
            "predicted_constant": value, "predicted_constant_error": error}


def figures(table):
    return {"": rate_figure(table, title="Gaussian data")}


STUDY = register(Study(
    name="gaussian_rates",
    description="path KL vs T on Gaussian data: isotropic families Theta(1/T), full exactly 0",
    config_type=GaussianRatesConfig,
    points=points,
    run_point=run_point,
    key_columns=("family", "T"),
    value_columns=RATE_COLUMNS,
    small={"T": (8, 16, 32, 64), "families": ("beta", "analytic", "full")},
    figures=figures,
))
