"""``||grad^3 log q_t||_F^2`` for mixtures: the integrand of ``full``'s leading constant
(pathkl.covariances), from the cumulant structure of the component scores under the posterior weights
(docs/theory.md sections 5.2 and 6.2; docs/errors.md, "Leading constants").
"""

from __future__ import annotations

import math

import torch

from .errors import InputError
from .schedules import DTYPE, NoiseLevel


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