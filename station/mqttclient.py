"""The station's MQTT 5 client: one module for the telemetry sink, the command server and the
remote-control client (``station.sinks.mqtt``, ``station.control``, ``station.remote``).

:class:`AckClient` is aiomqtt's client with :meth:`AckClient.publish_acked`, a QoS 1 publish
that returns only on a PUBACK with a success reason code and fails at once when the connection
drops. aiomqtt has no public API for either, so it uses these private parts of aiomqtt (and
of paho-mqtt under it), which ``pyproject.toml`` pins to the versions they were verified with
and ``tests/test_mqttclient_contract.py`` checks against a real Mosquitto:

- ``Client._client``: the ``paho.mqtt.client.Client``; its ``publish`` returns an
  ``MQTTMessageInfo`` with ``rc``, ``mid`` and ``is_published()``;
- ``Client._on_publish(client, userdata, mid, reason_code, properties)``: the callback paho
  calls on each PUBACK (bound as ``_client.on_publish`` in ``Client.__init__``, so an override
  in a subclass is the one called), which sets the event registered for ``mid``;
- ``Client._pending_call(mid, event, Client._pending_publishes)``: the context manager that
  registers that event (and counts against ``pending_calls_threshold``);
- ``Client._disconnected``: an ``asyncio.Future`` done once the connection is lost.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from station.config import MqttSection

__all__ = [
    "AckClient",
    "PublishRejected",
    "broker_address",
    "json_properties",
    "mqtt_client",
    "tls_context",
]


_new_properties: Callable[[int], Properties] = Properties  # (paho's constructor is untyped)


class PublishRejected(aiomqtt.MqttError):
    """The broker answered a PUBLISH with an error reason code (e.g. not authorized)."""

    def __init__(self, topic: str, rc: ReasonCode) -> None:
        super().__init__(f"broker rejected publish to {topic}: {rc} (0x{rc.value:02x})")
        self.topic, self.rc = topic, rc


class AckClient(aiomqtt.Client):
    """aiomqtt's client with :meth:`publish_acked`: a QoS 1 publish that returns only on a
    PUBACK with a success reason code (aiomqtt's ``publish`` ignores the reason code, and
    waits for its timeout when the connection drops)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rejected: dict[int, ReasonCode] = {}

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties) -> None:
        if isinstance(reason_code, ReasonCode) and reason_code.is_failure:
            self._rejected[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool = False,
                            properties: Properties | None = None, timeout: float = 10.0) -> None:
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                waiter = asyncio.ensure_future(confirmation.wait())
                try:
                    waits: list[asyncio.Future[Any]] = [waiter, self._disconnected]
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if not confirmation.is_set():
                    if self._disconnected.done():
                        raise aiomqtt.MqttError(f"connection lost before PUBACK for {topic}")
                    raise aiomqtt.MqttError(f"no PUBACK for {topic} within {timeout} s")
        rc = self._rejected.pop(info.mid, None)
        if rc is not None:
            raise PublishRejected(topic, rc)


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    """The TLS context for ``cfg``, or None for plain TCP."""
    scheme = urlsplit(cfg.url).scheme
    use_tls = cfg.tls if cfg.tls is not None else (scheme in ("mqtts", "ssl")
                                                   or cfg.ca_file is not None)
    if not use_tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.client_cert:
        ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
    return ctx


def broker_address(cfg: MqttSection) -> tuple[str, int]:
    u = urlsplit(cfg.url)
    tls = u.scheme in ("mqtts", "ssl") or bool(cfg.tls) or (cfg.tls is None and cfg.ca_file)
    return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883)


def json_properties() -> Properties:
    props = _new_properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    return props


def mqtt_client(cfg: MqttSection, identifier: str, tls: Any, *, clean_start: bool = True,
                session_expiry_s: int = 0, username: str | None = None,
                password: str | None = None) -> AckClient:
    """An :class:`AckClient` (MQTT 5) for ``cfg``: the same address, credentials and TLS as the
    telemetry sink (unless ``username``/``password`` are given), with its own client
    identifier."""
    host, port = broker_address(cfg)
    if username is not None:
        cfg = cfg.model_copy(update={"username": username, "password": password})
    props = None
    if session_expiry_s > 0:
        props = _new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
    return AckClient(host, port, username=cfg.username, password=cfg.password,
                     identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
                     tls_context=tls, keepalive=cfg.keepalive_s, timeout=cfg.timeout_s,
                     clean_start=clean_start, properties=props)
