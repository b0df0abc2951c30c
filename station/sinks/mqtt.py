"""The MQTT sink: live telemetry, status, events/alerts and run summaries (aiomqtt, MQTT 5).

Topics (``{p}`` = ``mqtt.topic_prefix``, ``{s}`` = the station id; see ``docs/mqtt.md``)::

    {p}/{s}/status                retained  online / offline (the Last Will)
    {p}/{s}/health                retained  sink lag and backlog, every health_interval_s
    {p}/{s}/pixel/{n}/sweep                 every J-V-L sweep point
    {p}/{s}/pixel/{n}/aging                 aging samples, decimated to aging_publish_hz
    {p}/{s}/event/{kind...}                 job lifecycle events and alerts
    {p}/{s}/run/{id}/summary      retained  summary of each completed run

Everything is published with QoS 1 from the store by cursor: a row counts as delivered only
when the broker's PUBACK came back with a success reason code. Payloads are JSON objects with
``schema``, ``type``, ``station``, ``seq`` and the board time ``t_us`` (subscribers
deduplicate on ``seq``), and units in key names. The models below are the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field

from station.config import MqttSection
from station.direction import SweepDirection
from station.mqttclient import AckClient, broker_address, json_properties, tls_context
from station.sinks.cursor import Sink, SinkDB, clean_json
from station.store import AGING_COLUMNS, SWEEP_COLUMNS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


# -- payload schema (what subscribers parse; docs/mqtt.md) --------------------------------------
class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    station: str


class _Sample(_Msg):
    seq: int = Field(description="host stream sequence number (board seq + the board epoch's "
                     "base): with ``rev``, the deduplication key")
    epoch: int | None = Field(description="board epoch: restarts of the board's counters seen")
    rev: int = Field(description="revision: 0 as measured; n > 0 replaces every earlier "
                     "message with this seq (derived values recomputed when the run ended)")
    t_us: int | None = Field(description="board time, µs since the board started")
    time_us: int | None = Field(description="Unix time in µs: t_us + a per-run anchor")
    run_id: int | None
    job: str | None
    substrate: str | None
    device: str | None
    label: str | None
    pixel: int | None
    flags: int | None
    voltage_v: float | None
    current_a: float | None
    photodiode_a: float | None
    luminance_cd_m2: float | None
    eqe_pct: float | None


class SweepPointMessage(_Sample):
    type: Literal["sweep_point"] = "sweep_point"
    sweep_id: int | None
    idx: int | None
    direction: SweepDirection | None
    voltage_set_v: float | None
    current_density_ma_cm2: float | None
    ce_cd_a: float | None
    pe_lm_w: float | None


class AgingSampleMessage(_Sample):
    type: Literal["aging_sample"] = "aging_sample"
    channel: int | None
    elapsed_s: float | None = Field(description="seconds since the run's first sample")
    temperature_c: float | None
    l_rel: float | None


class EventMessage(_Msg):
    type: Literal["event"] = "event"
    kind: str
    seq: int = Field(description="event id in the station's store: the deduplication key")
    t_us: None = None
    ts: float = Field(description="host Unix time (s) when the event was recorded")
    data: dict[str, Any]


class RunSummaryMessage(_Msg):
    type: Literal["run_summary"] = "run_summary"
    seq: int = Field(description="the run id")
    t_us: int | None = Field(description="board time of the run's first sample, if known")
    run_id: int
    kind: str
    status: str
    end_reason: str | None
    pixel: int
    substrate: str | None
    device: str | None
    label: str | None
    job: str | None
    started_at: float
    ended_at: float | None
    summary: dict[str, Any] | None


class StatusMessage(_Msg):
    type: Literal["status"] = "status"
    state: Literal["online", "offline"]
    reason: str
    ts: float | None = Field(description="host Unix time (s); null in the Last Will")


class HealthMessage(_Msg):
    type: Literal["health"] = "health"
    ts: float
    sinks: dict[str, Any]


@dataclass(frozen=True)
class Outgoing:
    row_id: int
    topic: str | None       # None: the row is skipped (decimated) but still passed by the cursor
    payload: bytes = b""
    retain: bool = False


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(clean_json(d), allow_nan=False, separators=(",", ":")).encode()


class MqttSink(Sink):
    """Publishes the store to an MQTT broker; see the module docstring for the topics."""

    name = "mqtt"
    tables = ("events", "sweep_points", "aging_samples")

    def __init__(self, store_path: str | Path, cfg: MqttSection, station_id: str, *,
                 health_source: Callable[[], dict[str, Any]] | None = None,
                 summary_every_s: float = 2.0) -> None:
        super().__init__(store_path, poll_s=cfg.poll_s, retry_min_s=cfg.retry_min_s,
                         retry_max_s=cfg.retry_max_s)
        self.cfg = cfg
        self.station = station_id
        self.base = f"{cfg.topic_prefix}/{station_id}"
        self.health_source = health_source or (lambda: {self.name: self.health()})
        self.summary_every_s = summary_every_s
        self._last_summary_check = -math.inf
        self._last_health_pub = -math.inf
        self._props = json_properties()
        self._tls: ssl.SSLContext | None = None
        self._tls_loaded = False

    # -- topics and payloads --------------------------------------------------------------------
    @property
    def status_topic(self) -> str:
        return f"{self.base}/status"

    def will(self) -> aiomqtt.Will:
        payload = StatusMessage(station=self.station, state="offline", reason="connection lost",
                                ts=None).model_dump_json(by_alias=True).encode()
        return aiomqtt.Will(self.status_topic, payload, qos=1, retain=True)

    def _status(self, state: Literal["online", "offline"], reason: str) -> bytes:
        return StatusMessage(station=self.station, state=state, reason=reason,
                             ts=time.time()).model_dump_json(by_alias=True).encode()

    def _sample_common(self, db: SinkDB, d: dict[str, Any]) -> dict[str, Any]:
        meta = db.run_meta(d["run_id"])
        t = d["t_us"]
        pixel = d["pixel"] if d["pixel"] is not None else meta.pixel
        return {"schema": SCHEMA_VERSION, "station": self.station, "seq": d["seq"],
                "epoch": d["epoch"], "rev": d["rev"] or 0, "t_us": t,
                "time_us": None if t is None else t + db.anchor_us(d["run_id"], t),
                "run_id": d["run_id"], "job": meta.job_id, "substrate": meta.substrate,
                "device": meta.device, "label": meta.label, "pixel": pixel, "flags": d["flags"]}

    def _prepare(self, table: str, limit: int) -> tuple[int, list[Outgoing]]:
        """Read up to ``limit`` rows after the cursor and encode them (runs in a thread)."""
        db = self.db
        after = db.cursor(self.name, table)
        out: list[Outgoing] = []
        if table == "events":
            for rid, ts, kind, payload in db.rows_after("events", ("ts", "kind", "payload"),
                                                        after, limit):
                msg = {"schema": SCHEMA_VERSION, "station": self.station, "type": "event",
                       "kind": kind, "seq": rid, "t_us": None, "ts": ts,
                       "data": json.loads(payload)}
                out.append(Outgoing(rid, f"{self.base}/event/{kind}", _dumps(msg)))
        elif table == "sweep_points":
            for row in db.rows_after(table, SWEEP_COLUMNS, after, limit):
                d = dict(zip(SWEEP_COLUMNS, row[1:], strict=True))
                msg = self._sample_common(db, d)
                msg["type"] = "sweep_point"
                for k in ("sweep_id", "idx", "direction", "voltage_set_v", "voltage_v",
                          "current_a", "current_density_ma_cm2", "photodiode_a",
                          "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w"):
                    msg[k] = d[k]
                out.append(Outgoing(row[0], f"{self.base}/pixel/{msg['pixel']}/sweep",
                                    _dumps(msg)))
        elif table == "aging_samples":
            rows = db.rows_after(table, AGING_COLUMNS, after, limit)
            keep = self._decimate(db, rows)
            for row, kept in zip(rows, keep, strict=True):
                if not kept:
                    out.append(Outgoing(row[0], None))
                    continue
                d = dict(zip(AGING_COLUMNS, row[1:], strict=True))
                msg = self._sample_common(db, d)
                meta = db.run_meta(d["run_id"])
                msg["type"] = "aging_sample"
                msg["elapsed_s"] = (None if meta.t0_us is None or d["t_us"] is None
                                    else (d["t_us"] - meta.t0_us) / 1e6)
                for key in ("channel", "voltage_v", "current_a", "photodiode_a", "temperature_c",
                            "luminance_cd_m2", "l_rel", "eqe_pct"):
                    msg[key] = d[key]
                out.append(Outgoing(row[0], f"{self.base}/pixel/{msg['pixel']}/aging",
                                    _dumps(msg)))
        return after, out

    def _decimate(self, db: SinkDB, rows: list[tuple[Any, ...]]) -> list[bool]:
        """Which aging samples to publish at ``aging_publish_hz``.

        For a run whose sample interval is known (its parameters), a sample is kept when it is
        the first of its 1/rate bucket of board time on the run's schedule: floor(t·rate)
        differs from floor((t − interval)·rate). That depends on the sample and its run alone,
        so every delivery, replay and revision publishes the same subset, whatever order the
        samples were stored in. Otherwise (no run, no interval) a sample is kept when its bucket
        differs from the previous stored sample's (by seq) of the same run and pixel."""
        hz = self.cfg.aging_publish_hz
        i_seq, i_run, i_t, i_px = (1 + AGING_COLUMNS.index(c) for c in ("seq", "run_id", "t_us",
                                                                         "pixel"))
        keep = [True] * len(rows)
        scheduled: list[int] = []
        for i, r in enumerate(rows):
            iv = db.run_interval_us(r[i_run])
            t = r[i_t]
            if iv is None or t is None:
                scheduled.append(i)
                continue
            if iv * hz < 1e6:  # more than one sample per bucket
                keep[i] = math.floor(t * hz / 1e6) != math.floor((t - iv) * hz / 1e6)
        rows_left = [rows[i] for i in scheduled]
        keep_left = self._decimate_by_previous(db, rows_left, hz, i_seq, i_run, i_t, i_px)
        for i, k in zip(scheduled, keep_left, strict=True):
            keep[i] = k
        return keep

    def _decimate_by_previous(self, db: SinkDB, rows: list[tuple[Any, ...]], hz: float,
                              i_seq: int, i_run: int, i_t: int, i_px: int) -> list[bool]:
        groups: dict[tuple[Any, Any], list[tuple[int, int | None, int]]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r[i_run], r[i_px]), []).append((r[i_seq], r[i_t], i))
        keep = [True] * len(rows)

        def bucket(t: int | None) -> int | None:
            return None if t is None else math.floor(t * hz / 1e6)

        for items in groups.values():
            items.sort()
        # the board time of each group's previous sample (by seq), all groups in one query
        keys = list(groups)
        prev_t: dict[tuple[Any, Any], Any] = dict(zip(keys, db.previous_aging_t_us(
            [(run_id, pixel, groups[(run_id, pixel)][0][0]) for run_id, pixel in keys]),
            strict=True))
        for key, items in groups.items():
            # no previous sample and one without a board time both keep the group's first
            # sample (below: first, or b != None), so a NULL from the query needs no telling apart
            t_prev = prev_t.get(key)
            last = bucket(t_prev)
            first = t_prev is None
            for _seq, t, i in items:
                b = bucket(t)
                keep[i] = first or b is None or b != last
                first = False
                last = b
        return keep

    def _summaries(self) -> list[tuple[int, str, Outgoing]]:
        out = []
        for run in self.db.completed_runs_to_publish(self.name):
            summary = json.loads(run["summary"]) if run.get("summary") else None
            msg = {"schema": SCHEMA_VERSION, "station": self.station, "type": "run_summary",
                   "seq": run["id"], "t_us": run.get("t0_us"), "run_id": run["id"],
                   "kind": run["kind"], "status": run["status"], "end_reason": run["end_reason"],
                   "pixel": run["pixel"], "substrate": run["substrate"], "device": run["device"],
                   "label": run["label"], "job": run["job_id"], "started_at": run["started_at"],
                   "ended_at": run["ended_at"], "summary": summary}
            out.append((run["id"], run["_digest"],
                        Outgoing(run["id"], f"{self.base}/run/{run['id']}/summary", _dumps(msg),
                                 retain=True)))
        return out

    # -- delivery -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AckClient]:
        if not self._tls_loaded:
            self._tls = await asyncio.to_thread(tls_context, self.cfg)
            self._tls_loaded = True
        host, port = broker_address(self.cfg)
        client = AckClient(
            host, port, username=self.cfg.username, password=self.cfg.password,
            identifier=self.cfg.client_id or f"ledstation-{self.station}",
            protocol=aiomqtt.ProtocolVersion.V5, will=self.will(), tls_context=self._tls,
            keepalive=self.cfg.keepalive_s, timeout=self.cfg.timeout_s,
            max_inflight_messages=self.cfg.window, clean_start=True,
            # small QoS 1 packets and their PUBACKs must not wait for Nagle's algorithm
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        client.pending_calls_threshold = self.cfg.window + 10  # a full window is normal here
        async with client:
            await client.publish_acked(self.status_topic, self._status("online", "connected"),
                                       retain=True, properties=self._props,
                                       timeout=self.cfg.timeout_s)
            yield client

    async def on_stop(self, conn: AckClient) -> None:
        # short timeout: a broker that stopped answering must not hold up the daemon's exit
        await conn.publish_acked(self.status_topic, self._status("offline", "stopped"),
                                 retain=True, properties=self._props,
                                 timeout=min(2.0, self.cfg.timeout_s))

    async def on_idle(self, conn: AckClient) -> None:
        now = time.monotonic()
        if now - self._last_health_pub < self.cfg.health_interval_s:
            return
        self._last_health_pub = now
        await self.publish_health(conn)

    async def publish_health(self, conn: AckClient) -> None:
        msg = {"schema": SCHEMA_VERSION, "station": self.station, "type": "health",
               "ts": time.time(), "sinks": self.health_source()}
        await conn.publish_acked(f"{self.base}/health", _dumps(msg), retain=True,
                                 properties=self._props, timeout=self.cfg.timeout_s)

    async def _publish_all(self, conn: AckClient, out: list[Outgoing]) -> list[BaseException | None]:
        """Publish ``out`` concurrently (at most ``window`` of them: the caller chunks), and
        return per message None (acknowledged) or the error."""

        async def one(o: Outgoing) -> None:
            if o.topic is None:
                return
            self.attempted += 1
            await conn.publish_acked(o.topic, o.payload, retain=o.retain,
                                     properties=self._props, timeout=self.cfg.timeout_s)

        res = await asyncio.gather(*(one(o) for o in out), return_exceptions=True)
        for r in res:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation and the like
        return [r if isinstance(r, BaseException) else None for r in res]

    def _chunks(self, out: list[Outgoing]) -> list[list[Outgoing]]:
        """Consecutive runs of rows holding at most ``window`` messages each."""
        chunks: list[list[Outgoing]] = [[]]
        n = 0
        for o in out:
            if o.topic is not None:
                if n == self.cfg.window:
                    chunks.append([])
                    n = 0
                n += 1
            chunks[-1].append(o)
        return chunks

    def _prepare_tables(self, limit: int) -> list[tuple[str, int, list[Outgoing]]]:
        """:meth:`_prepare` of every table, in one thread hop (a round runs after every
        store commit: 40 times a second at the default ``store.batch_ms``)."""
        return [(table, *self._prepare(table, limit)) for table in self.tables]

    async def _deliver_table(self, conn: AckClient, table: str, after: int,
                             out: list[Outgoing]) -> int:
        """Publish the prepared batch of ``table`` a window at a time; after each window move
        the cursor past the rows acknowledged without a gap, so at most one window is ever
        published twice (after a failure or a kill)."""
        moved = 0
        for chunk in self._chunks(out):
            if not chunk:
                continue
            results = await self._publish_all(conn, chunk)
            last, n, err = after, 0, None
            for o, r in zip(chunk, results, strict=True):
                if r is not None:
                    err = r
                    break
                last, n = o.row_id, n + 1
            self.sent += sum(1 for o, r in zip(chunk, results, strict=True)
                             if o.topic and r is None)
            if last > after:
                await asyncio.to_thread(self.db.advance, self.name, table, last)
                self.acknowledged(n)
                after, moved = last, moved + n
            if err is not None:
                raise err
        return moved

    async def deliver(self, conn: AckClient) -> int:
        moved = 0
        limit = self.cfg.batch_size
        prepared = await asyncio.to_thread(self._prepare_tables, limit)
        self.more_waiting = any(len(out) >= limit for _, _, out in prepared)
        for table, after, out in prepared:
            moved += await self._deliver_table(conn, table, after, out)
        now = time.monotonic()
        if now - self._last_summary_check >= self.summary_every_s or self._wake.is_set():
            self._last_summary_check = now
            todo = await asyncio.to_thread(self._summaries)
            if todo:
                results = await self._publish_all(conn, [o for _, _, o in todo])
                for (run_id, digest, _), r in zip(todo, results, strict=True):
                    if r is not None:
                        raise r
                    await asyncio.to_thread(self.db.mark_run_published, self.name, run_id, digest)
                    self.sent += 1
        return moved
