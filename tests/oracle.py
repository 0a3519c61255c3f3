"""Independent test oracle: per-step path-space KLs of a DDPM on Gaussian-mixture data.

Shares no code with ``pathkl`` (numpy / scipy only) and returns an honest error bound with
every value, so that tests can compare ``pathkl``'s ``value +- error`` against ``value +- error``.

Mathematics (float64 throughout)
--------------------------------
Data ``q_0 = sum_k pi_k N(m_k, S_k)`` in R^d.  With ``abar_0 = 1``,
``alpha_t = abar_t / abar_{t-1}``, ``beta_t = 1 - alpha_t``::

    q_t = sum_k pi_k N(c_k, V_k),   c_k = sqrt(abar_t) m_k,   V_k = abar_t S_k + (1 - abar_t) I.

Posterior weights ``w_k(x) ∝ pi_k N(x; c_k, V_k)``, component scores ``s_k = -V_k^{-1}(x - c_k)``
and ``H(x) = hess log q_t = sum_k w_k (-V_k^{-1} + s_k s_k^T) - sbar sbar^T``.  The exact reverse
kernel ``q(y | x_t = x)`` has the (moment-matched) covariance ``Sigma*(x) = (beta/alpha) A(x)``::

    A(x) = I + beta H(x) = sum_k w_k M_k + beta sum_k w_k (s_k - sbar)(s_k - sbar)^T,
    M_k  = I - beta V_k^{-1} = alpha V_k^{(t-1)} V_k^{-1}        (SPD; no cancellation)

The negentropy ``J(x) = KL(q(.|x) || N(mu*(x), Sigma*(x)))`` is integrated with the entropy chain
rule ``E_x H(q(.|x)) = H(Y|X) = H(q_{t-1}) + (d/2) log(2 pi e beta) - H(q_t)``::

    E J_t = 0.5 E_{q_t} log det A - (d/2) log alpha - [H(q_{t-1}) - H(q_t)].

Adding ``E KL(N(0, Sigma*) || N(0, Sigma_t))`` per family (``D = H(q_{t-1}) - H(q_t)``)::

    full       : K_t = 0.5 E log det A           - (d/2) log alpha - D
    diag       : K_t = 0.5 E sum_i log A_ii      - (d/2) log alpha - D
    analytic   : K_t = (d/2) log(E tr A / d)     - (d/2) log alpha - D
                 (sigma^2 = (beta/alpha) E tr A / d)
    beta       : K_t = 0.5 E tr A / alpha - d/2                    - D
    beta_tilde : K_t = 0.5 c E tr A - d/2 - (d/2) log((1-abar_t)/(1-abar_{t-1})) - D,
                 c = (1-abar_t) / (alpha (1-abar_{t-1}))          (t = 1: +inf)

(the ``log det A`` terms of ``E J`` and of the Gaussian KL cancel for the isotropic/diag families).
Terminal: ``KL(q_T || N(0, I)) = E_{q_T}[log q_T(x) - log N(x; 0, I)]``.

So only outer expectations ``E_{q_t} f`` are needed.  Each is ``sum_k pi_k E_{u ~ N(0, I)}
f(c_k + chol(V_k) u)`` over the box ``|u_i| <= R`` (R = 10; the Gaussian tail, ~1e-23, is added
to the error).  Integrator: our own vectorised adaptive Gauss-Kronrod (G10/K21; per-interval
error |K21 - G10|, a very conservative bound on the K21 error), nested (outer u_1, inner u_2,
inner errors integrated into the outer error) in 2-D.  Second routes (``check``): 1-D, the same
GK in x-space with a different splitting (default on), or scipy ``quad_vec``; 2-D, scipy
``cubature`` (tensor GK21) per component (off by default, ~3 s).  With a check the reported error
is max(both estimates, |difference|).  The error of a K_t is the sum of the absolute errors of
its terms plus a float64 rounding term (this covers the cancellation between ``E log det A``,
``log alpha`` and the entropy difference).

Valid range: designed and verified for T <= 64 steps of a standard schedule (beta_t >~ 1e-3),
d in {1, 2} (d = 3 falls back to scipy cubature, ~5 min per step), mixtures with
condition numbers up to ~100, weights >= 1e-3.
For much smaller beta_t the K_t become tiny differences of O(beta_t) terms; the reported error
still bounds the absolute error, but the relative accuracy degrades.

Also provided: ``nested_step_kl_1d`` -- a direct, literal route in 1-D (inner integral over
x_{t-1} of the exact kernel density ``q_{t-1}(y) N(x; sqrt(alpha) y, beta) / Z(x)`` against its
moment-matched Gaussian, then outer integral), used to validate the chain-rule route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import integrate
from scipy.special import ndtr

__all__ = [
    "FAMILIES",
    "Mixture",
    "nested_step_kl_1d",
    "step_kls",
    "terminal_kl",
    "vp_linear_schedule",
]

FAMILIES = ("beta", "beta_tilde", "analytic", "diag", "full")
_LOG2PI = np.log(2.0 * np.pi)
_R = 10.0  # half-width of the whitened integration box
_TAIL = 2.0 * ndtr(-_R)  # N(0,1) mass outside [-R, R]

# QUADPACK dqk21: Kronrod nodes (x >= 0), Kronrod weights, Gauss-10 weights (odd Kronrod nodes).
_XK = np.array(
    [
        0.995657163025808080735527280689003,
        0.973906528517171720077964012084452,
        0.930157491355708226001207180059508,
        0.865063366688984510732096688423493,
        0.780817726586416897063717578345042,
        0.679409568299024406234327365114874,
        0.562757134668604683339000099272694,
        0.433395394129247190799265943165784,
        0.294392862701460198131126603103866,
        0.148874338981631210884826001129720,
        0.0,
    ]
)
_WK = np.array(
    [
        0.011694638867371874278064396062192,
        0.032558162307964727478818972459390,
        0.054755896574351996031381300244580,
        0.075039674810919952767043140916190,
        0.093125454583697605535065465083366,
        0.109387158802297641899210590325805,
        0.123491976262065851077208931582407,
        0.134709217311473325928054001771707,
        0.142775938577060080797094273138717,
        0.147739104901338491374841515972068,
        0.149445554002916905664936468389821,
    ]
)
_WG = np.array(
    [
        0.066671344308688137593568809893332,
        0.149451349150580593145776339657697,
        0.219086362515982043995534934228163,
        0.269266719309996355091226921569469,
        0.295524224714752870173892994651338,
    ]
)
_NODES = np.concatenate([-_XK[:-1], _XK[::-1]])  # 21 nodes on [-1, 1], ascending
_WKR = np.concatenate([_WK[:-1], _WK[::-1]])
_WGR = np.zeros(21)
_WGR[[1, 3, 5, 7, 9]] = _WG
_WGR[[19, 17, 15, 13, 11]] = _WG


@dataclass
class Mixture:
    """``q_0 = sum_k weights[k] N(means[k], covs[k])``; shapes (K,), (K, d), (K, d, d)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=float).reshape(-1)
        k = self.weights.size
        self.means = np.asarray(self.means, dtype=float).reshape(k, -1)
        d = self.means.shape[1]
        self.covs = np.asarray(self.covs, dtype=float).reshape(k, d, d)
        if np.any(self.weights <= 0):
            raise ValueError("weights must be positive")
        self.weights = self.weights / self.weights.sum()
        for s in self.covs:
            if not np.allclose(s, s.T) or np.any(np.linalg.eigvalsh(s) <= 0):
                raise ValueError("covariances must be SPD")

    @property
    def d(self) -> int:
        return self.means.shape[1]


def vp_linear_schedule(T: int):
    """(abar, one_minus_abar, beta) for the vp-linear schedule on tau_t = t/T (abar_0 = 1)."""
    tau = np.arange(T + 1) / T
    log_abar = -(0.1 * tau + 19.9 * tau**2 / 2)
    dt, st = tau[1:] - tau[:-1], tau[1:] + tau[:-1]
    beta = -np.expm1(-(0.1 * dt + 9.95 * dt * st))
    return np.exp(log_abar), -np.expm1(log_abar), beta


# ----------------------------------------------------------------------------------------------
# Marginals and the pointwise integrands
# ----------------------------------------------------------------------------------------------
def logsumexp(a, axis):
    mx = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(mx, axis) + np.log(np.sum(np.exp(a - mx), axis=axis))


class _Marginal:
    """q_t for given (abar_t, 1 - abar_t): centres, covariances, inverses, Cholesky factors."""

    def __init__(self, mix: Mixture, ab: float, omab: float):
        d = mix.d
        self.d, self.ab, self.omab = d, float(ab), float(omab)
        self.logpi = np.log(mix.weights)
        self.pi = mix.weights
        self.c = np.sqrt(ab) * mix.means
        self.V = ab * mix.covs + omab * np.eye(d)
        self.chol = np.linalg.cholesky(self.V)
        inv = np.linalg.inv(self.V)
        self.Vinv = 0.5 * (inv + np.swapaxes(inv, 1, 2))
        self.logdet = 2.0 * np.log(np.diagonal(self.chol, axis1=1, axis2=2)).sum(1)

    def comp_logpdf(self, x):  # x (n, d) -> (n, K)
        r = x[:, None, :] - self.c[None]
        quad = np.einsum("nki,kij,nkj->nk", r, self.Vinv, r)
        return -0.5 * (self.d * _LOG2PI + self.logdet)[None] - 0.5 * quad

    def logq(self, x):
        return logsumexp(self.logpi[None] + self.comp_logpdf(x), axis=1)


def _logdet_small(A):
    d = A.shape[-1]
    if d == 1:
        return np.log(A[:, 0, 0])
    if d == 2:
        return np.log(A[:, 0, 0] * A[:, 1, 1] - A[:, 0, 1] * A[:, 1, 0])
    sign, ld = np.linalg.slogdet(A)
    return np.where(sign > 0, ld, np.nan)


def _step_integrand(mt: _Marginal, mix: Mixture, beta: float, omab_prev: float):
    """f(x) = [log q_t, log det A, tr A, sum_i log A_ii] (n, 4) for the step t -> t-1."""
    d = mt.d
    alpha = 1.0 - beta
    # M_k = alpha V_k^{(t-1)} V_k^{-1} with alpha V^{(t-1)} = abar_t S + alpha (1 - abar_{t-1}) I
    aVprev = mt.ab * mix.covs + alpha * omab_prev * np.eye(d)
    M = np.einsum("kij,kjl->kil", aVprev, mt.Vinv)
    M = 0.5 * (M + np.swapaxes(M, 1, 2))

    def f(x):
        lp = mt.logpi[None] + mt.comp_logpdf(x)
        lq = logsumexp(lp, axis=1)
        w = np.exp(lp - lq[:, None])  # (n, K)
        s = -np.einsum("kij,nkj->nki", mt.Vinv, x[:, None, :] - mt.c[None])
        sbar = np.einsum("nk,nki->ni", w, s)
        ds = s - sbar[:, None, :]
        A = np.einsum("nk,kij->nij", w, M) + beta * np.einsum("nk,nki,nkj->nij", w, ds, ds)
        diag = np.diagonal(A, axis1=1, axis2=2)
        return np.stack([lq, _logdet_small(A), diag.sum(1), np.log(diag).sum(1)], axis=1)

    return f


# ----------------------------------------------------------------------------------------------
# Integration engines
# ----------------------------------------------------------------------------------------------
def gk_adaptive(
    g, a, b, gid=None, ngroups=1, epsabs=1e-14, epsrel=1e-13, max_intervals=400000, n_control=None
):
    """Vectorised adaptive G10/K21 quadrature of a vector-valued integrand, in groups.

    ``g(x, gid) -> (n, m)`` evaluates at nodes ``x`` (n,) belonging to groups ``gid`` (n,).  The
    initial intervals ``[a_i, b_i]`` belong to group ``gid_i``; returns (est, err, converged) with
    est/err of shape (ngroups, m).  Per interval err = |K21 - G10| (a conservative estimate of
    the K21 error); a group converges when sum_i max_j err_ij / tol_gj <= 1 where
    tol_gj = max(epsabs, epsrel * integral of |g_j|).  The intervals of unconverged groups are
    bisected, largest contributions first, until the rest carries at most half the tolerance.
    Only the first ``n_control`` outputs (default all) steer the refinement.
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    gid = np.zeros(a.size, int) if gid is None else np.asarray(gid, int)

    def evaluate(a, b, gid):
        h = 0.5 * (b - a)
        x = (0.5 * (a + b))[:, None] + h[:, None] * _NODES[None]
        v = g(x.ravel(), np.repeat(gid, 21)).reshape(a.size, 21, -1)
        K = h[:, None] * np.einsum("j,ijm->im", _WKR, v)
        G = h[:, None] * np.einsum("j,ijm->im", _WGR, v)
        KA = np.abs(h)[:, None] * np.einsum("j,ijm->im", _WKR, np.abs(v))
        return K, np.abs(K - G), KA

    K, E, KA = evaluate(a, b, gid)
    converged = False
    for _ in range(200):
        m = K.shape[1]
        absint = np.zeros((ngroups, m))
        np.add.at(absint, gid, KA)
        tol = np.maximum(epsabs, epsrel * absint)
        e = np.max((E / tol[gid])[:, :n_control], axis=1)
        e = np.where(np.isfinite(e), e, np.inf)
        tot = np.bincount(gid, weights=np.where(np.isinf(e), 1e300, e), minlength=ngroups)
        bad = tot > 1.0
        if not bad.any():
            converged = True
            break
        if a.size > max_intervals:
            break
        # within each bad group keep the smallest-error intervals summing to <= 0.5, split the rest
        order = np.lexsort((e, gid))
        es, gs = e[order], gid[order]
        cs = np.cumsum(np.where(np.isinf(es), 1e300, es))
        start = np.searchsorted(gs, np.arange(ngroups))
        base = np.where(start > 0, cs[np.maximum(start - 1, 0)], 0.0)
        within = cs - base[gs]
        split_sorted = bad[gs] & (within > 0.5)
        split = np.zeros(a.size, bool)
        split[order[split_sorted]] = True
        mid = 0.5 * (a[split] + b[split])
        na = np.concatenate([a[split], mid])
        nb = np.concatenate([mid, b[split]])
        ng = np.concatenate([gid[split], gid[split]])
        nK, nE, nKA = evaluate(na, nb, ng)
        keep = ~split
        a, b, gid = (
            np.concatenate([a[keep], na]),
            np.concatenate([b[keep], nb]),
            np.concatenate([gid[keep], ng]),
        )
        K, E, KA = (
            np.concatenate([K[keep], nK]),
            np.concatenate([E[keep], nE]),
            np.concatenate([KA[keep], nKA]),
        )
    est = np.zeros((ngroups, K.shape[1]))
    err = np.zeros_like(est)
    np.add.at(est, gid, K)
    np.add.at(err, gid, E)
    return est, err, converged


def _breaks(points, lo, hi, n_uniform=8):
    pts = np.concatenate([np.linspace(lo, hi, n_uniform + 1), np.asarray(points, float)])
    pts = np.unique(pts[(pts >= lo) & (pts <= hi)])
    return pts[:-1], pts[1:]


def _tail_err(f, marg, m):
    """Crude bound on the Gaussian-tail mass outside the box: TAIL * d * (1 + max |f| on it)."""
    d = marg.d
    u = np.concatenate([np.eye(d), -np.eye(d)]) * _R * 1.5
    x = (marg.c[:, None, :] + np.einsum("kij,nj->kni", marg.chol, u)).reshape(-1, d)
    return _TAIL * d * (1.0 + np.max(np.abs(f(x)), axis=0)) * np.ones(m)


def _expect_1d_whitened(marg: _Marginal, f, epsabs, epsrel):
    """sum_k pi_k int phi(u) f(c_k + sqrt(V_k) u) du over [-R, R], own adaptive GK."""
    K = marg.pi.size
    sd = marg.chol[:, 0, 0]
    c = marg.c[:, 0]
    A, B, G = [], [], []
    for k in range(K):
        a, b = _breaks((c - c[k]) / sd[k], -_R, _R)
        A.append(a)
        B.append(b)
        G.append(np.full(a.size, k))
    A, B, G = map(np.concatenate, (A, B, G))

    def g(u, gid):
        x = (c[gid] + sd[gid] * u)[:, None]
        return (np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi))[:, None] * f(x)

    est, err, ok = gk_adaptive(g, A, B, G, K, epsabs=epsabs, epsrel=epsrel)
    val = marg.pi @ est
    er = marg.pi @ err + _tail_err(f, marg, est.shape[1])
    if not ok:
        er = er + np.abs(val) * 1e-6  # flag: not converged -> inflate
    return val, er


def _expect_1d_xspace(marg: _Marginal, f, epsabs, epsrel):
    """int q(x) f(x) dx in x-space, own adaptive GK with a different splitting (fast 2nd route)."""
    c, sd = marg.c[:, 0], marg.chol[:, 0, 0]
    lo, hi = np.min(c - _R * sd), np.max(c + _R * sd)
    a, b = _breaks(np.concatenate([c, c - 2 * sd, c + 2 * sd]), lo, hi, n_uniform=5)

    def g(x, gid):
        xx = x[:, None]
        return np.exp(marg.logq(xx))[:, None] * f(xx)

    est, err, ok = gk_adaptive(g, a, b, epsabs=epsabs, epsrel=epsrel)
    err = err[0] + _tail_err(f, marg, est.shape[1])
    return est[0], err + (0 if ok else 1e-6 * np.abs(est[0]))


def _expect_1d_quadvec(marg: _Marginal, f, epsabs, epsrel):
    """int q(x) f(x) dx in x-space with scipy.integrate.quad_vec (independent integrator)."""
    c, sd = marg.c[:, 0], marg.chol[:, 0, 0]
    lo, hi = np.min(c - _R * sd), np.max(c + _R * sd)
    pts = np.unique(np.concatenate([c, c - sd, c + sd]))

    def h(x):
        xx = np.array([[x]])
        return np.exp(marg.logq(xx))[0] * f(xx)[0]

    val, err = integrate.quad_vec(
        h, lo, hi, epsabs=epsabs, epsrel=epsrel, norm="max", points=pts, limit=20000
    )
    return val, err + _tail_err(f, marg, np.size(val))


def _expect_nested2(marg: _Marginal, f, epsabs, epsrel):
    """d = 2: sum_k pi_k E_{u~N(0,I)} f(c_k + L_k u), nested own adaptive GK (outer u1, inner u2
    for all outer nodes at once).  Error = outer |K - G| + outer integral of the inner errors."""
    vals, errs = 0.0, 0.0
    a_in, b_in = _breaks([], -_R, _R, n_uniform=8)
    for k in range(marg.pi.size):
        ck, Lk = marg.c[k], marg.chol[k]
        # other centres in this component's whitened coordinates, as outer breakpoints
        uc = np.linalg.solve(Lk, (marg.c - ck).T).T
        a_out, b_out = _breaks(uc[:, 0], -_R, _R, n_uniform=8)
        m = f(ck[None]).shape[1]

        def outer(u1, _gid, ck=ck, Lk=Lk):
            n = u1.size
            A = np.tile(a_in, n)
            B = np.tile(b_in, n)
            G = np.repeat(np.arange(n), a_in.size)

            def inner(u2, gid):
                u = np.stack([u1[gid], u2], axis=1)
                w = np.exp(-0.5 * np.sum(u * u, axis=1)) / (2 * np.pi)
                return w[:, None] * f(ck[None] + u @ Lk.T)

            est, err, ok = gk_adaptive(inner, A, B, G, n, epsabs=epsabs * 1e-2, epsrel=epsrel)
            if not ok:
                err = err + 1e-6 * np.abs(est)
            return np.concatenate([est, err], axis=1)

        est, err, ok = gk_adaptive(outer, a_out, b_out, epsabs=epsabs, epsrel=epsrel, n_control=m)
        v = est[0, :m]
        e = err[0, :m] + est[0, m:] + (0 if ok else 1e-6 * np.abs(v))
        vals = vals + marg.pi[k] * v
        errs = errs + marg.pi[k] * e
    return vals, errs + _tail_err(f, marg, np.size(vals))


def _expect_cubature(marg: _Marginal, f, atol, rtol, rule):
    """sum_k pi_k E_{u~N(0,I)} f(c_k + L_k u) over the box [-R, R]^d, scipy cubature."""
    d = marg.d
    vals, errs = 0.0, 0.0
    for k in range(marg.pi.size):
        ck, Lk = marg.c[k], marg.chol[k]

        def g(u, ck=ck, Lk=Lk):
            x = ck[None] + u @ Lk.T
            w = np.exp(-0.5 * np.sum(u * u, axis=1) - 0.5 * d * _LOG2PI)
            return w[:, None] * f(x)

        res = integrate.cubature(
            g,
            -_R * np.ones(d),
            _R * np.ones(d),
            rule=rule,
            atol=atol,
            rtol=rtol,
            max_subdivisions=200000,
        )
        err = res.error + (0 if res.status == "converged" else 1e-6 * np.abs(res.estimate))
        vals = vals + marg.pi[k] * res.estimate
        errs = errs + marg.pi[k] * err
    return vals, errs + _tail_err(f, marg, np.size(vals))


def expectation(marg: _Marginal, f, check=None):
    """(E_{q_t} f, error) for a vector-valued f: (n, d) -> (n, m).

    d = 1: own GK in whitened per-component coordinates.  ``check`` (default True in 1-D) adds
    a second route: own GK in x-space with a different splitting (~ms), or with
    ``check="quad_vec"`` scipy's quad_vec in x-space (~0.4 s).
    d = 2: nested own GK in whitened coordinates.  ``check`` (default False in 2-D; ~3 s) adds
    scipy cubature (tensor Gauss-Kronrod 21) in the same coordinates.
    d = 3: scipy cubature (Genz-Malik), tolerance 1e-9; ~5 min per step, lightly tested.
    With a check, the error is max(both estimates, |difference|).
    """
    d = marg.d
    if check is None:
        check = d == 1
    if d == 1:
        v1, e1 = _expect_1d_whitened(marg, f, 1e-15, 1e-14)
        if check == "quad_vec":
            v2, e2 = _expect_1d_quadvec(marg, f, 1e-14, 1e-13)
        elif check:
            v2, e2 = _expect_1d_xspace(marg, f, 1e-15, 1e-14)
    elif d == 2:
        v1, e1 = _expect_nested2(marg, f, 1e-13, 1e-12)
        if check:
            v2, e2 = _expect_cubature(marg, f, 1e-12, 1e-12, "gk21")
    else:
        v1, e1 = _expect_cubature(marg, f, 1e-9, 1e-9, "genz-malik")
        check = False
    if not check:
        return v1, e1
    return v1, np.maximum(np.maximum(e1, e2), np.abs(v1 - v2))


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def _schedule(abar, one_minus_abar, beta):
    abar = np.asarray(abar, float)
    omab = -np.expm1(np.log(abar)) if one_minus_abar is None else np.asarray(one_minus_abar, float)
    if abar[0] != 1.0 or omab[0] != 0.0:
        raise ValueError("abar[0] must be 1 (and one_minus_abar[0] = 0)")
    if beta is None:
        beta = -np.expm1(np.log(abar[1:]) - np.log(abar[:-1]))
    beta = np.asarray(beta, float)
    if beta.size != abar.size - 1:
        raise ValueError("beta must have length T = len(abar) - 1")
    return abar, omab, beta


def step_kls(
    mix: Mixture, abar, one_minus_abar=None, beta=None, family="full", steps=None, check=None
):
    """Per-step expected KLs K_t = E_{q_t} KL(q(.|x_t) || N(mu*(x_t), Sigma_t(x_t))).

    ``abar`` has length T+1 with abar[0] = 1; ``one_minus_abar`` (same length) and ``beta``
    (length T, beta[t-1] = beta_t) are optional high-precision companions.  ``steps`` are 1-based
    (default 1..T).  Returns (values, errors) as float arrays aligned with ``steps``; errors are
    the summed absolute error bounds of all terms.  ``family`` in FAMILIES; beta_tilde at t = 1
    is +inf (error 0).  ``check``: second integration route, see ``expectation``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    abar, omab, beta = _schedule(abar, one_minus_abar, beta)
    T = beta.size
    steps = list(range(1, T + 1)) if steps is None else [int(s) for s in steps]
    d = mix.d
    ent: dict[int, tuple[float, float]] = {}
    quant: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    for t in steps:
        if not 1 <= t <= T:
            raise ValueError(f"step {t} outside 1..{T}")
        mt = _Marginal(mix, abar[t], omab[t])
        v, e = expectation(mt, _step_integrand(mt, mix, beta[t - 1], omab[t - 1]), check)
        quant[t] = (v, e)
        ent[t] = (-v[0], e[0])
    for t in steps:
        if t - 1 not in ent:
            mp_ = _Marginal(mix, abar[t - 1], omab[t - 1])
            v, e = expectation(mp_, lambda x, m=mp_: m.logq(x)[:, None], check)
            ent[t - 1] = (-v[0], e[0])

    values, errors = [], []
    for t in steps:
        (v, e), b = quant[t], beta[t - 1]
        alpha = 1.0 - b
        log_alpha = np.log1p(-b)
        D = ent[t - 1][0] - ent[t][0]
        eD = ent[t - 1][1] + ent[t][1]
        if family == "full":
            val, err = 0.5 * v[1] - 0.5 * d * log_alpha - D, 0.5 * e[1] + eD
        elif family == "diag":
            val, err = 0.5 * v[3] - 0.5 * d * log_alpha - D, 0.5 * e[3] + eD
        elif family == "analytic":
            val = 0.5 * d * np.log(v[2] / d) - 0.5 * d * log_alpha - D
            err = 0.5 * d * e[2] / v[2] + eD
        elif family == "beta":
            val, err = 0.5 * (v[2] - d * alpha) / alpha - D, 0.5 * e[2] / alpha + eD
        else:  # beta_tilde
            if omab[t - 1] == 0.0:
                val, err = np.inf, 0.0
            else:
                c = omab[t] / (alpha * omab[t - 1])
                val = 0.5 * c * v[2] - 0.5 * d - 0.5 * d * np.log(omab[t] / omab[t - 1]) - D
                err = 0.5 * c * e[2] + eD
        if np.isfinite(val):  # float64 rounding of the combination of O(1) terms
            err += (
                8
                * np.finfo(float).eps
                * (
                    1.0
                    + np.abs(v).sum()
                    + 0.5 * d * abs(log_alpha)
                    + abs(ent[t][0])
                    + abs(ent[t - 1][0])
                )
            )
        values.append(val)
        errors.append(err)
    return np.array(values, float), np.array(errors, float)


def terminal_kl(mix: Mixture, abar_T, one_minus_abar_T=None, check=None):
    """(KL(q_T || N(0, I)), error) = E_{q_T}[log q_T(x) - log N(x; 0, I)]."""
    omab = -np.expm1(np.log(abar_T)) if one_minus_abar_T is None else one_minus_abar_T
    m = _Marginal(mix, abar_T, omab)

    def f(x):
        return (m.logq(x) + 0.5 * m.d * _LOG2PI + 0.5 * np.sum(x * x, axis=1))[:, None]

    v, e = expectation(m, f, check)
    return float(v[0]), float(e[0]) + 8 * np.finfo(float).eps * (1.0 + abs(float(v[0])))


# ----------------------------------------------------------------------------------------------
# Direct nested route (1-D), for validating the chain rule
# ----------------------------------------------------------------------------------------------
def nested_step_kl_1d(mix: Mixture, abar, one_minus_abar=None, beta=None, t=1, family="full"):
    """K_t in 1-D by the literal definition, no entropy chain rule.

    For each x: p(y) = q_{t-1}(y) N(x; sqrt(alpha) y, beta) / Z(x), all moments and
    J(x) = E_p log p + 0.5 log(2 pi e var_p) by inner adaptive quadrature over y; then
    K_t = E_{q_t}[J(x) + KL(N(0, var_p(x)) || N(0, sigma_t^2(x)))] by outer quadrature over x in
    x-space (weights q_t(x) = Z(x) from the inner integral itself).  Returns (value, error).
    """
    if mix.d != 1:
        raise ValueError("1-D only")
    abar, omab, beta_arr = _schedule(abar, one_minus_abar, beta)
    if family == "beta_tilde" and omab[t - 1] == 0:
        return np.inf, 0.0
    b = beta_arr[t - 1]
    alpha = 1.0 - b
    mprev = _Marginal(mix, abar[t - 1], omab[t - 1])
    mt = _Marginal(mix, abar[t], omab[t])
    cp, vp = mprev.c[:, 0], mprev.V[:, 0, 0]
    sa = np.sqrt(alpha)

    def inner(xs):
        """(log Z, mean, var, J, error bound of J and of var / var) at each x in xs (n,)."""
        n = xs.size
        # per-component posterior centres / widths, only to place breakpoints
        tau2 = 1.0 / (1.0 / vp[None] + alpha / b)
        mu = tau2 * (cp[None] / vp[None] + sa * xs[:, None] / b)
        tau = np.sqrt(tau2)
        lo = np.min(mu - 12 * tau, axis=1)
        hi = np.max(mu + 12 * tau, axis=1)

        def logk(y, gid):  # log q_{t-1}(y) + log N(x; sqrt(alpha) y, beta)
            return (
                mprev.logq(y[:, None])
                - 0.5 * (xs[gid] - sa * y) ** 2 / b
                - 0.5 * np.log(2 * np.pi * b)
            )

        shift = np.max(
            np.stack([logk(mu[:, k], np.arange(n)) for k in range(mu.shape[1])], 1), axis=1
        )
        A, B, G = [], [], []
        for i in range(n):
            a_, b_ = _breaks(mu[i], lo[i], hi[i], n_uniform=4)
            A.append(a_)
            B.append(b_)
            G.append(np.full(a_.size, i))
        A, B, G = map(np.concatenate, (A, B, G))

        def g1(y, gid):
            e = np.exp(logk(y, gid) - shift[gid])
            return np.stack([e, (y - mu[gid, 0]) * e], 1)

        r1, e1, _ = gk_adaptive(g1, A, B, G, n, epsabs=1e-300, epsrel=1e-13)
        Z = r1[:, 0]
        mean = mu[:, 0] + r1[:, 1] / Z

        def g2(y, gid):
            lk = logk(y, gid) - shift[gid]
            e = np.exp(lk)
            return np.stack([(y - mean[gid]) ** 2 * e, lk * e], 1)

        r2, e2, _ = gk_adaptive(g2, A, B, G, n, epsabs=1e-300, epsrel=1e-13)
        var = r2[:, 0] / Z
        Elogp = r2[:, 1] / Z - np.log(Z)
        J = Elogp + 0.5 * np.log(2 * np.pi * np.e * var)
        eZ = e1[:, 0] / Z
        evar = e2[:, 0] / r2[:, 0] + eZ
        eJ = (
            e2[:, 1] / Z
            + (np.abs(r2[:, 1]) / Z + 1.0) * eZ
            + 0.5 * evar
            + 8 * np.finfo(float).eps * (np.abs(Elogp) + 1.0)
        )
        return np.log(Z) + shift, mean, var, J, eJ, evar

    bt = np.inf if omab[t - 1] == 0 else omab[t - 1] * b / omab[t]  # beta_tilde variance
    c, sd = mt.c[:, 0], mt.chol[:, 0, 0]
    lo, hi = np.min(c - _R * sd), np.max(c + _R * sd)
    a0, b0 = _breaks(c, lo, hi, n_uniform=16)

    def g(x, gid):
        logZ, _, var, J, eJ, evar = inner(x)
        q = np.exp(logZ)
        gk = 0.0 * J
        if family == "beta":
            gk = 0.5 * (var / b - 1 - np.log(var / b))
        elif family == "beta_tilde":
            gk = 0.5 * (var / bt - 1 - np.log(var / bt))
        return np.stack([q * J, q * gk, q * var, q * np.log(var), q * eJ, q * evar], 1)

    est, err, ok = gk_adaptive(g, a0, b0, epsabs=1e-13, epsrel=1e-12, n_control=4)
    est, err = est[0], err[0]
    err[0] += est[4]  # inner errors, integrated
    err[1:4] += est[5] * np.array([1.0, est[2], 1.0])
    if not ok:
        err += 1e-6 * np.abs(est)
    if family in ("full", "diag"):
        return est[0], err[0]
    if family in ("beta", "beta_tilde"):
        return est[0] + est[1], err[0] + err[1]
    # analytic: sigma^2 = E var ; E KL(N(0,var)||N(0,sigma^2)) = 0.5[log E var - E log var]
    val = est[0] + 0.5 * (np.log(est[2]) - est[3])
    return val, err[0] + 0.5 * (err[2] / est[2] + err[3])
