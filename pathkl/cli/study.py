"""``pathkl study list``, ``pathkl study run NAME`` and ``pathkl study merge``: resumable studies with
results on disk that several runs, shards or a Dask cluster may share."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import positive_int

DEFAULT_RESULTS = Path("results")

_EXAMPLES = """examples:
  pathkl study list
  pathkl study run gaussian_rates                      # results/gaussian_rates/ (results.csv, points/)
  pathkl study run gaussian_rates --small --jobs 2     # the CI-sized configuration, 2 processes
  pathkl study run lanczos_decay --set kappas=10,1000 --set k_max=20 --out results/lz
  pathkl study run few_step_sampling --config my.toml  # TOML keys override the defaults
  pathkl study run gaussian_rates --results paper_figs/results  # where pathkl figs reads it
  pathkl study run gaussian_rates --set schedules=vp-linear,cosine --set T=10,20,40  # a sweep
  pathkl study run gaussian_rates --executor dask --scheduler tcp://HOST:8786  # on a Dask cluster
  pathkl study run gaussian_rates --shard 2/4 --out results/g-2  # one of 4 batch jobs
  pathkl study merge results/g-1 results/g-2 results/g-3 results/g-4 --out results/g

Re-running the same command resumes: finished points are skipped. Several runs may share one --out
(each point is computed once); a configuration whose lists contain the stored ones extends it."""


def _list(args: argparse.Namespace) -> int:
    import studies

    if args.json:
        print(json.dumps([{"name": s.name, "description": s.description}
                          for s in studies.REGISTRY.values()], indent=2))
    else:
        width = max(len(n) for n in studies.REGISTRY)
        for s in studies.REGISTRY.values():
            print(f"{s.name:<{width}}  {s.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from studies import get_study
    from studies.runner import parse_shard, run_study

    study = get_study(args.name)
    config = study.config(small=args.small, toml_path=args.config, assignments=args.set)
    out = args.out if args.out is not None else args.results / study.name
    shard = parse_shard(args.shard) if args.shard is not None else None
    try:
        summary = run_study(study, config, out, jobs=args.jobs, progress=not args.quiet,
                            executor=args.executor, scheduler=args.scheduler, shard=shard)
    except KeyboardInterrupt:
        print(f"interrupted: finished points are saved in {out}; run again to resume",
              file=sys.stderr)
        return 130
    return _report(study.name, summary, args.json)


def _merge(args: argparse.Namespace) -> int:
    from studies import get_study
    from studies.runner import merge

    study = get_study(args.name)
    return _report(study.name, merge(study, args.directories, args.out), args.json)


def _report(name: str, summary, as_json: bool) -> int:
    report = {"study": name, "directory": str(summary.directory), "points": summary.total,
              "skipped": summary.skipped, "ran": summary.ran, "seconds": summary.seconds}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{name}: {summary.ran} point(s) run, {summary.skipped} already done, "
              f"{summary.seconds:.1f} s -> {summary.directory}")
    return 0


def register(subparsers) -> None:
    """Add ``study list``, ``study run`` and ``study merge`` to the ``pathkl`` parser."""
    parser = subparsers.add_parser(
        "study", help="run studies whose results are saved point by point",
        description="Run (or resume) a registered study; results go to results/NAME/ point by point.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="study_command", required=True)
    p_list = sub.add_parser("list", help="list the registered studies")
    p_list.add_argument("--json", action="store_true", help="print JSON")
    p_list.set_defaults(func=_list)
    p_run = sub.add_parser("run", help="run (or resume) a study", epilog=_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p_run.add_argument("name", help="study name (see `pathkl study list`)")
    p_run.add_argument("--config", type=Path, help="TOML file overriding the default configuration")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one configuration key (lists: comma-separated); repeatable")
    p_run.add_argument("--small", action="store_true",
                       help="start from the study's small (CI) configuration")
    p_run.add_argument("--results", type=Path, default=DEFAULT_RESULTS, metavar="ROOT",
                       help="folder of studies' results, as in pathkl figs: the study goes to ROOT/NAME"
                            " (default: results)")
    p_run.add_argument("--out", type=Path, metavar="DIR",
                       help="this study's own results directory, instead of ROOT/NAME")
    p_run.add_argument("--jobs", type=positive_int, default=1, help="worker processes (default 1)")
    p_run.add_argument("--executor", choices=("local", "dask"), default="local",
                       help="local: --jobs processes here; dask: a dask.distributed cluster")
    p_run.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler (tcp://host:8786); default a LocalCluster of --jobs workers")
    p_run.add_argument("--shard", metavar="I/N",
                       help="run only shard I of N (1 <= I <= N), e.g. one job of a batch array")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.add_argument("--json", action="store_true", help="print a JSON summary")
    p_run.set_defaults(func=_run)
    p_merge = sub.add_parser("merge", help="join results directories of one study",
                             epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_merge.add_argument("name", help="study name")
    p_merge.add_argument("directories", nargs="+", type=Path, help="results directories to join")
    p_merge.add_argument("--out", type=Path, required=True, help="merged results directory")
    p_merge.add_argument("--json", action="store_true", help="print a JSON summary")
    p_merge.set_defaults(func=_merge)
