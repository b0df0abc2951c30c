"""The client side of remote control (what ``station jobs ...`` and ``station status`` use).

::

    async with RemoteStation(load_config("lab-a.toml")) as st:
        info = await st.call("submit", {"job": job}, timeout_s=10)
        async for event in st.watch_job(info["id"]):
            print(event["kind"])

Each call publishes one MQTT 5 request to ``{prefix}/{station}/cmd/{verb}`` with a
ResponseTopic (``{prefix}/{station}/reply/{uuid}``, unique to this connection), CorrelationData
(the request id), MessageExpiryInterval (the timeout: the broker drops a request nobody took in
time) and the user property ``client`` (``user@host``), and waits for the matching reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import math
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from station.config import StationConfig
from station.control import (
    MAX_PAYLOAD_BYTES,
    VERBS,
    CommandReply,
    dumps,
    request_payload,
)
from station.mqttclient import AckClient, PublishRejected, json_properties, mqtt_client, tls_context

log = logging.getLogger(__name__)

# job states and event kinds after which a job does nothing more (the job manager's vocabulary;
# synonyms included so that a renamed state does not leave `--wait` hanging)
SUCCESS_STATES = frozenset({"finished", "completed", "done"})
TERMINAL_STATES = SUCCESS_STATES | {"failed", "aborted", "stopped", "cancelled", "canceled",
                                    "error"}


class RemoteError(Exception):
    """A remote command that did not succeed; ``exit_code`` is the CLI's exit status."""

    exit_code = 3


class NoAnswer(RemoteError):
    """The station did not answer in time (or the broker cannot be reached)."""

    exit_code = 3


class BadRequest(RemoteError):
    """The request cannot be sent as it is (e.g. too large)."""

    exit_code = 2


class CommandRefused(RemoteError):
    """The station answered ``ok: false``, or the broker refused to take the request."""

    exit_code = 1

    def __init__(self, message: str, code: str, reply: CommandReply | None = None) -> None:
        super().__init__(message)
        self.code, self.reply = code, reply


def default_client_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _event_job(ev: dict[str, Any]) -> str | None:
    data = ev.get("data")
    if not isinstance(data, dict):
        return None
    for key in ("job", "job_id", "id"):
        if isinstance(data.get(key), str | int):
            return str(data[key])
    return None


class RemoteStation:
    """An async context manager: a connection to the broker that talks to one station."""

    def __init__(self, config: StationConfig, *, station_id: str | None = None,
                 client_name: str | None = None) -> None:
        self.cfg = config.mqtt
        self.station = station_id or config.station.id
        self.base = f"{self.cfg.topic_prefix}/{self.station}"
        self.client_name = client_name or default_client_name()
        self.session = uuid.uuid4().hex
        self.reply_topic = f"{self.base}/reply/{self.session}"
        self.status_topic = f"{self.base}/status"
        self.event_topic = f"{self.base}/event/job/#"
        self.telemetry_status: dict[str, Any] | None = None  # the retained status, if any
        self._pending: dict[bytes, asyncio.Future[CommandReply]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._events_subscribed = False
        self._client: AckClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    # -- connection -----------------------------------------------------------------------------
    async def __aenter__(self) -> RemoteStation:
        tls = await asyncio.to_thread(tls_context, self.cfg)
        client = mqtt_client(self.cfg, f"ledstation-cli-{self.session[:12]}", tls)
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttError as e:
            raise NoAnswer(f"cannot connect to the MQTT broker at {self.cfg.url}"
                           f"{' as ' + self.cfg.username if self.cfg.username else ''}: {e}"
                           ) from None
        self._client, self._stack = client, stack
        self._reader = asyncio.create_task(self._read())
        try:
            await client.subscribe(self.reply_topic, qos=1)
            await client.subscribe(self.status_topic, qos=1)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._stack is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._stack.aclose()
        self._client = self._stack = self._reader = None

    async def _read(self) -> None:
        assert self._client is not None
        try:
            async for m in self._client.messages:
                self._on_message(m)
        except aiomqtt.MqttError as e:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(NoAnswer(f"lost the connection to the broker at "
                                               f"{self.cfg.url}: {e}"))

    def _on_message(self, m: aiomqtt.Message) -> None:
        topic = str(m.topic)
        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
        if topic == self.reply_topic:
            corr = getattr(m.properties, "CorrelationData", None)
            fut = self._pending.get(bytes(corr)) if corr is not None else None
            if fut is None or fut.done():
                return  # a late or repeated reply
            try:
                fut.set_result(CommandReply.model_validate_json(payload))
            except ValidationError as e:
                fut.set_exception(RemoteError(f"station {self.station} sent a reply this "
                                              f"client does not understand: {e}"))
        elif topic == self.status_topic:
            with contextlib.suppress(ValueError):
                obj = json.loads(payload) if payload else None
                self.telemetry_status = obj if isinstance(obj, dict) else None
        elif aiomqtt.Topic(topic).matches(self.event_topic):
            with contextlib.suppress(ValueError):
                obj = json.loads(payload)
                if isinstance(obj, dict):
                    self._events.put_nowait(obj)

    # -- requests -------------------------------------------------------------------------------
    def _no_answer(self, timeout_s: float) -> str:
        msg = (f"no answer from station {self.station} within {timeout_s:g} s: is `station run` "
               f"running and connected to the broker at {self.cfg.url}?")
        st = self.telemetry_status
        if st and st.get("state") == "offline":
            msg += f" (its telemetry status is offline: {st.get('reason', '?')})"
        return msg

    async def request(self, verb: str, fields: dict[str, Any] | None = None,
                      timeout_s: float = 10.0, *, request_id: str | None = None) -> CommandReply:
        """Send one command and return the station's reply, ``ok`` or not."""
        if self._client is None:
            raise RuntimeError("RemoteStation is not connected (use `async with`)")
        if verb not in VERBS:
            raise BadRequest(f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
        rid = request_id or str(uuid.uuid4())
        body = dumps(request_payload(rid, self.client_name, fields or {}))
        if len(body) > MAX_PAYLOAD_BYTES:
            raise BadRequest(f"the {verb} request is {len(body)} bytes; the limit is "
                             f"{MAX_PAYLOAD_BYTES} bytes")
        corr = rid.encode()
        props: Properties = json_properties()
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        props.MessageExpiryInterval = max(1, math.ceil(timeout_s))
        props.UserProperty = ("client", self.client_name)
        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        topic = f"{self.base}/cmd/{verb}"
        try:
            try:
                await self._client.publish_acked(topic, body, properties=props,
                                                 timeout=timeout_s)
            except PublishRejected as e:
                raise CommandRefused(
                    f"the broker refused the command to {topic}: {e.rc} (MQTT user "
                    f"{self.cfg.username or '(anonymous)'} may not publish there; in "
                    "deploy/mosquitto/acl operators may publish ledstation/+/cmd/#)",
                    "not_authorized") from None
            except aiomqtt.MqttError as e:
                raise NoAnswer(f"could not send the command to the broker at {self.cfg.url}: "
                               f"{e}") from None
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
            except TimeoutError:
                raise NoAnswer(self._no_answer(timeout_s)) from None
        finally:
            self._pending.pop(corr, None)
            fut.cancel()

    async def call(self, verb: str, fields: dict[str, Any] | None = None,
                   timeout_s: float = 10.0, *, request_id: str | None = None) -> Any:
        """Send one command and return its result; raises :class:`CommandRefused` when the
        station refuses it, :class:`NoAnswer` when it does not answer within ``timeout_s``."""
        reply = await self.request(verb, fields, timeout_s, request_id=request_id)
        if not reply.ok:
            err = reply.error
            code = err.code if err else "error"
            raise CommandRefused(f"station {self.station} refused {verb}: "
                                 f"{err.message if err else 'no reason given'} ({code})",
                                 code, reply)
        return reply.result

    # -- job events -----------------------------------------------------------------------------
    async def subscribe_job_events(self) -> None:
        """Start receiving ``{prefix}/{station}/event/job/#`` (not retained: subscribe before
        submitting a job whose events you want)."""
        if self._events_subscribed:
            return
        assert self._client is not None
        await self._client.subscribe(self.event_topic, qos=1)
        self._events_subscribed = True

    async def watch_job(self, job_id: str, *, poll_s: float = 5.0,
                        timeout_s: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        """Yield the lifecycle events (``event`` payloads, see docs/mqtt.md) of ``job_id``
        until one says the job is over. Every ``poll_s`` without an event the job is also
        asked for with ``get`` (events are not retained, so one can be missed); when that says
        the job is over, a last event ``{"kind": "job/<state>", "data": <job info>,
        "source": "poll"}`` is yielded. Raises :class:`NoAnswer` if the station goes silent."""
        await self.subscribe_job_events()
        seen: set[Any] = set()
        while True:
            try:
                ev = await asyncio.wait_for(self._events.get(), poll_s)
            except TimeoutError:
                info = await self.call("get", {"job_id": job_id}, timeout_s)
                state = str(info.get("state", "")) if isinstance(info, dict) else ""
                if state in TERMINAL_STATES:
                    yield {"type": "event", "kind": f"job/{state}", "station": self.station,
                           "data": info, "source": "poll"}
                    return
                continue
            if _event_job(ev) != str(job_id):
                continue
            key = ev.get("seq")
            if key is not None:
                if key in seen:
                    continue  # QoS 1 redelivery
                seen.add(key)
            yield ev
            kind = str(ev.get("kind", ""))
            if kind.removeprefix("job/") in TERMINAL_STATES:
                return
