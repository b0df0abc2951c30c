"""The InfluxDB sink: history as line protocol over the v2 write API, by cursor.

Batches of rows are read from the store after the sink's cursor, written with influxdb-client's
**synchronous** write API (run in a worker thread so a slow database never stalls the event
loop), and the cursor moves only when the HTTP write returned 2xx. The client's batching mode
is not used: it drops a batch after its retries, and its buffer dies with the process.

Points (measurement ``sweep_point`` / ``aging_sample``)::

    sweep_point,station=S,run=R,pixel=N,substrate=..,device=..,job=..,direction=forward|reverse
        voltage_set_v=..,voltage_v=..,current_a=..,current_density_ma_cm2=..,photodiode_a=..,
        luminance_cd_m2=..,eqe_pct=..,ce_cd_a=..,pe_lm_w=..,seq=123i,sweep_id=..i,idx=..i,
        flags=..i,epoch=..i,rev=..i  <time_us>
    aging_sample,station=S,run=R,pixel=N,substrate=..,device=..,job=..
        current_a=..,voltage_v=..,photodiode_a=..,temperature_c=..,luminance_cd_m2=..,
        l_rel=..,eqe_pct=..,seq=..i,channel=..i,flags=..i,epoch=..i,rev=..i  <time_us>

The timestamp (precision µs) is the board's clock ``t_us`` plus a per-run offset to Unix time
fixed once in the store (``sink_time_anchors``), so a replayed row rewrites the identical point
(same tags, same timestamp) instead of adding one. Empty tags are left out; NaN fields are left
out (line protocol has no NaN).

A revision (``rev`` > 0: derived values recomputed when the run ended, see
:meth:`station.store.Store.revise`) is a new row in the store after the cursor: written with
the same measurement, tags and timestamp, it overwrites the provisional point's fields, so the
database ends with the store's final values.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from station.config import InfluxSection
from station.sinks.cursor import RunMeta, Sink, SinkDB
from station.store import AGING_COLUMNS, SWEEP_COLUMNS

MEASUREMENTS = {"sweep_points": "sweep_point", "aging_samples": "aging_sample"}
FLOAT_FIELDS = {
    "sweep_points": ("voltage_set_v", "voltage_v", "current_a", "current_density_ma_cm2",
                     "photodiode_a", "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w"),
    "aging_samples": ("current_a", "voltage_v", "photodiode_a", "temperature_c",
                      "luminance_cd_m2", "l_rel", "eqe_pct"),
}
INT_FIELDS = {
    "sweep_points": ("seq", "sweep_id", "idx", "flags", "epoch", "rev"),
    "aging_samples": ("seq", "channel", "flags", "epoch", "rev"),
}
COLUMNS = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS}
REVISED_FIELDS = {
    "sweep_points": ("luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w"),
    "aging_samples": ("luminance_cd_m2", "l_rel", "eqe_pct"),
}
"""Fields a run's final analysis may change (``revisions = "live_fields"`` writes them as
``live_<field>`` until the final revision)."""


def field_name(table: str, k: str, live: bool) -> str:
    return f"live_{k}" if live and k in REVISED_FIELDS[table] else k

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " ", "\r": " ",
                             "\\": "\\\\"})


def escape_tag(v: object) -> str:
    return str(v).translate(_TAG_ESCAPE)


def tags_of(station: str, meta: RunMeta, pixel: Any, direction: Any = None) -> str:
    """``,k=v`` pairs in a fixed order (Influx sorts them anyway); empty values left out."""
    parts = [("station", station), ("run", meta.id), ("pixel", pixel), ("substrate", meta.substrate),
             ("device", meta.device), ("job", meta.job_id), ("direction", direction)]
    return "".join(f",{k}={escape_tag(v)}" for k, v in parts if v is not None and v != "")


def line_of(table: str, station: str, meta: RunMeta, d: dict[str, Any], ts_us: int,
            live: bool = False) -> str:
    fields = [f"{field_name(table, k, live)}={float(v)!r}" for k in FLOAT_FIELDS[table]
              if (v := d.get(k)) is not None and math.isfinite(v)]
    fields += [f"{k}={int(v)}i" for k in INT_FIELDS[table] if (v := d.get(k)) is not None]
    pixel = d.get("pixel") if d.get("pixel") is not None else meta.pixel
    return (f"{MEASUREMENTS[table]}{tags_of(station, meta, pixel, d.get('direction'))} "
            f"{','.join(fields)} {ts_us}")


@dataclass(frozen=True)
class _Query:
    """What :meth:`InfluxSink._prepare` selects from a table, and its field formatter."""

    names: tuple[str, ...]  # the selected columns, after ``id`` (the flag column not included)
    columns: tuple[str, ...]  # SQL expressions: ``names`` then the "needs the general path" flag
    fields: Callable[[tuple[Any, ...]], str]  # row[first:-1] -> "k=v,..." when the flag is 0
    live_fields: Callable[[tuple[Any, ...]], str]  # the same with live_<k> for revised fields
    rev_pos: int  # index of ``rev`` in a row
    first: int  # index of the first field in a row: the fields are row[first:-1]


def _query(table: str) -> _Query:
    floats, ints = FLOAT_FIELDS[table], INT_FIELDS[table]
    direction = "direction" if "direction" in COLUMNS[table] else "NULL"
    names = ("run_id", "t_us", "pixel", "direction", *floats, *ints)
    exprs = ("run_id", "t_us", "pixel", direction, *floats, *ints)
    # NULL if any value is NULL, +-inf or NaN if any is infinite: abs(sum) < 9e999 is then
    # not true (a finite sum that overflows only sends the row down the general path)
    flag = f"CASE WHEN abs({' + '.join((*floats, *ints))}) < 9e999 THEN 0 ELSE 1 END"
    # row = (id, *names, flag): the fields are the contiguous slice row[first:-1], floats then
    # ints; a float is written "k=<repr>" (%r), an int "k=<str>i" (%s), exactly what line_of
    # writes for a row with every field. The formatter is the template's own % operator, a
    # C call per row (bench/bench_influx_format.py measures it against the eval-built lambda
    # it replaced)
    first = 1 + names.index(floats[0])
    assert names[first - 1:] == (*floats, *ints)

    def formatter(live: bool) -> Callable[[tuple[Any, ...]], str]:
        template = ",".join([f"{field_name(table, k, live)}=%r" for k in floats]
                            + [f"{k}=%si" for k in ints])
        return template.__mod__

    return _Query(names, (*exprs, flag), formatter(False), formatter(True),
                  1 + names.index("rev"), first)


_QUERIES = {table: _query(table) for table in MEASUREMENTS}
MAX_BATCHES_PER_ROUND = 8
"""Batches of one table per delivery round before the next table gets its turn."""


class InfluxSink(Sink):
    """Writes ``sweep_points`` and ``aging_samples`` to InfluxDB v2 (or anything that speaks its
    write API, e.g. VictoriaMetrics) in batches of ``batch_size`` rows."""

    name = "influx"
    # history for dashboards: at most 4 writes a second, not one after every commit (at 256
    # channels that is 40 small HTTP writes a second; docs/benchmarks.md (e))
    min_wake_interval_s = 0.25
    tables = ("sweep_points", "aging_samples")

    def __init__(self, store_path: str | Path, cfg: InfluxSection, station_id: str) -> None:
        super().__init__(store_path, poll_s=cfg.poll_s, retry_min_s=cfg.retry_min_s,
                         retry_max_s=cfg.retry_max_s)
        self.cfg = cfg
        self.station = station_id
        self.skipped_no_time = 0
        self._db_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[WriteApi]:
        client = InfluxDBClient(url=self.cfg.url, token=self.cfg.token, org=self.cfg.org,
                                timeout=int(self.cfg.timeout_s * 1000),
                                verify_ssl=self.cfg.verify_tls, ssl_ca_cert=self.cfg.ca_file)
        try:
            # /ping first, so health says "connected" only when the database answers
            if not await asyncio.to_thread(client.ping):
                raise ConnectionError(f"InfluxDB at {self.cfg.url} does not answer /ping")
            with client.write_api(write_options=SYNCHRONOUS) as api:
                yield api
        finally:
            await asyncio.to_thread(client.close)

    def _prepare(self, table: str, after: int | None = None) -> tuple[int, int, list[str]]:
        """(first id after which it read, id of the last row read, lines) for the batch after
        the sink's cursor, or after ``after`` (runs in a thread).

        Column-wise and cheap per row: SQLite returns the tag columns, the field values and a
        flag telling whether any of them is NULL or infinite (computed in C, GIL released); a
        row without such a value is one precompiled f-string with the run's tag prefix; the
        rare others go through :func:`line_of`, which leaves the missing fields out.
        """
        db: SinkDB = self.db
        with self._db_lock:  # the connection is shared with _advance, in another thread
            if after is None:
                after = db.cursor(self.name, table)
            q = _QUERIES[table]
            rows = db.rows_after(table, q.columns, after, self.cfg.batch_size)
            lines = self._lines(table, rows)
            return after, (rows[-1][0] if rows else after), lines

    def _lines(self, table: str, rows: list[tuple[Any, ...]]) -> list[str]:
        """Line protocol for ``(id, *_QUERIES[table].columns)`` rows (call under _db_lock)."""
        db: SinkDB = self.db
        q = _QUERIES[table]
        lines: list[str] = []
        prefixes: dict[tuple[Any, Any, Any], str] = {}
        anchors: dict[Any, int] = {}
        live_mode = self.cfg.revisions == "live_fields"
        for row in rows:
            live = live_mode and not row[q.rev_pos]
            run_id, t, pixel, direction = row[1], row[2], row[3], row[4]
            if t is None:  # no board time, no stable key: cannot be written idempotently
                self.skipped_no_time += 1
                continue
            off = anchors.get(run_id)
            if off is None:
                off = anchors[run_id] = db.anchor_us(run_id, int(t))
            if row[-1]:  # a NULL or infinite field: the general path
                d = dict(zip(q.names, row[1:-1], strict=True))
                lines.append(line_of(table, self.station, db.run_meta(run_id), d, int(t) + off,
                                     live))
                continue
            key = (run_id, pixel, direction)
            prefix = prefixes.get(key)
            if prefix is None:
                meta = db.run_meta(run_id)
                prefix = prefixes[key] = (
                    MEASUREMENTS[table]
                    + tags_of(self.station, meta, pixel if pixel is not None else meta.pixel,
                              direction) + " ")
            lines.append(f"{prefix}{(q.live_fields if live else q.fields)(row[q.first:-1])} {t + off}")
        return lines

    def resend_ids(self, table: str, *, since_unix_us: int | None = None,
                   runs: list[int] | None = None) -> list[int]:
        """Ids of the rows of ``table`` a resend covers: those of ``runs``, or those whose point
        time (board time + the run's anchor) is at or after ``since_unix_us`` (rows never
        delivered have no anchor yet: the normal delivery sends them)."""
        if runs:
            return self.db.ids_of_runs(table, runs)
        return self.db.ids_since(table, since_unix_us or 0)

    async def resend(self, *, since_unix_us: int | None = None, runs: list[int] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> int:
        """Write the selected rows again (``station sinks resend``): the same points (same
        measurement, tags, timestamp and values), so a database restored from a backup or one
        that lost its last seconds gets them back, and one that has them is unchanged. Does
        not touch the sink's cursor. Returns the number of points written."""
        work = {t: await asyncio.to_thread(self.resend_ids, t, since_unix_us=since_unix_us,
                                           runs=runs) for t in self.tables}
        total, done = sum(len(v) for v in work.values()), 0
        async with self.connect() as api:
            for table, ids in work.items():
                q = _QUERIES[table]
                for k in range(0, len(ids), self.cfg.batch_size):
                    chunk = ids[k:k + self.cfg.batch_size]

                    def build(chunk: list[int] = chunk, table: str = table,
                              q: _Query = q) -> list[str]:
                        with self._db_lock:
                            rows = self.db.rows_with_ids(table, q.columns, chunk)
                            return self._lines(table, rows)

                    lines = await asyncio.to_thread(build)
                    if lines:
                        await asyncio.to_thread(self._write, api, lines)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        return total

    def _write(self, api: WriteApi, lines: Iterable[str]) -> None:
        api.write(bucket=self.cfg.bucket, org=self.cfg.org, record="\n".join(lines).encode(),
                  write_precision=cast(WritePrecision, WritePrecision.US))

    async def deliver(self, conn: WriteApi) -> int:
        """Up to ``MAX_BATCHES_PER_ROUND`` batches per table, pipelined: the next batch is read
        and encoded while the database takes the current one. The cursor moves after each
        2xx, in order; a failed write leaves it on the last batch the database accepted."""
        moved = 0
        self.more_waiting = False
        for table in self.tables:
            after, last, lines = await asyncio.to_thread(self._prepare, table)
            for n in range(MAX_BATCHES_PER_ROUND):
                if last == after:
                    break
                nxt = (asyncio.ensure_future(asyncio.to_thread(self._prepare, table, last))
                       if n + 1 < MAX_BATCHES_PER_ROUND else None)
                try:
                    if lines:
                        self.attempted += len(lines)
                        await asyncio.to_thread(self._write, conn, lines)  # raises unless 2xx
                        self.sent += len(lines)
                    await asyncio.to_thread(self._advance, table, last)
                except BaseException:
                    if nxt is not None:  # a thread cannot be cancelled: let it finish, unused
                        with contextlib.suppress(BaseException):
                            await asyncio.shield(nxt)
                    raise
                self.acknowledged(len(lines))
                moved += max(1, len(lines))
                if nxt is None:  # the round's last batch: there may be more
                    self.more_waiting = True
                    break
                after, last, lines = await nxt
        return moved

    def _advance(self, table: str, last: int) -> None:
        with self._db_lock:
            self.db.advance(self.name, table, last)
