"""Registered studies: ``REGISTRY[name]`` is a :class:`studies.runner.Study`.

Each study lives in its own module, defines ``STUDY`` and uses only pathkl's public API; results go
to ``results/<name>/`` (outside the package), figures to ``paper_figs/``.
"""

from __future__ import annotations

from pathkl.errors import InputError

from . import (
    covariance_error,
    few_step_sampling,
    gaussian_rates,
    image_sampling_study,
    lanczos_decay,
    mixture_rates,
    ocm_toy,
    optimal_grids,
    pf_ode_ot,
)
from .runner import Study

_MODULES = (covariance_error, few_step_sampling, gaussian_rates, image_sampling_study, lanczos_decay, mixture_rates,
            ocm_toy, optimal_grids, pf_ode_ot)

REGISTRY: dict[str, Study] = {m.STUDY.name: m.STUDY for m in _MODULES}
if len(REGISTRY) != len(_MODULES):
    raise ValueError("two studies share a name")


def get_study(name: str) -> Study:
    """The registered study ``name`` (``InputError`` listing the known ones otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown study {name!r}; known: {', '.join(REGISTRY)}") from None
