"""Self-tests of the independent mixture oracle (tests/oracle.py); no pathkl imports."""

from __future__ import annotations

import numpy as np
import pytest

from . import oracle as o

TRUTH_T4_FULL = (
    0.5403859580468613  # 1-D, weights [.5,.5], means [-2,2], stds [.1,.3], vp-linear T=4
)


def _rot(theta, eigs):
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag(eigs) @ R.T


def _gauss_kl(S0, S1):
    """KL(N(0, S0) || N(0, S1))."""
    d = S0.shape[0]
    M = np.linalg.solve(S1, S0)
    return 0.5 * (np.trace(M) - d - np.linalg.slogdet(M)[1])


def _closed_form_single_gaussian(m, S, abar, omab, beta, family):
    """K_t for q_0 = N(m, S): Sigma* = (V_{t-1}^{-1} + (alpha/beta) I)^{-1} is constant, J = 0."""
    d = S.shape[0]
    out = []
    for t in range(1, beta.size + 1):
        b = beta[t - 1]
        Vp = abar[t - 1] * S + omab[t - 1] * np.eye(d)
        Ss = np.linalg.inv(np.linalg.inv(Vp) + (1 - b) / b * np.eye(d))
        if family == "beta":
            St = b * np.eye(d)
        elif family == "beta_tilde":
            if omab[t - 1] == 0:
                out.append(np.inf)
                continue
            St = omab[t - 1] * b / omab[t] * np.eye(d)
        elif family == "analytic":
            St = np.trace(Ss) / d * np.eye(d)
        elif family == "diag":
            St = np.diag(np.diag(Ss))
        else:
            St = Ss
        out.append(_gauss_kl(Ss, St))
    return np.array(out)


def test_gauss_kronrod_constants():
    x, w = np.polynomial.legendre.leggauss(10)
    assert np.allclose(o._NODES[1::2], np.sort(x), atol=1e-15)
    assert np.allclose(o._WGR[1::2], w[np.argsort(x)], atol=1e-15)
    for p in range(32):  # K21 exact to degree 31, G10 to degree 19
        exact = (1 - (-1) ** (p + 1)) / (p + 1)
        assert abs(o._WKR @ o._NODES**p - exact) < 1e-14
        if p < 20:
            assert abs(o._WGR @ o._NODES**p - exact) < 1e-14


@pytest.mark.parametrize("d", [1, 2])
def test_single_gaussian_closed_form(d):
    if d == 1:
        m, S = np.array([0.7]), np.array([[0.04]])
    else:
        m, S = np.array([0.7, -1.0]), _rot(0.4, [1.0, 0.01])  # condition number 100
    mix = o.Mixture([1.0], m[None], S[None])
    abar, omab, beta = o.vp_linear_schedule(8)
    for fam in o.FAMILIES:
        steps = None if d == 1 else [1, 2, 8]
        v, e = o.step_kls(mix, abar, omab, beta, fam, steps=steps)
        ref = _closed_form_single_gaussian(m, S, abar, omab, beta, fam)
        ref = ref if steps is None else ref[np.array(steps) - 1]
        fin = np.isfinite(ref)
        assert np.array_equal(fin, np.isfinite(v)), fam
        assert np.all(np.abs(v[fin] - ref[fin]) <= e[fin]), (fam, v - ref, e)
        assert np.all(e[fin] < (1e-12 if d == 1 else 1e-10)), (fam, e)
    kl, err = o.terminal_kl(mix, abar[-1], omab[-1])
    V = abar[-1] * S + omab[-1] * np.eye(d)
    c = np.sqrt(abar[-1]) * m
    ref = 0.5 * (np.trace(V) + c @ c - d - np.linalg.slogdet(V)[1])
    assert abs(kl - ref) <= err < 1e-12


def test_1d_t4_known_truth():
    mix = o.Mixture([0.5, 0.5], [[-2.0], [2.0]], [[[0.01]], [[0.09]]])
    abar, omab, beta = o.vp_linear_schedule(4)
    v, e = o.step_kls(mix, abar, omab, beta, "full")
    assert abs(v.sum() - TRUTH_T4_FULL) <= max(e.sum(), 1e-15)
    assert abs(v.sum() - TRUTH_T4_FULL) < 1e-9 and e.sum() < 1e-10
    # diag == full in 1-D; J >= 0 makes every family >= full
    vd, _ = o.step_kls(mix, abar, omab, beta, "diag")
    assert np.allclose(vd, v, rtol=0, atol=1e-13)
    for fam in ("beta", "analytic"):
        assert np.all(o.step_kls(mix, abar, omab, beta, fam)[0] >= v - 1e-13)
    # the scipy quad_vec cross-check agrees on one step
    vq, eq = o.step_kls(mix, abar, omab, beta, "full", steps=[2], check="quad_vec")
    assert abs(vq[0] - v[1]) <= eq[0] + e[1]


@pytest.mark.parametrize(
    "T,families", [(2, ("full", "beta", "beta_tilde", "analytic")), (8, ("full", "analytic"))]
)
def test_chain_rule_vs_nested_1d(T, families):
    rng = np.random.default_rng(1)
    mix = o.Mixture(
        rng.dirichlet(np.ones(3)),
        rng.normal(0, 2, (3, 1)),
        (rng.uniform(0.05, 1, 3) ** 2)[:, None, None],
    )
    abar, omab, beta = o.vp_linear_schedule(T)
    steps = list(range(1, T + 1)) if T <= 2 else [1, 2, 5, 8]
    for fam in families:
        v, e = o.step_kls(mix, abar, omab, beta, fam, steps=steps)
        for i, t in enumerate(steps):
            nv, ne = o.nested_step_kl_1d(mix, abar, omab, beta, t, fam)
            if not np.isfinite(v[i]):
                assert fam == "beta_tilde" and t == 1 and nv == np.inf
                continue
            assert abs(v[i] - nv) <= e[i] + ne, (fam, t, v[i] - nv, e[i], ne)
            assert abs(v[i] - nv) < 1e-11 and e[i] < 1e-10


def test_2d_product_with_independent_gaussian():
    w, mu, sd = [0.5, 0.5], [-2.0, 2.0], [0.1, 0.3]
    mix1 = o.Mixture(w, np.array(mu)[:, None], (np.array(sd) ** 2)[:, None, None])
    mix2 = o.Mixture(w, np.array([[m, 0.0] for m in mu]), [np.diag([s * s, 1.0]) for s in sd])
    abar, omab, beta = o.vp_linear_schedule(4)
    for fam in ("full", "diag", "beta"):  # all three factorise; the N(0,1) factor adds 0
        v1, e1 = o.step_kls(mix1, abar, omab, beta, fam)
        v2, e2 = o.step_kls(mix2, abar, omab, beta, fam)
        assert np.all(np.abs(v2 - v1) <= e1 + e2), (fam, v2 - v1, e1 + e2)
        assert np.all(e2 < 1e-8)
    assert abs(v2.sum() - o.step_kls(mix1, abar, omab, beta, "beta")[0].sum()) < 1e-10


def test_2d_nested_vs_cubature_and_rotation():
    mix = o.Mixture(
        [0.6, 0.399, 0.001],
        [[-1.5, 0.5], [1.5, 0.0], [0.0, 2.0]],
        [_rot(0.3, [1.0, 0.01]), _rot(-1.0, [0.04, 0.25]), 0.09 * np.eye(2)],
    )
    abar, omab, beta = o.vp_linear_schedule(16)
    t = 3
    mt = o._Marginal(mix, abar[t], omab[t])
    f = o._step_integrand(mt, mix, beta[t - 1], omab[t - 1])
    v1, e1 = o._expect_nested2(mt, f, 1e-13, 1e-12)
    v2, e2 = o._expect_cubature(mt, f, 1e-12, 1e-12, "gk21")
    assert np.all(np.abs(v1 - v2) <= e1 + e2) and np.all(e1 < 1e-10)
    # rotation invariance of the isotropic / full families
    R = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    mixr = o.Mixture(mix.weights, mix.means @ R.T, R[None] @ mix.covs @ R.T[None])
    for fam in ("full", "analytic"):
        a, ea = o.step_kls(mix, abar, omab, beta, fam, steps=[t])
        b, eb = o.step_kls(mixr, abar, omab, beta, fam, steps=[t])
        assert abs(a[0] - b[0]) <= ea[0] + eb[0] and ea[0] < 1e-8
