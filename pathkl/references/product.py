"""Independent blocks: ``x = (x^(1), ..., x^(B))`` with ``q_0 = prod_b q_0^(b)``, each block any reference.

Noising acts on each coordinate separately, so every ``q_t`` and every reverse kernel ``q(x_{t-1}|x_t)``
is again a product of the blocks' (docs/theory.md section 5.5). Hence, with ``G = H + I`` block diagonal:

- log-density, score, Hessian, posterior moments: sums, concatenations and block-diagonal matrices;
- ``KL(q_T || N(0, I))`` and the reverse kernel's negentropy ``J`` (KL against its moment-matched
  Gaussian, itself a product) are sums over blocks (KL of products);
- the Gaussian part of a step for ``beta``, ``beta_tilde``, ``diag``, ``full``: the relative
  eigenvalues are the union of the blocks' (``diag``: ``offdiag(G)`` is block diagonal too), so the KL is
  the sum of the blocks' KLs, and the expectation over x_t of a sum of functions of independent blocks is
  the sum of the blocks' expectations;
- ``analytic`` couples the blocks only through its one isotropic variance
  ``sigma^2 = beta + (beta^2/alpha) gbar``, ``gbar = E tr G / d = sum_b E tr G^(b) / d``: each block is
  evaluated with this global ``gbar`` (the blocks' ``mean_g`` keyword).

Leading constants: ``E ||G||^2``, ``E ||offdiag G||^2`` and ``E ||G - gbar I||^2`` (global gbar) are sums
over blocks; ``grad^3 log q = sum_b grad^3 log q^(b)`` has no mixed-block entries (log q is a sum of
functions of separate blocks), so ``||grad^3 log q||_F^2`` is the sum of the blocks'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arrays import array_arguments
from ..errors import InputError
from ..schedules import DTYPE, NoiseLevel


def blocks(reference) -> tuple:
    """The leaf references of ``reference``: its factors, recursively, or itself."""
    if isinstance(reference, ProductReference):
        return tuple(b for f in reference.factors for b in blocks(f))
    return (reference,)


def map_blocks(reference, fn):
    """``reference`` with every leaf block b replaced by ``fn(b)`` (products rebuilt around them)."""
    if isinstance(reference, ProductReference):
        return ProductReference(tuple(map_blocks(f, fn) for f in reference.factors))
    return fn(reference)


@dataclass(frozen=True)
class ProductReference:
    """``q_0 = prod_b factors[b]`` over consecutive coordinate blocks of sizes ``factors[b].dim``."""

    factors: tuple

    def __post_init__(self):
        if len(self.factors) == 0:
            raise InputError("a product reference needs at least one factor")
        object.__setattr__(self, "factors", tuple(self.factors))

    @property
    def dim(self) -> int:
        return sum(f.dim for f in self.factors)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, [f.dim for f in self.factors], dim=-1)

    def _concat(self, name: str, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return torch.cat([getattr(f, name)(xb, lv) for f, xb in zip(self.factors, self._split(x))], -1)

    def _block_diag(self, name: str, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        out = torch.zeros(*x.shape, self.dim, dtype=DTYPE)
        start = 0
        for f, xb in zip(self.factors, self._split(x)):
            out[..., start : start + f.dim, start : start + f.dim] = getattr(f, name)(xb, lv)
            start += f.dim
        return out

    # ---- per-point closed forms ---------------------------------------------------------------
    @array_arguments
    def log_prob(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return sum(f.log_prob(xb, lv) for f, xb in zip(self.factors, self._split(x)))

    @array_arguments
    def score(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._concat("score", x, lv)

    @array_arguments
    def posterior_mean(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._concat("posterior_mean", x, lv)

    @array_arguments
    def posterior_cov_diagonal(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``diag Cov[x_0 | x_t]``, (n, d): the blocks' diagonals side by side."""
        return self._concat("posterior_cov_diagonal", x, lv)

    @array_arguments
    def hessian(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._block_diag("hessian", x, lv)

    @array_arguments
    def posterior_cov(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._block_diag("posterior_cov", x, lv)

    @array_arguments
    def hvp(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return torch.cat([f.hvp(xb, vb, lv) for f, xb, vb in zip(self.factors, self._split(x), self._split(v))], -1)

    @array_arguments
    def hessian_trace(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return sum(f.hessian_trace(xb, lv) for f, xb in zip(self.factors, self._split(x)))

    @array_arguments
    def posterior_cov_matvec(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        parts = zip(self.factors, self._split(x), self._split(v))
        return torch.cat([f.posterior_cov_matvec(xb, vb, lv) for f, xb, vb in parts], -1)

    def sample(self, n: int, lv: NoiseLevel | None = None, *, generator=None) -> torch.Tensor:
        return torch.cat([f.sample(n, lv, generator=generator) for f in self.factors], -1)
