"""Paper figures drawn from saved study results (``pathkl figs``).

Results are read from ``<results>/<study>/``; a study whose results are missing is run first, and
``run=True`` recomputes them into a sibling folder that then replaces the old one (so a failed run
leaves the saved results as they were). Each figure is written atomically as
``<out>/<study>[-<panel>].pdf`` and ``.png``, after checking that the folder is writable.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from pathkl import plotting
from pathkl.errors import InputError

from . import REGISTRY, get_study
from .results import JSON_NAME
from .runner import Study, load_study, run_study


def check_writable(folder: Path) -> None:
    """Refuse, before any computation, a figure folder that cannot be created or written."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write figures to {folder}: {existing} is not a writable folder")


def _recompute(study: Study, config, directory: Path, jobs: int, progress: bool) -> None:
    """Run ``study`` afresh into a sibling folder, then put it in place of ``directory``."""
    fresh = directory.with_name(f".{directory.name}.run-{uuid.uuid4().hex[:8]}")
    try:
        run_study(study, config, fresh, jobs=jobs, progress=progress)
        if directory.exists():
            old = directory.with_name(f"{fresh.name}.old")
            directory.rename(old)
            fresh.rename(directory)
            shutil.rmtree(old)
        else:
            fresh.rename(directory)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def build_figures(names: Sequence[str], *, results: Path, out: Path, small: bool = False, jobs: int = 1, progress: bool = True, run: bool = False) -> list[Path]:
    """Draw the figures of the studies ``names`` (all that have figures when empty) from the
    results in ``results/<study>/`` (running missing studies, every one with ``run``); the paths
    written."""
    chosen = [get_study(n) for n in names] or list(REGISTRY.values())
    check_writable(out)
    written: list[Path] = []
    for study in chosen:
        if study.figures is None:
            if names:
                raise InputError(f"study {study.name!r} draws no figures")
            continue
        directory = results / study.name
        if run:
            _recompute(study, study.config(small=small), directory, jobs, progress)
        elif not (directory / JSON_NAME).exists():
            run_study(study, study.config(small=small), directory, jobs=jobs, progress=progress)
        table = load_study(study, directory)
        with plotting.style():
            figures = study.figures(table)
        for suffix, fig in figures.items():
            stem = out / (f"{study.name}-{suffix}" if suffix else study.name)
            written += plotting.save(fig, stem)
    return written
