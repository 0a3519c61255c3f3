"""``pathkl figs [NAME ...]``: redraw the paper figures from saved study results.

A study whose results directory holds no results is run first (default configuration, or the small
one with ``--small``). Each figure is written as ``paper_figs/<study>[-<panel>].pdf`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from .common import positive_int
from .study import DEFAULT_RESULTS, get_study

DEFAULT_FIGS = Path("paper_figs")

_EXAMPLES = """examples:
  pathkl figs                          # every figure; runs studies whose results are missing
  pathkl figs gaussian_rates --jobs 2  # one study's figures
  pathkl figs --small --out /tmp/figs  # quick check with the CI-sized configurations"""


def build_figures(names, *, results: Path, out: Path, small: bool = False, jobs: int = 1,
                  progress: bool = True) -> list[Path]:
    """Draw the figures of the studies ``names`` (all that have figures when empty); the paths written."""
    import studies
    from studies.results import JSON_NAME, load
    from studies.runner import run_study

    from .. import plotting

    chosen = [get_study(n) for n in names] or list(studies.REGISTRY.values())
    written: list[Path] = []
    for study in chosen:
        if study.figures is None:
            if names:
                raise InputError(f"study {study.name!r} draws no figures")
            continue
        directory = results / study.name
        if not (directory / JSON_NAME).exists():
            run_study(study, study.config(small=small), directory, jobs=jobs, progress=progress)
        table = load(directory)
        with plotting.style():
            figures = study.figures(table)
        for suffix, fig in figures.items():
            stem = out / (f"{study.name}-{suffix}" if suffix else study.name)
            written += plotting.save(fig, stem)
    return written


def _figs(args: argparse.Namespace) -> int:
    paths = build_figures(args.names, results=args.results, out=args.out, small=args.small,
                          jobs=args.jobs, progress=not args.quiet)
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
                        help="directory holding results/<study>/ (default results)")
    parser.add_argument("--out", type=Path, default=DEFAULT_FIGS, help="figure directory")
    parser.add_argument("--small", action="store_true",
                        help="run missing studies with their small (CI) configuration")
    parser.add_argument("--jobs", type=positive_int, default=1, help="worker processes for missing studies")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON")
    parser.set_defaults(func=_figs)
