"""Convergence rates: ladders of T, fitted orders with intervals, and predicted leading constants.

A family that claims ``steps = C T^-p (1 + c_1/T + O(T^-2))`` (pathkl.covariances; the derivation of
each order and constant: docs/theory.md section 6) is checked two ways on a ladder of T:

- the order: least squares of ``log steps = a - s log T + b / T`` on the tail of the ladder (the
  ``b / T`` term is the Richardson correction), with a 95% interval that is the larger of the
  t-interval of the fit and the change of ``s`` when the window slides to smaller T (model error);
- the constant: ``T^p steps`` extrapolated in ``1/T`` from the two largest T (Richardson), with the
  change against the previous pair plus the propagated errors of the KLs as its error, compared with
  the closed-form integral ``coefficient * int_0^1 beta(tau)^(p+1) E ||D||^2 dtau`` evaluated by
  adaptive quadrature (its error: QUADPACK's plus the integrand's own quadrature error).

:func:`ladder_rates` runs families over a ladder of T (in several processes if asked) and returns
all of it; :func:`family_rates` is the same for one family.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.stats
import torch

from .covariances import Family
from .errors import InputError
from .pathspace import leading_integrand, method, path_kl
from .references import MixtureReference
from .references.product import blocks
from .rules import MonteCarlo
from .schedules import DTYPE, Schedule, check_steps


@dataclass(frozen=True)
class OrderFit:
    """Fitted ``s`` in ``steps ~ T^s`` (so ``s = -1`` means 1/T) with its 95% interval."""

    slope: float
    interval: tuple[float, float]
    naive_slope: float  # two-parameter log-log least squares on the same tail, no correction


@dataclass(frozen=True)
class ConstantEstimate:
    """``lim T^p steps`` measured by Richardson extrapolation, with an error estimate."""

    value: float
    error: float
    at_largest: float  # T^p steps at the largest T, before extrapolation


def _check_ladder(ts: Sequence[int], kls: Sequence[float], minimum: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(ts, dtype=float)
    k = np.asarray(kls, dtype=float)
    if t.shape != k.shape or t.size < minimum:
        raise InputError(f"a rate fit needs at least {minimum} ladder points with one KL each")
    if not (np.diff(t) > 0).all():
        raise InputError("the ladder of T must be strictly increasing")
    return t, k


def _ls_slope(t: np.ndarray, k: np.ndarray, corrected: bool) -> tuple[float, float, int]:
    columns = [np.ones_like(t), np.log(t)] + ([1.0 / t] if corrected else [])
    a = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(a, np.log(k), rcond=None)
    dof = t.size - a.shape[1]
    if dof <= 0:
        return float(coef[1]), 0.0, 0
    resid = np.log(k) - a @ coef
    cov = (resid @ resid / dof) * np.linalg.inv(a.T @ a)
    return float(coef[1]), float(math.sqrt(cov[1, 1])), dof


def fit_order(ts: Sequence[int], kls: Sequence[float], *, tail: int = 5) -> OrderFit | None:
    """Fit the order on the last ``tail`` (>= 4) ladder points; ``None`` when every KL is 0 (exact).

    The interval's half-width is the larger of the fit's 95% t-interval and the change of the slope
    when the window slides one point towards smaller T: with an error decaying like T^-q the slid
    window's error is 2^q times larger, so the change bounds the error of the estimate itself.
    """
    t, k = _check_ladder(ts, kls, 4)
    if (k == 0).all():
        return None
    if (k <= 0).any() or not np.isfinite(k).all():
        raise InputError("a rate fit needs finite, positive KLs")
    n = min(max(tail, 4), t.size)
    slope, se, dof = _ls_slope(t[-n:], k[-n:], corrected=True)
    slid = slice(-n - 1, -1) if t.size > n else slice(-n, -1)
    previous, *_ = _ls_slope(t[slid], k[slid], corrected=True)
    half = max(scipy.stats.t.ppf(0.975, dof) * se if dof else 0.0, abs(slope - previous))
    return OrderFit(slope, (slope - half, slope + half), _ls_slope(t[-n:], k[-n:], corrected=False)[0])


def measured_constant(ts: Sequence[int], kls: Sequence[float], order: int,
                      errors: Sequence[float] | None = None) -> ConstantEstimate:
    """Richardson extrapolation of ``c(T) = T^order steps(T) = C + c_1 / T + ...`` from the two
    largest T. The error is the change against the extrapolation from the previous pair plus what the
    KLs' own ``errors`` (absolute, one per T) can move the extrapolation by:
    ``(T_n^(p+1) e_n + T_(n-1)^(p+1) e_(n-1)) / (T_n - T_(n-1))``."""
    t, k = _check_ladder(ts, kls, 3)
    e = np.zeros_like(k) if errors is None else np.asarray(errors, dtype=float)
    c = t**order * k

    def extrapolate(i: int) -> float:
        return (t[i] * c[i] - t[i - 1] * c[i - 1]) / (t[i] - t[i - 1])

    best = extrapolate(-1)
    propagated = (t[-1] ** (order + 1) * e[-1] + t[-2] ** (order + 1) * e[-2]) / (t[-1] - t[-2])
    return ConstantEstimate(best, abs(best - extrapolate(-2)) + propagated, float(c[-1]))


@dataclass(frozen=True)
class PredictedConstant:
    value: float
    error: float  # quadrature error estimate


def predicted_constant(family: Family, reference, schedule: Schedule) -> PredictedConstant:
    """``coefficient * int_0^1 beta(tau)^(order+1) E_{q_tau} ||D||^2 dtau`` by adaptive quadrature
    (scipy QUADPACK, relative tolerance 1e-10), for a family with a vanishing rate.

    For mixtures the integrand is itself a quadrature with an error estimate; the largest relative
    error seen over QUADPACK's nodes, times the value, is added to QUADPACK's own estimate. Such an
    integrand changes rule in steps with tau, so it is smooth only to that rule's accuracy and QUADPACK
    may report roundoff; the warning is absorbed and its error floored at 1e-10 relative."""
    rate = family.rate(reference)
    if rate.order is None:
        raise InputError(f"family {family.name!r} claims no vanishing rate, so it has no leading constant")
    worst = [0.0]

    def integrand(tau: float) -> float:
        tau_t = torch.tensor(tau, dtype=DTYPE)
        beta = float(schedule.beta_rate(tau_t))
        inner = leading_integrand(reference, family, schedule.level(tau_t))
        if inner.value != 0:
            worst[0] = max(worst[0], inner.error / abs(inner.value))
        return beta ** (rate.order + 1) * inner.value

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.integrate.IntegrationWarning)
        value, error = scipy.integrate.quad(integrand, 0.0, 1.0, epsabs=0.0, epsrel=1e-10, limit=200)
    if any(issubclass(w.category, scipy.integrate.IntegrationWarning) for w in caught):
        error = max(error, 1e-10 * abs(value))
    error += worst[0] * abs(value)
    return PredictedConstant(rate.coefficient * value, rate.coefficient * error)


@dataclass(frozen=True)
class FamilyRates:
    """One family over a ladder of T: the KLs (``steps`` of :func:`pathkl.pathspace.path_kl`, from
    ``first_step``) with their errors, the order the family declares on this reference
    (:meth:`Family.order`), the fitted order (None when every KL is exactly 0) and, for a family with a
    vanishing rate, the measured and predicted leading constants."""

    family: Family
    order: int | None
    ladder: tuple[int, ...]
    first_step: int
    kl: tuple[float, ...]
    kl_error: tuple[float, ...]
    met_rtol: bool
    fit: OrderFit | None
    measured: ConstantEstimate | None
    predicted: PredictedConstant | None

    def as_dict(self) -> dict:
        return {"cov": self.family.name, "order_declared": self.order, "first_step": self.first_step,
                "T": list(self.ladder), "kl": list(self.kl), "kl_error": list(self.kl_error),
                "met_rtol": self.met_rtol,
                "slope": self.fit and self.fit.slope, "slope_ci": self.fit and list(self.fit.interval),
                "constant": self.measured and self.measured.value,
                "constant_error": self.measured and self.measured.error,
                "constant_predicted": self.predicted and self.predicted.value,
                "constant_predicted_error": self.predicted and self.predicted.error}


def check_rate_inputs(reference, ladder: Sequence[int]) -> None:
    """Refuse, before any work, what has no rate to fit: a ladder of fewer than 4 strictly increasing
    T >= 1 or one too large for memory, a mixture in d > 3 (Monte Carlo step KLs, no quadrature for the
    predicted constant), or empirical data (``q(x_0 | x_1)`` is discrete, so every family's step
    t = 1 is +inf at every T)."""
    if len(ladder) < 4 or min(ladder) < 1 or list(ladder) != sorted(set(ladder)):
        raise InputError("a ladder of T needs at least 4 strictly increasing integers >= 1")
    check_steps(ladder[-1], what="the largest T of the ladder")
    if MonteCarlo.name in method(reference):
        raise InputError("a mixture in d > 3 has Monte Carlo step KLs and no quadrature for the predicted "
                         "constants; rates need d <= 3 blocks (compute path_kl per T instead)")
    if any(isinstance(b, MixtureReference) and bool((b.eigenvalues == 0).any()) for b in blocks(reference)):
        raise InputError("empirical data (point masses) has q(x_0 | x_1) discrete, so step t = 1 of every "
                         "family is +inf at every T and there is no rate to fit")


def family_rates(reference, schedule: Schedule, family: Family, ladder: Sequence[int], *, rtol: float = 1e-6,
                 progress: Callable[[int, int], None] | None = None) -> FamilyRates:
    """``family`` on the uniform grids of ``ladder`` (:func:`ladder_rates` with one family)."""
    return ladder_rates(reference, schedule, [family], ladder, rtol=rtol, progress=progress)[0]


def ladder_rates(reference, schedule: Schedule, families: Sequence[Family], ladder: Sequence[int], *,
                 rtol: float = 1e-6, jobs: int = 1,
                 progress: Callable[[int, int], None] | None = None) -> list[FamilyRates]:
    """Each of ``families`` on the uniform grids of ``ladder``, summed from its first finite step
    (``beta_tilde``: t = 2), after :func:`check_rate_inputs`.

    The path KLs of one T are computed together, on one copy of the reference, so that the families
    share what the engine caches per grid (the ``full`` chain's ``E J``, the outer nodes' G and C).
    With ``jobs > 1`` the T, largest first, and the families' predicted constants run in that many
    processes. Each KL is a function of its reference, grid, family and rtol alone
    (pathkl.rules.quadrature), so the result does not depend on ``jobs``. ``progress(done, n)`` is
    called with the number of T done, before the first and after each."""
    check_rate_inputs(reference, ladder)
    tasks = {("kl", steps): (_kls_at, (reference, schedule, families, steps, rtol))
             for steps in sorted(ladder, reverse=True)}
    tasks |= {("constant", i): (predicted_constant, (family, reference, schedule))
              for i, family in enumerate(families) if family.order(reference) is not None}
    if progress is not None:
        progress(0, len(ladder))
    found = {}
    for key, value in _completed(tasks, jobs):
        found[key] = value
        if progress is not None and key[0] == "kl":
            progress(sum(kind == "kl" for kind, _ in found), len(ladder))
    return [_family_rates(reference, family, ladder, [found["kl", steps][i] for steps in ladder],
                          found.get(("constant", i))) for i, family in enumerate(families)]


def _kls_at(reference, schedule: Schedule, families: Sequence[Family], steps: int, rtol: float) -> list:
    """``path_kl`` of each family on the uniform grid of ``steps`` (from its first finite step)."""
    grid = schedule.grid(steps)
    return [path_kl(reference, grid, family, rtol=rtol, first_step=family.first_step) for family in families]


def _one_thread() -> None:
    torch.set_num_threads(1)  # a process per core: a second thread per process only waits


def _completed(tasks: dict, jobs: int):
    """``(key, function(*arguments))`` for each ``key: (function, arguments)`` of ``tasks`` as it is
    done: in order here where ``jobs`` is 1, else in ``jobs`` processes (in order of submission, so
    the dearest first)."""
    if jobs == 1:
        yield from ((key, function(*arguments)) for key, (function, arguments) in tasks.items())
        return
    context = multiprocessing.get_context("spawn")  # torch is not fork-safe once its threads exist
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        pending = {pool.submit(function, *arguments): key for key, (function, arguments) in tasks.items()}
        for future in concurrent.futures.as_completed(pending):
            yield pending[future], future.result()


def _family_rates(reference, family: Family, ladder: Sequence[int], results, predicted) -> FamilyRates:
    """The fits and measured constant of one family from its path KLs over ``ladder``, with its
    predicted constant (None for a family with no vanishing rate)."""
    kls = [result.steps for result in results]
    errors = [result.steps_error for result in results]
    order = family.order(reference)
    measured = None if order is None else measured_constant(ladder, kls, order, errors)
    return FamilyRates(family, order, tuple(ladder), family.first_step, tuple(kls), tuple(errors),
                       all(result.met_rtol for result in results), fit_order(ladder, kls), measured, predicted)
