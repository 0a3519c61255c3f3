"""Gaussian mixtures ``q_0 = sum_k pi_k N(m_k, S_k)`` and empirical data (``S_k = 0``), in closed form.

Each component covariance is kept in eigen-form ``S_k = U_k diag(lambda_k) U_k^T`` (``U_k = I`` for
diagonal and isotropic components, ``lambda_k >= 0``). At a noise level ``(abar, 1 - abar)`` component k
of ``q_t`` is ``N(sqrt(abar) m_k, V_k)``, ``V_k = U_k diag(nu_k) U_k^T``, ``nu_k = (1 - abar) + abar
lambda_k`` (a sum of positive terms). With ``y_k = x - sqrt(abar) m_k``, the component scores
``s_k = -V_k^{-1} y_k`` and the posterior weights ``w_k(x) = softmax_k(log pi_k + log N_k(x))`` (log
domain) every derivative of ``log q_t`` is a cumulant of the component scores under ``w``
(docs/theory.md section 5.2):

- score ``E_w s``; Hessian ``H = E_w[-V^{-1}] + Cov_w(s)``; ``G = H + I = E_w[U diag(abar (lambda - 1)
  / nu) U^T] + Cov_w(s)`` (no cancellation);
- ``grad^3 log q = kappa_3(s) + 3 Sym Cov_w(-V^{-1}, s)`` (see :meth:`MixtureReference.third_derivative_sq_norm`);
- Tweedie per component: ``E[x_0|x_t, k] = m_k + sqrt(abar) U diag(lambda / nu) U^T y_k``,
  ``Cov[x_0|x_t, k] = U diag(lambda (1 - abar) / nu) U^T``, and by the law of total covariance
  ``Cov[x_0|x_t] = E_w Cov_k + Cov_w(E_k)``.

The exact reverse kernel is again a mixture (:class:`MixtureKernel`): with ``nu'`` the eigenvalues at
level t - 1 (so ``nu_t = alpha nu' + beta``), component k has weight ``w_k(x_t)``, mean
``a_k = (x_t + beta s_k) / sqrt(alpha)`` and covariance ``U_k diag(beta nu' / nu_t) U_k^T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..arrays import array_arguments
from ..errors import InputError
from ..schedules import DTYPE, Grid, NoiseLevel
from ..short_axes import short_sum
from ..stable import logsumexp_last

# Symmetry and weight-sum tolerance: inputs are decimals typed by people or float64 arrays.
_INPUT_TOL = 1e-12
#: Largest coordinate of a component mean: squared distances between components (up to ~1e200),
#: summed over d and divided by the smallest noise variance of a grid, must stay finite in float64
#: (means near 1e308 gave NaN where the answer is +inf).
MAX_COORDINATE = 1e100
#: Smallest normal float64: a smaller component variance has lost its relative precision, and the
#: Cholesky factors built from it fail.
_SMALLEST_VARIANCE = torch.finfo(DTYPE).tiny


@dataclass(frozen=True)
class ComponentCovariances:
    """``U_k diag(values_k) U_k^T`` for k = 1..K; values have shape (..., K, e) with e = 1
    (isotropic) or d; ``rotations`` is (K, d, d) or None (axis-aligned)."""

    dim: int
    rotations: torch.Tensor | None

    def apply(self, values: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``U_k diag(values_k) U_k^T v_k`` for v of shape (..., K, d)."""
        if self.rotations is None:
            return values * v
        # Dense first: values are per level, v per node, so the matrices are few and cheap.
        return torch.einsum("...kij,...kj->...ki", self.dense(values), v)

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Dense (..., K, d, d) matrices (small d only)."""
        full = values.expand(*values.shape[:-1], self.dim)
        if self.rotations is None:
            return torch.diag_embed(full)
        return (self.rotations * full[..., None, :]) @ self.rotations.transpose(-1, -2)

    def diagonal(self, values: torch.Tensor) -> torch.Tensor:
        """Diagonals, shape (..., K, d)."""
        full = values.expand(*values.shape[:-1], self.dim)
        if self.rotations is None:
            return full
        return torch.einsum("kij,...kj->...ki", self.rotations**2, full)

    def logdet(self, values: torch.Tensor) -> torch.Tensor:
        """``log det`` of each component, shape (..., K)."""
        return short_sum(torch.log(values), -1) * (self.dim // values.shape[-1])


@dataclass(frozen=True)
class Posterior:
    """Everything at points x (shape (..., d)) that the closed forms need."""

    log_weights: torch.Tensor  # (..., K) log posterior component weights
    log_prob: torch.Tensor  # (...,) log q_t(x)
    scores: torch.Tensor  # (..., K, d) component scores s_k = -V_k^{-1} y_k
    nu: torch.Tensor  # (..., K, e) eigenvalues of V_k

    @cached_property
    def weights(self) -> torch.Tensor:
        return torch.exp(self.log_weights)

    @cached_property
    def score(self) -> torch.Tensor:
        return short_sum(self.weights[..., None] * self.scores, -2)

    @cached_property
    def centred_scores(self) -> torch.Tensor:
        """``c_k = s_k - E_w s``."""
        return self.scores - self.score[..., None, :]


@dataclass(frozen=True)
class MixtureKernel:
    """A batch of Gaussian mixtures ``sum_k w_k N(means_k, U_k diag(cov_values_k) U_k^T)`` (one per x)."""

    log_weights: torch.Tensor  # (n, K)
    means: torch.Tensor  # (n, K, d)
    cov_values: torch.Tensor  # (K, e)
    covs: ComponentCovariances

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``log p(y_i...)`` under mixture i, y of shape (n, ..., d) (any number of points per mixture)."""
        n, k, d = self.means.shape
        extra = [1] * (y.ndim - 2)
        r = y[..., None, :] - self.means.view(n, *extra, k, d)
        quad = (r * self.covs.apply(1.0 / self.cov_values, r)).sum(-1)
        log_n = -0.5 * (quad + self.covs.logdet(self.cov_values) + d * math.log(2 * math.pi))
        return torch.logsumexp(self.log_weights.view(n, *extra, k) + log_n, -1)

    def mean(self) -> torch.Tensor:
        return (torch.exp(self.log_weights)[..., None] * self.means).sum(-2)

    def cov(self) -> torch.Tensor:
        """Dense covariance ``E_w B_k + Cov_w(a_k)`` (small d)."""
        w = torch.exp(self.log_weights)
        centred = self.means - self.mean()[:, None, :]
        return _total_covariance(w, self.covs.dense(self.cov_values), centred)


def _total_covariance(w: torch.Tensor, within: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``E_w within_k + sum_k w_k c_k c_k^T`` (the law of total covariance), (..., d, d), for weights
    (..., K), matrices (..., K, d, d) and centred vectors (..., K, d); as einsums that map to matmuls
    (a broadcast product summed over the short K axis is several times slower)."""
    return torch.einsum("...k,...kij->...ij", w, within) + torch.einsum("...ki,...kj->...ij", w[..., None] * c, c)


def _weights_checked(weights: torch.Tensor) -> torch.Tensor:
    if weights.ndim != 1 or weights.numel() == 0:
        raise InputError(f"mixture weights must be a non-empty vector, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise InputError("mixture weights must be finite and >= 0")
    total = float(weights.sum())
    if abs(total - 1.0) > _INPUT_TOL:
        raise InputError(f"mixture weights must sum to 1 within 1e-12 (they sum to {total!r}; not renormalised)")
    return weights


@dataclass(frozen=True)
class MixtureReference:
    """``q_0 = sum_k pi_k N(means_k, U_k diag(eigenvalues_k) U_k^T)``; eigenvalues (K, 1) or (K, d),
    all > 0 for a mixture and all 0 for empirical data."""

    weights: torch.Tensor
    means: torch.Tensor
    eigenvalues: torch.Tensor
    covs: ComponentCovariances
    #: Results the path-space engine caches per reference (pathkl.rules.quadrature), not part of its value.
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self):
        _weights_checked(self.weights)
        k = self.weights.numel()
        if self.means.ndim != 2 or self.means.shape[0] != k or self.means.shape[1] == 0:
            raise InputError(f"means must have shape [K={k}, d], got {tuple(self.means.shape)}")
        if not torch.isfinite(self.means).all():
            raise InputError("means contain NaN or inf")
        largest = float(self.means.abs().max())
        if largest > MAX_COORDINATE:
            raise InputError(f"mixture means and data points must be at most {MAX_COORDINATE:g} in magnitude (their "
                             f"squared distances overflow float64 beyond), got {largest:.3g}")
        if self.eigenvalues.shape not in ((k, 1), (k, self.dim)):
            raise InputError(f"component variances must have shape [K, 1] or [K, d], got {tuple(self.eigenvalues.shape)}")
        if not torch.isfinite(self.eigenvalues).all() or (self.eigenvalues < 0).any():
            raise InputError("component variances must be finite and >= 0")

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def from_components(weights, means, *, covs=None, variances=None, stds=None) -> MixtureReference:
        """A mixture with full covariances ``covs`` (K, d, d), diagonal ``variances`` (K, d) or
        isotropic ``stds`` (K,); each must be positive definite (zero variances: :meth:`empirical`).

        Every component is checked, then those of weight exactly 0 are left out: they contribute
        nothing to any density, score or kernel, so this is exact (the weights are never renormalised)."""
        w = torch.as_tensor(weights, dtype=DTYPE)
        _weights_checked(w)
        m = torch.as_tensor(means, dtype=DTYPE)
        if m.ndim != 2 or m.shape[0] != w.numel():
            raise InputError(f"means must have shape [K={w.numel()}, d], got {tuple(m.shape)}")
        d = m.shape[1]
        given = [name for name, v in (("covs", covs), ("variances", variances), ("stds", stds)) if v is not None]
        if len(given) != 1:
            raise InputError("give exactly one of covs (full), variances (diagonal) or stds (isotropic)")
        rotations = None
        if covs is not None:
            s = torch.as_tensor(covs, dtype=DTYPE)
            if s.shape != (w.numel(), d, d):
                raise InputError(f"covs must have shape [K, d, d] = [{w.numel()}, {d}, {d}], got {tuple(s.shape)}")
            if not torch.isfinite(s).all():
                raise InputError("covs contain NaN or inf")
            if ((s - s.transpose(-1, -2)).abs() > _INPUT_TOL * s.abs().amax((-1, -2), keepdim=True)).any():
                raise InputError("a component covariance is not symmetric")
            if (torch.linalg.cholesky_ex(s).info != 0).any():
                raise InputError("a component covariance is not positive definite")
            lam, rotations = torch.linalg.eigh(s)
            what = "component covariance eigenvalues"
        elif variances is not None:
            lam = torch.as_tensor(variances, dtype=DTYPE)
            if lam.shape != (w.numel(), d):
                raise InputError(f"variances must have shape [K, d] = [{w.numel()}, {d}], got {tuple(lam.shape)}")
            what = "component variances"
        else:
            sd = torch.as_tensor(stds, dtype=DTYPE)
            if sd.shape != (w.numel(),):
                raise InputError(f"stds must have shape [K] = [{w.numel()}], got {tuple(sd.shape)}")
            if not torch.isfinite(sd).all() or not (sd > 0).all():
                raise InputError(f"stds must be finite and > 0 (positive definite components), got {sd.tolist()}")
            lam = (sd**2)[:, None]
            what = "component variances (stds squared)"
        if not torch.isfinite(lam).all() or not (lam > 0).all():
            raise InputError(f"{what} must be finite and > 0 (positive definite components), got min "
                             f"{float(lam.min()):.3g}, max {float(lam.max()):.3g}")
        if (lam < _SMALLEST_VARIANCE).any():
            raise InputError(f"{what} must be at least the smallest normal float64 ({_SMALLEST_VARIANCE:.3g}), got "
                             f"{float(lam.min()):.3g}: it has lost its relative precision (rescale the data)")
        return MixtureReference(w, m, lam, ComponentCovariances(d, rotations))._without_zero_weights()

    @staticmethod
    def empirical(points, *, weights=None) -> MixtureReference:
        """Empirical data: N points (N, d), equal weights unless given (zero-variance components);
        points of weight exactly 0 are left out (exact, no renormalisation)."""
        p = torch.as_tensor(points, dtype=DTYPE)
        if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
            raise InputError(f"points must have shape [N, d] with N, d >= 1, got {tuple(p.shape)}")
        w = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=DTYPE) if weights is None else torch.as_tensor(weights, dtype=DTYPE)
        zeros = torch.zeros(p.shape[0], 1, dtype=DTYPE)
        return MixtureReference(_weights_checked(w), p, zeros, ComponentCovariances(p.shape[1], None))._without_zero_weights()

    def _without_zero_weights(self) -> MixtureReference:
        """The same law without its components of weight exactly 0 (self if there are none)."""
        kept = self.weights > 0
        if bool(kept.all()):
            return self
        rotations = None if self.covs.rotations is None else self.covs.rotations[kept]
        return type(self)(self.weights[kept], self.means[kept], self.eigenvalues[kept],
                          ComponentCovariances(self.dim, rotations))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def size(self) -> int:
        """Number of components K."""
        return self.weights.numel()

    @property
    def has_point_masses(self) -> bool:
        """Whether some component is singular (zero variance in some direction; empirical data): then
        ``q(x_0 | x_1)`` has a singular part, so every Gaussian family's step-1 KL is +inf."""
        return bool((self.eigenvalues == 0).any())

    # ---- per-point closed forms ---------------------------------------------------------------
    def marginal_eigenvalues(self, abar, one_minus_abar) -> torch.Tensor:
        """``nu_k = (1 - abar) + abar lambda_k``; abar broadcastable to the batch, result (..., K, e)."""
        abar = torch.as_tensor(abar, dtype=DTYPE)[..., None, None]
        return torch.as_tensor(one_minus_abar, dtype=DTYPE)[..., None, None] + abar * self.eigenvalues

    def posterior(self, x: torch.Tensor, abar, one_minus_abar) -> Posterior:
        """Posterior component weights and scores at x (..., d); abar broadcastable to x.shape[:-1]."""
        abar = torch.as_tensor(abar, dtype=DTYPE)
        nu = self.marginal_eigenvalues(abar, one_minus_abar)
        y = x[..., None, :] - abar.sqrt()[..., None, None] * self.means
        scores = -self.covs.apply(1.0 / nu, y)
        log_n = 0.5 * (short_sum(y * scores, -1) - self.covs.logdet(nu) - self.dim * math.log(2 * math.pi))
        joint = torch.log(self.weights) + log_n
        log_prob = logsumexp_last(joint)
        return Posterior(joint - log_prob[..., None], log_prob, scores, nu)

    def _at(self, x, lv: NoiseLevel) -> Posterior:
        return self.posterior(x, lv.abar, lv.one_minus_abar)

    @array_arguments
    def log_prob(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._at(x, lv).log_prob

    @array_arguments
    def posterior_weights(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``P(component k | x_t = x)``, shape (n, K)."""
        return self._at(x, lv).weights

    @array_arguments
    def score(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._at(x, lv).score

    def excess(self, post: Posterior, abar) -> torch.Tensor:
        """Dense ``G = H + I = E_w[U diag(abar (lambda - 1) / nu) U^T] + Cov_w(s)``, (..., d, d)."""
        abar = torch.as_tensor(abar, dtype=DTYPE)[..., None, None]
        return self._weighted_dense(post, abar * (self.eigenvalues - 1.0) / post.nu)

    def _weighted_dense(self, post: Posterior, values: torch.Tensor) -> torch.Tensor:
        """``E_w[U diag(values) U^T] + Cov_w(s)`` (dense, small d)."""
        w = post.weights
        c = post.centred_scores
        return _total_covariance(w, self.covs.dense(values), c)

    @array_arguments
    def hessian(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        post = self._at(x, lv)
        return self._weighted_dense(post, -1.0 / post.nu)

    @array_arguments
    def hvp(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``H v = -E_w[V^{-1} v] + E_w[c (c . v)]``, O(n K d) (matrix-free)."""
        post = self._at(x, lv)
        w = post.weights
        c = post.centred_scores
        inv_v = self.covs.apply(1.0 / post.nu, v[..., None, :].expand_as(c))
        return (w[..., None] * (-inv_v + c * (c * v[..., None, :]).sum(-1, keepdim=True))).sum(-2)

    def excess_trace(self, post: Posterior, abar) -> tuple[torch.Tensor, torch.Tensor]:
        """The two parts of ``tr G``, ``E_w tr[U diag(abar (lambda - 1) / nu) U^T]`` and ``E_w |c_k|^2``,
        each (...,): :meth:`excess`'s trace without the d x d matrices. Apart, because they can cancel
        (at high noise, to 1/36 of either), and the rounding of their sum is that of the parts."""
        abar = torch.as_tensor(abar, dtype=DTYPE)[..., None, None]
        return self._trace_parts(post, abar * (self.eigenvalues - 1.0) / post.nu)

    def _trace_parts(self, post: Posterior, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tr(E_w[U diag(values) U^T])`` and ``tr Cov_w(s) = E_w |c_k|^2``, O(n K d)."""
        within = short_sum(post.weights * short_sum(values, -1) * (self.dim // values.shape[-1]), -1)
        return within, short_sum(post.weights * short_sum(post.centred_scores**2, -1), -1)

    @array_arguments
    def hessian_trace(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``tr H = -E_w tr V_k^{-1} + E_w |c_k|^2`` per row, O(n K d) (no d x d matrix)."""
        post = self._at(x, lv)
        return sum(self._trace_parts(post, -1.0 / post.nu))

    def component_means(self, post: Posterior, abar) -> torch.Tensor:
        """``E[x_0 | x_t, k] = m_k + sqrt(abar) S_k V_k^{-1} y_k = m_k - sqrt(abar) S_k s_k``, (..., K, d)."""
        root = torch.as_tensor(abar, dtype=DTYPE).sqrt()[..., None, None]
        return self.means - root * self.covs.apply(self.eigenvalues.expand_as(post.nu), post.scores)

    @array_arguments
    def posterior_mean(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        post = self._at(x, lv)
        return (post.weights[..., None] * self.component_means(post, lv.abar)).sum(-2)

    def _posterior_parts(self, post: Posterior, abar, one_minus_abar):
        """Weights, centred component means and the eigenvalues ``lambda (1 - abar) / nu`` of Cov_k."""
        means = self.component_means(post, abar)
        w = post.weights
        centred = means - short_sum(w[..., None] * means, -2)[..., None, :]
        within = self.eigenvalues * torch.as_tensor(one_minus_abar, dtype=DTYPE)[..., None, None] / post.nu
        return w, centred, within

    def posterior_cov_dense(self, post: Posterior, abar, one_minus_abar) -> torch.Tensor:
        """``Cov[x_0 | x_t] = E_w Cov_k + Cov_w(E_k)`` at the points of ``post`` (dense, small d)."""
        w, centred, within = self._posterior_parts(post, abar, one_minus_abar)
        return _total_covariance(w, self.covs.dense(within), centred)

    @array_arguments
    def posterior_cov(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self.posterior_cov_dense(self._at(x, lv), lv.abar, lv.one_minus_abar)

    @array_arguments
    def posterior_cov_diagonal(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        w, centred, within = self._posterior_parts(self._at(x, lv), lv.abar, lv.one_minus_abar)
        return (w[..., None] * (self.covs.diagonal(within) + centred**2)).sum(-2)

    @array_arguments
    def posterior_cov_matvec(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        w, centred, within = self._posterior_parts(self._at(x, lv), lv.abar, lv.one_minus_abar)
        inner = self.covs.apply(within, v[..., None, :].expand_as(centred))
        return (w[..., None] * (inner + centred * (centred * v[..., None, :]).sum(-1, keepdim=True))).sum(-2)

    def sample(self, n: int, lv: NoiseLevel | None = None, *, generator=None) -> torch.Tensor:
        lv = lv or NoiseLevel(torch.tensor(1.0, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE))
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=DTYPE, generator=generator)
        scale = self.marginal_eigenvalues(lv.abar, lv.one_minus_abar)[k].sqrt()  # (n, e)
        noise = scale * z if self.covs.rotations is None else (self.covs.rotations[k] @ (scale * z)[..., None])[..., 0]
        return lv.abar.sqrt() * self.means[k] + noise

    @array_arguments
    def reverse_kernel(self, x: torch.Tensor, grid: Grid, t: int) -> MixtureKernel:
        """The exact ``q(x_{t-1} | x_t = x)`` as a mixture (module docstring)."""
        lv = grid.level(t)
        post = self._at(x, lv)
        beta, alpha = grid.beta[t - 1], grid.alpha[t - 1]
        prev = grid.level(t - 1)
        nu_prev = self.marginal_eigenvalues(prev.abar, prev.one_minus_abar)
        means = (x[..., None, :] + beta * post.scores) / alpha.sqrt()
        return MixtureKernel(post.log_weights, means, beta * nu_prev / post.nu, self.covs)
