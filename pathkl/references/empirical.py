"""Empirical data ``q_0 = sum_k pi_k delta_{m_k}`` at image dimension: matrix-free closed forms by GEMM
(docs/theory.md section 5.4).

:meth:`MixtureReference.empirical` is the same law, but its generic mixture forms hold (n, K, d)
intermediates (one per point, component and pixel: gigabytes at d = 3x64x64). Here every quantity
at a noise level ``(abar, 1 - abar)`` is a product of the (n, d) batch with the (K, d) points:

- posterior weights ``w_k(x) = softmax_k(log pi_k - |x - sqrt(abar) m_k|^2 / (2 (1 - abar)))`` with the
  squared distances from one GEMM, about the data mean ``c`` (``|x'|^2 - 2 sqrt(abar) x'.m'_k +
  abar |m'_k|^2`` with ``x' = x - sqrt(abar) c``, ``m' = m - c``: absolute error ``~eps |x'|^2``);
- Tweedie: ``E[x_0|x_t] = sum_k w_k m_k = mu``, ``score = (sqrt(abar) mu - x) / (1 - abar)``;
- ``C(x) = Cov[x_0|x_t] = sum_k w_k (m_k - mu)(m_k - mu)^T`` (rank <= K - 1), never formed. Each row
  is anchored at its heaviest point r: with ``e_k = m_k - m_r`` and ``delta = sum_k w_k e_k = mu - m_r``,
  ``C = sum_{k != r} w_k e_k e_k^T - delta delta^T``. When the weights concentrate (low noise) every
  term is then small instead of a difference of ``|m|^2``-sized sums, so ``C v`` and ``diag C`` keep
  their relative accuracy; each costs O(n K d) in two GEMMs.

The Hessian's products and trace (the diffusion Fisher, ``pathkl.fisher``) follow from ``C`` by
Tweedie: ``H = -I / (1 - abar) + abar C / (1 - abar)^2``. Used by the image-dimension sampling study
(``studies/image_sampling.py``); the small-d methods (dense Hessian, dense covariance, path-space KL
by quadrature) are the inherited mixture ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..arrays import array_arguments
from ..estimate import Estimate
from ..schedules import DTYPE, NoiseLevel
from .mixture import MixtureReference


@dataclass(frozen=True)
class _Weights:
    """Posterior weights (n, K), their log-normaliser and each row's anchor index r (heaviest point)."""

    weights: torch.Tensor
    log_normaliser: torch.Tensor
    anchor: torch.Tensor


@dataclass(frozen=True)
class EmpiricalReference(MixtureReference):
    """Empirical data as a zero-variance :class:`MixtureReference` with O(n K d) matrix-free forms."""

    @staticmethod
    def from_points(points, *, weights=None) -> EmpiricalReference:
        """N points (N, d), equal weights unless given (checked as in :meth:`MixtureReference.empirical`)."""
        mix = MixtureReference.empirical(points, weights=weights)
        return EmpiricalReference(mix.weights, mix.means, mix.eigenvalues, mix.covs)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The data mean c, the centred points ``m - c``, their squared norms and ``|m_k|^2``: formed
        once per reference (each is an O(K d) pass, as costly as the products themselves)."""
        data = self._cache.get("data")
        if data is None:
            centre = self.means.mean(0)
            points = self.means - centre
            data = (centre, points, (points**2).sum(-1), (self.means**2).sum(-1))
            self._cache["data"] = data
        return data

    def _weights(self, x: torch.Tensor, lv: NoiseLevel) -> _Weights:
        root, var = lv.abar.sqrt(), lv.one_minus_abar
        centre, points, points_sq, _ = self._data()
        shifted = x - root * centre
        dist2 = ((shifted**2).sum(-1, keepdim=True) - 2.0 * root * shifted @ points.T
                 + lv.abar * points_sq).clamp_min(0.0)
        joint = torch.log(self.weights) - dist2 / (2.0 * var)
        log_normaliser = torch.logsumexp(joint, -1)
        weights = torch.exp(joint - log_normaliser[:, None])
        return _Weights(weights, log_normaliser, weights.argmax(-1))

    @array_arguments
    def log_prob(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``log sum_k pi_k N(x; sqrt(abar) m_k, (1 - abar) I)``."""
        lw = self._weights(x, lv)
        return lw.log_normaliser - 0.5 * self.dim * torch.log(2.0 * math.pi * lv.one_minus_abar)

    @array_arguments
    def posterior_weights(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._weights(x, lv).weights

    @array_arguments
    def posterior_mean(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return self._weights(x, lv).weights @ self.means

    @array_arguments
    def score(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        return (lv.abar.sqrt() * self.posterior_mean(x, lv) - x) / lv.one_minus_abar

    def _anchored(self, x: torch.Tensor, lv: NoiseLevel):
        """Weights with the anchor's zeroed (``w'``), the anchors ``m_r`` (n, d) and ``delta`` (n, d).

        Kept for the last (x, level) seen: a sampler step makes several products at one x. The cache
        holds x itself (so its id cannot be reused) and checks its in-place version counter."""
        last = self._cache.get("anchored")
        if last is not None and last[0] is x and last[1] == x._version and torch.equal(last[2], lv.abar):
            return last[3]
        parts = self._anchored_parts(x, lv)
        self._cache["anchored"] = (x, x._version, lv.abar, parts)
        return parts

    def _anchored_parts(self, x: torch.Tensor, lv: NoiseLevel):
        lw = self._weights(x, lv)
        anchors = self.means[lw.anchor]
        others = lw.weights.scatter(1, lw.anchor[:, None], 0.0)
        delta = others @ self.means - others.sum(-1, keepdim=True) * anchors
        return others, anchors, delta, lw.anchor

    @array_arguments
    def posterior_cov_matvec(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``C v = sum_{k != r} w_k e_k (e_k . v) - delta (delta . v)``, O(n K d)."""
        others, anchors, delta, anchor = self._anchored(x, lv)
        projections = v @ self.means.T  # (n, K): m_k . v
        inner = others * (projections - projections.gather(1, anchor[:, None]))  # w_k (e_k . v), 0 at r
        spread = inner @ self.means - inner.sum(-1, keepdim=True) * anchors
        return spread - delta * (delta * v).sum(-1, keepdim=True)

    @array_arguments
    def posterior_cov_diagonal(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``diag C = sum_{k != r} w_k e_k^2 - delta^2`` (elementwise squares), O(n K d)."""
        others, anchors, delta, _ = self._anchored(x, lv)
        second = others @ self.means**2 - 2.0 * anchors * (others @ self.means) + others.sum(-1, keepdim=True) * anchors**2
        return (second - delta**2).clamp_min(0.0)

    @array_arguments
    def posterior_trace(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``tr C(x) = sum_{k != r} w_k |m_k - m_r|^2 - |delta|^2`` per row, (n,)."""
        others, anchors, delta, anchor = self._anchored(x, lv)
        norms = self._data()[3]
        sq = (others @ norms - 2.0 * ((others @ self.means) * anchors).sum(-1) + others.sum(-1) * norms[anchor])
        return (sq - (delta**2).sum(-1)).clamp_min(0.0)

    @array_arguments
    def hvp(self, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``H v = -v / sigma^2 + (abar / sigma^4) C v`` (``sigma^2 = 1 - abar``; Wang et al. 2025,
        arXiv 2505.23264, Prop. 1), O(n K d) by :meth:`posterior_cov_matvec`."""
        var = lv.one_minus_abar
        return (lv.abar / var**2) * self.posterior_cov_matvec(x, v, lv) - v / var

    @array_arguments
    def hessian_trace(self, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
        """``tr H = -d / sigma^2 + (abar / sigma^4) tr C`` per row, O(n K d) by :meth:`posterior_trace`."""
        var = lv.one_minus_abar
        return (lv.abar / var**2) * self.posterior_trace(x, lv) - self.dim / var

    def posterior_trace_estimate(self, lv: NoiseLevel, *, samples: int = 256, seed: int = 0) -> Estimate:
        """Monte Carlo ``E_{q_t} tr C(x_t) / d`` over ``samples`` seeded draws, with its standard error."""
        draws = self.sample(samples, lv, generator=torch.Generator().manual_seed(seed))
        values = self.posterior_trace(draws.to(self.means.device), lv) / self.dim
        return Estimate(float(values.mean()), stderr=float(values.std() / math.sqrt(samples)))

    def sample(self, n: int, lv: NoiseLevel | None = None, *, generator=None) -> torch.Tensor:
        """Draws from ``q_t`` (data points themselves when lv is None), on CPU from ``generator``."""
        lv = lv or NoiseLevel(torch.tensor(1.0, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE))
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=DTYPE, generator=generator)
        return lv.abar.sqrt().cpu() * self.means.cpu()[k] + lv.one_minus_abar.sqrt().cpu() * z
