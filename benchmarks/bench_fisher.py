"""Trace and products of the diffusion Fisher ``F_t = -hess log q_t`` three ways (issue 16, item 1):

(a) the closed forms: ``pathkl.fisher.fisher_trace`` / ``fisher_matvec`` (for empirical data the
    outer-product form of Wang et al. 2025, arXiv 2505.23264, Prop. 1, O(N d); for a mixture the
    cumulant form, O(K d));
(b) autodiff of the exact log-density, written here from scratch as a logsumexp (it shares no code
    with (a)): ``torch.func`` forward-over-reverse Hessian-vector products, and the exact trace as d
    of them (timed on a chunk of basis vectors and scaled to d where d is large: marked ``~``);
(c) Hutchinson estimates with M Rademacher probes, each with its standard error (sample and exact,
    ``sqrt(2 (||F||_F^2 - sum F_ii^2) / M)``, the latter from the Gram matrix of the weighted points),
    the products from (a) and, for the smaller M, the same probes through (b).

Accuracy is the max relative difference to (a) (``|approx - exact|_max / |exact|_max``); for (c) also
the error in units of its standard error. Times are the minimum of repeats, one point x_t, float64.

    python3 benchmarks/bench_fisher.py            # d = 3x64x64 = 12288, N = 2000 (the issue's figure)
    python3 benchmarks/bench_fisher.py --small    # d = 3x8x8 = 192, N = 200 (seconds)
    python3 benchmarks/bench_fisher.py --N 10000 --levels 2 --probes 16  # more points, spread posterior
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pathkl.fisher import (
    autodiff_fisher_matvec,
    autodiff_fisher_trace,
    fisher_matvec,
    fisher_trace,
    hutchinson_trace,
)
from pathkl.references import EmpiricalReference, MixtureReference
from pathkl.schedules import DTYPE, NoiseLevel


def min_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def level(abar: float) -> NoiseLevel:
    return NoiseLevel(torch.tensor(abar, dtype=DTYPE), torch.tensor(1.0 - abar, dtype=DTYPE))


def images(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Image-like points in [-1, 1]: a rank-16 latent code through tanh, plus pixel noise."""
    basis = torch.randn(16, d, generator=gen, dtype=DTYPE) / 4.0
    codes = torch.randn(n, 16, generator=gen, dtype=DTYPE)
    return torch.tanh(codes @ basis + 0.1 * torch.randn(n, d, generator=gen, dtype=DTYPE))


def empirical_log_density(points: torch.Tensor, lv: NoiseLevel):
    """``log q_t(x) = logsumexp_i(-|x - alpha y_i|^2 / (2 sigma^2)) + const`` (GEMM form of the distance)."""
    alpha, var = lv.abar.sqrt(), lv.one_minus_abar
    sq = (points**2).sum(-1)

    def log_q(x):
        dist2 = (x * x).sum() - 2.0 * alpha * (points @ x) + lv.abar * sq
        return torch.logsumexp(-dist2 / (2.0 * var), 0)
    return log_q


def mixture_log_density(weights, means, variances, lv: NoiseLevel):
    """``log sum_k pi_k N(x; alpha m_k, diag(sigma^2 + abar lambda_k))`` (diagonal components)."""
    nu = lv.one_minus_abar + lv.abar * variances
    log_norm = torch.log(weights) - 0.5 * torch.log(nu).sum(-1)
    scaled = lv.abar.sqrt() * means

    def log_q(x):
        quad = ((x - scaled) ** 2 / nu).sum(-1)
        return torch.logsumexp(log_norm - 0.5 * quad, 0)
    return log_q


def exact_hutchinson_stderr(reference, x, lv, probes: int) -> float | None:
    """``sqrt(2 (||F||_F^2 - sum F_ii^2) / M)``: for empirical data ``F`` off the diagonal is
    ``-(abar / sigma^4) C`` and ``||C||_F^2 = ||W^{1/2} Y_c Y_c^T W^{1/2}||_F^2`` (weighted centred
    points, those with weight > 1e-18 of the largest); None for a mixture (no Gram form here)."""
    if not isinstance(reference, EmpiricalReference):
        return None
    w = reference.posterior_weights(x, lv)[0]
    keep = w > 1e-18 * w.max()
    w, y = w[keep], reference.means[keep]
    centred = (y - w @ y) * w.sqrt()[:, None]
    gram = centred @ centred.T
    diag_sq = (reference.posterior_cov_diagonal(x, lv)[0] ** 2).sum()
    scale = float(lv.abar / lv.one_minus_abar**2)
    return math.sqrt(2.0 * scale**2 * max(float((gram**2).sum() - diag_sq), 0.0) / probes)


def relative(approx, exact) -> float:
    return float((approx - exact).abs().max() / exact.abs().max())


def report(name: str, reference, log_q, lv: NoiseLevel, *, probe_counts: tuple[int, ...], repeats: int,
           trace_chunk: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = reference.sample(1, lv, generator=gen)
    v = torch.randn(1, reference.dim, generator=gen, dtype=DTYPE)
    d = reference.dim
    w = reference.posterior_weights(x, lv)[0]
    print(f"\n{name}, abar = {float(lv.abar):.4g}: d = {d}, effective points 1/sum w^2 = {float(1 / (w**2).sum()):.1f}")

    exact_mv = fisher_matvec(reference, x, v, lv)
    auto_mv = autodiff_fisher_matvec(log_q, x, v)
    # A fresh copy of x per call: EmpiricalReference keeps the weights of the last x it saw, so a
    # repeated x would time only the second GEMM (Hutchinson below does use that: M products, one x).
    t_mv = min_time(lambda: fisher_matvec(reference, x.clone(), v, lv), repeats)
    t_auto_mv = min_time(lambda: autodiff_fisher_matvec(log_q, x, v), repeats)
    print(f"  matvec  (a) closed form   {t_mv * 1e3:9.3f} ms")
    print(f"          (b) autodiff HVP  {t_auto_mv * 1e3:9.3f} ms  ({t_auto_mv / t_mv:6.1f}x)  "
          f"max rel diff to (a) {relative(auto_mv, exact_mv):.1e}")

    exact_tr = fisher_trace(reference, x, lv)
    t_tr = min_time(lambda: fisher_trace(reference, x.clone(), lv), repeats)
    print(f"  trace   (a) closed form   {t_tr * 1e3:9.3f} ms  tr F = {float(exact_tr[0]):.10g}")
    if d <= 4 * trace_chunk:
        auto_tr = autodiff_fisher_trace(log_q, x[0], chunk=trace_chunk)
        t_auto_tr = min_time(lambda: autodiff_fisher_trace(log_q, x[0], chunk=trace_chunk), max(1, repeats // 3))
        print(f"          (b) autodiff, d HVPs {t_auto_tr * 1e3:6.1f} ms  ({t_auto_tr / t_tr:6.0f}x)  "
              f"rel diff to (a) {float((auto_tr - exact_tr[0]).abs() / exact_tr[0].abs()):.1e}")
    else:
        basis = torch.eye(d, dtype=DTYPE)[:trace_chunk]
        chunk = lambda: autodiff_fisher_matvec(log_q, x.expand(trace_chunk, d).contiguous(), basis)
        t_auto_tr = min_time(chunk, max(1, repeats // 3)) * d / trace_chunk
        partial = chunk().diagonal().sum()
        closed_partial = (-reference.hvp(x.expand(trace_chunk, d), basis, lv)).diagonal().sum()
        print(f"          (b) autodiff, d HVPs ~{t_auto_tr:8.1f} s   ({t_auto_tr / t_tr:6.0f}x; {trace_chunk} of {d} "
              f"timed and scaled)  rel diff to (a) on them {float((partial - closed_partial).abs() / closed_partial.abs()):.1e}")
    for probes in probe_counts:
        routes = [("closed-form", lambda u: fisher_matvec(reference, x, u, lv))]
        if probes == probe_counts[0]:  # the same probes through autodiff: the same estimate, at its cost
            routes.append(("autodiff", lambda u: autodiff_fisher_matvec(log_q, x, u)))
        for route, matvec in routes:
            estimate = hutchinson_trace(matvec, (1, d), probes, generator=torch.Generator().manual_seed(seed + probes))
            t_h = min_time(lambda m=matvec, p=probes: hutchinson_trace(m, (1, d), p), max(1, repeats // 3))
            err = float(estimate.trace[0] - exact_tr[0])
            se = float(estimate.stderr[0])
            exact_se = exact_hutchinson_stderr(reference, x, lv, probes)
            exact_text = "" if exact_se is None else f", exact SE {exact_se:.3g}"
            print(f"          (c) Hutchinson M={probes:<4d} {route:11s} {t_h * 1e3:9.1f} ms  ({t_h / t_tr:6.0f}x)  "
                  f"{float(estimate.trace[0]):.8g} +- {se:.3g} (sample SE{exact_text}); error {err:+.3g} = "
                  f"{err / se if se > 0 else 0.0:+.2f} SE, rel {abs(err) / abs(float(exact_tr[0])):.1e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="d = 3x8x8, N = 200: a fast check")
    parser.add_argument("--N", type=int, default=None, help="points of the empirical data (default 2000, 200 small)")
    parser.add_argument("--K", type=int, default=10, help="components of the mixture")
    parser.add_argument("--levels", default="0,1,2",
                        help="which of the three noise levels to run (comma-separated indices into "
                             "abar = 0.5, 20 / s, 2 / s, s the mean squared distance between points)")
    parser.add_argument("--probes", default="16,256", help="Hutchinson probe counts M (comma-separated; the "
                                                           "first also through autodiff)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared machine a parallel reduction waits for "
                             "a descheduled thread, and small operations then take milliseconds)")
    args = parser.parse_args(argv)
    side = 8 if args.small else 64
    d, n = 3 * side * side, args.N or (200 if args.small else 2000)
    gen = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"diffusion Fisher trace / matvec, float64, {torch.get_num_threads()} threads")
    empirical = EmpiricalReference.from_points(images(n, d, gen))
    weights = torch.softmax(torch.randn(args.K, generator=gen, dtype=DTYPE), 0)
    means = images(args.K, d, gen)
    variances = 0.05 + 0.2 * torch.rand(args.K, d, generator=gen, dtype=DTYPE)
    mixture = MixtureReference.from_components(weights, means, variances=variances)
    spread = float(torch.cdist(empirical.means[:64], empirical.means[:64]).pow(2).mean())
    # abar = s sigma^2 / (mean squared distance between points): the posterior spreads over many points
    # for s ~ 1 and collapses to one for s >> 1 (abar = 0.5 at image dimension).
    levels = (0.5, 20.0 / spread, 2.0 / spread)
    probe_counts = tuple(int(m) for m in args.probes.split(","))
    for index in (int(i) for i in args.levels.split(",")):
        lv = level(levels[index])
        report(f"empirical, N = {n}, 3x{side}x{side}", empirical, empirical_log_density(empirical.means, lv), lv,
               probe_counts=probe_counts, repeats=args.repeats, trace_chunk=64, seed=args.seed)
        report(f"mixture, K = {args.K} diagonal components, 3x{side}x{side}", mixture,
               mixture_log_density(mixture.weights, mixture.means, mixture.eigenvalues, lv), lv,
               probe_counts=probe_counts, repeats=args.repeats, trace_chunk=64, seed=args.seed)


if __name__ == "__main__":
    main()
