"""Sample-quality metrics against a reference, each with a standard error.

- :func:`mmd` (low d): unbiased ``MMD^2`` with the kernel ``sum_b exp(-|x - y|^2 / (2 b^2))`` over the
  OCM paper's bandwidths ``b in {2^-2, ..., 2^2}`` (Ou et al. 2025, section 5.1), averaged over
  ``blocks`` disjoint blocks of the two samples; the standard error is the spread of the block values
  over ``sqrt(blocks)`` (the blocks are independent), which needs no asymptotic variance formula and
  stays valid when the two laws coincide (where the U-statistic of the MMD is degenerate).
- :func:`sliced_wasserstein` (high d): ``SW_2^2 = E_theta W_2^2(theta.x, theta.y)`` over random unit
  directions, estimated on the full samples (in 1-D, ``W_2`` between equal-size samples pairs sorted
  values), as a paper reports it. Being a squared distance between empirical laws it is biased
  upwards by sampling noise: compare with the value for two independent reference samples of the
  same size (the floor). Its standard error adds in quadrature (i) the Monte Carlo error over the
  directions, ``std_theta W_2^2 / sqrt(projections)``, and (ii) the sampling error by subsampling
  (Politis & Romano 1994): the statistic on ``blocks`` disjoint blocks of ``m = n / blocks`` points
  with the same directions has spread ``s_m``, and the root-n central limit theorem of ``W_2^2`` in
  1-D between different laws (del Barrio, Gine & Utzet 2005, Bernoulli 11) scales it to
  ``s_m sqrt(m / n) = s_m / sqrt(blocks)`` for the full sample. When the two laws coincide the
  statistic converges faster than root-n and (ii) is conservative.
"""

from __future__ import annotations

import torch

from .arrays import array_arguments
from .errors import InputError
from .estimate import Estimate

OCM_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _blocks(x: torch.Tensor, y: torch.Tensor, blocks: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"samples must be (n, d) and (m, d) with one d, got {tuple(x.shape)}, {tuple(y.shape)}")
    size = min(x.shape[0], y.shape[0]) // blocks
    if blocks < 2 or size < 2:
        raise InputError(f"need >= 2 blocks of >= 2 points each, got {blocks} blocks from {min(len(x), len(y))} points")
    return x[: size * blocks].split(size), y[: size * blocks].split(size)


def _mean_and_stderr(values: torch.Tensor) -> Estimate:
    return Estimate(float(values.mean()), stderr=float(values.std(unbiased=True) / values.numel() ** 0.5))


def _kernel(a: torch.Tensor, b: torch.Tensor, bandwidths) -> torch.Tensor:
    d2 = torch.cdist(a, b).square()
    return sum(torch.exp(-d2 / (2.0 * w * w)) for w in bandwidths)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidths) -> torch.Tensor:
    n, m = len(x), len(y)
    kxx, kyy = _kernel(x, x, bandwidths), _kernel(y, y, bandwidths)
    off_xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    off_yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return off_xx + off_yy - 2.0 * _kernel(x, y, bandwidths).mean()


@array_arguments
def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidths=OCM_BANDWIDTHS, blocks: int = 10) -> Estimate:
    """Unbiased ``MMD^2`` between samples ``x`` and ``y`` (mean over blocks) with its standard error."""
    xs, ys = _blocks(x, y, blocks)
    return _mean_and_stderr(torch.stack([_mmd2_unbiased(a, b, bandwidths) for a, b in zip(xs, ys)]))


def _sw_per_direction(a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``W_2^2(theta_j . a, theta_j . b)`` for every column ``theta_j`` (equal-size samples)."""
    pa, pb = torch.sort(a @ theta, dim=0).values, torch.sort(b @ theta, dim=0).values
    return (pa - pb).square().mean(dim=0)


@array_arguments
def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, projections: int = 256, blocks: int = 10,
                       seed: int = 0) -> Estimate:
    """Full-sample ``SW_2^2`` between ``x`` and ``y`` (the first ``min(n, m)`` points of each) over
    ``projections`` random directions, with the standard error of the module docstring (directions
    plus ``blocks``-block subsampling)."""
    xs, ys = _blocks(x, y, blocks)
    n = min(len(x), len(y))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    theta = torch.randn(x.shape[1], projections, dtype=x.dtype, device=x.device, generator=generator)
    theta = theta / torch.linalg.vector_norm(theta, dim=0)
    per_direction = _sw_per_direction(x[:n], y[:n], theta)
    sampling = _mean_and_stderr(torch.stack([_sw_per_direction(a, b, theta).mean()
                                             for a, b in zip(xs, ys)])).stderr
    directions = float(per_direction.std(unbiased=True)) / projections**0.5
    return Estimate(float(per_direction.mean()), stderr=(sampling**2 + directions**2) ** 0.5)


#: :func:`mmd` is reported up to this dimension (its kernel loses contrast beyond); SW always.
MMD_MAX_DIM = 16


@array_arguments
def sample_quality(samples: torch.Tensor, reference, *, seed: int = 0) -> dict[str, Estimate]:
    """The metrics of a sampling run against ``n`` fresh exact draws of ``reference`` (seeded by
    ``seed + 1``): ``"sw"``, its floor ``"sw_floor"`` (``SW_2^2`` between two independent exact samples
    of the same size: the statistic's finite-sample bias) and, up to :data:`MMD_MAX_DIM`, ``"mmd"``;
    ``max(2, min(10, n // 20))`` blocks for the standard errors."""
    x = samples.cpu()
    n = len(x)
    gen = torch.Generator().manual_seed(seed + 1)
    target, other = reference.sample(n, generator=gen), reference.sample(n, generator=gen)
    blocks = max(2, min(10, n // 20))
    metrics = {"sw": sliced_wasserstein(x, target, blocks=blocks, seed=seed),
               "sw_floor": sliced_wasserstein(other, target, blocks=blocks, seed=seed)}
    if x.shape[1] <= MMD_MAX_DIM:
        metrics["mmd"] = mmd(x, target, blocks=blocks)
    return metrics
