"""Generic study machinery: a :class:`Study` names its configuration, its points and how to compute
one point; :func:`run_study` runs the points not yet on disk, serially or in worker processes, and
records each one as soon as it finishes (see :mod:`studies.results` for the file guarantees).

A point is a dict of key columns (``family``, ``T``, ``seed``, ...), the unit of work and of resuming.
``run_point(config, point)`` returns one row (a dict of value columns) or, for a study with
``row_columns``, a list of rows that each also hold the row columns (e.g. one row per step t of one
chain). It must be a pure function of its arguments (seed any randomness from the point): that is what
makes a resumed or parallel run identical to a single serial one.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import multiprocessing
import platform
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathkl.errors import InputError

from . import config as cfg
from .progress import Progress
from .results import ResultsStore, ResultsTable, iter_keys

Point = dict[str, int | float | str]


@dataclass(frozen=True)
class Study:
    """One study: a configuration type, its points, one point's computation and its figures.

    ``row_columns`` (optional) tell apart the several rows one point may return.
    ``small`` overrides the defaults to give a configuration CI runs in a few seconds.
    ``figures(table)`` returns ``{suffix: matplotlib Figure}`` drawn only from the saved results.
    """

    name: str
    description: str
    config_type: type
    points: Callable[[Any], Sequence[Point]]
    run_point: Callable[[Any, Point], Mapping[str, Any] | Sequence[Mapping[str, Any]]]
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    row_columns: tuple[str, ...] = ()
    small: Mapping[str, Any] = field(default_factory=dict)
    figures: Callable[[ResultsTable], Mapping[str, Any]] | None = None

    def config(self, *, small: bool = False, toml_path: Path | None = None,
               assignments: Sequence[str] = ()) -> Any:
        """The configuration: defaults, the small preset if asked, a TOML file, then ``key=value``."""
        return cfg.build_config(self.config_type, base=self.small if small else None,
                                toml_path=toml_path, assignments=assignments)


@dataclass(frozen=True)
class RunSummary:
    """What one call of :func:`run_study` did."""

    directory: Path
    total: int
    skipped: int
    ran: int
    seconds: float


def figure_suffix(reference: str) -> str:
    """The part of a figure's file name that names its reference: a preset name as it is, a JSON
    path by its stem, anything outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", reference.rsplit("/", 1)[-1].removesuffix(".json"))


def git_commit(path: Path) -> str | None:
    """``HEAD`` of the git checkout holding ``path`` (suffixed ``+dirty`` if modified), or None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(config: Any) -> dict[str, Any]:
    """Versions, commit and device recorded beside the results."""
    try:
        version = importlib.metadata.version("pathkl")
    except importlib.metadata.PackageNotFoundError:
        import pathkl

        version = getattr(pathkl, "__version__", None)
    return {
        "pathkl_version": version,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": getattr(config, "device", "cpu"),
        "torch_threads": torch.get_num_threads(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _timed_point(study: Study, config: Any, point: Point) -> tuple[list[Mapping[str, Any]], float]:
    start = time.perf_counter()
    out = study.run_point(config, point)
    rows = [out] if isinstance(out, Mapping) else list(out)
    return rows, time.perf_counter() - start


def _indexed_point(task: tuple[Study, Any, int, Point]) -> tuple[int, list[Mapping[str, Any]], float]:
    study, config, index, point = task
    return (index, *_timed_point(study, config, point))


def run_study(study: Study, config: Any, out: Path, *, jobs: int = 1,
              progress: bool = True) -> RunSummary:
    """Run every point of ``study`` under ``config`` not yet in ``out``; record each as it finishes,
    in at most ``jobs`` worker processes (never more than there are points to run).

    Raises :class:`~pathkl.errors.InputError` (leaving the files alone) when ``out`` holds anything
    but this study's results for this very configuration.
    """
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    points = list(study.points(config))
    order = iter_keys(points, study.key_columns)
    if len(set(order)) != len(order):
        raise ValueError(f"study {study.name} produced duplicate points")
    store = ResultsStore(out, study=study.name, key_columns=study.key_columns,
                         row_columns=study.row_columns, value_columns=study.value_columns,
                         config=cfg.to_dict(config))
    store.open(environment(config))
    meta = store.meta
    meta["seed"] = getattr(config, "seed", None)
    pending = [p for p in points if not store.is_done(p)]
    # No more workers than points to run: --jobs 1000 on 12 points forked 1000 processes.
    jobs = max(1, min(jobs, len(pending)))
    run = {"started": _now(), "jobs": jobs, "points_skipped": len(points) - len(pending),
           "points_run": 0, "seconds": 0.0, "completed": False}
    meta["runs"].append(run)
    store.write_meta()
    bar = Progress(len(points), already=len(points) - len(pending), label=study.name,
                   enabled=progress)
    start = time.perf_counter()

    def record(point: Point, rows: list[Mapping[str, Any]], seconds: float) -> None:
        run["points_run"] += 1
        run["seconds"] = round(time.perf_counter() - start, 3)
        store.add(point, rows, seconds=seconds, order=order)
        bar.advance()

    if jobs == 1 or len(pending) <= 1:
        for point in pending:
            record(point, *_timed_point(study, config, point))
    else:
        # fork (as torch's DataLoader does on Linux) spares every worker the seconds of importing
        # torch; spawn elsewhere. Workers ignore SIGINT: on Ctrl-C the parent terminates them.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(jobs, initializer=_init_worker)
        try:
            tasks = [(study, config, i, p) for i, p in enumerate(pending)]
            for i, rows, seconds in pool.imap_unordered(_indexed_point, tasks):
                record(pending[i], rows, seconds)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    run["completed"] = True
    run["finished"] = _now()
    run["seconds"] = round(time.perf_counter() - start, 3)
    store.write_meta()
    return RunSummary(directory=Path(out), total=len(points), skipped=len(points) - len(pending),
                      ran=len(pending), seconds=run["seconds"])

