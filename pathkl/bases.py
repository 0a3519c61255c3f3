"""Orthonormal bases in which a Gaussian reference's covariance is diagonal.

``S = U diag(lambda) U^T``. The three bases cost O(d) (standard), O(d log d) (Fourier, for stationary
image covariances over C x H x W) and O(d^2) (dense) per application.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .stable import DIRECT_BELOW

# eigvalsh finds an eigenvalue r to ~16 ulps of itself when r >= r_max / _RESOLVED (DenseBasis).
_RESOLVED = 16.0


class Basis:
    """An orthonormal basis ``U`` of R^d."""

    dim: int

    def apply(self, values: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``U diag(values) U^T v`` for v of shape (n, d) and values of shape (d,)."""
        raise NotImplementedError

    def diagonal(self, values: torch.Tensor) -> torch.Tensor:
        """``diag(U diag(values) U^T)`` for values of shape (..., d)."""
        raise NotImplementedError

    def scaled_offdiagonal_eigvals(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of ``S^{-1/2} offdiag(U diag(values) U^T) S^{-1/2}`` (see operators)."""
        raise NotImplementedError

    def diagonal_ratio_eigvals(self, values: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of ``D^{-1/2} A D^{-1/2}``, ``A = U diag(values) U^T`` with positive values and
        ``D = diag(A)``, ascending where :meth:`scaled_offdiagonal_eigvals` is, with the relative precision
        of small ones (they are ``1 + e`` for the ``diag`` family's relative eigenvalues e)."""
        raise NotImplementedError

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """``U diag(values) U^T`` as a dense (d, d) matrix (small d only)."""
        return self.apply(values, torch.eye(self.dim, dtype=values.dtype, device=values.device)).T

    def compress(self, eigenvalues: torch.Tensor):
        """``(values, multiplicities, structure)``: the spectrum with repeated eigenvalues merged where
        ``diagonal`` and ``scaled_offdiagonal_eigvals`` can still be answered on the merged values
        (``multiplicities`` None: nothing merged). Power-law image spectra shrink ~27-fold."""
        return eigenvalues, None, self


@dataclass(frozen=True)
class StandardBasis(Basis):
    """``U = I``: axis-aligned covariances."""

    dim: int

    def apply(self, values, v):
        return v * values

    def compress(self, eigenvalues):
        values, counts = torch.unique(eigenvalues, return_counts=True)
        if values.numel() == eigenvalues.numel():
            return eigenvalues, None, self
        return values, counts.to(eigenvalues.dtype), StandardBasis(values.numel())

    def diagonal(self, values):
        return values

    def scaled_offdiagonal_eigvals(self, values, scale):
        return torch.zeros_like(values)

    def diagonal_ratio_eigvals(self, values):
        return torch.ones_like(values)


@dataclass(frozen=True)
class DenseBasis(Basis):
    """An explicit orthonormal matrix ``U`` (columns are the eigenvectors)."""

    matrix: torch.Tensor

    def __post_init__(self):
        u = self.matrix
        if u.ndim != 2 or u.shape[0] != u.shape[1]:
            raise InputError(f"a basis must be a square matrix, got shape {tuple(u.shape)}")
        eye = torch.eye(u.shape[0], dtype=u.dtype, device=u.device)
        if not torch.isfinite(u).all() or (u.T @ u - eye).abs().max() > 1e-10:
            raise InputError("the basis is not orthonormal (|U^T U - I| > 1e-10)")

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    def apply(self, values, v):
        u = self.matrix
        return ((v @ u) * values) @ u.T

    def diagonal(self, values):
        return values @ (self.matrix**2).T

    def scaled_offdiagonal_eigvals(self, values, scale):
        u = self.matrix
        full = (u * values[..., None, :]) @ u.T
        off = full - torch.diag_embed(torch.diagonal(full, dim1=-2, dim2=-1))
        inv_sqrt = scale.rsqrt()
        return torch.linalg.eigvalsh(inv_sqrt[..., :, None] * off * inv_sqrt[..., None, :])

    def diagonal_ratio_eigvals(self, values):
        """eigvalsh of ``R = D^{-1/2} A D^{-1/2}`` errs by an ulp of its largest eigenvalue r_max, too much
        for eigenvalues r << r_max. Those are the largest eigenvalues 1/r of ``R^{-1}``, similar to
        ``M = diag(values)^{-1/2} U^T D U diag(values)^{-1/2}``, which eigvalsh finds to an ulp of 1/r_min.
        Each r comes from whichever of the two gets it to ~16 ulps (R for r >= r_max / 16, M for
        r <= 16 r_min); an eigenvalue between those that phi needs (r < 1 + DIRECT_BELOW, where it
        takes log r) is resolved by neither, and refused."""
        u = self.matrix
        full = (u * values[..., None, :]) @ u.T
        diag = torch.diagonal(full, dim1=-2, dim2=-1)
        inv_sqrt = diag.rsqrt()
        ratios = torch.linalg.eigvalsh(inv_sqrt[..., :, None] * full * inv_sqrt[..., None, :])
        top = ratios[..., -1:]
        if not (ratios < top / _RESOLVED).any():
            return ratios
        w = values.rsqrt()
        dual = w[..., :, None] * ((u.T * diag[..., None, :]) @ u) * w[..., None, :]
        inverse = 1.0 / torch.linalg.eigvalsh(dual).flip(-1)
        small = inverse <= _RESOLVED * inverse[..., :1]
        if ((ratios < top / _RESOLVED) & (ratios < 1.0 + DIRECT_BELOW) & ~small).any():
            raise InputError(
                "the diag family cannot be evaluated to rounding accuracy for this rotated covariance: the "
                "eigenvalues of diag(Sigma*)^-1/2 Sigma* diag(Sigma*)^-1/2 span "
                f"{float(inverse[..., 0].min()):.1e} .. {float(top.max()):.1e}, more than float64 eigen-solvers resolve"
            )
        return torch.where(small, inverse, ratios)


@dataclass(frozen=True)
class FourierBasis(Basis):
    """The 2-D discrete Fourier basis on each channel of a C x H x W image (flattened C-major).

    Stationary (circulant) covariances are diagonal here; values are indexed like the image,
    ``values[c, kh, kw]``, and must be symmetric under ``k -> -k`` so the operator is real. The
    diagonal of a circulant operator is the mean of its eigenvalues over the channel's frequencies.
    """

    shape: tuple[int, int, int]

    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def apply(self, values, v):
        c, h, w = self.shape
        spectrum = values.reshape(c, h, w)[..., : w // 2 + 1]
        image = v.reshape(-1, c, h, w)
        out = torch.fft.irfft2(torch.fft.rfft2(image) * spectrum, s=(h, w))
        return out.reshape(v.shape)

    def compress(self, eigenvalues):
        per_channel = eigenvalues.reshape(self.shape[0], -1)
        # Channels with one shared spectrum have one shared channel mean: merge them too.
        c = 1 if bool((per_channel == per_channel[0]).all()) else self.shape[0]
        channel = torch.arange(c, device=eigenvalues.device).repeat_interleave(self.dim // c)
        pairs, counts = torch.unique(torch.stack([channel.to(eigenvalues.dtype), eigenvalues]), dim=1,
                                     return_counts=True)
        groups = ChannelGroups(pairs[0].long(), counts.to(eigenvalues.dtype), c)
        return pairs[1], groups.weights, groups

    def _channel_mean(self, values):
        c = self.shape[0]
        per_channel = values.reshape(*values.shape[:-1], c, -1).mean(-1, keepdim=True)
        return per_channel.expand(*values.shape[:-1], c, self.dim // c).reshape(values.shape)

    def diagonal(self, values):
        return self._channel_mean(values)

    def scaled_offdiagonal_eigvals(self, values, scale):
        # offdiag(U diag(a) U^T) = U diag(a - mean_c a) U^T, and S is constant on each channel.
        return (values - self._channel_mean(values)) / scale

    def diagonal_ratio_eigvals(self, values):
        return values / self._channel_mean(values)


@dataclass(frozen=True)
class ChannelGroups:
    """A compressed Fourier spectrum: entry i stands for ``weights[i]`` equal eigenvalues of channel
    ``channels[i]``. Answers the two questions the covariance families ask, as FourierBasis does."""

    channels: torch.Tensor
    weights: torch.Tensor
    n_channels: int

    def _channel_mean(self, values):
        totals = torch.zeros(*values.shape[:-1], self.n_channels, dtype=values.dtype, device=values.device)
        totals.index_add_(-1, self.channels, values * self.weights)
        sizes = torch.zeros(self.n_channels, dtype=values.dtype, device=values.device)
        sizes.index_add_(0, self.channels, self.weights)
        return (totals / sizes)[..., self.channels]

    def diagonal(self, values):
        return self._channel_mean(values)

    def scaled_offdiagonal_eigvals(self, values, scale):
        return (values - self._channel_mean(values)) / scale

    def diagonal_ratio_eigvals(self, values):
        return values / self._channel_mean(values)
