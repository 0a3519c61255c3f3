"""Ancestral DDPM and DDIM(eta) sampling with the exact posterior mean and any covariance family.

Each reverse step (notation of :mod:`pathkl.matvecs`) draws
``x_{t-1} = lam_t xhat_0(x_t) + kappa_t x_t + Sigma_t^{1/2} z``, ``z ~ N(0, I)``, where ``Sigma_t``
is the family's stand-in for the optimal ``s_t^2 I + lam_t^2 Cov[x_0 | x_t]`` (for DDPM, eta = 1,
that is ``Sigma*_t``; the isotropic, diagonal and full families of docs/theory.md section 3.2):

- ``beta`` (DDPM only): ``beta_t I``;  ``beta_tilde``: ``s_t^2 I`` (plain DDIM for eta < 1);
- ``analytic``: ``(s^2 + lam^2 E_{q_t} tr C / d) I`` with the reference's exact expectation;
- ``diag``: ``s^2 + lam^2 diag C(x)``;  ``full``: dense Cholesky of the exact covariance (small d);
- ``rademacher:M``: the diagonal estimated from M probes, floored at ``s^2`` (a lower bound, C >= 0);
- ``lanczos:k``: the Lanczos Gaussian sampler with k covariance-vector products.

Products come from the reference's closed form (``route="closed"``), from a JVP of the posterior
mean (``route="jvp"``), from its linearisation once per step (``route="linearize"``) or from a
forward difference of it (``route="difference"``, one evaluation per product).

``reference`` is anything posterior-like: a closed-form reference, or a trained network wrapped as
:class:`pathkl.denoiser.NetworkPosterior`, whose "closed form" products are JVPs of the network and
whose diagonal, dense covariance and expected trace are the estimates of that class, so that every
family samples with a network through this one loop.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass

import torch

from .covariances import ReverseStep
from .errors import InputError
from .families import parse_family
from .matvecs import (
    DifferenceCovariance,
    JvpCovariance,
    LinearizedCovariance,
    closed_form_cov_matvec,
)
from .schedules import Grid

DENOISER_ROUTES = {"jvp": JvpCovariance, "linearize": LinearizedCovariance, "difference": DifferenceCovariance}
ROUTES = ("closed", *DENOISER_ROUTES)


def to_device(obj, device: torch.device):
    """A copy of a (frozen dataclass) reference with every tensor field moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **moved)
    return obj


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


@dataclass(frozen=True)
class SampleRun:
    """Samples ``x_0`` (n, d) and what they cost: posterior-mean evaluations (one per step),
    covariance-vector products (one JVP of the posterior mean each on the JVP route, which also
    yields that step's posterior mean) and wall-clock seconds."""

    samples: torch.Tensor
    mean_evals: int
    cov_products: int
    seconds: float


def sample(reference, grid: Grid, family: str, *, n: int, eta: float = 1.0, route: str = "closed",
           seed: int = 0, device: str | torch.device = "cpu") -> SampleRun:
    """Ancestral sampling from ``x_T ~ N(0, I)`` down to ``x_0`` with the exact posterior mean.

    ``eta = 1`` is DDPM; ``eta < 1`` DDIM(eta) (``beta`` then undefined). Seeded: the same seed on
    the same device gives the same samples.
    """
    noise_family = parse_family(family)
    if noise_family.ddpm_only and eta != 1.0:
        raise InputError(f"the {noise_family.name!r} family is a DDPM choice (eta = 1); use beta_tilde for DDIM")
    if route not in ROUTES:
        raise InputError(f"unknown covariance-product route {route!r}; use {', '.join(ROUTES)}")
    if n < 1:
        raise InputError(f"the number of samples must be >= 1, got {n}")
    device = resolve_device(device) if isinstance(device, str) else device
    reference = to_device(reference, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.float64
    start = time.perf_counter()
    x = torch.randn(n, reference.dim, dtype=dtype, device=device, generator=generator)
    for t in range(grid.T, 0, -1):
        step = ReverseStep.ddim(grid, t, eta=eta)
        step = dataclasses.replace(step, level=to_device(step.level, device))
        z = torch.randn(n, reference.dim, dtype=dtype, device=device, generator=generator)
        if route in DENOISER_ROUTES:
            denoiser = functools.partial(reference.posterior_mean, lv=step.level)
            matvec = DENOISER_ROUTES[route](denoiser, x, step)
            noise = noise_family.noise(reference, x, step, matvec, z, generator=generator)
            x0_hat = matvec.denoised()
        else:
            matvec = closed_form_cov_matvec(reference, x, step)
            noise = noise_family.noise(reference, x, step, matvec, z, generator=generator)
            x0_hat = reference.posterior_mean(x, step.level)
        x = step.mean(x, x0_hat) + noise
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return SampleRun(x, grid.T, grid.T * noise_family.products_per_step, seconds)
