"""Remote control over MQTT 5: the command server the daemon runs beside its sinks.

Topics (``{p}`` = ``mqtt.topic_prefix``, ``{s}`` = the station id; see ``docs/mqtt.md``)::

    {p}/{s}/cmd/{verb}        requests: submit, stop, pause, resume, list, get, status
    {p}/{s}/reply/{uuid}      replies, on the request's MQTT 5 ResponseTopic (with its
                              CorrelationData); clients choose the uuid

A request is a JSON object validated by the models below (``schema: 1``); the reply is a
:class:`CommandReply`, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code",
"message"}}``. The server

- refuses (with an error reply, and without calling anything) a payload that is not JSON, not
  an object, of the wrong shape or types, larger than 256 KiB, for an unknown verb, delivered
  as a retained message, or whose ``sent_at`` is more than ``mqtt.command_max_age_s`` away
  from now (a command queued during an outage is not run hours later; the broker itself drops
  requests whose MessageExpiryInterval has elapsed);
- executes each ``request_id`` once: a replay (QoS 1 redelivery, a message published twice)
  gets the stored reply of the first execution. The last ``mqtt.command_dedup_size`` ids are
  kept in memory only: after a restart of the station a replay is caught only by the max age
  (one younger than ``command_max_age_s`` would run again);
- executes commands one at a time, in the order they arrived;
- logs every command at INFO with the client that sent it (the MQTT 5 user property
  ``client`` and the payload's ``client``: what the sender *says*; the broker's ACL, which
  lets only operators publish under ``cmd/``, is the access control).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from station.config import StationConfig
from station.jobs_api import JobControl, JobError
from station.mqttclient import AckClient, json_properties, mqtt_client, tls_context
from station.sinks.cursor import Backoff, clean_json

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32  # objects/arrays nested deeper than this are refused (a job file needs ~4)
VERBS = ("submit", "stop", "pause", "resume", "list", "get", "status")
REPLY_EXPIRY_S = 300
UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"

# error codes of refusals made by the control plane itself; JobError codes (bad_request, limit,
# not_found, conflict, unavailable) come from the job manager
E_BAD_JSON = "bad_json"
E_BAD_REQUEST = "bad_request"
E_UNKNOWN_VERB = "unknown_verb"
E_TOO_LARGE = "too_large"
E_STALE = "stale"
E_DUPLICATE = "duplicate_request_id"
E_RETAINED = "retained"
E_INTERNAL = "internal"


# -- the request and reply schema ---------------------------------------------------------------
JobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00]+$",
                             description="a job id as returned by submit or list")]


class CommandRequest(BaseModel):
    """Fields every request carries."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    schema_version: Literal[1] = Field(alias="schema", description="payload schema version")
    request_id: str = Field(pattern=UUID_PATTERN, description="a fresh UUID per command: the "
                            "de-duplication key (a replay gets the stored reply)")
    sent_at: float = Field(allow_inf_nan=False, description="Unix time (s) when the client sent it")
    client: str = Field("", max_length=200, description="who sends it, e.g. user@host")

    @field_validator("schema_version", mode="before")
    @classmethod
    def _integer_schema(cls, v: Any) -> Any:
        # Literal[1] alone takes true and 1.0 (they equal 1 in Python): the envelope is strict
        if type(v) is not int:
            raise ValueError(f"must be the integer {SCHEMA_VERSION}, not a {type(v).__name__}")
        return v


class SubmitRequest(CommandRequest):
    job: dict[str, Any] = Field(description="the parsed job file (a TOML/JSON object)")


class JobRequest(CommandRequest):
    """stop, pause, resume and get."""

    job_id: JobId


class EmptyRequest(CommandRequest):
    """list and status."""


REQUEST_MODELS: dict[str, type[CommandRequest]] = {
    "submit": SubmitRequest, "stop": JobRequest, "pause": JobRequest, "resume": JobRequest,
    "get": JobRequest, "list": EmptyRequest, "status": EmptyRequest,
}


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    message: str


class CommandReply(BaseModel):
    """The reply to a request; ``result`` is the job info (submit, stop, pause, resume, get),
    ``{"jobs": [...]}`` (list) or the station's status dict (status)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    type: Literal["reply"] = "reply"
    station: str
    verb: str
    request_id: str | None
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    ts: float = Field(description="host Unix time (s) of the reply")


class Refusal(Exception):
    """A request refused before anything was executed."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


def describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(payload)"
        if loc == "schema_version":
            loc = "schema"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "missing"
        elif err["type"] == "literal_error" and loc == "schema":
            msg = f"unsupported schema version (this station speaks {SCHEMA_VERSION})"
        got = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing") and not isinstance(got, dict | list):
            msg += f" (got {json.dumps(got, default=str)[:60]})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def json_depth(obj: Any, limit: int) -> int:
    """How deeply ``obj``'s arrays and objects nest (a scalar: 0), counted without recursion
    and only up to ``limit + 1``."""
    depth, level = 0, [obj]
    while level and depth <= limit:
        nxt: list[Any] = []
        for x in level:
            if isinstance(x, dict):
                nxt.extend(x.values())
            elif isinstance(x, list):
                nxt.extend(x)
        if not any(isinstance(x, dict | list) for x in level):
            break
        depth += 1
        level = nxt
    return depth


def parse_request(verb: str, payload: bytes) -> CommandRequest:
    """The validated request, or :class:`Refusal` naming what is wrong."""
    if verb not in REQUEST_MODELS:
        raise Refusal(E_UNKNOWN_VERB, f"unknown verb {verb[:60]!r}; known: {', '.join(VERBS)}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refusal(E_TOO_LARGE, f"payload of {len(payload)} bytes is larger than the limit "
                      f"of {MAX_PAYLOAD_BYTES} bytes")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refusal(E_BAD_JSON, f"payload is not valid JSON: {e}") from None
    except RecursionError:
        raise Refusal(E_BAD_JSON, f"payload is not acceptable JSON: nested deeper than the "
                      f"parser allows (this station takes at most {MAX_JSON_DEPTH} levels)"
                      ) from None
    if (depth := json_depth(obj, MAX_JSON_DEPTH)) > MAX_JSON_DEPTH:
        raise Refusal(E_BAD_REQUEST, f"payload nested more than {MAX_JSON_DEPTH} levels deep "
                      f"(at least {depth})")
    if not isinstance(obj, dict):
        raise Refusal(E_BAD_REQUEST, f"payload must be a JSON object, not {type(obj).__name__}")
    rid = obj.get("request_id") if isinstance(obj.get("request_id"), str) else None
    try:
        return REQUEST_MODELS[verb].model_validate(obj)
    except ValidationError as e:
        raise Refusal(E_BAD_REQUEST, f"invalid {verb} request: {describe_validation_error(e)}",
                      rid) from None


def dumps(obj: Any) -> bytes:
    return json.dumps(clean_json(obj), allow_nan=False, separators=(",", ":"),
                      default=str).encode()


def user_property(props: Properties | None, name: str) -> str | None:
    for k, v in getattr(props, "UserProperty", None) or []:
        if k == name:
            return str(v)
    return None


# -- execution: the one path of every command, over MQTT or HTTP (station/web) -----------------
_EXEC_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _exec_lock(jobs: JobControl) -> asyncio.Lock:
    lock = _EXEC_LOCKS.get(jobs)
    if lock is None:
        lock = _EXEC_LOCKS[jobs] = asyncio.Lock()
    return lock


async def execute_command(jobs: JobControl, verb: str, req: CommandRequest, client: str, *,
                          station: str) -> CommandReply:
    """Execute a validated request (:func:`parse_request`) on ``jobs`` and return the reply.

    Both control planes call this, the MQTT :class:`ControlServer` and the web API, so a
    command gets the same validation (the job manager's schema and safety limits), the same
    refusals (:class:`JobError` codes) and the same audit trail: the job manager records the
    ``client`` in the job and in its events, and this logs the request and its outcome. Commands
    run one at a time per job manager, in arrival order, whichever plane they came by."""
    rid = req.request_id
    async with _exec_lock(jobs):
        reply = await _execute(jobs, verb, req, client, station)
    if reply.ok:
        log.info("control: %s request_id=%s from %s done", verb, rid, client)
    else:
        assert reply.error is not None
        log.info("control: %s request_id=%s from %s refused: %s (%s)", verb, rid, client,
                 reply.error.message, reply.error.code)
    return reply


async def _execute(jobs: JobControl, verb: str, req: CommandRequest, client: str,
                   station: str) -> CommandReply:
    rid = req.request_id

    def reply(result: Any = None, error: tuple[str, str] | None = None) -> CommandReply:
        return CommandReply(station=station, verb=verb, request_id=rid, ok=error is None,
                            result=result if error is None else None,
                            error=ErrorInfo(code=error[0], message=error[1]) if error else None,
                            ts=time.time())

    try:
        result: Any
        if isinstance(req, SubmitRequest):
            result = await jobs.submit(req.job, client)
        elif isinstance(req, JobRequest):
            if verb == "stop":
                result = await jobs.stop(req.job_id, client)
            elif verb == "pause":
                result = await jobs.pause(req.job_id, client)
            elif verb == "resume":
                result = await jobs.resume(req.job_id, client)
            else:
                result = jobs.get(req.job_id)
        elif verb == "list":
            result = {"jobs": jobs.list()}
        else:
            result = jobs.status()
        json.dumps(clean_json(result), allow_nan=False, default=str)  # fail here, not later
    except JobError as e:
        return reply(error=(e.code, str(e)))
    except Exception as e:
        log.exception("control: %s request_id=%s failed", verb, rid)
        return reply(error=(E_INTERNAL, f"{type(e).__name__}: {e}"))
    return reply(result)


# -- the server ---------------------------------------------------------------------------------
@dataclass
class _Seen:
    verb: str
    reply: asyncio.Future[CommandReply]


@dataclass(frozen=True)
class _Incoming:
    verb: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    client_prop: str | None
    expiry_s: int | None
    retained: bool


class ControlServer:
    """Serves ``{prefix}/{station}/cmd/#`` for ``jobs`` until ``stop_event`` is set::

        stop = asyncio.Event()
        task = asyncio.create_task(ControlServer(config, jobs).run(stop))

    Its own MQTT connection (client id ``<mqtt.client_id>-control``, persistent session of
    ``mqtt.command_session_expiry_s``), reconnecting with backoff between ``mqtt.retry_min_s``
    and ``mqtt.retry_max_s``.
    """

    def __init__(self, config: StationConfig, jobs: JobControl) -> None:
        self.cfg = config.mqtt
        self.jobs = jobs
        self.station = config.station.id
        self.base = f"{self.cfg.topic_prefix}/{self.station}"
        self.cmd_prefix = f"{self.base}/cmd/"
        self.reply_prefix = f"{self.base}/reply/"
        self.identifier = f"{self.cfg.client_id or 'ledstation-' + self.station}-control"
        self.ready = asyncio.Event()  # set while connected and subscribed
        self.executed = 0  # commands passed to the job manager
        self.refused = 0  # requests refused before execution
        self.last_error: str | None = None
        self._seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: AckClient | None = None
        # the sinks' backoff: doubling from retry_min_s, jittered (many stations do not all
        # knock at once when the broker comes back), capped at retry_max_s (5 s by default: back
        # within seconds of the broker whatever the length of the outage)
        self.backoff = Backoff(self.cfg.retry_min_s, self.cfg.retry_max_s)

    # -- connection -----------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        tls = await asyncio.to_thread(tls_context, self.cfg)
        try:
            while not stop_event.is_set():
                try:
                    async with self._connected(tls) as client:
                        self.backoff.reset()
                        await self._serve(client, stop_event)
                    delay = self.backoff.next_delay()
                except aiomqtt.MqttError as e:
                    self.last_error = str(e)
                    delay = self.backoff.next_delay()
                    log.warning("control: MQTT connection to %s failed: %s; retrying in %.1f s",
                                self.cfg.url, e, delay)
                if stop_event.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), delay)
        finally:
            await self._drain()

    @contextlib.asynccontextmanager
    async def _connected(self, tls: Any) -> AsyncIterator[AckClient]:
        expiry = self.cfg.command_session_expiry_s
        client = mqtt_client(self.cfg, self.identifier, tls, clean_start=expiry == 0,
                             session_expiry_s=expiry, username=self.cfg.control_username,
                             password=(self.cfg.control_password
                                       if self.cfg.control_password is not None
                                       else self.cfg.password))
        async with client:
            # Retain As Published: a command published with the retain flag while we are
            # subscribed keeps the flag (MQTT 5 clears it by default), so it is refused as
            # retained like one delivered at subscription
            await client.subscribe(f"{self.base}/cmd/#",
                                   options=SubscribeOptions(qos=1, retainAsPublished=True))
            self._client = client
            self.last_error = None
            self.ready.set()
            log.info("control: serving %s#", self.cmd_prefix)
            try:
                yield client
            finally:
                self.ready.clear()
                self._client = None

    async def _serve(self, client: AckClient, stop_event: asyncio.Event) -> None:
        async def receive() -> None:
            async for m in client.messages:
                self._dispatch(m)

        receiver = asyncio.create_task(receive())
        stopper = asyncio.create_task(stop_event.wait())
        try:
            await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not receiver.done():
                receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        if stop_event.is_set():
            # let the commands in hand finish and answer before the connection closes
            await self._drain()
        elif (exc := receiver.exception()) is not None:
            raise exc

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.cfg.timeout_s)
        for t in pending:
            t.cancel()

    # -- requests -------------------------------------------------------------------------------
    def _dispatch(self, m: aiomqtt.Message) -> None:
        topic = str(m.topic)
        if not topic.startswith(self.cmd_prefix):
            return
        props = m.properties
        corr = getattr(props, "CorrelationData", None)
        inc = _Incoming(
            verb=topic[len(self.cmd_prefix):],
            payload=m.payload if isinstance(m.payload, bytes) else str(m.payload).encode(),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=bytes(corr) if corr is not None else None,
            client_prop=user_property(props, "client"),
            expiry_s=getattr(props, "MessageExpiryInterval", None), retained=bool(m.retain))
        task = asyncio.create_task(self._handle(inc))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("control: handling a command failed", exc_info=exc)

    def _reply(self, verb: str, request_id: str | None, *, result: Any = None,
               error: tuple[str, str] | None = None) -> CommandReply:
        return CommandReply(station=self.station, verb=verb, request_id=request_id,
                            ok=error is None, result=result if error is None else None,
                            error=ErrorInfo(code=error[0], message=error[1]) if error else None,
                            ts=time.time())

    def _valid_reply_topic(self, topic: str) -> bool:
        return (topic.startswith(self.reply_prefix) and len(topic) > len(self.reply_prefix)
                and not re.search(r"[+#\x00]", topic))

    async def _handle(self, inc: _Incoming) -> None:
        payload_client: str | None = None
        with contextlib.suppress(Exception, RecursionError):
            obj = json.loads(inc.payload) if len(inc.payload) <= MAX_PAYLOAD_BYTES else None
            if isinstance(obj, dict) and isinstance(obj.get("client"), str):
                payload_client = obj["client"][:200]
        who = inc.client_prop or payload_client or "unknown"
        whom = f"client={inc.client_prop or '?'} (payload client={payload_client or '?'})"
        if inc.response_topic is not None and not self._valid_reply_topic(inc.response_topic):
            self.refused += 1
            log.warning("control: refused %s from %s: response topic %r is not under %s; not "
                        "executed, no reply", inc.verb, whom, inc.response_topic,
                        self.reply_prefix)
            return
        seen: _Seen | None = None
        try:
            if inc.retained:
                raise Refusal(E_RETAINED, "a retained command is never executed (it would run "
                              "again at every reconnection): publish commands without the retain "
                              "flag, and clear this one with an empty retained message")
            req = parse_request(inc.verb, inc.payload)
            seen = self._seen.get(req.request_id)
            if seen is not None and seen.verb != inc.verb:
                raise Refusal(E_DUPLICATE, f"request_id {req.request_id} was already used for "
                              f"a {seen.verb} command", req.request_id)
            if seen is None:
                age = time.time() - req.sent_at
                if abs(age) > self.cfg.command_max_age_s:
                    what = (f"sent {age:.0f} s ago" if age > 0
                            else f"sent_at is {-age:.0f} s in the future (check the clocks)")
                    raise Refusal(E_STALE, f"command {what}; this station refuses commands "
                                  f"older than {self.cfg.command_max_age_s:g} s (mqtt."
                                  "command_max_age_s): nothing was done, send it again",
                                  req.request_id)
        except Refusal as r:
            self.refused += 1
            log.info("control: refused %s request_id=%s from %s: %s (%s)", inc.verb,
                     r.request_id, whom, r.message, r.code)
            await self._send(inc, self._reply(inc.verb, r.request_id, error=(r.code, r.message)))
            return

        if seen is not None:
            log.info("control: %s request_id=%s from %s is a replay: answering with the stored "
                     "reply, not executing it again", inc.verb, req.request_id, whom)
            reply = await asyncio.shield(seen.reply)
            await self._send(inc, reply)
            return

        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._seen[req.request_id] = _Seen(inc.verb, fut)
        while len(self._seen) > self.cfg.command_dedup_size:
            self._seen.popitem(last=False)
        log.info("control: %s request_id=%s from %s, reply to %s%s", inc.verb, req.request_id,
                 whom, inc.response_topic or "(none)",
                 f", expiry {inc.expiry_s} s" if inc.expiry_s is not None else "")
        reply = await self._execute(inc.verb, req, who)
        fut.set_result(reply)
        await self._send(inc, reply)

    async def _execute(self, verb: str, req: CommandRequest, client: str) -> CommandReply:
        self.executed += 1
        return await execute_command(self.jobs, verb, req, client, station=self.station)

    async def _send(self, inc: _Incoming, reply: CommandReply) -> None:
        if inc.response_topic is None:
            log.info("control: %s request_id=%s has no response topic: no reply sent", inc.verb,
                     reply.request_id)
            return
        client = self._client
        if client is None:
            log.warning("control: reply to %s request_id=%s lost: not connected (a replay of "
                        "the request gets it)", inc.verb, reply.request_id)
            return
        props = json_properties()
        if inc.correlation is not None:
            props.CorrelationData = inc.correlation
        props.MessageExpiryInterval = REPLY_EXPIRY_S
        try:
            await client.publish_acked(inc.response_topic, dumps(reply.model_dump(by_alias=True)),
                                       properties=props, timeout=self.cfg.timeout_s)
        except aiomqtt.MqttError as e:
            log.warning("control: reply to %s request_id=%s not delivered: %s", inc.verb,
                        reply.request_id, e)


def request_payload(request_id: str, client: str, fields: dict[str, Any],
                    sent_at: float | None = None) -> dict[str, Any]:
    """A request object (what :class:`station.remote.RemoteStation` sends)."""
    sent = time.time() if sent_at is None else sent_at
    if not math.isfinite(sent):
        raise ValueError("sent_at must be finite")
    return {"schema": SCHEMA_VERSION, "request_id": request_id, "sent_at": sent,
            "client": client, **fields}
