"""The model path KL's cost per step (pathkl.model_kl): the expectation over x_t of a model's mean part
and diagonal mismatch, beyond the ``diag`` family's path KL the engine computes anyway.

    python3 benchmarks/bench_model_kl.py [--T 64] [--threads 1]

Per case: the rule (Monte Carlo: 256 draws per mixture component and step; quadrature: the ladder's
rungs until rtol = 1e-6), milliseconds per step, and the model's step
KL with its error summed over the chain. The model is the exact mean plus a 5% linear error with the
``beta`` variance inflated by 10%, so neither part is zero.
"""

from __future__ import annotations

import argparse
import time

import torch

import pathkl
from pathkl.model_kl import DiagonalGaussianModel, step_integrands
from pathkl.references import GaussianReference, MixtureReference
from pathkl.rules import MonteCarlo, QuadratureRule
from pathkl.schedules import DTYPE


def perturbed_model(reference) -> DiagonalGaussianModel:
    def mean(x, t, grid):
        exact = (x + grid.beta[t - 1] * reference.score(x, grid.level(t))) / grid.alpha[t - 1].sqrt()
        return exact + 0.05 * x

    return DiagonalGaussianModel(mean, lambda x, t, grid: 1.1 * grid.beta[t - 1])


def cases(d_mc: int, d_gauss: int):
    gen = torch.Generator().manual_seed(0)
    yield "mog-rotated (2-D)", pathkl.load_reference("mog-rotated"), QuadratureRule()
    yield "mog-1d", pathkl.load_reference("mog-1d"), QuadratureRule()
    means = 3.0 * torch.randn(6, d_mc, generator=gen, dtype=DTYPE)
    mixture = MixtureReference.from_components(torch.full((6,), 1 / 6, dtype=DTYPE), means,
                                               variances=torch.full((6, d_mc), 0.25, dtype=DTYPE))
    yield f"{d_mc}-D mixture, K = 6", mixture, MonteCarlo(outer=256)
    eigenvalues = torch.logspace(-2, 1, d_gauss, dtype=DTYPE)
    yield f"{d_gauss}-D Gaussian", GaussianReference.from_eigenvalues(eigenvalues), MonteCarlo(outer=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d-mc", type=int, default=16)
    parser.add_argument("--d-gauss", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = pathkl.get_schedule("vp-linear").grid(args.T)
    print(f"T = {args.T}, {torch.get_num_threads()} thread(s); cost of the model's parts only")
    for name, reference, rule in cases(args.d_mc, args.d_gauss):
        model = perturbed_model(reference)
        block = (MixtureReference.from_components([1.0], reference.mean[None],
                                                  covs=reference.basis.dense(reference.eigenvalues)[None])
                 if isinstance(rule, QuadratureRule) and isinstance(reference, GaussianReference) else reference)
        start = time.perf_counter()
        total, error = 0.0, 0.0
        for t in range(1, grid.T + 1):
            parts = rule.expectation(block, grid.level(t), step_integrands(reference, model, grid, t), rtol=1e-6, key=t)
            total += sum(p.value for p in parts)
            error += sum(p.error for p in parts)
        per_step = (time.perf_counter() - start) / grid.T
        print(f"{name:24s} {rule.name:12s} {1e3 * per_step:8.2f} ms/step   mean + mismatch = {total:.6g} +- {error:.2g}")


if __name__ == "__main__":
    main()
