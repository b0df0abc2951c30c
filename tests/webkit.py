"""A real station for the web tests: ``station sim`` and ``station run`` with a [web] section, both
as subprocesses (as a lab runs them), and a small HTTP client (urllib, curl-style)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .services import free_port

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_KEY = "operator-key-for-tests-0123"
VIEWER_KEY = "viewer-key-for-tests-456789"
PRESETS = ["dbsa", "otac", "oled", "dbsa"]


@dataclass
class Station:
    base: str  # http://127.0.0.1:PORT
    db: Path
    config: Path
    log: Path
    daemon: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return self.base + path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _first_line(proc: subprocess.Popen[bytes], what: str, needle: str = "") -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"{what} exited ({proc.wait()}) before printing {needle or 'a line'}")
        if needle in line:
            return line.strip()


def config_text(board_url: str, db: Path, port: int, extra_web: str = "") -> str:
    pixels = ", ".join(f'{{ number = {i + 1}, label = "S1-P{i + 1}", device = "{p}" }}'
                       for i, p in enumerate(PRESETS))
    return f"""
[station]
id = "webtest"
description = "web test station"
[board]
url = "{board_url}"
[store]
path = "{db}"
batch_ms = 20
[[substrates]]
id = "S1"
pixels = [{pixels}]
[web]
listen = "127.0.0.1:{port}"
status_interval_s = 0.5
{extra_web}
[[web.keys]]
name = "alice"
role = "operator"
key = "{OPERATOR_KEY}"
[[web.keys]]
name = "wall"
role = "viewer"
key = "{VIEWER_KEY}"
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_station(tmp: Path, *, speed: float = 2000.0, extra_web: str = "",
                    extra_toml: str = "") -> Iterator[Station]:
    """``station sim`` (the board) and ``station run`` (the daemon with its web server)."""
    sim = subprocess.Popen([sys.executable, "-m", "station", "sim", "--preset", ",".join(PRESETS),
                            "--speed", str(speed), "--seed", "5"], cwd=tmp, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        board = _first_line(sim, "station sim")
        cfg = tmp / "station.toml"
        db = tmp / "station.db"
        cfg.write_text(config_text(board, db, free_port(), extra_web) + extra_toml)
        log = tmp / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "station", "-v", "run", "--config", str(cfg)],
                                  cwd=tmp, env=_env(), stdout=subprocess.PIPE,
                                  stderr=log.open("wb"))
        line = _first_line(daemon, "station run", "web: serving ")
        st = Station(line.split("web: serving ", 1)[1], db, cfg, log, daemon)
        ctx = None
        if "tls_cert" in extra_web:  # the caller checks TLS itself; trust anything for the wait
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        wait_for(lambda: (lambda s: s.get("link_up") and s["web"]["commands_open"])(
            http("GET", st.url("/api/v1/status"), key=VIEWER_KEY, context=ctx)[1]),
            "the station to connect to its board and take commands")
        yield st
    finally:
        if daemon is not None:
            _stop(daemon)
        _stop(sim)


def http(method: str, url: str, body: bytes | str | None = None, *, key: str | None = None,
         content_type: str | None = None, context: Any = None) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON or bytes, headers): what curl would show."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("X-Api-Key", key)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as r:
            status, raw, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(raw), headers
    return status, raw, headers


def wait_for(pred: Any, what: str, *, step_s: float = 0.1, limit_s: float = 120.0) -> Any:
    """Poll ``pred()`` until it returns something truthy (the limit only guards against a hang)."""
    end = time.monotonic() + limit_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(step_s)


AGING_JOB = """name = "web aging"
kind = "aging"
pixels = [3, 4]
[aging]
current_density_ma_cm2 = [1.0, 2.0]
until = "5000h"
interval_s = 60
"""

SWEEP_JOB = """name = "web sweep"
kind = "sweep"
pixels = [1]
[sweep]
start_v = 0
stop_v = 5
step_v = 0.1
spectrum_at_v = [4.0]
"""
