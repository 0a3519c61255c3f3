"""Built-in reference distributions, usable as ``--ref NAME``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from .references import GaussianReference, MixtureReference, ProductReference
from .schedules import DTYPE


def fixed_rotation(d: int, seed: int = 0) -> torch.Tensor:
    """A reproducible orthonormal d x d matrix (QR of a seeded Gaussian matrix, signs fixed)."""
    a = torch.randn(d, d, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))


def rotated_covariance(angle: float, variances: tuple[float, float]) -> torch.Tensor:
    """``R(angle) diag(variances) R(angle)^T`` in 2-D."""
    c, s = math.cos(angle), math.sin(angle)
    r = torch.tensor([[c, -s], [s, c]], dtype=DTYPE)
    return (r * torch.tensor(variances, dtype=DTYPE)) @ r.T


def ocm_line() -> MixtureReference:
    """One coordinate of the OCM toy: means {-3, 0, 3}, std 0.1, equal weights (1-D)."""
    return MixtureReference.from_components([1.0 / 3] * 3, [[-3.0], [0.0], [3.0]], stds=[0.1] * 3)


def ocm_grid() -> ProductReference:
    """The OCM paper's 2-D toy (Ou et al. 2025, section 5.1) in product form: two independent copies
    of :func:`ocm_line` (the 3 x 3 grid, isotropic std 0.1, equal weights 1/9, factorises exactly)."""
    line = ocm_line()  # one object twice: its per-grid cache of E J is shared by both blocks
    return ProductReference((line, line))


def ocm_grid_2d() -> MixtureReference:
    """The same toy as an explicit 9-component 2-D mixture (independent route to :func:`ocm_grid`)."""
    means = [[a, b] for a in (-3.0, 0.0, 3.0) for b in (-3.0, 0.0, 3.0)]
    return MixtureReference.from_components([1.0 / 9] * 9, means, stds=[0.1] * 9)


def rotated_mixture() -> MixtureReference:
    """Three correlated 2-D components with differently rotated covariances: Hessian not diagonal."""
    covs = torch.stack([rotated_covariance(0.5, (0.5, 0.1)), rotated_covariance(-0.7, (0.4, 0.08)),
                        rotated_covariance(1.2, (0.3, 0.15))])
    return MixtureReference.from_components([0.3, 0.4, 0.3], [[-1.5, 0.5], [0.5, 1.0], [1.0, -1.2]], covs=covs)


def rotated_product(d: int = 3, *, seed: int = 0) -> MixtureReference:
    """A product of d 1-D mixtures (2, 3, 2, ... components, unequal weights and widths) rotated by
    :func:`fixed_rotation`: a non-Gaussian law whose Hessians all share one eigenbasis
    (the rotation's), so that the PF-ODE map is symmetric."""
    lines = [((0.3, -1.0, 0.5), (0.7, 1.5, 0.8)), ((0.2, -2.0, 0.3), (0.5, 0.0, 0.4), (0.3, 2.0, 0.25))]
    # Each component: one (weight, mean, std) per coordinate, shape (K, d, 3).
    parts = torch.tensor(list(itertools.product(*(lines[i % 2] for i in range(d)))), dtype=DTYPE)
    rotation = fixed_rotation(d, seed)
    covs = rotation @ torch.diag_embed(parts[..., 2] ** 2) @ rotation.T
    return MixtureReference.from_components(parts[..., 0].prod(-1), parts[..., 1] @ rotation.T, covs=covs)


def power_law_spectrum(shape, *, exponent: float = 2.0, floor: float = 1.0, variance: float = 1.0) -> torch.Tensor:
    """Eigenvalues ``(floor + kh^2 + kw^2)^(-exponent/2)`` over the wrapped integer frequencies of an
    H x W image (the same on each of C channels), scaled so the per-pixel variance (their mean) is
    ``variance``. Symmetric under k -> -k, so the covariance is real and stationary."""
    c, h, w = shape
    kh = torch.fft.fftfreq(h, d=1.0 / h, dtype=DTYPE)
    kw = torch.fft.fftfreq(w, d=1.0 / w, dtype=DTYPE)
    radius2 = kh[:, None] ** 2 + kw[None, :] ** 2
    spectrum = (floor + radius2) ** (-exponent / 2)
    spectrum = spectrum * (variance / spectrum.mean())
    return spectrum.expand(c, h, w).clone()


PRESETS: dict[str, tuple[str, Callable[[], object]]] = {
    "mog-1d": (
        "two 1-D Gaussians, weights 0.3/0.7, means -1/1.5, stds 0.5/0.8 (the default of pathkl rates)",
        lambda: MixtureReference.from_components([0.3, 0.7], [[-1.0], [1.5]], stds=[0.5, 0.8]),
    ),
    "gaussian-5d": (
        "N(0, S), S with eigenvalues 0.05, 0.3, 1, 2.5, 6 in a fixed rotated basis (diag != full)",
        lambda: GaussianReference.from_eigenvalues([0.05, 0.3, 1.0, 2.5, 6.0], basis=fixed_rotation(5)),
    ),
    "gaussian-5d-axis": (
        "the same eigenvalues, axis-aligned (diag = full)",
        lambda: GaussianReference.from_eigenvalues([0.05, 0.3, 1.0, 2.5, 6.0]),
    ),
    "gaussian-2d": (
        "N((1, -1), [[1, 0.8], [0.8, 1]]): a correlated pair with a non-zero mean",
        lambda: GaussianReference.from_covariance([[1.0, 0.8], [0.8, 1.0]], mean=[1.0, -1.0]),
    ),
    "image-3x32x32": (
        "stationary image Gaussian, 3x32x32, power-law spectrum (exponent 2, floor 1, unit variance)",
        lambda: GaussianReference.image(power_law_spectrum((3, 32, 32))),
    ),
    "image-3x64x64": (
        "stationary image Gaussian, 3x64x64 (d = 12288), power-law spectrum as above",
        lambda: GaussianReference.image(power_law_spectrum((3, 64, 64))),
    ),
    "mog-ocm-grid": (
        "OCM toy: 3x3 grid of isotropic Gaussians, means {-3,0,3}^2, std 0.1 (product form: diag = full)",
        ocm_grid,
    ),
    "mog-ocm-grid-2d": (
        "the same OCM toy as an explicit 9-component 2-D mixture (2-D quadrature: slower, less accurate)",
        ocm_grid_2d,
    ),
    "mog-rotated": (
        "3 correlated 2-D Gaussians with rotated covariances (non-diagonal Hessian: diag != full)",
        rotated_mixture,
    ),
}
