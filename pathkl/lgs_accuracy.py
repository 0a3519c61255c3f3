"""Accuracy of the Lanczos Gaussian sampler on a covariance of an exact reference.

For points ``x ~ q_tau`` and ``z ~ N(0, I)`` the k-step Lanczos draw ``y_k = |z| V_k T_k^{1/2} e_1``
(:func:`pathkl.lanczos.lanczos_sampler`) is compared with the exact ``Sigma^{1/2} z``, where
``Sigma`` is the optimal reverse covariance ``Sigma*_t`` of one step of a uniform grid (target
``"reverse"``) or ``Cov[x_0 | x_tau]`` (target ``"x0"``, what DDIM uses). Beside the measured relative
error ``|y_k - Sigma^{1/2} z| / |Sigma^{1/2} z|`` stands the a priori bound
``2 E_{k-1}(sqrt; [lambda_min, lambda_max]) |z| / |Sigma^{1/2} z|`` (:func:`pathkl.lanczos.sqrt_error_bound`, docs/theory.md section 8.2).
Up to :data:`DENSE_LIMIT` dimensions the exact root and spectrum come from a dense
eigendecomposition; above, from a :data:`REFERENCE_STEPS`-step Lanczos run, whose own a posteriori
error and Ritz interval are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from .covariances import ReverseStep
from .errors import InputError
from .lanczos import lanczos, lanczos_sampler, sqrt_error_bound
from .matvecs import closed_form_cov_matvec
from .schedules import DTYPE, Schedule

#: Above this dimension the exact ``Sigma^{1/2} z`` and spectrum come from a long Lanczos run.
DENSE_LIMIT = 1024
#: Steps of that long run.
REFERENCE_STEPS = 100
#: Covariances the sampler can be measured on.
TARGETS = ("reverse", "x0")


@dataclass(frozen=True)
class LanczosAccuracy:
    """Per number of steps ``k``: the mean and maximum relative error over the batch and the a
    priori bound (maximum over the batch). ``where``: the level (``tau``, and ``step``, ``T`` for the
    reverse target); ``exact``: how the exact root was computed (``"dense"`` or ``"lanczos:100"``, then
    with its ``exact_error_estimate``); ``condition``: the largest condition number of ``Sigma``."""

    target: str
    where: dict[str, float]
    d: int
    n: int
    exact: str
    exact_error_estimate: float | None
    condition: float
    k: list[int]
    error_mean: list[float]
    error_max: list[float]
    bound: list[float]

    def as_dict(self) -> dict:
        """JSON-ready fields, ``where`` inlined after ``target`` (no ``exact_error_estimate`` for a dense root)."""
        fields = asdict(self)
        where = fields.pop("where")
        if fields["exact_error_estimate"] is None:
            del fields["exact_error_estimate"]
        return {"target": fields.pop("target"), **where, **fields}


Matvec = Callable[[torch.Tensor], torch.Tensor]


def covariance_operator(reference, schedule: Schedule, *, tau: float, target: str, steps: int, n: int,
                        seed: int) -> tuple[Matvec, dict[str, float]]:
    """The matvec of the target covariance at ``n`` points ``x ~ q`` (seeded), and its level."""
    if target == "x0":
        level = schedule.level(torch.tensor(tau, dtype=DTYPE))
        x = reference.sample(n, level, generator=torch.Generator().manual_seed(seed))
        return (lambda v: reference.posterior_cov_matvec(x, v, level)), {"tau": tau}
    grid = schedule.grid(steps)
    t = min(max(1, round(tau * steps)), steps)
    step = ReverseStep.ddim(grid, t)
    x = reference.sample(n, step.level, generator=torch.Generator().manual_seed(seed))
    return closed_form_cov_matvec(reference, x, step), {"tau": float(grid.taus[t]), "step": t, "T": grid.T}


def exact_root(matvec: Matvec, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None]:
    """``(Sigma^{1/2} z, lambda_min, lambda_max, error estimate)`` per row of ``z``: a dense
    eigendecomposition (no error estimate) up to :data:`DENSE_LIMIT`, a long Lanczos run beyond."""
    n, d = z.shape
    if d <= DENSE_LIMIT:
        eye = torch.eye(d, dtype=z.dtype)
        dense = torch.stack([matvec(eye[i].expand(n, d)) for i in range(d)], dim=2)
        vals, vecs = torch.linalg.eigh(0.5 * (dense + dense.transpose(1, 2)))
        root = torch.einsum("nij,nj,nkj,nk->ni", vecs, vals.clamp_min(0).sqrt(), vecs, z)
        return root, vals[:, 0], vals[:, -1], None
    k = min(d, REFERENCE_STEPS)
    out = lanczos_sampler(k)(matvec, z)
    ritz = torch.linalg.eigvalsh(lanczos(matvec, z, k).tridiagonal())
    return out.sample, ritz[:, 0], ritz[:, -1], float(out.error_estimate.max())


def lanczos_accuracy(reference, schedule: Schedule, ks: Sequence[int], *, tau: float, target: str = "reverse",
                     steps: int = 10, n: int = 64, seed: int = 0) -> LanczosAccuracy:
    """Measured error and a priori bound of the k-step Lanczos sampler for each ``k`` in ``ks``, on
    the ``target`` covariance at noise level ``tau`` (module docstring); ``z`` is seeded by ``seed + 1``."""
    d = reference.dim
    if not 0.0 < tau <= 1.0:
        raise InputError(f"tau must lie in (0, 1], got {tau}")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if not ks or min(ks) < 1 or max(ks) > d:
        raise InputError(f"numbers of Lanczos steps must lie in 1..d = {d}, got {list(ks)}")
    if d > DENSE_LIMIT and max(ks) >= REFERENCE_STEPS:
        raise InputError(f"above d = {DENSE_LIMIT} the exact root is a {REFERENCE_STEPS}-step Lanczos run:"
                         f" the numbers of steps must stay below {REFERENCE_STEPS}")
    matvec, where = covariance_operator(reference, schedule, tau=tau, target=target, steps=steps, n=n, seed=seed)
    z = torch.randn(n, d, dtype=DTYPE, generator=torch.Generator().manual_seed(seed + 1))
    root, lam_min, lam_max, exact_error = exact_root(matvec, z)
    if not bool((lam_min > 0).all()):
        raise InputError("the covariance is singular at this level (lambda_min <= 0): no relative bound")
    root_norm = torch.linalg.vector_norm(root, dim=1)
    z_norm = torch.linalg.vector_norm(z, dim=1)
    means, worsts, bounds = [], [], []
    for k in ks:
        rel = torch.linalg.vector_norm(lanczos_sampler(k)(matvec, z).sample - root, dim=1) / root_norm
        means.append(float(rel.mean()))
        worsts.append(float(rel.max()))
        bounds.append(max(sqrt_error_bound(k, float(a), float(b)) * float(zn / r)
                          for a, b, zn, r in zip(lam_min, lam_max, z_norm, root_norm)))
    return LanczosAccuracy(target, where, d, n, "dense" if exact_error is None else f"lanczos:{REFERENCE_STEPS}",
                           exact_error, float((lam_max / lam_min).max()), list(ks), means, worsts, bounds)
