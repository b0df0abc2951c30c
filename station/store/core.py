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
import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .jobs import JobTable
from .schema import COLUMNS, REVISABLE, SPECTRUM_COLUMNS, StoreError, open_schema


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
            self._open_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open store {path}: {e}") from e
        self._pending: dict[str, list[tuple[Any, ...]]] = {t: [] for t in COLUMNS}
        self._pending_streams: dict[int, tuple[int, int | None]] = {}
        self._pending_meta: dict[str, Any] = {}
        self.rows_written = 0
        self.jobs = JobTable(self.db)
        """The job queue's table (:class:`station.store.jobs.JobTable`), on this connection."""

    def _open_schema(self) -> None:
        open_schema(self.db, self.path)

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

    def last_run_id(self) -> int:
        """The newest run's id; 0 in a store without runs."""
        row = self.db.execute("SELECT max(id) FROM runs").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def newest_run_after(self, after: int) -> int | None:
        """The id of the newest run created after run ``after``, if any."""
        row = self.db.execute("SELECT max(id) FROM runs WHERE id > ?", (after,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def last_turn_on_v(self, pixel_no: int) -> float | None:
        """V_on (``summary["von_v"]``) of the pixel's latest completed sweep, if any."""
        row = self.db.execute(
            "SELECT summary FROM runs WHERE kind = 'sweep' AND pixel = ? AND status = 'completed' "
            "AND summary IS NOT NULL ORDER BY id DESC LIMIT 1", (pixel_no,)).fetchone()
        if row is None:
            return None
        try:
            v = json.loads(row[0]).get("von_v")
        except (ValueError, AttributeError):
            return None
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    # -- samples ----------------------------------------------------------------------------
    def add_rows(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
        expected = COLUMNS[table]
        if tuple(columns) != expected:
            raise StoreError(f"{table}: columns must be {expected}")
        self._pending[table].extend(rows)

    def add_structured(self, table: str, arr: np.ndarray) -> None:
        """Queue a numpy structured array whose field names are the table's columns."""
        cols = COLUMNS[table]
        data = [arr[c].tolist() for c in cols]
        self._pending[table].extend(zip(*data, strict=True))

    def set_stream_next(self, stream: int, next_seq: int, base: int | None = None) -> None:
        """Record (in the same transaction as the data) the next seq expected on a stream, and
        the host seq of board seq 0 in the board's current epoch."""
        prev = self._pending_streams.get(stream)
        self._pending_streams[stream] = (max(next_seq, prev[0] if prev else 0),
                                         base if base is not None else (prev[1] if prev else None))

    def queue_meta(self, key: str, value: Any) -> None:
        """Set a meta value in the next :meth:`flush`'s transaction (with the data it describes)."""
        self._pending_meta[key] = value

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = excluded.value", (key, json.dumps(value)))

    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def add_records_lost(self, *, stream: str, epoch: int, from_seq: int, to_seq: int,
                         reason: str, t_from_us: int | None, t_to_us: int | None) -> bool:
        """Record records the board lost (once: a second report of the same hole is ignored);
        True when it is new."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO records_lost (ts, stream, epoch, from_seq, to_seq, count, "
            "reason, t_from_us, t_to_us) VALUES (?,?,?,?,?,?,?,?,?)",
            (time.time(), stream, epoch, from_seq, to_seq, to_seq - from_seq + 1, reason,
             t_from_us, t_to_us))
        return cur.rowcount > 0

    def records_lost(self, t_from_us: int | None = None, t_to_us: int | None = None,
                     stream: str | None = None) -> list[dict[str, Any]]:
        """Losses (optionally of one stream, overlapping a board-time span), oldest first."""
        q = ("SELECT id, ts, stream, epoch, from_seq, to_seq, count, reason, t_from_us, t_to_us "
             "FROM records_lost WHERE 1=1")
        args: list[Any] = []
        if stream is not None:
            q += " AND stream = ?"
            args.append(stream)
        if t_to_us is not None:
            q += " AND (t_from_us IS NULL OR t_from_us <= ?)"
            args.append(t_to_us)
        if t_from_us is not None:
            q += " AND (t_to_us IS NULL OR t_to_us >= ?)"
            args.append(t_from_us)
        names = ("id", "ts", "stream", "epoch", "from_seq", "to_seq", "count", "reason",
                 "t_from_us", "t_to_us")
        return [dict(zip(names, r, strict=True)) for r in self.db.execute(q + " ORDER BY id", args)]

    @property
    def pending_rows(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def flush(self) -> int:
        """Commit every queued row in one transaction; returns the number of new rows."""
        if not self.pending_rows and not self._pending_streams and not self._pending_meta:
            return 0
        n = 0
        with self.db:
            self.db.execute("BEGIN")
            for table, rows in self._pending.items():
                if not rows:
                    continue
                cols = COLUMNS[table]
                before = self.db.total_changes
                # a record already stored (a replay) is skipped; any other constraint fails
                self.db.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))}) ON CONFLICT(seq) DO NOTHING", rows)
                n += self.db.total_changes - before
            for stream, (nxt, base) in self._pending_streams.items():
                self.db.execute(
                    "INSERT INTO stream_state (stream, next_seq, base) VALUES (?, ?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq),"
                    " base = coalesce(?, base)", (stream, nxt, base or 0, base))
            for key, value in self._pending_meta.items():
                self.set_meta(key, value)
        for rows in self._pending.values():
            rows.clear()
        self._pending_streams.clear()
        self._pending_meta.clear()
        self.rows_written += n
        return n

    def revise(self, table: str, run_id: int, seqs: Sequence[int],
               values: dict[str, Sequence[float | None]]) -> int:
        """Replace derived values (``values[column][i]`` for row ``seqs[i]`` of run ``run_id``).

        A stored row is never changed in place: it is replaced, in one transaction, by a new
        revision (``rev`` + 1) with a new ``id``, so every sink, whose cursor only moves
        forward, delivers it again after what it already sent (InfluxDB rewrites the same
        point, MQTT subscribers get it with its ``rev``). Every row given is revised, changed
        or not (a run's final analysis), so that a database which cannot overwrite gets the
        final values once under their own names. Returns the number of rows revised."""
        if table not in REVISABLE:
            raise KeyError(table)
        cols = COLUMNS[table]
        bad = set(values) - set(cols) or {"seq", "run_id", "rev", "epoch"} & set(values)
        if bad:
            raise StoreError(f"{table}: cannot revise {sorted(bad)}")
        self.flush()
        current = {r[0]: list(r[1:]) for r in self.db.execute(
            f"SELECT seq, {', '.join(cols)} FROM {table} WHERE run_id = ?", (run_id,))}
        where = {c: cols.index(c) for c in values}
        i_rev = cols.index("rev")
        out: list[tuple[Any, ...]] = []
        for i, seq in enumerate(seqs):
            row = current.get(int(seq))
            if row is None:
                continue
            for c, k in where.items():
                v = values[c][i]
                row[k] = None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
            row[i_rev] = (row[i_rev] or 0) + 1
            out.append(tuple(row))
        if not out:
            return 0
        i_seq = cols.index("seq")
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"DELETE FROM {table} WHERE seq = ?", [(r[i_seq],) for r in out])
            self.db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) "
                                f"VALUES ({', '.join('?' * len(cols))})", out)
        return len(out)

    def neighbour_t_us(self, table: str, seq: int, *, before: bool) -> int | None:
        """Board time of the stored record of ``table`` just before (or after) ``seq``."""
        if table not in COLUMNS:
            raise StoreError(f"unknown table {table}")
        q = (f"SELECT t_us FROM {table} WHERE seq < ? ORDER BY seq DESC LIMIT 1" if before else
             f"SELECT t_us FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1")
        row = self.db.execute(q, (seq,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def stream_next(self, stream: int) -> int | None:
        row = self.db.execute("SELECT next_seq FROM stream_state WHERE stream = ?",
                              (stream,)).fetchone()
        return None if row is None else int(row[0])

    def stream_base(self, stream: int) -> int:
        row = self.db.execute("SELECT base FROM stream_state WHERE stream = ?",
                              (stream,)).fetchone()
        return 0 if row is None else int(row[0])

    def count(self, table: str, run_id: int | None = None) -> int:
        if table not in COLUMNS:
            raise StoreError(f"unknown table {table}")
        if run_id is None:
            return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return int(self.db.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?",
                                   (run_id,)).fetchone()[0])

    def fetch(self, table: str, run_id: int, order: str = "seq") -> dict[str, np.ndarray]:
        if table not in REVISABLE:
            raise KeyError(table)
        cols = COLUMNS[table]
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
        return spectra_of(self.db, run_id)

    def mark_probe_spectra(self, seqs: Iterable[int]) -> None:
        """Auto-exposure probes: kept with their run, but no analysis uses them."""
        self.flush()
        self.db.executemany("UPDATE spectra SET probe = 1 WHERE seq = ?", [(int(s),) for s in seqs])

    def assign_spectra(self, seqs: Iterable[int], run_id: int) -> None:
        self.flush()
        self.db.executemany("UPDATE spectra SET run_id = ? WHERE seq = ?",
                            [(run_id, s) for s in seqs])


def spectra_of(db: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """A run's spectra, oldest first: the table's columns, ``counts`` as floats, and ``probe``
    (an auto-exposure probe, not analysed). Any connection to the store file will do."""
    rows = db.execute(
        f"SELECT {', '.join(SPECTRUM_COLUMNS)}, probe FROM spectra WHERE run_id = ? ORDER BY seq",
        (run_id,)).fetchall()
    out = []
    for r in rows:
        d = dict(zip(SPECTRUM_COLUMNS, r[:-1], strict=True))
        d["counts"] = np.frombuffer(d["counts"], dtype="<u2").astype(float)
        d["probe"] = bool(r[-1])
        out.append(d)
    return out
