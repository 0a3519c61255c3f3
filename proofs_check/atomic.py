"""A symbolic prior with K atoms observed through ``x~ = a x + sigma eps`` (the Tweedie setting).

Any prior is a limit of discrete ones and the Tweedie identities are linear in the prior, so the
nonlinear part of each identity (ratios of mixtures) is what a K-atom prior has to exercise.  The
unnormalised posterior weight of atom k is ``e_k = w_k exp(-||x~ - a x_k||^2 / (2 sigma^2))``; it
is a positive symbol whose derivative is known exactly,
``d e_k / d x~_j = -(x~_j - a x_kj) e_k / sigma^2``, so every derivative of
``q(x~) = sum_k e_k`` is a rational function of symbols and identities reduce to ``cancel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import sympy as sp


@dataclass(frozen=True)
class AtomicPrior:
    """Symbols: observation ``x`` (d,), ``atoms`` (K x d), weights ``e`` (K,), scale ``a``,
    noise variance ``var`` (``sigma^2``)."""

    x: tuple[sp.Symbol, ...]
    atoms: tuple[tuple[sp.Symbol, ...], ...]
    e: tuple[sp.Symbol, ...]
    a: sp.Symbol
    var: sp.Symbol

    @property
    def dim(self) -> int:
        return len(self.x)

    def diff(self, expr: sp.Expr, j: int) -> sp.Expr:
        """Total derivative of ``expr`` with respect to ``x~_j`` (chain rule through every e_k)."""
        total = sp.diff(expr, self.x[j])
        for e_k, atom in zip(self.e, self.atoms):
            total += sp.diff(expr, e_k) * (-(self.x[j] - self.a * atom[j]) * e_k / self.var)
        return total

    @property
    def density(self) -> sp.Expr:
        """``q(x~)`` up to a constant factor."""
        return sp.Add(*self.e)

    @cached_property
    def score(self) -> sp.Matrix:
        """``grad log q(x~)``."""
        q = self.density
        return sp.Matrix([self.diff(q, j) / q for j in range(self.dim)])

    @cached_property
    def hessian(self) -> sp.Matrix:
        """``hess log q(x~)``."""
        s = self.score
        return sp.Matrix(self.dim, self.dim, lambda i, j: self.diff(s[i], j))

    @cached_property
    def posterior_mean(self) -> sp.Matrix:
        """``E[x | x~]`` computed directly from Bayes' rule."""
        q = self.density
        return sp.Matrix([sum(e * at[i] for e, at in zip(self.e, self.atoms)) / q
                          for i in range(self.dim)])

    @cached_property
    def posterior_second_moment(self) -> sp.Matrix:
        """``E[x x^T | x~]`` computed directly from Bayes' rule."""
        q = self.density
        return sp.Matrix(self.dim, self.dim, lambda i, j: sum(
            e * at[i] * at[j] for e, at in zip(self.e, self.atoms)) / q)

    @cached_property
    def posterior_cov(self) -> sp.Matrix:
        """``Cov[x | x~]`` computed directly from Bayes' rule."""
        m = self.posterior_mean
        return self.posterior_second_moment - m * m.T


@cache
def atomic_prior(dim: int, atoms: int) -> AtomicPrior:
    """The symbolic K-atom prior in dimension ``dim`` (cached: the symbols are reused)."""
    x = sp.symbols(f"xt0:{dim}", real=True)
    pts = tuple(sp.symbols(f"y{k}_0:{dim}", real=True) for k in range(atoms))
    e = sp.symbols(f"e0:{atoms}", positive=True)
    a, var = sp.symbols("a sigma2", positive=True)
    return AtomicPrior(x, pts, e, a, var)


def is_zero(expr: sp.Expr) -> bool:
    """Exact test that a rational function of the symbols is identically zero."""
    return sp.cancel(sp.together(expr)) == 0
