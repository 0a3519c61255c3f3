"""The covariance-family registry: each family is one entry that declares everything about itself.

A family (:class:`pathkl.covariances.Family`) replaces the optimal reverse covariance
``Sigma*_t = beta_t I + (beta_t^2 / alpha_t) G = beta~_t I + gamma_t^2 C`` by its own ``Sigma_t``. Its
entry says how it forms ``Sigma_t`` for the exact path KL (its relative eigenvalues, pathkl.covariances),
how it draws its noise in a sampler (pathkl.sampling, with the notation of pathkl.matvecs), its legend
label and plot style (pathkl.plotting), and its rate, which may depend on the reference
(:meth:`~pathkl.covariances.Family.rate`):

==============  ==============================================  =====================================
name            Sigma_t (KL and sampler)                        rate: steps = Theta(T^-order)
==============  ==============================================  =====================================
beta            ``beta_t I`` (DDPM only)                        1 (0 on N(m, I): G = 0)
beta_tilde      ``beta~_t I`` (``s_t^2 I`` for DDIM)            does not vanish (step 1 is +inf)
analytic        ``(E_{q_t} tr Sigma*_t / d) I``                 1 (exact on isotropic Gaussians)
diag            ``diag(Sigma*_t(x))``                           1; 2 where the Hessian is diagonal
full            ``Sigma*_t(x)`` (dense Cholesky in a sampler)   2 (exact on Gaussian data)
rademacher:M    diagonal from M probes, floored at ``s_t^2``    sampling only (no exact KL)
lanczos:k       Lanczos Gaussian sampler, k products            sampling only (no exact KL)
==============  ==============================================  =====================================

"Exact" means ``Sigma_t = Sigma*_t``: the family then has ``full``'s rate (:data:`MATCHED`), whose
leading term, the reverse kernel's negentropy, is 0 for Gaussian data. The sized families are written
``kind:N`` and parsed by :func:`parse_family`; :func:`get_family` gives the families with an exact KL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .bases import DenseBasis, StandardBasis
from .covariances import MATCHED, NO_RATE, Family, Rate, ReverseStep
from .errors import InputError
from .lanczos import lanczos_sampler
from .matvecs import rademacher_diagonal
from .palette import OKABE_ITO
from .pathspace import expected_trace_excess
from .references import GaussianReference, MixtureReference
from .references.product import blocks

# ---- Sigma_t for the exact KL: relative eigenvalues e (pathkl.covariances) -----------------------


def _beta(step):
    return (step.beta / step.alpha) * step.g.eigvals()


def _beta_ratios(step):
    return step.sigma_star.eigvals() / step.beta


def _beta_tilde(step):
    return (step.gamma2 / step.beta_tilde) * step.c.eigvals()


def _analytic_variance(step):
    """``sigma_t^2 = E tr Sigma*_t / d = beta + (beta^2 / alpha) mean_g``; a positive mean where mean_g
    is G's own (the sum would cancel where Sigma* << beta, e.g. the first step for tiny eigenvalues)."""
    if step.mean_g is None:
        return step.sigma_star.mean_trace()[..., None]
    return step.beta + step.curvature_scale * step.mean_g


def _analytic(step):
    # e = (Sigma* - sigma^2) / sigma^2 = k (G - mean_g) / sigma^2, k = beta^2 / alpha
    centred = step.g.centred_eigvals() if step.mean_g is None else step.g.eigvals() - step.mean_g
    return centred.mul_(step.curvature_scale / _analytic_variance(step))


def _analytic_ratios(step):
    return step.sigma_star.eigvals() / _analytic_variance(step)


def _diag(step):
    # Sigma_t = diag(Sigma*) = k S, k = beta^2 / alpha: e = eig(S^{-1/2} offdiag(G) S^{-1/2}), with S a
    # positive form where the reference has Sigma* (beta / k + diag(G) cancels where Sigma* << beta).
    if step.g.is_diagonal:  # diag(Sigma*) = Sigma*
        return None
    k = step.curvature_scale
    scale = step.g.diagonal() + step.beta / k if step.sigma_star is None else step.sigma_star.diagonal() / k
    return step.g.scaled_offdiagonal_eigvals(scale)


def _diag_ratios(step):
    return step.sigma_star.diagonal_ratio_eigvals()


def _full(step):
    return None


# ---- defects ||D||_F^2 of the order-1 families (their leading constants) --------------------------


def _beta_defect(g, mean_g):
    return g.spectral_sum(g.eigvals() ** 2)


def _analytic_defect(g, mean_g):
    return g.spectral_sum((g.eigvals() - mean_g) ** 2)


def _offdiagonal_sq_norm(g, mean_g):
    ones = torch.ones_like(g.diagonal())
    # ||offdiag(G)||_F^2 = sum of squared eigenvalues of offdiag(G) (scale S = I).
    return g.spectral_sum(g.scaled_offdiagonal_eigvals(ones) ** 2)


_ORDER_ONE = 0.25  # lim T steps = (1/4) int beta^2 E ||D||_F^2 (the per-step KL ~ (1/4) ||Sigma*/Sigma - I||_F^2)

# ---- where a reference makes Sigma_t = Sigma*_t (from its structure, not tested numerically) ------


def _gaussian_eigenvalues(reference) -> torch.Tensor | None:
    """All eigenvalues of a reference whose blocks are all Gaussian, else None."""
    parts = blocks(reference)
    if not all(isinstance(b, GaussianReference) for b in parts):
        return None
    return torch.cat([b.eigenvalues.flatten() for b in parts])


def _standard_normal_covariance(reference) -> bool:
    """``beta_t I = Sigma*_t`` iff ``G = 0``: Gaussian data of covariance I."""
    eigenvalues = _gaussian_eigenvalues(reference)
    return eigenvalues is not None and bool((eigenvalues == 1).all())


def _isotropic_gaussian(reference) -> bool:
    """``sigma_t^2 I = Sigma*_t`` iff ``Sigma*_t`` is one multiple of I at every x: isotropic Gaussian data."""
    eigenvalues = _gaussian_eigenvalues(reference)
    return eigenvalues is not None and bool((eigenvalues == eigenvalues[0]).all())


def _diagonal_hessian(reference) -> bool:
    """``diag(Sigma*_t) = Sigma*_t`` iff ``hess log q_t`` is diagonal at every x and t: every block 1-D,
    a Gaussian with axis-aligned eigenvectors, or a mixture that factorises over the coordinates."""
    return all(b.dim == 1 or _axis_aligned_gaussian(b) or _factorised_mixture(b) for b in blocks(reference))


def _axis_aligned_gaussian(block) -> bool:
    if not isinstance(block, GaussianReference):
        return False
    if isinstance(block.basis, StandardBasis):
        return True
    return isinstance(block.basis, DenseBasis) and bool(((block.basis.matrix != 0).sum(0) == 1).all())


def _factorised_mixture(block) -> bool:
    """A mixture with axis-aligned components that is the product of its coordinate marginals: its
    components are every combination of per-coordinate (mean, variance) atoms, each weighted by the
    product of the atoms' marginal weights (to 1e-12 relative, the rounding of those products)."""
    if not isinstance(block, MixtureReference) or block.covs.rotations is not None:
        return False
    variances = block.eigenvalues.expand(-1, block.dim)
    atoms, weight = [], torch.ones_like(block.weights)
    for i in range(block.dim):
        _, index = torch.unique(torch.stack([block.means[:, i], variances[:, i]], 1), dim=0, return_inverse=True)
        marginal = torch.zeros(int(index.max()) + 1, dtype=block.weights.dtype).index_add_(0, index, block.weights)
        atoms.append(index)
        weight = weight * marginal[index]
    combos = torch.stack(atoms, 1)
    count = torch.prod(torch.tensor([int(a.max()) + 1 for a in atoms]))
    distinct = torch.unique(combos, dim=0).shape[0] == combos.shape[0] == int(count)
    return distinct and bool(torch.allclose(weight, block.weights, rtol=1e-12, atol=0))


# ---- noise in a sampler: N(0, Sigma_t(x)) from standard normals z (pathkl.sampling) --------------


def _expected_posterior_trace(reference, step: ReverseStep) -> float:
    """``E_{q_t} tr C / d`` from the reference's exact ``E tr G / d`` (``G = H + I``), through Tweedie
    ``C = ((1 - abar)/abar)(I + (1 - abar) H)``: ``tr C / d = (1 - abar)(1 + (1 - abar) g / abar)``;
    or, where the reference has one, its ``posterior_trace_estimate`` (Monte Carlo: empirical data at
    image d, a network, a learned ``analytic`` head) floored at 0 (Analytic-DPM's lower bound; its
    upper bound ``sigma^2 / abar`` holds by construction)."""
    own = getattr(reference, "posterior_trace_estimate", None)
    if own is not None:
        return max(own(step.level).value, 0.0)
    mean_g = float(expected_trace_excess(reference, step.level)) / reference.dim
    abar, one_minus = float(step.level.abar), float(step.level.one_minus_abar)
    return one_minus * (1.0 + one_minus * mean_g / abar)


def _posterior_diagonal(reference, x: torch.Tensor, step: ReverseStep) -> torch.Tensor:
    own = getattr(reference, "posterior_cov_diagonal", None)
    if own is not None:
        return own(x, step.level)
    return torch.diagonal(reference.posterior_cov(x, step.level), dim1=-2, dim2=-1)


def _beta_noise(family, reference, x, step, matvec, z, generator):
    return step.beta**0.5 * z


def _beta_tilde_noise(family, reference, x, step, matvec, z, generator):
    return step.s2**0.5 * z


def _analytic_noise(family, reference, x, step, matvec, z, generator):
    return (step.s2 + step.lam**2 * _expected_posterior_trace(reference, step)) ** 0.5 * z


def _diag_noise(family, reference, x, step, matvec, z, generator):
    return (step.s2 + step.lam**2 * _posterior_diagonal(reference, x, step)).sqrt() * z


def _full_noise(family, reference, x, step, matvec, z, generator):
    cov = step.lam**2 * reference.posterior_cov(x, step.level)
    cov = cov + step.s2 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.einsum("nij,nj->ni", torch.linalg.cholesky(cov), z)


def _rademacher_noise(family, reference, x, step, matvec, z, generator):
    estimate = rademacher_diagonal(matvec, tuple(x.shape), family.size, generator=generator,
                                   dtype=x.dtype, device=x.device)
    return estimate.diagonal.clamp_min(step.s2).sqrt() * z


def _lanczos_noise(family, reference, x, step, matvec, z, generator):
    return lanczos_sampler(family.size)(matvec, z).sample


# ---- the registry ---------------------------------------------------------------------------------

#: The families with an exact path KL, by name, in the order the CLI lists them.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("beta", source="Ho et al. 2020: Sigma_t = beta_t I", label=r"$\beta_t I$",
               colour=OKABE_ITO[0], marker="o", draw=_beta_noise, kl_eigvals=_beta, kl_ratios=_beta_ratios,
               general_rate=Rate(1, _ORDER_ONE, _beta_defect), optimal_on=_standard_normal_covariance,
               ddpm_only=True),
        Family("beta_tilde", source="Ho et al. 2020: Sigma_t = beta~_t I (infinite at t = 1)",
               label=r"$\tilde\beta_t I$", colour=OKABE_ITO[5], marker="v", draw=_beta_tilde_noise,
               kl_eigvals=_beta_tilde, general_rate=NO_RATE, first_step=2, uses_c=True),
        Family("analytic", source="Bao et al. 2022 (Analytic-DPM): sigma_t^2 = E tr Sigma*_t / d",
               label=r"analytic $\sigma_t^2 I$", colour=OKABE_ITO[1], marker="s", draw=_analytic_noise,
               kl_eigvals=_analytic, kl_ratios=_analytic_ratios, general_rate=Rate(1, _ORDER_ONE, _analytic_defect),
               optimal_on=_isotropic_gaussian, uses_mean_g=True),
        Family("diag", source="Ou et al. 2025 (OCM): Sigma_t = diag(Sigma*_t)", label="diag",
               colour=OKABE_ITO[2], marker="^", draw=_diag_noise, kl_eigvals=_diag, kl_ratios=_diag_ratios,
               general_rate=Rate(1, _ORDER_ONE, _offdiagonal_sq_norm), optimal_on=_diagonal_hessian),
        Family("full", source="full covariance matching: Sigma_t = Sigma*_t", label="full",
               colour=OKABE_ITO[3], marker="D", draw=_full_noise, kl_eigvals=_full, general_rate=MATCHED,
               optimal=True),
    )
}


@dataclass(frozen=True)
class SizedFamily:
    """A sampling-only family written ``kind:N``: N (``letter``, at least ``smallest``) is what each
    reverse step spends, ``meaning``; ``family`` is the entry, completed by :meth:`sized`;
    ``position(N)`` places size N on the figures' shade scale (1..8, pathkl.plotting)."""

    letter: str
    smallest: int
    meaning: str
    family: Family
    position: Callable[[int], int]

    @property
    def kind(self) -> str:
        return self.family.name

    @property
    def pattern(self) -> str:
        """``kind:letter``, as the CLI lists it."""
        return f"{self.kind}:{self.letter}"

    def sized(self, size: int) -> Family:
        """The family of size ``size``: its name, legend label and shade (1..8, dark to light)."""
        return replace(self.family, name=f"{self.kind}:{size}", label=f"{self.kind} ${self.letter}={size}$",
                       size=size, shade=min(max(self.position(size), 1), 8))

    def parse(self, size: str, name: str) -> Family:
        """The family named ``name`` = ``kind:size``, or :class:`InputError` naming what N must be."""
        if not (size.isdigit() and int(size) >= self.smallest):
            raise InputError(f"{name!r}: {self.pattern} needs {self.letter}, the number of {self.meaning}, "
                             f"to be an integer >= {self.smallest}")
        return self.sized(int(size))


#: The sampling-only families, by kind (each a random or probe-dependent kernel: no exact path KL).
SIZED_FAMILIES: dict[str, SizedFamily] = {
    s.kind: s
    for s in (
        SizedFamily("M", 2, "Rademacher probes (two or more give a standard error)",
                    Family("rademacher", source="Ou et al. 2025 (OCM), eq. 9: diag(Sigma*_t) from M Rademacher probes",
                           label="rademacher", colour=OKABE_ITO[4], marker="P", draw=_rademacher_noise),
                    int.bit_length),  # about log2 M + 1
        SizedFamily("k", 1, "Lanczos steps (covariance-vector products per reverse step)",
                    Family("lanczos", source="Akhtar et al. 2026 (LGS): the Lanczos Gaussian sampler, k products",
                           label="lanczos", colour=OKABE_ITO[7], marker="X", draw=_lanczos_noise),
                    int),
    )
}

#: Every family a sampler takes, as the CLI lists them.
FAMILY_NAMES = (*FAMILIES, *(s.pattern for s in SIZED_FAMILIES.values()))


def parse_family(name: str) -> Family:
    """Any family by name: one of :data:`FAMILIES`, or ``rademacher:M`` / ``lanczos:k`` with their size."""
    if name in FAMILIES:
        return FAMILIES[name]
    kind, _, size = name.partition(":")
    if kind in SIZED_FAMILIES:
        return SIZED_FAMILIES[kind].parse(size, name)
    raise InputError(f"unknown covariance family {name!r}; choose from {', '.join(FAMILY_NAMES)}")


def get_family(name: str) -> Family:
    """The family with an exact path KL registered as ``name``."""
    if name in FAMILIES:
        return FAMILIES[name]
    if name.partition(":")[0] in SIZED_FAMILIES:
        raise InputError(
            f"{name!r} draws a random, non-Gaussian or probe-dependent reverse kernel, so it has no "
            f"exact path KL; measure it with 'pathkl sample --cov {name}'"
        )
    raise InputError(f"unknown covariance family {name!r}; choose from {', '.join(FAMILIES)}")
