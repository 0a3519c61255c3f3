"""Error of the Lanczos Gaussian sampler against the number of steps k, and its a priori bound.

For ``A = diag(lambda)`` with ``dim`` eigenvalues spaced geometrically in ``[1/kappa, 1]`` (Lanczos is
invariant under a change of orthonormal basis, so the diagonal loses nothing) and ``z ~ N(0, I)``,
the exact draw is ``A^{1/2} z = sqrt(lambda) * z``. For each k the rows give, over ``samples`` draws,
the mean (with its standard error) and the maximum of ``||y_k - A^{1/2} z|| / ||z||``, the bound
``B_k`` of :func:`pathkl.lanczos.sqrt_error_bound` (which every draw must respect), the mean
a posteriori estimate ``||y_k - y_{k-1}|| / ||y_k||`` (:class:`pathkl.lanczos.LanczosSample`), and the predicted geometric rate ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pathkl import plotting
from pathkl.errors import InputError
from pathkl.lanczos import convergence_rate, krylov_matfun, lanczos, sqrt_error_bound

from .results import ResultsTable
from .runner import Study


@dataclass(frozen=True)
class LanczosDecayConfig:
    kappas: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    dim: int = 400
    k_max: int = 40
    samples: int = 32
    seed: int = 0
    reortho: bool = True

    def __post_init__(self):
        if not self.kappas or min(self.kappas) < 1.0:
            raise InputError("every condition number kappa must be >= 1")
        if self.dim < 2 or self.k_max < 1 or self.samples < 2:
            raise InputError("need dim >= 2, k_max >= 1 and samples >= 2")


def points(config: LanczosDecayConfig):
    return [{"kappa": float(kappa)} for kappa in config.kappas]


def _sqrt(theta: torch.Tensor) -> torch.Tensor:
    return theta.clamp_min(0.0).sqrt()  # Ritz values of a PSD operator, up to rounding


def run_point(config: LanczosDecayConfig, point) -> list[dict]:
    """One Lanczos run of ``k_max`` steps per draw; ``y_k`` from its leading k x k block (exactly
    the k-step sampler's draw: the first k steps of the recurrence do not depend on later ones)."""
    kappa = point["kappa"]
    lam = torch.logspace(-math.log10(kappa), 0.0, config.dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.samples, config.dim, generator=gen, dtype=torch.float64)
    exact = lam.sqrt() * z
    z_norm = torch.linalg.vector_norm(z, dim=1)
    lam_min, lam_max = float(lam.min()), float(lam.max())
    decomposition = lanczos(lambda v: lam * v, z, config.k_max, reortho=config.reortho)
    rows, previous = [], torch.zeros_like(z)
    for k in range(1, config.k_max + 1):
        y = krylov_matfun(decomposition, _sqrt, k=k)
        err = torch.linalg.vector_norm(y - exact, dim=1) / z_norm
        estimate = torch.linalg.vector_norm(y - previous, dim=1) / torch.linalg.vector_norm(y, dim=1)
        previous = y
        rows.append({
            "k": k,
            "error_mean": float(err.mean()),
            "error_stderr": float(err.std() / math.sqrt(config.samples)),
            "error_max": float(err.max()),
            "bound": sqrt_error_bound(k, lam_min, lam_max),
            "estimate_mean": float(estimate.mean()),
            "rate": convergence_rate(lam_min, lam_max),
        })
    return rows


def figures(table: ResultsTable) -> dict:
    """Error against k per kappa (markers, with standard errors), its bound (dashed)."""
    fig, (ax,) = plotting.new_figure(columns=1, aspect=0.8)
    for i, kappa in enumerate(table.distinct("kappa")):
        colour = plotting.OKABE_ITO[i % len(plotting.OKABE_ITO)]
        rows = sorted((r for r in table.rows if r["kappa"] == kappa), key=lambda r: r["k"])
        ks = [r["k"] for r in rows]
        ax.errorbar(ks, [r["error_mean"] for r in rows], yerr=[r["error_stderr"] for r in rows],
                    marker="o", ms=2, lw=0.8, color=colour, gid=f"data:{kappa}",
                    label=f"$\\kappa = 10^{{{math.log10(kappa):.0f}}}$")
        ax.plot(ks, [r["bound"] for r in rows], ls="--", lw=0.8, color=colour,
                gid=f"bound:{kappa}")
    ax.plot([], [], ls="--", color="0.4", label="a priori bound $B_k$")
    ax.set(yscale="log", xlabel="Lanczos steps $k$",
           ylabel=r"$\|y_k - A^{1/2}z\| / \|z\|$", title="Lanczos sampler error")
    ax.legend(loc="lower left")
    return {"": fig}


STUDY = Study(
    name="lanczos_decay",
    description="Lanczos Gaussian sampler error vs k against its a priori bound, per condition number",
    config_type=LanczosDecayConfig,
    points=points,
    run_point=run_point,
    key_columns=("kappa",),
    row_columns=("k",),
    value_columns=("error_mean", "error_stderr", "error_max", "bound", "estimate_mean", "rate"),
    small={"kappas": (10.0, 1000.0), "dim": 60, "k_max": 12, "samples": 8},
    figures=figures,
)
