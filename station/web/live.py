"""The push channel: new samples, sweep points, events and the status, to every viewer.

One reader per daemon follows the store by row id (as the sinks do; the store is the truth) when
the acquisition commits a batch, builds each message once and hands the same bytes to every
subscriber's queue. A viewer that does not keep up (its queue full) is disconnected rather than
allowed to hold memory; it reconnects and re-reads what it missed from the API. Nothing here can
slow acquisition: the reader only runs on the event loop between batches and reads with indexed
queries from the id it stopped at.

Server-Sent Events (``text/event-stream``), one JSON object per message::

    event: hello    {"station", "ts"}
    event: status   the /api/v1/status object
    event: aging    {"runs": {run_id: {"pixel", "seq", "t_s", "l_rel", "voltage_v",
                     "luminance_cd_m2", "temperature_c"}}, "decimated", "commit_ts", "ts"}
    event: sweep    {"runs": {run_id: {"pixel", "seq", "direction", "voltage_v",
                     "current_density_ma_cm2", "luminance_cd_m2", "eqe_pct"}}, ...}
    event: event    {"id", "ts", "kind", "payload"}   job lifecycle events and alerts
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..sinks.cursor import clean_json
from ..store import queries
from .data import aging_t0, nums

log = logging.getLogger(__name__)

QUEUE_MESSAGES = 256  # a viewer this many messages behind is disconnected


def sse(event: str, data: Any) -> bytes:
    text = json.dumps(clean_json(data), allow_nan=False, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {text}\n\n".encode()


class Subscriber:
    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MESSAGES)
        self.dropped = False

    def put(self, msg: bytes | None) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)  # ends the stream


class Live:
    """Follows the store and fans messages out. ``notify()`` after a commit; ``run()`` as a
    task; ``subscribe()``/``unsubscribe()`` per viewer."""

    def __init__(self, db: sqlite3.Connection, status: Callable[[], dict[str, Any]], *,
                 status_interval_s: float = 1.0, max_rows: int = 500) -> None:
        self.db = db
        self.status = status
        self.status_interval_s = status_interval_s
        self.max_rows = max_rows
        self.subscribers: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._commit_ts: float | None = None
        self._t0: dict[int, int | None] = {}
        self.messages_sent = 0
        self.cursor = {t: queries.max_id(db, t) for t in ("aging_samples", "sweep_points",
                                                           "events")}

    def notify(self) -> None:
        """New rows were committed (the acquisition's on_commit)."""
        if self._commit_ts is None:
            self._commit_ts = time.time()
        self._wake.set()

    def subscribe(self, name: str) -> Subscriber:
        if not self.subscribers:
            # nobody watched: start from what is in the store now (the page reads history
            # from the API)
            self.cursor = {t: queries.max_id(self.db, t) for t in self.cursor}
        sub = Subscriber(name)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        for s in list(self.subscribers):
            s.put(None)

    def broadcast(self, msg: bytes) -> None:
        for s in list(self.subscribers):
            s.put(msg)
            if s.dropped:
                log.info("web: viewer %s fell %d messages behind: disconnected", s.name,
                         QUEUE_MESSAGES)
                self.subscribers.discard(s)
        self.messages_sent += 1

    async def run(self) -> None:
        next_status = 0.0
        while True:
            timeout = (max(next_status - time.monotonic(), 0.0) + 0.001 if self.subscribers
                       else self.status_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            commit_ts, self._commit_ts = self._commit_ts, None
            try:
                if not self.subscribers:
                    continue  # nobody watches: subscribe() skips what was committed meanwhile
                self._push_rows(commit_ts)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval_s
                    self.broadcast(sse("status", self.status()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("web: push failed")
                await asyncio.sleep(1.0)

    # -- rows -----------------------------------------------------------------------------------
    def _t0_of(self, run_id: int) -> int | None:
        if run_id not in self._t0 or self._t0[run_id] is None:
            self._t0[run_id] = aging_t0(self.db, run_id, queries.run_t0_us(self.db, run_id))
        return self._t0[run_id]

    def _pick(self, n: int) -> np.ndarray:
        if n <= self.max_rows:
            return np.arange(n)
        idx = np.unique(np.linspace(0, n - 1, self.max_rows).round().astype(np.int64))
        return idx

    def _push_rows(self, commit_ts: float | None) -> None:
        ts = time.time()
        # aging samples
        rows = queries.aging_after(self.db, self.cursor["aging_samples"], 100000)
        if rows:
            self.cursor["aging_samples"] = int(rows[-1][0])
            by_run: dict[int, list[tuple[Any, ...]]] = {}
            for r in rows:
                if r[1] is not None:
                    by_run.setdefault(int(r[1]), []).append(r)
            out: dict[str, Any] = {}
            decimated = False
            for run_id, rs in by_run.items():
                idx = self._pick(len(rs))
                decimated |= len(idx) < len(rs)
                a = np.array([[np.nan if v is None else v for v in r[3:]] for r in rs], float)[idx]
                t0 = self._t0_of(run_id) or 0
                out[str(run_id)] = {
                    "pixel": int(rs[0][2]), "seq": a[:, 0].astype(np.int64).tolist(),
                    "t_s": nums((a[:, 1] - t0) / 1e6, 3), "voltage_v": nums(a[:, 2], 4),
                    "l_rel": nums(a[:, 3], 5), "luminance_cd_m2": nums(a[:, 4], 4),
                    "temperature_c": nums(a[:, 5], 2)}
            if out:
                self.broadcast(sse("aging", {"runs": out, "decimated": decimated,
                                             "commit_ts": commit_ts, "ts": ts}))
        # sweep points
        rows = queries.sweep_after(self.db, self.cursor["sweep_points"], 100000)
        if rows:
            self.cursor["sweep_points"] = int(rows[-1][0])
            sw: dict[str, Any] = {}
            for r in rows:
                if r[1] is None:
                    continue
                d = sw.setdefault(str(r[1]), {"pixel": int(r[2]), "seq": [], "direction": [],
                                              "voltage_v": [], "current_density_ma_cm2": [],
                                              "luminance_cd_m2": [], "eqe_pct": []})
                d["seq"].append(int(r[3]))
                d["direction"].append(r[4])
                for k, v in zip(("voltage_v", "current_density_ma_cm2", "luminance_cd_m2",
                                 "eqe_pct"), r[5:], strict=True):
                    d[k].append(v)
            if sw:
                self.broadcast(sse("sweep", {"runs": sw, "commit_ts": commit_ts, "ts": ts}))
        # events (job lifecycle, alerts)
        ev = queries.events_after(self.db, self.cursor["events"], 1000)
        for eid, ets, kind, payload in ev:
            self.cursor["events"] = int(eid)
            self.broadcast(sse("event", {"id": eid, "ts": ets, "kind": kind,
                                         "payload": json.loads(payload)}))
