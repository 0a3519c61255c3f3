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
family samples with a network through this one loop. :func:`sample_model` runs the same loop for a
Gaussian reverse model given by its ``mean`` and ``variance`` (pathkl.model_kl), e.g. a learned head's.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
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
from .schedules import DTYPE, Grid

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


#: One reverse step ``(x_t, t, z) -> x_{t-1}`` from a batch of standard normals ``z``.
Step = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def _ancestral(step: Step, grid: Grid, n: int, dim: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """``x_0`` of ``n`` chains from ``x_T ~ N(0, I)``: the noise drawn from ``generator`` in one order
    for every sampler (x_T, then one ``z`` (n, dim) per step t = T..1, before the step's own draws)."""
    x = torch.randn(n, dim, dtype=DTYPE, device=device, generator=generator)
    for t in range(grid.T, 0, -1):
        z = torch.randn(n, dim, dtype=DTYPE, device=device, generator=generator)
        x = step(x, t, z)
    return x


def _checked_run(n: int, device: str | torch.device, seed: int) -> tuple[torch.device, torch.Generator]:
    if n < 1:
        raise InputError(f"the number of samples must be >= 1, got {n}")
    device = resolve_device(device) if isinstance(device, str) else device
    return device, torch.Generator(device=device).manual_seed(seed)


def _finished(x: torch.Tensor, grid: Grid, products: int, start: float, device: torch.device) -> SampleRun:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return SampleRun(x, grid.T, grid.T * products, time.perf_counter() - start)


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
    device, generator = _checked_run(n, device, seed)
    reference = to_device(reference, device)

    def step(x: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
        reverse = ReverseStep.ddim(grid, t, eta=eta)
        reverse = dataclasses.replace(reverse, level=to_device(reverse.level, device))
        if route in DENOISER_ROUTES:
            denoiser = functools.partial(reference.posterior_mean, lv=reverse.level)
            matvec = DENOISER_ROUTES[route](denoiser, x, reverse)
            noise = noise_family.noise(reference, x, reverse, matvec, z, generator=generator)
            x0_hat = matvec.denoised()
        else:
            matvec = closed_form_cov_matvec(reference, x, reverse)
            noise = noise_family.noise(reference, x, reverse, matvec, z, generator=generator)
            x0_hat = reference.posterior_mean(x, reverse.level)
        return reverse.mean(x, x0_hat) + noise

    start = time.perf_counter()
    x = _ancestral(step, grid, n, reference.dim, generator, device)
    return _finished(x, grid, noise_family.products_per_step, start, device)


def sample_model(model, grid: Grid, *, n: int, dim: int, seed: int = 0,
                 device: str | torch.device = "cpu") -> SampleRun:
    """Ancestral sampling of a diagonal Gaussian reverse model (:class:`pathkl.model_kl.GaussianReverseModel`
    with ``variance``, e.g. :func:`pathkl.reverse_model` or :func:`pathkl.learned_model`) on ``grid``:
    ``x_{t-1} = mean(x_t, t, grid) + variance(x_t, t, grid)^{1/2} z`` from ``x_T ~ N(0, I)`` in ``dim``
    dimensions, the noise in :func:`sample`'s order, so that a model with the exact mean and a family's
    variance draws that family's samples from the same seed. A variance may be 0 (a deterministic
    step), not negative: :class:`InputError` names the step (clamp or clip the model's variance first).
    ``mean_evals`` counts the model's steps; ``cov_products`` is 0."""
    if not callable(getattr(model, "variance", None)):
        raise InputError(f"sample_model draws from a model with a diagonal variance(x, t, grid), got "
                         f"{type(model).__name__}")
    device, generator = _checked_run(n, device, seed)

    def step(x: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
        var = torch.as_tensor(model.variance(x, t, grid), dtype=DTYPE, device=device)
        if not (var >= 0).all():
            raise InputError(f"the model's variance at step t = {t} is negative or NaN (min "
                             f"{float(var.min()):.3g}); a Gaussian step needs variances >= 0")
        return model.mean(x, t, grid) + var.sqrt() * z

    start = time.perf_counter()
    with torch.no_grad():
        x = _ancestral(step, grid, n, dim, generator, device)
    return _finished(x, grid, 0, start, device)
