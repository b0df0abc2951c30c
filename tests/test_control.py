"""Remote control over MQTT 5: the command server (station.control), its client
(station.remote) and the CLI (station jobs ..., station status), against real Mosquitto brokers.

Two brokers: an anonymous one for the protocol itself, and one with the password file, the
TLS listeners of tests/services.py and the *deployed* ACL (deploy/mosquitto/acl) for who may
do what. The job manager is an in-memory JobControl defined here (records calls, enforces a
maximum voltage): what is under test is the control plane, not the queue.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import builtins
import contextlib
import getpass
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.config import StationConfig
from station.control import MAX_PAYLOAD_BYTES, ControlServer
from station.jobs_api import JobError
from station.mqttclient import AckClient, PublishRejected
from station.remote import CommandRefused, NoAnswer, RemoteStation
from tests.services import (  # noqa: F401  (fixtures)
    VIEWER_PASSWORD,
    VIEWER_USER,
    Certs,
    Mosquitto,
    _binary,
    _stop,
    _wait_port,
    free_port,
    mqtt_certs,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_ACL = ROOT / "deploy" / "mosquitto" / "acl"
STATION_ID = "lab-a"  # on the ACL broker: the station's MQTT user name is its id
USERS = {STATION_ID: "lab-a-pw", "operator": "operator-pw"}


# -- brokers --------------------------------------------------------------------------------------
@dataclass
class AnonymousMosquitto:
    """A Mosquitto that lets anyone connect (one plain listener on loopback)."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = _binary(["/usr/sbin/mosquitto", "mosquitto"], "mosquitto")
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "mosquitto.conf"
        self.conf.write_text(f"user {getpass.getuser()}\nallow_anonymous true\n"
                             "persistence false\nset_tcp_nodelay true\nlog_dest stderr\n"
                             "log_type error\nlog_type warning\n"
                             f"listener {self.port} 127.0.0.1\n")
        self.log = self.root / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        _stop(self.proc)


class AclMosquitto(Mosquitto):
    """tests/services.py's broker (password file, TLS listeners) running the deployed ACL, with
    the users it names: the station ``lab-a``, ``operator`` and ``viewer``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        passwd = _binary(["mosquitto_passwd", "/usr/bin/mosquitto_passwd"], "mosquitto")
        for user, password in USERS.items():
            subprocess.run([passwd, "-b", str(self.root / "passwd"), user, password], check=True,
                           capture_output=True)
        (self.root / "acl").write_text(DEPLOY_ACL.read_text())


@pytest.fixture(scope="module")
def anon_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnonymousMosquitto]:
    b = AnonymousMosquitto(tmp_path_factory.mktemp("anon-mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory, mqtt_certs: Certs
               ) -> Iterator[AclMosquitto]:
    b = AclMosquitto(tmp_path_factory.mktemp("acl-mosquitto"), mqtt_certs)
    b.start()
    yield b
    b.kill()


# -- an in-memory job manager ---------------------------------------------------------------------
TERMINAL = ("finished", "failed", "aborted", "stopped")


class FakeJobs:
    """JobControl that records every call and refuses jobs above ``max_voltage_v``.

    A job is ``{"name", "kind", "voltage_v", "then"}``; ``then`` scripts what happens after it
    is queued: ``events`` publishes job/started and job/finished (``fail``: job/failed) on
    MQTT like the daemon's sink; ``finish_silently`` marks it finished without any event.
    """

    def __init__(self, max_voltage_v: float = 10.0) -> None:
        self.max_voltage_v = max_voltage_v
        self.calls: builtins.list[tuple[str, Any, str]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.gate: asyncio.Event | None = None  # submit waits on it when set
        self.emit: Any = None  # async (kind, data) -> None
        self._tasks: set[asyncio.Task[None]] = set()

    def _job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise JobError(f"no job {job_id!r} on this station", code="not_found")
        return self.jobs[job_id]

    async def submit(self, job: dict[str, Any], client: str) -> dict[str, Any]:
        self.calls.append(("submit", job, client))
        if self.gate is not None:
            await self.gate.wait()
        if job.get("kind") not in ("sweep", "aging"):
            raise JobError("kind must be 'sweep' or 'aging'", code="bad_request")
        v = job.get("voltage_v", 0.0)
        if not isinstance(v, int | float) or v > self.max_voltage_v:
            raise JobError(f"voltage_v = {v} V is above this station's limit "
                           f"limits.max_voltage_v = {self.max_voltage_v:g} V", code="limit")
        job_id = f"job-{len(self.jobs) + 1}"
        info = {"id": job_id, "name": job.get("name", ""), "kind": job["kind"],
                "state": "queued", "created": 1_795_695_257.0, "progress": 0.0, "client": client}
        self.jobs[job_id] = info
        then = job.get("then")
        if then == "finish_silently":
            info["state"] = "finished"
        elif then in ("events", "fail"):
            t = asyncio.create_task(self._script(job_id, "failed" if then == "fail" else "finished"))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        return dict(info)

    async def _script(self, job_id: str, end: str) -> None:
        self.jobs[job_id]["state"] = "running"
        await self.emit("job/started", {"job": job_id, "pixels": [1, 2]})
        await self.emit("job/started", {"job": "someone-elses-job"})
        self.jobs[job_id]["state"] = end
        await self.emit(f"job/{end}", {"job": job_id, "reason": "done" if end == "finished"
                                       else "compliance"})

    async def stop(self, job_id: str, client: str) -> dict[str, Any]:
        self.calls.append(("stop", job_id, client))
        info = self._job(job_id)
        info["state"] = "stopped"
        return dict(info)

    async def pause(self, job_id: str, client: str) -> dict[str, Any]:
        self.calls.append(("pause", job_id, client))
        info = self._job(job_id)
        if info["state"] in TERMINAL:
            raise JobError(f"job {job_id} is {info['state']}: nothing to pause", code="conflict")
        info["state"] = "paused"
        return dict(info)

    async def resume(self, job_id: str, client: str) -> dict[str, Any]:
        self.calls.append(("resume", job_id, client))
        info = self._job(job_id)
        if info["state"] != "paused":
            raise JobError(f"job {job_id} is not paused", code="conflict")
        info["state"] = "queued"
        return dict(info)

    def list(self) -> list[dict[str, Any]]:
        self.calls.append(("list", None, ""))
        return [dict(j) for j in reversed(self.jobs.values())]

    def get(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("get", job_id, ""))
        return dict(self._job(job_id))

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None, ""))
        return {"id": "lab-a", "board": {"link_up": True, "firmware": "1.2.0"},
                "interlock": "closed", "running": [j["id"] for j in self.jobs.values()
                                                   if j["state"] == "running"],
                "temperature_c": float("nan")}

    def mutations(self) -> builtins.list[tuple[str, Any, str]]:
        return [c for c in self.calls if c[0] in ("submit", "stop", "pause", "resume")]


# -- helpers --------------------------------------------------------------------------------------
def config(url: str, station: str, **mqtt: Any) -> StationConfig:
    base: dict[str, Any] = dict(url=url, retry_min_s=0.05, retry_max_s=0.3, timeout_s=5,
                                keepalive_s=5, client_id=f"test-{uuid.uuid4().hex[:8]}")
    base.update(mqtt)
    return StationConfig(station={"id": station}, mqtt=base)


def anon_config(broker: AnonymousMosquitto, station: str | None = None, **kw: Any
                ) -> StationConfig:
    return config(broker.url, station or f"st-{uuid.uuid4().hex[:8]}", **kw)


def acl_config(broker: AclMosquitto, user: str, *, tls: bool = False, **kw: Any
               ) -> StationConfig:
    password = USERS.get(user) or (VIEWER_PASSWORD if user == VIEWER_USER else "")
    if tls:
        kw.update(url=f"mqtts://127.0.0.1:{broker.tls_port}", ca_file=str(broker.certs.ca))
    else:
        kw.setdefault("url", broker.url)
    return config(kw.pop("url"), STATION_ID, username=user, password=password, **kw)


@contextlib.asynccontextmanager
async def serving(cfg: StationConfig, jobs: FakeJobs) -> AsyncIterator[ControlServer]:
    server = ControlServer(cfg, jobs)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        await wait_until(lambda: server.ready.is_set() or task.done(), what="server subscribed")
        if task.done():
            task.result()
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def raw_client(cfg: StationConfig) -> AckClient:
    c = cfg.mqtt
    return AckClient("127.0.0.1", int(c.url.rsplit(":", 1)[1]), username=c.username,
                     password=c.password, identifier=f"raw-{uuid.uuid4().hex[:8]}",
                     protocol=aiomqtt.ProtocolVersion.V5, timeout=10)


def envelope(**fields: Any) -> dict[str, Any]:
    return {"schema": 1, "request_id": str(uuid.uuid4()), "sent_at": time.time(),
            "client": "raw@test", **fields}


@dataclass
class Exchange:
    """A raw MQTT 5 requester: publishes whatever it is given, collects replies."""

    client: AckClient
    base: str
    reply_topic: str
    replies: list[tuple[dict[str, Any], Properties | None]] = field(default_factory=list)

    async def send(self, verb: str, payload: bytes | dict[str, Any], *,
                   correlation: bytes | None = b"c", response_topic: str | bool | None = True,
                   expiry_s: int | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is True:
            props.ResponseTopic = self.reply_topic
        elif isinstance(response_topic, str):
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish_acked(f"{self.base}/cmd/{verb}", body, properties=props)

    async def reply(self, n: int) -> dict[str, Any]:
        """The ``n``-th reply (1-based), waiting for it."""
        await wait_until(lambda: len(self.replies) >= n, what=f"reply #{n}", timeout_s=15)
        return self.replies[n - 1][0]


@contextlib.asynccontextmanager
async def exchange(cfg: StationConfig) -> AsyncIterator[Exchange]:
    base = f"{cfg.mqtt.topic_prefix}/{cfg.station.id}"
    async with raw_client(cfg) as c:
        ex = Exchange(c, base, f"{base}/reply/{uuid.uuid4().hex}")
        await c.subscribe(ex.reply_topic, qos=1)

        async def collect() -> None:
            async for m in c.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                ex.replies.append((json.loads(payload), m.properties))
        task = asyncio.create_task(collect())
        try:
            yield ex
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


JOB = {"name": "JVL S1", "kind": "sweep", "voltage_v": 6.0}


# == request / response ===========================================================================
async def test_every_verb_round_trips_with_the_clients_identity(anon_broker, caplog):
    caplog.set_level(logging.INFO, logger="station.control")
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs), RemoteStation(cfg, client_name="alice@bench") as st:
        info = await st.call("submit", {"job": JOB}, timeout_s=10)
        assert info["id"] == "job-1" and info["state"] == "queued"
        assert (await st.call("list"))["jobs"][0]["id"] == "job-1"
        assert (await st.call("get", {"job_id": "job-1"}))["name"] == "JVL S1"
        assert (await st.call("pause", {"job_id": "job-1"}))["state"] == "paused"
        assert (await st.call("resume", {"job_id": "job-1"}))["state"] == "queued"
        assert (await st.call("stop", {"job_id": "job-1"}))["state"] == "stopped"
        status = await st.call("status")
        assert status["board"]["link_up"] is True and status["temperature_c"] is None  # NaN
    assert jobs.mutations() == [("submit", JOB, "alice@bench"), ("pause", "job-1", "alice@bench"),
                                ("resume", "job-1", "alice@bench"), ("stop", "job-1", "alice@bench")]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for verb in ("submit", "list", "get", "pause", "resume", "stop", "status"):
        assert any(m.startswith(f"control: {verb} request_id=") and "client=alice@bench" in m
                   for m in logged), verb


async def test_a_reply_carries_the_requests_correlation_data_to_its_response_topic(anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs), exchange(cfg) as ex:
        req = envelope()
        await ex.send("status", req, correlation=b"\x00\xffany-bytes")
        reply = await ex.reply(1)
        props = ex.replies[0][1]
    assert props is not None and getattr(props, "CorrelationData", None) == b"\x00\xffany-bytes"
    assert getattr(props, "ContentType", None) == "application/json"
    assert reply["ok"] is True and reply["request_id"] == req["request_id"]
    assert (reply["schema"], reply["type"], reply["station"], reply["verb"]) == (
        1, "reply", cfg.station.id, "status")


async def test_the_station_refuses_a_job_over_its_limits_and_says_why(anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs(max_voltage_v=8.0)
    async with serving(cfg, jobs), RemoteStation(cfg) as st:
        with pytest.raises(CommandRefused) as e:
            await st.call("submit", {"job": {**JOB, "voltage_v": 12.0}})
        assert e.value.code == "limit" and "max_voltage_v = 8 V" in str(e.value)
        with pytest.raises(CommandRefused) as e:
            await st.call("stop", {"job_id": "job-99"})
        assert e.value.code == "not_found"
        assert (await st.call("list"))["jobs"] == []  # nothing was queued


async def test_the_same_request_twice_is_executed_once_and_answered_twice(anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs) as server, exchange(cfg) as ex:
        req = json.dumps(envelope(job=JOB)).encode()
        await ex.send("submit", req)
        await ex.send("submit", req)  # a replay: same request_id
        first, second = await ex.reply(1), await ex.reply(2)
        assert first == second and first["ok"] and first["result"]["id"] == "job-1"
        assert [c[0] for c in jobs.mutations()] == ["submit"] and server.executed == 1

        # a replay that arrives while the first is still executing waits for its answer
        jobs.gate = asyncio.Event()
        req2 = json.dumps(envelope(job={**JOB, "name": "second"})).encode()
        await ex.send("submit", req2)
        await ex.send("submit", req2)
        await wait_until(lambda: len(jobs.mutations()) == 2, what="second submit started")
        jobs.gate.set()
        third, fourth = await ex.reply(3), await ex.reply(4)
        assert third == fourth and third["result"]["id"] == "job-2"
        assert len(jobs.mutations()) == 2

        # the same request_id for another verb is a client bug, refused
        rid = json.loads(req)["request_id"]
        await ex.send("stop", envelope(request_id=rid, job_id="job-1"))
        fifth = await ex.reply(5)
        assert fifth["error"]["code"] == "duplicate_request_id"
    assert len(jobs.mutations()) == 2


BAD_REQUESTS: list[tuple[str, str, bytes | dict[str, Any], str, str]] = [
    ("not JSON", "submit", b'{"schema": 1, "job": ', "bad_json", "not valid JSON"),
    ("not UTF-8", "submit", b"\xff\xfe\x00", "bad_json", "not valid JSON"),
    ("not an object", "submit", b"[1, 2]", "bad_request", "JSON object, not list"),
    ("job of the wrong type", "submit", envelope(job="sweep.toml"), "bad_request", "job:"),
    ("job id of the wrong type", "stop", envelope(job_id=42), "bad_request", "job_id:"),
    ("job id missing", "pause", envelope(), "bad_request", "job_id: missing"),
    ("sent_at a string", "list", envelope(sent_at="now"), "bad_request", "sent_at:"),
    ("request_id not a uuid", "list", envelope(request_id="1"), "bad_request", "request_id:"),
    ("schema missing", "list", {k: v for k, v in envelope().items() if k != "schema"},
     "bad_request", "schema: missing"),
    ("future schema", "list", envelope(schema=2), "bad_request", "unsupported schema version"),
    ("unknown field", "submit", envelope(job=JOB, priority=1), "bad_request",
     "priority: unknown field"),
    ("unknown verb", "reboot", envelope(), "unknown_verb", "unknown verb 'reboot'"),
    ("verb with levels", "submit/now", envelope(job=JOB), "unknown_verb", "unknown verb"),
    ("oversize", "submit", envelope(job={**JOB, "notes": "x" * MAX_PAYLOAD_BYTES}), "too_large",
     f"limit of {MAX_PAYLOAD_BYTES} bytes"),
]


async def test_malformed_requests_get_an_error_reply_naming_the_problem_and_change_nothing(
        anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs) as server, exchange(cfg) as ex:
        for i, (what, verb, payload, code, says) in enumerate(BAD_REQUESTS, 1):
            await ex.send(verb, payload, correlation=str(i).encode())
            reply = await ex.reply(i)
            assert getattr(ex.replies[i - 1][1], "CorrelationData", None) == str(i).encode()
            assert reply["ok"] is False and reply["result"] is None, what
            assert reply["error"]["code"] == code, (what, reply)
            assert says in reply["error"]["message"], (what, reply["error"]["message"])
        assert server.refused == len(BAD_REQUESTS) and server.executed == 0
    assert jobs.calls == []


async def test_commands_older_or_newer_than_the_max_age_are_refused_as_stale(anon_broker):
    cfg, jobs = anon_config(anon_broker, command_max_age_s=60), FakeJobs()
    async with serving(cfg, jobs), exchange(cfg) as ex:
        await ex.send("submit", envelope(job=JOB, sent_at=time.time() - 3600))
        old = await ex.reply(1)
        await ex.send("submit", envelope(job=JOB, sent_at=time.time() + 3600))
        future = await ex.reply(2)
        await ex.send("submit", envelope(job=JOB, sent_at=time.time() - 30))
        recent = await ex.reply(3)
    assert old["error"]["code"] == "stale" and "ago" in old["error"]["message"]
    assert "command_max_age_s" in old["error"]["message"]
    assert future["error"]["code"] == "stale" and "future" in future["error"]["message"]
    assert recent["ok"] is True
    assert len(jobs.mutations()) == 1


async def test_a_request_without_response_topic_is_executed_without_reply(anon_broker, caplog):
    caplog.set_level(logging.INFO, logger="station.control")
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs), exchange(cfg) as ex:
        req = envelope(job=JOB)
        await ex.send("submit", req, response_topic=None, correlation=None)
        await wait_until(lambda: bool(jobs.mutations()), what="submit executed")
        await ex.send("status", envelope())  # ordered after it on the same connection
        assert (await ex.reply(1))["verb"] == "status"
    assert len(ex.replies) == 1
    assert any("no response topic" in r.getMessage() and req["request_id"] in r.getMessage()
               for r in caplog.records)


async def test_a_response_topic_outside_the_stations_reply_subtree_is_refused(anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with serving(cfg, jobs) as server, exchange(cfg) as ex:
        await ex.send("submit", envelope(job=JOB), response_topic=f"{ex.base}/status")
        await ex.send("status", envelope())
        assert (await ex.reply(1))["verb"] == "status"
        assert server.refused == 1
    assert jobs.mutations() == []


async def test_a_retained_command_is_never_executed(anon_broker):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    async with exchange(cfg) as ex:
        topic = f"{ex.base}/cmd/submit"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = ex.reply_topic
        await ex.client.publish_acked(topic, json.dumps(envelope(job=JOB)).encode(),
                                      retain=True, properties=props)
        try:
            async with serving(cfg, jobs):  # subscribing delivers the retained message
                reply = await ex.reply(1)
        finally:
            await ex.client.publish_acked(topic, b"", retain=True)  # clear it
    assert reply["error"]["code"] == "retained" and "without the retain flag" in reply["error"][
        "message"]
    assert jobs.calls == []


async def test_a_call_nobody_answers_times_out_clearly_and_carries_the_mqtt5_properties(
        anon_broker):
    cfg = anon_config(anon_broker)
    async with exchange(cfg) as spy, RemoteStation(cfg, client_name="bob@lab") as st:
        await spy.client.subscribe(f"{spy.base}/cmd/#", qos=1)  # what the station would get
        with pytest.raises(NoAnswer) as e:
            await st.call("status", timeout_s=1.5)
        ((body, p),) = spy.replies
    assert str(e.value).startswith(f"no answer from station {cfg.station.id} within 1.5 s: is "
                                   f"`station run` running and connected to the broker at "
                                   f"{cfg.mqtt.url}?")
    assert p is not None and getattr(p, "ResponseTopic", None) == st.reply_topic
    assert st.reply_topic.startswith(f"ledstation/{cfg.station.id}/reply/")
    assert getattr(p, "CorrelationData", None) == body["request_id"].encode()
    assert 1 <= getattr(p, "MessageExpiryInterval", 0) <= math.ceil(1.5)  # what is left at delivery
    assert ("client", "bob@lab") in getattr(p, "UserProperty", []) and body["client"] == "bob@lab"
    assert body["schema"] == 1 and abs(body["sent_at"] - time.time()) < 3600


async def test_an_expired_command_queued_while_the_station_was_away_is_never_run(anon_broker):
    """The server's persistent session makes the broker queue commands while the station is
    disconnected; MessageExpiryInterval makes it drop those that waited too long."""
    cfg, jobs = anon_config(anon_broker, command_session_expiry_s=300), FakeJobs()
    async with serving(cfg, jobs):
        pass  # the broker now holds the server's session and subscription
    async with exchange(cfg) as ex:
        await ex.send("submit", envelope(job={**JOB, "name": "expires"}), expiry_s=1)
        await ex.send("submit", envelope(job={**JOB, "name": "waits"}), expiry_s=300)
        await asyncio.sleep(2.5)  # let the broker's 1 s expiry pass (its clock has 1 s steps)
        async with serving(cfg, jobs):
            reply = await ex.reply(1)
            await ex.send("list", envelope())
            await ex.reply(2)
    assert reply["ok"] is True and reply["result"]["name"] == "waits"
    assert [c[1]["name"] for c in jobs.mutations()] == ["waits"]


async def test_the_server_reconnects_after_the_broker_restarts(tmp_path):
    broker = AnonymousMosquitto(tmp_path / "b")
    broker.start()
    try:
        cfg, jobs = anon_config(broker), FakeJobs()
        async with serving(cfg, jobs) as server:
            async with RemoteStation(cfg) as st:
                await st.call("status")
            broker.stop()
            await wait_until(lambda: not server.ready.is_set(), what="server noticed")
            broker.start()
            await wait_until(server.ready.is_set, what="server reconnected")
            async with RemoteStation(cfg) as st:
                assert (await st.call("submit", {"job": JOB}))["id"] == "job-1"
    finally:
        broker.stop()


# == the deployed ACL, passwords and TLS ==========================================================
async def test_operator_over_tls_with_password_controls_the_station(acl_broker):
    server_cfg = acl_config(acl_broker, STATION_ID, tls=True)
    jobs = FakeJobs()
    async with serving(server_cfg, jobs), RemoteStation(acl_config(acl_broker, "operator",
                                                                   tls=True)) as st:
        assert (await st.call("submit", {"job": JOB}))["id"] == "job-1"
        assert (await st.call("get", {"job_id": "job-1"}))["state"] == "queued"
    assert len(jobs.mutations()) == 1


async def test_a_viewers_command_is_refused_by_the_broker_and_nothing_is_executed(acl_broker):
    jobs = FakeJobs()
    async with serving(acl_config(acl_broker, STATION_ID), jobs) as server:
        viewer = acl_config(acl_broker, VIEWER_USER)
        async with raw_client(viewer) as c:
            with pytest.raises(PublishRejected) as e:
                await c.publish_acked(f"ledstation/{STATION_ID}/cmd/submit",
                                      json.dumps(envelope(job=JOB)).encode())
            assert e.value.rc.value == 0x87  # not authorized
        async with RemoteStation(viewer) as st:
            with pytest.raises(CommandRefused) as refused:
                await st.call("stop", {"job_id": "job-1"})
        assert refused.value.code == "not_authorized" and "operators may" in str(refused.value)
        async with RemoteStation(acl_config(acl_broker, "operator")) as st:
            assert (await st.call("list"))["jobs"] == []  # after the refused ones, in order
        assert server.executed == 1
    assert jobs.mutations() == []


async def test_wrong_password_is_no_answer_naming_the_broker(acl_broker):
    cfg = acl_config(acl_broker, "operator")
    cfg.mqtt.password = "wrong"
    with pytest.raises(NoAnswer) as e:
        async with RemoteStation(cfg):
            pass
    assert f"cannot connect to the MQTT broker at {acl_broker.url} as operator" in str(e.value)


# == the CLI ======================================================================================
def cli_module() -> str:
    from station.cli import COMMAND_MODULES
    return "station" if "station.commands.jobs_cmd" in COMMAND_MODULES else \
        "station.commands.jobs_cmd"


@dataclass
class Result:
    rc: int
    out: str
    err: str


async def cli(*args: str, env: dict[str, str], cwd: Path) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", cli_module(), *args, env=full_env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def cli_env(cfg: StationConfig, **extra: str) -> dict[str, str]:
    env = {"STATION_MQTT__URL": cfg.mqtt.url, "STATION_STATION__ID": cfg.station.id, **extra}
    if cfg.mqtt.username:
        env["STATION_MQTT__USERNAME"] = cfg.mqtt.username
        env["STATION_MQTT__PASSWORD"] = cfg.mqtt.password or ""
    if cfg.mqtt.ca_file:
        env["STATION_MQTT__CA_FILE"] = cfg.mqtt.ca_file
    return env


JOB_TOML = """name = "JVL S1"
kind = "sweep"
voltage_v = 6.0
then = "{then}"
start_after = 2026-01-01T08:00:00Z
"""


async def test_cli_submit_list_show_pause_resume_stop_status(anon_broker, tmp_path):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    env = cli_env(cfg)
    (tmp_path / "job.toml").write_text(JOB_TOML.format(then="nothing"))
    async with serving(cfg, jobs):
        r = await cli("jobs", "submit", "job.toml", env=env, cwd=tmp_path)
        assert (r.rc, r.err) == (0, "")
        assert r.out.strip() == f"job job-1 (JVL S1) state queued on station {cfg.station.id}"
        r = await cli("jobs", "submit", "job.toml", "--json", env=env, cwd=tmp_path)
        assert r.rc == 0 and json.loads(r.out)["id"] == "job-2"

        r = await cli("jobs", "list", env=env, cwd=tmp_path)
        assert r.rc == 0
        header, *rows = r.out.splitlines()
        assert header.split() == ["ID", "NAME", "KIND", "STATE", "CREATED", "PROGRESS", "CLIENT"]
        assert [row.split()[0] for row in rows] == ["job-2", "job-1"] and "0 %" in rows[0]
        r = await cli("jobs", "list", "--json", env=env, cwd=tmp_path)
        assert [j["id"] for j in json.loads(r.out)] == ["job-2", "job-1"]

        r = await cli("jobs", "show", "job-1", env=env, cwd=tmp_path)
        table = dict(line.split(None, 1) for line in r.out.splitlines())
        assert r.rc == 0 and table["name"] == "JVL S1" and table["state"] == "queued"
        assert table["created"].startswith("2026-")
        for verb, state in (("pause", "paused"), ("resume", "queued"), ("stop", "stopped")):
            r = await cli("jobs", verb, "job-1", env=env, cwd=tmp_path)
            assert (r.rc, r.out.strip()) == (0, f"{verb}: job job-1 (JVL S1) state {state}")
        r = await cli("status", "--json", env=env, cwd=tmp_path)
        assert r.rc == 0 and json.loads(r.out)["board"] == {"link_up": True, "firmware": "1.2.0"}
        r = await cli("status", env=env, cwd=tmp_path)
        table = dict(line.split(None, 1) for line in r.out.splitlines())
        assert r.rc == 0 and table["board.link_up"] == "yes" and table["interlock"] == "closed"
        assert table["running"] == table["temperature_c"] == "—"  # empty, NaN

    (submitted, *_), client = jobs.mutations(), f"{getpass.getuser()}@"
    assert submitted[1] == {"name": "JVL S1", "kind": "sweep", "voltage_v": 6.0, "then": "nothing",
                            "start_after": "2026-01-01T08:00:00+00:00"}  # TOML dates as ISO text
    assert submitted[2].startswith(client)
    assert [c[0] for c in jobs.mutations()] == ["submit", "submit", "pause", "resume", "stop"]


async def test_cli_exit_codes_refused_bad_input_and_no_answer(anon_broker, tmp_path):
    cfg, jobs = anon_config(anon_broker), FakeJobs(max_voltage_v=5.0)
    env = cli_env(cfg)
    (tmp_path / "job.toml").write_text(JOB_TOML.format(then="nothing"))
    (tmp_path / "broken.toml").write_text('name = "x"\nkind = sweep\n')
    async with serving(cfg, jobs):
        r = await cli("jobs", "submit", "job.toml", env=env, cwd=tmp_path)
        assert r.rc == 1 and "refused submit: voltage_v = 6.0 V is above" in r.err
        assert "(limit)" in r.err and r.out == ""
        r = await cli("jobs", "stop", "job-7", env=env, cwd=tmp_path)
        assert r.rc == 1 and "no job 'job-7'" in r.err

        r = await cli("jobs", "submit", "broken.toml", env=env, cwd=tmp_path)
        assert r.rc == 2 and "broken.toml is not valid TOML" in r.err and "line 2" in r.err
        r = await cli("jobs", "submit", "missing.toml", env=env, cwd=tmp_path)
        assert r.rc == 2 and "missing.toml does not exist" in r.err
        r = await cli("jobs", "list", "--config", "missing-station.toml", env=env, cwd=tmp_path)
        assert r.rc == 2 and "missing-station.toml does not exist" in r.err
        r = await cli("jobs", "list", env={**env, "STATION_MQTT__URL": "http://x"}, cwd=tmp_path)
        assert r.rc == 2 and "mqtt.url" in r.err
    assert [c[0] for c in jobs.mutations()] == ["submit", "stop"]

    # nothing serves this station any more
    r = await cli("status", "--timeout", "0.5", env=env, cwd=tmp_path)
    assert r.rc == 3 and f"no answer from station {cfg.station.id} within 0.5 s" in r.err
    assert cfg.mqtt.url in r.err
    r = await cli("status", env={**env, "STATION_MQTT__URL": f"mqtt://127.0.0.1:{free_port()}"},
                  cwd=tmp_path)
    assert r.rc == 3 and "cannot connect to the MQTT broker" in r.err


@pytest.mark.parametrize(("then", "rc", "last"), [("events", 0, "job/finished"),
                                                  ("fail", 1, "job/failed"),
                                                  ("finish_silently", 0, "job/finished")])
async def test_cli_submit_wait_follows_the_job_until_it_ends(anon_broker, tmp_path, then, rc, last):
    cfg, jobs = anon_config(anon_broker), FakeJobs()
    base = f"ledstation/{cfg.station.id}"
    (tmp_path / "job.toml").write_text(JOB_TOML.format(then=then))
    async with serving(cfg, jobs), raw_client(cfg) as events:
        seq = 0

        async def emit(kind: str, data: dict[str, Any]) -> None:  # as the daemon's MQTT sink
            nonlocal seq
            seq += 1
            msg = {"schema": 1, "type": "event", "station": cfg.station.id, "kind": kind,
                   "seq": seq, "t_us": None, "ts": time.time(), "data": data}
            await events.publish_acked(f"{base}/event/{kind}", json.dumps(msg).encode())
        jobs.emit = emit
        r = await cli("jobs", "submit", "job.toml", "--wait", "--json", "--poll", "0.2",
                      env=cli_env(cfg), cwd=tmp_path)
    assert r.rc == rc, r.err
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert lines[0]["id"] == "job-1"
    assert [ev["kind"] for ev in lines[1:]][-1] == last
    assert all(ev["data"]["job"] == "job-1" for ev in lines[1:] if "source" not in ev)
    if then == "events":
        assert [ev["kind"] for ev in lines[1:]] == ["job/started", "job/finished"]
    if then == "finish_silently":
        assert lines[-1]["source"] == "poll"


async def test_cli_as_operator_over_tls_from_the_environment(acl_broker, tmp_path):
    jobs = FakeJobs()
    (tmp_path / "job.toml").write_text(JOB_TOML.format(then="nothing"))
    async with serving(acl_config(acl_broker, STATION_ID), jobs):
        op = cli_env(acl_config(acl_broker, "operator", tls=True))
        r = await cli("jobs", "submit", "job.toml", env=op, cwd=tmp_path)
        assert r.rc == 0, r.err
        viewer = cli_env(acl_config(acl_broker, VIEWER_USER, tls=True))
        r = await cli("jobs", "stop", "job-1", env=viewer, cwd=tmp_path)
        assert r.rc == 1 and "broker refused the command" in r.err
    assert [c[0] for c in jobs.mutations()] == ["submit"]


async def test_cli_help_has_examples_and_exit_codes(tmp_path):
    for args in (("jobs", "--help"), ("jobs", "submit", "--help"), ("status", "--help"),
                 ("jobs", "stop", "--help")):
        r = await cli(*args, env={}, cwd=tmp_path)
        assert r.rc == 0 and "examples:" in r.out and "exit status:" in r.out, args
        assert "STATION_MQTT__URL" in r.out
