"""The MQTT sink against a real Mosquitto (password file, ACL, TLS) and a real subscriber."""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from station.config import MqttSection, StationConfig
from station.sinks import MqttSink, SinkRunner, publish_event, run_sinks
from station.sinks.cursor import SinkDB, ensure_sink_schema
from station.sinks.mqtt import (
    AgingSampleMessage,
    EventMessage,
    HealthMessage,
    RunSummaryMessage,
    StatusMessage,
    SweepPointMessage,
)
from station.store import AGING_COLUMNS, SWEEP_COLUMNS, Store
from tests.services import (  # noqa: F401  (fixtures)
    STATION_PASSWORD,
    STATION_USER,
    Collector,
    Mosquitto,
    aging_row,
    caught_up,
    decimated,
    mqtt_broker,
    mqtt_certs,
    mqtt_toml,
    on_schedule,
    running,
    sink_process,
    sweep_row,
    wait_until,
)


def mqtt_cfg(broker: Mosquitto, **kw: object) -> MqttSection:
    base: dict[str, object] = dict(
        enabled=True, url=broker.url, username=STATION_USER, password=STATION_PASSWORD,
        poll_s=0.02, retry_min_s=0.05, retry_max_s=0.3, health_interval_s=0.2, timeout_s=5,
        aging_publish_hz=2.0)
    base.update(kw)
    return MqttSection.model_validate(base)


def fill(store: Store, *, sweep: int = 40, aging: int = 60) -> tuple[int, int]:
    sweep_run = store.create_run(kind="sweep", station="st1", pixel=1, area_m2=4e-6,
                                 substrate="S-01", device="pero A", job_id="job-7", label="px1")
    aging_run = store.create_run(kind="aging", station="st1", pixel=2, area_m2=4e-6,
                                 substrate="S-01", device="pero B", job_id="job-8")
    store.add_rows("sweep_points", SWEEP_COLUMNS, [sweep_row(i, sweep_run, 1) for i in range(sweep)])
    store.add_rows("aging_samples", AGING_COLUMNS,
                   [aging_row(10_000 + i, aging_run, 2) for i in range(aging)])
    store.flush()
    return sweep_run, aging_run


async def test_samples_events_summaries_and_status_reach_a_subscriber(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    sweep_run, aging_run = fill(store)
    store.finish_run(sweep_run, "completed", "completed", {"v_on_v": 2.71, "l_max_cd_m2": 390.0})
    store.finish_run(aging_run, "aborted", "interlock")  # not completed: no summary
    publish_event(store, "job/started", {"job": "job-7", "pixels": [1]})
    publish_event(store, "alert/interlock", {"state": "open"})
    sink = MqttSink(store.path, mqtt_cfg(mqtt_broker, topic_prefix="ledstation/t1"), "st1")
    async with Collector(mqtt_broker, "ledstation/t1/#") as sub, running(sink):
        await wait_until(caught_up(sink), what="cursor at head")
        await wait_until(lambda: len(sub.on("/summary")) == 1 and len(sub.on("/health")) > 0,
                         what="summary and health")
        # leaving `running` stops the sink cleanly: it publishes status "offline" itself

    sweeps = [SweepPointMessage.model_validate(p) for p in sub.on("/pixel/1/sweep")]
    assert sorted(m.seq for m in sweeps) == list(range(40))  # every sweep point, exactly once
    m = next(m for m in sweeps if m.seq == 7)
    assert (m.station, m.substrate, m.device, m.job, m.pixel) == ("st1", "S-01", "pero A", "job-7", 1)
    assert m.t_us == 5_000_000 + 7 * 10_000 and m.eqe_pct is None  # NaN -> null
    assert m.time_us is not None and m.time_us - m.t_us == sweeps[0].time_us - sweeps[0].t_us

    aging = [AgingSampleMessage.model_validate(p) for p in sub.on("/pixel/2/aging")]
    t = [aging_row(10_000 + i, aging_run, 2)[AGING_COLUMNS.index("t_us")] for i in range(60)]
    assert [m.seq for m in aging] == [10_000 + i for i in decimated(t, 2.0)]
    assert len(aging) < 60  # 10 Hz board stream published at 2 Hz

    events = [EventMessage.model_validate(p) for p in sub.on("/event/job/started")
              + sub.on("/event/alert/interlock")]
    assert [(e.kind, e.data) for e in events] == [("job/started", {"job": "job-7", "pixels": [1]}),
                                                  ("alert/interlock", {"state": "open"})]
    (summary,) = [RunSummaryMessage.model_validate(p) for p in sub.on("/summary")]
    assert summary.run_id == sweep_run and summary.summary == {"v_on_v": 2.71, "l_max_cd_m2": 390.0}
    assert [m.topic for m in sub.messages if m.topic.endswith("/summary")] == [
        f"ledstation/t1/st1/run/{sweep_run}/summary"]
    health = HealthMessage.model_validate(sub.on("/health")[-1])
    assert set(health.sinks) == {"mqtt"}
    states = [StatusMessage.model_validate(p).state for p in sub.on("/status")]
    assert states == ["online", "offline"]
    store.close()


async def test_retained_status_and_summary_are_there_for_late_subscribers(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    run, _ = fill(store, sweep=3, aging=0)
    store.finish_run(run, "completed", "completed", {"v_on_v": 3.0})
    sink = MqttSink(store.path, mqtt_cfg(mqtt_broker, topic_prefix="ledstation/t2"), "st2")
    async with running(sink):
        await wait_until(caught_up(sink), what="cursor at head")
        await wait_until(lambda: sink.sent >= 4, what="summary sent")
        async with Collector(mqtt_broker, "ledstation/t2/#") as late:
            await wait_until(lambda: bool(late.on("/summary")) and bool(late.on("/status")),
                             what="retained messages")
            assert all(m.retain for m in late.messages)
            assert late.on("/status")[-1]["state"] == "online"
            assert not late.on("/sweep")  # live telemetry is not retained


async def test_aging_decimation_is_the_same_subset_on_replay(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    _, aging_run = fill(store, sweep=0, aging=0)
    # two batches so the second starts mid-bucket: the rule must look at the previous sample
    cfg = mqtt_cfg(mqtt_broker, topic_prefix="ledstation/t3", batch_size=7, aging_publish_hz=3.0)
    rows = [aging_row(i, aging_run, 2, dt_us=37_000) for i in range(100)]
    store.add_rows("aging_samples", AGING_COLUMNS, rows)
    store.flush()
    sink = MqttSink(store.path, cfg, "st3")
    async with Collector(mqtt_broker, "ledstation/t3/+/pixel/#") as sub:
        async with running(sink):
            await wait_until(caught_up(sink), what="first pass")
        first = [p["seq"] for p in sub.on("/aging")]
        SinkDB(store.path).reset("mqtt", "aging_samples")  # replay everything
        sink2 = MqttSink(store.path, cfg, "st3")
        async with running(sink2):
            await wait_until(caught_up(sink2), what="replay")
            await wait_until(lambda: len(sub.on("/aging")) == 2 * len(first), what="replayed msgs")
    second = [p["seq"] for p in sub.on("/aging")][len(first):]
    t = [r[AGING_COLUMNS.index("t_us")] for r in rows]
    assert first == second == [i for i in decimated(t, 3.0)]


async def test_decimation_is_decided_by_the_stored_data_whatever_order_it_was_stored_in(
        tmp_path, mqtt_broker):
    """A daemon restart replays samples the board still held: they are stored after later ones.
    The published subset of a run sampled every 37 ms at 3 Hz is the same as if they had come in
    order (the first sample of each bucket on the run's schedule), each published once."""
    store = Store(tmp_path / "s.db")
    run = store.create_run(kind="aging", station="st4", pixel=2, area_m2=4e-6,
                           params={"interval_s": 0.037})
    rows = [aging_row(i, run, 2, dt_us=37_000) for i in range(120)]
    cfg = mqtt_cfg(mqtt_broker, topic_prefix="ledstation/t4", batch_size=9, aging_publish_hz=3.0)
    async with Collector(mqtt_broker, "ledstation/t4/+/pixel/#") as sub:
        sink = MqttSink(store.path, cfg, "st4")
        async with running(sink):
            for part in (rows[:40], rows[60:120], rows[40:60]):  # 40..59 stored last
                store.add_rows("aging_samples", AGING_COLUMNS, part)
                store.flush()
                await wait_until(caught_up(sink), what="published")
    got = [p["seq"] for p in sub.on("/aging")]
    t = [r[AGING_COLUMNS.index("t_us")] for r in rows]
    expected = on_schedule(t, 3.0, 37_000)
    assert sorted(got) == expected and len(set(got)) == len(got)
    assert 0 < len(expected) < 120


@pytest.mark.parametrize("listener", ["tls", "mutual_tls"])
async def test_tls_with_ca_file_and_client_certificate(tmp_path, mqtt_broker, mqtt_certs, listener):
    store = Store(tmp_path / "s.db")
    fill(store, sweep=5, aging=0)
    port = mqtt_broker.tls_port if listener == "tls" else mqtt_broker.mtls_port
    extra = {} if listener == "tls" else {"client_cert": str(mqtt_certs.client_cert),
                                          "client_key": str(mqtt_certs.client_key)}
    cfg = mqtt_cfg(mqtt_broker, url=f"mqtts://127.0.0.1:{port}", ca_file=str(mqtt_certs.ca),
                   topic_prefix=f"ledstation/{listener}", **extra)
    sink = MqttSink(store.path, cfg, "st")
    async with Collector(mqtt_broker, f"ledstation/{listener}/#") as sub, running(sink):
        await wait_until(caught_up(sink), what="delivered over TLS")
        await wait_until(lambda: len(sub.on("/sweep")) == 5, what="5 sweep points")
    assert sink.failures == 0


async def test_mutual_tls_without_client_certificate_delivers_nothing(tmp_path, mqtt_broker,
                                                                      mqtt_certs):
    store = Store(tmp_path / "s.db")
    fill(store, sweep=5, aging=0)
    cfg = mqtt_cfg(mqtt_broker, url=f"mqtts://127.0.0.1:{mqtt_broker.mtls_port}",
                   ca_file=str(mqtt_certs.ca), topic_prefix="ledstation/nocert", timeout_s=1)
    sink = MqttSink(store.path, cfg, "st")
    async with running(sink):
        await wait_until(lambda: sink.failures >= 1, what="a failed attempt")
        h = sink.health()
        assert h["state"] == "retrying" and h["last_error"] and not h["connected"]
        assert h["rows_behind"] == 5 and h["tables"]["sweep_points"]["cursor"] == 0


async def test_bad_password_and_acl_denial_are_retried_not_acknowledged(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    fill(store, sweep=5, aging=0)
    bad_pw = MqttSink(store.path, mqtt_cfg(mqtt_broker, password="wrong"), "st")
    # the station user may only write under ledstation/#: the broker answers "not authorized"
    denied = MqttSink(store.path, mqtt_cfg(mqtt_broker, topic_prefix="elsewhere",
                                           client_id="denied"), "st")
    async with running(bad_pw), running(denied):
        await wait_until(lambda: bad_pw.failures >= 2 and denied.failures >= 2, what="failures")
    assert "Not authorized" in (bad_pw.last_error or "") or "authori" in (bad_pw.last_error or "")
    assert "rejected" in (denied.last_error or "") and "0x87" in (denied.last_error or "")
    db = SinkDB(store.path)
    assert db.cursor("mqtt", "sweep_points") == 0  # nothing counted as delivered


def test_publish_event_rejects_bad_input_and_writes_nothing(tmp_path):
    store = Store(tmp_path / "s.db")
    ensure_sink_schema(store.db)
    for kind in ("", "a/+/b", "job/#", "/lead", "sp ace"):
        with pytest.raises(ValueError, match="bad event kind"):
            publish_event(store, kind, {})
    with pytest.raises(ValueError, match="JSON"):
        publish_event(store, "job/x", {"obj": object()})
    assert store.db.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert publish_event(store, "job/ok", {"x": float("nan")}) == 1


def _sink_process(tmp_path: Path, broker: Mosquitto, prefix: str) -> subprocess.Popen[bytes]:
    return sink_process(tmp_path, tmp_path / "s.db", mqtt_toml(broker, "proc", prefix))


async def test_last_will_says_offline_when_the_sink_process_is_killed(tmp_path, mqtt_broker):
    Store(tmp_path / "s.db").close()
    async with Collector(mqtt_broker, "ledstation/will/proc/status") as sub:
        proc = _sink_process(tmp_path, mqtt_broker, "ledstation/will")
        try:
            await wait_until(lambda: any(p["state"] == "online" for p in sub.on("/status")),
                             what="online status")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            await wait_until(lambda: sub.on("/status")[-1]["state"] == "offline",
                             what="Last Will")
        finally:
            proc.kill()
            proc.wait(timeout=10)
    will = StatusMessage.model_validate(sub.on("/status")[-1])
    assert will.reason == "connection lost" and will.ts is None and will.station == "proc"
    assert sub.messages[-1].topic == "ledstation/will/proc/status"


async def test_clean_shutdown_publishes_offline_stopped(tmp_path, mqtt_broker):
    Store(tmp_path / "s.db").close()
    async with Collector(mqtt_broker, "ledstation/term/proc/status") as sub:
        proc = _sink_process(tmp_path, mqtt_broker, "ledstation/term")
        try:
            await wait_until(lambda: any(p["state"] == "online" for p in sub.on("/status")),
                             what="online status")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            await wait_until(lambda: sub.on("/status")[-1]["state"] == "offline", what="offline")
        finally:
            proc.kill()
    assert sub.on("/status")[-1]["reason"] == "stopped"


async def test_run_sinks_starts_enabled_sinks_and_reports_health(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    fill(store, sweep=10, aging=10)
    config = StationConfig.model_validate({
        "station": {"id": "rs"},
        "mqtt": mqtt_cfg(mqtt_broker, topic_prefix="ledstation/rs").model_dump()})
    runner = SinkRunner(config, store.path)
    assert [s.name for s in runner.sinks] == ["mqtt"]
    stop = asyncio.Event()
    async with Collector(mqtt_broker, "ledstation/rs/#") as sub:
        task = asyncio.create_task(run_sinks(config, store.path, stop, runner=runner))
        await wait_until(caught_up(runner.sinks[0]), what="caught up")
        eid = runner.publish_event("job/finished", {"job": "j"})
        await wait_until(lambda: bool(sub.on("/event/job/finished")), what="event")
        assert sub.on("/event/job/finished")[0]["seq"] == eid
        await wait_until(lambda: runner.health().get("mqtt", {}).get("rows_behind", 1) == 0,
                         what="health")
        assert runner.health()["mqtt"]["connected"] is True
        stop.set()
        await asyncio.wait_for(task, 20)
    assert runner.health()["mqtt"]["state"] == "stopped"
