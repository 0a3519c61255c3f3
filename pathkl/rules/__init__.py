"""How each expectation over x_t is computed: a rule object, apart from the reference it integrates.

Every rule has one interface (:class:`Rule`): per-step KLs, the terminal KL, ``E tr G`` and the
leading-constant integrands of a block, each as a value with the absolute error pathkl vouches for
(pathkl.estimate). :func:`select_rule` picks, per independent block of a reference, the cheapest rule
that can meet the tolerance (docs/errors.md):

- :class:`ClosedForm` (``"closed form"``): Gaussian blocks, exact to a rounding bound;
- :class:`QuadratureRule` (``"quadrature"``): mixtures in d <= 3, paired rules climbing to ``rtol``;
- :class:`MonteCarlo` (``"monte carlo"``): mixtures in any d, the 95% interval of its sample sizes.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import InputError
from ..estimate import Estimate, StepKLs
from ..references import GaussianReference, MixtureReference
from ..schedules import Grid, NoiseLevel
from .closed_form import ClosedForm
from .montecarlo import MonteCarlo
from .quadrature import MAX_QUADRATURE_DIM, QuadratureRule


class Rule(Protocol):
    """What the engine (pathkl.pathspace) asks of a rule about one block of a reference."""

    name: str

    def accepts(self, block) -> bool:
        """Whether this rule can integrate over ``block``."""

    def step_kls(self, block, grid: Grid, family, *, rtol: float, mean_g: torch.Tensor | None = None) -> StepKLs:
        """``E_{q_t} KL(q(.|x_t) || p(.|x_t))``, t = 1..T; ``mean_g`` (T,) is a product's global
        ``E tr G / d`` for ``analytic``."""

    def terminal_kl(self, block, lv: NoiseLevel, *, rtol: float) -> Estimate:
        """``KL(q_T || N(0, I))``."""

    def expected_trace_excess(self, block, lv: NoiseLevel) -> torch.Tensor:
        """``E_{q_t} tr G`` at levels of any shape."""

    def leading_integrand(self, block, rate, lv: NoiseLevel, *, mean_g=None) -> Estimate:
        """``E_{q_tau} ||D||_F^2`` of an order-1 rate (its ``defect_sq_norm``), or ``E ||grad^3 log q||^2``
        for order 2 (pathkl.covariances.Rate)."""


CLOSED_FORM, QUADRATURE, MONTE_CARLO = ClosedForm(), QuadratureRule(), MonteCarlo()
#: The rules by name, as ``path_kl(..., rule=NAME)`` and ``pathkl kl`` accept them.
RULES = {r.name: r for r in (CLOSED_FORM, QUADRATURE, MONTE_CARLO)}


def select_rule(block, *, rule: str | Rule | None = None) -> Rule:
    """The rule for one block: closed form for a Gaussian (whatever ``rule`` says: nothing is cheaper
    or more accurate); for a mixture ``rule`` if given (a name from :data:`RULES` or a rule object,
    e.g. ``MonteCarlo(seed=1)``), else quadrature in d <= 3 (it climbs to the tolerance) and Monte
    Carlo beyond."""
    if isinstance(block, GaussianReference):
        return CLOSED_FORM
    if not isinstance(block, MixtureReference):
        raise InputError(f"no path-space KL for a reference of type {type(block).__name__}")
    if isinstance(rule, str):
        if rule not in RULES:
            raise InputError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
        rule = RULES[rule]
    if rule is None:
        return QUADRATURE if block.dim <= MAX_QUADRATURE_DIM else MONTE_CARLO
    if not rule.accepts(block):
        raise InputError(f"the {rule.name} rule cannot integrate a {block.dim}-D mixture"
                         + (f" (quadrature reaches d <= {MAX_QUADRATURE_DIM})" if rule is QUADRATURE else ""))
    return rule


__all__ = ["CLOSED_FORM", "MONTE_CARLO", "QUADRATURE", "RULES", "ClosedForm", "MonteCarlo", "QuadratureRule",
           "Rule", "select_rule"]
