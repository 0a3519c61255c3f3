"""Claims of Ou et al., "Improved diffusion models with optimal covariance matching" (ICLR 2025).

Theorem 1 (scaled analytical covariance identity), Theorem 2 (the OCM objective is unbiased and
minimised by the Hessian diagonal), Theorem 3 (OCM-DDPM and SN-DDPM coincide at the optimum),
eq. (34) (the coefficient gamma_t) and the skip-step / DDIM forms, eqs. (6), (14)-(19).
"""

from __future__ import annotations

import itertools
from functools import cache

import sympy as sp
import torch

from pathkl.ocm import probe_regression_loss
from pathkl.schedules import get_schedule

from .atomic import atomic_prior, is_zero
from .evidence import all_of, close, symbolic_zero
from .registry import Outcome, claim
from .spot import conditional, dense_posterior, dense_reverse_kernel, gaussian_case
from .tweedie import RTOL, SYMBOLIC_CASES

OCM = "Ou et al. 2025 (OCM)"
#: Dimensions for which all 2^d Rademacher vectors are enumerated with a symbolic symmetric H.
ENUMERATED_DIMS = (1, 2, 3, 4)


def claimed_scaled_cov(hess, alpha, var, eye):
    """OCM Theorem 1, eq. (8), for ``x~ = alpha x + sigma eps``:
    ``Sigma(x~) = (sigma^4 hess log q(x~) + sigma^2 I) / alpha^2``."""
    return (var**2 * hess + var * eye) / alpha**2


def claimed_probe(v, hv):
    """OCM eq. (9)/(11): the one-probe estimate ``v * (H v)`` of ``diag H``."""
    return v.multiply_elementwise(hv) if isinstance(v, sp.MatrixBase) else v * hv


def claimed_ocm_constant(hess):
    """OCM Theorem 2 (Appendix A.2): ``L_ocm(h) - ||h - diag H||^2`` equals
    ``sum_{i != j} H_ij^2`` (the probe's variance), independent of h."""
    d = hess.shape[0]
    return sum(hess[i, j] ** 2 for i in range(d) for j in range(d) if i != j)


def claimed_ocm_minimiser(hess):
    """OCM Theorem 2: ``argmin_h L_ocm(h) = diag H``."""
    return [hess[i, i] for i in range(hess.shape[0])]


def claimed_probe_regression_excess(hess, probes):
    """OCM eq. (10), the regression on the M-probe average, read with the probes redrawn for every x:
    ``E_v ||h - (1/M) sum_m v_m * (H v_m)||^2 - ||h - diag H||^2 = (1/M) sum_{i != j} H_ij^2``, free
    of h (the average's variance). The paper calls eq. (10) biased for small M (section 3.1)."""
    return claimed_ocm_constant(hess) / probes


def claimed_probe_regression_minimiser(hess, probes):
    """Found here: the minimiser of eq. (10) with redrawn probes is ``diag H`` for every M >= 1, as
    for eq. (11): eq. (10) is unbiased, only its constant is smaller."""
    return [hess[i, i] for i in range(hess.shape[0])]


def claimed_ocm_cov(h, alpha, beta):
    """OCM Theorem 3: OCM-DDPM covariance ``((1 - alpha_t)^2 h + (1 - alpha_t)) / alpha_t``."""
    return (beta**2 * h + beta) / alpha


def claimed_sn_cov(g, score, alpha, beta, one_minus_abar, beta_tilde):
    """OCM Theorem 3: SN-DDPM covariance
    ``beta~_t + (beta_t^2/alpha_t) (g / (1 - abar_t) - score^2)`` with ``g = E[eps_t^2 | x_t]``."""
    return beta_tilde + beta**2 / alpha * (g / one_minus_abar - score**2)


def claimed_gamma(abar_prev, abar, lam2):
    """OCM eq. (34) (Bao et al. 2022b, Lemma 13):
    ``gamma_t = sqrt(abar_{t-1}) - sqrt(1 - abar_{t-1} - lambda_t^2) sqrt(abar_t / (1 - abar_t))``."""
    return sp.sqrt(abar_prev) - sp.sqrt(1 - abar_prev - lam2) * sp.sqrt(abar / (1 - abar))


def claimed_skip_mean(x, score, abar_skip):
    """OCM eq. (15)/(18): ``mu_{t'}(x_t) = (x_t + (1 - abar_{t':t}) score) / sqrt(abar_{t':t})``."""
    return (x + (1 - abar_skip) * score) / abar_skip**0.5


def claimed_skip_cov(h, abar_skip):
    """OCM eq. (16)/(19): ``Sigma_{t'} = ((1 - abar_{t':t})^2 h + (1 - abar_{t':t})) / abar_{t':t}``."""
    return ((1 - abar_skip) ** 2 * h + (1 - abar_skip)) / abar_skip


def claimed_ddim_mean(x0, xt, abar_prev, abar, var):
    """OCM eq. (6) (DDIM): ``sqrt(abar_{t-1}) x0 + (x_t - sqrt(abar_t) x0) sqrt(1 - abar_{t-1} - s^2)
    / sqrt(1 - abar_t)``."""
    return sp.sqrt(abar_prev) * x0 + (xt - sp.sqrt(abar) * x0) / sp.sqrt(1 - abar) \
        * sp.sqrt(1 - abar_prev - var)


@cache
def symmetric_matrix(d: int) -> sp.Matrix:
    """A general symmetric d x d matrix of independent real symbols."""
    return sp.Matrix(d, d, lambda i, j: sp.Symbol(f"H{min(i, j)}{max(i, j)}", real=True))


def rademacher_vectors(d: int):
    """All 2^d vectors with entries +-1, each of probability 2^-d."""
    return [sp.Matrix(signs) for signs in itertools.product((-1, 1), repeat=d)]


def _thm1_residual(p):
    return claimed_scaled_cov(p.hessian, p.a, p.var, sp.eye(p.dim)) - p.posterior_cov


@claim(id="ocm.thm1-covariance", source=f"{OCM}, Theorem 1, eq. (8)",
       statement="x~ = alpha x + sigma eps: Cov[x | x~] = (sigma^4 hess log q + sigma^2 I)/alpha^2",
       method="both")
def check_thm1() -> Outcome:
    symbolic = Outcome(True, "Bayes covariance vs eq. (8): exact for symbolic priors "
                       + ", ".join(f"{k} atoms in {d}-D" for d, k in SYMBOLIC_CASES))
    for dim, atoms in SYMBOLIC_CASES:
        if not all(is_zero(r) for r in _thm1_residual(atomic_prior(dim, atoms))):
            symbolic = Outcome(False, f"eq. (8) fails for a {atoms}-atom prior in {dim}-D")
    case = gaussian_case()
    lv = case.level
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    claimed = claimed_scaled_cov(case.reference.hessian(case.x, lv), lv.abar.sqrt(),
                                 lv.one_minus_abar, eye)
    _, dense = dense_posterior(case, lv)
    return all_of([symbolic, close(claimed, dense.expand_as(claimed), rtol=RTOL,
                                   atol=RTOL * float(dense.abs().max()),
                                   what="eq. (8) on GaussianReference.hessian vs dense")])


def _rademacher_mean(d: int) -> sp.Matrix:
    h = symmetric_matrix(d)
    vs = rademacher_vectors(d)
    return sum((claimed_probe(v, h * v) for v in vs), sp.zeros(d, 1)) / len(vs)


@claim(id="ocm.thm2-unbiased", source=f"{OCM}, eq. (9) and Theorem 2 (Appendix A.2)",
       statement="E_v[v * (H v)] = diag H for Rademacher v and every symmetric H", method="both")
def check_thm2_unbiased() -> Outcome:
    outcomes = []
    for d in ENUMERATED_DIMS:
        h = symmetric_matrix(d)
        outcomes.append(symbolic_zero(_rademacher_mean(d) - h.diagonal().T,
                                      f"all 2^{d} probes, symbolic H"))
    i, j, n = sp.symbols("i j n", integer=True, nonnegative=True)
    hij = sp.IndexedBase("H")
    # E[v_i v_j] = delta_ij (independent signs), so E[(v*Hv)_i] = sum_j H_ij delta_ij for any size n.
    general = sp.Sum(hij[i, j] * sp.KroneckerDelta(i, j), (j, 0, n - 1)).doit()
    # sympy returns Piecewise((H[i, i], i <= n - 1), (0, True)); i is a valid index, so i <= n - 1.
    general = general.subs(n, i + 1 + sp.Symbol("k", integer=True, nonnegative=True))
    outcomes.append(symbolic_zero(sp.piecewise_fold(general).simplify() - hij[i, i],
                                  "index form for general size n"))
    case = gaussian_case()
    x = case.x[:1]
    d = case.cov.shape[0]
    probes = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)
    hv = case.reference.hvp(x.expand(len(probes), -1), probes, case.level)
    mean = claimed_probe(probes, hv).mean(0)
    diag = torch.diagonal(case.reference.hessian(x, case.level)[0])
    outcomes.append(close(mean, diag, rtol=RTOL, atol=RTOL * float(diag.abs().max()),
                          what=f"all 2^{d} probes through GaussianReference.hvp vs diag(hessian)"))
    return all_of(outcomes)


def _squared_norm(v: sp.Matrix) -> sp.Expr:
    return sum(entry**2 for entry in v)


def _exact_loss(d: int):
    h = sp.Matrix(sp.symbols(f"h0:{d}", real=True))
    H = symmetric_matrix(d)
    vs = rademacher_vectors(d)
    loss = sum((_squared_norm(h - claimed_probe(v, H * v)) for v in vs), sp.Integer(0)) / len(vs)
    return h, H, sp.expand(loss)


@claim(id="ocm.thm2-loss-decomposition", source=f"{OCM}, Theorem 2 (Appendix A.2)",
       statement="L_ocm(h) = ||h - diag H||^2 + sum_{i!=j} H_ij^2 >= grounded loss ||h - E_v[v*Hv]||^2",
       method="symbolic")
def check_thm2_decomposition() -> Outcome:
    outcomes = []
    for d in (2, 3):
        h, H, loss = _exact_loss(d)
        grounded = _squared_norm(h - H.diagonal().T)
        outcomes.append(symbolic_zero(loss - grounded - claimed_ocm_constant(H),
                                      f"d={d}: L_ocm - ||h - diag H||^2 - const"))
        gap = sp.expand(loss - grounded)
        outcomes.append(Outcome(gap.free_symbols.isdisjoint(set(h)) and
                                all(c >= 0 for c in sp.Poly(gap, *H.free_symbols).coeffs()),
                                f"d={d}: the gap is free of h and a sum of squares (Jensen bound)"))
    return all_of(outcomes)


@claim(id="ocm.thm2-minimiser", source=f"{OCM}, Theorem 2 (Appendix A.2)",
       statement="the unique minimiser of L_ocm(h) is h = diag H (stationary point, Hessian 2I)",
       method="symbolic")
def check_thm2_minimiser() -> Outcome:
    outcomes = []
    for d in (2, 3):
        h, H, loss = _exact_loss(d)
        grad = [sp.diff(loss, hi) for hi in h]
        solution = sp.solve(grad, list(h), dict=True)
        claimed = claimed_ocm_minimiser(H)
        found = len(solution) == 1 and all(
            sp.simplify(solution[0][h[i]] - claimed[i]) == 0 for i in range(d))
        hess = sp.hessian(loss, list(h))
        outcomes.append(Outcome(found and hess == 2 * sp.eye(d),
                                f"d={d}: grad L_ocm = 0 solved to h = {[solution[0][s] for s in h] if solution else None}, hessian 2I: {hess == 2 * sp.eye(d)}"))
    return all_of(outcomes)


def _probe_regression_loss(d: int, probes: int):
    """Eq. (10) with its expectation over all ``2^(d M)`` probe tuples, symbolic h and H."""
    h = sp.Matrix(sp.symbols(f"h0:{d}", real=True))
    H = symmetric_matrix(d)
    vs = rademacher_vectors(d)
    tuples = list(itertools.product(vs, repeat=probes))
    loss = sum((_squared_norm(h - sum((claimed_probe(v, H * v) for v in tup), sp.zeros(d, 1)) / probes)
                for tup in tuples), sp.Integer(0)) / len(tuples)
    return h, H, sp.expand(loss)


def _probe_regression_numeric(probes: int) -> Outcome:
    """pathkl.ocm.probe_regression_loss on GaussianReference.hvp, every probe tuple: its mean equals
    ``||h - diag H||^2`` plus the claimed excess, and its mean gradient (autograd) ``2 (h - diag H)``."""
    case = gaussian_case()
    x = case.x[:1]
    d = case.cov.shape[0]
    hess = case.reference.hessian(x, case.level)[0]
    vs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)
    h = torch.linspace(-0.7, 0.4, d, dtype=torch.float64)[None].requires_grad_(True)

    def hvp(v):
        return case.reference.hvp(x.expand_as(v), v, case.level)

    losses = [probe_regression_loss(h, hvp, torch.stack(tup)[:, None, :])
              for tup in itertools.product(vs, repeat=probes)]
    mean = torch.stack(losses).mean()
    (grad,) = torch.autograd.grad(mean, h)
    diag = torch.diagonal(hess)
    excess = float(claimed_probe_regression_excess(hess, probes))
    want = float(((h.detach()[0] - diag) ** 2).sum()) + excess
    minimiser = torch.tensor([float(v) for v in claimed_probe_regression_minimiser(hess, probes)], dtype=torch.float64)
    return all_of([close(mean.detach(), want, rtol=RTOL, what=f"M={probes}: E loss (all probe tuples) vs excess"),
                   close(grad[0], 2 * (h.detach()[0] - minimiser), rtol=RTOL, atol=RTOL,
                         what=f"M={probes}: E grad (autograd) vs 2 (h - claimed minimiser)")])


@claim(id="ocm.eq10-probe-regression", source=f"{OCM}, section 3.1, eqs. (10)-(11)",
       statement="with probes redrawn per x, E_v ||h - mean_M v*Hv||^2 = ||h - diag H||^2 + (1/M) "
                 "sum_{i!=j} H_ij^2: minimiser diag H for every M (eq. (10) is not biased)",
       method="both")
def check_probe_regression() -> Outcome:
    outcomes = []
    for d, probes in ((2, 1), (2, 2), (2, 3), (3, 2)):
        h, H, loss = _probe_regression_loss(d, probes)
        grounded = _squared_norm(h - H.diagonal().T)
        outcomes.append(symbolic_zero(loss - grounded - claimed_probe_regression_excess(H, probes),
                                      f"d={d}, M={probes}: E loss - ||h - diag H||^2 - excess"))
        solution = sp.solve([sp.diff(loss, hi) for hi in h], list(h), dict=True)
        claimed = claimed_probe_regression_minimiser(H, probes)
        found = len(solution) == 1 and all(sp.expand(solution[0][h[i]] - claimed[i]) == 0 for i in range(d))
        outcomes.append(Outcome(found, f"d={d}, M={probes}: grad = 0 solved to "
                                       f"{[solution[0][s] for s in h] if solution else None}"))
    outcomes += [_probe_regression_numeric(m) for m in (1, 2)]
    return all_of(outcomes)


def _posterior_symbols():
    """Scalar (one coordinate) symbols of step t: alpha_t, abar_{t-1}, x_t, E[x0|x_t], E[x0^2|x_t]."""
    alpha, abar_prev = sp.symbols("alpha abar_prev", positive=True)
    x, m1, m2 = sp.symbols("x m1 m2", real=True)
    return alpha, abar_prev, x, m1, m2


@claim(id="ocm.thm3-sn-equivalence", source=f"{OCM}, Theorem 3 (Appendix A.3), eqs. (23), (34)",
       statement="optimal OCM-DDPM and SN-DDPM diagonal covariances both equal diag Cov[x_{t-1}|x_t]",
       method="both")
def check_thm3() -> Outcome:
    alpha, abar_prev, x, m1, m2 = _posterior_symbols()
    abar = alpha * abar_prev
    beta = 1 - alpha
    var0 = m2 - m1**2
    # First principles in one coordinate (the identities are coordinatewise on the diagonal):
    # score by Tweedie's first-order formula, hessian diagonal by its second-order formula,
    # g = E[eps^2|x_t] with eps = (x_t - sqrt(abar) x0)/sqrt(1 - abar), truth by total variance.
    score = (sp.sqrt(abar) * m1 - x) / (1 - abar)
    hdiag = (abar * var0 - (1 - abar)) / (1 - abar) ** 2
    g = (x**2 - 2 * sp.sqrt(abar) * x * m1 + abar * m2) / (1 - abar)
    beta_tilde = (1 - abar_prev) * beta / (1 - abar)
    truth = beta_tilde + abar_prev * beta**2 / (1 - abar) ** 2 * var0
    outcomes = [
        symbolic_zero(claimed_ocm_cov(hdiag, alpha, beta) - truth, "OCM-DDPM form vs total variance"),
        symbolic_zero(claimed_sn_cov(g, score, alpha, beta, 1 - abar, beta_tilde) - truth,
                      "SN-DDPM form vs total variance"),
    ]
    case = gaussian_case()
    lv = case.level
    _, dense_kernel = dense_reverse_kernel(case)
    m, c0 = dense_posterior(case, lv)
    eps2 = ((case.x - lv.abar.sqrt() * m) ** 2 + lv.abar * torch.diagonal(c0)) / lv.one_minus_abar
    hd = torch.diagonal(case.reference.hessian(case.x, lv), dim1=-2, dim2=-1)
    beta_t = case.beta
    bt = (case.prev.one_minus_abar * beta_t / lv.one_minus_abar)
    want = torch.diagonal(dense_kernel).expand_as(hd)
    outcomes.append(close(claimed_ocm_cov(hd, case.alpha, beta_t), want, rtol=RTOL,
                          what="OCM-DDPM on GaussianReference.hessian vs dense kernel diagonal"))
    sn = claimed_sn_cov(eps2, case.reference.score(case.x, lv), case.alpha, beta_t,
                        lv.one_minus_abar, bt)
    outcomes.append(close(sn, want, rtol=RTOL,
                          what="SN-DDPM on GaussianReference.score vs dense kernel diagonal"))
    return all_of(outcomes)


@claim(id="ocm.eq34-gamma", source=f"{OCM}, eq. (34) (Bao et al. 2022b, Lemma 13)",
       statement="gamma_t = sqrt(abar_{t-1}) - sqrt(1-abar_{t-1}-lambda_t^2) sqrt(abar_t/(1-abar_t)) "
                 "= sqrt(abar_{t-1}) beta_t/(1-abar_t)", method="symbolic")
def check_gamma() -> Outcome:
    alpha, abar_prev = sp.symbols("alpha abar_prev", positive=True)
    abar = alpha * abar_prev
    beta = 1 - alpha
    lam2 = (1 - abar_prev) * beta / (1 - abar)
    lhs = claimed_gamma(abar_prev, abar, lam2)
    rhs = sp.sqrt(abar_prev) * beta / (1 - abar)
    # 0 < alpha, abar_prev < 1: substitute alpha = 1/(1+u), abar_prev = 1/(1+w), u, w > 0, so that
    # every square root has a positive radicand sympy can see.
    u, w = sp.symbols("u w", positive=True)
    sub = {alpha: 1 / (1 + u), abar_prev: 1 / (1 + w)}
    return symbolic_zero(sp.radsimp(sp.simplify((lhs - rhs).subs(sub))), "eq. (34) gamma_t")


@claim(id="ocm.skip-step", source=f"{OCM}, eqs. (14)-(16)",
       statement="q(x_t|x_t') = N(sqrt(abar_{t':t}) x_t', (1-abar_{t':t}) I); skip-step mean/cov "
                 "(x + (1-a) s)/sqrt(a), ((1-a)^2 diag H + (1-a))/a, a = abar_t/abar_t'",
       method="both")
def check_skip_step() -> Outcome:
    a1, a2 = sp.symbols("alpha1 alpha2", positive=True)
    # Two forward steps compose to one with alpha = alpha1 alpha2 (eq. (14)).
    composed = a2 * (1 - a1) + (1 - a2)
    outcomes = [symbolic_zero(composed - (1 - a1 * a2), "two forward steps compose (variance)")]
    case = gaussian_case()
    grid = get_schedule("cosine").grid(20)
    lv_s, lv_t = grid.level(2), case.level
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    cov_s = lv_s.abar * case.cov + lv_s.one_minus_abar * eye
    cov_t = lv_t.abar * case.cov + lv_t.one_minus_abar * eye
    skip = lv_t.abar / lv_s.abar
    mean, cov = conditional(lv_s.abar.sqrt() * case.mean, cov_s, lv_t.abar.sqrt() * case.mean,
                            cov_t, skip.sqrt() * cov_s, case.x)
    score = case.reference.score(case.x, lv_t)
    hd = torch.diagonal(case.reference.hessian(case.x, lv_t), dim1=-2, dim2=-1)
    outcomes.append(close(claimed_skip_mean(case.x, score, skip), mean, rtol=RTOL, atol=RTOL,
                          what="eq. (15) vs dense q(x_2 | x_7)"))
    outcomes.append(close(claimed_skip_cov(hd, skip), torch.diagonal(cov).expand_as(hd), rtol=RTOL,
                          what="eq. (16) vs diagonal of dense Cov[x_2 | x_7]"))
    return all_of(outcomes)


@claim(id="ocm.ddim-forms", source=f"{OCM}, eqs. (6), (18), (19)",
       statement="DDIM eq. (6) with sigma^2 = beta~_t is the DDPM posterior mean; eqs. (18)-(19) "
                 "are the exact moments of q(x_0 | x_t) (diagonal)", method="both")
def check_ddim() -> Outcome:
    u, w = sp.symbols("u w", positive=True)
    alpha, abar_prev = 1 / (1 + u), 1 / (1 + w)
    abar = alpha * abar_prev
    beta = 1 - alpha
    x0, xt = sp.symbols("x0 xt", real=True)
    beta_tilde = (1 - abar_prev) * beta / (1 - abar)
    mu_tilde = (sp.sqrt(abar_prev) * beta * x0 + sp.sqrt(alpha) * (1 - abar_prev) * xt) / (1 - abar)
    ddim = claimed_ddim_mean(x0, xt, abar_prev, abar, beta_tilde)
    outcomes = [symbolic_zero(sp.radsimp(sp.simplify(ddim - mu_tilde)),
                              "eq. (6) at sigma^2 = beta~ vs DDPM posterior mean")]
    case = gaussian_case()
    lv = case.level
    m, c0 = dense_posterior(case, lv)
    score = case.reference.score(case.x, lv)
    hd = torch.diagonal(case.reference.hessian(case.x, lv), dim1=-2, dim2=-1)
    outcomes.append(close(claimed_skip_mean(case.x, score, lv.abar), m, rtol=RTOL, atol=RTOL,
                          what="eq. (18) vs dense E[x0|xt]"))
    outcomes.append(close(claimed_skip_cov(hd, lv.abar), torch.diagonal(c0).expand_as(hd),
                          rtol=RTOL, what="eq. (19) vs diagonal of dense Cov[x0|xt]"))
    return all_of(outcomes)
