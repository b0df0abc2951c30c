"""Durable sink cursors, the events table and the delivery loop every sink shares.

A sink reads the store (its own SQLite connection to the same WAL file) in insertion order
(``id``) from its cursor, delivers a batch, and moves the cursor only past rows whose delivery
the far side acknowledged. The cursor lives in the store file itself (``sink_cursors``), so a
restarted sink replays exactly what was not acknowledged: at least once, never lost.

Tables added to the store here (created on first use, ``CREATE TABLE IF NOT EXISTS``):

- ``sink_cursors(sink, table_name, last_id)`` — per sink and table, the last delivered ``id``;
- ``events(id, ts, kind, payload)`` — job lifecycle events and alerts, written by
  :func:`publish_event` before any sink sees them, so an alert survives an outage too;
- ``sink_delivered_runs(sink, run_id, digest)`` — run summaries already published (runs are
  updated in place, so they are tracked by content digest instead of by cursor);
- ``sink_time_anchors(run_key, offset_us)`` — per run, the offset from the board clock ``t_us``
  (µs since the board started) to Unix time, fixed the first time a sink needs it, so a replay
  computes the same point timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SAMPLE_TABLES = ("sweep_points", "aging_samples")

_SINK_DDL = (
    "CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT NOT NULL, table_name TEXT NOT NULL, "
    "last_id INTEGER NOT NULL, PRIMARY KEY (sink, table_name))",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
    "kind TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sink_delivered_runs (sink TEXT NOT NULL, run_id INTEGER NOT NULL, "
    "digest TEXT NOT NULL, PRIMARY KEY (sink, run_id))",
    "CREATE TABLE IF NOT EXISTS sink_time_anchors (run_key INTEGER PRIMARY KEY, "
    "offset_us INTEGER NOT NULL)",
)

EVENT_KIND_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def ensure_sink_schema(db: sqlite3.Connection) -> None:
    """Create the sink tables in a store if they are missing (idempotent)."""
    for stmt in _SINK_DDL:
        db.execute(stmt)


class _HasDb(Protocol):
    db: sqlite3.Connection


def clean_json(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None, tuples by lists: what strict JSON can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return clean_json(value.item())
    return value


def publish_event(target: _HasDb | sqlite3.Connection, kind: str, payload: Mapping[str, Any],
                  *, ts: float | None = None) -> int:
    """Persist a job lifecycle event or alert in the store's ``events`` table; returns its id.

    ``kind`` becomes the MQTT topic suffix ``event/{kind}`` (``/``-separated levels of
    ``[A-Za-z0-9_.-]``, e.g. ``job/started`` or ``alert/interlock``). ``payload`` must be a
    JSON object. The event is committed before this returns; the MQTT sink then publishes it
    through its cursor like any sample, so it survives a broker outage and a restart. A bad
    ``kind`` or payload raises :class:`ValueError` and writes nothing.
    """
    if not isinstance(kind, str) or not EVENT_KIND_RE.match(kind) or len(kind) > 200:
        raise ValueError(f"bad event kind {kind!r}: use '/'-separated words of [A-Za-z0-9_.-]")
    if not isinstance(payload, Mapping):
        raise ValueError("event payload must be a mapping (a JSON object)")
    try:
        text = json.dumps(clean_json(payload), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"event payload is not JSON-serialisable: {e}") from None
    db = target if isinstance(target, sqlite3.Connection) else target.db
    ensure_sink_schema(db)
    cur = db.execute("INSERT INTO events (ts, kind, payload) VALUES (?, ?, ?)",
                     (time.time() if ts is None else ts, kind, text))
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
            from station.store import Store
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


# -- the delivery loop --------------------------------------------------------------------------
class Backoff:
    """Exponential backoff with jitter between ``min_s`` and ``max_s``."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.failures = 0

    def next_delay(self) -> float:
        d = min(self.max_s, self.min_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return d * random.uniform(0.75, 1.0)

    def reset(self) -> None:
        self.failures = 0


class Sink(ABC):
    """A store reader that delivers rows somewhere and keeps a durable cursor per table.

    Subclasses implement :meth:`connect` (an async context manager holding the connection)
    and :meth:`deliver` (one round over their tables; returns how many rows it moved the
    cursors past, raises on a failure after moving the cursors past what was acknowledged).
    The loop here retries with backoff; it never raises except for cancellation.
    """

    name = "sink"
    tables: tuple[str, ...] = SAMPLE_TABLES
    more_waiting: bool = True
    """Set by :meth:`deliver` to False when it read every row there was (no full batch)."""
    min_wake_interval_s: float = 0.0
    """:meth:`notify` (after each store commit) wakes the sink only if its last round began at
    least this long ago; otherwise the rows wait for the next wake-up or poll (``poll_s``)."""

    def __init__(self, store_path: str | Path, *, poll_s: float, retry_min_s: float,
                 retry_max_s: float, health_every_s: float = 1.0) -> None:
        self.store_path = Path(store_path)
        self.poll_s = poll_s
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self.health_every_s = health_every_s
        self.stop_grace_s = 3.0
        self._db: SinkDB | None = None
        self._wake = asyncio.Event()
        self._round_mono = -math.inf
        self.state = "starting"
        self.connected = False
        self.last_error: str | None = None
        self.delivered = 0        # rows the cursors moved past
        self.attempted = 0        # messages/points handed to the far side
        self.sent = 0             # ... of which the far side acknowledged
        self.failures = 0         # failed rounds / connection attempts
        self._last_ack_mono: float | None = None
        self._backlog: dict[str, dict[str, Any]] = {}
        self._backlog_at = -math.inf
        self._records_lost: dict[str, int] = {}

    # -- for subclasses -------------------------------------------------------------------------
    @abstractmethod
    def connect(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Open the connection (entered before delivering, left on stop or failure)."""

    @abstractmethod
    async def deliver(self, conn: Any) -> int:
        """One delivery round over this sink's tables; the number of rows acknowledged."""

    async def on_idle(self, conn: Any) -> None:  # noqa: B027 - optional hook
        """Called between rounds (e.g. to publish health)."""

    async def on_stop(self, conn: Any) -> None:  # noqa: B027 - optional hook
        """Called once on a clean stop, while still connected."""

    @property
    def db(self) -> SinkDB:
        if self._db is None:
            self._db = SinkDB(self.store_path)
        return self._db

    def acknowledged(self, rows: int) -> None:
        self.delivered += rows
        self._last_ack_mono = time.monotonic()

    # -- public ---------------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake the sink now (new rows are in the store) instead of at its next poll, unless its
        last round began less than ``min_wake_interval_s`` ago."""
        if time.monotonic() - self._round_mono >= self.min_wake_interval_s:
            self._wake.set()

    def health(self) -> dict[str, Any]:
        """Lag and state; cheap (the backlog is refreshed by the sink's own task)."""
        tables = {t: dict(b) for t, b in self._backlog.items()}
        return {
            "state": self.state,
            "connected": self.connected,
            "rows_behind": sum(b["rows_behind"] for b in tables.values()),
            "seconds_behind": max((b["seconds_behind"] for b in tables.values()), default=0.0),
            "tables": tables,
            "delivered": self.delivered,
            "attempted": self.attempted,
            "sent": self.sent,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_ack_age_s": (None if self._last_ack_mono is None
                               else round(time.monotonic() - self._last_ack_mono, 3)),
            "records_lost": dict(self._records_lost),
        }

    def _caught_up(self) -> None:
        """A round read every row there was and delivered it: health's backlog snapshot (read
        at most every ``health_every_s``) says so now, without a query; the next read of the
        store corrects it if rows arrived meanwhile."""
        for b in self._backlog.values():
            if b.get("rows_behind"):
                b.update(rows_behind=0, seconds_behind=0.0, cursor=max(b["cursor"], b["head"]))

    async def refresh_backlog(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_at < self.health_every_s:
            return
        self._backlog_at = now
        db = self.db

        def work() -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
            return {t: db.backlog(self.name, t) for t in self.tables}, db.records_lost()

        self._backlog, self._records_lost = await asyncio.to_thread(work)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; reconnect with backoff after any failure."""
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(lambda: self.db)  # opens the store on first use
                    await self._until_stopped(stop)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.connected = False
                    self.last_error = f"{type(e).__name__}: {e}"[:500]
                    self.state = "retrying"
                    delay = self.backoff.next_delay()
                    log.warning("%s sink: %s; retrying in %.1f s", self.name, self.last_error, delay)
                    with contextlib.suppress(Exception):
                        await self.refresh_backlog()
                    # counted once health holds the backlog, so whoever watches ``failures``
                    # reads a health that says how far behind the sink is
                    self.failures += 1
                    # health stays current while the sink waits to retry: rows keep arriving
                    end = time.monotonic() + delay
                    while not stop.is_set() and (left := end - time.monotonic()) > 0:
                        await _wait(stop, min(left, self.health_every_s))
                        with contextlib.suppress(Exception):
                            await self.refresh_backlog()
        finally:
            self.connected = False
            self.state = "stopped"
            if self._db is not None:
                self._db.close()
                self._db = None

    async def _until_stopped(self, stop: asyncio.Event) -> None:
        """Run the connected loop; once ``stop`` is set, give it ``stop_grace_s`` to finish its
        round and sign off, then cancel it (a connect or write stuck on a server that does
        not answer must not hold up the daemon's shutdown)."""
        task = asyncio.create_task(self._connected_loop(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait([task], timeout=self.stop_grace_s)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
            task.result()  # re-raise its failure for the retry loop
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _connected_loop(self, stop: asyncio.Event) -> None:
        self.state = "connecting"
        async with self.connect() as conn:
            self.connected = True
            self.state = "connected"
            while not stop.is_set():
                self._wake.clear()
                self._round_mono = time.monotonic()
                self.more_waiting = True
                moved = await self.deliver(conn)
                self.backoff.reset()  # a whole round went through
                self.last_error = None
                if moved and not self.more_waiting:
                    self._caught_up()
                await self.refresh_backlog(force=not moved)
                await self.on_idle(conn)
                # a round that took everything there was (no batch came back full) waits for
                # the next commit's wake-up, which a commit during the round has already set
                if not moved or not self.more_waiting:
                    await _wait_any(stop, self._wake, self.poll_s)
            await self.on_stop(conn)
        self.connected = False


async def _wait(stop: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    tasks = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
