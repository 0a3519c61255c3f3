"""Generic study machinery: a :class:`Study` names its configuration, its points and how to compute
one point; :func:`run_study` runs the points not yet on disk, serially or in worker processes, and
records each one as soon as it finishes (see :mod:`studies.results` for the file guarantees). Several
runs may share one directory (each claims a point before computing it), a run may take one shard of
the points (``shard=(i, n)``, for batch schedulers) or send them to a Dask cluster
(``executor="dask"``), and :func:`merge` joins directories of one study.

A point is a dict of key columns (``family``, ``T``, ``seed``, ...), the unit of work and of resuming.
``run_point(config, point)`` returns one row (a dict of value columns) or, for a study with
``row_columns``, a list of rows that each also hold the row columns (e.g. one row per step t of one
chain). It must be a pure function of its arguments (seed any randomness from the point): that is what
makes a resumed or parallel run identical to a single serial one.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import math
import multiprocessing
import os
import platform
import queue
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pathkl
from pathkl.errors import InputError

from . import config as cfg
from .progress import Progress
from .results import (
    JSON_NAME,
    ResultsStore,
    ResultsTable,
    atomic_write_text,
    iter_keys,
    load,
    read_meta,
    read_record,
)

Point = dict[str, int | float | str]


@dataclass(frozen=True)
class Study:
    """One study: a configuration type, its points, one point's computation and its figures.

    ``row_columns`` (optional) tell apart the several rows one point may return.
    ``small`` overrides the defaults to give a configuration CI runs in a few seconds.
    ``figures(table)`` returns ``{suffix: matplotlib Figure}`` drawn only from the saved results.
    ``prepare(config)`` (optional) computes, once per sweep and in the driving process, a picklable
    value that ``install(value)`` puts into the caches of whichever process computes points (e.g. the
    predicted constants, the same for every T): each worker then reads them instead of recomputing,
    and every executor uses the very same numbers.
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
    prepare: Callable[[Any], Any] | None = None
    install: Callable[[Any], None] | None = None

    def config(self, *, small: bool = False, toml_path: Path | None = None,
               assignments: Sequence[str] = ()) -> Any:
        """The configuration: defaults, the small preset if asked, a TOML file, then ``key=value``."""
        return cfg.build_config(self.config_type, base=self.small if small else None,
                                toml_path=toml_path, assignments=assignments)


@dataclass(frozen=True)
class RunSummary:
    """What one call of :func:`run_study` did (``waited``: points another run computed meanwhile)."""

    directory: Path
    total: int
    skipped: int
    ran: int
    seconds: float
    waited: int = 0


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
    return {
        "pathkl_version": pathkl.__version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": getattr(config, "device", "cpu"),
        "torch_threads": torch.get_num_threads(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _init_worker(study: Study, shared: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _install(study, shared)


def _install(study: Study, shared: Any) -> None:
    if study.install is not None:
        study.install(shared)


def _timed_point(study: Study, config: Any, point: Point) -> tuple[list[Mapping[str, Any]], float]:
    start = time.perf_counter()
    out = study.run_point(config, point)
    rows = [out] if isinstance(out, Mapping) else list(out)
    return rows, time.perf_counter() - start


def _remote_point(study: Study, config: Any, point: Point, shared: Any):
    """One point on a Dask worker: its caches from ``shared``, then the computation."""
    _install(study, shared)
    return _timed_point(study, config, point)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: shard 2 of 4, counted from 1."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise InputError(f"--shard expects I/N with 1 <= I <= N, got {text!r}")
    return shard


def in_shard(key: Sequence[str], shard: tuple[int, int] | None) -> bool:
    """Whether the point of text key ``key`` belongs to ``shard`` (by a hash of the key, so a point
    stays in its shard when the configuration grows)."""
    if shard is None:
        return True
    digest = hashlib.sha256("\x1f".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0] - 1


def stored_config(study: Study, directory: Path) -> Any:
    """The configuration recorded in ``directory`` (the union of the runs' configurations)."""
    meta = read_meta(Path(directory) / JSON_NAME)
    return cfg.apply_overrides(study.config_type(), meta["config"], source=str(directory))


def study_order(study: Study, config: Any) -> list[tuple[str, ...]]:
    """Text keys of the points of ``config`` in the study's order (the order of the export)."""
    return iter_keys(study.points(config), study.key_columns)


def load_study(study: Study, directory: Path) -> ResultsTable:
    """The results of ``study`` in ``directory``, rows in the study's point order."""
    return load(directory, study_order(study, stored_config(study, directory)))


class _Serial:
    """Computes each submitted point when its result is asked for."""

    def __init__(self, study: Study, config: Any, shared: Any):
        self.study, self.config, self.todo = study, config, collections.deque()
        _install(study, shared)

    def submit(self, tag: int, point: Point) -> None:
        self.todo.append((tag, point))

    def next_done(self):
        tag, point = self.todo.popleft()
        return (tag, *_timed_point(self.study, self.config, point))

    def close(self, ok: bool) -> None:
        pass


class _Pool:
    """Worker processes (fork where available: workers skip re-importing torch; spawn elsewhere).
    Workers ignore SIGINT: on Ctrl-C the parent terminates them."""

    def __init__(self, study: Study, config: Any, shared: Any, jobs: int):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.pool = ctx.Pool(jobs, initializer=_init_worker, initargs=(study, shared))
        self.study, self.config, self.done = study, config, queue.Queue()

    def submit(self, tag: int, point: Point) -> None:
        self.pool.apply_async(
            _timed_point, (self.study, self.config, point),
            callback=lambda r: self.done.put((tag, r, None)),
            error_callback=lambda e: self.done.put((tag, None, e)))

    def next_done(self):
        tag, result, error = self.done.get()
        if error is not None:
            raise error
        return (tag, *result)

    def close(self, ok: bool) -> None:
        if ok:
            self.pool.close()
        else:
            self.pool.terminate()
        self.pool.join()


class _Dask:
    """A ``dask.distributed`` client: on the scheduler at ``address``, or a LocalCluster of ``jobs``
    single-threaded worker processes. A worker that dies loses only its point (Dask reruns it)."""

    def __init__(self, study: Study, config: Any, shared: Any, jobs: int, address: str | None):
        try:
            from dask.distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise InputError("--executor dask needs dask.distributed: pip install 'pathkl[dask]'") \
                from None
        self.cluster = None
        if address is None:
            self.cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
            address = self.cluster
        self.client = Client(address)
        self.study, self.config = study, config
        self.shared = self.client.scatter(shared, broadcast=True)
        self.done = as_completed()
        self.tags: dict[str, int] = {}

    def submit(self, tag: int, point: Point) -> None:
        future = self.client.submit(_remote_point, self.study, self.config, point, self.shared,
                                    pure=False)
        self.tags[future.key] = tag
        self.done.add(future)

    def next_done(self):
        future = next(self.done)
        return (self.tags.pop(future.key), *future.result())

    def close(self, ok: bool) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _executor(study: Study, config: Any, shared: Any, executor: str, jobs: int,
              scheduler: str | None):
    if executor == "dask":
        return _Dask(study, config, shared, jobs, scheduler)
    if executor != "local":
        raise InputError(f"unknown executor {executor!r}; choose local or dask")
    return _Serial(study, config, shared) if jobs == 1 else _Pool(study, config, shared, jobs)


def run_study(study: Study, config: Any, out: Path, *, jobs: int = 1, progress: bool = True,
              executor: str = "local", scheduler: str | None = None,
              shard: tuple[int, int] | None = None, poll: float = 0.05) -> RunSummary:
    """Run every point of ``study`` under ``config`` (of ``shard`` if given) not yet in ``out``, in
    at most ``jobs`` worker processes (local) or on a Dask cluster; record each as it finishes.

    Points another run holds are waited for (every ``poll`` seconds) and taken over if it dies. A
    configuration that contains the stored one (more T, families, ...) extends the directory. Raises
    :class:`~pathkl.errors.InputError` (leaving the files alone) when ``out`` holds anything but
    this study's results for a configuration contained in this one or containing it.
    """
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    points = [p for p in study.points(config)
              if in_shard(iter_keys([p], study.key_columns)[0], shard)]
    if len(set(iter_keys(points, study.key_columns))) != len(points):
        raise ValueError(f"study {study.name} produced duplicate points")
    store = ResultsStore(out, study=study.name, key_columns=study.key_columns,
                         row_columns=study.row_columns, value_columns=study.value_columns,
                         config=cfg.to_dict(config))
    env = environment(config)
    store.open(env)
    order = study_order(study, stored_config(study, out))
    pending = [p for p in points if not store.is_done(p)]
    start = time.perf_counter()
    if not pending:  # nothing to compute: a finished study in a read-only directory writes nothing
        store.export(order)
        return RunSummary(directory=Path(out), total=len(points), skipped=len(points), ran=0,
                          seconds=0.0)
    jobs = max(1, min(jobs, len(pending)))  # --jobs 1000 on 12 points forked 1000 processes
    name = f"{_now().replace(':', '')}-{uuid.uuid4().hex[:8]}"
    run = {"name": name, "started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
           "executor": executor, "jobs": jobs, "shard": list(shard) if shard else None,
           "seed": getattr(config, "seed", None), "environment": env,
           "points_skipped": len(points) - len(pending), "points_run": 0, "points_waited": 0,
           "seconds": 0.0, "completed": False}
    store.write_run(run, name)
    bar = Progress(len(points), already=len(points) - len(pending), label=study.name,
                   enabled=progress)
    shared = study.prepare(config) if study.prepare is not None else None
    pool = _executor(study, config, shared, executor, jobs, scheduler)
    ok = False
    try:
        _drive(store, pool, pending, jobs, run, bar, poll, _throttled(lambda: store.export(order)))
        ok = True
    finally:
        pool.close(ok)
        run["seconds"] = round(time.perf_counter() - start, 3)
        run["completed"] = ok
        run["finished"] = _now()
        with contextlib.suppress(InputError):  # keep the original error, if any
            store.write_run(run, name)
    store.export(order)
    return RunSummary(directory=Path(out), total=len(points), skipped=run["points_skipped"],
                      ran=run["points_run"], seconds=run["seconds"], waited=run["points_waited"])


def _throttled(action: Callable[[], None], seconds: float = 1.0) -> Callable[[], None]:
    """``action`` at most once per ``seconds`` (the export rereads every record: a rewrite per point
    made 200 instant points cost 23 ms each instead of 3)."""
    last = [-math.inf]

    def call() -> None:
        if time.monotonic() - last[0] >= seconds:
            action()
            last[0] = time.monotonic()
    return call


def _drive(store: ResultsStore, pool, pending: list[Point], jobs: int, run: dict, bar: Progress,
           poll: float, export: Callable[[], None]) -> None:
    """Claim points, keep at most ``jobs`` in flight, record each result; wait for points held by
    other runs until they are done (or their run dies and the lease can be taken)."""
    todo = collections.deque(pending)
    inflight: dict[int, tuple[Point, contextlib.ExitStack]] = {}
    waiting: list[Point] = []
    try:
        while todo or inflight or waiting:
            while todo and len(inflight) < jobs:
                point = todo.popleft()
                lease = contextlib.ExitStack()
                if lease.enter_context(store.claim(point)):
                    tag = id(lease)
                    inflight[tag] = (point, lease)
                    pool.submit(tag, point)
                    continue
                lease.close()
                if store.is_done(point):
                    run["points_waited"] += 1
                    bar.advance()
                else:
                    waiting.append(point)
            if inflight:
                tag, rows, seconds = pool.next_done()
                point, lease = inflight.pop(tag)
                store.add(point, rows, seconds=seconds)
                lease.close()
                run["points_run"] += 1
                bar.advance()
                export()
            elif waiting:
                time.sleep(poll)
                todo.extend(waiting)
                waiting = []
    finally:
        for _, lease in inflight.values():
            lease.close()


def merge(study: Study, directories: Sequence[Path], out: Path) -> RunSummary:
    """Join the results of ``study`` in ``directories`` into ``out`` (which may be one of them).

    The configuration of ``out`` is the union of theirs (lists joined, scalars equal; a list sorted
    in every input stays sorted); a point present in several must have identical rows.
    """
    start = time.perf_counter()
    configs = [read_meta(Path(d) / JSON_NAME) for d in directories]
    for d, meta in zip(directories, configs):
        if meta.get("study") != study.name:
            raise InputError(f"{d} holds results of study {meta.get('study')!r}, not {study.name!r}")
    union = _union([m["config"] for m in configs], [str(d) for d in directories])
    config = cfg.apply_overrides(study.config_type(), union, source="merged configuration")
    store = ResultsStore(out, study=study.name, key_columns=study.key_columns,
                         row_columns=study.row_columns, value_columns=study.value_columns,
                         config=cfg.to_dict(config))
    store.open(environment(config))
    copied = 0
    for d in directories:
        for path in sorted((Path(d) / "points").glob("*.json")):
            target = store.points_dir / path.name
            key, rows, _ = read_record(path, len(store.columns))
            if target.exists():
                if read_record(target, len(store.columns))[1] != rows:
                    raise InputError(f"{path} and {target} disagree on point {list(key)}")
                continue
            store.points_dir.mkdir(exist_ok=True)
            atomic_write_text(target, path.read_text(encoding="utf-8"))
            copied += 1
    store.export(study_order(study, config))
    total = len(study.points(config))
    return RunSummary(directory=Path(out), total=total, skipped=total - copied, ran=copied,
                      seconds=round(time.perf_counter() - start, 3))


def _union(configs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    out = dict(configs[0])
    for config, name in zip(configs[1:], names[1:]):
        for k, v in config.items():
            if isinstance(v, list) and isinstance(out.get(k), list):
                joined = out[k] + [x for x in v if x not in out[k]]
                out[k] = sorted(joined) if out[k] == sorted(out[k]) and v == sorted(v) else joined
            elif out.get(k) != v:
                raise InputError(f"cannot merge {name}: configuration key {k!r} is {v!r} there, "
                                 f"{out.get(k)!r} in {names[0]}")
    return out
