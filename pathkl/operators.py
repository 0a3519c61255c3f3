"""Batches of symmetric operators, as the covariance families see them.

A reverse-step covariance is described by symmetric operators (docs/theory.md section 3.3): either diagonal
in a fixed orthonormal basis (:class:`Spectral`: Gaussian references, O(d) per step) or dense
(:class:`Dense`: state-dependent covariances of mixtures in small d). Both answer the same four
questions, so each covariance family is written once for all references.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bases import Basis, ChannelGroups, StandardBasis


class SymmetricOperator:
    """A batch (leading dims) of symmetric d x d operators."""

    def eigvals(self) -> torch.Tensor:
        """Eigenvalues, shape (..., d) (any order)."""
        raise NotImplementedError

    def diagonal(self) -> torch.Tensor:
        """Diagonal in the coordinate basis of x, shape (..., d)."""
        raise NotImplementedError

    def spectral_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_i x_i`` over the eigenvalues (each counted with its multiplicity), shape (...)."""
        return x.sum(-1)

    def mean_trace(self) -> torch.Tensor:
        """``tr(A) / d``, shape (...)."""
        eig = self.eigvals()
        return self.spectral_sum(eig) / self.spectral_sum(torch.ones_like(eig))

    def centred_eigvals(self) -> torch.Tensor:
        """Eigenvalues of ``A - (tr(A) / d) I``, shape (..., d). Here by subtraction, which leaves an
        absolute error of an ulp of the eigenvalues: operators that know a cancellation-free form
        (pathkl.references.gaussian) override it."""
        return self.eigvals() - self.mean_trace()[..., None]

    @property
    def is_diagonal(self) -> bool:
        """Whether every operator of the batch is diagonal in the coordinate basis of x (known from
        its structure, not tested numerically)."""
        return False

    @property
    def batch_shape(self) -> torch.Size:
        """The leading (batch) dimensions, ``(...)``."""
        return self.eigvals().shape[:-1]

    def scaled_offdiagonal_eigvals(self, scale: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of ``S^{-1/2} offdiag(A) S^{-1/2}`` for a positive diagonal ``S`` given as
        shape (..., d); ``offdiag(A) = A - diag(A)`` is formed without touching the diagonal."""
        raise NotImplementedError


@dataclass(frozen=True)
class Spectral(SymmetricOperator):
    """``A = U diag(values) U^T`` with ``U`` an orthonormal :class:`Basis`; values shape (..., d).

    With ``multiplicities`` the values are the distinct eigenvalues of a compressed spectrum
    (:meth:`Basis.compress`), each standing for that many, and ``basis`` describes the groups.
    """

    values: torch.Tensor
    basis: Basis | ChannelGroups
    multiplicities: torch.Tensor | None = None

    def eigvals(self):
        return self.values

    def spectral_sum(self, x):
        return x.sum(-1) if self.multiplicities is None else x @ self.multiplicities

    def mean_trace(self):
        count = self.values.shape[-1] if self.multiplicities is None else self.multiplicities.sum()
        return self.spectral_sum(self.values) / count

    @property
    def is_diagonal(self):
        return isinstance(self.basis, StandardBasis)

    def diagonal(self):
        return self.basis.diagonal(self.values)

    def scaled_offdiagonal_eigvals(self, scale):
        # offdiag(A) = offdiag(A - mean I): the centred eigenvalues keep its relative precision where the
        # eigenvalues nearly coincide (U diag(values) U^T would leave an ulp of them off the diagonal).
        return self.basis.scaled_offdiagonal_eigvals(self.centred_eigvals(), scale)

    def diagonal_ratio_eigvals(self):
        """Eigenvalues of ``diag(A)^{-1/2} A diag(A)^{-1/2}`` for positive values, small ones with
        their relative precision (:meth:`pathkl.bases.Basis.diagonal_ratio_eigvals`)."""
        return self.basis.diagonal_ratio_eigvals(self.values)


@dataclass(frozen=True)
class Dense(SymmetricOperator):
    """A dense symmetric matrix batch, shape (..., d, d)."""

    matrix: torch.Tensor

    def eigvals(self):
        return torch.linalg.eigvalsh(self.matrix)

    @property
    def batch_shape(self):
        return self.matrix.shape[:-2]

    def diagonal(self):
        return torch.diagonal(self.matrix, dim1=-2, dim2=-1)

    def scaled_offdiagonal_eigvals(self, scale):
        off = self.matrix - torch.diag_embed(self.diagonal())
        inv_sqrt = scale.rsqrt()
        return torch.linalg.eigvalsh(inv_sqrt[..., :, None] * off * inv_sqrt[..., None, :])


class SmallDense(Dense):
    """:class:`Dense` with closed-form eigenvalues for 2 x 2 batches (batched LAPACK calls dominate
    otherwise); absolute eigenvalue errors stay O(eps ||A||), as with eigvalsh."""

    def eigvals(self):
        if self.matrix.shape[-1] != 2:
            return super().eigvals()
        a, b, c = self.matrix[..., 0, 0], self.matrix[..., 0, 1], self.matrix[..., 1, 1]
        mid, radius = 0.5 * (a + c), torch.hypot(0.5 * (a - c), b)
        return torch.stack([mid - radius, mid + radius], -1)

    def scaled_offdiagonal_eigvals(self, scale):
        if self.matrix.shape[-1] != 2:
            return super().scaled_offdiagonal_eigvals(scale)
        r = self.matrix[..., 0, 1].abs() * (scale[..., 0] * scale[..., 1]).rsqrt()
        return torch.stack([-r, r], -1)
