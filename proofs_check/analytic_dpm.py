"""Claims of Bao et al., "Analytic-DPM" (ICLR 2022, arXiv 2201.06503), as stated in the authors' slides.

Theorem 1 (optimal mean and isotropic variance in score and noise-prediction forms), its proof
(moment matching, law of total variance with the DDPM posterior of eq. (7)), the byproduct bounds
``beta~_n <= sigma*_n^2 <= beta_n / alpha_n`` and the skip-step forms.
"""

from __future__ import annotations

import sympy as sp
import torch

from pathkl.schedules import get_schedule

from .evidence import all_of, close, symbolic_zero
from .registry import Outcome, claim
from .spot import conditional, dense_reverse_kernel, gaussian_case
from .tweedie import RTOL

ADPM = "Bao et al. 2022 (Analytic-DPM slides)"


def claimed_posterior_params(x0, xt, alpha, abar_prev):
    """DDPM eq. (7) as quoted in the slides: ``q(x_{t-1}|x_t, x_0) = N(mu~, beta~ I)`` with
    ``mu~ = sqrt(abar_{t-1}) beta_t x0/(1-abar_t) + sqrt(alpha_t)(1-abar_{t-1}) x_t/(1-abar_t)``,
    ``beta~ = (1-abar_{t-1}) beta_t/(1-abar_t)``."""
    abar, beta = alpha * abar_prev, 1 - alpha
    mean = (sp.sqrt(abar_prev) * beta * x0 + sp.sqrt(alpha) * (1 - abar_prev) * xt) / (1 - abar)
    return mean, (1 - abar_prev) * beta / (1 - abar)


def claimed_gamma_sq(alpha, abar_prev):
    """Slides, law of total variance: ``Cov(x_{n-1}|x_n) = beta~ I + gamma^2 Cov(x_0|x_n)`` with
    ``gamma^2 = abar_{n-1} beta_n^2 / (1 - abar_n)^2``."""
    return abar_prev * (1 - alpha) ** 2 / (1 - alpha * abar_prev) ** 2


def claimed_optimal_variance(alpha, beta, mean_sq_score):
    """Analytic-DPM Theorem 1 (score form), also skip-step with ``alpha_{t|s}, beta_{t|s}``:
    ``sigma*^2 = (beta/alpha) (1 - beta E||grad log q||^2 / d)``; ``mean_sq_score = E||s||^2/d``."""
    return beta / alpha * (1 - beta * mean_sq_score)


def claimed_optimal_variance_noise(alpha, beta, one_minus_abar, mean_sq_eps):
    """Analytic-DPM Theorem 1 (noise form) with ``beta-bar_n = 1 - abar_n`` in the denominator:
    ``sigma*^2 = (beta/alpha)(1 - beta/(1 - abar_n) E||E[eps|x_n]||^2/d)``.  (The skip-step slide
    prints ``beta_{t|s}/beta_{t|s}``; the derivation gives ``beta_{t|s}/(1 - abar_t)``.)"""
    return beta / alpha * (1 - beta / one_minus_abar * mean_sq_eps)


def claimed_moment_match(mean, trace_cov, dim):
    """Theorem 1 proof: the Gaussian ``N(mu, sigma^2 I)`` closest in KL to a law with mean ``m`` and
    ``tr Cov = C`` has ``mu = m`` and ``sigma^2 = C / d`` (moment matching)."""
    return mean, trace_cov / dim


def _step_symbols():
    """``alpha = 1/(1+u)``, ``abar_{t-1} = 1/(1+w)`` with u, w > 0: all of (0, 1), square roots real."""
    u, w = sp.symbols("u w", positive=True)
    return 1 / (1 + u), 1 / (1 + w)


@claim(id="adpm.ddpm-posterior", source=f"{ADPM}; Ho et al. 2020, eq. (7)",
       statement="q(x_{t-1}|x_t,x_0) = N(mu~(x_t,x_0), beta~_t I), derived by completing the square",
       method="symbolic")
def check_ddpm_posterior() -> Outcome:
    alpha, abar_prev = _step_symbols()
    x0, xt, y = sp.symbols("x0 xt y", real=True)
    # log q(y | x0) + log q(x_t | y) as a function of y = x_{t-1}: a quadratic -P y^2/2 + L y + c.
    log_joint = -(y - sp.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev)) \
        - (xt - sp.sqrt(alpha) * y) ** 2 / (2 * (1 - alpha))
    poly = sp.Poly(sp.expand(log_joint), y)
    precision, linear = -2 * poly.coeff_monomial(y**2), poly.coeff_monomial(y)
    mean, var = claimed_posterior_params(x0, xt, alpha, abar_prev)
    return all_of([
        symbolic_zero(sp.radsimp(sp.simplify(linear / precision - mean)), "posterior mean mu~"),
        symbolic_zero(sp.simplify(1 / precision - var), "posterior variance beta~"),
        Outcome(poly.degree() == 2, "the log-density is quadratic in x_{t-1} (Gaussian)"),
    ])


@claim(id="adpm.moment-matching", source=f"{ADPM}, Theorem 1 proof (moment matching)",
       statement="argmin_{mu, sigma^2} E_q[-log N(y; mu, sigma^2 I)] is mu = E y, sigma^2 = E tr Cov(y)/d",
       method="symbolic")
def check_moment_matching() -> Outcome:
    d = 3
    mu = sp.Matrix(sp.symbols(f"mu0:{d}", real=True))
    m = sp.Matrix(sp.symbols(f"m0:{d}", real=True))
    trace_cov, var = sp.symbols("C sigma2", positive=True)  # C = tr Cov(y) > 0
    # E||y - mu||^2 = tr Cov(y) + ||E y - mu||^2 (linearity of expectation).
    objective = d * sp.log(2 * sp.pi * var) / 2 + (trace_cov + ((m - mu).T * (m - mu))[0]) / (2 * var)
    unknowns = list(mu) + [var]
    solutions = sp.solve([sp.diff(objective, s) for s in unknowns], unknowns, dict=True)
    if len(solutions) != 1:
        return Outcome(False, f"expected one stationary point, found {len(solutions)}")
    sol = solutions[0]
    hess = sp.simplify(sp.hessian(objective, unknowns).subs(sol))
    best_mean, best_var = claimed_moment_match(m, trace_cov, d)
    return all_of([
        symbolic_zero(sp.Matrix([sol[s] for s in mu]) - best_mean, "optimal mean = E y"),
        symbolic_zero(sol[var] - best_var, "optimal variance = tr Cov(y)/d"),
        Outcome(all(sp.simplify(minor).is_positive for minor in
                    (hess[:k, :k].det() for k in range(1, d + 2))),
                "stationary point is the minimum (leading principal minors of the Hessian > 0)"),
    ])


@claim(id="adpm.law-of-total-variance", source=f"{ADPM}, Theorem 1 proof; OCM eq. (34)",
       statement="Cov(x_{n-1}|x_n) = beta~_n I + gamma_n^2 Cov(x_0|x_n), "
                 "gamma_n = sqrt(abar_{n-1}) beta_n/(1-abar_n)", method="both")
def check_total_variance() -> Outcome:
    alpha, abar_prev = _step_symbols()
    x0, xt = sp.symbols("x0 xt", real=True)
    mean, _ = claimed_posterior_params(x0, xt, alpha, abar_prev)
    # Cov(mu~(x_n, x0) | x_n) = (d mu~/d x0)^2 Cov(x0 | x_n) since mu~ is affine in x0.
    coefficient = sp.diff(mean, x0)
    outcomes = [symbolic_zero(sp.simplify(coefficient**2 - claimed_gamma_sq(alpha, abar_prev)),
                              "gamma^2 = (d mu~ / d x0)^2")]
    case = gaussian_case()
    _, dense = dense_reverse_kernel(case)
    beta_tilde = case.prev.one_minus_abar * case.beta / case.level.one_minus_abar
    g2 = claimed_gamma_sq(case.alpha, case.prev.abar)
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    formed = beta_tilde * eye + g2 * case.reference.posterior_cov(case.x[:1], case.level)[0]
    outcomes.append(close(formed, dense, rtol=RTOL, atol=RTOL * float(dense.abs().max()),
                          what="beta~ I + gamma^2 GaussianReference.posterior_cov vs dense kernel"))
    return all_of(outcomes)


def _gaussian_expected_sq_score(cov: torch.Tensor, abar, one_minus_abar) -> torch.Tensor:
    """``E_{q_t}||grad log q_t||^2 / d = tr(Sigma_t^{-1}) / d`` for Gaussian data (exact)."""
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    return torch.linalg.inv(abar * cov + one_minus_abar * eye).trace() / cov.shape[0]


@claim(id="adpm.thm1-optimal-variance", source=f"{ADPM}, Theorem 1",
       statement="sigma*_n^2 = (beta/alpha)(1 - beta E||grad log q_n||^2/d) "
                 "= (beta/alpha)(1 - beta/(1-abar_n) E||E[eps|x_n]||^2/d) = E tr Cov(x_{n-1}|x_n)/d",
       method="both")
def check_thm1_variance() -> Outcome:
    alpha, abar_prev = _step_symbols()
    abar, beta = alpha * abar_prev, 1 - alpha
    score_sq = sp.Symbol("S", positive=True)  # E||grad log q_n||^2 / d
    # E[eps|x] = -sqrt(1-abar) s;  abar Cov(x0|x) = (1-abar) Cov(eps|x);  E Cov(eps|x) = I - E[m m^T].
    eps_sq = (1 - abar) * score_sq
    expected_cov0 = (1 - abar) / abar * (1 - eps_sq)
    beta_tilde = (1 - abar_prev) * beta / (1 - abar)
    truth = beta_tilde + claimed_gamma_sq(alpha, abar_prev) * expected_cov0
    outcomes = [
        symbolic_zero(sp.simplify(claimed_optimal_variance(alpha, beta, score_sq) - truth),
                      "score form vs total variance"),
        symbolic_zero(sp.simplify(claimed_optimal_variance_noise(alpha, beta, 1 - abar, eps_sq)
                                  - truth), "noise form vs total variance"),
    ]
    case = gaussian_case()
    _, dense = dense_reverse_kernel(case)
    s2 = _gaussian_expected_sq_score(case.cov, case.level.abar, case.level.one_minus_abar)
    outcomes.append(close(claimed_optimal_variance(case.alpha, case.beta, s2),
                          dense.trace() / case.cov.shape[0], rtol=RTOL,
                          what="score form (exact E||s||^2 = tr Sigma_t^-1) vs dense tr Sigma*/d"))
    return all_of(outcomes)


@claim(id="adpm.variance-bounds", source=f"{ADPM}, byproduct (bounds of sigma*_n^2)",
       statement="beta~_n <= sigma*_n^2 <= beta_n/alpha_n, both tight (data variance -> 0, -> inf)",
       method="both")
def check_bounds() -> Outcome:
    alpha, abar_prev = _step_symbols()
    abar, beta = alpha * abar_prev, 1 - alpha
    v = sp.Symbol("v", positive=True)  # variance of 1-D Gaussian data
    score_sq = 1 / (abar * v + 1 - abar)
    sigma2 = claimed_optimal_variance(alpha, beta, score_sq)
    lower, upper = (1 - abar_prev) * beta / (1 - abar), beta / alpha
    outcomes = [
        symbolic_zero(sp.limit(sigma2, v, 0) - lower, "v -> 0 limit is beta~"),
        symbolic_zero(sp.simplify(sp.limit(sigma2, v, sp.oo) - upper), "v -> inf limit is beta/alpha"),
        Outcome(sp.simplify(sp.diff(sigma2, v) * (abar * v + 1 - abar) ** 2).is_positive is True,
                "sigma*^2 increases with the data variance (so lies between the limits)"),
    ]
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for schedule in ("vp-linear", "cosine", "ddpm-linear"):
        grid = get_schedule(schedule).grid(50)
        eig = torch.logspace(-3, 3, 7, dtype=torch.float64)[torch.randperm(7, generator=gen)]
        s2 = (1 / (grid.abar[1:, None] * eig + grid.one_minus_abar[1:, None])).mean(-1)
        sig = claimed_optimal_variance(grid.alpha, grid.beta, s2)
        # Relative slack: the bounds must hold up to float64 rounding of a few operations.
        below = ((grid.beta_tilde - sig) / grid.beta_tilde.clamp_min(1e-300)).max()
        above = ((sig - grid.beta / grid.alpha) / (grid.beta / grid.alpha)).max()
        worst = max(worst, float(below), float(above))
    outcomes.append(Outcome(worst <= 1e-12, f"3 schedules x 50 steps, spectra 1e-3..1e3: worst "
                                            f"relative violation {worst:.1e} (allowed 1e-12)"))
    return all_of(outcomes)


def claimed_bounded_data_bound(beta_tilde, gamma2, low, high):
    """Analytic-DPM byproduct: data in ``[a, b]^d`` gives
    ``sigma*_n^2 <= beta~_n + (abar_{n-1} beta_n^2 / (1-abar_n)^2) ((b - a)/2)^2``."""
    return beta_tilde + gamma2 * ((high - low) / 2) ** 2


@claim(id="adpm.bounded-data-bound", source=f"{ADPM}, byproduct (data bounded in [a, b])",
       statement="x_0 in [a,b]^d: sigma*_n^2 <= beta~_n + gamma_n^2 ((b-a)/2)^2, attained by two "
                 "atoms at a and b", method="both")
def check_bounded_data() -> Outcome:
    # Posterior of a two-atom prior {a, b}: weight p on b, variance p (1-p) (b-a)^2; its maximum
    # over p is the per-coordinate bound, and any law on [a, b] has variance <= that (Popoviciu).
    p, a, b = sp.Symbol("p", positive=True), sp.Symbol("a", real=True), sp.Symbol("b", real=True)
    variance = p * (1 - p) * (b - a) ** 2
    best = sp.solve(sp.diff(variance, p), p)
    alpha, abar_prev = _step_symbols()
    beta_tilde = (1 - abar_prev) * (1 - alpha) / (1 - alpha * abar_prev)
    gamma2 = claimed_gamma_sq(alpha, abar_prev)
    attained = beta_tilde + gamma2 * variance.subs(p, best[0]) if len(best) == 1 else None
    outcomes = [Outcome(len(best) == 1 and best[0] == sp.Rational(1, 2), f"argmax_p p(1-p) = {best}"),
                symbolic_zero(attained - claimed_bounded_data_bound(beta_tilde, gamma2, a, b),
                              "two atoms at a, b with equal posterior weight attain the bound")]
    # Numeric: random 12-atom priors on [-1, 1]; exact posterior variances at many x_t on a grid.
    gen = torch.Generator().manual_seed(4)
    grid = get_schedule("cosine").grid(100)
    worst = 0.0
    for _ in range(5):
        atoms = torch.rand(12, generator=gen, dtype=torch.float64) * 2 - 1
        logw = torch.randn(12, generator=gen, dtype=torch.float64)
        for t in (2, 20, 60, 100):
            lv = grid.level(t)
            x = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)[:, None]
            logits = logw - (x - lv.abar.sqrt() * atoms) ** 2 / (2 * lv.one_minus_abar)
            w = torch.softmax(logits, -1)
            var0 = (w * atoms**2).sum(-1) - (w * atoms).sum(-1) ** 2
            bt, g2 = grid.beta_tilde[t - 1], grid.abar[t - 1] * grid.beta[t - 1] ** 2 / lv.one_minus_abar**2
            sigma = bt + g2 * var0
            worst = max(worst, float((sigma / claimed_bounded_data_bound(bt, g2, -1.0, 1.0)).max()))
    outcomes.append(Outcome(worst <= 1 + 1e-12, f"random 12-atom priors on [-1, 1], 4 steps x 61 "
                                               f"points: max sigma*^2 / bound = {worst:.6f} <= 1"))
    return all_of(outcomes)


@claim(id="adpm.skip-step", source=f"{ADPM}, fast inference slide",
       statement="mu*_{s|t} = (x_t + beta_{t|s} s)/sqrt(alpha_{t|s}), "
                 "sigma*^2_{s|t} = (beta_{t|s}/alpha_{t|s})(1 - beta_{t|s} E||s||^2/d)",
       method="both")
def check_skip_step() -> Outcome:
    case = gaussian_case()
    grid = get_schedule("cosine").grid(20)
    lv_s, lv_t = grid.level(2), case.level
    alpha = lv_t.abar / lv_s.abar
    beta = 1 - alpha
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    cov_s = lv_s.abar * case.cov + lv_s.one_minus_abar * eye
    cov_t = lv_t.abar * case.cov + lv_t.one_minus_abar * eye
    mean, cov = conditional(lv_s.abar.sqrt() * case.mean, cov_s, lv_t.abar.sqrt() * case.mean,
                            cov_t, alpha.sqrt() * cov_s, case.x)
    score = case.reference.score(case.x, lv_t)
    s2 = _gaussian_expected_sq_score(case.cov, lv_t.abar, lv_t.one_minus_abar)
    eps2 = lv_t.one_minus_abar * s2
    d = case.cov.shape[0]
    return all_of([
        close((case.x + beta * score) / alpha.sqrt(), mean, rtol=RTOL, atol=RTOL,
              what="skip-step mean vs dense E[x_2 | x_7]"),
        close(claimed_optimal_variance(alpha, beta, s2), cov.trace() / d, rtol=RTOL,
              what="skip-step score form vs dense tr Cov[x_2|x_7]/d"),
        close(claimed_optimal_variance_noise(alpha, beta, lv_t.one_minus_abar, eps2),
              cov.trace() / d, rtol=RTOL, what="skip-step noise form vs dense"),
    ])
