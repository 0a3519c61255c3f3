"""The probability-flow ODE of the VP SDE on an exact reference, with its Jacobian (docs/pf_ode.md).

For the variance-preserving SDE ``dx = -(beta(tau)/2) x dtau + sqrt(beta(tau)) dW`` of a schedule
(``beta(tau) = -d log abar / d tau``, :meth:`pathkl.schedules.Schedule.beta_rate`) the probability-flow
ODE (Song et al. 2021, "Score-based generative modeling through SDEs", eq. 13) is

    dx/dtau = f(x, tau) - (1/2) g(tau)^2 grad log q_tau(x) = -(beta(tau)/2) (x + grad log q_tau(x)),

whose flow carries ``q_tau`` to ``q_tau'`` for every pair of levels. Its map ``x_{tau_start} -> x_tau``
has the Jacobian ``A(tau)``, carried along by the variational equation

    dA/dtau = -(beta(tau)/2) (I + H_tau(x(tau))) A,   A(tau_start) = I,   H_tau = hess log q_tau,

with the reference's exact Hessian (closed form for Gaussian, mixture, empirical and product data).
A map is an optimal-transport map (Brenier) iff it is the gradient of a convex function, i.e. its
Jacobian is symmetric positive definite everywhere. Each instantaneous velocity is a gradient field
(``-(beta/2) grad (|x|^2/2 + log q_tau)``), but the composed flow need not be one: ``A`` is symmetric
when the Hessians along the path commute (Gaussian data, product-form data, data on a line) and in
general is not (docs/pf_ode.md). :func:`asymmetry_index` measures by how much (the index of Wang et
al., ICML 2025, arXiv 2505.23264, in their numerical check of the optimal-transport property), and
:func:`asymmetry` gives it with an error from the solver tolerance.

The ODE is integrated by ``scipy.integrate.solve_ivp`` (default DOP853, an explicit Runge-Kutta pair
of order 8 with an order-7 dense output), for a batch of b trajectories in one state vector (one call
of the reference for all of them: 15-30x faster than one trajectory at a time at d = 2). solve_ivp
accepts a step when the RMS over all M = b (d + d^2) components of ``error / (atol + rtol |y|)`` is
at most 1, so one hard trajectory's error would be diluted by the others; the batch is therefore
solved at ``rtol / sqrt(b)`` and ``atol / sqrt(b)``, under which every component's scaled error is at
most ``sqrt(d + d^2)``, the guarantee that a solve of that trajectory alone at ``rtol`` gives.

Point masses (empirical data): ``grad log q_tau`` grows like ``1/(1 - abar(tau))`` as tau -> 0, and the
map at tau = 0 sends almost every x to a data point (its Jacobian tends to 0). The flow is only
integrated down to a level ``tau > 0`` for such references (an :class:`InputError` otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .errors import InputError
from .references.product import blocks
from .schedules import DTYPE, Schedule, VPLinear

#: Integrators of ``scipy.integrate.solve_ivp`` that may be asked for.
METHODS = ("DOP853", "RK45", "Radau", "BDF", "LSODA")
#: Rounding floor of the asymmetry index per right-hand-side evaluation: a matrix that is symmetric in
#: exact arithmetic comes out of each Runge-Kutta stage with an antisymmetric part of about eps relative
#: (the products and stage sums round entry by entry), and these add up over the stages (docs/pf_ode.md).
ROUNDING_PER_EVALUATION = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class FlowMap:
    """The PF-ODE map from ``tau_start`` to each level of ``taus`` for n starting points.

    ``x`` (n, m, d) are the images of the starting points at the m levels ``taus`` (decreasing),
    ``jacobian`` (n, m, d, d) the Jacobians ``A = d x(tau) / d x(tau_start)`` there and
    ``evaluations`` (n,) the right-hand-side evaluations of each trajectory's solve.
    """

    taus: torch.Tensor
    x: torch.Tensor
    jacobian: torch.Tensor
    evaluations: torch.Tensor


@dataclass(frozen=True)
class Asymmetry:
    """The asymmetry index of the PF-ODE map's Jacobian, ``index`` (n, m), with ``error`` (n, m).

    ``index`` is that of the tighter of two solves (tolerance ``rtol / ratio``); ``error`` is its
    difference from the solve at ``rtol`` plus a rounding floor of :data:`ROUNDING_PER_EVALUATION`
    per right-hand-side evaluation of the tighter solve. The error of a solve shrinks with its
    tolerance (roughly in proportion for DOP853), so the difference is about the looser solve's error
    and bounds the tighter one's by a margin of about ``ratio`` (tested against an LSODA solve at a
    far smaller tolerance, tests/test_pf_ode.py). ``flow`` is the tighter solve.
    """

    index: torch.Tensor
    error: torch.Tensor
    flow: FlowMap

    @property
    def taus(self) -> torch.Tensor:
        return self.flow.taus


def asymmetry_index(a: torch.Tensor) -> torch.Tensor:
    """``||A - A^T||_F / (sqrt(2) ||A||_F)`` over the last two axes: 0 for a symmetric matrix, 1 for an
    antisymmetric one. (The public code of Wang et al. 2025 zeroes the diagonal of A first; here
    the whole matrix counts, as in the definition.)"""
    a = torch.as_tensor(a, dtype=DTYPE)
    skew = torch.linalg.matrix_norm(a - a.transpose(-1, -2))
    return skew / (math.sqrt(2.0) * torch.linalg.matrix_norm(a))


def flow_map(reference, x_start, *, schedule: Schedule | None = None, taus: Sequence[float] = (0.0,),
             tau_start: float = 1.0, rtol: float = 1e-8, atol: float = 1e-12, method: str = "DOP853",
             batch: int = 256) -> FlowMap:
    """Integrate the PF-ODE and its variational equation from ``tau_start`` down to each of ``taus``.

    ``x_start`` (n, d) are points at level ``tau_start`` (e.g. draws of ``q_1``); ``schedule`` defaults
    to ``vp-linear``. ``rtol``/``atol`` hold for each trajectory's whole state ``(x, A)`` as if it were
    solved alone (module docstring); ``batch`` trajectories share one solve. Levels other than the
    last are read from the solver's dense output. References with point masses need every level > 0.
    """
    schedule = VPLinear() if schedule is None else schedule
    x0 = _points(reference, x_start)
    levels = _levels(reference, schedule, taus, tau_start)
    _check_solver(rtol, atol, method, batch)
    n, d = x0.shape
    xs, jacobians, evaluations = [], [], []
    for rows in np.array_split(x0, -(-n // batch)):
        b = rows.shape[0]
        sol = _solve(reference, schedule, rows, levels, tau_start, rtol=rtol / math.sqrt(b),
                     atol=atol / math.sqrt(b), method=method)
        states = sol.y.T.reshape(len(levels), b, d + d * d).transpose(1, 0, 2)  # (b, m, d + d^2)
        xs.append(states[..., :d])
        jacobians.append(states[..., d:].reshape(b, len(levels), d, d))
        evaluations += [sol.nfev] * b
    return FlowMap(torch.as_tensor(levels, dtype=DTYPE), torch.as_tensor(np.concatenate(xs)),
                   torch.as_tensor(np.concatenate(jacobians)), torch.as_tensor(evaluations))


def asymmetry(reference, x_start, *, schedule: Schedule | None = None, taus: Sequence[float] = (0.0,),
              tau_start: float = 1.0, rtol: float = 1e-8, ratio: float = 16.0,
              method: str = "DOP853", batch: int = 256) -> Asymmetry:
    """The asymmetry index of the map's Jacobian at each of ``taus``, with an error (:class:`Asymmetry`).

    Two solves, at ``rtol`` and ``rtol / ratio`` (``atol`` is ``1e-4`` of each ``rtol``: the Jacobian's
    entries range from O(1) to the contraction ``sqrt((1 - abar) / 1)`` of point masses)."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 1.0):
        raise InputError(f"the tolerance ratio must be a number > 1, got {ratio!r}")
    options = {"schedule": schedule, "taus": taus, "tau_start": tau_start, "method": method, "batch": batch}
    loose = flow_map(reference, x_start, rtol=rtol, atol=1e-4 * rtol, **options)
    tight = flow_map(reference, x_start, rtol=rtol / ratio, atol=1e-4 * rtol / ratio, **options)
    index = asymmetry_index(tight.jacobian)
    floor = ROUNDING_PER_EVALUATION * tight.evaluations.to(DTYPE)[:, None]
    return Asymmetry(index, (asymmetry_index(loose.jacobian) - index).abs() + floor, tight)


def _solve(reference, schedule: Schedule, x: np.ndarray, levels: list[float], tau_start: float, *,
           rtol: float, atol: float, method: str):
    """One solve_ivp call for the rows of x (b, d); the state is ``(x_i, A_i)`` row after row."""
    b, d = x.shape

    def rhs(tau: float, state: np.ndarray) -> np.ndarray:
        parts = torch.from_numpy(state).view(b, d + d * d)
        point, a = parts[:, :d], parts[:, d:].view(b, d, d)
        tau_t = torch.tensor(tau, dtype=DTYPE)
        level = schedule.level(tau_t)
        half_beta = 0.5 * schedule.beta_rate(tau_t)
        dx = -half_beta * (point + reference.score(point, level))
        da = -half_beta * (a + reference.hessian(point, level) @ a)
        return torch.cat([dx, da.flatten(1)], 1).flatten().numpy()

    state = np.concatenate([x, np.broadcast_to(np.eye(d).flatten(), (b, d * d))], 1).flatten()
    sol = solve_ivp(rhs, (tau_start, levels[-1]), state, method=method, t_eval=levels, rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"the PF-ODE solver stopped early: {sol.message}")
    return sol


def _points(reference, x_start) -> np.ndarray:
    x = torch.as_tensor(x_start, dtype=DTYPE)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != reference.dim or x.shape[0] == 0:
        raise InputError(f"starting points must have shape (n, {reference.dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("starting points contain NaN or inf")
    return x.cpu().numpy()


def has_point_masses(reference) -> bool:
    """Whether some block of ``reference`` has point masses (empirical data): then ``tau > 0``."""
    return any(getattr(b, "has_point_masses", False) for b in blocks(reference))


def _levels(reference, schedule: Schedule, taus: Sequence[float], tau_start: float) -> list[float]:
    """The output levels, decreasing, checked against ``tau_start`` and the reference."""
    if not (isinstance(tau_start, (int, float)) and 0.0 < tau_start <= 1.0):
        raise InputError(f"tau_start must be in (0, 1], got {tau_start!r}")
    if not math.isfinite(float(schedule.beta_rate(torch.tensor(tau_start, dtype=DTYPE)))):
        raise InputError(f"beta(tau) of {schedule.name} is infinite at tau_start = {tau_start}: start below it")
    levels = sorted({float(t) for t in np.asarray(taus, dtype=float).flatten()}, reverse=True)
    if not levels or not all(math.isfinite(t) and 0.0 <= t < tau_start for t in levels):
        raise InputError(f"output levels must be finite and in [0, tau_start = {tau_start}), got {list(taus)!r}")
    if levels[-1] == 0.0 and has_point_masses(reference):
        raise InputError("the reference has point masses (empirical data): its score is singular at tau = 0, "
                         "so every output level must be > 0")
    return levels


def _check_solver(rtol: float, atol: float, method: str, batch: int) -> None:
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise InputError(f"batch must be an integer >= 1, got {batch!r}")
    if method not in METHODS:
        raise InputError(f"unknown ODE method {method!r}; choose one of {', '.join(METHODS)}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
            raise InputError(f"{name} must be a number in (0, 1), got {value!r}")
