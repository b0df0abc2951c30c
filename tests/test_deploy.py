"""The deployment files in deploy/ checked for real: systemd units by systemd-analyze, the udev
rules by a parser and a small evaluator of udev's matching rules, the Mosquitto configuration,
ACL and certificate script by running Mosquitto with them and trying who may publish and read
what (with the station's own MQTT sink as one of the clients), the compose stack and Grafana
provisioning by parsing them against each other and against the InfluxDB points the station
writes (Docker itself cannot run here)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import getpass
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from station.config import load_config
from station.mqttclient import AckClient, PublishRejected
from station.sinks import MqttSink, publish_event
from station.sinks.cursor import RunMeta
from station.sinks.influx import FLOAT_FIELDS, INT_FIELDS, MEASUREMENTS, line_of
from station.store import SWEEP_COLUMNS, Store
from tests.services import BOOTSTRAP_HINT, free_port, sweep_row, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UDEV_RULES = DEPLOY / "udev" / "99-led-station.rules"
MOSQ = DEPLOY / "mosquitto"
COMPOSE = DEPLOY / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "led-station.json"
DATASOURCES = COMPOSE / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
PROVIDERS = COMPOSE / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
STATION_TOML = DEPLOY / "station" / "lab-a.toml"
STATION_ENV = DEPLOY / "station" / "lab-a.env.example"


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if not found:
        pytest.fail(f"{binary} not found: {BOOTSTRAP_HINT.format(pkg=package)}", pytrace=False)
    return found


# == systemd =======================================================================================
def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}`` of a unit file (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root for ``systemd-analyze --root``: the units installed where docs/deploy.md
    puts them, a stand-in for the venv's ``station`` executable, and this machine's system units
    (the targets the units refer to)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here (not a systemd host)")
    root = tmp_path_factory.mktemp("sysroot")
    exe = root / "opt/led-station/.venv/bin/station"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    for d in ("usr/lib/systemd/system", "lib/systemd/system"):
        if (Path("/") / d).is_dir() and not (Path("/") / d).is_symlink():
            shutil.copytree(Path("/") / d, root / d, symlinks=True)
            break
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in SYSTEMD.glob("*.service"):
        shutil.copy(unit, etc / unit.name)
    return root


@pytest.mark.parametrize("unit", ["led-station.service", "led-station@lab-a.service"])
def test_systemd_analyze_verify_accepts_the_units_without_a_warning(systemd_root, unit):
    r = subprocess.run(["systemd-analyze", "verify", f"--root={systemd_root}", "--man=no", unit],
                       capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values ("..., ignoring"): any output is a fault
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


@pytest.mark.parametrize("unit", ["led-station.service", "led-station@lab-a.service"])
def test_systemd_security_exposure_of_the_units_is_low(systemd_root, unit):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={systemd_root}",
                        "--man=no", "--threshold=25", unit], capture_output=True, text=True,
                       timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert level, r.stdout + r.stderr
    assert r.returncode == 0 and float(level.group(1)) <= 2.5, r.stdout[-2000:]


@pytest.mark.parametrize("name", ["led-station.service", "led-station@.service"])
def test_systemd_units_run_the_daemon_unprivileged_with_serial_access_and_a_clean_stop(name):
    s = unit_settings(SYSTEMD / name)["Service"]
    one = {k: v[-1] for k, v in s.items()}
    cfg = "%i" if "@" in name else "station"
    assert one["ExecStart"] == f"/opt/led-station/.venv/bin/station run --config /etc/led-station/{cfg}.toml"
    assert one["Type"] == "simple"
    assert one["Restart"] == "on-failure" and 1 <= int(one["RestartSec"].rstrip("s")) <= 30
    assert one["User"] == "ledstation" and "dialout" in one["SupplementaryGroups"].split()
    assert one["KillSignal"] == "SIGTERM" and int(one["TimeoutStopSec"].rstrip("s")) >= 30
    assert one["StateDirectory"].split("/")[0] == "led-station"
    assert one["WorkingDirectory"].startswith("/var/lib/led-station")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "DevicePolicy": "closed",
                       "ReadWritePaths": "/var/lib/led-station", "CapabilityBoundingSet": ""}.items():
        assert one.get(key) == value, key
    assert {"char-ttyACM rw", "char-ttyUSB rw"} <= set(s["DeviceAllow"])
    assert "PrivateDevices" not in s  # it would hide /dev/ttyACM* from the daemon


def test_systemd_single_and_template_units_differ_only_in_instance_names():
    single = unit_settings(SYSTEMD / "led-station.service")
    template = unit_settings(SYSTEMD / "led-station@.service")
    def norm(text: str) -> str:
        return (text.replace("/etc/led-station/%i.", "/etc/led-station/station.")
                .replace("/var/lib/led-station/%i", "/var/lib/led-station")
                .replace("led-station/%i", "led-station").replace("led-station-%i", "led-station")
                .replace(" %i", ""))
    normalised = {sec: {k: [norm(v) for v in vs] for k, vs in keys.items()}
                  for sec, keys in template.items()}
    assert normalised == single  # the hardening of both stays the same


# == udev ==========================================================================================
MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER",
              "DRIVERS", "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT", "CONST"}
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "RUN", "IMPORT", "LABEL", "GOTO", "OPTIONS", "SECLABEL"}
BOTH = {"NAME", "SYMLINK", "ENV", "TAG", "ATTR", "SYSCTL"}
NEEDS_ATTR = {"ATTR", "ATTRS", "ENV", "SYSCTL", "SECLABEL", "CONST"}
PARENT_KEYS = {"KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS"}
_TOKEN = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


@dataclass(frozen=True)
class Key:
    name: str
    attr: str | None
    op: str
    value: str


def parse_udev_rules(text: str) -> list[tuple[int, list[Key]]]:
    """udev's rule grammar: comma-separated ``KEY[{attr}]OP"value"`` per (continued) line.
    Raises ValueError naming the line for what udev would reject or ignore with a warning."""
    rules: list[tuple[int, list[Key]]] = []
    lines = text.replace("\\\n", "").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keys, pos = [], 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                raise ValueError(f"line {n}: cannot parse at {line[pos:]!r}")
            name, attr, op, value, sep = m.groups()
            if name not in MATCH_ONLY | ASSIGN_ONLY | BOTH:
                raise ValueError(f"line {n}: unknown key {name}")
            if name in NEEDS_ATTR and not attr:
                raise ValueError(f"line {n}: {name} needs {{attribute}}")
            if name in MATCH_ONLY and op not in ("==", "!="):
                raise ValueError(f"line {n}: {name} can only be matched (== or !=), not {op}")
            if name in ASSIGN_ONLY and op in ("==", "!="):
                raise ValueError(f"line {n}: {name} can only be assigned, not matched")
            keys.append(Key(name, attr, op, value))
            pos = m.end()
            if sep == "" and pos < len(line):
                raise ValueError(f"line {n}: missing comma before {line[pos:]!r}")
        rules.append((n, keys))
    labels = [k.value for _, ks in rules for k in ks if k.name == "LABEL"]
    assert len(labels) == len(set(labels)), f"duplicate LABEL: {labels}"
    for n, ks in rules:
        for k in ks:
            if k.name == "GOTO" and k.value not in labels:
                raise ValueError(f"line {n}: GOTO to undefined LABEL {k.value}")
            if k.name in ("ATTR", "ATTRS") and k.attr in ("idVendor", "idProduct") and \
                    not re.fullmatch(r"[0-9a-f]{4}", k.value):
                raise ValueError(f"line {n}: sysfs {k.attr} is 4 lower-case hex digits, "
                                 f"not {k.value!r}")
            if k.name == "MODE" and not re.fullmatch(r"0?[0-7]{3}", k.value):
                raise ValueError(f"line {n}: MODE {k.value!r} is not octal")
    return rules


@dataclass
class Dev:
    subsystem: str
    kernel: str
    attrs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    env: dict[str, str] = field(default_factory=dict)
    symlinks: list[str] = field(default_factory=list)
    group: str | None = None
    mode: str | None = None


def _glob(pattern: str, value: str | None) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in pattern.split("|"))


def run_udev_rules(rules: list[tuple[int, list[Key]]], action: str, chain: list[Dev]) -> Outcome:
    """What udev does with ``rules`` for an event on ``chain[0]`` (``chain[1:]`` its parents),
    for the keys and substitutions these rules use; anything else fails the test."""
    dev, out = chain[0], Outcome(env=dict(chain[0].env))
    labels = {k.value: i for i, (_, ks) in enumerate(rules) for k in ks if k.name == "LABEL"}
    i = 0
    while i < len(rules):
        n, keys = rules[i]
        i += 1
        ok, parent = True, None
        parent_keys = [k for k in keys if k.name in PARENT_KEYS]
        if parent_keys:  # all parent keys of one rule must match the same device, nearest first
            def fits(d: Dev, pk: list[Key] = parent_keys) -> bool:
                vals = {"SUBSYSTEMS": d.subsystem, "KERNELS": d.kernel}
                return all(_glob(k.value, d.attrs.get(k.attr or "") if k.name == "ATTRS"
                                 else vals.get(k.name)) == (k.op == "==") for k in pk)
            parent = next((d for d in chain if fits(d)), None)
            ok = parent is not None
        for k in keys:
            if not ok:
                break
            if k.op not in ("==", "!=") or k.name in PARENT_KEYS or k.name in ("LABEL", "GOTO"):
                continue
            actual = {"ACTION": action, "SUBSYSTEM": dev.subsystem, "KERNEL": dev.kernel}.get(k.name)
            if k.name == "ENV":
                actual = out.env.get(k.attr or "")
            elif k.name == "ATTR":
                actual = dev.attrs.get(k.attr or "")
            elif actual is None:
                raise AssertionError(f"line {n}: the evaluator does not know match key {k.name}")
            ok = _glob(k.value, actual) == (k.op == "==")
        if not ok:
            continue

        def subst(value: str, n: int = n, parent: Dev | None = parent) -> str:
            def attr(m: re.Match[str]) -> str:
                name = m.group(1)
                for d in (dev, parent):
                    if d is not None and name in d.attrs:
                        return d.attrs[name]
                raise AssertionError(f"line {n}: no attribute {name} for the substitution")
            value = re.sub(r"(?:%s|\$attr)\{([^}]+)\}", attr, value)
            value = value.replace("%k", dev.kernel).replace("$kernel", dev.kernel)
            assert "%" not in value and "$" not in value, f"line {n}: substitution in {value!r}"
            return value

        for k in keys:
            if k.op in ("==", "!="):
                continue
            if k.name == "GOTO":
                i = labels[k.value]
            elif k.name == "ENV":
                out.env[k.attr or ""] = subst(k.value)
            elif k.name == "SYMLINK":
                names = subst(k.value).split()
                out.symlinks = names if k.op in ("=", ":=") else out.symlinks + names
            elif k.name == "GROUP":
                out.group = subst(k.value)
            elif k.name == "MODE":
                out.mode = subst(k.value)
            elif k.name != "LABEL":
                raise AssertionError(f"line {n}: the evaluator does not know {k.name}{k.op}")
    return out


def usb_chain(vendor: str, product: str, serial: str, kernel: str = "ttyACM0") -> list[Dev]:
    """A CDC-ACM tty, its USB interface, the USB device and the root hub (which has a
    ``serial`` attribute too: the PCI address of its controller)."""
    roothub = Dev("usb", "usb1", {"idVendor": "1d6b", "idProduct": "0002", "serial": "0000:00:14.0"},
                  {"DEVTYPE": "usb_device"})
    board = Dev("usb", "1-2", {"idVendor": vendor, "idProduct": product, "serial": serial,
                               "product": "LED test board"}, {"DEVTYPE": "usb_device"})
    iface = Dev("usb", "1-2:1.0", {"bInterfaceNumber": "00"}, {"DEVTYPE": "usb_interface"})
    tty = Dev("tty", kernel, {"dev": "166:0"})
    return [tty, iface, board, roothub]


def test_udev_rules_parse_under_udevs_grammar():
    rules = parse_udev_rules(UDEV_RULES.read_text())
    assert len(rules) >= 5
    # and the parser does catch the classic mistakes
    for bad in ('ATTRS{idVendor}=="0x1209", GROUP="dialout"', 'SUBSYSTEM="tty", MODE="0660"',
                'KERNEL=="ttyACM*" GROUP="dialout"', 'ENV=="1"', 'GOTO="nowhere"',
                'ATTRS{idVendor}=="1209", SYMLNK+="x"'):
        with pytest.raises(ValueError):
            parse_udev_rules(bad)


def test_udev_rules_verify_with_udevadm_when_it_has_verify(tmp_path):
    udevadm = shutil.which("udevadm")
    if not udevadm or "verify" not in subprocess.run([udevadm, "--help"], capture_output=True,
                                                      text=True).stdout:
        pytest.skip("udevadm verify needs systemd >= 254 (the parser test above covers it)")
    r = subprocess.run([udevadm, "verify", "--no-summary", str(UDEV_RULES)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_udev_rules_give_the_board_a_stable_link_dialout_access_and_no_modemmanager():
    rules = parse_udev_rules(UDEV_RULES.read_text())
    tty = run_udev_rules(rules, "add", usb_chain("1209", "0001", "ABC123"))
    assert tty.symlinks == ["ledstation/ABC123"]  # the board's serial, not the root hub's
    assert (tty.group, tty.mode) == ("dialout", "0660")
    assert tty.env.get("ID_MM_DEVICE_IGNORE") == "1"
    usb = run_udev_rules(rules, "add", usb_chain("1209", "0001", "ABC123")[2:])
    assert usb.env.get("ID_MM_DEVICE_IGNORE") == "1" and not usb.symlinks  # the USB device itself
    # a second board gets its own name
    assert run_udev_rules(rules, "add", usb_chain("1209", "0001", "XYZ9", "ttyACM1")).symlinks == \
        ["ledstation/XYZ9"]


def test_udev_rules_leave_other_serial_devices_and_removals_alone():
    rules = parse_udev_rules(UDEV_RULES.read_text())
    for chain in (usb_chain("0403", "6001", "FT1234", "ttyUSB0"),   # an FTDI cable
                  usb_chain("1209", "0002", "ABC123")):             # another pid.codes test id
        out = run_udev_rules(rules, "add", chain)
        assert out == Outcome(env={}), out
    assert run_udev_rules(rules, "remove", usb_chain("1209", "0001", "ABC123")) == Outcome()


# == Mosquitto =====================================================================================
USERS = {"lab-a": "pw-lab-a", "lab-b": "pw-lab-b", "viewer": "pw-viewer", "operator": "pw-operator",
         "lab-a-control": "pw-lab-a-control", "lab-b-control": "pw-lab-b-control"}


def adapt_conf(text: str, root: Path, plain_port: int, tls_port: int) -> str:
    """The deployed mosquitto.conf with only its paths and ports changed (and the user to run
    as, since the test is not run by the image's `mosquitto` user)."""
    lines = [line.replace("/mosquitto/config/", f"{root}/config/")
                 .replace("/mosquitto/data/", f"{root}/data/")
             for line in text.splitlines() if line.strip() and not line.startswith("#")]
    out, n1 = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {plain_port} 127.0.0.1",
                      "\n".join(lines), flags=re.M)
    out, n2 = re.subn(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", out, flags=re.M)
    assert (n1, n2) == (1, 1) and "/mosquitto/" not in out
    return f"user {getpass.getuser()}\n{out}\n"


@dataclass
class Broker:
    root: Path
    plain_port: int
    tls_port: int
    ca: Path
    proc: subprocess.Popen[bytes]

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python >= 3.13 checks by default
        return ctx


def make_certs(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    need("openssl", "openssl")
    return subprocess.run(["bash", str(MOSQ / "make-certs.sh"), "-d", str(d), *args],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto running deploy/mosquitto/mosquitto.conf and acl (paths and ports adapted), with
    certificates from make-certs.sh and a password file made with mosquitto_passwd."""
    binary = need("/usr/sbin/mosquitto", "mosquitto")
    passwd = need("mosquitto_passwd", "mosquitto")
    root = tmp_path_factory.mktemp("deployed-mosquitto")
    (root / "data").mkdir()
    cfg = root / "config"
    make_certs(cfg / "certs", "server", "localhost", "127.0.0.1")
    shutil.copy(MOSQ / "acl", cfg / "acl")
    pw = cfg / "passwd"
    pw.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run([passwd, "-b", str(pw), user, password], check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(adapt_conf((MOSQ / "mosquitto.conf").read_text(), root, plain, tls))
    log = (root / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    for port in (plain, tls):
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {(root / 'mosquitto.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.02)
    yield Broker(root, plain, tls, cfg / "certs" / "ca.crt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    log.close()


def client(b: Broker, user: str, *, tls: bool = False, password: str | None = None) -> AckClient:
    """A client whose ``publish_acked`` raises PublishRejected on an error PUBACK (e.g. 0x87)."""
    return AckClient("127.0.0.1", b.tls_port if tls else b.plain_port, username=user,
                     password=USERS.get(user, "") if password is None else password,
                     identifier=f"test-{user}-{uuid.uuid4().hex[:12]}", protocol=aiomqtt.ProtocolVersion.V5,
                     tls_context=b.tls() if tls else None, timeout=10)


@contextlib.asynccontextmanager
async def subscribed(b: Broker, user: str, *topics: str, tls: bool = False
                     ) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Messages received by ``user`` subscribed to ``topics`` (QoS 1), as (topic, payload)."""
    got: list[tuple[str, bytes]] = []
    async with client(b, user, tls=tls) as c:
        for t in topics:
            await c.subscribe(t, qos=1)

        async def collect() -> None:
            async for m in c.messages:
                got.append((str(m.topic), m.payload if isinstance(m.payload, bytes) else b""))
        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(b: Broker, user: str, topic: str, payload: bytes = b"{}", *, tls: bool = False
                  ) -> None:
    async with client(b, user, tls=tls) as c:
        await c.publish_acked(topic, payload, timeout=10)


async def seen(got: list[tuple[str, bytes]], topic: str) -> None:
    await wait_until(lambda: any(t == topic for t, _ in got), what=f"message on {topic}",
                     timeout_s=10)


def test_make_certs_issues_server_and_client_certificates_from_one_ca(tmp_path):
    openssl = need("openssl", "openssl")
    d = tmp_path / "certs"
    make_certs(d, "server", "labserver.example.org", "labserver", "192.0.2.10")
    ca_before = (d / "ca.crt").read_bytes()
    make_certs(d, "client", "lab-a")
    assert (d / "ca.crt").read_bytes() == ca_before  # the CA is made once, then reused

    def run(*args: str) -> str:
        return subprocess.run([openssl, *args], capture_output=True, text=True, check=True).stdout
    assert "OK" in run("verify", "-CAfile", str(d / "ca.crt"), "-purpose", "sslserver",
                       str(d / "server.crt"))
    assert "OK" in run("verify", "-CAfile", str(d / "ca.crt"), "-purpose", "sslclient",
                       str(d / "lab-a.crt"))
    san = run("x509", "-in", str(d / "server.crt"), "-noout", "-ext", "subjectAltName")
    assert all(s in san for s in ("DNS:labserver.example.org", "DNS:labserver",
                                  "IP Address:192.0.2.10"))
    assert "CN = lab-a" in run("x509", "-in", str(d / "lab-a.crt"), "-noout", "-subject")
    assert {p.name: p.stat().st_mode & 0o777 for p in d.glob("*.key")} == \
        {"ca.key": 0o600, "server.key": 0o600, "lab-a.key": 0o600}
    for bad in (["client", "ca"], ["server"], ["bogus", "x"], ["client", "a b"]):
        r = subprocess.run(["bash", str(MOSQ / "make-certs.sh"), "-d", str(d), *bad],
                           capture_output=True, text=True)
        assert r.returncode == 2, (bad, r.stderr)


def test_mosquitto_conf_has_a_loopback_plain_listener_and_a_tls_listener():
    blocks: list[list[str]] = [[]]
    for line in (MOSQ / "mosquitto.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("listener "):
            blocks.append([])
        if line:
            blocks[-1].append(line)
    general, plain, tls = blocks
    assert plain[0] == "listener 1883 127.0.0.1" and not any("file" in x for x in plain)
    assert tls[0] == "listener 8883" and {"cafile", "certfile", "keyfile"} <= {x.split()[0] for x in tls}
    for setting in ("allow_anonymous false", "per_listener_settings false", "persistence true",
                    "set_tcp_nodelay true"):
        assert setting in general


async def test_stations_publish_under_their_own_id_only(broker):
    async with subscribed(broker, "viewer", "ledstation/#") as viewer:
        await publish(broker, "lab-a", "ledstation/lab-a/status", b'{"state": "online"}')
        with pytest.raises(PublishRejected) as e:  # PUBACK 0x87 not authorized
            await publish(broker, "lab-a", "ledstation/lab-b/status", b'{"state": "forged"}')
        assert e.value.rc.value == 0x87
        for topic in ("ledstation", "other/lab-a/x", "ledstation/lab-ab/status", "lab-a/status"):
            with pytest.raises(PublishRejected):
                await publish(broker, "lab-a", topic)
        await publish(broker, "lab-b", "ledstation/lab-b/pixel/1/sweep")  # over TLS too:
        await publish(broker, "lab-b", "ledstation/lab-b/sentinel", tls=True)
        await seen(viewer, "ledstation/lab-b/sentinel")
    assert [t for t, _ in viewer] == ["ledstation/lab-a/status", "ledstation/lab-b/pixel/1/sweep",
                                      "ledstation/lab-b/sentinel"]


async def test_a_station_reads_its_own_commands_but_not_other_stations(broker):
    async with subscribed(broker, "lab-a", "ledstation/lab-b/#", "ledstation/+/status",
                          "ledstation/lab-a/#") as lab_a:
        await publish(broker, "lab-b", "ledstation/lab-b/status")
        await publish(broker, "lab-b", "ledstation/lab-b/event/job/started")
        await publish(broker, "operator", "ledstation/lab-a/cmd/jobs/submit", b'{"job": "j1"}')
        # (not published as lab-a: one connection per user, a second one would replace this one)
        await publish(broker, "lab-a-control", "ledstation/lab-a/reply/sentinel")
        await seen(lab_a, "ledstation/lab-a/reply/sentinel")
    assert sorted({t for t, _ in lab_a}) == ["ledstation/lab-a/cmd/jobs/submit",
                                             "ledstation/lab-a/reply/sentinel"]


async def test_viewer_reads_everything_and_publishes_nothing(broker):
    for topic in ("ledstation/lab-a/status", "ledstation/lab-a/cmd/jobs/stop", "ledstation/x"):
        with pytest.raises(PublishRejected):
            await publish(broker, "viewer", topic)


async def test_operator_sends_commands_to_any_station_but_no_telemetry(broker):
    async with subscribed(broker, "viewer", "ledstation/#") as viewer:
        await publish(broker, "operator", "ledstation/lab-b/cmd/jobs/stop", b'{"id": "j1"}', tls=True)
        for topic in ("ledstation/lab-a/status", "ledstation/lab-a/pixel/1/sweep",
                      "ledstation/lab-a/event/alert/interlock"):
            with pytest.raises(PublishRejected):
                await publish(broker, "operator", topic)
        await publish(broker, "lab-a", "ledstation/lab-a/sentinel")
        await seen(viewer, "ledstation/lab-a/sentinel")
    assert [t for t, _ in viewer] == ["ledstation/lab-b/cmd/jobs/stop", "ledstation/lab-a/sentinel"]


async def test_wrong_password_unknown_user_and_untrusted_tls_are_refused(broker):
    for user, password in (("lab-a", "wrong"), ("nobody", "x"), ("", "")):
        with pytest.raises(aiomqtt.MqttError):
            async with client(broker, user, password=password):
                pass
    plain_ctx = ssl.create_default_context()  # the system CAs do not know the lab's CA
    c = AckClient("127.0.0.1", broker.tls_port, username="lab-a", password=USERS["lab-a"],
                  protocol=aiomqtt.ProtocolVersion.V5, tls_context=plain_ctx, timeout=5)
    with pytest.raises(aiomqtt.MqttError):
        async with c:
            pass


def station_env(broker: Broker, store: Path) -> dict[str, str]:
    """The station's secrets file (lab-a.env.example) with the test broker's password, plus the
    overrides that point the deployed lab-a.toml at the test broker and store."""
    env = dict(line.split("=", 1) for line in STATION_ENV.read_text().splitlines()
               if line and not line.startswith("#"))
    env.update(STATION_MQTT__PASSWORD=USERS["lab-a"],
               STATION_MQTT__CONTROL_PASSWORD=USERS["lab-a-control"],
               STATION_MQTT__URL=f"mqtts://127.0.0.1:{broker.tls_port}",
               STATION_MQTT__CA_FILE=str(broker.ca), STATION_STORE__PATH=str(store),
               STATION_MQTT__POLL_S="0.02", STATION_MQTT__HEALTH_INTERVAL_S="0.2",
               STATION_MQTT__RETRY_MIN_S="0.05", STATION_MQTT__RETRY_MAX_S="0.3")
    return env


def test_deployed_station_config_is_valid_and_fits_the_acl(monkeypatch, tmp_path):
    for k, v in dict(line.split("=", 1) for line in STATION_ENV.read_text().splitlines()
                     if line and not line.startswith("#")).items():
        assert k.startswith("STATION_") and "__" in k
        monkeypatch.setenv(k, v)
    cfg = load_config(STATION_TOML)
    assert cfg.station.id == STATION_TOML.stem  # systemd instance name = station id
    assert cfg.mqtt.username == cfg.station.id  # the ACL's %u pattern
    assert cfg.mqtt.topic_prefix == "ledstation"
    assert cfg.mqtt.url.startswith("mqtts://") and cfg.mqtt.ca_file
    assert cfg.mqtt.password and cfg.influxdb.token  # from the env file, not the TOML
    assert "password" not in STATION_TOML.read_text().split("[mqtt]")[1].split("#")[0]
    assert cfg.store.path.startswith(f"/var/lib/led-station/{cfg.station.id}/")
    assert cfg.board.url.startswith("/dev/ledstation/")


async def test_the_station_sink_delivers_through_the_deployed_broker_over_tls(
        broker, monkeypatch, tmp_path):
    store = Store(tmp_path / "station.db")
    for k, v in station_env(broker, store.path).items():
        monkeypatch.setenv(k, v)
    cfg = load_config(STATION_TOML)
    run = store.create_run(kind="sweep", station=cfg.station.id, pixel=1, area_m2=4e-6,
                           substrate="S1", device="dev", job_id="job-1")
    store.add_rows("sweep_points", SWEEP_COLUMNS, [sweep_row(i, run, 1) for i in range(5)])
    store.flush()
    publish_event(store, "job/started", {"job": "job-1"})
    sink = MqttSink(store.path, cfg.mqtt, cfg.station.id)
    stop = asyncio.Event()
    async with subscribed(broker, "viewer", "ledstation/#", tls=True) as viewer:
        task = asyncio.create_task(sink.run(stop))
        try:
            await wait_until(lambda: sum(t.endswith("/pixel/1/sweep") for t, _ in viewer) == 5
                             and any(t.endswith("/health") for t, _ in viewer),
                             what="sweep points and health", timeout_s=20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        await seen(viewer, "ledstation/lab-a/status")
    topics = {t for t, _ in viewer}
    assert {"ledstation/lab-a/status", "ledstation/lab-a/event/job/started",
            "ledstation/lab-a/health", "ledstation/lab-a/pixel/1/sweep"} <= topics
    assert all(t.startswith("ledstation/lab-a/") for t in topics)
    h = sink.health()
    assert h["failures"] == 0 and h["last_error"] is None, h  # the ACL refused nothing


# == compose, Grafana ==============================================================================
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{container path: host source}`` of a service's volumes (named volumes as the name)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def test_compose_file_defines_the_lab_server_stack():
    c = compose()
    assert set(c["services"]) == {"mosquitto", "influxdb", "grafana"}
    for name, svc in c["services"].items():
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name  # pinned
        for src in mounts(svc).values():
            if src.startswith("."):
                continue
            assert src in c["volumes"], (name, src)  # a named volume declared at the top
    assert c["services"]["mosquitto"]["network_mode"] == "host"
    init = c["services"]["influxdb"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert {"DOCKER_INFLUXDB_INIT_ORG", "DOCKER_INFLUXDB_INIT_BUCKET",
            "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"} <= set(init)


def test_compose_mounts_the_deployed_mosquitto_files_where_the_conf_expects_them():
    c = compose()
    m = mounts(c["services"]["mosquitto"])
    assert (COMPOSE / m["/mosquitto/config/mosquitto.conf"]).resolve() == MOSQ / "mosquitto.conf"
    assert (COMPOSE / m["/mosquitto/config/acl"]).resolve() == MOSQ / "acl"
    conf = (MOSQ / "mosquitto.conf").read_text()
    paths = re.findall(r"^(?:password_file|acl_file|cafile|certfile|keyfile|persistence_location)"
                       r"\s+(\S+)", conf, flags=re.M)
    assert len(paths) == 6
    for p in paths:
        assert any(p == dst or p.startswith(dst.rstrip("/") + "/") for dst in m), p
    # what is not in git is made on the server and ignored by git
    ignored = (COMPOSE / ".gitignore").read_text().split()
    for src in m.values():
        if src.startswith("."):
            rel = src.removeprefix("./")
            assert (COMPOSE / src).exists() or rel in ignored or rel + "/" in ignored, src


def test_every_compose_variable_is_in_env_example():
    used = set(re.findall(r"\$\{(\w+)", (COMPOSE / "docker-compose.yml").read_text()))
    example = env_example()
    assert used == set(example), used ^ set(example)
    assert all(v for v in example.values())


def datasource() -> dict[str, Any]:
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return dict(ds)


def test_grafana_datasource_is_influxdb2_flux_configured_from_the_environment():
    ds = datasource()
    assert ds["type"] == "influxdb" and ds["jsonData"]["version"] == "Flux"
    assert ds["url"] == "http://influxdb:8086"  # the compose service
    grafana_env = compose()["services"]["grafana"]["environment"]
    text = "\n".join(line for line in DATASOURCES.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used and used <= set(grafana_env), used - set(grafana_env)
    assert "token" in ds["secureJsonData"]


def test_grafana_dashboard_provider_reads_the_mounted_dashboard_directory():
    (p,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    m = mounts(compose()["services"]["grafana"])
    src = m[p["options"]["path"]]
    assert (COMPOSE / src / DASHBOARD.name).resolve() == DASHBOARD
    assert (COMPOSE / m["/etc/grafana/provisioning"]).resolve() == DATASOURCES.parent.parent


def influx_schema() -> dict[str, tuple[set[str], set[str]]]:
    """``{measurement: (tags, fields)}`` as the station's InfluxDB sink writes them: one line of
    each made by the sink's own ``line_of`` with every tag and field present, then parsed."""
    out = {}
    meta = RunMeta(id=1, kind="x", pixel=3, substrate="S1", label="l", device="d", job_id="j")
    for table, measurement in MEASUREMENTS.items():
        d: dict[str, Any] = {k: 1.5 for k in FLOAT_FIELDS[table]}
        d.update({k: 2 for k in INT_FIELDS[table]}, pixel=3, direction="forward")
        head, fields, _ts = line_of(table, "lab-a", meta, d, 1_000_000).split(" ")
        name, *tags = head.split(",")
        assert name == measurement
        out[name] = ({t.split("=")[0] for t in tags}, {f.split("=")[0] for f in fields.split(",")})
    return out


def dashboard_queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    qs = [(p["title"], t["query"]) for p in d["panels"] for t in p["targets"]]
    qs += [(f"variable {v['name']}", v["query"]) for v in d["templating"]["list"]]
    qs += [(f"annotation {a['name']}", a["target"]["query"]) for a in d["annotations"]["list"]
           if "target" in a]
    return qs


def test_dashboard_uses_only_the_provisioned_datasource():
    d = json.loads(DASHBOARD.read_text())
    uid = datasource()["uid"]
    refs = [p["datasource"] for p in d["panels"]] + [t["datasource"] for p in d["panels"]
                                                     for t in p["targets"]]
    refs += [v["datasource"] for v in d["templating"]["list"]]
    refs += [a["datasource"] for a in d["annotations"]["list"] if not a.get("builtIn")]
    assert refs and all(r == {"type": "influxdb", "uid": uid} for r in refs), refs
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])


def test_dashboard_flux_queries_name_existing_measurements_fields_tags_and_variables():
    d = json.loads(DASHBOARD.read_text())
    schema = influx_schema()
    variables = {v["name"] for v in d["templating"]["list"]}
    builtin = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}
    for title, q in dashboard_queries(d):
        assert q.count("(") == q.count(")") and q.count("[") == q.count("]") and \
            q.count("{") == q.count("}"), title
        assert "v.defaultBucket" in q, title  # the bucket comes from the datasource
        measurements = set(re.findall(r'r\._measurement == "(\w+)"', q))
        assert measurements and measurements <= set(schema), (title, measurements)
        tags = set.intersection(*(schema[m][0] for m in measurements))
        fields = set.intersection(*(schema[m][1] for m in measurements))
        used_fields = set(re.findall(r'r\._field == "(\w+)"', q))
        assert used_fields <= fields, (title, used_fields - fields)
        refs = set(re.findall(r"\br\.(\w+)", q)) - builtin
        assert refs <= tags | used_fields, (title, refs - tags - used_fields)
        for cols in re.findall(r"(?:keep|group)\(columns: \[([^\]]*)\]", q):
            names = set(re.findall(r'"(\w+)"', cols))
            assert names <= tags | used_fields | builtin, (title, names - tags - used_fields)
        for tag in re.findall(r'tag: "(\w+)"', q):
            assert tag in tags, (title, tag)
        assert set(re.findall(r"\$\{(\w+)", q)) <= variables, title


def test_dashboard_has_the_station_pixel_variables_and_the_lab_panels():
    d = json.loads(DASHBOARD.read_text())
    var = {v["name"]: v for v in d["templating"]["list"]}
    assert set(var) == {"station", "pixel"}
    assert "${station}" in var["pixel"]["query"] and var["pixel"]["multi"]
    panels = {p["title"]: p for p in d["panels"]}
    fields_of = {t: set(re.findall(r'r\._field == "(\w+)"', p["targets"][0]["query"]))
                 for t, p in panels.items()}

    jvl = panels["J–V–L (sweeps)"]
    assert jvl["type"] == "xychart" and '"sweep_point"' in jvl["targets"][0]["query"]
    assert fields_of["J–V–L (sweeps)"] == {"voltage_v", "current_density_ma_cm2", "luminance_cd_m2"}
    assert jvl["options"]["series"][0]["x"]["matcher"]["options"] == "voltage_v"
    lum = next(o for o in jvl["fieldConfig"]["overrides"]
               if o["matcher"]["options"] == "luminance_cd_m2")
    assert {"id": "custom.scaleDistribution", "value": {"type": "log", "log": 10}} in lum["properties"]

    by_field = {f: t for t, fs in fields_of.items() for f in fs if panels[t]["type"] == "timeseries"}
    for f in ("l_rel", "voltage_v", "temperature_c", "eqe_pct"):
        assert '"aging_sample"' in panels[by_field[f]]["targets"][0]["query"], f
    assert "eqe_pct" in fields_of["EQE vs current density (sweeps)"]
    alerts = panels["Alerts: flagged samples"]
    assert alerts["type"] == "table" and fields_of["Alerts: flagged samples"] == {"flags"}
    assert any(a.get("name") == "Run starts" for a in d["annotations"]["list"])
    # panels do not overlap on the 24-column grid
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


# == docs ==========================================================================================
def test_docs_deploy_names_only_files_that_exist():
    text = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"\b((?:deploy|examples|docs|scripts)/[\w./@-]*[\w@])", text))
    assert len(named) > 10
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
