"""The delivery loop every sink shares, and the events it delivers.

A sink reads the store (its own SQLite connection to the same WAL file:
:class:`station.store.sinks.SinkDB`) in insertion order (``id``) from its cursor, delivers a
batch, and moves the cursor only past rows whose delivery the far side acknowledged. The cursor
lives in the store file itself (``sink_cursors``), so a restarted sink replays exactly what was
not acknowledged: at least once, never lost. The tables and every query of them are the store's
(:mod:`station.store.schema`, :mod:`station.store.sinks`); :func:`publish_event` checks an event
and hands it to the store before any sink sees it, so an alert survives an outage too.
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
from pathlib import Path
from typing import Any, Protocol

from station.store.schema import SAMPLE_TABLES, ensure_sink_schema
from station.store.sinks import RunMeta, SinkDB, add_event

__all__ = ["SAMPLE_TABLES", "Backoff", "RunMeta", "Sink", "SinkDB", "clean_json",
           "ensure_sink_schema", "publish_event"]

log = logging.getLogger(__name__)

EVENT_KIND_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


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
    return add_event(db, kind, text, ts)


# -- the delivery loop --------------------------------------------------------------------------
class Backoff:
    """Exponential backoff with jitter between ``min_s`` and ``max_s``."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.failures = 0

    def next_delay(self) -> float:
        d = min(self.max_s, self.min_s * float(2 ** min(self.failures, 30)))
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
