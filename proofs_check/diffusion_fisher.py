"""Claims of Wang et al., "Diffusion Fisher: outer-product structure" (ICML 2025, arXiv 2505.23264).

For empirical data ``{y_i}`` with weights ``1/N`` and ``x_t = alpha_t y + sigma_t eps``:
``F_t(x) = -hess log q_t(x) = I/sigma^2 - (alpha^2/sigma^4)[sum_i w_i y_i y_i^T - ybar ybar^T]``,
``w = softmax(-||x - alpha y_i||^2 / (2 sigma^2))``, ``ybar = sum_i w_i y_i`` (their Proposition 1;
docs/theory.md section 5.4).
"""

from __future__ import annotations

import math

import sympy as sp
import torch

from pathkl.fisher import fisher_matvec, hutchinson_trace
from pathkl.references import EmpiricalReference
from pathkl.schedules import NoiseLevel

from .atomic import atomic_prior, is_zero
from .evidence import all_of, close, symbolic_zero
from .registry import Outcome, claim
from .tweedie import SYMBOLIC_CASES

DF = "Wang et al. 2025 (diffusion Fisher)"


def claimed_fisher(weights, points, alpha, var, eye):
    """``F = I/sigma^2 - (alpha^2/sigma^4)(sum_i w_i y_i y_i^T - ybar ybar^T)`` (dense)."""
    if isinstance(eye, sp.MatrixBase):
        ybar = sum((w * y for w, y in zip(weights, points)), sp.zeros(eye.shape[0], 1))
        second = sum((w * y * y.T for w, y in zip(weights, points)), sp.zeros(*eye.shape))
        return eye / var - alpha**2 / var**2 * (second - ybar * ybar.T)
    ybar = weights @ points
    second = torch.einsum("...n,ni,nj->...ij", weights, points, points)
    return eye / var - alpha**2 / var**2 * (second - ybar[..., :, None] * ybar[..., None, :])


def claimed_trace(weights, points, alpha, var):
    """``tr F = d/sigma^2 - (alpha^2/sigma^4)(sum_i w_i ||y_i||^2 - ||ybar||^2)``: O(N d)."""
    ybar = weights @ points
    return points.shape[1] / var - alpha**2 / var**2 * (weights @ (points**2).sum(-1) - (ybar**2).sum(-1))


def claimed_matvec(weights, points, alpha, var, v):
    """``F v = v/sigma^2 - (alpha^2/sigma^4)(sum_i w_i y_i (y_i.v) - ybar (ybar.v))``: O(N d)."""
    ybar = weights @ points
    return v / var - alpha**2 / var**2 * ((weights * (points @ v)) @ points - ybar * (ybar @ v))


def _empirical_case(n: int = 6, d: int = 3, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=gen, dtype=torch.float64)
    alpha, var = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.36, dtype=torch.float64)
    x = alpha * points[1] + 0.4 * torch.randn(d, generator=gen, dtype=torch.float64)

    def log_q(z):
        return torch.logsumexp(-((z - alpha * points) ** 2).sum(-1) / (2 * var), 0)

    weights = torch.softmax(-((x - alpha * points) ** 2).sum(-1) / (2 * var), 0)
    return points, alpha, var, x, log_q, weights


@claim(id="df.outer-product", source=f"{DF}, outer-product form of the diffusion Fisher",
       statement="-hess log q_t(x) = I/sigma^2 - (alpha^2/sigma^4)[sum w_i y_i y_i^T - ybar ybar^T] "
                 "for empirical data", method="both")
def check_outer_product() -> Outcome:
    outcomes = []
    for dim, atoms in SYMBOLIC_CASES:
        p = atomic_prior(dim, atoms)
        weights = [e / p.density for e in p.e]
        points = [sp.Matrix(a) for a in p.atoms]
        residual = claimed_fisher(weights, points, p.a, p.var, sp.eye(dim)) + p.hessian
        outcomes.append(Outcome(all(is_zero(r) for r in residual),
                                f"symbolic {atoms} points in {dim}-D: F + hess log q == 0"))
    points, alpha, var, x, log_q, weights = _empirical_case()
    auto = -torch.func.hessian(log_q)(x)
    formula = claimed_fisher(weights, points, alpha, var, torch.eye(points.shape[1], dtype=torch.float64))
    # Two float64 routes through a 3x3 matrix of entries <= ~10: 1e-12 relative is generous.
    outcomes.append(close(formula, auto, rtol=1e-12, atol=1e-12 * float(auto.abs().max()),
                          what="formula vs torch autodiff Hessian (6 points, 3-D)"))
    return all_of(outcomes)


@claim(id="df.trace-matvec", source=f"{DF}, trace and matrix-vector algorithms",
       statement="tr F and F v from the outer-product form in O(N d), equal to the dense ones",
       method="numeric")
def check_trace_matvec() -> Outcome:
    points, alpha, var, x, log_q, weights = _empirical_case(n=40, d=5, seed=3)
    dense = -torch.func.hessian(log_q)(x)
    v = torch.linspace(-1.0, 1.0, points.shape[1], dtype=torch.float64)
    scale = float(dense.abs().max())
    return all_of([
        close(claimed_trace(weights, points, alpha, var), dense.trace(), rtol=1e-12,
              what="O(Nd) trace vs autodiff Hessian trace"),
        close(claimed_matvec(weights, points, alpha, var, v), dense @ v, rtol=1e-12,
              atol=1e-12 * scale, what="O(Nd) matvec vs autodiff Hessian @ v"),
    ])


# ---- the approximate algorithms' error bounds (docs/fisher.md, derived here) -------------------
# F = I/sigma^2 - (alpha^2/sigma^4) C with C = S - ybar ybar^T, S = sum_i w_i y_i y_i^T: every
# approximation of F is one of C's two parts, so its error is (alpha^2/sigma^4) times theirs.


def claimed_plugin_bound(alpha, var, eps_second, eps_mean, mean_norm):
    """Plug-in moments: with ``yhat`` for ``ybar`` (``|yhat - ybar| <= eps_mean``) and the second
    moment's trace ``sum_i w_i |y_i|^2`` (resp. its product ``S v``) to ``eps_second`` (resp.
    ``eps_second |v|``), ``|tr Fhat - tr F|`` (resp. ``|Fhat v - F v| / |v|``) is at most
    ``(alpha^2/sigma^4)(eps_second + 2 |ybar| eps_mean + eps_mean^2)``: ``yhat yhat^T - ybar ybar^T
    = e ybar^T + ybar e^T + e e^T`` has operator norm ``<= 2 |ybar| |e| + |e|^2``."""
    return alpha**2 / var**2 * (eps_second + 2 * mean_norm * eps_mean + eps_mean**2)


def claimed_topk_bound(alpha, var, tail, diameter):
    """Top-k truncation (the k heaviest posterior weights, renormalised; ``tail`` = the weight left
    out, ``rho``; ``diameter`` D of the data): ``|tr F_k - tr F|`` and ``||F_k - F||_op`` are at most
    ``(alpha^2/sigma^4) rho D^2``, by ``C - C_k = rho (C'' + (1 - rho) Delta Delta^T - C_k)`` (law of
    total covariance over kept/left-out points; ``0 <= C'' + (1-rho) Delta Delta^T <= D^2``,
    ``0 <= C_k <= D^2/4``)."""
    return alpha**2 / var**2 * tail * diameter**2


def claimed_topk_mean_bound(tail, diameter):
    """Top-k truncation moves the posterior mean by ``rho |ybar'' - ybar_k| <= rho D``."""
    return tail * diameter


def claimed_hutchinson_variance(frobenius_sq, diagonal_sq):
    """One Rademacher probe: ``Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2)`` for symmetric A
    (Hutchinson 1990); M probes divide it by M."""
    return 2 * (frobenius_sq - diagonal_sq)


def _truncated_weights(weights: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """The k heaviest weights renormalised (others 0) and the weight left out."""
    kept = torch.zeros_like(weights)
    top = torch.topk(weights, k).indices
    kept[top] = weights[top]
    tail = float(1.0 - kept.sum())
    return kept / kept.sum(), tail


def _random_instances(count: int, seed: int):
    """Empirical data of 3..16 points in 2..5-D at noise levels where the posterior is spread."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        n = int(torch.randint(3, 17, (1,), generator=gen))
        d = int(torch.randint(2, 6, (1,), generator=gen))
        points = torch.randn(n, d, generator=gen, dtype=torch.float64) * float(torch.rand(1, generator=gen) * 2 + 0.2)
        abar = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        alpha, var = torch.tensor(abar, dtype=torch.float64).sqrt(), torch.tensor(1 - abar, dtype=torch.float64)
        x = alpha * points[0] + var.sqrt() * torch.randn(d, generator=gen, dtype=torch.float64)
        weights = torch.softmax(-((x - alpha * points) ** 2).sum(-1) / (2 * var), 0)
        yield points, alpha, var, weights, gen


#: Float64 slack on a bound: dense sums over <= 16 points in <= 5-D, ~1e-15 relative; 1e-9 is generous
#: yet far below any dropped term of the bounds (those are O(1) relative on the worst cases).
BOUND_SLACK = 1e-9


@claim(id="df.plugin-bound", source=f"{DF}, error bounds of the trace and matvec algorithms (plug-in "
       "moments; derived in docs/fisher.md)",
       statement="|tr Fhat - tr F|, |Fhat v - F v|/|v| <= (alpha^2/sigma^4)(eps_2 + 2|ybar| eps_mean + "
                 "eps_mean^2); attained with the mean error along ybar", method="both")
def check_plugin_bound() -> Outcome:
    norm, t, eps, eps2, a, var = sp.symbols("n t epsilon epsilon_2 alpha sigma2", positive=True)
    unit = sp.Matrix([2 * t, 1 - t**2]) / (1 + t**2)  # every unit vector of the plane but one, rationally
    ybar, e = norm * unit, eps * unit
    # tr Fhat - tr F = -(a^2/var^2)[(shat - s) - (|yhat|^2 - |ybar|^2)] at shat - s = -eps2:
    worst = a**2 / var**2 * (eps2 + ((ybar + e).T * (ybar + e))[0] - (ybar.T * ybar)[0])
    outcomes = [symbolic_zero(worst - claimed_plugin_bound(a, var, eps2, eps, norm),
                              "trace error with e = eps ybar/|ybar|, second-moment error -eps_2 equals the bound")]
    worst_ratio, sharp_ratio = 0.0, math.inf
    for points, alpha, var_t, weights, gen in _random_instances(40, seed=11):
        d = points.shape[1]
        eye = torch.eye(d, dtype=torch.float64)
        ybar = weights @ points
        second = torch.einsum("n,ni,nj->ij", weights, points, points)
        exact = claimed_fisher(weights, points, alpha, var_t, eye)
        for sharp in (False, True):
            eps_mean, eps_second = float(torch.rand(1, generator=gen)), float(torch.rand(1, generator=gen))
            if sharp:  # the worst case: e along ybar, S off by -eps_2 I, v along ybar
                e_vec, s_err, shift = eps_mean * ybar / ybar.norm(), -eps_second * eye, -eps_second
                v = ybar / ybar.norm()
            else:
                e_vec = torch.randn(d, generator=gen, dtype=torch.float64)
                e_vec *= eps_mean * float(torch.rand(1, generator=gen)) / e_vec.norm()
                rot, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
                s_err = (rot * (eps_second * (2 * torch.rand(d, generator=gen, dtype=torch.float64) - 1))) @ rot.T
                shift = eps_second * float(2 * torch.rand(1, generator=gen) - 1)
                v = torch.randn(d, generator=gen, dtype=torch.float64)
            yhat = ybar + e_vec
            matrix = eye / var_t - alpha**2 / var_t**2 * (second + s_err - torch.outer(yhat, yhat))
            trace = d / var_t - alpha**2 / var_t**2 * (weights @ (points**2).sum(-1) + shift - yhat @ yhat)
            bound = float(claimed_plugin_bound(alpha, var_t, eps_second, eps_mean, ybar.norm()))
            errors = (abs(float(trace - exact.trace())) / bound, float(((matrix - exact) @ v).norm() / v.norm()) / bound)
            worst_ratio = max(worst_ratio, *errors)
            if sharp:
                sharp_ratio = min(sharp_ratio, *errors)
    outcomes.append(Outcome(worst_ratio <= 1 + BOUND_SLACK and sharp_ratio >= 1 - BOUND_SLACK,
                            f"40 random empirical instances: max error / bound {worst_ratio:.6f} (<= 1); on the "
                            f"worst-case instances the trace and matvec errors reach at least {sharp_ratio:.6f} of it"))
    return all_of(outcomes)


@claim(id="df.topk-bound", source=f"{DF}, error bounds of the trace and matvec algorithms (top-k "
       "truncation of the posterior weights; derived in docs/fisher.md)",
       statement="keeping the k heaviest weights (left-out weight rho, data diameter D): |tr F_k - tr F|, "
                 "||F_k - F||_op <= (alpha^2/sigma^4) rho D^2, |ybar_k - ybar| <= rho D; sharp as rho -> 0",
       method="both")
def check_topk_bound() -> Outcome:
    y1, y2, y3, w1, w2, w3, dist, rho, a, var = sp.symbols("y1 y2 y3 w1 w2 w3 D rho alpha sigma2", positive=True)
    kept = w1 + w2  # C'' = 0: one point left out
    mean_k, mean_out = (w1 * y1 + w2 * y2) / kept, y3
    mean = w1 * y1 + w2 * y2 + w3 * y3
    cov = w1 * (y1 - mean) ** 2 + w2 * (y2 - mean) ** 2 + w3 * (y3 - mean) ** 2
    cov_k = (w1 * (y1 - mean_k) ** 2 + w2 * (y2 - mean_k) ** 2) / kept
    split = {w3: 1 - w1 - w2}
    residual = (cov - cov_k - w3 * (0 - cov_k) - w3 * kept * (mean_k - mean_out) ** 2) * kept**2  # a polynomial
    outcomes = [symbolic_zero(sp.cancel(residual.subs(split)),
                              "3 points, k = 2: C - C_k = rho (C'' - C_k) + rho (1 - rho) Delta^2")]
    # Two points D apart, weights (1 - rho, rho), k = 1: C_k = 0, so tr F_k - tr F = (a^2/var^2) rho (1 - rho) D^2.
    two_point = a**2 / var**2 * rho * (1 - rho) * dist**2
    outcomes.append(symbolic_zero(two_point / claimed_topk_bound(a, var, rho, dist) - (1 - rho),
                                  "two points, k = 1: error / bound = 1 - rho (sharp as rho -> 0)"))
    outcomes.append(symbolic_zero(rho * dist / claimed_topk_mean_bound(rho, dist) - 1,
                                  "two points, k = 1: the mean moves by rho D, the bound"))
    worst = {"trace": 0.0, "operator": 0.0, "mean": 0.0}
    for points, alpha, var_t, weights, _ in _random_instances(30, seed=12):
        d = points.shape[1]
        eye = torch.eye(d, dtype=torch.float64)
        diameter = float(torch.cdist(points, points).max())
        exact = claimed_fisher(weights, points, alpha, var_t, eye)
        for k in range(1, points.shape[0]):
            kept_w, tail = _truncated_weights(weights, k)
            if tail <= 1e-12:  # nothing left out but rounding: error and bound both ~0
                continue
            approx = claimed_fisher(kept_w, points, alpha, var_t, eye)
            bound = float(claimed_topk_bound(alpha, var_t, tail, diameter))
            worst["trace"] = max(worst["trace"], abs(float(approx.trace() - exact.trace())) / bound)
            worst["operator"] = max(worst["operator"], float(torch.linalg.eigvalsh(approx - exact).abs().max()) / bound)
            worst["mean"] = max(worst["mean"], float((kept_w @ points - weights @ points).norm())
                                / claimed_topk_mean_bound(tail, diameter))
    text = ", ".join(f"{k} {v:.3f}" for k, v in worst.items())
    outcomes.append(Outcome(max(worst.values()) <= 1 + BOUND_SLACK,
                            f"30 random empirical instances, every k: max error / bound: {text} (<= 1)"))
    return all_of(outcomes)


@claim(id="df.hutchinson-variance", source=f"{DF}, trace algorithm vs Hutchinson's estimator (Hutchinson "
       "1990; docs/fisher.md)",
       statement="one Rademacher probe: E v^T A v = tr A, Var = 2(||A||_F^2 - sum A_ii^2); for F = I/sigma^2 "
                 "- (alpha^2/sigma^4) C only C's off-diagonal contributes; pathkl.fisher.hutchinson_trace "
                 "matches", method="both")
def check_hutchinson_variance() -> Outcome:
    dim = 3
    entries = sp.symbols(f"a0:{dim * dim}")
    a_sym = sp.Matrix(dim, dim, lambda i, j: entries[min(i, j) * dim + max(i, j)])
    probes = [sp.Matrix(signs) for signs in _sign_vectors(dim)]
    forms = [(v.T * a_sym * v)[0] for v in probes]
    mean = sum(forms) / len(forms)
    variance = sum(f**2 for f in forms) / len(forms) - mean**2
    frob = sum(x**2 for x in a_sym)
    diag = sum(a_sym[i, i] ** 2 for i in range(dim))
    outcomes = [symbolic_zero(mean - a_sym.trace(), "all 2^3 probes: mean of v^T A v = tr A"),
                symbolic_zero(variance - claimed_hutchinson_variance(frob, diag),
                              "all 2^3 probes: variance of v^T A v = claimed")]
    gen = torch.Generator().manual_seed(13)
    points = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    reference = EmpiricalReference.from_points(points)
    lv = NoiseLevel(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    rows, probes_per_row = 4000, 4
    x = reference.sample(1, lv, generator=gen).expand(rows, -1)
    dense = -reference.hessian(x[:1], lv)[0]
    estimate = hutchinson_trace(lambda v: fisher_matvec(reference, x, v, lv), tuple(x.shape), probes_per_row,
                                generator=gen)
    predicted = float(claimed_hutchinson_variance((dense**2).sum(), (dense.diagonal() ** 2).sum())) / probes_per_row
    spread = float(estimate.trace.var())
    reported = float((estimate.stderr**2).mean())
    # 4000 independent estimates: their sample variance has relative SE sqrt((kappa - 1)/4000) <~ 0.04
    # here (kurtosis kappa of a quadratic form in 4 signs < 8); 0.2 is 5 such errors, while the
    # Gaussian-probe variance 2||A||_F^2 is > 5x off for this diagonally dominant F.
    outcomes.append(Outcome(abs(spread / predicted - 1) <= 0.2 and abs(reported / predicted - 1) <= 0.2
                            and abs(float(estimate.trace.mean() - dense.trace())) <= 5 * math.sqrt(predicted / rows),
                            f"hutchinson_trace, {rows} estimates of M = {probes_per_row}: variance {spread:.4g}, mean "
                            f"reported SE^2 {reported:.4g}, claimed {predicted:.4g}; mean within 5 SE of tr F"))
    return all_of(outcomes)


def _sign_vectors(dim: int):
    for code in range(2**dim):
        yield [1 if (code >> i) & 1 else -1 for i in range(dim)]
