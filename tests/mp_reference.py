"""Independent high-precision (mpmath, 40 digits) implementations used only by the tests.

They follow the formulas of docs/theory.md sections 2.2, 3.3 and 4.4 literally (naive subtractions
are harmless at 40 digits), sharing no code with pathkl except the float64 grid nodes they are given.
"""

from __future__ import annotations

import itertools

import mpmath as mp

mp.mp.dps = 40


def log_abar(schedule: str, tau):
    tau = mp.mpf(tau)
    if schedule in ("vp-linear", "ddpm-linear-continuum"):
        return -(mp.mpf("0.1") * tau + (mp.mpf(20) - mp.mpf("0.1")) * tau**2 / 2)
    if schedule == "cosine":
        s = mp.mpf(0.008)
        f = lambda u: mp.cos((u + s) / (1 + s) * mp.pi / 2) ** 2
        return mp.log(f(tau) / f(0))
    raise ValueError(schedule)


def alphas(schedule: str, taus=None, chain_length: int | None = None):
    """Per-step alpha_t (list of mpf), t = 1..T."""
    if schedule == "ddpm-linear":
        n = chain_length
        lo, hi = mp.mpf(1e-4), mp.mpf(0.02)
        return [1 - (lo + (hi - lo) * k / (n - 1)) * 1000 / n for k in range(n)]
    out = []
    for a, b in itertools.pairwise(taus):
        ratio = mp.exp(log_abar(schedule, b) - log_abar(schedule, a))
        out.append(max(ratio, 1 - mp.mpf(0.999)) if schedule == "cosine" else ratio)
    return out


def abars(alpha):
    out, acc = [mp.mpf(1)], mp.mpf(1)
    for a in alpha:
        acc *= a
        out.append(acc)
    return out


def family_variances(family: str, sigma_star: list, beta, alpha, abar_prev, abar):
    """Sigma_t eigenvalue(s) of an isotropic family, or None for full/diag."""
    if family == "beta":
        return beta
    if family == "beta_tilde":
        return (1 - abar_prev) * beta / (1 - abar)
    if family == "analytic":
        return mp.fsum(sigma_star) / len(sigma_star)
    return None


def orthonormal(basis):
    """The float64 columns of ``basis`` made orthonormal at working precision (Gram-Schmidt). pathkl
    takes its basis as exactly orthonormal; with the float64 columns as they are (orthonormal to
    ~1e-16), diag(Sigma*) would be off by that much relative, and the diag KL, a small difference of
    log-determinants, by ~1e-16 / KL relative (1e-10 at T = 1000)."""
    d = len(basis)
    columns = []
    for j in range(d):
        v = [mp.mpf(basis[i][j]) for i in range(d)]
        for q in columns:
            p = mp.fsum(a * b for a, b in zip(v, q))
            v = [a - p * b for a, b in zip(v, q)]
        norm = mp.sqrt(mp.fsum(a * a for a in v))
        columns.append([a / norm for a in v])
    return [[columns[j][i] for j in range(d)] for i in range(d)]


def step_kls(eigenvalues, family: str, alpha, basis=None, steps=None):
    """Per-step KLs for N(m, U diag(lambda) U^T), directly from Sigma* = (beta/alpha)(I + beta H)."""
    lam = [mp.mpf(x) for x in eigenvalues]
    abar = abars(alpha)
    u = None if basis is None else orthonormal(basis)
    out = {}
    for t in steps or range(1, len(alpha) + 1):
        a, ab, abp = alpha[t - 1], abar[t], abar[t - 1]
        beta = 1 - a
        nu = [ab * x + 1 - ab for x in lam]
        sigma_star = [(beta / a) * (1 - beta / n) for n in nu]
        if family == "full":
            out[t] = mp.mpf(0)
            continue
        if family == "diag":
            if basis is None:
                out[t] = mp.mpf(0)
                continue
            d = len(lam)
            diag = [mp.fsum(u[j][i] ** 2 * sigma_star[i] for i in range(d)) for j in range(d)]
            out[t] = (mp.fsum(mp.log(x) for x in diag) - mp.fsum(mp.log(x) for x in sigma_star)) / 2
            continue
        var = family_variances(family, sigma_star, beta, a, abp, ab)
        if var == 0:
            out[t] = mp.inf
            continue
        out[t] = mp.fsum(r - 1 - mp.log(r) for r in (s / var for s in sigma_star)) / 2
    return out


def terminal_kl(eigenvalues, mean, abar_T):
    nu = [abar_T * mp.mpf(x) + 1 - abar_T for x in eigenvalues]
    return (mp.fsum(n - 1 - mp.log(n) for n in nu) + abar_T * mp.fsum(mp.mpf(m) ** 2 for m in mean)) / 2
