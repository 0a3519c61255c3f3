"""The symmetric Lanczos process, Krylov matrix functions and the Lanczos Gaussian sampler (LGS).

For a symmetric positive semi-definite operator ``A`` given only through products ``v -> A v`` and a
starting vector ``z``, k Lanczos steps build an orthonormal basis ``V_k = [v_1 .. v_k]`` of the
Krylov space ``K_k(A, z)`` with ``v_1 = z / ||z||`` and the tridiagonal ``T_k = V_k^T A V_k``.
Then ``f(A) z ~ ||z|| V_k f(T_k) e_1``, which is exact for every polynomial ``f`` of degree < k.

The Lanczos Gaussian sampler (LGS paper, section 4) takes ``z ~ N(0, I)`` and returns
``y_k = ||z|| V_k T_k^{1/2} e_1 ~ A^{1/2} z``, a draw from ``N(0, A)`` up to the Krylov error, using
k operator products. Its a priori error bound (docs/theory.md section 8.2) is

    ||y_k - A^{1/2} z|| <= 2 ||z|| E_{k-1}(sqrt; [lambda_min, lambda_max]),

with ``E_n`` the best uniform error of degree-n polynomials on the spectrum interval, because
``p(A) z = ||z|| V_k p(T_k) e_1`` for deg p <= k - 1 and the Ritz values lie in that interval.
:func:`sqrt_error_bound` bounds ``E_n`` explicitly by the binomial series of ``sqrt`` on the
interval (its Chebyshev coefficients are at most ``2 s |binom(1/2, j)| r^j``), giving decay like
``n^{-3/2} rho^{-n}`` with ``rho = (sqrt(kappa) + 1) / (sqrt(kappa) - 1)``, the Bernstein ellipse
through the branch point 0 (Trefethen, *Approximation Theory and Approximation Practice*, ch. 8).

Every function is batched over n starting vectors (shape ``(n, d)``) and runs on the device and
dtype of ``z``; the operator may differ per row (e.g. ``Sigma*_t(x_i)`` for each point ``x_i``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .arrays import array_arguments
from .errors import InputError

Matvec = Callable[[torch.Tensor], torch.Tensor]
"""Row-wise operator products: ``(n, d) -> (n, d)``, row i is ``A_i v_i``."""


@dataclass(frozen=True)
class LanczosDecomposition:
    """Result of k Lanczos steps on n starting vectors.

    ``basis`` (n, k, d): rows of ``V_k^T``; ``diag`` (n, k) and ``offdiag`` (n, k - 1): the
    tridiagonal ``T_k``; ``norm`` (n,): ``||z||``; ``size`` (n,): the number of valid steps, below k
    when the Krylov space became invariant (breakdown; the result is then exact). Past ``size`` the
    basis rows are zero, the off-diagonals zero and the diagonal a copy of ``diag[:, 0]``, so that
    ``T_k`` is block diagonal and the padding never reaches ``f(T_k) e_1``.
    """

    basis: torch.Tensor
    diag: torch.Tensor
    offdiag: torch.Tensor
    norm: torch.Tensor
    size: torch.Tensor

    @property
    def steps(self) -> int:
        """k, the number of steps requested."""
        return self.diag.shape[1]

    def tridiagonal(self, k: int | None = None) -> torch.Tensor:
        """The leading k x k block of ``T_k`` (all of it by default), shape (n, k, k)."""
        k = self.steps if k is None else k
        off = self.offdiag[:, : k - 1]
        return torch.diag_embed(self.diag[:, :k]) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def _check_inputs(z: torch.Tensor, k: int) -> None:
    if z.dim() != 2:
        raise InputError(f"starting vectors must have shape (n, d), got {tuple(z.shape)}")
    if not isinstance(k, int) or k < 1:
        raise InputError(f"the number of Lanczos steps k must be a positive integer, got {k!r}")
    if k > z.shape[1]:
        raise InputError(f"k = {k} Lanczos steps exceed the dimension d = {z.shape[1]}")


_DGKS = 1.0 / math.sqrt(2.0)
"""Second-pass threshold: a Gram-Schmidt pass that keeps at least this fraction of the norm leaves a
vector orthogonal to rounding (Daniel, Gragg, Kaufman & Stewart 1976; Parlett, *The Symmetric
Eigenvalue Problem*, section 6.9, "twice is enough")."""


def _project_out(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """One classical Gram-Schmidt pass: ``w - V^T (V w)`` row-wise, ``basis`` (n, j, d), ``w`` (n, d).

    The coefficients are formed as ``w^T V^T`` (a row times a transposed block): on CPU that kernel
    is several times faster than ``V w`` (a block times a column) for the same product."""
    row = w[:, None, :]
    return torch.baddbmm(row, torch.bmm(row, basis.transpose(1, 2)), basis, alpha=-1.0)[:, 0]


def _reorthogonalise(w: torch.Tensor, basis: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full reorthogonalisation of the three-term residual ``w`` against all previous basis vectors;
    returns it and its norm.

    The recurrence has already removed ``w``'s large components (along ``v_j``, ``v_{j-1}``), so one
    classical Gram-Schmidt pass leaves it orthogonal to ``V_j`` to rounding unless that pass cancels
    most of its norm; a second pass runs only then (for every row, if any active row needs it).
    """
    before = torch.linalg.vector_norm(w, dim=1)
    w = _project_out(w, basis)
    after = torch.linalg.vector_norm(w, dim=1)
    if bool((active & (after < _DGKS * before)).any()):
        w = _project_out(w, basis)
        after = torch.linalg.vector_norm(w, dim=1)
    return w, after


@array_arguments
def lanczos(
    matvec: Matvec,
    z: torch.Tensor,
    k: int,
    *,
    reortho: bool = True,
    breakdown_tol: float = 1e-10,
) -> LanczosDecomposition:
    """k steps of the symmetric Lanczos process on ``A`` from each row of ``z``, with k products.

    Three-term recurrence ``beta_j v_{j+1} = A v_j - alpha_j v_j - beta_{j-1} v_{j-1}``; with
    ``reortho`` (default) each new vector is also orthogonalised against all previous ones by one
    classical Gram-Schmidt pass, and by a second where the first cancelled more than ``1 - 1/sqrt(2)``
    of its norm (the DGKS criterion: "twice is enough"); either way ``V_k^T V_k = I`` to rounding.
    Without it orthogonality is lost as Ritz values converge (Paige), which duplicates them
    ("ghosts") and degrades ``f(T_k)``. The basis is preallocated and every step is a handful of
    batched kernels (``bmm``/``baddbmm`` over the rows); the only host synchronisation per step is
    the second-pass test.

    A row breaks down when ``beta_j <= breakdown_tol * max(|alpha_i|, beta_i, i <= j)``: its Krylov
    space is then invariant (to that relative tolerance) and further steps are skipped for it.
    A zero starting vector breaks down at once (``size`` 0, every ``f(A) z`` is 0).
    Raises :class:`InputError` unless ``z`` has shape (n, d) and ``1 <= k <= d``.
    """
    _check_inputs(z, k)
    n, d = z.shape
    norm = torch.linalg.vector_norm(z, dim=1)
    active = norm > 0
    # Stored step-major, so that each v_j is contiguous; ``basis`` is the (n, k, d) view. Every
    # vector is written below (zero past a breakdown).
    vectors = z.new_empty(k, n, d)
    basis = vectors.transpose(0, 1)
    diag = z.new_zeros(n, k)
    offdiag = z.new_zeros(n, k - 1)
    size = torch.zeros(n, dtype=torch.long, device=z.device)
    scale = z.new_zeros(n)
    torch.mul(z, _safe_inverse(norm, active)[:, None], out=vectors[0])
    recurrence = z.new_zeros(n, 1, 2)  # (beta_{j-1}, alpha_j): the coefficients on (v_{j-1}, v_j)
    for j in range(k):
        v = vectors[j]
        size += active.long()
        w = matvec(v)
        alpha = torch.linalg.vecdot(v, w)
        diag[:, j] = alpha
        if j == k - 1:
            break
        recurrence[:, 0, 1] = alpha
        window = min(j, 1) + 1  # (v_{j-1}, v_j); only v_0 at j = 0
        w = torch.baddbmm(w[:, None, :], recurrence[:, :, 2 - window :], basis[:, j + 1 - window : j + 1],
                          alpha=-1.0)[:, 0]
        if reortho:
            w, beta = _reorthogonalise(w, basis[:, : j + 1], active)
        else:
            beta = torch.linalg.vector_norm(w, dim=1)
        scale = torch.maximum(scale, torch.maximum(alpha.abs(), beta))
        active = active & (beta > breakdown_tol * scale)
        beta = torch.where(active, beta, 0.0)
        offdiag[:, j] = beta
        recurrence[:, 0, 0] = beta
        torch.mul(w, _safe_inverse(beta, active)[:, None], out=vectors[j + 1])
    pad = torch.arange(k, device=z.device)[None, :] >= size[:, None]
    diag = torch.where(pad, diag[:, :1], diag)
    return LanczosDecomposition(basis, diag, offdiag, norm, size)


def _safe_inverse(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``1 / x`` where ``keep``, else 0 (rows that broke down get a zero vector, not 0/0)."""
    return torch.where(keep, 1.0 / torch.where(keep, x, 1.0), 0.0)


def krylov_coefficients(
    decomposition: LanczosDecomposition,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    k: int | None = None,
) -> torch.Tensor:
    """``||z|| f(T_k) e_1`` (n, k) from the eigendecomposition ``T_k = Q diag(theta) Q^T``:
    ``f(T_k) e_1 = Q (f(theta) * Q[0, :])``; ``f`` acts elementwise on the Ritz values ``theta``.
    With ``k`` below the number of steps, uses the leading k x k block (the k-step approximation)."""
    k = decomposition.steps if k is None else k
    theta, q = torch.linalg.eigh(decomposition.tridiagonal(k))
    return decomposition.norm[:, None] * torch.einsum("nij,nj->ni", q, f(theta) * q[:, 0, :])


def krylov_matfun(
    decomposition: LanczosDecomposition,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    k: int | None = None,
) -> torch.Tensor:
    """``||z|| V_k f(T_k) e_1`` (n, d), the Krylov approximation of ``f(A) z`` (see
    :func:`krylov_coefficients`)."""
    k = decomposition.steps if k is None else k
    return _combine(krylov_coefficients(decomposition, f, k=k), decomposition.basis[:, :k])


def _combine(c: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``V_k c`` row-wise: coefficients ``c`` (n, k), ``basis`` (n, k, d) -> (n, d)."""
    return torch.bmm(c[:, None, :], basis)[:, 0]


@array_arguments
def lanczos_matfun(
    matvec: Matvec,
    z: torch.Tensor,
    k: int,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    reortho: bool = True,
) -> torch.Tensor:
    """Approximate ``f(A) z`` row-wise with k Lanczos steps (k products with ``A``)."""
    return krylov_matfun(lanczos(matvec, z, k, reortho=reortho), f)


def _sqrt_nonnegative(theta: torch.Tensor) -> torch.Tensor:
    # Ritz values of a PSD operator are >= 0; rounding may push the smallest a few ulps below.
    return torch.sqrt(theta.clamp_min(0.0))


@dataclass(frozen=True)
class LanczosSample:
    """One LGS draw per row: ``sample`` (n, d) ``~ A^{1/2} z``.

    ``error_estimate`` (n,): the a posteriori estimate ``||y_k - y_{k-1}|| / ||y_k||``. By the
    triangle inequality it lies within ``||y_k - A^{1/2} z|| / ||y_k||`` of the relative error of
    ``y_{k-1}``, so under geometric convergence it over-estimates the error of ``y_k`` by about the
    inverse rate (conservative). It costs no extra product and no O(d) work: with an orthonormal
    ``V_k`` both norms are norms of k-vectors of coefficients (without reorthogonalisation that
    identity, hence the estimate, is approximate). It is 1 for k = 1 (``y_0 = 0``) and 0 for rows
    that broke down (exact). ``size`` (n,): valid Lanczos steps per row.
    """

    sample: torch.Tensor
    error_estimate: torch.Tensor
    size: torch.Tensor


def lanczos_sampler(k: int, *, reortho: bool = True) -> Callable[[Matvec, torch.Tensor], LanczosSample]:
    """Configure the Lanczos Gaussian sampler with k steps; returns ``sample(matvec, z)``.

    ``sample(matvec, z)`` runs k Lanczos steps on the covariance ``A`` (through ``matvec``) from each
    row of ``z ~ N(0, I)`` and returns ``y_k = ||z|| V_k T_k^{1/2} e_1``, which is distributed as
    ``N(0, A)`` up to the Krylov error bounded by :func:`sqrt_error_bound`.
    """
    if not isinstance(k, int) or k < 1:
        raise InputError(f"the number of Lanczos steps k must be a positive integer, got {k!r}")

    @array_arguments
    def sample(matvec: Matvec, z: torch.Tensor) -> LanczosSample:
        decomposition = lanczos(matvec, z, k, reortho=reortho)
        c = krylov_coefficients(decomposition, _sqrt_nonnegative)
        c_prev = torch.zeros_like(c)
        if k > 1:
            c_prev[:, : k - 1] = krylov_coefficients(decomposition, _sqrt_nonnegative, k=k - 1)
        y = _combine(c, decomposition.basis)
        c_norm = torch.linalg.vector_norm(c, dim=1)
        change = torch.linalg.vector_norm(c - c_prev, dim=1)
        estimate = torch.where(c_norm > 0, change / torch.where(c_norm > 0, c_norm, 1.0), 0.0)
        return LanczosSample(y, estimate, decomposition.size)

    return sample


def convergence_rate(lam_min: float, lam_max: float) -> float:
    """Predicted geometric rate ``1 / rho = (sqrt(kappa) - 1) / (sqrt(kappa) + 1)`` per Lanczos step.

    ``rho`` is the largest Bernstein ellipse (foci ``lam_min``, ``lam_max``) on which ``sqrt`` is
    analytic: it passes through the branch point 0. Requires ``0 < lam_min <= lam_max``.
    """
    _check_interval(lam_min, lam_max)
    root_kappa = math.sqrt(lam_max / lam_min)
    return (root_kappa - 1.0) / (root_kappa + 1.0)


def _check_interval(lam_min: float, lam_max: float) -> None:
    if not (0.0 < lam_min <= lam_max < math.inf):
        raise InputError(f"need 0 < lambda_min <= lambda_max < inf, got [{lam_min}, {lam_max}]")


def sqrt_error_bound(k: int, lam_min: float, lam_max: float) -> float:
    """A priori bound ``B_k`` with ``||y_k - A^{1/2} z|| <= B_k ||z||`` for spectrum in the interval.

    ``B_k = 2 E_{k-1}`` with ``E_n`` the best uniform error of degree-n polynomials for ``sqrt`` on
    ``[a, b] = [lam_min, lam_max]``. On ``lambda = (a + b)/2 + (b - a)/2 cos(theta)`` one has exactly
    ``sqrt(lambda) = s |1 + r e^{i theta}|`` with ``s = (sqrt(a) + sqrt(b)) / 2`` and
    ``r = 1 / rho = (sqrt(b) - sqrt(a)) / (sqrt(b) + sqrt(a))``; expanding both square roots in
    binomial series gives the Chebyshev coefficients ``c_j = 2 s r^j sum_l b_l b_{l+j} r^{2l}``,
    ``b_m = binom(1/2, m)``, whose ``l >= 1`` terms have the sign opposite to the ``l = 0`` term and a
    smaller sum, so ``|c_j| <= 2 s |b_j| r^j``. Chebyshev truncation then gives
    ``E_n <= sum_{j > n} |c_j| <= 2 s sum_{j > n} |b_j| r^j`` (terms past ``_TAIL_TERMS`` bounded by
    a geometric series); also ``E_0 = s r`` exactly (the best constant). The bound decays like
    ``n^{-3/2} rho^{-n}``. Divide by ``sqrt(lam_min)`` to bound the relative error
    ``||y_k - A^{1/2} z|| / ||A^{1/2} z||``.
    """
    _check_interval(lam_min, lam_max)
    if not isinstance(k, int) or k < 1:
        raise InputError(f"the number of Lanczos steps k must be a positive integer, got {k!r}")
    if lam_min == lam_max:
        return 0.0
    s = 0.5 * (math.sqrt(lam_min) + math.sqrt(lam_max))
    r = convergence_rate(lam_min, lam_max)
    return 2.0 * min(s * r, 2.0 * s * _binomial_tail(k - 1, r))


_TAIL_TERMS = 20000


def _binomial_tail(n: int, r: float) -> float:
    """Upper bound on ``sum_{j > n} |binom(1/2, j)| r^j`` for ``0 < r < 1`` (|b_j| decreases in j)."""
    j = np.arange(n + 1, n + 1 + _TAIL_TERMS, dtype=np.float64)
    log_b = math.lgamma(n + 0.5) - math.lgamma(n + 2) - math.log(2.0 * math.sqrt(math.pi))  # |b_{n+1}|
    log_terms = log_b + np.concatenate(([0.0], np.cumsum(np.log((j[:-1] - 0.5) / (j[:-1] + 1.0))))) + j * math.log(r)
    terms = np.exp(log_terms)
    return float(terms.sum() + terms[-1] * r / (1.0 - r))
