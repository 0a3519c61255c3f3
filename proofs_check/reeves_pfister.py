"""Claims of Reeves & Pfister, "Information-theoretic proofs for diffusion sampling"
(arXiv 2502.02305; abstract and Figure 1 caption only; docs/theory.md section 9).

Observation process ``Y_t = t X + W(t)`` (SNR t), ``M(t) = E||X - E[X|Y_t]||^2``.  The sampler
``Y^_{k+1} = Y^_k + delta_k E[X | Y_k = Y^_k] + sqrt(delta_k) Z_k`` is compared with the exact
process.  Derived here: by the chain rule of KL over (X, Y_{1:n}) in two orders,
``Delta_n = KL(P_Y || Q_Y) = (1/2) sum_k delta_k M(t_k) - I(X; Y_{t_n})`` and, by I-MMSE,
``I(X; Y_t) = (1/2) int_0^t M``: the Riemann gap ("Lemma 2").  M decreasing gives
``Delta_n <= (1/2) delta_max (M(0) - M(t_n)) <= (1/2) delta_max tr Cov(X)`` ("Theorem 1").
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import scipy.integrate
import sympy as sp
import torch

from pathkl.references.gaussian import GaussianReference
from pathkl.schedules import NoiseLevel

from .evidence import all_of, close, symbolic_zero
from .registry import Outcome, claim

RP = "Reeves & Pfister 2025"


def claimed_immse_derivative(mmse):
    """I-MMSE (Guo, Shamai, Verdu), used by Reeves-Pfister: ``dI/dsnr = mmse(snr) / 2``."""
    return mmse / 2


def claimed_gap(deltas, m_left, integral):
    """Fig. 1 / "Lemma 2": ``Delta_n = (1/2)(sum_k delta_k M(t_k) - int_0^{t_n} M)``."""
    return 0.5 * ((deltas * m_left).sum() - integral)


def claimed_gap_bound(delta_max, trace_cov):
    """Fig. 1 / "Theorem 1" (with the 1/2 of Lemma 2): ``Delta_n <= (1/2) delta_max tr Cov(X)``."""
    return 0.5 * delta_max * trace_cov


def _level(snr: float) -> NoiseLevel:
    """The noise level whose ``x_t / sqrt(1 - abar)`` is ``sqrt(snr) x_0 + eps``."""
    snr = torch.tensor(snr, dtype=torch.float64)
    return NoiseLevel(snr / (1 + snr), 1 / (1 + snr))


def _reference_mmse(reference, snr: float) -> float:
    """``M(snr) = tr Cov[x_0 | x_t]`` from pathkl (constant in x_t for Gaussian data)."""
    x = torch.zeros(1, reference.dim, dtype=torch.float64)
    return float(torch.diagonal(reference.posterior_cov(x, _level(snr))[0]).sum())


def _five_point_derivative(fn, x: float, h: float) -> float:
    return (-fn(x + 2 * h) + 8 * fn(x + h) - 8 * fn(x - h) + fn(x - 2 * h)) / (12 * h)


@claim(id="rp.immse-gaussian", source=f"{RP}; Guo-Shamai-Verdu I-MMSE",
       statement="Gaussian X: I(X; sqrt(snr) X + N) = (1/2) log det(I + snr Cov X), dI/dsnr = mmse/2",
       method="both")
def check_immse_gaussian() -> Outcome:
    snr, v = sp.symbols("snr v", positive=True)
    # I = h(Y) - h(N) with Y ~ N(0, snr v + 1), N ~ N(0, 1); mmse of the linear estimator.
    info = sp.log(2 * sp.pi * sp.E * (snr * v + 1)) / 2 - sp.log(2 * sp.pi * sp.E) / 2
    mmse = v - (sp.sqrt(snr) * v) ** 2 / (snr * v + 1)
    outcomes = [symbolic_zero(sp.diff(info, snr) - claimed_immse_derivative(mmse), "scalar Gaussian")]
    eig = torch.tensor([0.05, 0.7, 3.0, 20.0], dtype=torch.float64)
    reference = GaussianReference.from_eigenvalues(eig)

    def info_num(s):
        return 0.5 * float(torch.log1p(s * eig).sum())

    snrs = (0.1, 1.0, 10.0)
    fd = torch.tensor([_five_point_derivative(info_num, s, 1e-3 * s) for s in snrs], dtype=torch.float64)
    mm = torch.tensor([claimed_immse_derivative(_reference_mmse(reference, s)) for s in snrs],
                      dtype=torch.float64)
    # 5-point rule: truncation ~ h^4 I^(5) ~ 1e-12 relative, rounding ~ 1e-16/h ~ 1e-12: 1e-8 margin.
    outcomes.append(close(fd, mm, rtol=1e-8, what="finite-difference dI/dsnr vs "
                                                  "GaussianReference trace posterior_cov / 2"))
    return all_of(outcomes)


MIXTURE = ((0.3, -1.0, 0.2), (0.7, 1.5, 0.5))  # (weight, mean, variance) of the scalar input X


def _mixture_y_density(y: float, snr: float) -> float:
    return sum(w * math.exp(-(y - math.sqrt(snr) * m) ** 2 / (2 * (snr * v + 1)))
               / math.sqrt(2 * math.pi * (snr * v + 1)) for w, m, v in MIXTURE)


def _mixture_info(snr: float) -> float:
    """``I(X; Y) = h(Y) - h(N)`` by adaptive quadrature (absolute error ~1e-14)."""
    def integrand(y):
        p = _mixture_y_density(y, snr)
        return -p * math.log(p) if p > 0 else 0.0
    h_y, _ = scipy.integrate.quad(integrand, -40, 40, points=(0.0,), epsabs=1e-14, epsrel=1e-13,
                                  limit=400)
    return h_y - 0.5 * math.log(2 * math.pi * math.e)


def _mixture_mmse(snr: float) -> float:
    """``E[X^2] - E[E[X|Y]^2]``; ``E[X|Y=y]`` mixes the component posteriors (closed form)."""
    second = sum(w * (v + m * m) for w, m, v in MIXTURE)

    def cond_mean_sq(y):
        logs, means = [], []
        for w, m, v in MIXTURE:
            s2 = snr * v + 1
            logs.append(math.log(w) - (y - math.sqrt(snr) * m) ** 2 / (2 * s2) - 0.5 * math.log(s2))
            means.append(m + math.sqrt(snr) * v * (y - math.sqrt(snr) * m) / s2)
        top = max(logs)
        rel = [math.exp(lg - top) for lg in logs]
        cond = sum(r * mu for r, mu in zip(rel, means)) / sum(rel)
        return cond**2 * _mixture_y_density(y, snr)
    value, _ = scipy.integrate.quad(cond_mean_sq, -40, 40, points=(0.0,), epsabs=1e-14,
                                    epsrel=1e-13, limit=400)
    return second - value


@claim(id="rp.immse-mixture", source=f"{RP}; Guo-Shamai-Verdu I-MMSE",
       statement="scalar 2-component Gaussian-mixture X: dI/dsnr = mmse/2 (quadrature vs finite "
                 "difference)", method="numeric")
def check_immse_mixture() -> Outcome:
    snrs = (0.2, 1.0, 5.0)
    fd = torch.tensor([_five_point_derivative(_mixture_info, s, 1e-2 * s) for s in snrs],
                      dtype=torch.float64)
    mm = torch.tensor([claimed_immse_derivative(_mixture_mmse(s)) for s in snrs], dtype=torch.float64)
    # Quadrature error 1e-13 / (12 h) <= 1e-10; truncation h^4 I^(5) <~ 1e-8 relative.
    return close(fd, mm, rtol=1e-6, what="finite difference of quadrature I vs quadrature mmse/2")


def _gaussian_path_kl(eig: np.ndarray, times: np.ndarray) -> float:
    """``KL(P_Y || Q_Y)`` for Gaussian X with covariance eigenvalues ``eig`` (coordinates are
    independent, so the KL adds up), from the dense n x n joint covariances of the two processes."""
    n = len(times) - 1
    total = 0.0
    for v in eig:
        t = times[1:]
        cov_p = np.outer(t, t) * v + np.minimum.outer(t, t)
        # Q: Y^_{k+1} = (1 + delta_k c_k) Y^_k + sqrt(delta_k) Z_k, c_k = v / (1 + t_k v); Y^ = L Z.
        lower = np.zeros((n, n))
        row = np.zeros(n)
        for k in range(n):
            delta = times[k + 1] - times[k]
            row = row * (1 + delta * v / (1 + times[k] * v))
            row[k] = math.sqrt(delta)
            lower[k] = row
        cov_q = lower @ lower.T
        chol_q = np.linalg.cholesky(cov_q)
        chol_p = np.linalg.cholesky(cov_p)
        solved = np.linalg.solve(chol_q, chol_p)
        total += 0.5 * ((solved**2).sum() - n + 2 * np.log(np.diag(chol_q)).sum()
                        - 2 * np.log(np.diag(chol_p)).sum())
    return total


def _random_grids(count: int):
    gen = np.random.default_rng(5)
    for _ in range(count):
        n = int(gen.integers(2, 25))
        steps = gen.uniform(0.02, 1.0, n) ** 2
        yield np.concatenate([[0.0], np.cumsum(steps)]), gen.uniform(0.05, 5.0, 3)


@claim(id="rp.riemann-gap", source=f"{RP}, Fig. 1 caption ('Lemma 2')",
       statement="Delta_n = (1/2)(left Riemann sum of M - int_0^{t_n} M) on the SNR grid; "
                 "I(X;Y_t) = (1/2) int_0^t M", method="both")
def check_riemann_gap() -> Outcome:
    t, v, s = sp.symbols("t v s", positive=True)
    integral = sp.integrate(v / (1 + s * v), (s, 0, t))
    outcomes = [symbolic_zero(sp.expand_log(integral / 2 - sp.log(1 + t * v) / 2, force=True),
                              "Gaussian: (1/2) int_0^t M = I(X; Y_t) = (1/2) log(1 + t v)")]
    worst = 0.0
    for times, eig in _random_grids(12):
        reference = GaussianReference.from_eigenvalues(torch.tensor(eig))
        deltas = np.diff(times)
        m_left = np.array([_reference_mmse(reference, tk) for tk in times[:-1]])
        integral_m = float(np.log1p(times[-1] * eig).sum())
        predicted = claimed_gap(deltas, m_left, integral_m)
        exact = _gaussian_path_kl(eig, times)
        worst = max(worst, abs(predicted - exact) / exact)
    # Dense Cholesky of n <= 25 covariances with condition <~ 1e4: ~1e-12 relative; 1e-9 margin.
    outcomes.append(Outcome(worst <= 1e-9, f"12 random SNR grids, 3-D Gaussian X: dense joint-"
                                           f"Gaussian path KL vs (1/2)(Riemann sum - integral), "
                                           f"worst relative error {worst:.1e} (allowed 1e-9)"))
    return all_of(outcomes)


@cache
def _mixture_gap() -> tuple[float, float]:
    """Half the gap between the left Riemann sum of the mixture's M on a uniform 12-step grid over
    [0, 6] and its integral (quadrature), and the step size."""
    snrs = np.linspace(0.0, 6.0, 13)
    deltas = np.diff(snrs)
    riemann = float((deltas * np.array([_mixture_mmse(s) for s in snrs[:-1]])).sum())
    integral, _ = scipy.integrate.quad(_mixture_mmse, 0.0, 6.0, epsabs=1e-10)
    return 0.5 * (riemann - integral), float(deltas.max())


@claim(id="rp.gap-bound", source=f"{RP}, Fig. 1 caption ('Theorem 1')",
       statement="Delta_n <= (1/2) delta_max tr Cov(X); M is decreasing (dM/dt = -E||Cov(X|Y)||_F^2)",
       method="both")
def check_gap_bound() -> Outcome:
    t, v = sp.symbols("t v", positive=True)
    m = v / (1 + t * v)
    outcomes = [symbolic_zero(sp.diff(m, t) + m**2, "Gaussian: dM/dt = -Var(X|Y)^2")]
    worst = -math.inf
    for times, eig in _random_grids(12):
        exact = _gaussian_path_kl(eig, times)
        bound = claimed_gap_bound(float(np.diff(times).max()), float(eig.sum()))
        worst = max(worst, exact / bound)
    outcomes.append(Outcome(worst <= 1.0, f"12 random grids: max Delta_n / bound = {worst:.3f} <= 1"))
    gap, delta_max = _mixture_gap()
    trace = sum(w * (var + mu * mu) for w, mu, var in MIXTURE) - sum(w * mu for w, mu, _ in MIXTURE) ** 2
    bound = claimed_gap_bound(delta_max, trace)
    outcomes.append(Outcome(0 <= gap <= bound, f"mixture X, uniform grid of 12 steps: gap "
                                              f"{gap:.4f} in [0, bound {bound:.4f}]"))
    return all_of(outcomes)
