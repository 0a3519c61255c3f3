"""``pathkl check``: run the theorem registry (proofs_check) and report each claim."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import formatter, print_json

_EXAMPLES = """
Each claim of the sources (docs/theory.md#references) is a registered check: a symbolic derivation (sympy)
and/or a numeric comparison with pathkl's own closed forms against an independent answer.
An ID may also be a source prefix (tweedie, ocm, adpm, lgs, rp, df).
Exit code 0 if every selected check passes, 1 if any fails, 2 for an unknown ID.

examples:
  pathkl check                                    # every claim, as a table
  pathkl check ocm.thm2-unbiased lgs              # one claim and every lgs.* claim
  pathkl check --json                             # [{"id", "source", "status", "detail", ...}]
  pathkl check --list                             # ids and statements, without running
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="run the symbolic/numeric checks of every claim in the sources",
        description=__doc__, epilog=_EXAMPLES, formatter_class=formatter,
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="claim ids or source prefixes (default: all)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--list", action="store_true", help="list the selected claims without running them")
    p.set_defaults(func=run)


def select(claims, ids: list[str]):
    """The claims named by ``ids`` (exact ids or ``prefix`` for ``prefix.*``), in registry order."""
    if not ids:
        return list(claims)
    unknown = [i for i in ids if not any(c.id == i or c.id.startswith(i + ".") for c in claims)]
    if unknown:
        raise InputError(f"unknown claim id(s): {', '.join(unknown)} (see 'pathkl check --list')")
    return [c for c in claims if any(c.id == i or c.id.startswith(i + ".") for i in ids)]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def run(args: argparse.Namespace) -> int:
    from proofs_check import all_claims, run_claim

    chosen = select(all_claims(), args.ids)
    if args.list:
        rows = [{"id": c.id, "source": c.source, "method": c.method, "statement": c.statement}
                for c in chosen]
        if args.json:
            print_json(rows)
        else:
            for c in chosen:
                print(f"{c.id:32s} [{c.method}] {c.statement}\n{'':32s} {c.source}")
        return 0
    results = [run_claim(c) for c in chosen]
    failed = [r for r in results if not r.outcome.passed]
    if args.json:
        print_json([{"id": r.claim.id, "source": r.claim.source,
                     "status": "pass" if r.outcome.passed else "fail", "detail": r.outcome.detail,
                     "method": r.claim.method, "statement": r.claim.statement,
                     "seconds": round(r.seconds, 4)} for r in results])
    else:
        print(f"{'id':32s} {'source':44s} {'method':8s} {'result':6s} {'time':>7s}")
        for r in results:
            status = "pass" if r.outcome.passed else "FAIL"
            print(f"{r.claim.id:32s} {_clip(r.claim.source, 44):44s} {r.claim.method:8s} "
                  f"{status:6s} {r.seconds:6.2f}s")
        total = sum(r.seconds for r in results)
        print(f"\n{len(results)} claims: {len(results) - len(failed)} pass, {len(failed)} fail "
              f"({total:.1f} s)")
        for r in failed:
            print(f"FAIL {r.claim.id}: {r.outcome.detail}")
    return 1 if failed else 0
