"""``pathkl figs [NAME ...]``: redraw the paper figures from saved study results.

Results are read from ``paper_figs/results/<study>/`` (committed, small), so the figures redraw
without computing; a study whose results are missing is run first, and ``--run`` recomputes them
(default configuration, or the small one with ``--small``). Each figure is written atomically as
``paper_figs/<study>[-<panel>].pdf`` and ``.png``, after checking that the folder is writable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import InputError
from .common import positive_int
from .study import get_study

DEFAULT_FIGS = Path("paper_figs")
DEFAULT_RESULTS = DEFAULT_FIGS / "results"

_EXAMPLES = """examples:
  pathkl figs                          # every figure from paper_figs/results/ (runs missing ones)
  pathkl figs gaussian_rates --run     # recompute that study's results, then draw
  pathkl figs gaussian_rates --jobs 2  # one study's figures
  pathkl figs --small --out /tmp/figs  # quick check with the CI-sized configurations"""


def check_writable(folder: Path) -> None:
    """Refuse, before any computation, a figure folder that cannot be created or written."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write figures to {folder}: {existing} is not a writable folder")


def _recompute(study, config, directory: Path, jobs: int, progress: bool) -> None:
    """Run ``study`` afresh into a sibling folder, then put it in place of ``directory``."""
    from studies.runner import run_study

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


def build_figures(names, *, results: Path, out: Path, small: bool = False, jobs: int = 1,
                  progress: bool = True, run: bool = False) -> list[Path]:
    """Draw the figures of the studies ``names`` (all that have figures when empty) from the
    results in ``results/<study>/`` (running missing studies, every one with ``run``); the paths
    written."""
    import studies
    from studies.results import JSON_NAME
    from studies.runner import load_study, run_study

    from .. import plotting

    chosen = [get_study(n) for n in names] or list(studies.REGISTRY.values())
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


def _figs(args: argparse.Namespace) -> int:
    paths = build_figures(args.names, results=args.results, out=args.out, small=args.small,
                          jobs=args.jobs, progress=not args.quiet, run=args.run)
    if args.json:
        print(json.dumps([str(p) for p in paths], indent=2))
    else:
        for p in paths:
            print(p)
    return 0


def register(subparsers) -> None:
    """Add ``figs`` to the ``pathkl`` parser."""
    parser = subparsers.add_parser(
        "figs", help="redraw paper_figs/ from saved study results",
        description="Redraw paper_figs/ from saved study results, running missing studies first.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="studies to draw (default: all)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="directory holding <study>/ results (default paper_figs/results)")
    parser.add_argument("--out", type=Path, default=DEFAULT_FIGS, help="figure directory")
    parser.add_argument("--run", action="store_true",
                        help="recompute the studies' results (replacing the saved ones) before drawing")
    parser.add_argument("--small", action="store_true",
                        help="run missing studies with their small (CI) configuration")
    parser.add_argument("--jobs", type=positive_int, default=1, help="worker processes for missing studies")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON")
    parser.set_defaults(func=_figs)
