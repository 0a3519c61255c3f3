"""Path-space KL for mixture references by deterministic quadrature (d <= 3), DESIGN.md sections 2-3.

One step's KL at a point ``x = x_t`` splits exactly (the model mean is exact and ``E_q log N`` only sees
q's first two moments):

    KL(q(.|x) || N(mu*, Sigma_t)) = J(x) + KL(N(mu*, Sigma*(x)) || N(mu*, Sigma_t(x))),

``J(x) = KL(q(.|x) || N(mu*(x), Sigma*(x)))`` the negentropy of the reverse kernel (the same for every
covariance family, so it is computed once per grid and cached) and the second term the family's
Gaussian step KL (pathkl.covariances). ``full`` is ``E J`` alone.

J in whitened coordinates. With ``Sigma* = beta (I + k G) = beta Lt Lt^T`` (``k = beta / alpha``) the
kernel component k, ``N(a_k, B_k)``, becomes ``N(zeta_k, I - R_k)`` with (module
pathkl.references.mixture for ``a_k``, ``B_k``)

    zeta_k = sqrt(k) Lt^{-1} (s_k - E_w s),   R_k = k Lt^{-1} (G - G_k) Lt^{-T},

``G_k = U_k diag(abar (lambda_k - 1) / nu_k) U_k^T``: both formed from O(1) differences, never from
nearly equal covariances. The density ratio against N(0, I) is ``rho = 1 + eps``,
``eps(z) = sum_k w_k expm1(l_k(z))``, ``l_k`` a quadratic in z, and (:func:`whitened_kl`)

    J = E_{N(0,I)} psi(eps)            (psi(e) = (1 + e) log1p(e) - e >= 0)      "N-form"
      = E_q log rho = sum_k w_k [log w_k + KL(N(zeta_k, I - R_k) || N(0, I)) + E_{N_k} excess_k]  "q-form",

``excess_k = log rho - log w_k - l_k >= 0`` (the closed-form KL takes the quadratic part of log rho, so
the rule only sees the switching between modes; the earlier ``phi(1/rho - 1)`` integrand grew like
``exp(+z^2)`` in each narrow component's tails and converged to only ~1e-3 at the first step of T = 8). The N-form is used where the kernel is nearly
Gaussian (eps nearly polynomial: Gauss-Hermite is all but exact), the q-form where it is not (its
nodes follow each component, so separated modes are integrated where their mass is).

The outer expectation over ``x_t ~ q_t = sum_j pi_j N(sqrt(abar) m_j, V_j)`` is taken in each
component's own coordinates, by Gauss-Hermite or, where the posterior weights switch sharply, by a
lattice (:class:`Quadrature`); the fine rule pairs each lattice with a shifted copy for an
a-posteriori error estimate and refines to it. Accuracy is shown by those estimates, by node
refinement and by the entropy chain rule (:func:`negentropy_chain_rule`), an independent route
(tests/test_mixture.py, tests/test_mixture_accuracy.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .covariances import ReverseStep
from .errors import InputError
from .operators import Dense
from .references.product import blocks, map_blocks
from .schedules import DTYPE, Grid, NoiseLevel
from .stable import one_plus_e_log_one_plus_e_minus_e, u_minus_log1p

#: Largest dimension handled by quadrature.
MAX_QUADRATURE_DIM = 3
# Points whose negentropy is certified below this (absolute) are skipped: see _negentropy_bound.
_SKIP_BELOW = 1e-24
# Points per batch in the inner quadrature (memory: points * K * nodes * d doubles).
_BATCH_ELEMENTS = 1 << 22
# Outer ball radius: the standard normal density there is exp(-R^2 / 2) = 1e-18 of its peak.
_RADIUS = math.sqrt(2.0 * math.log(1e18))
# Largest lattice (nodes per component) the fine rule may build: ~1 GB of work arrays per step.
_MAX_LATTICE = 4e5
# Posterior log-odds beyond this are not a switch worth resolving (weight ratio e^-40).
_LOG_ODDS_SEEN = 40.0


@dataclass(frozen=True)
class Quadrature:
    """The rules of the engine.

    Outer, ``E_{x_t ~ q_t}``, in each component's coordinates ``x = sqrt(abar) m_k + V_k^{1/2} xi``:
    where the posterior weights switch sharply, the trapezoid rule on the lattice ``h Z^d`` inside
    the ball ``|xi| <= 9.1`` (weights ``exp(-|xi|^2 / 2)``, normalised), elsewhere Gauss-Hermite with
    ``smooth`` nodes per dimension. The lattice converges like ``exp(-2 pi a / h)`` for an integrand
    analytic in a strip of half-width ``a``, and ``a ~ 1 / S``, ``S`` the largest ``|V_c^{1/2} (s_j -
    s_l)|`` (the gradient in xi of the log-odds ``log w_j / w_l``) over the coarse lattice of each
    component c where both weights exceed ``e^-40``. So at each level ``h = min(coarse, resolution /
    S)``, rounded down to ``coarse * 2^(-i/4)`` so that steps share lattices, and Gauss-Hermite where
    ``S <= smooth_below``. Gauss-Hermite has no such control: at the low-noise steps of the rotated
    mixture it moved by 1e-2 between 32 and 64 nodes, where the lattice converges geometrically.

    Inner, J: Gauss-Hermite where the kernel is nearly Gaussian (N-form: every ``|zeta_k| <= 1`` and
    ``||R_k||_F <= near_gaussian``), with ``inner`` nodes per dimension where both are at most
    ``near_gaussian / 2`` and ``inner_wide`` (None: ``inner``) above; ``separated`` nodes where it is not (q-form),
    module docstring. The N-form's integrand narrows to width ``sqrt(1 - r)`` for each eigenvalue r
    of ``R_k``: at T = 16 (rotated mixture, step 4) the N-form up to ``||R_k||_F = 1`` with 12 nodes
    was off by 2e-5, with 48 by 2e-7.

    A-posteriori control (``tolerance > 0``): every outer rule is a pair, the lattice with its copy
    shifted by ``h/2`` in every coordinate (Gauss-Hermite: ``smooth`` with ``3 smooth / 2`` nodes).
    The value is the pair's mean and the estimate half their difference: the shift flips the sign of
    the lattice's odd aliasing terms, the leading error of either rule, which cancel in the mean.
    Steps whose estimate exceeds ``tolerance`` times their value are refined by half-octaves
    (``h -> h / sqrt 2``; Gauss-Hermite -> lattice at ``coarse``) until it does, two refinements in a
    row fail to halve it (the inner rule's error, which outer nodes cannot remove: T = 4, step 1 of
    the rotated mixture stalls near 1e-5) or the lattice would not fit in memory; the value with the
    best estimate is kept and the estimate reported as it stands. At T = 16 (rotated mixture) the
    a-priori spacings already meet 1e-9 (estimates <= 2e-11); what the estimates caught there was an
    inner rule too coarse for the N-form, whose error made J(x) rough in x.
    """

    resolution: float = 2.0
    coarse: float = 0.3
    smooth_below: float = 1.0
    smooth: int = 24
    inner: int = 12
    inner_wide: int | None = None
    separated: int = 48
    near_gaussian: float = 1.0
    tolerance: float = 0.0

    @property
    def paired(self) -> bool:
        """Whether rules come in pairs with an a-posteriori error estimate (``tolerance > 0``)."""
        return self.tolerance > 0

    @staticmethod
    def hermite(outer: int, *, inner: int, separated: int) -> Quadrature:
        """Gauss-Hermite everywhere with ``outer`` nodes per dimension (no lattice)."""
        return Quadrature(smooth_below=math.inf, smooth=outer, inner=inner, separated=separated)


#: The accurate rule: lattice where the posterior weights switch sharply, Gauss-Hermite elsewhere,
#: paired, each step refined to an a-posteriori estimate of 1e-9 relative. Inner rules converged on
#: the rotated mixture from T = 16 on: against inner 48, separated 128 and a smaller near_gaussian,
#: no step of T = 16 moves by more than 4e-11 (T = 1024: 1e-11). ~1e3 times the cost of FAST at the
#: low-noise steps.
FINE = Quadrature(inner_wide=36, separated=96, near_gaussian=0.5, tolerance=1e-9)
#: Gauss-Hermite everywhere (14 outer, 6 inner, 12 separated nodes): the default in d = 2, 3 and for
#: ``pathkl rates``. Its per-step errors reach 1e-2 where the posterior weights switch sharply, and
#: the rotated mixture's path KLs are off by up to 0.5% (its T^p steps against FINE's predicted
#: constants): enough for the slopes, not for digits.
FAST = Quadrature.hermite(14, inner=6, separated=12)
#: One dimension: the accurate rule is cheap (< 1e-10 relative at T = 8 to 1000, tests/test_mixture_accuracy.py).
FINE_1D = Quadrature(resolution=0.7, coarse=0.15, smooth=96, inner=48, separated=160)
QUADRATURES = {"fast": FAST, "fine": FINE}


def default_quadrature(d: int) -> Quadrature:
    """The default rule for dimension d: :data:`FINE_1D` in one dimension, :data:`FAST` above."""
    return FINE_1D if d == 1 else FAST


def quadrature_of(reference) -> Quadrature:
    """The rule a mixture reference asks for (its ``quadrature`` field), else the default."""
    return getattr(reference, "quadrature", None) or default_quadrature(reference.dim)


def leading_quadrature(reference) -> Quadrature:
    """The rule for the leading-constant integrands (no inner integral, so the accurate rule is
    cheap): the reference's own if set, else :data:`FINE` (:data:`FINE_1D` in one dimension). With
    :data:`FAST` the rotated mixture's predicted constants move by 0.3% (full) and 0.4% (diag), a
    bias the measured constants of a FAST ladder share."""
    return getattr(reference, "quadrature", None) or (FINE_1D if reference.dim == 1 else FINE)


def _has_rule_choice(block) -> bool:
    from .references import MixtureReference

    return isinstance(block, MixtureReference) and 2 <= block.dim <= MAX_QUADRATURE_DIM


def has_rule_choice(reference) -> bool:
    """Whether ``reference`` has a mixture block of dimension 2 or 3 (where fast and fine differ)."""
    return any(_has_rule_choice(b) for b in blocks(reference))


def with_quadrature(reference, quad: Quadrature | None):
    """``reference`` with every mixture block of dimension 2 or 3 set to ``quad`` (None: unchanged)."""
    if quad is None:
        return reference
    return map_blocks(reference, lambda b: dataclasses.replace(b, quadrature=quad) if _has_rule_choice(b) else b)


@functools.lru_cache(maxsize=32)
def _hermite(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor Gauss-Hermite rule for E_{N(0, I_d)}: nodes (n^d, d), weights (n^d,) summing to 1."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    grids = np.meshgrid(*([x] * d), indexing="ij")
    weights = functools.reduce(np.multiply.outer, [w] * d).reshape(-1)
    nodes = np.stack([g.reshape(-1) for g in grids], axis=1)
    # Product nodes of weight < 1e-18 carry less than 1e-18 * n^d of the mass: dropped.
    keep = weights >= 1e-18
    nodes, weights = nodes[keep], weights[keep]
    return torch.from_numpy(nodes).to(DTYPE), torch.from_numpy(weights).to(DTYPE)


def _lattice_size(h: float, d: int) -> float:
    """About how many nodes ``h Z^d`` has inside the ball of radius 9.1."""
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * (_RADIUS / h) ** d


@functools.lru_cache(maxsize=64)
def _lattice(h: float, d: int, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Trapezoid rule for E_{N(0, I_d)} on ``h Z^d`` (``shifted``: ``h (Z + 1/2)^d``) inside the ball
    of radius 9.1: nodes, weights."""
    size = _lattice_size(h, d)
    if size > _MAX_LATTICE:
        raise InputError(f"the fine quadrature needs {size:.1e} lattice nodes per component here (d = {d}, "
                         f"spacing {h:.3g}); use the fast rule")
    m = int(_RADIUS / h)
    axis = (np.arange(-m - 1, m + 1) + 0.5) * h if shifted else np.arange(-m, m + 1) * h
    nodes = np.stack([g.reshape(-1) for g in np.meshgrid(*([axis] * d), indexing="ij")], axis=1)
    nodes = nodes[(nodes**2).sum(1) <= _RADIUS**2]
    weights = np.exp(-0.5 * (nodes**2).sum(1))
    return torch.from_numpy(nodes).to(DTYPE), torch.from_numpy(weights / weights.sum()).to(DTYPE)


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


def _check_dim(reference) -> None:
    if reference.dim > MAX_QUADRATURE_DIM:
        raise InputError(
            f"the mixture path-space KL uses quadrature and supports d <= {MAX_QUADRATURE_DIM}, got d = {reference.dim}"
        )


def outer_nodes(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, rule):
    """Nodes x (..., Q K, d) and weights (Q K,) for ``E_{q_t}``: the standard-normal ``rule`` (nodes,
    weights) in each component's coordinates; abar of shape (...)."""
    xi, wq = rule
    k, d = reference.size, reference.dim
    nu = reference.marginal_eigenvalues(abar, one_minus_abar)[..., None, :, :]  # (..., 1, K, e)
    noise = reference.covs.apply(nu.sqrt(), xi[:, None, :].expand(xi.shape[0], k, d))
    x = abar.sqrt()[..., None, None, None] * reference.means + noise
    weights = (wq[:, None] * reference.weights).reshape(-1)
    return x.reshape(*x.shape[:-3], -1, d), weights


def spacing(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, quad: Quadrature) -> torch.Tensor:
    """The outer lattice spacing h at each level (abar and 1 - abar of shape (L,)), :class:`Quadrature`;
    ``h = inf`` where the level is smooth enough for Gauss-Hermite."""
    if quad.smooth_below == math.inf:
        return torch.full_like(abar, math.inf)
    k, d = reference.size, reference.dim
    per_level = _lattice(quad.coarse, d)[1].numel() * k**3 * d
    size = max(1, _BATCH_ELEMENTS // per_level)
    sharpness = torch.cat([_sharpness(reference, abar[i : i + size], one_minus_abar[i : i + size], quad)
                           for i in range(0, abar.numel(), size)])
    raw = (quad.resolution / sharpness).clamp(max=quad.coarse)
    halvings = torch.ceil(4.0 * torch.log2(quad.coarse / raw) - 1e-9).clamp_min(0.0)
    # From integers in Python, so that equal quarter-octaves give bit-equal spacings (shared lattices).
    h = torch.tensor([quad.coarse * 2.0 ** (-i / 4) for i in halvings.tolist()], dtype=DTYPE)
    return torch.where(sharpness <= quad.smooth_below, math.inf, h)


def _sharpness(reference, abar, one_minus_abar, quad) -> torch.Tensor:
    """``S`` of :class:`Quadrature` at each level: the largest ``|V_c^{1/2} (s_j - s_l)|`` over the
    coarse lattice of each component c where ``w_j, w_l > e^-40``."""
    x, _ = outer_nodes(reference, abar, one_minus_abar, _lattice(quad.coarse, reference.dim))
    post = reference.posterior(x, abar[:, None], one_minus_abar[:, None])
    n_levels, k, d = abar.numel(), reference.size, reference.dim
    scores = post.scores.reshape(n_levels, -1, k, k, d)  # (L, Q, c, j, d): nodes of component c
    seen = post.log_weights.reshape(n_levels, -1, k, k) > -_LOG_ODDS_SEEN
    j, l = torch.triu_indices(k, k, 1)
    diff = scores[..., j, :] - scores[..., l, :]  # (L, Q, c, pairs, d)
    cov = reference.covs.dense(reference.marginal_eigenvalues(abar, one_minus_abar))  # (L, c, d, d)
    sq = torch.einsum("nqcpa,ncab,nqcpb->nqcp", diff, cov, diff)
    return torch.where(seen[..., j] & seen[..., l], sq, 0.0).flatten(1).amax(1).sqrt()


def standard_rule(h: float, d: int, quad: Quadrature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The rule for E_{N(0, I_d)} at spacing h (Gauss-Hermite where ``h = inf``): nodes, weights and,
    for a paired rule (:class:`Quadrature`), signs: +1 on the first rule's nodes, -1 on the second's,
    so that ``sum(w f)`` is the pair's mean and ``|sum(w s f)|`` half their difference."""
    if not quad.paired:
        return *(_hermite(quad.smooth, d) if h == math.inf else _lattice(h, d)), None
    pair = ((_hermite(quad.smooth, d), _hermite(3 * quad.smooth // 2, d)) if h == math.inf
            else (_lattice(h, d), _lattice(h, d, True)))
    signs = torch.cat([torch.ones(pair[0][1].numel(), dtype=DTYPE), -torch.ones(pair[1][1].numel(), dtype=DTYPE)])
    return torch.cat([pair[0][0], pair[1][0]]), 0.5 * torch.cat([pair[0][1], pair[1][1]]), signs


def level_rule(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, h: float, quad: Quadrature):
    """``outer_nodes`` for spacing h (:func:`standard_rule`) and the signs of a paired rule (or None),
    repeated over components like the weights."""
    xi, wq, signs = standard_rule(h, reference.dim, quad)
    x, w = outer_nodes(reference, abar, one_minus_abar, (xi, wq))
    return x, w, None if signs is None else signs.repeat_interleave(reference.size)


# ---- J: KL of a whitened mixture against N(0, I) ------------------------------------------------


@dataclass(frozen=True)
class WhitenedMixture:
    """``sum_k w_k N(zeta_k, I - R_k)`` (a batch over leading dims): the law being compared with N(0, I)."""

    log_weights: torch.Tensor  # (N, K)
    zeta: torch.Tensor  # (N, K, d)
    r: torch.Tensor  # (N, K, d, d), symmetric, ||R_k|| < 1

    def log_ratios(self, z: torch.Tensor, parts) -> torch.Tensor:
        """``l_k(z) = log N(z; zeta_k, I - R_k) - log N(z; 0, I)`` at z (N, Q, d): (N, Q, K)."""
        m, p_zeta, const = parts
        out = const[:, None, :].expand(*z.shape[:-1], const.shape[-1]).clone()
        # Elementwise over the d <= 3 coordinates: 1.5x faster than a three-operand einsum here.
        for i in range(z.shape[-1]):
            zi = z[..., i, None]
            out += zi * (p_zeta[:, None, :, i] - 0.5 * zi * m[:, None, :, i, i])
            for j in range(i):
                out -= zi * z[..., j, None] * m[:, None, :, i, j]
        return out

    def parts(self):
        """``M_k = (I - R_k)^{-1} R_k``, ``(I - R_k)^{-1} zeta_k``, the constant of ``l_k``, Cholesky."""
        eye = torch.eye(self.zeta.shape[-1], dtype=DTYPE)
        chol = torch.linalg.cholesky(eye - self.r)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        m = torch.cholesky_solve(self.r, chol)
        p_zeta = torch.cholesky_solve(self.zeta[..., None], chol)[..., 0]
        const = -0.5 * (self.zeta * p_zeta).sum(-1) - 0.5 * logdet
        return (m, p_zeta, const), chol

    def eps_and_log_rho(self, z, parts):
        """``eps = rho - 1`` without cancellation near rho = 1, and ``log rho``, at z (N, Q, d)."""
        logs = self.log_ratios(z, parts)
        log_rho = torch.logsumexp(self.log_weights[:, None, :] + logs, -1)
        direct = (torch.exp(self.log_weights)[:, None, :] * torch.expm1(logs)).sum(-1)
        eps = torch.where(log_rho.abs() < 0.5, direct, torch.expm1(log_rho))
        return eps, log_rho


def whitened_kl(mix: WhitenedMixture, *, nodes: int, form: str) -> torch.Tensor:
    """``KL(sum_k w_k N(zeta_k, I - R_k) || N(0, I))`` per batch entry by Gauss-Hermite with ``nodes``
    per dimension: ``form="N"`` (psi form) or ``"q"`` (phi form), module docstring."""
    d = mix.zeta.shape[-1]
    xi, wq = _hermite(nodes, d)
    parts, chol = mix.parts()
    if form == "N":
        psi, _ = n_form_terms(mix, xi.expand(mix.zeta.shape[0], *xi.shape), parts)
        return (wq * psi).sum(-1)
    closed, excess = q_form_terms(mix, xi, parts, chol)
    # J >= 0; the sum cancels to within rounding of its terms (seen: -1.6e-32 where a far component has
    # a tiny weight), so a negative value is rounding and is reported as 0.
    return (closed + (torch.exp(mix.log_weights) * (excess * wq).sum(-1)).sum(-1)).clamp_min(0.0)


def n_form_terms(mix: WhitenedMixture, z: torch.Tensor, parts) -> tuple[torch.Tensor, torch.Tensor]:
    """The N-form integrand ``psi(eps(z))`` and ``eps(z)`` at z (N, Q, d): J = E_{N(0,I)} psi(eps)."""
    eps, _ = mix.eps_and_log_rho(z, parts)
    return one_plus_e_log_one_plus_e_minus_e(eps), eps


def q_form_terms(mix: WhitenedMixture, xi: torch.Tensor, parts, chol) -> tuple[torch.Tensor, torch.Tensor]:
    """The q-form ``J = closed + sum_k w_k E_{xi ~ N(0,I)} excess_k(zeta_k + L_k xi)`` (``L_k`` the
    Cholesky factor of ``I - R_k``): ``closed`` (N,) and ``excess`` (N, K, Q) at xi, which is (Q, d)
    (the same nodes for every entry) or (N, K, Q, d)."""
    n, k, d = mix.zeta.shape
    xi = xi.expand(n, k, *xi.shape[-2:])
    z = mix.zeta[:, :, None, :] + torch.einsum("nkij,nkqj->nkqi", chol, xi)  # (N, K, Q, d)
    # log rho = (log w_k + l_k) + excess_k under component k: E_{N_k} l_k = KL(N_k || N(0, I)) in
    # closed form, and excess_k = logsumexp_j(log w_j + l_j) - log w_k - l_k >= 0 is flat where k
    # dominates, so the rule only integrates where the modes switch.
    logs = mix.log_ratios(z.reshape(n, -1, d), parts).reshape(n, k, -1, k)
    joint = mix.log_weights[:, None, None, :] + logs
    own = torch.diagonal(joint, dim1=1, dim2=3).transpose(1, 2)  # (N, K, Q): log w_k + l_k at k's nodes
    r_eig = torch.linalg.eigvalsh(mix.r)
    kl_k = 0.5 * ((mix.zeta**2).sum(-1) + u_minus_log1p(-r_eig).sum(-1))
    closed = (torch.exp(mix.log_weights) * (mix.log_weights + kl_k)).sum(-1)
    return closed, torch.logsumexp(joint, -1) - own


def _negentropy_bound(mix: WhitenedMixture) -> torch.Tensor:
    """Upper bound on J: moment matching minimises KL(q || Gaussian), and KL is convex, so
    ``J <= sum_k w_k KL(N_k || N_j)`` for the heaviest component j; each term is bounded by
    ``|zeta_k - zeta_j|^2 / (1 - rho) + d (2 rho / (1 - rho))^2`` with ``rho = max ||R||_F``
    (valid while ``2 rho / (1 - rho) <= 1/2``; otherwise +inf)."""
    j = mix.log_weights.argmax(-1)
    rows = torch.arange(j.numel())
    rho = torch.linalg.matrix_norm(mix.r).amax(-1)
    ratio = 2.0 * rho / (1.0 - rho)
    gap = ((mix.zeta - mix.zeta[rows, j][:, None, :]) ** 2).sum(-1)
    term = gap / (1.0 - rho[:, None]) + mix.zeta.shape[-1] * ratio[:, None] ** 2
    w = torch.exp(mix.log_weights).clone()
    w[rows, j] = 0.0
    bound = (w * term).sum(-1)
    return torch.where(ratio <= 0.5, bound, torch.full_like(bound, math.inf))


def negentropy(mix: WhitenedMixture, *, nodes: int, separated: int, near_gaussian: float = 1.0,
               wide: int | None = None) -> torch.Tensor:
    """J per batch entry: skipped (0) where certified below 1e-24; N-form where nearly Gaussian
    (every ``|zeta_k| <= 1`` and ``||R_k||_F <= near_gaussian``, :class:`Quadrature`) with ``nodes``
    where both are at most ``near_gaussian / 2`` and ``wide`` (default ``nodes``) above; q-form with
    ``separated`` nodes elsewhere."""
    out = torch.zeros(mix.log_weights.shape[0], dtype=DTYPE)
    active = _negentropy_bound(mix) > _SKIP_BELOW
    zeta, r = mix.zeta.norm(dim=-1).amax(-1), torch.linalg.matrix_norm(mix.r).amax(-1)
    small, near = zeta.maximum(r) <= 0.5 * near_gaussian, (zeta <= 1.0) & (r <= near_gaussian)
    k, d = mix.zeta.shape[-2:]
    rules = (("N", small, nodes), ("N", near & ~small, wide or nodes), ("q", ~near, separated))
    for form, mask, n in rules:
        idx = torch.nonzero(active & mask).flatten()
        batch = max(1, _BATCH_ELEMENTS // ((k if form == "N" else k * k) * n**d * d))
        for start in range(0, idx.numel(), batch):
            sel = idx[start : start + batch]
            out[sel] = whitened_kl(_subset(mix, sel), nodes=n, form=form)
    return out


def _negentropy_by(quad: Quadrature, mix: WhitenedMixture) -> torch.Tensor:
    return negentropy(mix, nodes=quad.inner, separated=quad.separated, near_gaussian=quad.near_gaussian,
                      wide=quad.inner_wide)


def reverse_kernel_whitened(reference, post, abar, kappa, g) -> WhitenedMixture:
    """The reverse kernels at the points of ``post`` in Sigma*-whitened coordinates (module doc);
    abar and kappa = beta/alpha broadcastable to the batch, g = G(x) dense."""
    d = reference.dim
    eye = torch.eye(d, dtype=DTYPE)
    kappa = torch.as_tensor(kappa, dtype=DTYPE)
    chol = torch.linalg.cholesky(eye + kappa[..., None, None] * g)
    own = reference.covs.dense(torch.as_tensor(abar, dtype=DTYPE)[..., None, None] * (reference.eigenvalues - 1.0) / post.nu)
    gap = g[..., None, :, :] - own  # (..., K, d, d)
    chol_k = chol[..., None, :, :].expand_as(gap)
    half = torch.linalg.solve_triangular(chol_k, gap, upper=False)
    r = kappa[..., None, None, None] * torch.linalg.solve_triangular(chol_k, half.transpose(-1, -2), upper=False)
    r = 0.5 * (r + r.transpose(-1, -2))
    zeta = kappa.sqrt()[..., None, None] * torch.linalg.solve_triangular(
        chol_k, post.centred_scores[..., None], upper=False
    )[..., 0]
    k = reference.size
    return WhitenedMixture(post.log_weights.reshape(-1, k), zeta.reshape(-1, k, d), r.reshape(-1, k, d, d))


# ---- one chunk of steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class _StepNodes:
    """Outer nodes of a chunk of steps with everything at them: shapes (S, P, ...)."""

    idx: torch.Tensor  # (S,) steps t
    weights: torch.Tensor  # (P,)
    signs: torch.Tensor | None  # (P,): a paired rule's signs (standard_rule)
    post: object
    g: torch.Tensor
    c: torch.Tensor
    abar: torch.Tensor  # (S, 1)

    def integrate(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E_{q_t}`` of values (S, P) and its a-posteriori error estimate (NaN for a single rule)."""
        value = (values * self.weights).sum(-1)
        if self.signs is None:
            return value, torch.full_like(value, math.nan)
        return value, (values * (self.weights * self.signs)).sum(-1).abs()


def _step_nodes(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature) -> _StepNodes:
    abar, om = grid.abar[idx], grid.one_minus_abar[idx]
    x, w, signs = level_rule(reference, abar, om, h, quad)
    post = reference.posterior(x, abar[:, None], om[:, None])
    g = reference.excess(post, abar[:, None])
    c = reference.posterior_cov_dense(post, abar[:, None], om[:, None])
    return _StepNodes(idx, w, signs, post, g, c, abar[:, None])


def _grid_key(grid: Grid, quad: Quadrature):
    return (grid.schedule.name, grid.log_abar.numpy().tobytes(), grid.log_alpha.numpy().tobytes(), quad)


def step_spacings(reference, grid: Grid, quad: Quadrature) -> torch.Tensor:
    """The a-priori outer spacing h of steps t = 1..T, cached per grid: :func:`spacing` at every
    ``stride``-th step (at most 257 levels), each step taking the smaller h of the two sampled levels
    around it."""
    key = ("h",) + _grid_key(grid, quad)
    if key not in reference._cache:
        stride = -(-grid.T // 256)
        sampled = torch.arange(1, grid.T + stride, stride).clamp(max=grid.T)
        h = spacing(reference, grid.abar[sampled], grid.one_minus_abar[sampled], quad)
        between = torch.minimum(h[:-1], h[1:]).repeat_interleave(stride) if h.numel() > 1 else h
        reference._cache[key] = torch.cat([h[:1], between])[: grid.T] if stride > 1 else h
    return reference._cache[key]


def _by_spacing(reference, h: torch.Tensor, quad: Quadrature):
    """Positions in h grouped by equal spacing, in chunks that fit the memory budget: (positions, h)."""
    for value in torch.unique(h).tolist():
        members = torch.nonzero(h == value).flatten()
        per_level = reference.size**2 * standard_rule(value, reference.dim, quad)[1].numel() * reference.dim**2
        for chunk in torch.split(members, max(1, _BATCH_ELEMENTS // per_level)):
            yield chunk, value


def _finer(h: float, quad: Quadrature) -> float:
    """The next spacing when refining: the coarse lattice after Gauss-Hermite, else half an octave
    finer (kept on the quarter-octaves of ``coarse``, so refined steps share lattices)."""
    if h == math.inf:
        return quad.coarse
    return quad.coarse * 2.0 ** (-(round(4.0 * math.log2(quad.coarse / h)) + 2) / 4)


def _refined_negentropies(reference, grid: Grid, steps: torch.Tensor, h: torch.Tensor, quad: Quadrature):
    """``E_{q_t} J_t`` at ``steps`` from spacings h, refined while a step's best estimate exceeds
    ``quad.tolerance`` of its value, until two refinements in a row fail to halve it (:class:`Quadrature`):
    values, estimates and the spacings they came from. Coarse lattices' estimates are erratic (at h = 0.85
    one came out 5x below the error, the next one 5x above), hence two; a stall that lasts is the inner
    rule's error, which finer outer nodes cannot remove."""
    h, trial = h.clone(), h.clone()
    values = torch.empty(steps.numel(), dtype=DTYPE)
    errors = torch.full((steps.numel(),), math.inf, dtype=DTYPE)
    stalls = torch.zeros(steps.numel(), dtype=torch.long)
    pending = torch.arange(steps.numel())
    while pending.numel():
        new_values, new_errors = torch.empty(pending.numel(), dtype=DTYPE), torch.empty(pending.numel(), dtype=DTYPE)
        for sel, value in _by_spacing(reference, trial[pending], quad):
            new_values[sel], new_errors[sel] = _expected_negentropy(reference, grid, steps[pending[sel]], value, quad)
        improved = ~(new_errors >= 0.5 * errors[pending])  # NaN (a single rule) counts as improved
        at = pending[improved]
        values[at], errors[at], h[at] = new_values[improved], new_errors[improved], trial[at]
        stalls[at] = 0
        stalls[pending[~improved]] += 1
        if not quad.paired:
            break
        pending = pending[(stalls[pending] < 2) & (errors[pending] > quad.tolerance * values[pending])]
        finer = torch.tensor([_finer(v, quad) for v in trial[pending].tolist()], dtype=DTYPE)
        fits = torch.tensor([_lattice_size(v, reference.dim) <= _MAX_LATTICE for v in finer.tolist()], dtype=torch.bool)
        pending = pending[fits]
        trial[pending] = finer[fits]
    return values, errors, h


def expected_negentropies(reference, grid: Grid, quad: Quadrature | None = None) -> torch.Tensor:
    """``E_{x_t ~ q_t} J_t(x_t)`` for t = 1..T (route (a)), cached per (reference, grid, quadrature)."""
    return _negentropies(reference, grid, quad)[0]


def expected_negentropy_errors(reference, grid: Grid, quad: Quadrature | None = None) -> torch.Tensor:
    """A-posteriori error estimates of :func:`expected_negentropies` (NaN unless the rule is paired)."""
    return _negentropies(reference, grid, quad)[1]


def _negentropies(reference, grid: Grid, quad: Quadrature | None):
    """(values, estimates, refined spacings) for t = 1..T, cached."""
    _check_dim(reference)
    quad = quad or quadrature_of(reference)
    key = ("J",) + _grid_key(grid, quad)
    if key not in reference._cache:
        steps = torch.arange(1, grid.T + 1)
        reference._cache[key] = _refined_negentropies(reference, grid, steps, step_spacings(reference, grid, quad), quad)
    return reference._cache[key]


def expected_negentropy_at(reference, grid: Grid, idx: torch.Tensor,
                           quad: Quadrature | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_{q_t} J_t`` for the steps ``idx`` (a 1-D tensor of t) and its a-posteriori estimates."""
    quad = quad or quadrature_of(reference)
    h = spacing(reference, grid.abar[idx], grid.one_minus_abar[idx], quad)
    return _refined_negentropies(reference, grid, idx, h, quad)[:2]


def _expected_negentropy(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature):
    """``E_{q_t} J_t`` on one lattice and its estimate. Nodes whose certified bounds
    (:func:`_negentropy_bound`) add up to < 1e-13 of all bounds are left out, and the sum of their
    bounds is checked afterwards to be < 1e-12 of the result (else they are computed too): the
    low-noise steps' J lives on the thin bands where the posterior weights switch, so most lattice
    nodes are left out."""
    nodes = _step_nodes(reference, grid, idx, h, quad)
    kappa = (grid.beta[idx - 1] / grid.alpha[idx - 1])[:, None]
    mix = reverse_kernel_whitened(reference, nodes.post, nodes.abar, kappa, nodes.g)
    bound = _negentropy_bound(mix).reshape(idx.numel(), -1) * nodes.weights
    keep = _above_negligible(bound)
    j = torch.zeros_like(bound)
    j[keep] = _negentropy_by(quad, _subset(mix, keep.flatten()))
    out = (j * nodes.weights).sum(-1)
    unsure = (torch.where(keep, 0.0, bound).sum(-1) > 1e-12 * out)[:, None] & ~keep
    if unsure.any():
        j[unsure] = _negentropy_by(quad, _subset(mix, unsure.flatten()))
    return nodes.integrate(j)


def _above_negligible(bound: torch.Tensor) -> torch.Tensor:
    """Mask (S, P) of the entries outside the smallest set whose sum is <= 1e-13 of its row's sum."""
    ordered, _ = torch.sort(bound, -1)
    small = torch.cumsum(ordered, -1) <= 1e-13 * bound.sum(-1, keepdim=True)
    count = small.sum(-1, keepdim=True)
    threshold = torch.where(count > 0, ordered.gather(-1, (count - 1).clamp_min(0)), -1.0)
    return bound > threshold


def _subset(mix: WhitenedMixture, mask: torch.Tensor) -> WhitenedMixture:
    return WhitenedMixture(mix.log_weights[mask], mix.zeta[mask], mix.r[mask])


def step_kls(reference, grid: Grid, family, quad: Quadrature | None = None, *,
             mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """Per-step ``E_{q_t} KL(q(.|x_t) || p(.|x_t))``, t = 1..T: E J plus the family's Gaussian part.
    ``mean_g`` (T,) replaces ``E tr G / d`` when this is one block of a product (``analytic``)."""
    return step_kls_and_errors(reference, grid, family, quad, mean_g=mean_g)[0], None


def step_kls_and_errors(reference, grid: Grid, family, quad: Quadrature | None = None, *,
                        mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`step_kls` and the per-step a-posteriori error estimates (NaN unless the rule is paired),
    cached per family when ``mean_g`` is None. The Gaussian parts use the steps' refined spacings."""
    quad = quad or quadrature_of(reference)
    key = ("steps", family) + _grid_key(grid, quad)
    if mean_g is None and key in reference._cache:
        return reference._cache[key]
    values, errors, h = (part.clone() for part in _negentropies(reference, grid, quad))
    if family.name != "full":
        for idx, value in _by_spacing(reference, h, quad):
            nodes = _step_nodes(reference, grid, idx + 1, value, quad)
            own = _mean_trace(nodes.g, nodes.weights)[:, None, None] if mean_g is None else mean_g[idx][:, None, None]
            step = ReverseStep.at(grid, idx[:, None, None] + 1, g=SmallDense(nodes.g), c=SmallDense(nodes.c), mean_g=own)
            part, error = nodes.integrate(family.gaussian_step_kl(step))
            values[idx] += part
            errors[idx] += error
    if mean_g is None:
        reference._cache[key] = values, errors
    return values, errors


def steps_quadrature_error(reference, grid: Grid, family, *, first_step: int = 1) -> float | None:
    """The sum of the a-posteriori estimates of steps ``first_step..T`` when ``reference`` is a 2-D or
    3-D mixture on a paired rule (:class:`Quadrature`), else None. Reuses :func:`step_kls_and_errors`'s cache."""
    if not (_has_rule_choice(reference) and reference._monte_carlo() is None and quadrature_of(reference).paired):
        return None
    return math.fsum(step_kls_and_errors(reference, grid, family)[1][first_step - 1 :].tolist())


def _mean_trace(g: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``E tr G / d`` from G (..., P, d, d) at outer nodes of weights (P,): shape (...)."""
    return (torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) * weights).sum(-1) / g.shape[-1]


def expected_trace_excess(reference, lv: NoiseLevel, quad: Quadrature | None = None) -> torch.Tensor:
    """``E_{q_t} tr G`` at levels of any shape (...) (batched over the levels), shape (...)."""
    _check_dim(reference)
    quad = quad or quadrature_of(reference)
    abar = torch.as_tensor(lv.abar, dtype=DTYPE)
    flat = abar.reshape(-1)
    om = torch.as_tensor(lv.one_minus_abar, dtype=DTYPE).expand_as(abar).reshape(-1)
    out = torch.empty_like(flat)
    for sel, value in _by_spacing(reference, spacing(reference, flat, om, quad), quad):
        x, w, _ = level_rule(reference, flat[sel], om[sel], value, quad)
        g = reference.excess(reference.posterior(x, flat[sel, None], om[sel, None]), flat[sel, None])
        out[sel] = reference.dim * _mean_trace(g, w)
    return out.reshape(abar.shape)


# ---- terminal KL, leading-constant integrands, the chain-rule route ----------------------------


def terminal_kl(reference, lv: NoiseLevel, quad: Quadrature | None = None) -> float:
    """``KL(q_T || N(0, I))``: q_T is the whitened mixture with ``zeta_k = sqrt(abar) m_k`` and
    ``I - R_k = V_k``, i.e. ``R_k = U_k diag(abar (1 - lambda_k)) U_k^T``."""
    _check_dim(reference)
    quad = quad or quadrature_of(reference)
    mix = WhitenedMixture(
        torch.log(reference.weights)[None],
        (lv.abar.sqrt() * reference.means)[None],
        reference.covs.dense(lv.abar * (1.0 - reference.eigenvalues))[None],
    )
    # Not negentropy(): its skip bound assumes a moment-matched N(0, I), which q_T is not.
    size = float(mix.zeta.norm(dim=-1).max().maximum(torch.linalg.matrix_norm(mix.r).max()))
    near = size <= quad.near_gaussian
    return float(whitened_kl(mix, nodes=quad.inner if near else quad.separated, form="N" if near else "q")[0])


def _level_nodes(reference, lv: NoiseLevel, quad: Quadrature):
    h = float(spacing(reference, lv.abar.reshape(1), lv.one_minus_abar.reshape(1), quad)[0])
    x, w, _ = level_rule(reference, lv.abar, lv.one_minus_abar, h, quad)
    return reference.posterior(x, lv.abar, lv.one_minus_abar), w


def expected_excess_functional(reference, fn, lv: NoiseLevel, quad: Quadrature | None = None, *, mean_g=None) -> float:
    """``E_{q_t} fn(G(x_t), E tr G / d)`` with G as a dense operator; ``mean_g`` overrides ``E tr G / d``
    (one block of a product)."""
    _check_dim(reference)
    quad = quad or leading_quadrature(reference)
    post, w = _level_nodes(reference, lv, quad)
    g = reference.excess(post, lv.abar)
    mean_g = _mean_trace(g, w) if mean_g is None else torch.as_tensor(mean_g, dtype=DTYPE)
    return float((fn(SmallDense(g), mean_g) * w).sum())


def expected_third_derivative_sq_norm(reference, lv: NoiseLevel, quad: Quadrature | None = None) -> float:
    """``E_{q_t} ||grad^3 log q_t||_F^2`` by the outer quadrature."""
    _check_dim(reference)
    quad = quad or leading_quadrature(reference)
    post, w = _level_nodes(reference, lv, quad)
    return float((third_derivative_sq_norm(reference, post) * w).sum())


def third_derivative_sq_norm(reference, post) -> torch.Tensor:
    """``||grad^3 log q_t||_F^2`` at the points of ``post``.

    With ``A_k = -V_k^{-1}`` (the Hessian of log N_k) and centred scores ``c_k``,
    ``grad^3 log q = kappa_3 + X + X^(132) + X^(231)``, ``kappa_3 = E_w c (x) c (x) c``,
    ``X_abc = E_w[(A_k - E_w A)_ab c_kc]`` (derivative of the cumulant identities for the Hessian).
    Dense d^3 tensors; for common isotropic components use :func:`isotropic_third_derivative_sq_norm`.
    """
    w = post.weights
    c = post.centred_scores
    a = reference.covs.dense(-1.0 / post.nu)
    a = a - (w[..., None, None] * a).sum(-3, keepdim=True)
    kappa3 = torch.einsum("...k,...ka,...kb,...kc->...abc", w, c, c, c)
    x = torch.einsum("...k,...kab,...kc->...abc", w, a, c)
    t3 = kappa3 + x + x.transpose(-1, -2) + x.permute(*range(x.ndim - 3), -1, -3, -2)
    return (t3**2).sum((-1, -2, -3))


def negentropy_chain_rule(reference, grid: Grid, t: int, quad: Quadrature | None = None) -> float:
    """Route (b): ``E J_t = (1/2) E_{q_t} log det(I + k G) + H(q_t) - H(q_{t-1})`` (chain rule of
    entropy, DESIGN.md section 3; ``k = beta_t / alpha_t``). Cancels at large T: a check for small T."""
    quad = quad or quadrature_of(reference)
    lv, prev = grid.level(t), grid.level(t - 1)
    post, w = _level_nodes(reference, lv, quad)
    kappa = grid.beta[t - 1] / grid.alpha[t - 1]
    g = reference.excess(post, lv.abar)
    logdet = torch.linalg.slogdet(torch.eye(reference.dim, dtype=DTYPE) + kappa * g)[1]
    post_prev, w_prev = _level_nodes(reference, prev, quad)
    entropy_t = -(post.log_prob * w).sum()
    entropy_prev = -(post_prev.log_prob * w_prev).sum()
    return float(0.5 * (logdet * w).sum() + entropy_t - entropy_prev)


# ---- image dimension: components sharing one isotropic covariance (empirical data) --------------


def _common_isotropic(reference) -> None:
    lam = reference.eigenvalues
    if reference.covs.rotations is not None or lam.shape[1] != 1 or not (lam == lam[0]).all():
        raise InputError("the Gram-matrix third-derivative norm needs components with one common isotropic variance")


def gram_third_derivative_sq_norm(reference, x: torch.Tensor, lv: NoiseLevel, *, gram=None) -> torch.Tensor:
    """``||grad^3 log q_t(x)||_F^2`` for components sharing the variance ``v = (1 - abar) + abar s^2``
    (empirical data, common std), without d x d or d^3 arrays.

    Then ``V_k^{-1} = I / v`` is the same for all k, the covariance terms of
    :func:`third_derivative_sq_norm` vanish and ``grad^3 log q = kappa_3 = E_w c (x) c (x) c`` with
    ``c_k = s_k - E_w s = sqrt(abar) (m_k - E_w m) / v``, so
    ``||kappa_3||_F^2 = sum_{j,l} w_j w_l (c_j . c_l)^3``: a K x K Gram matrix of the means
    (``gram``, precomputed once, O(K^2 d)); per point O(K d) for the weights plus O(K^2).
    """
    _common_isotropic(reference)
    if gram is None:
        centred = reference.means - reference.means.mean(0)
        gram = centred @ centred.T
    v = lv.one_minus_abar + lv.abar * reference.eigenvalues[0, 0]
    out = torch.empty(x.shape[0], dtype=DTYPE)
    for i in range(x.shape[0]):  # one point at a time: the posterior holds (K, d) arrays
        w = reference.posterior(x[i : i + 1], lv.abar, lv.one_minus_abar).weights[0]
        g = gram @ w
        centred_gram = gram - g[:, None] - g[None, :] + w @ g
        out[i] = (lv.abar / v**2) ** 3 * (w @ (centred_gram**3) @ w)
    return out


def mc_third_derivative_sq_norm(reference, lv: NoiseLevel, *, samples: int, generator=None) -> tuple[float, float]:
    """Monte Carlo ``E_{q_t} ||grad^3 log q_t||_F^2`` (Gram form, any d) and its standard error."""
    _common_isotropic(reference)
    centred = reference.means - reference.means.mean(0)
    gram = centred @ centred.T
    x = reference.sample(samples, lv, generator=generator)
    values = gram_third_derivative_sq_norm(reference, x, lv, gram=gram)
    return float(values.mean()), float(values.std() / math.sqrt(samples))
