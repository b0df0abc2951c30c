"""The sinks' side of the store: cursors, events, delivered summaries, time anchors, and every
read a sink makes of the samples and runs.

A sink reads the store through its own SQLite connection to the same WAL file
(:class:`SinkDB`, blocking: call it through ``to_thread``), in insertion order (``id``) from its
cursor, and moves the cursor only past rows whose delivery the far side acknowledged. The tables
(defined in :mod:`station.store.schema`) live in the store file itself, so a restarted sink
replays exactly what was not acknowledged:

- ``sink_cursors(sink, table_name, last_id)`` — per sink and table, the last delivered ``id``;
- ``events(id, ts, kind, payload)`` — job lifecycle events and alerts
  (:func:`station.sinks.cursor.publish_event` writes them through :func:`add_event`);
- ``sink_delivered_runs(sink, run_id, digest)`` — run summaries already published;
- ``sink_time_anchors(run_key, offset_us)`` — per run, the offset from the board clock ``t_us``
  to Unix time, fixed the first time a sink needs it, so a replay computes the same timestamps.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SAMPLE_TABLES, ensure_sink_schema


def open_connection(path: str | Path) -> sqlite3.Connection:
    """A short-lived connection of its own to the store file, in autocommit mode (an event
    written from outside the store's thread)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=30.0)


def add_event(db: sqlite3.Connection, kind: str, payload_json: str, ts: float | None = None
              ) -> int:
    """Insert an event (its payload already JSON) and commit it; returns its id."""
    ensure_sink_schema(db)
    cur = db.execute("INSERT INTO events (ts, kind, payload) VALUES (?, ?, ?)",
                     (time.time() if ts is None else ts, kind, payload_json))
    if db.in_transaction:  # a connection not in autocommit mode: make the event durable now
        db.commit()
    return int(cur.lastrowid or 0)


@dataclass(frozen=True)
class RunMeta:
    """What a sink tags a sample with: fixed when the run is created."""

    id: int | None
    kind: str | None = None
    pixel: int | None = None
    substrate: str | None = None
    label: str | None = None
    device: str | None = None
    job_id: str | None = None
    t0_us: int | None = None


class SinkDB:
    """A sink's own connection to the store file. Blocking: call it through ``to_thread``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            # let the store create its schema (the daemon may start the sinks first)
            from .core import Store
            Store(self.path).close()
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                  timeout=30.0)
        self.db.execute("PRAGMA busy_timeout = 30000")
        ensure_sink_schema(self.db)
        self._runs: dict[int, RunMeta] = {}
        self._anchors: dict[int, int] = {}
        self._intervals: dict[int, int | None] = {}

    def close(self) -> None:
        self.db.close()

    # -- cursors ------------------------------------------------------------------------------
    def cursor(self, sink: str, table: str) -> int:
        row = self.db.execute("SELECT last_id FROM sink_cursors WHERE sink = ? AND table_name = ?",
                              (sink, table)).fetchone()
        return 0 if row is None else int(row[0])

    def advance(self, sink: str, table: str, last_id: int) -> None:
        """Move the cursor forward (never back) to ``last_id``, durably."""
        self.db.execute(
            "INSERT INTO sink_cursors (sink, table_name, last_id) VALUES (?, ?, ?) "
            "ON CONFLICT(sink, table_name) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
            (sink, table, int(last_id)))

    def reset(self, sink: str, table: str | None = None, last_id: int = 0) -> None:
        """Set a cursor to ``last_id`` (0 replays everything): an operator's tool."""
        if table is None:
            self.db.execute("DELETE FROM sink_cursors WHERE sink = ?", (sink,))
            return
        self.db.execute(
            "INSERT INTO sink_cursors (sink, table_name, last_id) VALUES (?, ?, ?) "
            "ON CONFLICT(sink, table_name) DO UPDATE SET last_id = excluded.last_id",
            (sink, table, int(last_id)))

    def head(self, table: str) -> int:
        row = self.db.execute(f"SELECT max(id) FROM {table}").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def backlog(self, sink: str, table: str) -> dict[str, Any]:
        """Rows behind, and how far behind in time: board seconds for samples, host seconds
        for events (newest row's time minus the oldest undelivered row's)."""
        cur = self.cursor(sink, table)
        head = self.head(table)
        behind = 0 if head <= cur else int(self.db.execute(
            f"SELECT count(*) FROM {table} WHERE id > ?", (cur,)).fetchone()[0])
        seconds = 0.0
        if behind:
            tcol = "ts" if table == "events" else "t_us"
            scale = 1.0 if table == "events" else 1e-6
            first = self.db.execute(f"SELECT {tcol} FROM {table} WHERE id > ? ORDER BY id LIMIT 1",
                                    (cur,)).fetchone()
            last = self.db.execute(f"SELECT {tcol} FROM {table} WHERE id = ?", (head,)).fetchone()
            if first and last and first[0] is not None and last[0] is not None:
                seconds = max(0.0, (last[0] - first[0]) * scale)
        return {"cursor": cur, "head": head, "rows_behind": behind, "seconds_behind": seconds}

    def records_lost(self) -> dict[str, int]:
        """Records the board lost before the store got them, per stream (the store's
        ``records_lost`` table): a sink's data has these holes whatever it delivers."""
        try:
            return {str(s): int(n) for s, n in self.db.execute(
                "SELECT stream, sum(count) FROM records_lost GROUP BY stream")}
        except sqlite3.OperationalError:  # a store from before the table existed
            return {}

    # -- rows ---------------------------------------------------------------------------------
    def rows_after(self, table: str, columns: tuple[str, ...], after: int,
                   limit: int) -> list[tuple[Any, ...]]:
        """``(id, *columns)`` of up to ``limit`` rows with ``id > after``, in id order."""
        return self.db.execute(
            f"SELECT id, {', '.join(columns)} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit)).fetchall()

    def rows_with_ids(self, table: str, columns: tuple[str, ...],
                      ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """``(id, *columns)`` of the rows of ``table`` with the given ids, in id order."""
        return self.db.execute(
            f"SELECT id, {', '.join(columns)} FROM {table} WHERE id IN "
            f"({','.join('?' * len(ids))}) ORDER BY id", tuple(ids)).fetchall()

    def ids_of_runs(self, table: str, runs: Sequence[int]) -> list[int]:
        """Ids of the rows of ``table`` of the given runs, in id order."""
        marks = ",".join("?" * len(runs))
        return [r[0] for r in self.db.execute(
            f"SELECT id FROM {table} WHERE run_id IN ({marks}) ORDER BY id", tuple(runs))]

    def ids_since(self, table: str, since_unix_us: int) -> list[int]:
        """Ids of the rows of ``table`` whose point time (board time + the run's anchor) is at
        or after ``since_unix_us``; rows of a run without an anchor are not among them."""
        return [r[0] for r in self.db.execute(
            f"SELECT t.id FROM {table} t JOIN sink_time_anchors a "
            "ON a.run_key = coalesce(t.run_id, 0) WHERE t.t_us + a.offset_us >= ? ORDER BY t.id",
            (since_unix_us,))]

    def previous_aging_t_us(self, firsts: Sequence[tuple[Any, Any, int]]) -> list[Any]:
        """For each ``(run_id, pixel, seq)``, the board time of the stored aging sample of that
        run and pixel just before ``seq`` (None if there is none), all in one query per 100: a
        round trip per group and batch was a few % of a core at 32 channels."""
        out: list[Any] = [None] * len(firsts)
        for k0 in range(0, len(firsts), 100):
            part = firsts[k0:k0 + 100]
            sql, args = [], []
            for j, (run_id, pixel, seq) in enumerate(part):
                where = "run_id = ?" if run_id is not None else "run_id IS NULL"
                sql.append(f"SELECT {j}, (SELECT t_us FROM aging_samples WHERE {where} AND "
                           "pixel IS ? AND seq < ? ORDER BY seq DESC LIMIT 1)")
                args += [*((run_id,) if run_id is not None else ()), pixel, seq]
            for j, t in self.db.execute(" UNION ALL ".join(sql), args).fetchall():
                out[k0 + j] = t
        return out

    def run_meta(self, run_id: int | None) -> RunMeta:
        if run_id is None:
            return RunMeta(None)
        meta = self._runs.get(run_id)
        if meta is None:
            row = self.db.execute(
                "SELECT kind, pixel, substrate, label, device, job_id, t0_us FROM runs WHERE id = ?",
                (run_id,)).fetchone()
            if row is None:
                return RunMeta(run_id)
            meta = RunMeta(run_id, *row)
            if meta.t0_us is not None:  # t0_us is set once, with the first aging sample
                self._runs[run_id] = meta
            else:
                self._runs.pop(run_id, None)
        return meta

    def run_interval_us(self, run_id: int | None) -> int | None:
        """The run's sample interval (its parameters' ``interval_s``), µs; None if unknown."""
        if run_id is None:
            return None
        if run_id not in self._intervals:
            row = self.db.execute("SELECT params FROM runs WHERE id = ?", (run_id,)).fetchone()
            iv = None
            if row is not None and row[0]:
                try:
                    v = json.loads(row[0]).get("interval_s")
                    iv = round(float(v) * 1e6) if v else None
                except (ValueError, TypeError, AttributeError):
                    iv = None
            self._intervals[run_id] = iv
        return self._intervals[run_id]

    def anchor_us(self, run_id: int | None, t_us: int) -> int:
        """Offset to add to a board time of this run to get Unix µs; persisted once per run."""
        key = 0 if run_id is None else int(run_id)
        off = self._anchors.get(key)
        if off is not None:
            return off
        row = self.db.execute("SELECT offset_us FROM sink_time_anchors WHERE run_key = ?",
                              (key,)).fetchone()
        if row is None:
            off = self._compute_anchor(run_id, t_us)
            self.db.execute("INSERT OR IGNORE INTO sink_time_anchors (run_key, offset_us) "
                            "VALUES (?, ?)", (key, off))
            row = self.db.execute("SELECT offset_us FROM sink_time_anchors WHERE run_key = ?",
                                  (key,)).fetchone()
        off = int(row[0])
        self._anchors[key] = off
        return off

    def _compute_anchor(self, run_id: int | None, t_us: int) -> int:
        if run_id is not None:
            r = self.db.execute("SELECT started_at, t0_us FROM runs WHERE id = ?",
                                (run_id,)).fetchone()
            if r is not None:
                started_at, t0 = r
                if t0 is None:
                    firsts = [self.db.execute(f"SELECT min(t_us) FROM {t} WHERE run_id = ?",
                                              (run_id,)).fetchone()[0] for t in SAMPLE_TABLES]
                    t0 = min([f for f in firsts if f is not None], default=t_us)
                return round(float(started_at) * 1e6) - int(t0)
        return round(time.time() * 1e6) - int(t_us)

    def completed_runs_to_publish(self, sink: str) -> list[dict[str, Any]]:
        """Completed runs whose summary this sink has not published (or that changed since)."""
        names = [d[0] for d in self.db.execute("SELECT * FROM runs LIMIT 0").description]
        out = []
        rows = self.db.execute(
            "SELECT r.*, d.digest FROM runs r LEFT JOIN sink_delivered_runs d "
            "ON d.run_id = r.id AND d.sink = ? WHERE r.status = 'completed' ORDER BY r.id",
            (sink,)).fetchall()
        for row in rows:
            run = dict(zip(names, row[:-1], strict=True))
            digest = _digest(run)
            if digest != row[-1]:
                run["_digest"] = digest
                out.append(run)
        return out

    def mark_run_published(self, sink: str, run_id: int, digest: str) -> None:
        self.db.execute("INSERT INTO sink_delivered_runs (sink, run_id, digest) VALUES (?, ?, ?) "
                        "ON CONFLICT(sink, run_id) DO UPDATE SET digest = excluded.digest",
                        (sink, run_id, digest))


def _digest(run: Mapping[str, Any]) -> str:
    import hashlib
    key = json.dumps([run.get(k) for k in ("status", "end_reason", "summary", "ended_at")],
                     default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]
