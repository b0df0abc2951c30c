"""The CLI as a new user meets it (issue 14): board URLs as the simulator prints and listens on
them, clear errors for a board that is not there or does not answer, clean stops on Ctrl-C and
SIGTERM, closed pipes, refused commands that leave nothing behind. Every test runs the real
`station` command as a subprocess against a real simulator process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Sim:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url
        self.port = int(url.rsplit(":", 1)[1])

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
def sim() -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Sim:
        p = subprocess.Popen([sys.executable, "-m", "station", "sim", "--listen", "tcp://127.0.0.1:0",
                              *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                             text=True)
        procs.append(p)
        line = p.stdout.readline().strip() if p.stdout else ""
        assert "://127.0.0.1:" in line, p.stderr.read() if p.stderr else ""
        return Sim(p, line)

    yield start
    for p in procs:
        p.send_signal(signal.SIGCONT)
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def station(*args: str, cwd: Path | None = None, timeout: float = 180
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "never retrieved" not in text, text


# -- board URLs -------------------------------------------------------------------------------

def test_sweep_takes_the_tcp_url_the_simulator_listens_on(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa", "--speed", "100")
    r = station("sweep", "--port", s.tcp, "--pixel", "1", "--start", "2", "--stop", "4",
                "--step", "0.1", "--out", str(tmp_path / "r"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["von_v"] is not None
    assert (tmp_path / "r" / "points.csv").exists()


def test_refused_connection_says_so_naming_the_url_and_leaves_no_store(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa")
    port = s.port
    s.proc.send_signal(signal.SIGINT)
    s.proc.wait(10)
    url = f"tcp://127.0.0.1:{port}"  # nothing listens there any more
    r = station("sweep", "--port", url, "--pixel", "1", "--stop", "4", "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "connection refused" in r.stderr and url in r.stderr, r.stderr
    assert "within" not in r.stderr  # not a timeout: it is known at once
    no_traceback(r.stderr)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url, words", [
    ("udp://127.0.0.1:7000", "unknown scheme"),
    ("tcp://127.0.0.1", "tcp://HOST:PORT"),
    ("/dev/no-such-board", "no such device"),
])
def test_bad_board_url_is_named_at_once(tmp_path, url, words) -> None:
    r = station("age", "--port", url, "--pixel", "1", "--current-density", "2",
                "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and words in r.stderr and url in r.stderr, r.stderr
    no_traceback(r.stderr)
    assert not (tmp_path / "a").exists()


def test_a_board_that_does_not_answer_is_named(tmp_path, sim) -> None:
    """The simulator stopped (SIGSTOP): the kernel accepts the connection, nothing answers."""
    s = sim("--preset", "dbsa")
    s.proc.send_signal(signal.SIGSTOP)
    r = station("sweep", "--port", s.tcp, "--pixel", "1", "--stop", "4", "--out",
                str(tmp_path / "r"))
    s.proc.send_signal(signal.SIGCONT)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("station sweep: ") and s.tcp in last and "did not answer" in last, r.stderr
    no_traceback(r.stderr)
    assert not (tmp_path / "r").exists()


# -- stops and exits --------------------------------------------------------------------------

def rows(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def interrupt_when_measuring(cmd: list[str], db: Path, table: str, sig: int
                             ) -> subprocess.CompletedProcess[str]:
    p = subprocess.Popen([sys.executable, "-m", "station", *cmd], env=ENV, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while rows(db, table) < 3:  # measuring, its output on
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def assert_outputs_off(url: str) -> None:
    from tests.test_station_cli import board_status

    st = board_status(url)
    assert st.aging_active_mask == 0 and not st.smu_output_on and not st.sweep_active


def test_ctrl_c_during_age_exits_130_with_the_run_interrupted_and_exported(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa", "--speed", "100")
    out = tmp_path / "age1"
    r = interrupt_when_measuring(["age", "--port", s.tcp, "--pixel", "1", "--current-density", "2",
                                  "--interval", "10", "--out", str(out), "--no-progress"],
                                 out / "station.db", "aging_samples", signal.SIGINT)
    assert r.returncode == 130, r.stderr
    no_traceback(r.stderr)
    assert "interrupted" in r.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and "SIGINT" in meta["end_reason"]
    n = len((out / "samples.csv").read_text().splitlines()) - 1
    assert n >= 3 and n == rows(out / "station.db", "aging_samples")
    assert meta["summary"]["l0_cd_m2"] > 0  # the summary of the data so far
    assert_outputs_off(s.url)


def test_sigterm_during_sweep_exits_143_with_the_run_interrupted_and_exported(tmp_path, sim) -> None:
    s = sim("--preset", "otac", "--speed", "1")
    out = tmp_path / "run1"
    r = interrupt_when_measuring(["sweep", "--port", s.tcp, "--pixel", "1", "--start", "0",
                                  "--stop", "6", "--step", "0.02", "--dwell-ms", "20",
                                  "--out", str(out)],
                                 out / "station.db", "sweep_points", signal.SIGTERM)
    assert r.returncode == 143, r.stderr
    no_traceback(r.stderr)
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and "SIGTERM" in meta["end_reason"]
    n = len((out / "points.csv").read_text().splitlines()) - 1
    assert 3 <= n < 301
    assert_outputs_off(s.url)


def test_refused_command_creates_no_store_file(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa")
    for args in (["sweep", "--pixel", "9", "--stop", "4"],            # no such pixel
                 ["sweep", "--pixel", "1", "--stop", "40"],           # above the voltage limit
                 ["sweep", "--pixel", "1", "--stop", "4", "--compliance", "1e6"],
                 ["age", "--pixel", "9", "--current-density", "2"],
                 ["age", "--pixel", "1", "--current-density", "1e6"]):
        r = station(*args, "--port", s.tcp, "--out", str(tmp_path / "x"))
        assert r.returncode == 2, (args, r.stderr)
        no_traceback(r.stderr)
        assert not (tmp_path / "x").exists(), args
    # a store that existed before is kept, and still holds nothing new
    r = station("sweep", "--port", s.tcp, "--pixel", "1", "--start", "2", "--stop", "3",
                "--step", "0.5", "--out", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    r = station("sweep", "--port", s.tcp, "--pixel", "9", "--stop", "4", "--out",
                str(tmp_path / "y"), "--store", str(tmp_path / "ok" / "station.db"))
    assert r.returncode == 2 and (tmp_path / "ok" / "station.db").exists()
    assert rows(tmp_path / "ok" / "station.db", "runs") == 1


def test_every_command_survives_a_closed_pipe(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa", "--speed", "100")
    r = station("sweep", "--port", s.tcp, "--pixel", "1", "--start", "2", "--stop", "4.5",
                "--step", "0.1", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    db = str(tmp_path / "r" / "station.db")
    for args in (["runs", "--store", db], ["--help"], ["sweep", "--help"], ["analyze", str(tmp_path / "r")],
                 ["sim", "--truth", "--preset", "otac"], ["config", "show"]):
        p = subprocess.Popen([sys.executable, "-m", "station", *args], env=ENV, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        p.stdout.close()  # `| head -0`: the reader is gone before anything is written
        err = p.stderr.read() if p.stderr else ""
        p.wait(60)
        no_traceback(err)
        assert "BrokenPipe" not in err and p.returncode in (0, 141), (args, p.returncode, err)


# -- readable output --------------------------------------------------------------------------

COMMANDS = ("demo", "run", "sweep", "age", "export", "runs", "analyze", "import", "lifetime",
            "report", "sim", "jobs", "status", "config", "bench")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommands_help_has_examples(command) -> None:
    r = station(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout, r.stdout
    assert "--list " not in r.stdout and "--list)" not in r.stdout  # export --help had one


def test_daemon_says_what_it_started(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa,otac", "--speed", "100")
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nid = "lab-x"\n[board]\nurl = "{s.tcp}"\n'
                   f'[store]\npath = "{tmp_path / "st.db"}"\n')
    job = tmp_path / "job.toml"  # a job, so that the daemon stays until its board has answered
    job.write_text('name = "quick"\nkind = "sweep"\npixels = [1]\n[sweep]\nstart_v = 2.0\n'
                   'stop_v = 3.0\nstep_v = 0.5\n')
    r = station("run", "--config", str(cfg), "--job", str(job), "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert f"configuration {cfg} (--config); station id lab-x" in err
    assert f"board URL {s.tcp}: board SIM-" in err and "2 pixels" in err
    assert "MQTT off" in err and "InfluxDB off" in err
    assert f"store {tmp_path / 'st.db'}" in err
    no_traceback(err)


def test_runs_prints_a_header(tmp_path, sim) -> None:
    s = sim("--preset", "dbsa", "--speed", "100")
    r = station("sweep", "--port", s.tcp, "--pixel", "1", "--start", "2", "--stop", "4.5",
                "--step", "0.1", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    r = station("runs", "--store", str(tmp_path / "r" / "station.db"))
    head, first = r.stdout.splitlines()[:2]
    assert head.split() == ["RUN", "KIND", "PIXEL", "DEVICE", "STATUS", "ENDED", "BY"]
    assert first.split()[:3] == ["1", "sweep", "1"] and "completed" in first


def test_status_and_jobs_list_survive_a_closed_pipe(tmp_path, sim) -> None:
    """`station status | head -1` and `station jobs list | head -1` against a running daemon
    and a real Mosquitto: no traceback, the shell's pipe status 141 (or 0)."""
    import shutil
    import socket

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        pytest.skip("mosquitto is not installed (scripts/bootstrap.sh --test installs it)")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    (tmp_path / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([mosquitto, "-c", str(tmp_path / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = sim("--preset", "dbsa", "--speed", "100")
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nid = "pipe-1"\n[board]\nurl = "{s.tcp}"\n[store]\n'
                   f'path = "{tmp_path / "st.db"}"\n[mqtt]\nenabled = true\n'
                   f'url = "mqtt://127.0.0.1:{port}"\n')
    daemon = subprocess.Popen([sys.executable, "-m", "station", "run", "--config", str(cfg)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while station("status", "--config", str(cfg), "--timeout", "2").returncode != 0:
            assert daemon.poll() is None, daemon.communicate()
        # `| true`: the reader is gone before anything is written (a closed pipe for certain)
        for cmd, reader in (("status", "head -1"), ("jobs list", "head -1"),
                            ("status --json", "head -1"), ("status", "true"),
                            ("jobs list", "true")):
            r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m station {cmd} "
                                f"--config {cfg} | {reader}"], capture_output=True, text=True,
                               env=ENV, timeout=60)
            assert r.returncode in (0, 141), (cmd, r.returncode, r.stderr)
            assert len(r.stdout.splitlines()) == (1 if reader == "head -1" else 0)
            no_traceback(r.stderr)
            assert "BrokenPipe" not in r.stderr
    finally:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        broker.terminate()
        broker.wait(10)
