"""The InfluxDB sink: history as line protocol over the v2 write API, by cursor.

Batches of rows are read from the store after the sink's cursor, written with influxdb-client's
**synchronous** write API (run in a worker thread so a slow database never stalls the event
loop), and the cursor moves only when the HTTP write returned 2xx. The client's batching mode
is not used: it drops a batch after its retries, and its buffer dies with the process.

Points (measurement ``sweep_point`` / ``aging_sample``)::

    sweep_point,station=S,run=R,pixel=N,substrate=..,device=..,job=..,direction=up
        voltage_set_v=..,voltage_v=..,current_a=..,current_density_ma_cm2=..,photodiode_a=..,
        luminance_cd_m2=..,eqe_pct=..,ce_cd_a=..,pe_lm_w=..,seq=123i,sweep_id=..i,idx=..i,
        flags=..i  <time_us>
    aging_sample,station=S,run=R,pixel=N,substrate=..,device=..,job=..
        current_a=..,voltage_v=..,photodiode_a=..,temperature_c=..,luminance_cd_m2=..,
        l_rel=..,eqe_pct=..,seq=..i,channel=..i,flags=..i  <time_us>

The timestamp (precision µs) is the board's clock ``t_us`` plus a per-run offset to Unix time
fixed once in the store (``sink_time_anchors``), so a replayed row rewrites the identical point
(same tags, same timestamp) instead of adding one. Empty tags are left out; NaN fields are left
out (line protocol has no NaN).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi

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
    "sweep_points": ("seq", "sweep_id", "idx", "flags"),
    "aging_samples": ("seq", "channel", "flags"),
}
COLUMNS = {"sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS}

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " ", "\r": " ",
                             "\\": "\\\\"})


def escape_tag(v: object) -> str:
    return str(v).translate(_TAG_ESCAPE)


def tags_of(station: str, meta: RunMeta, pixel: Any, direction: Any = None) -> str:
    """``,k=v`` pairs in a fixed order (Influx sorts them anyway); empty values left out."""
    parts = [("station", station), ("run", meta.id), ("pixel", pixel), ("substrate", meta.substrate),
             ("device", meta.device), ("job", meta.job_id), ("direction", direction)]
    return "".join(f",{k}={escape_tag(v)}" for k, v in parts if v is not None and v != "")


def line_of(table: str, station: str, meta: RunMeta, d: dict[str, Any], ts_us: int) -> str:
    fields = [f"{k}={float(v)!r}" for k in FLOAT_FIELDS[table]
              if (v := d.get(k)) is not None and math.isfinite(v)]
    fields += [f"{k}={int(v)}i" for k in INT_FIELDS[table] if (v := d.get(k)) is not None]
    pixel = d.get("pixel") if d.get("pixel") is not None else meta.pixel
    return (f"{MEASUREMENTS[table]}{tags_of(station, meta, pixel, d.get('direction'))} "
            f"{','.join(fields)} {ts_us}")


class InfluxSink(Sink):
    """Writes ``sweep_points`` and ``aging_samples`` to InfluxDB v2 (or anything that speaks its
    write API, e.g. VictoriaMetrics) in batches of ``batch_size`` rows."""

    name = "influx"
    tables = ("sweep_points", "aging_samples")

    def __init__(self, store_path: str | Path, cfg: InfluxSection, station_id: str) -> None:
        super().__init__(store_path, poll_s=cfg.poll_s, retry_min_s=cfg.retry_min_s,
                         retry_max_s=cfg.retry_max_s)
        self.cfg = cfg
        self.station = station_id
        self.skipped_no_time = 0

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

    def _prepare(self, table: str) -> tuple[int, int, list[str]]:
        """(cursor, id of the last row read, lines) for the next batch (runs in a thread)."""
        db: SinkDB = self.db
        after = db.cursor(self.name, table)
        cols = COLUMNS[table]
        i_t, i_run = cols.index("t_us"), cols.index("run_id")
        rows = db.rows_after(table, cols, after, self.cfg.batch_size)
        lines = []
        for row in rows:
            vals = row[1:]
            t = vals[i_t]
            if t is None:  # no board time, no stable key: cannot be written idempotently
                self.skipped_no_time += 1
                continue
            run_id = vals[i_run]
            d = dict(zip(cols, vals, strict=True))
            lines.append(line_of(table, self.station, db.run_meta(run_id), d,
                                 int(t) + db.anchor_us(run_id, int(t))))
        return after, (rows[-1][0] if rows else after), lines

    def _write(self, api: WriteApi, lines: Iterable[str]) -> None:
        api.write(bucket=self.cfg.bucket, org=self.cfg.org, record="\n".join(lines).encode(),
                  write_precision=cast(WritePrecision, WritePrecision.US))

    async def deliver(self, conn: WriteApi) -> int:
        moved = 0
        for table in self.tables:
            after, last, lines = await asyncio.to_thread(self._prepare, table)
            if last == after:
                continue
            if lines:
                self.attempted += len(lines)
                await asyncio.to_thread(self._write, conn, lines)  # raises unless 2xx
                self.sent += len(lines)
            await asyncio.to_thread(self.db.advance, self.name, table, last)
            self.acknowledged(len(lines))
            moved += max(1, len(lines))
        return moved
