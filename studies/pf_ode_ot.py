"""Is the probability-flow ODE map an optimal-transport map? Its Jacobian's asymmetry, per reference.

For each reference, ``samples`` seeded draws ``x_1 ~ q_1`` are carried by the PF-ODE of the VP SDE
(:func:`pathkl.pf_ode.asymmetry`) down to each level of ``taus``, with the Jacobian ``A`` of the map
``x_1 -> x_tau``. A map is an optimal-transport map iff ``A`` is symmetric positive definite
everywhere; the rows give ``asymmetry = ||A - A^T||_F / (sqrt 2 ||A||_F)`` with its error from the
solver tolerance, and ``sym_min = lambda_min((A + A^T)/2) / ||A||_2`` (> 0: the symmetric part is
positive definite). Checks (index 0 in exact arithmetic, so at the error level here): a rotated
non-isotropic Gaussian (linear symmetric map), a rotated product-form mixture and data on a line
(commuting Hessians), the axis-aligned 3x3 grid (diagonal A: exactly 0). The others are the rotated
2-D mixture, the three points of Wang et al. (2025, arXiv 2505.23264; their public code's
"non-affine" case) and 16 random points in 8-d.

Empirical data have point masses, whose score is singular at tau = 0: their levels stop at the
smallest positive level of ``taus`` (docs/pf_ode.md). Reference names are those of :data:`REFERENCES`
or anything :func:`pathkl.refspec.load_reference` accepts (a preset or a JSON file).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.pf_ode import asymmetry, has_point_masses
from pathkl.presets import rotated_product
from pathkl.references import EmpiricalReference
from pathkl.refspec import load_reference
from pathkl.schedules import DTYPE, get_schedule

from .results import ResultsTable
from .runner import Study

#: The three points of Wang et al.'s public OT check ("non-affine" initialisation).
THREE_POINTS = ((0.5, 0.0), (0.0, -0.5), (0.0, 0.0))


def points_on_a_line(angle: float = 0.5) -> EmpiricalReference:
    """Wang et al.'s "affine" points (0, 0), (0, 0.5), (0, -0.6), turned off the axes by ``angle``."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    return EmpiricalReference.from_points(np.outer([0.0, 0.5, -0.6], direction))


REFERENCES: dict[str, tuple[str, Callable[[], object]]] = {
    "product-rotated": ("3-d product of 1-D mixtures (12 components), rotated", rotated_product),
    "empirical-3": ("the three 2-D points of Wang et al. 2025", lambda: EmpiricalReference.from_points(THREE_POINTS)),
    "empirical-line": ("three 2-D points on a line through 0 at angle 0.5", points_on_a_line),
    "empirical-8d": ("16 standard-normal points in 8-d (seed 0)", lambda: EmpiricalReference.from_points(
        torch.randn(16, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(0)))),
}
#: Where the map is symmetric in exact arithmetic (the check references).
SYMMETRIC = ("gaussian-5d", "product-rotated", "mog-ocm-grid", "empirical-line")


def reference_named(name: str):
    """One of :data:`REFERENCES`, a preset or a JSON file."""
    if name in REFERENCES:
        return REFERENCES[name][1]()
    try:
        return load_reference(name)
    except InputError as err:
        raise InputError(f"{err}, nor one of this study's ({', '.join(REFERENCES)})") from None


@dataclass(frozen=True)
class PFODEConfig:
    references: tuple[str, ...] = ("gaussian-5d", "product-rotated", "mog-ocm-grid", "empirical-line",
                                   "mog-rotated", "empirical-3", "empirical-8d")
    schedule: str = "vp-linear"
    samples: int = 128
    taus: tuple[float, ...] = (0.3, 0.1, 0.01, 0.001, 0.0)
    rtol: float = 1e-8
    ratio: float = 16.0
    seed: int = 0

    def __post_init__(self):
        if not self.references:
            raise InputError("references must name at least one reference")
        for name in self.references:  # refused before any point runs: unknown names, bad files, levels
            _levels(reference_named(name), self.taus)
        if self.samples < 1:
            raise InputError("samples must be >= 1")
        if not (0.0 < self.rtol < 1.0 and self.ratio > 1.0):
            raise InputError("need 0 < rtol < 1 and ratio > 1")
        if not self.taus or not all(0.0 <= t < 1.0 for t in self.taus):
            raise InputError("taus must be a non-empty list of levels in [0, 1)")
        get_schedule(self.schedule)


def points(config: PFODEConfig):
    return [{"reference": name} for name in config.references]


def _levels(reference, taus: tuple[float, ...]) -> tuple[float, ...]:
    """``taus`` without 0 for references with point masses (their score is singular there)."""
    if not has_point_masses(reference):
        return taus
    positive = tuple(t for t in taus if t > 0)
    if not positive:
        raise InputError("a reference with point masses (empirical data) needs a level > 0 in taus")
    return positive


def run_point(config: PFODEConfig, point) -> list[dict]:
    reference = reference_named(point["reference"])
    schedule = get_schedule(config.schedule)
    generator = torch.Generator().manual_seed(config.seed)
    x1 = reference.sample(config.samples, schedule.level(1.0), generator=generator)
    result = asymmetry(reference, x1, schedule=schedule, taus=_levels(reference, config.taus),
                       rtol=config.rtol, ratio=config.ratio)
    a = result.flow.jacobian
    sym = torch.linalg.eigvalsh(0.5 * (a + a.transpose(-1, -2)))[..., 0] / torch.linalg.matrix_norm(a, ord=2)
    rows = []
    for i in range(config.samples):
        for j, tau in enumerate(result.taus.tolist()):
            rows.append({"sample": i, "tau": tau, "d": reference.dim, "asymmetry": float(result.index[i, j]),
                         "asymmetry_error": float(result.error[i, j]), "sym_min": float(sym[i, j]),
                         "evaluations": int(result.flow.evaluations[i])})
    return rows


#: Where an index of exactly 0 is drawn on the log axis.
_ZERO_AT = 1e-17


def _final(table: ResultsTable, reference: str) -> list[dict]:
    rows = [r for r in table.rows if r["reference"] == reference]
    last = min(r["tau"] for r in rows)
    return [r for r in rows if r["tau"] == last]


def _panel_strip(ax, table: ResultsTable, names: list[str]) -> None:
    """(a) log10 index per sample at each reference's lowest level (jittered), the median error
    marked by a bar; hollow markers: index within its error (consistent with a symmetric A)."""
    jitter = np.random.default_rng(0)
    for k, name in enumerate(names):
        rows = _final(table, name)
        colour = plotting.OKABE_ITO[k % len(plotting.OKABE_ITO)]
        values = np.array([max(r["asymmetry"], _ZERO_AT) for r in rows])
        errors = np.array([r["asymmetry_error"] for r in rows])
        x = k + jitter.uniform(-0.25, 0.25, values.size)
        within = values <= errors
        ax.scatter(x[~within], values[~within], s=3, color=colour, lw=0, gid=f"data:{name}")
        ax.scatter(x[within], values[within], s=4, facecolors="none", edgecolors=colour, lw=0.4,
                   gid=f"within:{name}")
        ax.plot([k - 0.35, k + 0.35], [np.median(errors)] * 2, color="k", lw=1.0, gid=f"error:{name}")
    ax.axhline(_ZERO_AT, color="0.6", lw=0.5, ls=":")
    ax.plot([], [], color="k", lw=1.0, label="median error")
    ax.scatter([], [], s=4, facecolors="none", edgecolors="0.3", lw=0.4, label="index $\\leq$ error")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set(yscale="log", ylim=(_ZERO_AT / 3, 1.0), ylabel=r"$\|A - A^\mathsf{T}\|_F / (\sqrt{2} \|A\|_F)$",
           title=r"(a) at the lowest level (dotted: exactly 0)")
    ax.legend(loc="center left")


def _panel_levels(bx, table: ResultsTable, names: list[str]) -> None:
    """(b) median (solid) and maximum (dashed) index against the level tau > 0."""
    for k, name in enumerate(names):
        colour = plotting.OKABE_ITO[k % len(plotting.OKABE_ITO)]
        taus = sorted({r["tau"] for r in table.rows if r["reference"] == name and r["tau"] > 0})
        by_tau = [[max(r["asymmetry"], _ZERO_AT) for r in table.rows if r["reference"] == name and r["tau"] == t]
                  for t in taus]
        bx.plot(taus, [np.median(v) for v in by_tau], color=colour, marker="o", ms=2, lw=0.8,
                gid=f"median:{name}", label=name)
        bx.plot(taus, [max(v) for v in by_tau], color=colour, ls="--", lw=0.6, gid=f"max:{name}")
    bx.set(xscale="log", yscale="log", ylim=(_ZERO_AT / 3, 1.0), xlabel=r"level $\tau$ of the map $x_1 \mapsto x_\tau$",
           ylabel="asymmetry index", title="(b) median (solid), max (dashed)")
    bx.legend(loc="center", fontsize="x-small", ncols=2)


def figures(table: ResultsTable) -> dict:
    """(a) the index per sample at each reference's lowest level; (b) its median and maximum per level."""
    present = table.distinct("reference")
    configured = [n for n in table.meta.get("config", {}).get("references", []) if n in present]
    names = configured + [n for n in present if n not in configured]
    fig, (ax, bx) = plotting.new_figure(columns=2, aspect=0.9, ncols=2)
    _panel_strip(ax, table, names)
    _panel_levels(bx, table, names)
    return {"": fig}


STUDY = Study(
    name="pf_ode_ot",
    description="asymmetry of the PF-ODE map's Jacobian (0 for an OT map) per reference, with its error",
    config_type=PFODEConfig,
    points=points,
    run_point=run_point,
    key_columns=("reference",),
    row_columns=("sample", "tau"),
    value_columns=("d", "asymmetry", "asymmetry_error", "sym_min", "evaluations"),
    small={"references": ("gaussian-5d", "empirical-3"), "samples": 4, "taus": (0.1, 0.01), "rtol": 1e-5},
    figures=figures,
)
