"""Overhead of the study runner per point (lease, record file, export at most once a second), serial
and with --jobs 2.

Runs a study whose points do no work, so the time per point is pure bookkeeping. Prints one line
per configuration: points, rows per point, jobs, seconds per point.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies.runner import Study, run_study


@dataclass(frozen=True)
class Config:
    points: int = 200
    rows: int = 1


def points(config: Config):
    return [{"i": i} for i in range(config.points)]


def run_point(config: Config, point):
    return [{"j": j, "value": point["i"] + j / 7.0} for j in range(config.rows)]


BENCH = Study("bench", "runner overhead", Config, points, run_point, ("i",), ("value",),
              row_columns=("j",))


def main() -> None:
    for n, rows, jobs in ((200, 1, 1), (200, 1, 2), (100, 50, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run_study(BENCH, Config(points=n, rows=rows), Path(tmp), jobs=jobs, progress=False)
            per_point = (time.perf_counter() - start) / n
        print(f"points={n:4d} rows/point={rows:3d} jobs={jobs}  {1e3 * per_point:7.2f} ms/point")


if __name__ == "__main__":
    main()
