"""Store and forward, end to end: the daemon (``station run``) ages two pixels of the simulated
board, the job submitted remotely over MQTT 5, while first the MQTT broker and then the
database (VictoriaMetrics, InfluxDB write API) are stopped and started again. Nothing is lost
and nothing is doubled: every sample the board produced is in the store once, in the database
once, and on MQTT; the job's lifecycle events, the run summaries and the station's status
reach a subscriber; and each outage raises ``alert/sink_backlog`` once and clears it once.

The daemon runs in-process (:class:`station.daemon.Daemon`) in the test's event loop, next to
the simulator, and is stopped by cancelling it, which is what SIGTERM does
(``run_with_signals``). It runs without ``exit_when_idle``: started with no job, that mode
exits at its first idle check (0.5 s), before a job submitted over MQTT could arrive.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from firmware_protocol.spec import Stream
from sim.server import SimServer
from station.config import StationConfig, load_config
from station.daemon import Daemon
from station.remote import NoAnswer, RemoteStation
from tests.services import (  # noqa: F401  (fixtures)
    Certs,
    Collector,
    Mosquitto,
    Received,
    Victoria,
    _binary,
    mqtt_certs,
    on_schedule,
    victoria_factory,
    wait_until,
)
from tests.stationkit import assert_complete

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_ACL = ROOT / "deploy" / "mosquitto" / "acl"
STATION = "e2e-a"  # with the deployed ACL a station's MQTT user name is its id
USERS = {STATION: "e2e-a-pw", "operator": "operator-pw"}
PREFIX = f"ledstation/{STATION}"
PRESETS = ["dbsa", "otac"]
SPEED = 2e4  # board seconds per wall second: 40 h of aging take ~7 wall seconds
INTERVAL_S = 60
# under 48 h: the simulated board time runs ahead of the wall clock, so the last points carry
# future timestamps, and VictoriaMetrics drops points more than 2 days in the future
UNTIL_H = 40
BACKLOG_ALERT_ROWS = 300
JOB = {"name": "e2e aging", "kind": "aging", "pixels": [1, 2],
       "aging": {"current_density_ma_cm2": [1.0, 2.0], "until": f"{UNTIL_H}h",
                 "interval_s": INTERVAL_S}}


class AclMosquitto(Mosquitto):
    """tests/services.py's broker (password file, persistence, fixed ports across a restart)
    with the deployed ACL: the station reads its commands and writes its telemetry in its own
    subtree, ``operator`` sends commands, ``viewer`` reads everything."""

    def __post_init__(self) -> None:
        super().__post_init__()
        passwd = _binary(["mosquitto_passwd", "/usr/bin/mosquitto_passwd"], "mosquitto")
        for user, password in USERS.items():
            subprocess.run([passwd, "-b", str(self.root / "passwd"), user, password], check=True,
                           capture_output=True)
        (self.root / "acl").write_text(DEPLOY_ACL.read_text())


@pytest.fixture
def acl_broker(tmp_path: Path, mqtt_certs: Certs) -> Iterator[AclMosquitto]:
    b = AclMosquitto(tmp_path / "mosquitto", mqtt_certs)
    b.start()
    yield b
    b.kill()


def station_cfg(tmp_path: Path, board_url: str, broker: Mosquitto, db: Victoria) -> StationConfig:
    fast = dict(poll_s=0.05, retry_min_s=0.05, retry_max_s=0.3, timeout_s=3.0)
    return load_config(
        None, station={"id": STATION},
        board={"url": board_url, "watchdog_s": 10.0},
        store={"path": str(tmp_path / "station.db"), "batch_ms": 50.0,
               "backlog_alert_rows": BACKLOG_ALERT_ROWS},
        substrates=[{"id": "S1", "pixels": [
            {"number": i + 1, "label": f"P{i + 1}", "area_mm2": 4.0, "device": p}
            for i, p in enumerate(PRESETS)]}],
        mqtt={"enabled": True, "url": broker.url, "username": STATION,
              "password": USERS[STATION], "keepalive_s": 5, "health_interval_s": 0.5,
              "aging_publish_hz": 1.0, **fast},
        influxdb={"enabled": True, "url": db.url, "token": "t", "org": "lab", "bucket": "b",
                  "batch_size": 500, **fast})


def operator_cfg(broker: Mosquitto) -> StationConfig:
    return load_config(None, station={"id": STATION},
                       mqtt={"url": broker.url, "username": "operator",
                             "password": USERS["operator"], "timeout_s": 5.0, "keepalive_s": 5})


class StoreView:
    """Reads the daemon's store file through its own connection (WAL: never blocks it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        con = sqlite3.connect(str(self.path), timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # a table not created yet
            return []
        finally:
            con.close()

    def n(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        rows = self.q(sql, args)
        return int(rows[0][0] or 0) if rows else 0

    def aging(self) -> int:
        return self.n("SELECT count(*) FROM aging_samples")

    def cursor(self, sink: str, table: str) -> int:
        return self.n("SELECT last_id FROM sink_cursors WHERE sink = ? AND table_name = ?",
                      (sink, table))

    def caught_up(self, sink: str, tables: tuple[str, ...]) -> bool:
        return all(self.cursor(sink, t) >= self.n(f"SELECT coalesce(max(id), 0) FROM {t}")
                   for t in tables)

    def alerts(self, sink: str) -> list[dict[str, Any]]:
        out = [json.loads(p) for p, in self.q(
            "SELECT payload FROM events WHERE kind = 'alert/sink_backlog' ORDER BY id")]
        return [a for a in out if a["sink"] == sink]


def on(messages: list[Received], pattern: str) -> list[dict[str, Any]]:
    """Payloads received on ``{PREFIX}/{pattern}`` (MQTT wildcards allowed)."""
    return [m.payload for m in messages if aiomqtt.Topic(m.topic).matches(f"{PREFIX}/{pattern}")]


def mqtt_subset(store: StoreView) -> set[int]:
    """The aging seqs the MQTT sink publishes: per run, the samples that are the first of their
    1/aging_publish_hz bucket of board time on the run's schedule (docs/mqtt.md, decimation)."""
    out: set[int] = set()
    for run_id, in store.q("SELECT DISTINCT run_id FROM aging_samples"):
        rows = store.q("SELECT seq, t_us FROM aging_samples WHERE run_id = ? ORDER BY seq",
                       (run_id,))
        out.update(rows[i][0] for i in on_schedule([t for _, t in rows], 1.0, INTERVAL_S * 10**6))
    return out


RUNNING: list[Daemon] = []  # the daemon the test started, while it runs


def sink(name: str) -> dict[str, Any]:
    return RUNNING[-1].sink_health().get(name, {}) if RUNNING else {}


async def run_daemon_task(cfg: Any) -> int:
    """The daemon, as ``station run`` runs it (until cancelled), reachable by :func:`sink`."""
    async with Daemon(cfg) as d:
        RUNNING.append(d)
        try:
            await d.serve()
        finally:
            RUNNING.remove(d)
    return 0


async def retained(broker: Mosquitto, topic: str, n: int, what: str) -> list[Any]:
    """What a new subscriber gets on ``topic``: at least ``n`` retained messages."""
    async with Collector(broker, topic) as c:
        await wait_until(lambda: len(c.messages) >= n, what=what)
        return list(c.messages)


async def remote_call(broker: Mosquitto, verb: str, fields: dict[str, Any] | None = None) -> Any:
    async with RemoteStation(operator_cfg(broker), client_name="operator@e2e") as st:
        return await st.call(verb, fields, timeout_s=10)


async def outage(stop: Callable[[], None], start: Callable[[], None], name: str, store: StoreView,
                 job_running: Callable[[], bool]) -> dict[str, Any]:
    """Stop a server while the aging runs, keep it down until the daemon raised the backlog
    alert for its sink, start it again; what happened meanwhile."""
    n_alerts = len(store.alerts(name))
    samples0, t0 = store.aging(), time.monotonic()
    stop()
    await wait_until(lambda: not sink(name).get("connected", True), what=f"{name} sink down")
    await wait_until(lambda: len(store.alerts(name)) > n_alerts, what=f"{name} backlog alert",
                     timeout_s=60)
    raised = store.alerts(name)[-1]
    still_running = job_running()
    samples1, t1 = store.aging(), time.monotonic()
    start()
    return {"samples_during": samples1 - samples0, "samples_at_restart": samples1,
            "wall_s": round(t1 - t0, 2),
            "raised": raised, "job_running_at_restart": still_running}


@pytest.mark.slow
async def test_daemon_outages_of_broker_and_database_lose_and_double_nothing(
        tmp_path, acl_broker, victoria_factory):
    broker, vm = acl_broker, victoria_factory()
    server = SimServer(PRESETS, speed=SPEED, seed=11)
    board_url = await server.start()
    cfg = station_cfg(tmp_path, board_url, broker, vm)
    store = StoreView(Path(cfg.store.path))
    daemon: asyncio.Task[int] | None = None
    figures: dict[str, Any] = {}
    try:
        # a viewer with a persistent session: the broker keeps its subscription, and what is
        # published for it while it is away, across the broker's own restart
        async with Collector(broker, f"{PREFIX}/#", persistent=True,
                             client_id="e2e-viewer") as sub:
            daemon = asyncio.create_task(run_daemon_task(cfg), name="daemon")

            def statuses() -> list[str]:
                return [p["state"] for p in on(sub.messages, "status")]

            await wait_until(lambda: "online" in statuses() or daemon.done(),
                             what="the daemon's telemetry online")
            assert not daemon.done(), daemon.result()

            # 1. the job, submitted remotely (operator -> broker ACL -> control server)
            async def control_ready() -> Any:
                while True:  # until the control server has subscribed (status changes nothing)
                    with contextlib.suppress(NoAnswer):
                        return await remote_call(broker, "status")

            status = await asyncio.wait_for(control_ready(), 60)
            assert status["station"] == STATION and status["link_up"] is True
            info = await remote_call(broker, "submit", {"job": JOB})
            job_id = info["id"]
            assert info["client"] == "operator@e2e"

            def job_running() -> bool:
                return store.n("SELECT count(*) FROM jobs WHERE id = ? AND state = 'running'",
                               (job_id,)) == 1

            await wait_until(lambda: store.aging() >= 400, what="aging under way")
            # a new subscriber sees the retained status online while the station runs
            st = await retained(broker, f"{PREFIX}/status", 1, "retained status")
            assert st[-1].retain and st[-1].payload["state"] == "online"

            # 2a. the broker goes away while the aging runs, and comes back (same port)
            figures["mqtt"] = await outage(broker.stop, broker.start, "mqtt", store, job_running)
            await wait_until(lambda: sink("mqtt").get("connected", False),
                             what="the mqtt sink reconnected")
            head = store.n("SELECT max(id) FROM aging_samples")
            await wait_until(lambda: store.cursor("mqtt", "aging_samples") >= head,
                             what="mqtt sink caught up after the outage", timeout_s=60)
            st = await retained(broker, f"{PREFIX}/status", 1, "retained status after restart")
            assert st[-1].payload["state"] == "online"

            # 2b. then the database
            figures["influx"] = await outage(vm.stop, vm.start, "influx", store, job_running)

            # 3. the job completes; the sinks catch up
            await wait_until(lambda: any(p["data"].get("job") == job_id
                                         for p in on(sub.messages, "event/job/completed")),
                             what="job/completed at the subscriber", timeout_s=120)
            final = await remote_call(broker, "get", {"job_id": job_id})
            assert final["state"] == "completed", final
            assert [(r["kind"], r["pixel"], r["status"], r["end_reason"]) for r in final["runs"]] \
                == [("aging", 1, "completed", "duration"), ("aging", 2, "completed", "duration")]
            run_ids = [r["id"] for r in final["runs"]]
            await wait_until(lambda: store.caught_up("influx", ("sweep_points", "aging_samples"))
                             and store.caught_up("mqtt", ("events", "sweep_points",
                                                          "aging_samples")),
                             what="both sinks caught up", timeout_s=120)
            # the last backlog alerts are cleared once the sinks are back (then published)
            await wait_until(lambda: all(store.alerts(s)[-1]["state"] == "cleared"
                                         for s in ("mqtt", "influx")),
                             what="backlog alerts cleared", timeout_s=30)
            to_publish = mqtt_subset(store)
            await wait_until(lambda: {p["seq"] for p in on(sub.messages, "pixel/+/aging")}
                             >= to_publish, what="the aging samples at the subscriber",
                             timeout_s=60)
            await wait_until(lambda: len([p for p in on(sub.messages, "event/alert/sink_backlog")
                                          if p["data"]["state"] == "cleared"]) >= 2,
                             what="backlog alerts at the subscriber", timeout_s=30)
            await wait_until(lambda: {p["run_id"] for p in on(sub.messages, "run/+/summary")} >= set(run_ids),
                             what="run summaries at the subscriber", timeout_s=30)

            # stop the daemon the way SIGTERM does (run_with_signals cancels it)
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(daemon, 60)
            await wait_until(lambda: statuses()[-1:] == ["offline"], what="status offline")
            messages = list(sub.messages)
    finally:
        if daemon is not None and not daemon.done():
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await daemon
        await server.stop()

    # -- after the stop: the retained topics a newcomer gets ------------------------------------
    st = await retained(broker, f"{PREFIX}/status", 1, "retained status after the stop")
    assert st[-1].retain and st[-1].payload["state"] == "offline"
    assert st[-1].payload["reason"] == "stopped"
    summaries = await retained(broker, f"{PREFIX}/run/+/summary", 2, "retained summaries")
    assert all(m.retain for m in summaries)
    assert sorted(m.payload["run_id"] for m in summaries) == sorted(run_ids)
    assert all(m.payload["status"] == "completed" and m.payload["job"] == job_id
               for m in summaries)

    # -- the store holds exactly what the board produced ---------------------------------------
    produced = server.board.counters.produced[Stream.AGING]
    seqs = np.array([s for s, in store.q("SELECT seq FROM aging_samples ORDER BY seq")])
    assert_complete(seqs, produced)
    assert store.n("SELECT count(*) FROM aging_samples WHERE run_id IS NULL OR t_us IS NULL") == 0
    per_pixel = dict(store.q("SELECT pixel, count(*) FROM aging_samples GROUP BY pixel"))
    assert set(per_pixel) == {1, 2}

    # -- the database holds every sample exactly once -------------------------------------------
    def exported() -> list[dict[str, Any]]:
        return vm.export(f'{{__name__="aging_sample_seq",station="{STATION}"}}')

    series = exported()
    points = sum(len(s["values"]) for s in series)
    assert points == len(seqs), f"{points} points in the database for {len(seqs)} stored samples"
    by_pixel: dict[int, list[int]] = {}
    for s in series:
        assert s["metric"]["job"] == job_id and int(s["metric"]["run"]) in run_ids
        by_pixel.setdefault(int(s["metric"]["pixel"]), []).extend(int(v) for v in s["values"])
    assert {px: len(set(v)) for px, v in by_pixel.items()} == per_pixel
    assert {px: len(v) for px, v in by_pixel.items()} == per_pixel
    assert sorted(v for vs in by_pixel.values() for v in vs) == seqs.tolist()

    # -- MQTT: every sample (1 Hz decimation keeps all of a 60 s interval), the lifecycle ------
    aging_msgs = on(messages, "pixel/+/aging")
    assert {p["seq"] for p in aging_msgs} == to_publish
    # decimation (1 Hz of board time, samples 60 s apart) leaves nothing out
    left_out = set(seqs.tolist()) - to_publish
    assert not left_out, left_out
    dup: dict[tuple[int, int], dict[str, Any]] = {}
    for p in aging_msgs:  # a QoS 1 repeat is the same message; a revision has a higher rev
        assert dup.setdefault((p["seq"], p["rev"]), p) == p
    # every published sample was revised once when its run ended (the final L0 and L/L0)
    assert {s for s, r in dup if r == 1} == to_publish
    events = {p["seq"]: p for p in on(messages, "event/job/#")
              if p["data"].get("job") == job_id}  # by seq: a QoS 1 repeat is the same
    kinds = [events[k]["kind"] for k in sorted(events)]
    assert kinds == ["job/submitted", "job/started", "job/progress", "job/progress",
                     "job/completed"], kinds
    submitted = on(messages, "event/job/submitted")[0]
    assert submitted["data"]["client"] == "operator@e2e"

    # -- each outage raised alert/sink_backlog once and cleared it once ------------------------
    for name in ("mqtt", "influx"):
        alerts = store.alerts(name)
        assert [a["state"] for a in alerts] == ["raised", "cleared"], alerts
        assert alerts[0]["rows_behind"] > BACKLOG_ALERT_ROWS
        assert alerts[0]["connected"] is False and alerts[0]["last_error"]
        assert alerts[1]["rows_behind"] <= BACKLOG_ALERT_ROWS // 2
    at_sub = Counter((p["data"]["sink"], p["data"]["state"])
                     for p in on(messages, "event/alert/sink_backlog"))
    assert set(at_sub) == {(s, st) for s in ("mqtt", "influx") for st in ("raised", "cleared")}

    # -- the outages really happened while the board aged ---------------------------------------
    for name in ("mqtt", "influx"):
        assert figures[name]["job_running_at_restart"], figures
        # (the alert counts rows behind, a few of which were behind before the stop)
        assert figures[name]["samples_during"] > BACKLOG_ALERT_ROWS // 2
    statuses_seen = [p["state"] for p in on(messages, "status")]
    assert statuses_seen[-1] == "offline" and "online" in statuses_seen
    shown = {k: {kk: vv for kk, vv in v.items() if kk != "raised"} for k, v in figures.items()}
    print(f"e2e figures: {len(seqs)} samples {per_pixel} (board produced {produced}), "
          f"{points} database points, {len(to_publish)} on MQTT (decimation left out "
          f"{sorted(left_out)}), outages {shown}", file=sys.stderr)
