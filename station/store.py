"""The local store: SQLite in WAL mode, one file per station — the truth.

Every record from the board is written here before anything else sees it. Rows carry the
board's stream sequence number (unwrapped to 64 bits) as a UNIQUE key, so a replayed record is
ignored instead of duplicated, and an ``id`` in insertion order that sinks use as their cursor.
Writes are batched: :meth:`Store.flush` commits one transaction; the caller acknowledges the
board only after that, so a ``kill -9`` loses at most the unflushed batch, which the board's ring
buffer replays.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

SWEEP_COLUMNS = (
    "seq", "run_id", "sweep_id", "idx", "t_us", "pixel", "flags", "pd_gain", "direction",
    "voltage_set_v", "voltage_v", "current_a", "photodiode_a", "dark_a",
    "current_density_ma_cm2", "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w", "spectrum_seq",
)
AGING_COLUMNS = (
    "seq", "run_id", "t_us", "channel", "pixel", "flags", "pd_gain", "current_a", "voltage_v",
    "photodiode_a", "temperature_c", "dark_a", "luminance_cd_m2", "l_rel", "eqe_pct",
)
SPECTRUM_COLUMNS = (
    "seq", "run_id", "t_us", "sweep_id", "idx", "pixel", "flags", "voltage_v", "current_a",
    "integration_ms", "dark_counts", "counts",
)

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('sweep', 'aging')),
    station TEXT NOT NULL,
    pixel INTEGER NOT NULL,
    substrate TEXT,
    label TEXT,
    device TEXT,
    area_m2 REAL NOT NULL,
    job_id TEXT,
    status TEXT NOT NULL DEFAULT 'running',
    end_reason TEXT,
    params TEXT NOT NULL DEFAULT '{{}}',
    calibration TEXT NOT NULL DEFAULT '{{}}',
    summary TEXT,
    board_serial TEXT,
    channel INTEGER,
    sweep_id INTEGER,
    t0_us INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS sweep_points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    sweep_id INTEGER, idx INTEGER, t_us INTEGER, pixel INTEGER, flags INTEGER, pd_gain INTEGER,
    direction TEXT,
    voltage_set_v REAL, voltage_v REAL, current_a REAL, photodiode_a REAL, dark_a REAL,
    current_density_ma_cm2 REAL, luminance_cd_m2 REAL, eqe_pct REAL, ce_cd_a REAL, pe_lm_w REAL,
    spectrum_seq INTEGER
);
CREATE INDEX IF NOT EXISTS sweep_points_run ON sweep_points(run_id, idx);
CREATE TABLE IF NOT EXISTS aging_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    t_us INTEGER, channel INTEGER, pixel INTEGER, flags INTEGER, pd_gain INTEGER,
    current_a REAL, voltage_v REAL, photodiode_a REAL, temperature_c REAL, dark_a REAL,
    luminance_cd_m2 REAL, l_rel REAL, eqe_pct REAL
);
CREATE INDEX IF NOT EXISTS aging_samples_run ON aging_samples(run_id, seq);
CREATE TABLE IF NOT EXISTS spectra (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    t_us INTEGER, sweep_id INTEGER, idx INTEGER, pixel INTEGER, flags INTEGER,
    voltage_v REAL, current_a REAL, integration_ms REAL, dark_counts REAL,
    counts BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_state (
    stream INTEGER PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class StoreError(Exception):
    pass


class Store:
    """One station's SQLite store. Not thread-safe: use it from the event loop's thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_DDL)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open store {path}: {e}") from e
        self._pending: dict[str, list[tuple[Any, ...]]] = {
            "sweep_points": [], "aging_samples": [], "spectra": []}
        self._pending_streams: dict[int, int] = {}
        self.rows_written = 0

    def close(self) -> None:
        self.flush()
        self.db.close()

    # -- runs -------------------------------------------------------------------------------
    def create_run(self, *, kind: str, station: str, pixel: int, area_m2: float,
                   substrate: str | None = None, label: str | None = None, device: str | None = None,
                   job_id: str | None = None, params: dict[str, Any] | None = None,
                   calibration: dict[str, Any] | None = None, board_serial: str | None = None,
                   channel: int | None = None, sweep_id: int | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (kind, station, pixel, substrate, label, device, area_m2, job_id, "
            "params, calibration, board_serial, channel, sweep_id, started_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (kind, station, pixel, substrate, label, device, area_m2, job_id,
             json.dumps(params or {}), json.dumps(calibration or {}), board_serial, channel,
             sweep_id, time.time()))
        return int(cur.lastrowid or 0)

    def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"status", "end_reason", "summary", "params", "calibration", "t0_us",
                   "ended_at", "sweep_id", "channel"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError(f"cannot update run fields {sorted(bad)}")
        cols, vals = [], []
        for k, v in fields.items():
            cols.append(f"{k} = ?")
            vals.append(json.dumps(v) if k in ("summary", "params", "calibration") else v)
        self.db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id = ?", (*vals, run_id))

    def finish_run(self, run_id: int, status: str, reason: str,
                   summary: dict[str, Any] | None = None) -> None:
        self.flush()
        self.update_run(run_id, status=status, end_reason=reason, ended_at=time.time(),
                        **({"summary": summary} if summary is not None else {}))

    def run(self, run_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id} in {self.path}")
        names = [d[0] for d in self.db.execute("SELECT * FROM runs LIMIT 0").description]
        d = dict(zip(names, row, strict=True))
        for k in ("params", "calibration", "summary"):
            if d.get(k):
                d[k] = json.loads(d[k])
        return d

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT id FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY id"
        return [self.run(r[0]) for r in self.db.execute(q, (status,) if status else ())]

    # -- samples ----------------------------------------------------------------------------
    def add_rows(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
        expected = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS,
                    "spectra": SPECTRUM_COLUMNS}[table]
        if tuple(columns) != expected:
            raise StoreError(f"{table}: columns must be {expected}")
        self._pending[table].extend(rows)

    def add_structured(self, table: str, arr: np.ndarray) -> None:
        """Queue a numpy structured array whose field names are the table's columns."""
        cols = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS,
                "spectra": SPECTRUM_COLUMNS}[table]
        data = [arr[c].tolist() for c in cols]
        self._pending[table].extend(zip(*data, strict=True))

    def set_stream_next(self, stream: int, next_seq: int) -> None:
        """Record (in the same transaction as the data) the next seq expected on a stream."""
        self._pending_streams[stream] = max(next_seq, self._pending_streams.get(stream, 0))

    @property
    def pending_rows(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def flush(self) -> int:
        """Commit every queued row in one transaction; returns the number of new rows."""
        if not self.pending_rows and not self._pending_streams:
            return 0
        n = 0
        cols_of = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS,
                   "spectra": SPECTRUM_COLUMNS}
        with self.db:
            self.db.execute("BEGIN")
            for table, rows in self._pending.items():
                if not rows:
                    continue
                cols = cols_of[table]
                before = self.db.total_changes
                self.db.executemany(
                    f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})", rows)
                n += self.db.total_changes - before
            for stream, nxt in self._pending_streams.items():
                self.db.execute(
                    "INSERT INTO stream_state (stream, next_seq) VALUES (?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
                    (stream, nxt))
        for rows in self._pending.values():
            rows.clear()
        self._pending_streams.clear()
        self.rows_written += n
        return n

    def stream_next(self, stream: int) -> int | None:
        row = self.db.execute("SELECT next_seq FROM stream_state WHERE stream = ?",
                              (stream,)).fetchone()
        return None if row is None else int(row[0])

    def count(self, table: str, run_id: int | None = None) -> int:
        if table not in ("sweep_points", "aging_samples", "spectra"):
            raise StoreError(f"unknown table {table}")
        if run_id is None:
            return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return int(self.db.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?",
                                   (run_id,)).fetchone()[0])

    def fetch(self, table: str, run_id: int, order: str = "seq") -> dict[str, np.ndarray]:
        cols = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS}[table]
        rows = self.db.execute(
            f"SELECT {', '.join(cols)} FROM {table} WHERE run_id = ? ORDER BY {order}",
            (run_id,)).fetchall()
        out: dict[str, np.ndarray] = {}
        for i, c in enumerate(cols):
            vals = [r[i] for r in rows]
            if c == "direction":
                out[c] = np.array(vals, dtype=object)
            else:
                out[c] = np.array([np.nan if v is None else v for v in vals], dtype=float)
        return out

    def spectra_of(self, run_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            f"SELECT {', '.join(SPECTRUM_COLUMNS)} FROM spectra WHERE run_id = ? ORDER BY seq",
            (run_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(SPECTRUM_COLUMNS, r, strict=True))
            d["counts"] = np.frombuffer(d["counts"], dtype="<u2").astype(float)
            out.append(d)
        return out

    def assign_spectra(self, seqs: Iterable[int], run_id: int) -> None:
        self.flush()
        self.db.executemany("UPDATE spectra SET run_id = ? WHERE seq = ?",
                            [(run_id, s) for s in seqs])
