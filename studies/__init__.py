"""Registered studies: ``REGISTRY[name]`` is a :class:`studies.runner.Study`.

Each study lives in its own module and uses only pathkl's public API; results go to
``results/<name>/`` (outside the package), figures to ``paper_figs/``.
"""

from __future__ import annotations

from .runner import Study

REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add ``study`` to :data:`REGISTRY` (names are unique)."""
    if study.name in REGISTRY:
        raise ValueError(f"study {study.name!r} registered twice")
    REGISTRY[study.name] = study
    return study


# Each study module registers itself on import.
from . import (  # noqa: F401
    covariance_error,
    few_step_sampling,
    gaussian_rates,
    image_sampling_study,
    lanczos_decay,
    mixture_rates,
    optimal_grids,
)
