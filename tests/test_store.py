"""The shared results store: many writers on one directory, torn records, read-only and full disks,
configurations that extend a directory, shards, merge and the Dask executor.

The independent reference is always one uninterrupted serial run into another directory: every other
route (concurrent runs, shards + merge, Dask) must give its bytes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import studies
from pathkl.errors import InputError
from studies import results as store_module
from studies.results import load, read_runs
from studies.runner import Study, merge, parse_shard, run_study
from tests.test_studies import ROOT, TOY, ToyConfig, files


def csv_bytes(directory: Path) -> bytes:
    return (directory / "results.csv").read_bytes()


def test_concurrent_runs_on_one_directory_compute_every_point_once(tmp_path):
    """Three processes released together on one --out (the issue's case: each point was computed
    twice, the CSV shrank, processes died): none crashes, the run records add up to each point
    computed exactly once, and the file is the serial run's."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    config = "ToyConfig(sleep=0.05, T=(2, 4, 8, 16, 32))"
    go = tmp_path / "go"
    code = ("import sys, time; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from pathlib import Path; "
            "from test_studies import TOY, ToyConfig; from studies.runner import run_study; "
            "print('ready', flush=True)\n"
            "while not Path(sys.argv[4]).exists(): time.sleep(0.01)\n"
            f"run_study(TOY, {config}, Path(sys.argv[3]), progress=False)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT), str(out),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    for p in procs:  # every process has imported torch: start them together
        assert p.stdout.readline() == b"ready\n"
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    run_study(TOY, ToyConfig(T=(2, 4, 8, 16, 32)), ref, progress=False)
    assert csv_bytes(out) == csv_bytes(ref)
    runs = read_runs(out)
    assert 2 <= len(runs) <= 3 and all(r["completed"] for r in runs)
    assert sum(r["points_run"] for r in runs) == 15  # each point computed once
    assert not [p for p in out.rglob("*.tmp")]


def test_a_killed_writer_loses_only_its_lease():
    """A lease is an flock: held while its process lives, free once it dies."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = store_module.ResultsStore(Path(d), study="toy", key_columns=("i",),
                                          value_columns=("v",), config={})
        store.open({})
        with store.claim({"i": 1}) as mine:
            assert mine
            child = os.fork()
            if child == 0:  # another process: the lease is held
                with store.claim({"i": 1}) as theirs:
                    os._exit(0 if not theirs else 1)
            assert os.waitpid(child, 0)[1] == 0
        with store.claim({"i": 1}) as again:  # released with the descriptor
            assert again


def test_finished_study_in_a_read_only_directory_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "res"
    run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    before = files(out)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    # As root, chmod does not stop writes: every way the store writes is refused instead.
    for name in ("replace", "link", "mkdir", "write"):
        monkeypatch.setattr(store_module.os, name, refuse)
    real_open = os.open
    monkeypatch.setattr(store_module.os, "open", lambda path, flags, *a: refuse()
                        if flags & (os.O_WRONLY | os.O_RDWR) else real_open(path, flags, *a))
    summary = run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    assert (summary.ran, summary.skipped) == (0, 6)
    assert files(out) == before
    # with work left to do, the refusal is one InputError naming the directory
    with pytest.raises(InputError, match="cannot write"):
        run_study(TOY, ToyConfig(T=(2, 4, 8)), out, progress=False)
    assert files(out) == before


def test_full_disk_is_an_input_error_and_leaves_whole_files(tmp_path, monkeypatch):
    out = tmp_path / "res"
    run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    before = files(out)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "write", full)
    with pytest.raises(InputError, match="No space left on device"):
        run_study(TOY, ToyConfig(T=(2, 4, 8)), out, progress=False)
    monkeypatch.undo()
    after = files(out)
    assert not [n for n in after if n.endswith(".tmp")]
    assert {n: b for n, b in after.items() if n in before and not n.startswith("runs/")} == \
        {n: b for n, b in before.items() if not n.startswith("runs/")}
    run_study(TOY, ToyConfig(T=(2, 4, 8)), out, progress=False)  # resumes once space is back
    run_study(TOY, ToyConfig(T=(2, 4, 8)), tmp_path / "ref", progress=False)
    assert csv_bytes(out) == csv_bytes(tmp_path / "ref")


def test_figs_on_a_full_disk_leaves_no_empty_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pathkl import plotting

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    stem = tmp_path / "f"
    plotting.save(fig, stem)
    before = files(tmp_path)
    monkeypatch.setattr(plotting.os, "replace", lambda *a: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(InputError, match="No space left"):
        plotting.save(fig, stem)
    assert files(tmp_path) == before


def test_figs_refuses_an_unwritable_folder_before_computing(tmp_path, capsys):
    from pathkl.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["figs", "gaussian_rates", "--small", "--results", str(tmp_path / "r"),
                 "--out", str(blocker / "figs")]) == 2
    assert "not a writable folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_superset_configuration_extends_the_directory(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    run_study(TOY, ToyConfig(T=(2, 8), families=("a",)), out, progress=False)
    summary = run_study(TOY, ToyConfig(T=(2, 4, 8), families=("a", "b")), out, progress=False)
    assert (summary.skipped, summary.ran) == (2, 4)
    run_study(TOY, ToyConfig(T=(2, 4, 8), families=("a", "b")), ref, progress=False)
    assert csv_bytes(out) == csv_bytes(ref)
    # a subset runs as a no-op on the grown directory
    assert run_study(TOY, ToyConfig(T=(4,), families=("b",)), out, progress=False).ran == 0
    assert csv_bytes(out) == csv_bytes(ref)


def test_shards_partition_the_points_and_merge_gives_the_serial_bytes(tmp_path):
    study = studies.REGISTRY["gaussian_rates"]
    config = study.config(small=True, assignments=["schedules=vp-linear,cosine"])
    run_study(study, config, tmp_path / "serial", progress=False)
    ran = [run_study(study, config, tmp_path / f"s{i}", shard=(i, 3), progress=False).ran
           for i in (1, 2, 3)]
    assert sum(ran) == len(study.points(config)) == 24 and min(ran) > 0
    merge(study, [tmp_path / f"s{i}" for i in (1, 2, 3)], tmp_path / "merged")
    assert csv_bytes(tmp_path / "merged") == csv_bytes(tmp_path / "serial")
    table = load(tmp_path / "merged")
    assert set(table.distinct("schedule")) == {"vp-linear", "cosine"}
    # merging directories that disagree on a point (a well-formed record, other numbers) is refused
    victim = min((tmp_path / "s1" / "points").glob("*.json"))
    key, rows, _ = store_module.read_record(victim, len(table.columns))
    rows = [r[:-1] + ["1.5"] for r in rows]
    record = {"key": list(key), "rows": rows, "seconds": 0.0,
              "sha256": store_module._checksum(key, rows)}
    (tmp_path / "s2" / "points" / victim.name).write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="disagree"):
        merge(study, [tmp_path / "s1", tmp_path / "s2"], tmp_path / "merged2")


@pytest.mark.parametrize("text, ok", [("1/2", True), ("2/2", True), ("0/2", False),
                                      ("3/2", False), ("a/b", False), ("2", False)])
def test_shard_syntax(text, ok):
    if ok:
        assert parse_shard(text) == tuple(map(int, text.split("/")))
    else:
        with pytest.raises(InputError, match="--shard"):
            parse_shard(text)


def test_parallel_runs_compute_the_predicted_constants_once(tmp_path, monkeypatch):
    """The constants come from the driver (``prepare``), so workers never compute one."""
    from studies import rate_study

    calls = []
    real = rate_study.predicted_constant
    monkeypatch.setattr(rate_study, "_PREDICTED", {})
    monkeypatch.setattr(rate_study, "predicted_constant",
                        lambda *a: calls.append(os.getpid()) or real(*a))
    study = studies.REGISTRY["gaussian_rates"]
    config = study.config(small=True)
    run_study(study, config, tmp_path / "par", jobs=2, progress=False)
    from pathkl.families import get_family
    from pathkl.refspec import load_reference

    with_rate = [(r, f) for r in config.references for f in config.families
                 if get_family(f).order(load_reference(r)) is not None]
    assert calls == [os.getpid()] * len(with_rate) and with_rate


def test_dask_local_cluster_gives_the_serial_bytes(tmp_path):
    pytest.importorskip("dask.distributed")
    study = studies.REGISTRY["gaussian_rates"]
    config = study.config(small=True, assignments=["schedules=vp-linear,cosine"])
    run_study(study, config, tmp_path / "serial", progress=False)
    summary = run_study(study, config, tmp_path / "dask", executor="dask", jobs=2, progress=False)
    assert summary.ran == 24
    assert csv_bytes(tmp_path / "dask") == csv_bytes(tmp_path / "serial")


@dataclass(frozen=True)
class DyingConfig:
    i: tuple[int, ...] = (1, 2, 3, 4)
    marker: str = ""


def _dying_point(config: DyingConfig, point):
    """Point 3 kills its worker process the first time it runs (the marker file remembers)."""
    marker = Path(config.marker)
    if point["i"] == 3 and not marker.exists():
        marker.write_text("died once")
        os._exit(1)
    return {"value": float(point["i"]) ** 0.5}


DYING = Study("dying", "a worker dies on one point", DyingConfig,
              lambda c: [{"i": i} for i in c.i], _dying_point, ("i",), ("value",))


@pytest.mark.slow  # ~8 s: a second LocalCluster, and Dask restarting the killed worker
def test_dask_worker_killed_mid_run_loses_only_its_point(tmp_path):
    pytest.importorskip("dask.distributed")
    config = DyingConfig(marker=str(tmp_path / "marker"))
    summary = run_study(DYING, config, tmp_path / "dask", executor="dask", jobs=2, progress=False)
    assert (tmp_path / "marker").exists() and summary.ran == 4
    run_study(DYING, DyingConfig(marker=str(tmp_path / "marker")), tmp_path / "serial",
              progress=False)
    assert csv_bytes(tmp_path / "dask") == csv_bytes(tmp_path / "serial")


def test_figs_redraws_from_saved_results_and_run_recomputes(tmp_path):
    from studies.figures import build_figures

    res, figs = tmp_path / "results", tmp_path / "figs"
    study = studies.REGISTRY["gaussian_rates"]
    run_study(study, study.config(small=True), res / "gaussian_rates", progress=False)
    points = res / "gaussian_rates" / "points"
    total = len(list(points.glob("*.json")))
    min(points.glob("*.json")).unlink()
    build_figures(["gaussian_rates"], results=res, out=figs, small=True, progress=False)
    assert len(list(points.glob("*.json"))) == total - 1  # drawn from what is saved: no run
    build_figures(["gaussian_rates"], results=res, out=figs, small=True, progress=False, run=True)
    assert len(list(points.glob("*.json"))) == total
    assert sorted(p.name for p in res.iterdir()) == ["gaussian_rates"]  # no fresh/old folder left


def test_only_dead_temporary_files_are_removed(tmp_path):
    out = tmp_path / "res"
    run_study(TOY, ToyConfig(T=(2,)), out, progress=False)
    dead, live = out / "points" / ".x.json.dead.tmp", out / "points" / ".y.json.live.tmp"
    dead.write_text("{")
    live.write_text("{")
    os.utime(dead, (0, 0))  # a write killed long ago
    run_study(TOY, ToyConfig(T=(2, 4)), out, progress=False)
    assert not dead.exists() and live.exists()  # another writer's file of a moment ago stays


def test_study_run_results_root_is_where_figs_reads(tmp_path, capsys):
    """``study run --results ROOT`` writes ROOT/NAME, the folder ``figs --results ROOT`` reads (and
    then draws without running anything: the points are all there)."""
    from pathkl.cli import main

    root = tmp_path / "root"
    assert main(["study", "run", "lanczos_decay", "--small", "--quiet", "--results", str(root)]) == 0
    points = sorted((root / "lanczos_decay" / "points").iterdir())
    assert points
    stamps = [p.stat().st_mtime_ns for p in points]
    assert main(["figs", "lanczos_decay", "--quiet", "--results", str(root), "--out", str(tmp_path / "f")]) == 0
    assert [p.stat().st_mtime_ns for p in sorted((root / "lanczos_decay" / "points").iterdir())] == stamps
    assert (tmp_path / "f" / "lanczos_decay.pdf").exists()
    capsys.readouterr()
