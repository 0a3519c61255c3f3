"""Point-by-point study results: a CSV table and a JSON sidecar, both replaced atomically.

Layout of a results directory::

    results.json   metadata: study, configuration, columns, environment, runs, per-point timings
    results.csv    the rows of each finished point: the point's key columns, the row columns that
                   tell a point's rows apart (if the study has any), then the value columns

The sidecar is written before the first row, so a CSV without a sidecar is foreign. Each write goes to
a temporary file in the same directory that is then renamed over the old one (``os.replace``), so a run
killed at any moment leaves either the previous or the next complete file. Rows are kept in the
study's point order, which makes the file independent of the order in which points finished (resumed
runs and ``--jobs N`` produce the same bytes as one uninterrupted serial run).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathkl.errors import InputError

FORMAT = "pathkl-study-results"
FORMAT_VERSION = 1
CSV_NAME = "results.csv"
JSON_NAME = "results.json"

Scalar = int | float | str


def format_cell(value: Scalar) -> str:
    """A cell's text: ints as written, floats by ``repr`` (round-trips exactly), strings as they are."""
    if isinstance(value, bool):
        raise TypeError("booleans are not allowed in results; use 0/1")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_cell(text: str) -> Scalar:
    """Inverse of :func:`format_cell` for the values it writes (int, then float, else the string)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ResultsTable:
    """Rows read back from a results directory, with their metadata."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, Scalar], ...]
    meta: dict[str, Any]

    def column(self, name: str, **where: Scalar) -> list[Scalar]:
        """Values of column ``name`` in the rows whose columns equal ``where`` (file order)."""
        return [r[name] for r in self.rows if all(r[k] == v for k, v in where.items())]

    def distinct(self, name: str) -> list[Scalar]:
        """Distinct values of column ``name`` in first-seen order."""
        return list(dict.fromkeys(r[name] for r in self.rows))


class ResultsStore:
    """The results directory of one study run with one configuration."""

    def __init__(self, directory: Path, *, study: str, key_columns: Sequence[str],
                 row_columns: Sequence[str] = (), value_columns: Sequence[str],
                 config: Mapping[str, Any]):
        self.directory = Path(directory)
        self.study = study
        self.key_columns = tuple(key_columns)
        self.row_key_length = len(key_columns) + len(row_columns)
        self.columns = self.key_columns + tuple(row_columns) + tuple(value_columns)
        self.config = dict(config)
        self.csv_path = self.directory / CSV_NAME
        self.json_path = self.directory / JSON_NAME
        self.rows: dict[tuple[str, ...], list[list[str]]] = {}
        self.meta: dict[str, Any] = {}

    # -- reading and validation -------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        if not self.json_path.exists():
            if self.csv_path.exists():
                raise InputError(
                    f"{self.csv_path} has no {JSON_NAME} sidecar: not a pathkl results file "
                    "(left untouched; choose another --out)"
                )
            return None
        meta = read_meta(self.json_path)
        if meta.get("study") != self.study:
            raise InputError(
                f"{self.json_path} holds results of study {meta.get('study')!r}, not {self.study!r} "
                "(left untouched; choose another --out)"
            )
        if meta.get("config") != json.loads(json.dumps(self.config)):
            diff = sorted(
                k for k in set(meta.get("config", {})) | set(self.config)
                if meta.get("config", {}).get(k) != self.config.get(k)
            )
            raise InputError(
                f"{self.directory} holds results for a different configuration "
                f"(differs in: {', '.join(diff)}); choose another --out"
            )
        if tuple(meta.get("columns", ())) != self.columns:
            raise InputError(f"{self.json_path} lists columns {meta.get('columns')}, "
                             f"expected {list(self.columns)} (left untouched)")
        return meta

    def _read_rows(self) -> dict[tuple[str, ...], list[list[str]]]:
        if not self.csv_path.exists():
            return {}
        done: dict[tuple[str, ...], list[list[str]]] = {}
        seen: set[tuple[str, ...]] = set()
        for row in read_csv_rows(self.csv_path, self.columns):
            full_key = tuple(row[: self.row_key_length])
            if full_key in seen:
                raise InputError(f"{self.csv_path} is corrupt: row {full_key} appears twice")
            seen.add(full_key)
            done.setdefault(tuple(row[: len(self.key_columns)]), []).append(row)
        return done

    def open(self, environment: Mapping[str, Any]) -> None:
        """Validate what is on disk (or create the directory and sidecar) and load finished rows."""
        meta = self._read_meta()
        self.rows = self._read_rows()
        for name in (CSV_NAME, JSON_NAME):  # left by a run killed mid-write (SIGKILL)
            for stale in self.directory.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if meta is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "study": self.study,
                "config": self.config, "columns": list(self.columns),
                "environment": dict(environment), "runs": [], "point_seconds": {},
            }
        self.meta = meta
        self.write_meta()

    def point_key(self, point: Mapping[str, Scalar]) -> tuple[str, ...]:
        """The text key under which ``point`` is stored."""
        return tuple(format_cell(point[c]) for c in self.key_columns)

    def is_done(self, point: Mapping[str, Scalar]) -> bool:
        return self.point_key(point) in self.rows

    # -- writing ----------------------------------------------------------------------------------

    def add(self, point: Mapping[str, Scalar], rows: Sequence[Mapping[str, Scalar]], *,
            seconds: float, order: Sequence[tuple[str, ...]]) -> None:
        """Record the rows of one finished point and rewrite the CSV (points sorted by ``order``,
        each point's rows as returned) and the sidecar."""
        key = self.point_key(point)
        own = self.columns[len(key):]
        for values in rows:
            missing = [c for c in own if c not in values]
            if missing:
                raise ValueError(f"point {dict(point)} returned no value for {missing}")
        self.rows[key] = [list(key) + [format_cell(v[c]) for c in own] for v in rows]
        rank = {k: i for i, k in enumerate(order)}
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for k in sorted(self.rows, key=lambda k: rank[k]):
            writer.writerows(self.rows[k])
        atomic_write_text(self.csv_path, buf.getvalue())
        self.meta["point_seconds"]["/".join(key)] = round(seconds, 6)
        self.write_meta()

    def write_meta(self) -> None:
        text = json.dumps(self.meta, indent=2) + "\n"
        atomic_write_text(self.json_path, text)


def read_meta(path: Path) -> dict[str, Any]:
    """The sidecar at ``path``; anything that is not one of ours is an :class:`InputError`."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a readable results sidecar ({e}); left untouched") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a pathkl results sidecar (left untouched)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} has results format version {meta.get('format_version')}, "
                         f"this pathkl reads {FORMAT_VERSION}")
    return meta


def read_csv_rows(path: Path, columns: Sequence[str]) -> list[list[str]]:
    """Data rows of the CSV at ``path`` after checking its header and every row's shape."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} ({e}); left untouched") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or tuple(lines[0]) != tuple(columns):
        raise InputError(f"{path} has header {lines[0] if lines else '(empty)'}, expected "
                         f"{list(columns)}: not this study's results (left untouched)")
    for i, row in enumerate(lines[1:], start=2):
        if len(row) != len(columns):
            raise InputError(f"{path} is corrupt at line {i}: {len(row)} fields, "
                             f"expected {len(columns)} (left untouched)")
    return lines[1:]


def load(directory: Path) -> ResultsTable:
    """Read a results directory written by :class:`ResultsStore` (typed cells, metadata)."""
    directory = Path(directory)
    meta = read_meta(directory / JSON_NAME)
    columns = tuple(meta["columns"])
    csv_path = directory / CSV_NAME
    raw = read_csv_rows(csv_path, columns) if csv_path.exists() else []
    rows = tuple({c: parse_cell(v) for c, v in zip(columns, r)} for r in raw)
    return ResultsTable(columns=columns, rows=rows, meta=meta)


def iter_keys(points: Iterable[Mapping[str, Scalar]], key_columns: Sequence[str]):
    """Text keys of ``points`` in order."""
    return [tuple(format_cell(p[c]) for c in key_columns) for p in points]
