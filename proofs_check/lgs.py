"""Per-step path-KL expansions behind the rates of Akhtar et al., "LGS / path-KL covariance
matching" (arXiv 2605.22723; abstract only) as made precise in docs/theory.md section 6.

With ``Sigma* = (beta/alpha)(I + beta H)`` (``H = hess log q_t``) the per-step KL of an isotropic or
diagonal family is ``(beta^2/4) ||D||_F^2 + O(beta^3)`` (``D = H + I`` for ``beta``,
``H - c I`` for ``analytic`` with ``c = hbar``, ``offdiag H`` for ``diag``), and for ``full`` it is the
negentropy of the exact reverse kernel, ``(beta^3/12) ||grad^3 log q||_F^2 + O(beta^4)``.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import mpmath
import sympy as sp
import torch
from sympy.polys.domains import QQ
from sympy.polys.rings import ring

from pathkl.families import get_family
from pathkl.lanczos import lanczos_sampler, sqrt_error_bound
from pathkl.schedules import get_schedule

from .evidence import all_of, symbolic_zero
from .ocm import symmetric_matrix
from .registry import Outcome, claim
from .spot import dense_reverse_kernel, gaussian_case

LGS = "Akhtar et al. 2026 (LGS path KL, arXiv 2605.22723, abstract)"
beta_sym = sp.Symbol("beta", positive=True)


def claimed_isotropic_coefficient() -> sp.Rational:
    """docs/theory.md section 6.1: per-step KL ~ ``(1/4) ||Sigma*/sigma^2 - I||_F^2
    = (beta^2/4)||D||_F^2``."""
    return sp.Rational(1, 4)


def claimed_negentropy_coefficient() -> sp.Rational:
    """docs/theory.md section 6.2: ``full`` per-step KL ~ ``(1/12) beta^3 ||grad^3 log q||_F^2``."""
    return sp.Rational(1, 12)


def claimed_defect(name: str, hess: sp.Matrix, c=None) -> sp.Matrix:
    """docs/theory.md section 6.1: the defect D of each order-1 family (``c`` is the analytic level)."""
    d = hess.shape[0]
    if name == "beta":
        return hess + sp.eye(d)
    if name == "analytic":
        return hess - c * sp.eye(d)
    if name == "diag":
        return hess - sp.diag(*hess.diagonal())
    raise ValueError(name)


def _taylor(expr: sp.Expr, order: int) -> sp.Expr:
    """Taylor polynomial of ``expr`` in beta at 0 up to ``beta^order`` (by differentiation)."""
    return sum((sp.simplify(sp.diff(expr, beta_sym, k).subs(beta_sym, 0)) / sp.factorial(k)
                * beta_sym**k for k in range(order + 1)), sp.Integer(0))


def _truncate_beta(expr: sp.Expr, order: int) -> sp.Expr:
    poly = sp.Poly(sp.expand(expr), beta_sym)
    return sum((c * beta_sym**k for (k,), c in poly.terms() if k <= order), sp.Integer(0))


@cache
def _gaussian_kl_series(name: str, d: int):
    """``KL(N(0, Sigma*) || N(0, Sigma)) = (tr R - d - log det R)/2``, ``R = Sigma^-1 Sigma*``, as a
    polynomial in beta up to beta^2, for a family with symbolic symmetric H.  Each entry of R is
    Taylor-expanded, det R = 1 + delta is formed from the truncated entries and
    ``log(1 + delta) = delta - delta^2/2 + O(beta^3)`` (delta = O(beta))."""
    hess = symmetric_matrix(d)
    alpha = 1 - beta_sym
    sigma_star = beta_sym / alpha * (sp.eye(d) + beta_sym * hess)
    c = sp.Symbol("c", real=True)
    if name == "beta":
        sigma = beta_sym * sp.eye(d)
    elif name == "analytic":
        sigma = beta_sym / alpha * (1 + beta_sym * c) * sp.eye(d)
    else:
        sigma = sp.diag(*sigma_star.diagonal())
    ratio = (sigma.inv() * sigma_star).applyfunc(lambda e: _taylor(sp.cancel(e), 2))
    delta = _truncate_beta(ratio.det() - 1, 2)
    if _truncate_beta(delta, 0) != 0:
        raise ArithmeticError("R is not I at beta = 0")
    log_det = _truncate_beta(delta - delta**2 / 2, 2)
    kl = sp.expand((ratio.trace() - d - log_det) / 2)
    return hess, c, [sp.simplify(kl.coeff(beta_sym, k)) for k in range(3)]


def _order1_family(name: str, d: int) -> Outcome:
    hess, c, coeffs = _gaussian_kl_series(name, d)
    defect = claimed_defect(name, hess, c)
    lead = claimed_isotropic_coefficient() * sum(x**2 for x in defect)
    rate = get_family(name).general_rate
    return all_of([
        symbolic_zero(coeffs[0], f"{name}, d={d}: beta^0 coefficient"),
        symbolic_zero(coeffs[1], f"{name}, d={d}: beta^1 coefficient"),
        symbolic_zero(coeffs[2] - lead, f"{name}, d={d}: beta^2 coefficient - (1/4)||D||_F^2"),
        Outcome(rate.order == 1 and sp.Rational(rate.coefficient).limit_denominator(1000)
                == claimed_isotropic_coefficient(),
                f"pathkl family {name!r} declares order {rate.order}, coefficient {rate.coefficient}"),
    ])


@cache
def _pathkl_step_kl(name: str, steps: int) -> tuple[float, float, torch.Tensor]:
    """pathkl's exact per-step KL of family ``name`` at tau = 0.3 on a cosine grid with ``steps``
    steps (Gaussian case of ``spot``), with that step's beta_t and the dense ``H = hess log q_t``."""
    case = gaussian_case()
    grid = get_schedule("cosine").grid(steps)
    t = int(0.3 * steps)
    kls, _ = case.reference.step_kls(grid, get_family(name))
    lv = grid.level(t)
    eye = torch.eye(case.cov.shape[0], dtype=torch.float64)
    hess = -torch.linalg.inv(lv.abar * case.cov + lv.one_minus_abar * eye)
    return float(kls[t - 1]), float(grid.beta[t - 1]), hess


def _leading_term_convergence(name: str, defect_sq) -> Outcome:
    """pathkl's exact per-step KL at tau = 0.3 over c beta_t^2 ||D||^2 (D from dense H) -> 1 at
    first order in 1/T: the gap must shrink by a factor in [3, 5] when T grows 4x."""
    gaps = []
    for steps in (1000, 4000):
        kl, beta, hess = _pathkl_step_kl(name, steps)
        lead = float(claimed_isotropic_coefficient()) * beta**2 * float(defect_sq(hess))
        gaps.append(abs(kl / lead - 1))
    shrink = gaps[0] / gaps[1]
    return Outcome(3 <= shrink <= 5 and gaps[1] < 0.05,
                   f"{name}: pathkl step KL / leading term - 1 = {gaps[0]:.2e} (T=1000), "
                   f"{gaps[1]:.2e} (T=4000), ratio {shrink:.2f} (first order wants 4)")


def _offdiag_sq(h):
    return (h**2).sum() - (torch.diagonal(h) ** 2).sum()


@claim(id="lgs.kl-beta-family",
       source=f"{LGS} + docs/theory.md section 6.1; Ho et al. 2020 (Sigma = beta I)",
       statement="KL(N(Sigma*)||N(beta I)) = (beta^2/4)||H + I||_F^2 + O(beta^3)", method="both")
def check_beta_family() -> Outcome:
    eye4 = torch.eye(4, dtype=torch.float64)
    return all_of([_order1_family("beta", 3),
                   _leading_term_convergence("beta", lambda h: ((h + eye4) ** 2).sum())])


@claim(id="lgs.kl-analytic-family",
       source=f"{LGS} + docs/theory.md section 6.1; Bao et al. 2022 (Analytic-DPM)",
       statement="KL(N(Sigma*)||N(sigma^2 I)), sigma^2=(beta/alpha)(1+beta c): (beta^2/4)||H - cI||^2"
                 " + O(beta^3), E of which is minimal at c = E tr H/d", method="both")
def check_analytic_family() -> Outcome:
    hess, c, _ = _gaussian_kl_series("analytic", 2)
    # Two points x with Hessians H and K, equal weights: minimise the expected leading term over c.
    other = hess.subs({s: sp.Symbol(f"K{str(s)[1:]}", real=True) for s in hess.free_symbols})
    expected = sum(sum(x**2 for x in claimed_defect("analytic", m, c)) for m in (hess, other)) / 2
    best = sp.solve(sp.diff(expected, c), c)
    hbar = (hess.trace() + other.trace()) / (2 * 2)
    eye4 = torch.eye(4, dtype=torch.float64)
    return all_of([
        _order1_family("analytic", 3),
        Outcome(len(best) == 1 and sp.simplify(best[0] - hbar) == 0,
                f"argmin_c E||H - cI||^2 = {best} = E tr H / d"),
        _leading_term_convergence(
            "analytic", lambda h: ((h - torch.diagonal(h).mean() * eye4) ** 2).sum()),
    ])


@claim(id="lgs.kl-diag-family",
       source=f"{LGS} + docs/theory.md section 6.1; Ou et al. 2025 (OCM, diagonal target)",
       statement="KL(N(Sigma*)||N(diag Sigma*)) = (beta^2/4)||offdiag H||_F^2 + O(beta^3)",
       method="both")
def check_diag_family() -> Outcome:
    return all_of([_order1_family("diag", 3),
                   _leading_term_convergence("diag", _offdiag_sq)])


#: (dimension, order in eps = sqrt(beta)) of the exact negentropy series: the leading term is
#: eps^6 = beta^3; in 1-D the series goes one order further to show that eps^7 vanishes.
NEGENTROPY_CASES = ((1, 7), (2, 6))


def _multi_indices(dim: int, order: int) -> list[tuple[int, ...]]:
    """Multi-indices alpha with 1 <= |alpha| <= order (Taylor coefficients f_alpha of log q_{t-1})."""
    return [a for k in range(1, order + 1) for a in itertools.product(range(k + 1), repeat=dim)
            if sum(a) == k]


@cache
def negentropy_series(dim: int, order: int):
    """Negentropy of the exact reverse kernel in ``dim`` dimensions as a series in ``eps = sqrt(beta)``.

    ``q(x_{t-1} = y | x_t = x) ∝ exp(f(y) - ||x - sqrt(alpha) y||^2 / (2 beta))``, ``f = log q_{t-1}``.
    With ``y = x/sqrt(alpha) + eps u`` the density of u is ``phi(u) exp(g(u))``,
    ``g = sum_alpha eps^|alpha| f_alpha u^alpha / alpha! + eps^2 ||u||^2 / 2`` (Taylor coefficients
    ``f_alpha`` of f at ``x/sqrt(alpha)``, all of them free symbols; the last term is
    ``(1 - alpha)||u||^2/2``).  Negentropy is affine invariant, so it is computed for u:
    ``J = E[g] - log E_phi[e^g] - E||u||^2/2 + d/2 + log det Cov(u)/2`` under the tilted law, every
    expectation a Gaussian moment of a polynomial, in exact arithmetic over the rationals with every
    product truncated at ``eps^order``.  Returns the multi-indices, their symbols and the
    coefficients of eps^0..eps^order.
    """
    alphas = _multi_indices(dim, order)
    names = ["eps"] + [f"u{i}" for i in range(dim)] + ["f" + "".join(map(str, a)) for a in alphas]
    r, eps, *rest = ring(names, QQ)
    u, f = rest[:dim], dict(zip(alphas, rest[dim:]))

    def trunc(p):
        return r.from_dict({m: c for m, c in p.items() if m[0] <= order}) if p else p

    def series(term_of, a):
        """``sum_k term_of(k) a^k``, k = 0..order (a = O(eps), so the tail is O(eps^(order+1)))."""
        out, power = r.zero, r.one
        for k in range(order + 1):
            out += power * term_of(k)
            power = trunc(power * a)
        return out

    g = eps**2 * sum((ui**2 for ui in u), r.zero) * QQ(1, 2)
    for a in alphas:
        monomial = r.one
        for ui, ai in zip(u, a):
            monomial *= ui**ai
        g += eps ** sum(a) * f[a] * monomial * QQ(1, math.prod(math.factorial(x) for x in a))
    exp_g = series(lambda k: QQ(1, math.factorial(k)), g)

    def gauss(p):
        """``E_phi`` over u: u^beta -> prod (beta_i - 1)!! if every beta_i is even, else 0."""
        out: dict = {}
        for m, c in p.items():
            powers = m[1 : 1 + dim]
            if all(x % 2 == 0 for x in powers):
                key = (m[0],) + (0,) * dim + m[1 + dim :]
                out[key] = out.get(key, QQ(0)) + c * math.prod(int(sp.factorial2(x - 1)) for x in powers)
        return r.from_dict(out) if out else r.zero

    z = gauss(exp_g)
    inv_z = series(lambda k: QQ(1), r.one - z)

    def tilted(h):
        return trunc(gauss(trunc(h * exp_g)) * inv_z)

    def log1p(a):
        return series(lambda k: QQ((-1) ** (k + 1), k) if k else QQ(0), a)

    means = [tilted(ui) for ui in u]
    cov = [[tilted(u[i] * u[j]) - trunc(means[i] * means[j]) for j in range(dim)] for i in range(dim)]
    if dim == 1:
        det = cov[0][0]
    elif dim == 2:
        det = trunc(cov[0][0] * cov[1][1]) - trunc(cov[0][1] * cov[1][0])
    else:
        raise ValueError("negentropy_series supports dim 1 and 2")
    second = sum((tilted(ui**2) for ui in u), r.zero)
    j = tilted(g) - log1p(z - r.one) - second * QQ(1, 2) + QQ(dim, 2) + log1p(det - r.one) * QQ(1, 2)
    symbols = {a: sp.Symbol(name) for a, name in zip(alphas, names[1 + dim :])}
    coeffs = []
    for k in range(order + 1):
        part = r.from_dict({m: c for m, c in j.items() if m[0] == k}) if j else r.zero
        coeffs.append(sp.expand(part.as_expr().subs(sp.Symbol("eps"), 1)) if part else sp.Integer(0))
    return symbols, coeffs


def third_derivative_sq_norm(symbols: dict) -> sp.Expr:
    """``||grad^3 f||_F^2 = sum_{|alpha| = 3} (3!/alpha!) f_alpha^2`` (a symmetric tensor's entries
    repeat once per ordering of the index)."""
    return sum(sp.Integer(6) / math.prod(math.factorial(x) for x in a) * s**2
               for a, s in symbols.items() if sum(a) == 3)


@cache
def _mixture_negentropy(beta: str, x: str):
    """Exact negentropy of q(x_{t-1}|x_t = x) for a 2-component 1-D Gaussian mixture q_{t-1}, by
    40-digit quadrature, and ``f3 = d^3 log q_{t-1}`` at ``x / sqrt(alpha)``."""
    with mpmath.workdps(40):
        return _mixture_negentropy_mp(mpmath.mpf(beta), mpmath.mpf(x))


def _mixture_negentropy_mp(beta, x):
    w, m, v = (mpmath.mpf("0.3"), mpmath.mpf("0.7")), (mpmath.mpf(-1), mpmath.mpf(1)), \
        (mpmath.mpf("0.3"), mpmath.mpf("0.5"))
    alpha = 1 - beta
    # Each component times the Gaussian likelihood of x is Gaussian in y (completing the square).
    prec = [1 / vk + alpha / beta for vk in v]
    post_m = [(mk / vk + mpmath.sqrt(alpha) * x / beta) / pk for mk, vk, pk in zip(m, v, prec)]
    logw = [mpmath.log(wk) - (x - mpmath.sqrt(alpha) * mk) ** 2 / (2 * (vk * alpha + beta))
            - mpmath.log(vk * alpha + beta) / 2 for wk, mk, vk in zip(w, m, v)]
    top = max(logw)
    weights = [mpmath.exp(lw - top) for lw in logw]
    weights = [wk / sum(weights) for wk in weights]

    def density(y):
        return sum(wk * mpmath.npdf(y, mk, mpmath.sqrt(1 / pk)) for wk, mk, pk in zip(weights, post_m, prec))

    mean = sum(wk * mk for wk, mk in zip(weights, post_m))
    var = sum(wk * (1 / pk + mk**2) for wk, mk, pk in zip(weights, post_m, prec)) - mean**2
    sd = mpmath.sqrt(var)
    lo, hi = mean - 14 * sd, mean + 14 * sd
    neg = mpmath.quad(lambda y: density(y) * (mpmath.log(density(y))
                                              - mpmath.log(mpmath.npdf(y, mean, sd))),
                      mpmath.linspace(lo, hi, 9))

    def log_q(y):
        return mpmath.log(sum(wk * mpmath.npdf(y, mk, mpmath.sqrt(vk)) for wk, mk, vk in zip(w, m, v)))

    return neg, mpmath.diff(log_q, x / mpmath.sqrt(alpha), 3)


@claim(id="lgs.kl-full-negentropy",
       source=f"{LGS} + docs/theory.md section 6.2: full covariance matching, O(1/T^2)",
       statement="KL(q(x_{t-1}|x_t) || N(mu*, Sigma*)) = (beta^3/12)||grad^3 log q||_F^2 + O(beta^4) (1-D, 2-D)",
       method="both")
def check_negentropy() -> Outcome:
    outcomes = []
    for dim, order in NEGENTROPY_CASES:
        symbols, coeffs = negentropy_series(dim, order)
        vanish = [k for k in range(order + 1) if k != 6]
        nonzero = [k for k in vanish if coeffs[k] != 0]
        outcomes.append(Outcome(not nonzero, f"{dim}-D exact series in eps = sqrt(beta): eps^k "
                                             f"coefficients for k in {vanish} vanish (nonzero: {nonzero})"))
        outcomes.append(symbolic_zero(
            coeffs[6] - claimed_negentropy_coefficient() * third_derivative_sq_norm(symbols),
            f"{dim}-D: eps^6 = beta^3 coefficient - c ||grad^3 log q||_F^2 (all other f free)"))
    family = get_family("full")
    case = gaussian_case()
    full_kls, _ = case.reference.step_kls(get_schedule("cosine").grid(50), family)
    outcomes.append(Outcome(bool(torch.all(full_kls == 0)), "Gaussian data: pathkl 'full' step KLs "
                                                            "are exactly 0 (every kernel Gaussian)"))
    rate = family.general_rate
    outcomes.append(Outcome(rate.order == 2 and abs(rate.coefficient - 1 / 12) < 1e-15,
                            f"pathkl family 'full' declares order {rate.order}, "
                            f"coefficient {rate.coefficient:.6g}"))
    gaps = []
    with mpmath.workdps(40):
        for beta in ("1e-3", "1e-4"):
            exact, f3 = _mixture_negentropy(beta, "0.2")
            predicted = mpmath.mpf(beta) ** 3 * float(claimed_negentropy_coefficient()) * f3**2
            gaps.append(abs(exact / predicted - 1))
    # J is even in eps (g(u, eps) = g(-u, -eps)), so the relative correction is O(beta): 10x smaller
    # beta must shrink it about 10x (accept 7..13).
    shrink = float(gaps[0] / gaps[1])
    outcomes.append(Outcome(7 <= shrink <= 13 and gaps[1] < 1e-2,
                            f"2-component mixture, 40-digit quadrature: exact/predicted - 1 = "
                            f"{float(gaps[0]):.2e} (beta=1e-3), {float(gaps[1]):.2e} (beta=1e-4)"))
    return all_of(outcomes)


def claimed_sqrt_on_ellipse(lam_min, lam_max, theta):
    """docs/theory.md section 8.2 (derived, behind the LGS error bound): on
    ``lambda = (a+b)/2 + (b-a)/2 cos theta``,
    ``sqrt(lambda) = s |1 + r e^{i theta}|``, ``s = (sqrt a + sqrt b)/2``,
    ``r = (sqrt b - sqrt a)/(sqrt b + sqrt a)`` (so the error decays like ``r^k``)."""
    s = (sp.sqrt(lam_min) + sp.sqrt(lam_max)) / 2
    r = (sp.sqrt(lam_max) - sp.sqrt(lam_min)) / (sp.sqrt(lam_max) + sp.sqrt(lam_min))
    return s * sp.sqrt(1 + r**2 + 2 * r * sp.cos(theta))  # |1 + r e^{i theta}|, r real


@claim(id="lgs.lanczos-sampler",
       source="Akhtar et al. 2026 (LGS), section 4; bound derived in docs/theory.md section 8.2",
       statement="LGS draw ||z|| V_k T_k^{1/2} e_1 of Sigma*_t: error <= 2||z|| E_{k-1}(sqrt) "
                 "(geometric in k), exact at k = d", method="both")
def check_lanczos() -> Outcome:
    a, b, theta = sp.Symbol("A", positive=True), sp.Symbol("B", positive=True), sp.Symbol("theta", real=True)
    lam = (a**2 + b**2) / 2 + (b**2 - a**2) / 2 * sp.cos(theta)
    outcomes = [symbolic_zero(claimed_sqrt_on_ellipse(a**2, b**2, theta) ** 2 - lam,
                              "sqrt(lambda) = s |1 + r e^{i theta}| on the spectrum interval")]
    case = gaussian_case()
    d = case.cov.shape[0]
    beta_tilde = case.prev.one_minus_abar * case.beta / case.level.one_minus_abar
    gamma2 = case.prev.abar * case.beta**2 / case.level.one_minus_abar**2
    x = case.x[:2]

    def matvec(v):
        return beta_tilde * v + gamma2 * case.reference.posterior_cov_matvec(x, v, case.level)

    _, dense = dense_reverse_kernel(case)
    eig, vecs = torch.linalg.eigh(dense)
    z = torch.randn(2, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = z @ (vecs * eig.sqrt()) @ vecs.T
    lo, hi = float(eig.min()), float(eig.max())
    worst = 0.0
    for k in range(1, d + 1):
        error = torch.linalg.vector_norm(lanczos_sampler(k)(matvec, z).sample - exact, dim=1)
        allowed = (sqrt_error_bound(k, lo, hi) if k < d else 1e-10 * hi**0.5) \
            * torch.linalg.vector_norm(z, dim=1)
        worst = max(worst, float((error / allowed).max()))
    outcomes.append(Outcome(worst <= 1.0, f"pathkl lanczos_sampler on Sigma*_t (d={d}) vs dense "
                                          f"eigh square root, k = 1..{d}: max error / bound = "
                                          f"{worst:.3g} (bound at k = d: 1e-10 sqrt(lambda_max))"))
    return all_of(outcomes)
