"""Gaussian data ``x_0 ~ N(m, S)``, ``S = U diag(lambda) U^T``: every quantity in closed form
(docs/theory.md section 5.1).

At a noise level ``(abar, 1 - abar)`` the marginal is ``q_t = N(sqrt(abar) m, U diag(nu) U^T)`` with
``nu = (1 - abar) + abar lambda`` (a sum of positive terms), and

- score ``-U diag(1/nu) U^T (x - sqrt(abar) m)``, Hessian ``H = -U diag(1/nu) U^T``;
- Tweedie: ``E[x_0|x_t] = m + U diag(sqrt(abar) lambda / nu) U^T (x - sqrt(abar) m)``,
  ``Cov[x_0|x_t] = U diag(c) U^T`` with ``c = lambda (1 - abar) / nu``;
- ``G = H + I = U diag(g) U^T`` with ``g = abar (lambda - 1) / nu`` (the deviation from N(0, I)).

Every reverse kernel ``q(x_{t-1}|x_t)`` is Gaussian, so each step of the path-space KL is a KL between
two Gaussians with the same mean, evaluated from the relative eigenvalues (pathkl.covariances). With
``rho_t = (1 - abar_t) / abar_t`` and ``y = 1 / (lambda + rho_t) = abar_t / nu_t`` the per-step
eigenvalues are formed without subtracting nearly equal numbers (``lambda - 1`` and
``lambda - lambda_min`` are differences of exact data, rounded once):

- ``g = (lambda - 1) y``, ``c = lambda / (1 + lambda / rho_t)``;
- ``Sigma*_t = beta nu_{t-1} / nu_t = (beta / alpha)(lambda + rho_{t-1}) y`` (positive, also where
  ``beta + (beta^2/alpha) g`` cancels: the first step for ``lambda << beta_1``);
- ``g_i - mean(g) = (1 / abar) y_i mean_j (lambda_i - lambda_j) y_j
  = (1 / abar) y_i (delta_i Y_0 - Y_1)``, ``delta = lambda - lambda_min >= 0``, with ``Y_0, Y_1, Y_lambda``
  the means of ``y, delta y, lambda y`` (positive sums), from ``g_i - g_j = (lambda_i - lambda_j) y_i y_j
  / abar``: exact also for nearly equal eigenvalues, where ``g_i - mean(g)`` would cancel;
- ``mean(Sigma*_t) = (beta / alpha)(Y_lambda + rho_{t-1} Y_0)``.

Eigenvalues must lie in [1e-300, 1e100]: below, float64 is subnormal; within, no intermediate
overflows for grids of up to 10^8 steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from ..arrays import array_arguments
from ..bases import Basis, DenseBasis, FourierBasis, StandardBasis
from ..covariances import ReverseStep
from ..errors import InputError
from ..operators import Spectral
from ..schedules import DTYPE, Grid, NoiseLevel
from ..stable import u_minus_log1p
from ..threads import one_thread

# Elements per chunk of steps: each torch call is amortised over many elements, each (chunk, d)
# float64 temporary is 1 MiB; far smaller chunks spend their time in per-call overhead (3x slower at
# one step of d = 12288 per chunk), far larger ones stream through memory. The temporaries live in
# one workspace reused from chunk to chunk (_Steps): a few fresh ones of this size alive at once are
# trimmed back to the OS when freed and page-faulted in again on the next chunk (10-20x slower).
_CHUNK_ELEMENTS = 1 << 17
#: Eigenvalues the closed forms carry to rounding (module docstring).
EIGENVALUE_RANGE = (1e-300, 1e100)


def _finite(name: str, t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or inf")
    return t


@dataclass(frozen=True)
class GaussianKernel:
    """A batch of Gaussians ``N(mean_i, U diag(eigenvalues) U^T)`` sharing one covariance."""

    mean: torch.Tensor  # (n, d)
    eigenvalues: torch.Tensor  # (d,)
    basis: Basis

    def covariance(self) -> torch.Tensor:
        """The shared covariance as a dense (d, d) matrix (small d only)."""
        return self.basis.dense(self.eigenvalues)

    def sample(self, *, generator=None) -> torch.Tensor:
        """One draw per mean."""
        z = torch.randn(self.mean.shape, dtype=DTYPE, generator=generator)
        return self.mean + self.basis.apply(self.eigenvalues.sqrt(), z)


@dataclass(frozen=True)
class GaussianReference:
    """``N(mean, U diag(eigenvalues) U^T)`` with ``U`` given by ``basis``."""

    mean: torch.Tensor
    eigenvalues: torch.Tensor
    basis: Basis

    def __post_init__(self):
        if self.eigenvalues.ndim != 1 or self.mean.shape != self.eigenvalues.shape:
            raise InputError(
                f"mean and eigenvalues must be vectors of one length, got {tuple(self.mean.shape)} "
                f"and {tuple(self.eigenvalues.shape)}"
            )
        _finite("the mean", self.mean)
        _finite("the eigenvalues", self.eigenvalues)
        if not (self.eigenvalues > 0).all():
            raise InputError("covariance eigenvalues must be > 0 (the covariance must be positive definite)")
        low, high = EIGENVALUE_RANGE
        if not ((self.eigenvalues >= low) & (self.eigenvalues <= high)).all():
            raise InputError(
                f"covariance eigenvalues must lie in [{low:g}, {high:g}] for float64 to carry the path KL, "
                f"got {float(self.eigenvalues.min()):.3g} .. {float(self.eigenvalues.max()):.3g}"
            )
        if self.basis.dim != self.dim:
            raise InputError(f"basis dimension {self.basis.dim} does not match d = {self.dim}")

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def from_eigenvalues(eigenvalues, *, mean=None, basis=None) -> GaussianReference:
        """From eigenvalues, optionally with an orthonormal basis (columns); axis-aligned otherwise."""
        lam = torch.as_tensor(eigenvalues, dtype=DTYPE).flatten()
        m = torch.zeros_like(lam) if mean is None else torch.as_tensor(mean, dtype=DTYPE).flatten()
        b = StandardBasis(lam.numel()) if basis is None else DenseBasis(torch.as_tensor(basis, dtype=DTYPE))
        return GaussianReference(m, lam, b)

    @staticmethod
    def from_covariance(cov, *, mean=None) -> GaussianReference:
        """From a dense covariance: checked finite, symmetric (to 1e-12 relative) and positive definite."""
        s = _finite("the covariance", torch.as_tensor(cov, dtype=DTYPE))
        if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
            raise InputError(f"a covariance must be a non-empty square matrix, got shape {tuple(s.shape)}")
        if (s - s.T).abs().max() > 1e-12 * s.abs().max():
            raise InputError("the covariance is not symmetric")
        if torch.linalg.cholesky_ex(s).info != 0:
            raise InputError("the covariance is not positive definite")
        lam, u = torch.linalg.eigh(s)
        if not (lam > 0).all():
            raise InputError("the covariance is not positive definite")
        m = torch.zeros_like(lam) if mean is None else torch.as_tensor(mean, dtype=DTYPE).flatten()
        return GaussianReference(m, lam, DenseBasis(u))

    @staticmethod
    def image(spectrum, *, mean=None) -> GaussianReference:
        """Stationary image covariance over C x H x W: ``spectrum[c, kh, kw]`` are its eigenvalues in
        the 2-D Fourier basis of each channel (must be symmetric under k -> -k)."""
        lam = _finite("the spectrum", torch.as_tensor(spectrum, dtype=DTYPE))
        if lam.ndim != 3:
            raise InputError(f"an image spectrum must have shape [C, H, W], got {tuple(lam.shape)}")
        mirrored = torch.roll(torch.flip(lam, dims=(1, 2)), shifts=(1, 1), dims=(1, 2))
        if (lam - mirrored).abs().max() > 1e-12 * lam.abs().max():
            raise InputError("an image spectrum must be symmetric under k -> -k (a real covariance)")
        flat = lam.flatten()
        m = torch.zeros_like(flat) if mean is None else torch.as_tensor(mean, dtype=DTYPE).expand(flat.shape).clone()
        return GaussianReference(m, flat, FourierBasis(tuple(lam.shape)))

    @property
    def dim(self) -> int:
        return self.eigenvalues.numel()

    # ---- marginal and posterior at one noise level ---------------------------------------------
    def marginal_eigenvalues(self, lv: NoiseLevel) -> torch.Tensor:
        """``nu = (1 - abar) + abar lambda``: the eigenvalues of Cov(x_t)."""
        return lv.one_minus_abar + lv.abar * self.eigenvalues

    def _centred(self, x, lv):
        return x - lv.abar.sqrt() * self.mean

    @array_arguments
    def log_prob(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        nu = self.marginal_eigenvalues(lv)
        y = self._centred(x, lv)
        quad = (y * self.basis.apply(1.0 / nu, y)).sum(-1)
        return -0.5 * (quad + torch.log(2 * math.pi * nu).sum())

    @array_arguments
    def score(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return -self.basis.apply(1.0 / self.marginal_eigenvalues(lv), self._centred(x, lv))

    @array_arguments
    def hvp(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return -self.basis.apply(1.0 / self.marginal_eigenvalues(lv), v)

    @array_arguments
    def hessian_trace(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``tr H = -sum_i 1 / nu_i`` (the same at every row of x)."""
        return -(1.0 / self.marginal_eigenvalues(lv)).sum().expand(x.shape[:-1])

    @array_arguments
    def hessian(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        h = -self.basis.dense(1.0 / self.marginal_eigenvalues(lv))
        return h.expand(x.shape[0], -1, -1)

    @array_arguments
    def posterior_mean(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        gain = lv.abar.sqrt() * self.eigenvalues / self.marginal_eigenvalues(lv)
        return self.mean + self.basis.apply(gain, self._centred(x, lv))

    def posterior_eigenvalues(self, lv: NoiseLevel) -> torch.Tensor:
        """``c = lambda (1 - abar) / nu``: the eigenvalues of Cov[x_0 | x_t] (same for every x_t)."""
        return _posterior(self.eigenvalues, lv.abar, lv.one_minus_abar)

    def excess_eigenvalues(self, lv: NoiseLevel) -> torch.Tensor:
        """``g = abar (lambda - 1) / nu``: the eigenvalues of ``G = H + I``."""
        return _excess(self.eigenvalues, lv.abar, lv.one_minus_abar)

    @array_arguments
    def posterior_cov(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self.basis.dense(self.posterior_eigenvalues(lv)).expand(x.shape[0], -1, -1)

    @array_arguments
    def posterior_cov_diagonal(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``diag Cov[x_0 | x_t]`` (n, d) without forming the matrix (O(d) for the Fourier basis)."""
        return self.basis.diagonal(self.posterior_eigenvalues(lv)).expand(x.shape[0], -1)

    @array_arguments
    def posterior_cov_matvec(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self.basis.apply(self.posterior_eigenvalues(lv), v)

    def sample(self, n: int, lv: NoiseLevel | None = None, *, generator=None) -> torch.Tensor:
        lv = lv or NoiseLevel(torch.tensor(1.0, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE))
        z = torch.randn(n, self.dim, dtype=DTYPE, generator=generator)
        return lv.abar.sqrt() * self.mean + self.basis.apply(self.marginal_eigenvalues(lv).sqrt(), z)

    @array_arguments
    def reverse_kernel(self, x: torch.Tensor, grid: Grid, t: int) -> GaussianKernel:
        """The exact ``q(x_{t-1} | x_t = x) = N((x + beta_t score)/sqrt(alpha_t), Sigma*_t)`` with
        ``Sigma*_t = U diag(beta_t nu_{t-1} / nu_t) U^T`` (``(beta/alpha)(1 - beta/nu_t)`` rewritten with
        ``nu_t - beta_t = alpha_t nu_{t-1}``, so no subtraction)."""
        lv, prev = grid.level(t), grid.level(t - 1)
        beta, alpha = grid.beta[t - 1], grid.alpha[t - 1]
        mean = (x + beta * self.score(x, lv)) / alpha.sqrt()
        cov = beta * self.marginal_eigenvalues(prev) / self.marginal_eigenvalues(lv)
        return GaussianKernel(mean, cov, self.basis)

    # ---- what the path-space KL needs ----------------------------------------------------------
    def terminal_kl(self, lv: NoiseLevel) -> float:
        """``KL(q_T || N(0, I)) = (1/2) sum phi(nu - 1) + abar |m|^2 / 2``, with ``nu - 1 = abar (lambda - 1)``."""
        nu_minus_one = lv.abar * (self.eigenvalues - 1.0)
        return float(0.5 * u_minus_log1p(nu_minus_one).sum() + 0.5 * lv.abar * (self.mean**2).sum())

    def step_kls(self, grid: Grid, family, *, mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Per-step ``KL(q(.|x_t) || p(.|x_t))`` for t = 1..T (the same for every x_t: Gaussian kernels
        with equal means), from the family's relative eigenvalues; exact, so no variances.
        ``mean_g`` (T,) replaces ``E tr G / d`` when this is one block of a product (``analytic``).

        Repeated eigenvalues are merged first (``Basis.compress``), so the cost per step is the number of
        distinct eigenvalues, not d. Steps go in chunks, each a batch of reverse steps whose operators
        form only the eigenvalues the family reads (:class:`_Steps`)."""
        abar, one_minus_abar = grid.abar, grid.one_minus_abar
        prev, level = NoiseLevel(abar[:-1], one_minus_abar[:-1]), NoiseLevel(abar[1:], one_minus_abar[1:])
        return self.transition_kls(prev, level, grid.log_alpha, family, mean_g=mean_g), None

    def transition_kls(self, prev: NoiseLevel, level: NoiseLevel, log_alpha: torch.Tensor, family, *,
                       mean_g: torch.Tensor | None = None) -> torch.Tensor:
        """``KL(q(.|x_t) || p(.|x_t))`` of n independent steps, from the levels ``prev`` to ``level``
        (each of shape (n,)) with ``log alpha = log_alpha`` (n,): :meth:`step_kls` for steps that need
        not form one chain (each step's KL depends on its two levels only), one compressed spectrum
        for all of them."""
        spectrum = _Spectrum(*self.basis.compress(self.eigenvalues))
        chunk = max(1, _CHUNK_ELEMENTS // spectrum.values.numel())
        abar, one_minus_abar = level.abar[:, None], level.one_minus_abar[:, None]
        rho_prev = (prev.one_minus_abar / prev.abar)[:, None]
        scalars = ReverseStep.transition_scalars(prev.abar[:, None], prev.one_minus_abar[:, None], one_minus_abar,
                                                 log_alpha[:, None])
        beta, alpha, beta_tilde, gamma2 = scalars
        columns = (abar, one_minus_abar, rho_prev, one_minus_abar / abar, beta / alpha, beta, alpha, beta_tilde, gamma2)
        given = itertools.repeat(None) if mean_g is None else mean_g[:, None].split(chunk)
        workspace = torch.empty(_Steps.SLOTS + 3, chunk, spectrum.values.numel(), dtype=DTYPE)
        out = []
        with one_thread():
            for rows, own in zip(zip(*(x.split(chunk) for x in columns)), given):
                *slots, s, s2, phi = workspace[:, : rows[0].shape[0]]
                step = _Steps(spectrum, *rows, work=slots).reverse_step(own)
                out.append(family.gaussian_step_kl(step, work=(s, s2, phi)))
        return torch.cat(out)

    def expected_excess_functional(self, fn, lv: NoiseLevel, *, mean_g=None) -> float:
        """``E_{q_t} fn(G, E tr G / d)`` (``mean_g`` overrides ``E tr G / d``); G does not depend on x_t."""
        values, multiplicities, structure = self.basis.compress(self.eigenvalues)
        g = Spectral(_excess(values, lv.abar, lv.one_minus_abar), structure, multiplicities)
        return float(fn(g, g.mean_trace() if mean_g is None else torch.as_tensor(mean_g, dtype=DTYPE)))

    def expected_trace_excess(self, lv: NoiseLevel) -> torch.Tensor:
        """``E_{q_t} tr G = sum_i abar (lambda_i - 1) / nu_i``; abar of any shape (...), result (...)."""
        abar, one_minus_abar = torch.as_tensor(lv.abar)[..., None], torch.as_tensor(lv.one_minus_abar)[..., None]
        return _excess(self.eigenvalues, abar, one_minus_abar).sum(-1)

    def expected_third_derivative_sq_norm(self, lv: NoiseLevel) -> float:
        """``E ||grad^3 log q_t||_F^2 = 0``: a Gaussian log-density is quadratic."""
        return 0.0


def _excess(eigenvalues: torch.Tensor, abar: torch.Tensor, one_minus_abar: torch.Tensor) -> torch.Tensor:
    """``g = abar (lambda - 1) / nu = (lambda - 1) / (lambda + rho)``, ``rho = (1 - abar) / abar``."""
    return (eigenvalues - 1.0) / (eigenvalues + one_minus_abar / abar)


def _posterior(eigenvalues: torch.Tensor, abar: torch.Tensor, one_minus_abar: torch.Tensor) -> torch.Tensor:
    """``c = lambda (1 - abar) / nu = lambda / (1 + lambda / rho)`` (0 at abar = 1, lambda at abar = 0)."""
    return eigenvalues / torch.mul(eigenvalues, abar / one_minus_abar).add_(1.0)


class _Spectrum:
    """A Gaussian block's compressed spectrum (:meth:`Basis.compress`) and the data of the module
    docstring's forms that do not depend on the step: ``lambda - 1``, ``delta = lambda - lambda_min``,
    and the rows of weights that turn ``y`` into ``(Y_0, Y_1, Y_lambda)`` by one matrix product."""

    def __init__(self, values: torch.Tensor, multiplicities: torch.Tensor | None, structure):
        self.values, self.multiplicities, self.structure = values, multiplicities, structure
        self.minus_one = values - 1.0
        self.delta = values - values.min()
        weights = torch.ones_like(values) if multiplicities is None else multiplicities
        self.moment_weights = torch.stack([weights, weights * self.delta, weights * values]) / weights.sum()

    def operator(self, values: Callable[[], torch.Tensor], rows: int, **exact) -> _Deferred:
        return _Deferred(values, self.structure, self.multiplicities, rows, **exact)


class _Steps:
    """The reverse steps of one chunk of steps t of a Gaussian block: scalars of shape (n, 1), and the
    eigenvalues of the module docstring, each formed when a family first asks for it, in its own slot
    of ``work`` (SLOTS tensors of shape (n, d))."""

    SLOTS = 6
    _SHIFTED, _Y, _EXCESS, _POSTERIOR, _CENTRED, _SIGMA_STAR = range(SLOTS)

    def __init__(self, spectrum: _Spectrum, abar, one_minus_abar, rho_prev, rho, beta_over_alpha,
                 beta, alpha, beta_tilde, gamma2, *, work):
        self.spectrum, self.abar, self.one_minus_abar, self.work = spectrum, abar, one_minus_abar, work
        self.rho_prev, self.rho, self.beta_over_alpha = rho_prev, rho, beta_over_alpha
        self.scalars = (beta, alpha, beta_tilde, gamma2)

    def reverse_step(self, mean_g: torch.Tensor | None) -> ReverseStep:
        """``mean_g`` None: G's own mean (the block alone), so ``analytic`` takes the exact forms."""
        s, rows = self.spectrum, self.abar.shape[0]
        g = s.operator(self.excess, rows, centred=self.centred_excess)
        c = s.operator(self.posterior, rows)
        sigma_star = s.operator(self.sigma_star, rows, mean=self.mean_sigma_star)
        return ReverseStep(*self.scalars, g, c, mean_g, sigma_star)

    @cached_property
    def shifted(self) -> torch.Tensor:
        """``lambda + rho_t = nu_t / abar_t``."""
        return torch.add(self.spectrum.values, self.rho, out=self.work[self._SHIFTED])

    @cached_property
    def y(self) -> torch.Tensor:
        return torch.reciprocal(self.shifted, out=self.work[self._Y])

    @cached_property
    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Y_0, Y_1, Y_lambda)``, each (n, 1)."""
        return (self.spectrum.moment_weights @ self.y.T)[..., None].unbind(0)

    def excess(self) -> torch.Tensor:
        return torch.div(self.spectrum.minus_one, self.shifted, out=self.work[self._EXCESS])

    def posterior(self) -> torch.Tensor:
        values, out = self.spectrum.values, self.work[self._POSTERIOR]
        return torch.div(values, torch.mul(values, self.abar / self.one_minus_abar, out=out).add_(1.0), out=out)

    def centred_excess(self) -> torch.Tensor:
        y0, y1, _ = self.moments
        out = torch.mul(self.spectrum.delta, y0 / self.abar, out=self.work[self._CENTRED])
        return out.sub_(y1 / self.abar).mul_(self.y)

    def sigma_star(self) -> torch.Tensor:
        out = torch.add(self.spectrum.values, self.rho_prev, out=self.work[self._SIGMA_STAR])
        return out.mul_(self.y).mul_(self.beta_over_alpha)

    def mean_sigma_star(self) -> torch.Tensor:
        y0, _, y_lambda = self.moments
        return (self.beta_over_alpha * (y_lambda + self.rho_prev * y0))[:, 0]


class _Deferred(Spectral):
    """A batch of ``rows`` :class:`Spectral` operators whose eigenvalues are formed by ``values()`` on
    first use, with the exact forms of their mean eigenvalue and of the deviations from it where
    they are known."""

    def __init__(self, values: Callable[[], torch.Tensor], basis, multiplicities, rows: int, *,
                 mean: Callable[[], torch.Tensor] | None = None, centred: Callable[[], torch.Tensor] | None = None):
        for name, value in (("basis", basis), ("multiplicities", multiplicities), ("_form", values),
                            ("_rows", rows), ("_mean", mean), ("_centred", centred)):
            object.__setattr__(self, name, value)  # a frozen dataclass's fields, set once

    @property
    def batch_shape(self):
        return torch.Size([self._rows])

    @cached_property
    def values(self) -> torch.Tensor:
        return self._form()

    def mean_trace(self):
        return super().mean_trace() if self._mean is None else self._mean()

    def centred_eigvals(self):
        return super().centred_eigvals() if self._centred is None else self._centred()
