"""The daemon: jobs and schedules, pause/resume/stop, and resume after kill -9 with every sample
the board buffered meanwhile recovered (no gap, no duplicate)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.spec import Stream
from sim.server import SimServer
from station.jobs import JobError, JobManager, job_dict, load_job_file, parse_job
from station.session import open_station

from .stationkit import assert_complete, station_config, stored_seqs

ROOT = Path(__file__).resolve().parent.parent


async def test_a_schedule_sweeps_then_ages_in_parallel(tmp_path):
    server = SimServer(["dbsa", "otac", "dbsa"], speed=5e5, seed=2)
    url = await server.start()
    events: list[tuple[str, dict]] = []
    try:
        cfg = station_config(tmp_path, ["dbsa", "otac", "dbsa"])
        async with open_station(cfg, url=url) as ctx:
            jm = JobManager(ctx, publish=lambda k, p: events.append((k, p)))
            job = {"name": "s", "kind": "schedule", "steps": [
                {"kind": "sweep", "pixels": [1, 3], "sweep": {"start_v": 2.0, "stop_v": 4.0, "step_v": 0.1}},
                {"kind": "aging", "pixels": [1, 2], "aging": {"current_density_ma_cm2": [1.0, 2.0],
                                                              "until": "30h"}}]}
            info = await jm.submit(job, "tester")
            final = await jm.wait(info["id"])
            assert final["state"] == "completed", final
            kinds = [(r["kind"], r["pixel"]) for r in final["runs"]]
            assert kinds == [("sweep", 1), ("sweep", 3), ("aging", 1), ("aging", 2)]
            assert all(r["status"] == "completed" for r in final["runs"])
            assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])
            names = [k for k, _ in events]
            assert names[0] == "job/submitted" and names[1] == "job/started" and names[-1] == "job/completed"
            assert names.count("job/progress") == 4
    finally:
        await server.stop()


async def test_bad_and_unsafe_jobs_are_refused_and_change_nothing(tmp_path):
    server = SimServer(["dbsa"], speed=1e4, seed=2)
    url = await server.start()
    try:
        async with open_station(station_config(tmp_path, ["dbsa"]), url=url) as ctx:
            jm = JobManager(ctx)
            cases = [
                ({"kind": "sweep", "pixels": [1], "sweep": {"stop_v": 50.0}}, "limit", "max_voltage_v"),
                ({"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": 9000}}, "limit",
                 "max_aging_current_density"),
                ({"kind": "sweep", "pixels": [5]}, "limit", "pixel 5"),
                ({"kind": "aging", "pixels": [1], "aging": {}}, "bad_request", "exactly one"),
                ({"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": [1, 2]}},
                 "bad_request", "2 values for 1 pixels"),
                ({"kind": "sweep", "pixels": [1], "sweep": {"stpo_v": 3}}, "bad_request", "sweep.stpo_v"),
                ({"kind": "party", "pixels": [1]}, "bad_request", "kind"),
                ({"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": 1, "until": "soon"}},
                 "bad_request", "cannot read duration"),
            ]
            for job, code, needle in cases:
                with pytest.raises(JobError) as e:
                    await jm.submit(job, "tester")
                assert e.value.code == code and needle in str(e.value), (job, str(e.value))
            assert jm.list() == []
            assert server.board.counters.requests["sweep_start"] == 0
            assert server.board.counters.requests["aging_start"] == 0
    finally:
        await server.stop()


async def test_pause_turns_the_output_off_and_resume_continues_the_same_run(tmp_path):
    server = SimServer(["otac"], speed=2e4, seed=6)
    url = await server.start()
    try:
        async with open_station(station_config(tmp_path, ["otac"]), url=url) as ctx:
            jm = JobManager(ctx)
            info = await jm.submit({"kind": "aging", "pixels": [1],
                                    "aging": {"current_density_ma_cm2": 1.0, "until": "20h"}}, "t")
            while ctx.store.count("aging_samples") < 50:
                await asyncio.sleep(0.05)
            await jm.pause(info["id"], "t")
            while server.board.status().aging_active_mask:
                await asyncio.sleep(0.05)
            n_paused = server.board.counters.produced[Stream.AGING]
            await asyncio.sleep(0.3)
            assert server.board.counters.produced[Stream.AGING] == n_paused  # really off
            await jm.resume(info["id"], "t")
            final = await jm.wait(info["id"])
            assert final["state"] == "completed"
            assert [r["kind"] for r in final["runs"]] == ["aging"]
            assert server.board.counters.executed["aging_start"] == 2
    finally:
        await server.stop()


def _write_config(tmp_path: Path, url: str, presets: list[str]) -> Path:
    pixels = ", ".join(f'{{ number = {i + 1}, device = "{p}" }}' for i, p in enumerate(presets))
    cfg = tmp_path / "station.toml"
    cfg.write_text(f"""
[station]
id = "kill9"
[board]
url = "{url}"
watchdog_s = 5.0
[store]
path = "{tmp_path / 'station.db'}"
batch_ms = 50
[[substrates]]
id = "S1"
pixels = [{pixels}]
""")
    return cfg


async def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


async def test_kill_9_mid_aging_resumes_the_job_and_loses_nothing(tmp_path):
    server = SimServer(["dbsa", "otac"], speed=4e4, seed=9)
    url = await server.start()
    try:
        cfg = _write_config(tmp_path, url, ["dbsa", "otac"])
        job = tmp_path / "job.toml"
        job.write_text('kind = "aging"\npixels = [1, 2]\n[aging]\ncurrent_density_ma_cm2 = [1.0, 2.0]\n'
                       'until = "60h"\ninterval_s = 60\n')
        db = tmp_path / "station.db"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p1 = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "run", "--config", str(cfg), "--job", str(job),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        while await _count(db, "SELECT count(*) FROM aging_samples") < 400:
            assert p1.returncode is None
            await asyncio.sleep(0.05)
        p1.send_signal(signal.SIGKILL)
        await p1.wait()
        produced_at_kill = server.board.counters.produced[Stream.AGING]
        await asyncio.sleep(1.0)  # the board keeps aging and buffering while no host listens
        assert server.board.counters.produced[Stream.AGING] > produced_at_kill + 100
        p2 = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "run", "--config", str(cfg), "--exit-when-idle",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(p2.communicate(), 300)
        assert p2.returncode == 0, err.decode()[-2000:]
        con = sqlite3.connect(db)
        assert con.execute("SELECT state FROM jobs").fetchall() == [("completed",)]
        runs = con.execute("SELECT id, pixel, status, end_reason FROM runs ORDER BY pixel").fetchall()
        assert [(r[1], r[2], r[3]) for r in runs] == [(1, "completed", "duration"),
                                                      (2, "completed", "duration")]
        seqs = np.array([r[0] for r in con.execute("SELECT seq FROM aging_samples ORDER BY seq")])
        assert_complete(seqs, server.board.counters.produced[Stream.AGING])
        assert con.execute("SELECT count(*) FROM aging_samples WHERE run_id IS NULL").fetchone()[0] == 0
        # no hole in board time in either run: the board aged on while the station was dead
        for run_id, *_ in runs:
            t = np.array([r[0] for r in con.execute(
                "SELECT t_us FROM aging_samples WHERE run_id = ? AND (flags & 32) = 0 ORDER BY seq",
                (run_id,))])
            assert np.max(np.diff(t)) == 60_000_000
    finally:
        await server.stop()


def test_example_job_files_parse_and_round_trip():
    for name in ("sweep", "aging", "schedule"):
        spec = load_job_file(ROOT / "examples" / "jobs" / f"{name}.toml")
        assert spec.steps
        assert parse_job(job_dict(spec)) == spec


async def test_a_sweep_cut_by_a_board_reboot_is_taken_again(tmp_path):
    from firmware_protocol.connection import StreamRecords

    server = SimServer(["dbsa"], speed=20.0, seed=3)
    url = await server.start()
    events: list[str] = []
    try:
        async with open_station(station_config(tmp_path, ["dbsa"]), url=url) as ctx:
            fired: list[int] = []

            def reboot_once(ev: object) -> None:
                if isinstance(ev, StreamRecords) and ev.stream is Stream.SWEEP and not fired:
                    fired.append(1)
                    server.board.reboot(drop_link=True)

            ctx.link.add_stream_consumer(reboot_once)
            jm = JobManager(ctx, publish=lambda k, p: events.append(k))
            info = await jm.submit({"kind": "sweep", "pixels": [1], "sweep": {
                "start_v": 1.0, "stop_v": 4.0, "step_v": 0.05, "dwell_ms": 5, "integration_ms": 5,
                "spectrum_at_v": [3.5, 4.0]}}, "t")
            final = await jm.wait(info["id"])
            assert final["state"] == "completed"
            assert [(r["kind"], r["end_reason"]) for r in final["runs"]] == [
                ("sweep", "reboot"), ("sweep", "completed")]
            assert "alert/sweep_retried" in events
            assert_complete(stored_seqs(ctx, "sweep_points"), server.board.counters.produced[Stream.SWEEP])
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def anon_broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.test_control import AnonymousMosquitto

    b = AnonymousMosquitto(tmp_path_factory.mktemp("daemon-mosquitto"))
    b.start()
    yield b
    b.stop()


async def retained_status(broker_url: str, topic: str) -> dict:
    """The retained message on ``topic`` that a new subscriber gets."""
    import json
    from urllib.parse import urlsplit

    import aiomqtt

    u = urlsplit(broker_url)
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                              identifier=f"daemon-test-{os.getpid()}") as c:
        await c.subscribe(topic, qos=1)
        async for m in c.messages:
            assert m.retain
            return json.loads(bytes(m.payload))
    raise AssertionError("no retained message")


async def test_the_daemon_started_from_a_library_call_runs_a_remote_sweep_and_stops_with_outputs_off(
        tmp_path, anon_broker):
    """No CLI, no subprocess: ``async with Daemon(config)`` against the simulator over a real
    socket and a real Mosquitto; a sweep submitted over the control plane (MQTT) completes; an
    aging run submitted through the job API is running when the daemon is stopped, which
    leaves every output off, the run 'interrupted' (resumed at the next start) and the
    station's retained status 'offline'."""
    import time
    import uuid

    from station.daemon import Daemon
    from station.remote import NoAnswer, RemoteStation

    server = SimServer(["dbsa", "dbsa"], speed=1e3, seed=6)
    url = await server.start()
    station = f"lib-{uuid.uuid4().hex[:8]}"
    cfg = station_config(tmp_path, ["dbsa", "dbsa"], board={"url": url},
                         mqtt={"enabled": True, "url": anon_broker.url, "client_id": station,
                               "retry_min_s": 0.05, "retry_max_s": 0.3})
    cfg.station.id = station
    stop = asyncio.Event()
    try:
        async with Daemon(cfg) as d:
            serving = asyncio.create_task(d.serve(stop))
            async with RemoteStation(cfg) as st:
                deadline = time.monotonic() + 30
                while True:  # until the command server has subscribed
                    try:
                        status = await st.call("status", timeout_s=2)
                        break
                    except NoAnswer:
                        assert time.monotonic() < deadline, "the command server never answered"
                assert status["station"] == station
                info = await st.call("submit", {"job": {
                    "name": "remote sweep", "kind": "sweep", "pixels": [1],
                    "sweep": {"start_v": 2.0, "stop_v": 4.0, "step_v": 0.5}}}, timeout_s=5)
                final = await d.jobs.wait(info["id"])
                assert final["state"] == "completed", final
                assert (await st.call("get", {"job_id": info["id"]}))["state"] == "completed"
            n_points = d.ctx.store.db.execute("SELECT count(*) FROM sweep_points").fetchone()[0]
            assert n_points >= 5
            aging = await d.jobs.submit({"name": "held", "kind": "aging", "pixels": [2], "aging": {
                "current_density_ma_cm2": 1.0, "until": "1000h"}}, "tester")
            deadline = time.monotonic() + 30
            while not server.board.active_channels():
                assert time.monotonic() < deadline, "the aging run never started"
                await asyncio.sleep(0.05)
            stop.set()
            await serving
        assert not server.board.active_channels()
        st_board = server.board.status()
        assert not st_board.smu_output_on and not st_board.sweep_active
        db = sqlite3.connect(cfg.store.path)
        try:
            runs = db.execute("SELECT status FROM runs WHERE job_id = ? AND kind = 'aging'",
                              (aging["id"],)).fetchall()
            job_state = db.execute("SELECT state FROM jobs WHERE id = ?", (aging["id"],)).fetchone()
        finally:
            db.close()
        assert runs == [("interrupted",)] and job_state[0] in ("running", "queued")
        last = await retained_status(anon_broker.url, f"ledstation/{station}/status")
        assert last["state"] == "offline" and last["reason"] == "stopped"
    finally:
        await server.stop()


async def test_run_daemon_runs_the_jobs_given_and_returns_0_when_idle(tmp_path):
    from station.daemon import run_daemon

    server = SimServer(["dbsa"], speed=1e5, seed=7)
    url = await server.start()
    try:
        cfg = station_config(tmp_path, ["dbsa"], board={"url": url})
        job = {"name": "batch", "kind": "sweep", "pixels": [1],
               "sweep": {"start_v": 2.0, "stop_v": 3.0, "step_v": 0.5}}
        assert await run_daemon(cfg, jobs=[job], exit_when_idle=True) == 0
        db = sqlite3.connect(cfg.store.path)
        try:
            assert db.execute("SELECT state FROM jobs").fetchall() == [("completed",)]
        finally:
            db.close()
        assert not server.board.status().smu_output_on
    finally:
        await server.stop()
