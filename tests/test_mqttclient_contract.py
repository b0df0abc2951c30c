"""The contract between station/mqttclient.py's AckClient and the aiomqtt (and paho-mqtt) it
subclasses, against a real Mosquitto.

AckClient reaches into aiomqtt's private parts (listed in station/mqttclient.py's docstring),
and pyproject.toml pins aiomqtt to the minor version this was verified with. An aiomqtt
release that renames, retypes or rewires any of them fails here, not in the field:

- the private attributes exist, with the types AckClient uses, and the paho client calls the
  subclass's ``_on_publish`` (with a ``ReasonCode``);
- ``publish_acked`` returns only once the PUBACK came back: while the broker is frozen
  (SIGSTOP) it waits, with its publish registered in ``_pending_publishes``;
- a connection lost while a publish waits fails that publish ("connection lost"), instead of
  waiting for the timeout;
- an error PUBACK (0x87 not authorized, from the broker's ACL) raises PublishRejected, and
  aiomqtt's own ``publish`` still completes (the override passes each PUBACK on).
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from station.mqttclient import AckClient, PublishRejected
from tests.services import (  # noqa: F401  (fixtures)
    STATION_PASSWORD,
    STATION_USER,
    TOPIC_ROOT,
    Mosquitto,
    mqtt_broker_factory,
    mqtt_certs,
    wait_until,
)


class RecordingClient(AckClient):
    """AckClient that also records each PUBACK it is called with: (mid, reason code)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pubacks: list[tuple[int, Any]] = []

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self.pubacks.append((mid, reason_code))
        super()._on_publish(client, userdata, mid, reason_code, properties)


def client_for(broker: Mosquitto) -> RecordingClient:
    return RecordingClient("127.0.0.1", broker.port, username=STATION_USER,
                           password=STATION_PASSWORD,
                           identifier=f"contract-{uuid.uuid4().hex[:12]}",
                           protocol=aiomqtt.ProtocolVersion.V5, timeout=10, keepalive=60)


@contextlib.asynccontextmanager
async def frozen(broker: Mosquitto) -> AsyncIterator[None]:
    """The broker process stopped (SIGSTOP): its socket stays open, nothing is answered."""
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.proc.pid, signal.SIGCONT)


def test_the_versions_are_those_pinned():
    """The versions this contract was verified with (pyproject.toml pins them)."""
    major, minor = (int(x) for x in version("aiomqtt").split(".")[:2])
    assert (major, minor) == (2, 5), version("aiomqtt")
    assert int(version("paho-mqtt").split(".")[0]) == 2, version("paho-mqtt")


def test_the_private_callbacks_have_the_signatures_ackclient_overrides_and_calls():
    on_publish = inspect.signature(aiomqtt.Client._on_publish)
    assert list(on_publish.parameters) == ["self", "client", "userdata", "mid", "reason_code",
                                           "properties"]
    pending_call = inspect.signature(aiomqtt.Client._pending_call)
    assert len(pending_call.parameters) == 4  # self, mid, value, pending dict
    assert hasattr(paho.MQTTMessageInfo, "is_published")
    assert {"rc", "mid"} <= set(paho.MQTTMessageInfo.__slots__)
    assert ReasonCode(PacketTypes.PUBACK, identifier=0x87).is_failure
    assert not ReasonCode(PacketTypes.PUBACK, identifier=0).is_failure


async def test_the_private_attributes_exist_with_the_types_ackclient_uses(mqtt_broker_factory):
    broker = mqtt_broker_factory()
    c = client_for(broker)
    assert isinstance(c._client, paho.Client)
    assert isinstance(c._disconnected, asyncio.Future) and not c._disconnected.done()
    assert isinstance(c._pending_publishes, dict)
    assert isinstance(c.pending_calls_threshold, int)
    # paho calls the subclass's override (bound in aiomqtt.Client.__init__)
    assert getattr(c._client.on_publish, "__func__", None) is RecordingClient._on_publish
    async with c:
        topic = f"{TOPIC_ROOT}/contract/{uuid.uuid4().hex[:8]}"
        with c._pending_call(4242, asyncio.Event(), c._pending_publishes):
            assert 4242 in c._pending_publishes
        assert 4242 not in c._pending_publishes
        await c.publish_acked(topic, b"x")
        assert len(c.pubacks) == 1
        mid, rc = c.pubacks[0]
        assert isinstance(mid, int) and isinstance(rc, ReasonCode) and not rc.is_failure
    assert c._disconnected.done()


async def test_publish_acked_returns_only_after_the_puback(mqtt_broker_factory):
    broker = mqtt_broker_factory()
    async with client_for(broker) as c:
        topic = f"{TOPIC_ROOT}/contract/{uuid.uuid4().hex[:8]}"
        await c.publish_acked(topic, b"warm-up")
        n = len(c.pubacks)
        async with frozen(broker):
            task = asyncio.create_task(c.publish_acked(topic, b"held", timeout=120))
            await wait_until(lambda: len(c._pending_publishes) == 1, what="publish registered")
            await asyncio.sleep(0.5)  # the broker cannot answer: the publish must still wait
            assert not task.done() and len(c.pubacks) == n
        await task  # the broker answers: the PUBACK releases it
        assert len(c.pubacks) == n + 1 and c._pending_publishes == {}
        assert not c._rejected


async def test_a_lost_connection_fails_the_pending_publish_instead_of_waiting_for_the_timeout(
        mqtt_broker_factory):
    broker = mqtt_broker_factory()
    c = client_for(broker)
    async with c:
        topic = f"{TOPIC_ROOT}/contract/{uuid.uuid4().hex[:8]}"
        async with frozen(broker):
            task = asyncio.create_task(c.publish_acked(topic, b"lost", timeout=3600))
            await wait_until(lambda: len(c._pending_publishes) == 1, what="publish registered")
            broker.kill()  # the broker dies with the PUBACK unsent: its socket closes
            with pytest.raises(aiomqtt.MqttError, match="connection lost before PUBACK"):
                await task
        assert c._disconnected.done() and c._pending_publishes == {}
        assert isinstance(c._disconnected.exception(), aiomqtt.MqttError)


async def test_an_error_puback_raises_publish_rejected_and_aiomqtts_own_publish_still_works(
        mqtt_broker_factory):
    broker = mqtt_broker_factory()
    async with client_for(broker) as c:
        with pytest.raises(PublishRejected) as e:  # the ACL lets this user write ledstation/# only
            await c.publish_acked("elsewhere/contract", b"x")
        assert e.value.rc.value == 0x87 and e.value.topic == "elsewhere/contract"
        assert c._rejected == {}  # consumed
        await c.publish(f"{TOPIC_ROOT}/contract/plain", b"y", qos=1)  # aiomqtt's own path
        # 0x10 "no matching subscribers": a success code (nobody subscribes here)
        assert [(rc.value, rc.is_failure) for _, rc in c.pubacks] == [(0x87, True), (0x10, False)]
        assert c._pending_publishes == {}
