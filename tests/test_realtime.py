"""Real time is the real board (issue 18): the simulator at 1x, as a board runs.

Every other test runs the simulator's clock fast, where a 6 s spectrum takes microseconds. Here
the board takes its time: auto-exposure spectra of seconds, pixels queued at the one
spectrometer, a SIGTERM while a spectrum is being taken. These tests take tens of seconds of
wall time in all and run in the default suite (marker ``realtime``); nothing is asserted about
how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.messages import AgingSet, SpectrumAcquire
from firmware_protocol.spec import SampleFlags
from sim.presets import get_preset
from sim.server import SimServer
from sim.truth import lifetime_truth, sweep_truth
from station.jobs import JobManager
from station.procedures import AgingParams, SweepParams, aging_current_a, run_aging, run_sweep

from .stationkit import sim_station

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parent.parent


async def test_aging_at_1x_at_three_current_densities_samples_every_interval_with_luminance(tmp_path):
    """0.1, 1 and 10 mA/cm² on three pixels at once, 1 s interval: auto-exposure asks for
    10 s, 6-7 s and ~1 s spectra, taken one after the other at the one spectrometer. Every
    interval gets its sample, every sample its luminance from the first one on, and L0 is the
    model's (the 0.1 mA/cm² pixel's spectrum is low signal, and still used)."""
    densities = (0.1, 1.0, 10.0)
    alerts: list[tuple[str, dict]] = []
    async with sim_station(tmp_path, ["dbsa"] * 3, speed=1.0, seed=4) as (server, ctx):
        outs = await asyncio.gather(*(
            run_aging(ctx, i + 1, AgingParams(current_density_ma_cm2=j, until="12s", interval_s=1.0),
                      on_alert=lambda k, d: alerts.append((k, d)))
            for i, j in enumerate(densities)))
        assert server.board.counters.executed["spectrum_acquire"] >= 3
        for j, out in zip(densities, outs, strict=True):
            assert out.reason == "duration", (j, out.reason, out.summary)
            d = ctx.store.fetch("aging_samples", out.run_id)
            live = (d["flags"].astype(np.int64) & int(SampleFlags.STOPPED)) == 0
            t_us = d["t_us"][live].astype(np.int64)
            t_s = (t_us - t_us[0]) / 1e6
            assert np.all(np.diff(t_us) == 1_000_000), j  # a sample every interval, none missed
            analysed = t_s <= 12.0
            assert analysed.sum() >= 13, j
            lum = d["luminance_cd_m2"][live][analysed]
            assert np.all(np.isfinite(lum)) and np.all(lum > 0), j  # from the first sample on
            truth = lifetime_truth(get_preset("dbsa"), j)
            assert out.summary["l0_cd_m2"] == pytest.approx(truth["l0_cd_m2"], rel=0.08), j
        low = [d for k, d in alerts if k == "spectrum_low_signal"]
        assert [d["pixel"] for d in low] == [1]  # the dim one, once
        assert low[0]["usable"] is True
        assert not [k for k, _ in alerts if k in ("aging_stalled", "board_not_answering")]
        assert not server.board.status().aging_active_mask


async def test_a_sweep_of_a_dim_pixel_at_1x_gets_its_spectrum_at_the_longest_integration(tmp_path):
    """A sweep that stops near turn-on (DBSA to 3.1 V: a few tens of cd/m² at most): its own
    spectrum, at the sweep's fixed 300 ms integration, is noise. The station then takes one with
    auto-exposure at the sweep's brightest point, up to the longest allowed integration, and
    the sweep gets luminance and V_on, flagged low signal, instead of no photometry at all."""
    async with sim_station(tmp_path, ["dbsa"], speed=1.0, seed=8) as (server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=2.0, stop_v=3.1, step_v=0.1,
                                                  spectrum_at_v=[3.1], spectrum_integration_ms=300.0))
        s = res.summary
        assert res.reason == "completed" and res.n_points == 12
        assert s.get("error") is None, s
        after = s["spectrum_after_sweep"]
        assert after["low_signal"] is True and after["voltage_v"] == pytest.approx(3.1)
        truth = sweep_truth(get_preset("dbsa"))
        assert s["von_v"] == pytest.approx(truth["von_v"], abs=0.03)
        assert s["l_max_cd_m2"] > 10.0
        assert server.board.counters.executed["spectrum_acquire"] >= 2  # 200 ms, then the longest
        st = server.board.status()
        assert not st.smu_output_on


async def test_eight_pixels_aged_by_one_job_at_1x_all_keep_sampling(tmp_path):
    """A daemon's job ages 8 pixels at once at 12.5 samples/s each (two at 1 mA/cm², whose
    first spectra take 6-7 s, six at 10): the pixels queue at the spectrometer, and every run
    still gets a sample every interval, luminance on every sample, and no watchdog alert."""
    events: list[tuple[str, dict]] = []
    async with sim_station(tmp_path, ["dbsa"] * 8, speed=1.0, seed=12) as (server, ctx):
        jm = JobManager(ctx, publish=lambda k, p: events.append((k, p)))
        info = await jm.submit({"kind": "aging", "pixels": list(range(1, 9)), "aging": {
            "current_density_ma_cm2": [1.0, 1.0] + [10.0] * 6, "until": "15s",
            "interval_s": 0.08}}, "tester")
        final = await jm.wait(info["id"])
        assert final["state"] == "completed", final
        assert [(r["pixel"], r["status"], r["end_reason"]) for r in final["runs"]] == [
            (px, "completed", "duration") for px in range(1, 9)]
        for r in final["runs"]:
            d = ctx.store.fetch("aging_samples", r["id"])
            live = (d["flags"].astype(np.int64) & int(SampleFlags.STOPPED)) == 0
            t_us = d["t_us"][live].astype(np.int64)
            assert np.all(np.diff(t_us) == 80_000), r  # every interval
            assert (t_us[-1] - t_us[0]) / 1e6 >= 15.0
            assert np.all(np.isfinite(d["luminance_cd_m2"][live])), r
        assert not [k for k, _ in events if k.startswith("alert/")], events
        assert not server.board.status().aging_active_mask


async def test_a_channel_that_stops_sampling_is_re_armed_by_the_run_watchdog(tmp_path):
    """The board keeps a channel on but its schedule goes wrong (here: set to one sample a day
    behind the run's back). After 3 intervals of board time and 5 s of host time without a
    sample, the run's watchdog raises alert/aging_stalled and re-arms the channel at the run's
    interval; the samples come again and the run ends normally."""
    alerts: list[tuple[str, dict]] = []
    async with sim_station(tmp_path, ["dbsa"], speed=1.0, seed=13) as (_server, ctx):
        current_a = aging_current_a(ctx, ctx.pixel(1)[1], 10.0)
        task = asyncio.create_task(run_aging(
            ctx, 1, AgingParams(current_density_ma_cm2=10.0, until="12s", interval_s=0.2),
            on_alert=lambda k, d: alerts.append((k, d))))
        while ctx.store.count("aging_samples") < 10:
            assert not task.done()
            await asyncio.sleep(0.05)
        await ctx.link.request(AgingSet(channel=0, current_a=current_a, interval_ms=86_400_000))
        out = await task
        stalled = [d for k, d in alerts if k == "aging_stalled"]
        assert stalled and stalled[0]["action"] == "re-armed the channel", alerts
        assert stalled[0]["last_sample_age_s"] > 5.0
        assert out.reason == "duration"
        d = ctx.store.fetch("aging_samples", out.run_id)
        live = (d["flags"].astype(np.int64) & int(SampleFlags.STOPPED)) == 0
        gaps = np.diff(d["t_us"][live].astype(np.int64))
        assert np.count_nonzero(gaps > 600_000) == 1  # the one stall, then every interval again
        k = int(np.argmax(gaps > 600_000))
        assert len(gaps) - k > 5 and np.all(gaps[k + 1:] == 200_000)


def _config(tmp_path: Path, url: str, n: int) -> Path:
    pixels = ", ".join(f'{{ number = {i + 1}, device = "dbsa" }}' for i in range(n))
    cfg = tmp_path / "station.toml"
    cfg.write_text(f"""
[station]
id = "rt"
[board]
url = "{url}"
[store]
path = "{tmp_path / 'station.db'}"
batch_ms = 50
[[substrates]]
id = "S1"
pixels = [{pixels}]
""")
    return cfg


def _running_spectrum_ms(server: SimServer) -> float:
    """The integration of the spectrum the board is taking now (0 when it takes none)."""
    run = getattr(server.board, "_running", None)
    msg = getattr(getattr(run, "req", None), "message", None)
    return float(msg.integration_ms) if isinstance(msg, SpectrumAcquire) else 0.0


async def test_sigterm_during_a_5_s_spectrum_stops_cleanly_and_the_runs_resume(tmp_path):
    """The daemon ages two pixels at 1 mA/cm²; while the board takes a multi-second
    auto-exposure spectrum, SIGTERM: exit status 0, no traceback, no use of a closed store,
    every output off, the runs 'interrupted'. The next start resumes the same runs to their end."""
    server = SimServer(["dbsa", "dbsa"], speed=1.0, seed=11)
    url = await server.start()
    try:
        cfg = _config(tmp_path, url, 2)
        job = tmp_path / "job.toml"
        job.write_text('kind = "aging"\npixels = [1, 2]\n[aging]\ncurrent_density_ma_cm2 = 1.0\n'
                       'until = "15s"\ninterval_s = 0.5\n')
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p1 = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "run", "--config", str(cfg), "--job", str(job),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        while _running_spectrum_ms(server) < 5000.0:
            assert p1.returncode is None
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # well inside it
        assert _running_spectrum_ms(server) >= 5000.0
        p1.terminate()
        _, err1 = await p1.communicate()
        text = err1.decode()
        assert p1.returncode == 0, text[-3000:]
        assert "Traceback" not in text and "closed database" not in text, text[-3000:]
        st = server.board.status()
        assert not st.aging_active_mask and not st.smu_output_on and not st.sweep_active
        db = tmp_path / "station.db"
        con = sqlite3.connect(db)
        runs = con.execute("SELECT id, pixel, status FROM runs ORDER BY id").fetchall()
        assert [r[2] for r in runs] == ["interrupted", "interrupted"], runs
        assert con.execute("SELECT state FROM jobs").fetchall() == [("running",)]
        con.close()

        p2 = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "run", "--config", str(cfg), "--exit-when-idle",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err2 = await p2.communicate()
        assert p2.returncode == 0, err2.decode()[-3000:]
        assert "Traceback" not in err2.decode()
        con = sqlite3.connect(db)
        after = con.execute("SELECT id, pixel, status, end_reason FROM runs ORDER BY id").fetchall()
        assert [(r[0], r[2], r[3]) for r in after] == [(runs[0][0], "completed", "duration"),
                                                       (runs[1][0], "completed", "duration")]
        assert con.execute("SELECT state FROM jobs").fetchall() == [("completed",)]
        for run_id, *_ in after:
            n, n_lum = con.execute("SELECT count(*), count(luminance_cd_m2) FROM aging_samples "
                                   "WHERE run_id = ? AND (flags & 32) = 0", (run_id,)).fetchone()
            assert n >= 10 and n_lum == n, (run_id, n, n_lum)  # luminance for every sample
        con.close()
        assert not server.board.status().aging_active_mask
    finally:
        await server.stop()
