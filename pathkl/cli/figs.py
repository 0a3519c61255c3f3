"""``pathkl figs [NAME ...]``: redraw the paper figures from saved study results
(:func:`studies.figures.build_figures`; by default from the committed ``paper_figs/results/``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import positive_int

DEFAULT_FIGS = Path("paper_figs")
DEFAULT_RESULTS = DEFAULT_FIGS / "results"

_EXAMPLES = """examples:
  pathkl figs                          # every figure from paper_figs/results/ (runs missing ones)
  pathkl figs gaussian_rates --run     # recompute that study's results, then draw
  pathkl figs gaussian_rates --jobs 2  # one study's figures
  pathkl figs --small --out /tmp/figs  # quick check with the CI-sized configurations"""


def _figs(args: argparse.Namespace) -> int:
    from studies.figures import build_figures

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
