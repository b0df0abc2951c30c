"""Real servers for the sink tests: Mosquitto and VictoriaMetrics on free loopback ports.

Each server runs from its own temporary directory (config, password file, ACL, TLS
certificates made with openssl, data) and is killed when its fixture ends. Nothing here skips:
a missing binary fails with the command that installs it (``scripts/bootstrap.sh --test``).

- ``mqtt_broker`` (session): one Mosquitto shared by the tests that do not stop it;
  ``mqtt_broker_factory`` (function): private brokers for tests that stop and restart them.
- ``victoria`` (session) and ``victoria_factory`` (function): the same for VictoriaMetrics,
  which accepts InfluxDB line protocol on ``/api/v2/write`` and answers queries on
  ``/api/v1/export``.

The Mosquitto instances listen on three ports: plain TCP, TLS (server certificate only) and
mutual TLS (client certificate required), all with a password file and an ACL:

- ``station`` / ``station-pw`` may write under ``ledstation/#`` and read nothing else;
- ``viewer`` / ``viewer-pw`` may read ``ledstation/#`` and write nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BOOTSTRAP_HINT = "run `scripts/bootstrap.sh --test` (it installs the Debian packages {pkg})"

STATION_USER, STATION_PASSWORD = "station", "station-pw"
VIEWER_USER, VIEWER_PASSWORD = "viewer", "viewer-pw"
TOPIC_ROOT = "ledstation"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(candidates: list[str], package: str) -> str:
    for c in candidates:
        found = shutil.which(c) if "/" not in c else (c if os.access(c, os.X_OK) else None)
        if found:
            return found
    pytest.fail(f"{candidates[0]} not found: {BOOTSTRAP_HINT.format(pkg=package)}", pytrace=False)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout_s} s:\n"
                       f"{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# -- TLS material ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(d: Path) -> Certs:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    openssl = _binary(["openssl"], "openssl")
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=ledstation test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


# -- Mosquitto ------------------------------------------------------------------------------------
@dataclass
class Mosquitto:
    """A Mosquitto broker in ``root``; ``stop()``/``start()`` keep ports and persistence."""

    root: Path
    certs: Certs
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    mtls_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = _binary(["/usr/sbin/mosquitto", "mosquitto"], "mosquitto")
        passwd = _binary(["mosquitto_passwd", "/usr/bin/mosquitto_passwd"], "mosquitto")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        pw = self.root / "passwd"
        pw.touch(mode=0o600)
        for user, password in ((STATION_USER, STATION_PASSWORD), (VIEWER_USER, VIEWER_PASSWORD)):
            subprocess.run([passwd, "-b", str(pw), user, password], check=True, capture_output=True)
        acl = self.root / "acl"
        acl.write_text(f"user {STATION_USER}\ntopic write {TOPIC_ROOT}/#\n\n"
                       f"user {VIEWER_USER}\ntopic read {TOPIC_ROOT}/#\n")
        acl.chmod(0o600)
        c = self.certs
        tls = f"cafile {c.ca}\ncertfile {c.server_cert}\nkeyfile {c.server_key}\n"
        self.conf = self.root / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {pw}\n"
            f"acl_file {acl}\n"
            "persistence true\n"
            f"persistence_location {self.root / 'data'}/\n"
            "autosave_interval 0\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 1000000\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\n"
            f"listener {self.tls_port} 127.0.0.1\n{tls}"
            f"listener {self.mtls_port} 127.0.0.1\n{tls}require_certificate true\n")
        self.log = self.root / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        for p in (self.port, self.tls_port, self.mtls_port):
            _wait_port(p, self.proc, self.log)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): the broker saves its persistent sessions."""
        _stop(self.proc)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)


@pytest.fixture(scope="session")
def mqtt_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory, mqtt_certs: Certs) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"), mqtt_certs)
    b.start()
    yield b
    b.kill()


@pytest.fixture
def mqtt_broker_factory(tmp_path: Path, mqtt_certs: Certs) -> Iterator[Callable[[], Mosquitto]]:
    made: list[Mosquitto] = []

    def make() -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto{len(made)}", mqtt_certs)
        made.append(b)
        b.start()
        return b

    yield make
    for b in made:
        b.kill()


# -- VictoriaMetrics ------------------------------------------------------------------------------
@dataclass
class Victoria:
    """VictoriaMetrics single-node in ``root``, accepting InfluxDB line protocol over HTTP.

    Deduplication at 1 ms makes it keep one sample per series and timestamp, as InfluxDB
    overwrites a point written twice with the same tags and timestamp.
    """

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = _binary(["victoria-metrics", "/usr/bin/victoria-metrics"], "victoria-metrics")
        self.log = self.root / "victoria.log"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                 f"-storageDataPath={self.root / 'data'}", "-retentionPeriod=100y",
                 "-dedup.minScrapeInterval=1ms", "-search.disableCache",
                 "-loggerLevel=ERROR", "-memory.allowedPercent=10"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self._get("/health").strip() == b"OK":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"VictoriaMetrics not healthy:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): VictoriaMetrics flushes what it acknowledged."""
        _stop(self.proc)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return bytes(r.read())

    def flush(self) -> None:
        """Make recently ingested samples visible to queries."""
        self._get("/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of every series matching the selector (``/api/v1/export``)."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match, "start": "0",
                                    "end": str(int(time.time()) + 10 * 365 * 86400)})
        body = self._get(f"/api/v1/export?{q}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def metric(self, name: str) -> float:
        """One of VictoriaMetrics' own metrics (``/metrics``, refreshed about once a second):
        ``name`` with its labels as printed there, or a bare name for the sum over labels."""
        total = 0.0
        for line in self._get("/metrics").decode().splitlines():
            key = line.rsplit(" ", 1)[0]
            if key == name or ("{" not in name and key.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    v = Victoria(tmp_path_factory.mktemp("victoria"))
    v.start()
    yield v
    v.kill()


@pytest.fixture
def victoria_factory(tmp_path: Path) -> Iterator[Callable[[], Victoria]]:
    made: list[Victoria] = []

    def make() -> Victoria:
        v = Victoria(tmp_path / f"victoria{len(made)}")
        made.append(v)
        v.start()
        return v

    yield make
    for v in made:
        v.kill()


# -- store contents and an MQTT subscriber --------------------------------------------------------
def sweep_row(seq: int, run_id: int | None, pixel: int, *, t0_us: int = 5_000_000,
              dt_us: int = 10_000) -> tuple[Any, ...]:
    """A sweep point whose board time is ``t0_us + seq * dt_us`` (≥ 1 ms apart: VictoriaMetrics
    keeps milliseconds)."""
    from station.store import SWEEP_COLUMNS
    v = 2.0 + 0.01 * seq
    d: dict[str, Any] = dict(
        seq=seq, run_id=run_id, sweep_id=1, idx=seq, t_us=t0_us + seq * dt_us, pixel=pixel,
        flags=0, pd_gain=2, direction="forward" if seq % 2 == 0 else "reverse", voltage_set_v=v,
        voltage_v=v - 0.001, current_a=1e-4 * seq, photodiode_a=2e-7 * seq, dark_a=1e-12,
        current_density_ma_cm2=2.5 * seq, luminance_cd_m2=10.0 * seq,
        eqe_pct=float("nan") if seq % 7 == 0 else 5.0, ce_cd_a=4.0, pe_lm_w=3.0,
        spectrum_seq=None, epoch=0, rev=0)
    return tuple(d[c] for c in SWEEP_COLUMNS)


def aging_row(seq: int, run_id: int | None, pixel: int, *, t0_us: int = 7_000_000,
              dt_us: int = 100_000) -> tuple[Any, ...]:
    from station.store import AGING_COLUMNS
    d: dict[str, Any] = dict(
        seq=seq, run_id=run_id, t_us=t0_us + seq * dt_us, channel=pixel - 1, pixel=pixel, flags=0,
        pd_gain=1, current_a=1e-3, voltage_v=3.1, photodiode_a=1e-6, temperature_c=25.5,
        dark_a=1e-12, luminance_cd_m2=1000.0 - seq, l_rel=1.0 - seq * 1e-4, eqe_pct=10.0,
        epoch=0, rev=0)
    return tuple(d[c] for c in AGING_COLUMNS)


def on_schedule(t_us: list[int], hz: float, interval_us: int) -> list[int]:
    """Indices an aging run sampled every ``interval_us`` keeps at ``hz`` (docs/mqtt.md): those
    whose 1/hz board-time bucket differs from the bucket one interval earlier."""
    import math
    return [i for i, t in enumerate(t_us) if interval_us * hz >= 1e6
            or math.floor(t * hz / 1e6) != math.floor((t - interval_us) * hz / 1e6)]


def decimated(t_us: list[int], hz: float) -> list[int]:
    """Indices an aging stream keeps at ``hz``: the first sample of each 1/hz board-time bucket."""
    import math
    out, last = [], None
    for i, t in enumerate(t_us):
        b = math.floor(t * hz / 1e6)
        if i == 0 or b != last:
            out.append(i)
        last = b
    return out


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retain: bool


class Collector:
    """A real aiomqtt subscriber (user ``viewer``) that records every message it gets, and
    reconnects when the broker goes away. ``persistent`` keeps its session (and the messages
    queued for it) in the broker across its disconnections and across a broker restart."""

    def __init__(self, broker: Mosquitto, topic: str = f"{TOPIC_ROOT}/#", *,
                 persistent: bool = False, client_id: str | None = None) -> None:
        self.broker, self.topic, self.persistent = broker, topic, persistent
        self.client_id = client_id or f"collector-{os.getpid()}-{id(self)}"
        self.messages: list[Received] = []
        self.subscribed = 0
        self._task: Any = None

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if m.topic.endswith(suffix)]

    def matching(self, pred: Callable[[Received], bool]) -> list[Received]:
        return [m for m in self.messages if pred(m)]

    async def _loop(self) -> None:
        import asyncio

        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        client = aiomqtt.Client("127.0.0.1", self.broker.port, username=VIEWER_USER,
                                password=VIEWER_PASSWORD, identifier=self.client_id,
                                protocol=aiomqtt.ProtocolVersion.V5, properties=props,
                                clean_start=not self.persistent)
        while True:
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed += 1
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append(Received(str(m.topic), json.loads(payload),
                                                      bool(m.retain)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async def __aenter__(self) -> Collector:
        import asyncio
        self._task = asyncio.create_task(self._loop())
        await wait_until(lambda: self.subscribed > 0, what="subscriber connected")
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_until(pred: Callable[[], bool], *, what: str, timeout_s: float = 30.0,
                     step_s: float = 0.02) -> None:
    """Poll ``pred`` until true; fail naming ``what`` after ``timeout_s`` (a safety net, not
    a timing assertion)."""
    import asyncio
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(step_s)


@contextlib.asynccontextmanager
async def running(sink: Any) -> AsyncIterator[Any]:
    """Run ``sink.run(stop)`` as a task for the body of the ``async with``; stop it cleanly."""
    import asyncio
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield sink
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def caught_up(sink: Any) -> Callable[[], bool]:
    """True once the sink's durable cursors reached the newest row of every table it reads
    (read from the store file itself, not from the sink's cached health)."""
    import sqlite3

    def pred() -> bool:
        db = sqlite3.connect(str(sink.store_path), timeout=30)
        try:
            for t in sink.tables:
                head = db.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()[0]
                cur = db.execute("SELECT last_id FROM sink_cursors WHERE sink = ? AND "
                                 "table_name = ?", (sink.name, t)).fetchone()
                if head and (cur is None or cur[0] < head):
                    return False
            return True
        except sqlite3.OperationalError:  # sink tables not created yet
            return False
        finally:
            db.close()
    return pred


def sink_process(workdir: Path, store: Path, toml: str) -> subprocess.Popen[bytes]:
    """``python -m station.sinks.runner`` in a subprocess, configured by ``toml``."""
    import sys
    cfg = workdir / "station.toml"
    cfg.write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    log = (workdir / "sink-process.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "station.sinks.runner", str(cfg), "--store",
                             str(store)], env=env, cwd=workdir, stdout=log, stderr=log)


def mqtt_toml(broker: Mosquitto, station: str, prefix: str, extra: str = "") -> str:
    return (f'[station]\nid = "{station}"\n[mqtt]\nenabled = true\nurl = "{broker.url}"\n'
            f'username = "{STATION_USER}"\npassword = "{STATION_PASSWORD}"\n'
            f'topic_prefix = "{prefix}"\nkeepalive_s = 5\n{extra}')
