"""The reverse kernel's negentropy J, in whitened coordinates: the integrands every rule shares.

One step's KL at ``x = x_t`` splits exactly (the model mean is exact, and ``E_q log N`` sees only q's
first two moments; docs/theory.md section 4.2, docs/errors.md):

    KL(q(.|x) || N(mu*, Sigma_t)) = J(x) + KL(N(mu*, Sigma*(x)) || N(mu*, Sigma_t(x))),

``J(x) = KL(q(.|x) || N(mu*(x), Sigma*(x)))``, the same for every covariance family.

Whitening. With ``Sigma* = beta (I + k G) = beta Lt Lt^T`` (``k = beta / alpha``) the kernel component
k, ``N(a_k, B_k)`` (pathkl.references.mixture), becomes ``N(zeta_k, I - R_k)`` with

    zeta_k = sqrt(k) Lt^{-1} (s_k - E_w s),   R_k = k Lt^{-1} (G - G_k) Lt^{-T},

``G_k = U_k diag(abar (lambda_k - 1) / nu_k) U_k^T``: both formed from O(1) differences, never from
nearly equal covariances. The density ratio against N(0, I) is ``rho = 1 + eps``,
``eps(z) = sum_k w_k expm1(l_k(z))``, ``l_k`` a quadratic in z, and

    J = E_{N(0,I)} psi(eps)            (psi(e) = (1 + e) log1p(e) - e >= 0)      "N-form"
      = sum_k w_k [log w_k + KL(N(zeta_k, I - R_k) || N(0, I)) + E_{N_k} excess_k]  "q-form",

``excess_k = log rho - log w_k - l_k >= 0``: the closed-form KL takes the quadratic part of log rho,
so a rule only sees the switching between modes. The N-form suits nearly Gaussian kernels (eps
nearly polynomial), the q-form separated ones (its nodes follow each component). How the integrals
over z and over x_t are taken is the rules' business (pathkl.rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import DTYPE, NoiseLevel
from .stable import logsumexp_last, one_plus_e_log_one_plus_e_minus_e, u_minus_log1p

#: Points whose negentropy is certified below this (absolute) are skipped (:func:`negentropy_bound`).
SKIP_BELOW = 1e-24


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

    def subset(self, index: torch.Tensor) -> WhitenedMixture:
        """The batch entries at ``index`` (a mask or positions)."""
        return WhitenedMixture(self.log_weights[index], self.zeta[index], self.r[index])

    def eps_and_log_rho(self, z, parts):
        """``eps = rho - 1`` without cancellation near rho = 1, and ``log rho``, at z (N, Q, d)."""
        logs = self.log_ratios(z, parts)
        log_rho = logsumexp_last(self.log_weights[:, None, :] + logs)
        direct = (torch.exp(self.log_weights)[:, None, :] * torch.expm1(logs)).sum(-1)
        eps = torch.where(log_rho.abs() < 0.5, direct, torch.expm1(log_rho))
        return eps, log_rho



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
    return closed, logsumexp_last(joint) - own


def negentropy_bound(mix: WhitenedMixture) -> torch.Tensor:
    """Upper bound on J: moment matching minimises KL(q || Gaussian), and KL is convex, so
    ``J <= sum_k w_k KL(N_k || N_j)`` for the heaviest component j; each term is bounded by
    ``|zeta_k - zeta_j|^2 / (1 - rho) + d (2 rho / (1 - rho))^2`` with ``rho = max ||R||_F``
    (valid while ``0 <= rho < 1`` and ``2 rho / (1 - rho) <= 1/2``, i.e. ``rho <= 1/5``; otherwise +inf:
    for ``rho >= 1`` the ratio turns negative, and the bound with it)."""
    j = mix.log_weights.argmax(-1)
    rows = torch.arange(j.numel())
    rho = torch.linalg.matrix_norm(mix.r).amax(-1)
    ratio = 2.0 * rho / (1.0 - rho)
    gap = ((mix.zeta - mix.zeta[rows, j][:, None, :]) ** 2).sum(-1)
    term = gap / (1.0 - rho[:, None]) + mix.zeta.shape[-1] * ratio[:, None] ** 2
    w = torch.exp(mix.log_weights).clone()
    w[rows, j] = 0.0
    bound = (w * term).sum(-1)
    return torch.where(rho <= 0.2, bound, torch.full_like(bound, math.inf))



def terminal_mixture(reference, lv: NoiseLevel) -> WhitenedMixture:
    """``q_T`` of a mixture reference as a whitened mixture (a batch of one), so that
    ``KL(q_T || N(0, I))`` is its J: ``zeta_k = sqrt(abar) m_k`` and ``I - R_k = V_k``, i.e.
    ``R_k = U_k diag(abar (1 - lambda_k)) U_k^T``. Not moment-matched (q_T has neither mean 0 nor
    covariance I), so :func:`negentropy_bound` does not apply to it."""
    return WhitenedMixture(
        torch.log(reference.weights)[None],
        (lv.abar.sqrt() * reference.means)[None],
        reference.covs.dense(lv.abar * (1.0 - reference.eigenvalues))[None],
    )


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



def chi_square(mix: WhitenedMixture, parts) -> torch.Tensor:
    """``E_{N(0,I)} eps^2 = sum_{j,k} w_j w_k expm1(L_jk)`` (module docstring), per batch entry:
    ``L_jk = log E exp(l_j + l_k) = -(1/2) log det A + (1/2) b^T A^{-1} b + c_j + c_k``,
    ``A = I + M_j + M_k``, ``b = p_j + p_k``; ``+inf`` where some A is not positive definite."""
    m, p, c = parts
    eye = torch.eye(m.shape[-1], dtype=DTYPE)
    chol, info = torch.linalg.cholesky_ex(eye + m[:, :, None] + m[:, None, :])
    b = p[:, :, None] + p[:, None, :]
    sol = torch.cholesky_solve(b[..., None], chol)[..., 0]
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_e = -0.5 * logdet + 0.5 * (b * sol).sum(-1) + c[:, :, None] + c[:, None, :]
    w = torch.exp(mix.log_weights)
    out = (w[:, :, None] * w[:, None, :] * torch.expm1(log_e)).sum((-1, -2))
    return torch.where((info != 0).any(-1).any(-1), torch.full_like(out, math.inf), out)



def expected_log_ratios(mix: WhitenedMixture, parts) -> torch.Tensor:
    """``E_{N_k} l_j = -(1/2) (tr(M_j S_k) + zeta_k^T M_j zeta_k) + p_j^T zeta_k + c_j``, ``S_k = I - R_k``:
    (N, K_k, K_j)."""
    m, p, c = parts
    eye = torch.eye(m.shape[-1], dtype=DTYPE)
    trace = torch.einsum("njab,nkba->nkj", m, eye - mix.r)
    quad = torch.einsum("nka,njab,nkb->nkj", mix.zeta, m, mix.zeta)
    return -0.5 * (trace + quad) + torch.einsum("nja,nka->nkj", p, mix.zeta) + c[:, None, :]