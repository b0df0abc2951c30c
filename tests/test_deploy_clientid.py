"""Client ids tied to users (issue 15): with the deployed mosquitto.conf and ACL, no logged-in
user can take over a station's MQTT connections by connecting with its client id (MQTT lets a
new connection with an id in use disconnect the old one, which made the broker publish the
station's Last Will while it ran). Real Mosquitto, the station's own sink and command server."""
# ruff: noqa: F811  (pytest fixtures imported from tests.test_deploy are test arguments)

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from station.config import load_config
from station.control import ControlServer
from station.mqttclient import AckClient, PublishRejected
from station.remote import RemoteStation
from station.sinks import MqttSink
from station.store import Store
from tests.services import wait_until
from tests.test_control import FakeJobs
from tests.test_deploy import (  # noqa: F401  (the fixture)
    STATION_TOML,
    USERS,
    Broker,
    broker,
    publish,
    station_env,
    subscribed,
)


def intruder(b: Broker, user: str, identifier: str) -> AckClient:
    return AckClient("127.0.0.1", b.plain_port, username=user, password=USERS[user],
                     identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5, timeout=10)


@contextlib.asynccontextmanager
async def deployed_station(b: Broker, monkeypatch: pytest.MonkeyPatch, tmp_path
                           ) -> AsyncIterator[tuple[MqttSink, ControlServer]]:
    """The deployed lab-a.toml (with its env file) running its sink and command server."""
    for k, v in station_env(b, tmp_path / "station.db").items():
        monkeypatch.setenv(k, v)
    cfg = load_config(STATION_TOML)
    Store(cfg.store.path).close()
    sink = MqttSink(cfg.store.path, cfg.mqtt, cfg.station.id)
    server = ControlServer(cfg, FakeJobs())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sink.run(stop)), asyncio.create_task(server.run(stop))]
    try:
        await wait_until(lambda: sink.connected and server.ready.is_set(), what="station up")
        yield sink, server
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def test_nobody_can_take_over_the_stations_connections_with_its_client_ids(
        broker, monkeypatch, tmp_path):
    operator = load_config(None, station={"id": "lab-a"}, mqtt={
        "url": f"mqtt://127.0.0.1:{broker.plain_port}", "username": "operator",
        "password": USERS["operator"]})
    async with deployed_station(broker, monkeypatch, tmp_path) as (sink, server):
        async with subscribed(broker, "viewer", "ledstation/lab-a/status") as statuses:
            await wait_until(lambda: any(json.loads(p).get("state") == "online"
                                         for _, p in statuses), what="station online")
            await intrude(broker, ("operator", "lab-b", "lab-b-control"))
            async with RemoteStation(operator) as st:  # the command server never left
                assert (await st.call("status", timeout_s=10))["id"] == "lab-a"
            assert server.ready.is_set() and server.backoff.failures == 0
            assert server.last_error is None
            assert sink.connected and sink.failures == 0, sink.health()
            states = [json.loads(p)["state"] for _, p in statuses if p]
            assert states == ["online"], states  # no Last Will "offline" while it ran
        await intrude(broker, ("viewer",))  # (it would have replaced the watcher above)
        async with RemoteStation(operator) as st:
            assert (await st.call("status", timeout_s=10))["id"] == "lab-a"
        assert server.backoff.failures == 0 and sink.failures == 0


async def intrude(b: Broker, users: tuple[str, ...]) -> None:
    """Each user connects with each of the station's client ids (and its user names)."""
    for user in users:
        for cid in ("ledstation-lab-a", "ledstation-lab-a-control", "lab-a", "lab-a-control"):
            async with intruder(b, user, cid) as c:
                # connected as itself: the broker gave it its user name as client id, and the
                # ACL still refuses what this user may not do
                with pytest.raises(PublishRejected):
                    await c.publish_acked("ledstation/lab-a/status", b'{"state": "forged"}')


async def test_the_command_server_user_reads_its_commands_and_writes_its_replies_only(broker):
    async with subscribed(broker, "lab-a-control", "ledstation/#") as control:
        await publish(broker, "operator", "ledstation/lab-b/cmd/status", b"{}")
        await publish(broker, "lab-a", "ledstation/lab-a/status", b"{}")
        await publish(broker, "lab-b-control", "ledstation/lab-b/reply/x")  # its own replies
        await publish(broker, "operator", "ledstation/lab-a/cmd/status", b"{}")
        await wait_until(lambda: any(t == "ledstation/lab-a/cmd/status" for t, _ in control),
                         what="its own station's command")
    assert [t for t, _ in control] == ["ledstation/lab-a/cmd/status"]
    for user, topic in (("lab-a-control", "ledstation/lab-a/status"),
                        ("lab-a-control", "ledstation/lab-b/reply/x"),
                        ("lab-a-control", "ledstation/lab-a/cmd/submit"),
                        ("lab-b-control", "ledstation/lab-a/reply/x")):
        with pytest.raises(PublishRejected):
            await publish(broker, user, topic)
    await publish(broker, "lab-a-control", f"ledstation/lab-a/reply/{uuid.uuid4().hex}")
