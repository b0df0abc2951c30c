"""Store and forward: a broker or database that goes away delays data and loses none, the
measurement keeps writing meanwhile, and a restarted sink replays only what was not
acknowledged."""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from station.config import InfluxSection, MqttSection
from station.sinks import InfluxSink, MqttSink
from station.sinks.cursor import SinkDB
from station.store import SWEEP_COLUMNS, Store
from tests.services import (  # noqa: F401  (fixtures)
    STATION_PASSWORD,
    STATION_USER,
    Collector,
    Mosquitto,
    Victoria,
    caught_up,
    mqtt_broker,
    mqtt_broker_factory,
    mqtt_certs,
    mqtt_toml,
    running,
    sink_process,
    sweep_row,
    victoria,
    victoria_factory,
    wait_until,
)


class Producer:
    """The measurement side: writes sweep points to the store in committed batches."""

    def __init__(self, store: Store, station: str) -> None:
        self.store = store
        self.run = store.create_run(kind="sweep", station=station, pixel=1, area_m2=4e-6)
        self.next_seq = 0

    def batch(self, n: int) -> None:
        rows = [sweep_row(self.next_seq + i, self.run, 1) for i in range(n)]
        self.store.add_rows("sweep_points", SWEEP_COLUMNS, rows)
        self.store.flush()
        self.next_seq += n

    async def keep_writing(self, batches: int, n: int) -> None:
        for _ in range(batches):
            self.batch(n)
            await asyncio.sleep(0.005)


def mqtt_cfg(broker: Mosquitto, prefix: str, **kw: object) -> MqttSection:
    base: dict[str, object] = dict(
        enabled=True, url=broker.url, username=STATION_USER, password=STATION_PASSWORD,
        topic_prefix=prefix, poll_s=0.02, retry_min_s=0.05, retry_max_s=0.2, timeout_s=5,
        window=50, batch_size=100, health_interval_s=0.5)
    base.update(kw)
    return MqttSection.model_validate(base)


def influx_cfg(v: Victoria, **kw: object) -> InfluxSection:
    base: dict[str, object] = dict(enabled=True, url=v.url, token="t", org="lab", bucket="b",
                                   poll_s=0.02, retry_min_s=0.05, retry_max_s=0.2, timeout_s=5,
                                   batch_size=100)
    base.update(kw)
    return InfluxSection.model_validate(base)


async def test_broker_outage_delays_telemetry_and_loses_none(tmp_path, mqtt_broker_factory):
    broker = mqtt_broker_factory()
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out1")
    cfg = mqtt_cfg(broker, "ledstation/o1")
    sink = MqttSink(store.path, cfg, "out1")
    # a persistent session: the broker keeps (on disk) what arrives while the subscriber is away
    async with Collector(broker, "ledstation/o1/+/pixel/#", persistent=True,
                         client_id="outage-subscriber") as sub, running(sink):
        await prod.keep_writing(10, 50)
        await wait_until(lambda: len(sub.on("/sweep")) >= 200, what="first deliveries")
        broker.stop()
        await prod.keep_writing(10, 50)               # the measurement goes on meanwhile
        await wait_until(lambda: sink.failures >= 2, what="the sink noticing the outage")
        prod.batch(100)
        assert store.count("sweep_points") == 1100    # nothing waited for the broker
        await sink.refresh_backlog(force=True)
        assert sink.health()["rows_behind"] > 0 and not sink.health()["connected"]
        broker.start()                                # same port, same persistence
        await wait_until(caught_up(sink), what="the sink catching up")
        await wait_until(lambda: len({p["seq"] for p in sub.on("/sweep")}) == 1100,
                         what="every row at the subscriber")
    seqs = Counter(p["seq"] for p in sub.on("/sweep"))
    assert set(seqs) == set(range(1100))              # none lost
    # the sink re-published at most the window that was awaiting PUBACK when the broker went
    assert sink.sent >= 1100 and sink.attempted - 1100 <= cfg.window * sink.failures
    # the broker may redeliver to the subscriber too (QoS 1 both ways): a repeat is the same
    # payload, so subscribers deduplicate on seq
    payloads: dict[int, dict] = {}
    for p in sub.on("/sweep"):
        assert payloads.setdefault(p["seq"], p) == p
    assert sink.health()["rows_behind"] == 0


async def test_database_outage_delays_history_and_loses_none(tmp_path, victoria_factory):
    v = victoria_factory()
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out2")
    cfg = influx_cfg(v)
    sink = InfluxSink(store.path, cfg, "out2")
    async with running(sink):
        await prod.keep_writing(10, 50)
        await wait_until(lambda: sink.delivered >= 200, what="first writes")
        v.stop()
        await prod.keep_writing(10, 50)
        await wait_until(lambda: sink.failures >= 2, what="the sink noticing the outage")
        prod.batch(100)
        assert store.count("sweep_points") == 1100
        v.start()
        await wait_until(caught_up(sink), what="the sink catching up")
    exported = [int(x) for s in v.export('{__name__="sweep_point_seq",station="out2"}')
                for x in s["values"]]
    assert sorted(exported) == list(range(1100))      # every row exactly once in the database
    # only a write that got no 2xx is repeated: at most one batch per failure
    assert 1100 <= sink.sent <= 1100 + cfg.batch_size * sink.failures


async def test_restarted_mqtt_sink_replays_only_the_unacknowledged(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out3")
    prod.batch(300)
    cfg = mqtt_cfg(mqtt_broker, "ledstation/o3")
    async with Collector(mqtt_broker, "ledstation/o3/+/pixel/#") as sub:
        async with running(MqttSink(store.path, cfg, "out3")) as first:
            await wait_until(caught_up(first), what="first 300")
        prod.batch(200)                               # written while no sink runs
        async with running(MqttSink(store.path, cfg, "out3")) as second:
            await wait_until(caught_up(second), what="next 200")
            await wait_until(lambda: len(sub.on("/sweep")) >= 500, what="500 messages")
        assert second.sent == 200
    seqs = [p["seq"] for p in sub.on("/sweep")]
    assert sorted(seqs) == list(range(500))           # exactly once after a clean restart


async def test_killed_mqtt_sink_resumes_from_its_durable_cursor(tmp_path, mqtt_broker):
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out4")
    prod.batch(4000)
    toml = mqtt_toml(mqtt_broker, "out4", "ledstation/o4", "window = 50\nbatch_size = 200\n")
    async with Collector(mqtt_broker, "ledstation/o4/+/pixel/#") as sub:
        proc = sink_process(tmp_path, store.path, toml)
        try:
            await wait_until(lambda: len(sub.on("/sweep")) >= 500, what="deliveries")
            proc.send_signal(signal.SIGKILL)          # no clean shutdown, mid-stream
            await asyncio.to_thread(proc.wait, 10)
        finally:
            proc.kill()
        acked = SinkDB(store.path).cursor("mqtt", "sweep_points")
        async with running(MqttSink(store.path, mqtt_cfg(mqtt_broker, "ledstation/o4"),
                                    "out4")) as again:
            await wait_until(caught_up(again), what="the rest")
            await wait_until(lambda: len({p["seq"] for p in sub.on("/sweep")}) == 4000,
                             what="every row")
    counts = Counter(p["seq"] for p in sub.on("/sweep"))
    assert set(counts) == set(range(4000))
    # row ids start at 1 with seq 0 here: rows up to the cursor were acknowledged, never resent
    assert all(counts[s] == 1 for s in range(acked))
    assert sum(c - 1 for c in counts.values()) <= 50  # at most the unacknowledged window
    assert again.sent == 4000 - acked


async def test_restarted_influx_sink_replays_only_the_unacknowledged(tmp_path, victoria):
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out5")
    prod.batch(250)
    cfg = influx_cfg(victoria)
    async with running(InfluxSink(store.path, cfg, "out5")) as first:
        await wait_until(caught_up(first), what="first 250")
    assert first.sent == 250
    prod.batch(120)
    async with running(InfluxSink(store.path, cfg, "out5")) as second:
        await wait_until(caught_up(second), what="next 120")
    assert second.sent == 120
    exported = [int(x) for s in victoria.export('{__name__="sweep_point_seq",station="out5"}')
                for x in s["values"]]
    assert sorted(exported) == list(range(370))


async def test_a_server_that_never_answers_does_not_hold_up_the_measurement(tmp_path):
    # a TCP server that accepts connections and then says nothing: the worst kind of outage
    conns: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = Store(tmp_path / "s.db")
    prod = Producer(store, "out6")
    mqtt = MqttSink(store.path, MqttSection.model_validate(dict(
        enabled=True, url=f"mqtt://127.0.0.1:{port}", timeout_s=30, poll_s=0.02)), "out6")
    influx = InfluxSink(store.path, InfluxSection.model_validate(dict(
        enabled=True, url=f"http://127.0.0.1:{port}", timeout_s=30, poll_s=0.02)), "out6")
    mqtt.stop_grace_s = influx.stop_grace_s = 0.1  # and stopping does not wait for them either
    try:
        async with running(mqtt), running(influx):
            await wait_until(lambda: len(conns) >= 2, what="both sinks stuck on the server")
            await prod.keep_writing(20, 50)           # same event loop as the stuck sinks
            assert store.count("sweep_points") == 1000
            assert mqtt.delivered == influx.delivered == 0
            assert mqtt.state == influx.state == "connecting"
        assert mqtt.state == influx.state == "stopped"
    finally:
        for w in conns:
            w.close()
        server.close()
