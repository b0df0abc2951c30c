"""The station CLI as a user runs it: a simulator process, `station sweep`, `station age`,
`station export`, `station analyze`; SIGTERM leaves every output off."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from firmware_protocol.connection import Connection, Handshaked, Response
from firmware_protocol.messages import GetStatus, Status

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def sim_process():
    procs = []

    def start(*args: str) -> str:
        p = subprocess.Popen([sys.executable, "-m", "station", "sim", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ENV, text=True)
        procs.append(p)
        line = p.stdout.readline().strip()  # the URL is the first line
        assert line.startswith("socket://"), p.stderr.read()
        return line

    yield start
    for p in procs:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def station(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def n_samples(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM aging_samples").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def board_status(url: str) -> Status:
    """Ask the board directly, with the protocol's own host state machine over pyserial."""
    ser = serial.serial_for_url(url, timeout=0.2)
    conn = Connection()
    try:
        ser.write(conn.start_handshake(time.monotonic()))
        deadline = time.monotonic() + 10
        seq = None
        while time.monotonic() < deadline:
            conn.receive_data(ser.read(4096))
            for ev in conn.events():
                if isinstance(ev, Handshaked):
                    seq, data = conn.send_request(GetStatus(), time.monotonic())
                    ser.write(data)
                elif isinstance(ev, Response) and ev.seq == seq:
                    assert isinstance(ev.message, Status)
                    return ev.message
        raise AssertionError("no status from the board")
    finally:
        ser.close()


def test_sweep_json_export_and_reanalysis(tmp_path, sim_process):
    url = sim_process("--preset", "otac", "--speed", "100", "--seed", "3")
    out = tmp_path / "run1"
    r = station("sweep", "--port", url, "--pixel", "1", "--start", "2", "--stop", "6", "--step", "0.05",
                "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for k in ("von_v", "l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w", "el_peak_nm",
              "el_fwhm_nm", "cie_x", "cie_y", "ce_max_at", "eqe_max_at", "pe_max_at", "l_max_at"):
        assert k in s, k
    assert s["von_v"] == pytest.approx(2.85, abs=0.05)  # the seed's OTAc device
    assert {"j_ma_cm2", "v", "l_cd_m2"} <= set(s["ce_max_at"])
    assert (out / "points.csv").exists() and (out / "run.json").exists()
    header = (out / "points.csv").read_text().splitlines()[0].split(",")
    for col in ("voltage_v", "current_a", "current_density_ma_cm2", "photodiode_a", "luminance_cd_m2",
                "eqe_pct", "ce_cd_a", "pe_lm_w"):
        assert col in header
    # anyone can recompute every figure from the export
    a = station("analyze", str(out), "--json")
    assert a.returncode == 0, a.stderr
    again = json.loads(a.stdout)
    summ = again.get("summary", again)
    assert summ["l_max_cd_m2"] == pytest.approx(s["l_max_cd_m2"], rel=1e-9)
    assert summ["von_v"] == pytest.approx(s["von_v"], rel=1e-9)


def test_age_json_until_duration(tmp_path, sim_process):
    url = sim_process("--preset", "dbsa", "--speed", "2e5", "--seed", "4")
    out = tmp_path / "age1"
    r = station("age", "--port", url, "--pixel", "1", "--current-density", "2", "--until", "30h",
                "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for k in ("l0_cd_m2", "l_peak_cd_m2", "t_peak_h", "t95_h", "t90_h", "t80_h", "t50_h",
              "t50_from_peak_h", "extrapolated"):
        assert k in s, k
    assert s["duration_h"] == pytest.approx(30.0, rel=0.01)
    header = (out / "samples.csv").read_text().splitlines()[0].split(",")
    for col in ("t_s", "current_a", "voltage_v", "photodiode_a", "luminance_cd_m2", "l_rel",
                "eqe_pct", "temperature_c", "seq"):
        assert col in header


def test_sigterm_during_aging_leaves_every_output_off(tmp_path, sim_process):
    url = sim_process("--preset", "dbsa", "--speed", "10", "--seed", "5")
    p = subprocess.Popen([sys.executable, "-m", "station", "age", "--port", url, "--pixel", "1",
                          "--current-density", "2", "--until", "1000h", "--out", str(tmp_path / "a"),
                          "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while n_samples(tmp_path / "a" / "station.db") < 2:  # the aging channel is on
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    st = board_status(url)
    assert st.aging_active_mask == 0 and not st.smu_output_on and not st.sweep_active


def test_bad_config_fails_at_start_naming_the_field_and_drives_nothing(tmp_path, sim_process):
    url = sim_process("--preset", "dbsa")
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[limits]\nmax_voltage_v = "lots"\n')
    r = station("sweep", "--config", str(cfg), "--port", url, "--pixel", "1", "--stop", "3",
                "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "limits.max_voltage_v" in r.stderr
    r = station("run", "--config", str(cfg))
    assert r.returncode == 78 and "limits.max_voltage_v" in r.stderr
    assert board_status(url).smu_output_on == 0


def test_aging_progress_bar_ends_at_the_runs_length(capsys) -> None:
    """A 300 h run whose last samples are stored past 300 h: the bar stops at 300/300 h and
    tqdm warns of nothing (it read `318.8/? h` with a TqdmWarning, issue 14)."""
    import warnings

    from station.commands.common import AgingBar

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = AgingBar("aging", 300.0)
        bar(150.0, {"l_rel": 0.8, "voltage_v": 3.5})
        bar(318.8, {"l_rel": 0.4, "voltage_v": 3.9})
        assert bar.bar.n == 300.0
        assert "300.0/300.0 h" in str(bar.bar)
        bar.close()


def test_status_and_jobs_output_in_words() -> None:
    """`station status` names the board's faults (it printed `faults 4`) and `jobs list/show`
    give progress in words (they printed the raw JSON record) (issue 14)."""
    from firmware_protocol.spec import Fault
    from station.commands.jobs_cmd import _cell, fault_names, progress_words

    assert fault_names(0) == "none"
    assert fault_names(int(Fault.WATCHDOG_EXPIRED)) == "watchdog_expired"
    both = int(Fault.INTERLOCK_OPEN | Fault.RING_OVERFLOW)
    assert fault_names(both) == "interlock_open, ring_overflow"
    assert fault_names(0x100) == "0x100"
    assert _cell(4, "faults") == "watchdog_expired"
    progress = {"step": 1, "done": [{"step": 0, "pixel": 1, "run_id": 3, "reason": "completed"},
                                    {"step": 0, "pixel": 2, "run_id": 4, "reason": "short"}]}
    assert progress_words(progress, 3) == "step 2 of 3, 2 runs done, 1 ended early (short)"
    assert _cell(progress, "progress") == "step 2, 2 runs done, 1 ended early (short)"
    assert progress_words({"step": 3, "done": []}, 3) == "all 3 steps done, 0 runs done"
