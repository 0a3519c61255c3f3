"""Claims of Wang et al., "Diffusion Fisher: outer-product structure" (ICML 2025, arXiv 2505.23264).

For empirical data ``{y_i}`` with weights ``1/N`` and ``x_t = alpha_t y + sigma_t eps``:
``F_t(x) = -hess log q_t(x) = I/sigma^2 - (alpha^2/sigma^4)[sum_i w_i y_i y_i^T - ybar ybar^T]``,
``w = softmax(-||x - alpha y_i||^2 / (2 sigma^2))``, ``ybar = sum_i w_i y_i`` (their Proposition 1;
docs/theory.md section 5.4).
"""

from __future__ import annotations

import sympy as sp
import torch

from .atomic import atomic_prior, is_zero
from .evidence import all_of, close
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
