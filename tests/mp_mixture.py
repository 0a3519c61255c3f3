"""``E_{q_t} J_t`` of a 1-D Gaussian mixture at 30 digits (mpmath), used only by the tests.

The entropy chain rule of docs/theory.md section 4.3, ``E J_t = (1/2) E_{q_t} log(1 + k G_t) + H(q_t) -
H(q_{t-1})``, ``k = beta_t / alpha_t``, ``G = 1 + (log q)''``, with the density and its derivatives
written out from the mixture's formula and each integral by mpmath's tanh-sinh quadrature between
the components' centres. Its terms are O(1) and cancel to ``E J_t``, harmless at 30 digits down to
``E J_t`` of 1e-20. Shares no code with pathkl: it is given the float64 ``log abar_{t-1}`` and
``log alpha_t`` of the grid and the mixture's weights, means and variances.
"""

from __future__ import annotations

import mpmath as mp

DIGITS = 30


class _Marginal:
    """``q = sum_k w_k N(sqrt(abar) m_k, 1 - abar + abar s_k^2)`` at one level."""

    def __init__(self, weights, means, variances, log_abar):
        abar = mp.exp(log_abar)
        self.w = [mp.mpf(v) for v in weights]
        self.mu = [mp.sqrt(abar) * mp.mpf(m) for m in means]
        self.nu = [1 - abar + abar * mp.mpf(v) for v in variances]
        width = max(mp.sqrt(n) for n in self.nu)
        self.breaks = sorted({c + s * mp.sqrt(n) * j for c, n in zip(self.mu, self.nu) for s in (-1, 1)
                              for j in (0, 1, 3, 6)} | {min(self.mu) - 40 * width, max(self.mu) + 40 * width})

    def derivatives(self, x):
        """q, q', q'' at x."""
        q = dq = ddq = mp.mpf(0)
        for w, c, n in zip(self.w, self.mu, self.nu):
            density = w * mp.exp(-(x - c) ** 2 / (2 * n)) / mp.sqrt(2 * mp.pi * n)
            q += density
            dq += -density * (x - c) / n
            ddq += density * ((x - c) ** 2 / n**2 - 1 / n)
        return q, dq, ddq

    def expect(self, f):
        """``E_q f(q, q', q'')`` and mpmath's error estimate."""
        def integrand(x):
            q, dq, ddq = self.derivatives(x)
            return q * f(q, dq, ddq) if q > 0 else mp.mpf(0)
        return mp.quad(integrand, self.breaks, error=True)


def expected_negentropy(weights, means, variances, log_abar_prev: float, log_alpha: float):
    """``E_{q_t} J_t`` and an error estimate: the three integrals' mpmath estimates plus 1e-28 of
    their sizes (the working precision, as the terms cancel)."""
    with mp.workdps(DIGITS):
        log_alpha = mp.mpf(log_alpha)
        log_abar_prev = mp.mpf(log_abar_prev)
        kappa = -mp.expm1(log_alpha) / mp.exp(log_alpha)
        now = _Marginal(weights, means, variances, log_abar_prev + log_alpha)
        before = _Marginal(weights, means, variances, log_abar_prev)
        excess = lambda q, dq, ddq: 1 + ddq / q - (dq / q) ** 2
        logdet, e1 = now.expect(lambda q, dq, ddq: mp.log(1 + kappa * excess(q, dq, ddq)) / 2)
        entropy_now, e2 = now.expect(lambda q, dq, ddq: -mp.log(q))
        entropy_before, e3 = before.expect(lambda q, dq, ddq: -mp.log(q))
        rounding = mp.mpf(10) ** (2 - DIGITS) * (abs(logdet) + abs(entropy_now) + abs(entropy_before))
        return float(logdet + entropy_now - entropy_before), float(e1 + e2 + e3 + rounding)
