"""From stream records to stored rows: routing, photometry hand-off, batching, acknowledgement.

The link hands every new record here (once, in order). Records are routed to the procedure that
owns them — a sweep by its ``sweep_id``, an aging run by its channel, a spectrum by its sweep or
the request waiting for it — which returns the computed rows. Everything is queued in the store
and committed in batches every ``batch_ms``; only after a commit is the board told (``stream_ack``)
that it may free those records. A record no procedure claims is still stored (``run_id`` NULL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from firmware_protocol.connection import EpochStarted, RecordsLost, SpectrumReceived, StreamRecords
from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.spec import Stream

from .direction import SweepDirection
from .link import BoardLink
from .store import AGING_COLUMNS, SPECTRUM_COLUMNS, SWEEP_COLUMNS, Store

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    def on_records(self, records: np.ndarray, seq64: np.ndarray, rows: np.ndarray) -> None:
        """Fill in ``rows`` (a structured array with the table's columns, the raw rows of these
        records: run_id -1, derived columns NaN) in place; they are stored as they are then."""
        ...

    def on_spectrum(self, msg: SpectrumMsg, seq64: int) -> int | None:
        """Return the run id the spectrum belongs to (or None)."""
        ...


def empty_rows(columns: tuple[str, ...], n: int) -> np.ndarray:
    """``n`` rows of ``columns``: ids and counters 0, floats NaN, ``direction`` None."""
    return np.repeat(_row_template(columns), n)


@functools.cache
def _row_template(columns: tuple[str, ...]) -> np.ndarray:
    dtype = [(c, "O" if c == "direction" else ("i8" if c in _INT_COLS else "f8")) for c in columns]
    arr = np.zeros(1, dtype=dtype)
    for c in columns:
        if c == "direction":
            arr[c] = None
        elif c not in _INT_COLS:
            arr[c] = np.nan
    arr.setflags(write=False)
    return arr


_INT_COLS = {"seq", "run_id", "sweep_id", "idx", "t_us", "pixel", "flags", "pd_gain", "channel",
             "spectrum_seq", "epoch", "rev"}



def raw_sweep_rows(rec: np.ndarray, seq64: np.ndarray, run_id: int | None,
                   epoch: int = 0) -> np.ndarray:
    rows = empty_rows(SWEEP_COLUMNS, len(rec))
    rows["seq"] = seq64
    rows["epoch"] = epoch
    rows["run_id"] = -1 if run_id is None else run_id
    for c in ("sweep_id", "t_us", "pixel", "flags", "pd_gain", "voltage_set_v", "voltage_v",
              "current_a", "photodiode_a"):
        rows[c] = rec[c]
    rows["idx"] = rec["index"]
    rows["direction"] = SweepDirection.of_flags(rec["flags"])
    rows["spectrum_seq"] = -1
    return rows


def raw_aging_rows(rec: np.ndarray, seq64: np.ndarray, run_id: int | None,
                   epoch: int = 0) -> np.ndarray:
    rows = empty_rows(AGING_COLUMNS, len(rec))
    rows["seq"] = seq64
    rows["epoch"] = epoch
    rows["run_id"] = -1 if run_id is None else run_id
    for c in ("t_us", "channel", "pixel", "flags", "pd_gain", "current_a", "voltage_v",
              "photodiode_a", "temperature_c"):
        rows[c] = rec[c]
    return rows


def sql_rows(rows: np.ndarray, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """A structured array as rows for SQLite, column-wise: -1 ids become NULL (a NaN float is
    stored as NULL by SQLite itself)."""
    cols: list[list[Any]] = []
    for c in columns:
        vals = rows[c].tolist()
        if c in ("run_id", "spectrum_seq"):
            vals = [None if v == -1 else v for v in vals]
        cols.append(vals)
    return list(zip(*cols, strict=True))


AGING_ROUTE_MAX_RECORDS = 8192
"""Aging records held for routing before the batch commit routes them anyway."""


class Acquisition:
    def __init__(self, link: BoardLink, store: Store, batch_ms: float = 100.0) -> None:
        self.link = link
        self.store = store
        self.batch_s = batch_ms / 1000.0
        self.sweeps: dict[int, RecordSink] = {}
        self.aging: dict[int, RecordSink] = {}
        self.spectrum_waiters: dict[int, asyncio.Future[tuple[SpectrumMsg, int]]] = {}
        self.received: dict[Stream, int] = dict.fromkeys(Stream, 0)
        self.listeners: list[Callable[[str, np.ndarray], None]] = []
        self._recent_spectra: OrderedDict[int, tuple[SpectrumMsg, int]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        # aging records (many frames, interleaved channels) are routed together when the batch
        # is committed, or sooner once AGING_ROUTE_MAX_RECORDS wait: one photometry/stop-check
        # call per channel and batch instead of one per channel and frame; that call costs
        # tens of µs however few samples it carries (bench/bench_e2e.py, docs/benchmarks.md)
        self._aging_buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._aging_buffered = 0
        self._drain_soon = False
        self._epoch = 0
        self.lost_listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with each new loss record (the daemon raises an alert with it)."""
        self.on_commit: Callable[[], None] | None = None
        """Called after every commit (the daemon wakes its sinks with it)."""
        link.add_stream_consumer(self._on_stream)

    # -- lifecycle --------------------------------------------------------------------------
    def resume_from_store(self) -> None:
        """Start each stream where the store left off (after a restart or a crash), in the
        board epoch the store last saw."""
        state = self.store.meta("board_epoch")
        for stream in Stream:
            nxt = self.store.stream_next(int(stream))
            if nxt is not None:
                self.link.resume_stream(stream, nxt, self.store.stream_base(int(stream)))
        if state:
            self.link.conn.restore_epoch_state(state)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="store-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.batch_s)
            self._dirty.clear()
            try:
                self.flush()
            except Exception:
                log.exception("store flush failed; will retry")

    def flush(self) -> None:
        """Commit the batch, then acknowledge to the board what is now safely stored."""
        self._drain_aging()
        conn = self.link.conn
        for stream in Stream:
            nxt = self._contiguous_next(stream)
            if nxt is not None:
                self.store.set_stream_next(int(stream), nxt, conn.trackers[stream].base)
        if conn.epoch_boot_id is not None:
            self.store.queue_meta("board_epoch", conn.epoch_state())
        n = self.store.flush()
        for stream in Stream:
            nxt = self._contiguous_next(stream)
            if nxt is not None and nxt > 0:
                self.link.ack(stream, nxt - 1)
        if n and self.on_commit is not None:
            try:
                self.on_commit()
            except Exception:
                log.exception("on_commit callback failed")

    def _contiguous_next(self, stream: Stream) -> int | None:
        tr = self.link.conn.trackers[stream]
        if tr.expected is None:
            return None
        return tr.missing[0][0] if tr.missing else tr.expected

    # -- routing ----------------------------------------------------------------------------
    def _on_stream(self, ev: object) -> None:
        if isinstance(ev, RecordsLost):
            self._drain_aging()
            self._on_lost(ev)
            return
        if isinstance(ev, EpochStarted):
            self._drain_aging()  # the old epoch's records stay with their epoch
            self._epoch = ev.epoch
            self._dirty.set()
            return
        if isinstance(ev, StreamRecords):
            self.received[ev.stream] += len(ev.records)
            self._epoch = ev.epoch
            if ev.stream is Stream.SWEEP:
                self._route(ev.records, ev.seq64, "sweep_id", self.sweeps, raw_sweep_rows,
                            "sweep_points", SWEEP_COLUMNS)
            elif ev.stream is Stream.AGING:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop (direct calls): route at once
                    self._route(ev.records, ev.seq64, "channel", self.aging, raw_aging_rows,
                                "aging_samples", AGING_COLUMNS)
                    self._dirty.set()
                    return
                self._aging_buf.append((ev.records, ev.seq64))
                self._aging_buffered += len(ev.records)
                # not started yet (the link replays while it comes up) or a replay flood: route
                # at the end of this loop iteration instead of at the next commit
                if ((self._task is None or self._aging_buffered >= AGING_ROUTE_MAX_RECORDS)
                        and not self._drain_soon):
                    self._drain_soon = True
                    loop.call_soon(self._drain_aging)
        elif isinstance(ev, SpectrumReceived):
            self._drain_aging()  # keep the order of records and spectra
            self.received[Stream.SPECTRUM] += 1
            self._epoch = ev.epoch
            self._on_spectrum(ev.message, ev.seq64)
        self._dirty.set()

    def _drain_aging(self) -> None:
        self._drain_soon = False
        if not self._aging_buf:
            return
        buf, self._aging_buf = self._aging_buf, []
        self._aging_buffered = 0
        rec = buf[0][0] if len(buf) == 1 else np.concatenate([b[0] for b in buf])
        seq64 = buf[0][1] if len(buf) == 1 else np.concatenate([b[1] for b in buf])
        self._route(rec, seq64, "channel", self.aging, raw_aging_rows, "aging_samples",
                    AGING_COLUMNS)

    def _route(self, rec: np.ndarray, seq64: np.ndarray, key: str, owners: dict[int, RecordSink],
               raw: Callable[[np.ndarray, np.ndarray, int | None, int], np.ndarray], table: str,
               columns: tuple[str, ...]) -> None:
        """One block of raw rows for all the records, grouped by owner (stable: each owner's
        records stay in board order); each owner fills its slice in place; one insert."""
        keys = rec[key]
        if len(keys) > 1 and bool((keys[1:] != keys[:-1]).any()):
            order = np.argsort(keys, kind="stable")
            rec, seq64, keys = rec[order], seq64[order], keys[order]
        rows = raw(rec, seq64, None, self._epoch)
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))).tolist()
        for a, b in zip(starts, [*starts[1:], len(keys)], strict=True):
            owner = owners.get(int(keys[a]))
            if owner is None:
                continue
            try:
                owner.on_records(rec[a:b], seq64[a:b], rows[a:b])
            except Exception:  # a failing consumer never loses data
                log.exception("processing %s records failed; storing raw", table)
                rows[a:b] = raw(rec[a:b], seq64[a:b], None, self._epoch)
        self.store.add_rows(table, columns, sql_rows(rows, columns))
        for fn in self.listeners:
            try:
                fn(table, rows)
            except Exception:
                log.exception("listener failed")

    def _on_lost(self, ev: RecordsLost) -> None:
        """Keep a loss as data (once), with the board-time span from its stored neighbours,
        and tell the listeners (the daemon's alert) and the runs whose records it took."""
        self.store.flush()
        table = {Stream.AGING: "aging_samples", Stream.SWEEP: "sweep_points",
                 Stream.SPECTRUM: "spectra"}[ev.stream]
        t_from = ev.t_before_us
        if t_from is None:
            t_from = self.store.neighbour_t_us(table, ev.from_seq, before=True)
        t_to = ev.t_after_us
        if t_to is None:
            t_to = self.store.neighbour_t_us(table, ev.to_seq, before=False)
        new = self.store.add_records_lost(stream=ev.stream.name.lower(), epoch=ev.epoch,
                                          from_seq=ev.from_seq, to_seq=ev.to_seq,
                                          reason=ev.reason, t_from_us=t_from, t_to_us=t_to)
        if not new:
            return
        owners = self.aging if ev.stream is Stream.AGING else self.sweeps
        runs = sorted({int(r) for o in owners.values()
                       if (r := getattr(o, "run_id", None)) is not None})
        info = {"stream": ev.stream.name.lower(), "count": ev.count, "from_seq": ev.from_seq,
                "to_seq": ev.to_seq, "epoch": ev.epoch, "reason": ev.reason,
                "t_from_us": t_from, "t_to_us": t_to, "runs": runs}
        for fn in self.lost_listeners:
            try:
                fn(info)
            except Exception:
                log.exception("records-lost listener failed")

    def _on_spectrum(self, msg: SpectrumMsg, seq64: int) -> None:
        run_id: int | None = None
        owner = self.sweeps.get(msg.sweep_id) if msg.sweep_id != 0xFFFF else None
        if owner is None and msg.sweep_id == 0xFFFF:
            owner = next((a for a in self.aging.values() if getattr(a, "pixel", None) == msg.pixel),
                         None)
        if owner is not None:
            run_id = owner.on_spectrum(msg, seq64)
        counts = np.asarray(msg.counts, dtype="<u2").tobytes()
        row = (seq64, run_id, msg.t_us, msg.sweep_id, msg.index, msg.pixel, msg.flags,
               msg.voltage_v, msg.current_a, msg.integration_ms, msg.dark_counts, counts,
               self._epoch)
        self.store.add_rows("spectra", SPECTRUM_COLUMNS, [row])
        fut = self.spectrum_waiters.pop(seq64 % (1 << 32), None)
        if fut is not None and not fut.done():
            fut.set_result((msg, seq64))
        self._recent_spectra[seq64 % (1 << 32)] = (msg, seq64)
        while len(self._recent_spectra) > 64:
            self._recent_spectra.popitem(last=False)

    def wait_spectrum(self, seq32: int) -> asyncio.Future[tuple[SpectrumMsg, int]]:
        fut: asyncio.Future[tuple[SpectrumMsg, int]] = asyncio.get_running_loop().create_future()
        if seq32 in self._recent_spectra:
            fut.set_result(self._recent_spectra[seq32])
        else:
            self.spectrum_waiters[seq32] = fut
        return fut
