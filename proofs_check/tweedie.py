"""Tweedie identities shared by every source: first and second posterior moments from the score.

Setting of OCM Appendix A.3 (Lemmas 1-3): ``x~ = sqrt(alpha) x + sqrt(beta) eps``.  Symbolic
checks use a K-atom prior (``proofs_check.atomic``) whose posterior moments come straight from
Bayes' rule; numeric checks use pathkl's Gaussian reference against a dense Schur complement.
"""

from __future__ import annotations

import sympy as sp
import torch

from .atomic import atomic_prior, is_zero
from .evidence import all_of, close
from .registry import Outcome, claim
from .spot import dense_posterior, dense_reverse_kernel, gaussian_case

OCM = "Ou et al. 2025 (OCM)"
#: (dimension, atoms) of the symbolic priors: 1-D with three atoms and 2-D with two.
SYMBOLIC_CASES = ((1, 3), (2, 2))
#: Numeric spot checks compare two float64 routes through d = 4 linear algebra with condition
#: number <= 100: agreement to ~1e-13 is expected; 1e-9 leaves margin yet any wrong constant or
#: missing factor gives an O(1) relative error.
RTOL = 1e-9


def sqrt(x):
    """Exact square root for sympy expressions, elementwise for tensors."""
    return sp.sqrt(x) if isinstance(x, sp.Basic) else x**0.5


def claimed_posterior_mean(x, score, alpha, beta):
    """OCM Lemma 1, eq. (26): ``E[x | x~] = (x~ + beta grad log q(x~)) / sqrt(alpha)``."""
    return (x + beta * score) / sqrt(alpha)


def claimed_second_moment(x, s1, s2, alpha, beta, eye):
    """OCM Lemma 2, eq. (27):
    ``E[x x^T | x~] = (x~x~^T + b s1 x~^T + b x~ s1^T + b^2 s2 + b^2 s1 s1^T + b I) / alpha``."""
    return (x * x.T + beta * s1 * x.T + beta * x * s1.T + beta**2 * s2
            + beta**2 * s1 * s1.T + beta * eye) / alpha


def claimed_posterior_cov(hess, alpha, beta, eye):
    """OCM Lemma 3, eq. (32): ``Cov[x | x~] = (beta / alpha) (I + beta hess log q(x~))``."""
    return beta / alpha * (eye + beta * hess)


def claimed_noise_form(eps_second_moment, score, alpha, beta):
    """OCM eq. (33): ``Cov[x | x~] = (beta^2/alpha) (E[eps eps^T | x~] / beta - s s^T)``."""
    return beta**2 / alpha * (eps_second_moment / beta - score * score.T)


def claimed_jvp_cov(jacobian_of_mean, alpha, beta):
    """docs/theory.md section 2.3: ``Sigma*_t = (beta_t / sqrt(alpha_t)) d mu*_t / dx``."""
    return beta / sqrt(alpha) * jacobian_of_mean


def _symbolic(what: str, residual_of) -> Outcome:
    """Apply ``residual_of(prior, alpha, beta)`` to every symbolic prior; pass iff all vanish."""
    for dim, atoms in SYMBOLIC_CASES:
        p = atomic_prior(dim, atoms)
        residual = residual_of(p, p.a**2, p.var)
        if not all(is_zero(r) for r in residual):
            return Outcome(False, f"{what}: nonzero residual for a {atoms}-atom prior in {dim}-D")
    cases = ", ".join(f"{k} atoms in {d}-D" for d, k in SYMBOLIC_CASES)
    return Outcome(True, f"{what}: exact for symbolic priors ({cases})")


def _lemma1_residual(p, alpha, beta):
    return claimed_posterior_mean(sp.Matrix(p.x), p.score, alpha, beta) - p.posterior_mean


@claim(id="tweedie.lemma1-mean", source=f"{OCM}, Lemma 1, eq. (26)",
       statement="E[x | x~] = (x~ + beta grad log q(x~)) / sqrt(alpha)", method="both")
def check_lemma1() -> Outcome:
    case = gaussian_case()
    lv = case.level
    score = case.reference.score(case.x, lv)
    claimed = claimed_posterior_mean(case.x, score, lv.abar, lv.one_minus_abar)
    dense, _ = dense_posterior(case, lv)
    return all_of([
        _symbolic("Bayes posterior mean vs eq. (26)", _lemma1_residual),
        close(claimed, dense, rtol=RTOL, atol=RTOL, what="eq. (26) on GaussianReference.score vs dense"),
        close(case.reference.posterior_mean(case.x, lv), dense, rtol=RTOL, atol=RTOL,
              what="GaussianReference.posterior_mean vs dense"),
    ])


def _lemma2_residual(p, alpha, beta):
    x = sp.Matrix(p.x)
    claimed = claimed_second_moment(x, p.score, p.hessian, alpha, beta, sp.eye(p.dim))
    return claimed - p.posterior_second_moment


@claim(id="tweedie.lemma2-second-moment", source=f"{OCM}, Lemma 2, eq. (27)",
       statement="E[x x^T | x~] = (x~x~^T + b s1 x~^T + b x~ s1^T + b^2 s2 + b^2 s1 s1^T + b I)/alpha",
       method="symbolic")
def check_lemma2() -> Outcome:
    return _symbolic("Bayes second moment vs eq. (27)", _lemma2_residual)


def _lemma3_residual(p, alpha, beta):
    return claimed_posterior_cov(p.hessian, alpha, beta, sp.eye(p.dim)) - p.posterior_cov


@claim(id="tweedie.lemma3-covariance", source=f"{OCM}, Lemma 3, eq. (32)",
       statement="Cov[x | x~] = (beta/alpha) (I + beta hess log q(x~))", method="both")
def check_lemma3() -> Outcome:
    case = gaussian_case()
    lv = case.level
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    claimed = claimed_posterior_cov(case.reference.hessian(case.x, lv), lv.abar, lv.one_minus_abar, eye)
    _, dense = dense_posterior(case, lv)
    return all_of([
        _symbolic("Bayes posterior covariance vs eq. (32)", _lemma3_residual),
        close(claimed, dense.expand_as(claimed), rtol=RTOL, atol=RTOL * float(dense.abs().max()),
              what="eq. (32) on GaussianReference.hessian vs dense"),
        close(case.reference.posterior_cov(case.x, lv), dense.expand_as(claimed), rtol=RTOL,
              atol=RTOL * float(dense.abs().max()), what="GaussianReference.posterior_cov vs dense"),
    ])


def _noise_form_residual(p, alpha, beta):
    x = sp.Matrix(p.x)
    q = p.density
    eps = [(x - p.a * sp.Matrix(atom)) / sp.sqrt(beta) for atom in p.atoms]
    second = sum((e_k * (v * v.T) for e_k, v in zip(p.e, eps)), sp.zeros(p.dim)) / q
    return claimed_noise_form(second, p.score, alpha, beta) - p.posterior_cov


@claim(id="tweedie.eq33-noise-form", source=f"{OCM}, Appendix A.3, eq. (33)",
       statement="Cov[x | x~] = (beta^2/alpha) (E[eps eps^T | x~]/beta - s s^T), eps = (x~ - sqrt(alpha) x)/sqrt(beta)",
       method="symbolic")
def check_noise_form() -> Outcome:
    return _symbolic("Bayes covariance vs eq. (33)", _noise_form_residual)


def _jvp_residual(p, alpha, beta):
    mean = p.posterior_mean
    jac = sp.Matrix(p.dim, p.dim, lambda i, j: p.diff(mean[i], j))
    return claimed_jvp_cov(jac, alpha, beta) - p.posterior_cov


@claim(id="tweedie.jvp-covariance",
       source=f"{OCM}, eqs. (26) and (32) (docs/theory.md section 2.3); LGS: one JVP per Lanczos step",
       statement="Sigma*_t(x) = (beta_t / sqrt(alpha_t)) d mu*_t(x) / dx", method="both")
def check_jvp() -> Outcome:
    case = gaussian_case()
    alpha, beta = case.alpha, case.beta

    def mu_star(x):
        score = case.reference.score(x.unsqueeze(0), case.level)[0]
        return (x + beta * score) / alpha.sqrt()

    jac = torch.func.jacrev(mu_star)(case.x[0])
    _, dense = dense_reverse_kernel(case)
    # One covariance-vector product = one JVP of the mean (what the Lanczos sampler uses), against
    # the law-of-total-variance matvec beta~ v + gamma^2 Cov[x0|xt] v from posterior_cov_matvec.
    v = torch.linspace(-1.0, 2.0, case.cov.shape[0], dtype=torch.float64)
    _, tangent = torch.func.jvp(mu_star, (case.x[0],), (v,))
    beta_tilde = case.prev.one_minus_abar * beta / case.level.one_minus_abar
    gamma2 = case.prev.abar * beta**2 / case.level.one_minus_abar**2
    matvec = beta_tilde * v + gamma2 * case.reference.posterior_cov_matvec(case.x[:1], v[None], case.level)[0]
    return all_of([
        _symbolic("Bayes reverse-kernel covariance vs (beta/sqrt(alpha)) Jacobian of its mean",
                  _jvp_residual),
        close(claimed_jvp_cov(jac, alpha, beta), dense, rtol=RTOL,
              atol=RTOL * float(dense.abs().max()),
              what="autodiff Jacobian of mu* (GaussianReference.score) vs dense reverse kernel"),
        close(claimed_jvp_cov(tangent, alpha, beta), matvec, rtol=RTOL,
              atol=RTOL * float(matvec.abs().max()),
              what="one JVP of mu* vs beta~ v + gamma^2 posterior_cov_matvec"),
    ])
