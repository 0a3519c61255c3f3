"""``pathkl``: command-line front end. A thin layer: parse, call the library, print, exit.

Building the parser imports only the standard library (each command imports torch and the rest of
pathkl in its ``run``), so ``--help``, ``--version`` and argument errors come back at interpreter speed.

Exit codes: 0 success, 1 a check failed (``pathkl check``), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import InputError

#: Subcommand modules in ``pathkl.cli``; each exposes ``register(subparsers)``.
COMMANDS = ("kl", "rates", "lanczos", "sample", "check", "study", "figs", "grid")

_EPILOG = """examples:
  pathkl rates                                    # built-in convergence study (Gaussian, 4 families)
  pathkl kl --ref gaussian-5d --cov analytic --steps 1000
  pathkl rates --ref gaussian-5d --cov beta,full --steps 64,128,256,512 --plot rates.pdf

Run 'pathkl COMMAND --help' for each command's options and examples."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pathkl",
        description="Exact path-space KL, covariance families and rate studies for Gaussian diffusion models.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pathkl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pathkl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        sys.stderr.write(f"pathkl {args.command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
