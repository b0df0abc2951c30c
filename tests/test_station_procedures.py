"""The station drives the simulated board: sweeps and aging over a real socket and a real pty,
with the board's own counts compared against what the store holds."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest

from firmware_protocol.spec import Stream
from sim.presets import get_preset
from sim.truth import lifetime_truth
from station.procedures import AgingParams, LimitError, SweepParams, run_aging, run_sweep

from .services import wait_until
from .stationkit import assert_complete, sim_station, stored_seqs

SEED = {  # Table S1 of the seed (shared/seed), typed here independently of the code
    "dbsa": dict(von_v=2.8, l_max_cd_m2=4452, ce_max_cd_a=23.8, eqe_max_pct=8.95, pe_max_lm_w=22.7,
                 el_peak_nm=508, cie_x=0.0669, cie_y=0.6765),
    "otac": dict(von_v=2.85, l_max_cd_m2=2339, ce_max_cd_a=9.1, eqe_max_pct=2.75, pe_max_lm_w=9.59,
                 el_peak_nm=516, cie_x=0.0981, cie_y=0.7592),
}


@pytest.mark.parametrize("device", ["dbsa", "otac"])
async def test_sweep_over_socket_reproduces_table_s1_through_the_measurement_chain(tmp_path, device):
    async with sim_station(tmp_path, [device]) as (server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=0.0, stop_v=7.0, step_v=0.05, reverse=True))
        s = res.summary
        seed = SEED[device]
        assert abs(s["von_v"] - seed["von_v"]) <= 0.05
        for k in ("l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w"):
            assert s[k] == pytest.approx(seed[k], rel=0.04), k
        assert abs(s["el_peak_nm"] - seed["el_peak_nm"]) <= 1.5
        assert abs(s["cie_x"] - seed["cie_x"]) <= 0.004 and abs(s["cie_y"] - seed["cie_y"]) <= 0.004
        # every point the board measured is stored once, forward and reverse
        assert_complete(stored_seqs(ctx, "sweep_points"), server.board.counters.produced[Stream.SWEEP])
        assert res.n_points == server.board.counters.produced[Stream.SWEEP]
        assert res.reason == "completed"
        st = server.board.status()
        assert not st.smu_output_on and not st.sweep_active


async def test_sweep_over_a_pty_with_a_stable_link_path(tmp_path):
    link = str(tmp_path / "ttyLED0")
    async with sim_station(tmp_path, ["oled"], listen="pty", link_path=link) as (server, ctx):
        assert os.path.islink(link)
        res = await run_sweep(ctx, 1, SweepParams(start_v=2.0, stop_v=4.0, step_v=0.1))
        assert res.n_points == 21
        assert_complete(stored_seqs(ctx, "sweep_points"), server.board.counters.produced[Stream.SWEEP])


async def test_a_recent_dark_reading_of_the_pixel_is_reused_and_its_age_reported(tmp_path):
    async with sim_station(tmp_path, ["dbsa"]) as (server, ctx):
        quick = dict(start_v=0.0, stop_v=1.0, step_v=0.5)
        first = await run_sweep(ctx, 1, SweepParams(**quick))
        second = await run_sweep(ctx, 1, SweepParams(**quick))
        assert server.board.counters.executed["pd_read"] == 1  # the board measured it once
        assert first.summary["dark_age_s"] == 0.0 and second.summary["dark_age_s"] > 0.0
        assert second.summary["dark_a"] == first.summary["dark_a"]
        # other integration time, other n, or a zero max age: measured again
        await run_sweep(ctx, 1, SweepParams(**quick, integration_ms=10.0))
        await run_sweep(ctx, 1, SweepParams(**quick, dark_n=4))
        fresh = await run_sweep(ctx, 1, SweepParams(**quick, dark_max_age_s=0.0))
        assert server.board.counters.executed["pd_read"] == 4
        assert fresh.summary["dark_age_s"] == 0.0
        again = await run_sweep(ctx, 1, SweepParams(**quick))
        assert server.board.counters.executed["pd_read"] == 4 and again.summary["dark_age_s"] > 0
        # the room warms by 3 °C (the simulated substrate follows): once the board's status says
        # so, the dark current is measured again
        thermal = server.board.thermal
        thermal.cfg = dataclasses.replace(thermal.cfg, ambient_c=thermal.cfg.ambient_c + 3.0)
        await wait_until(lambda: ctx.link.last_status is not None
                         and ctx.link.last_status.temperatures_c[0] > 27.5,
                         what="a status with the warmer substrate")
        warm = await run_sweep(ctx, 1, SweepParams(**quick))
        assert server.board.counters.executed["pd_read"] == 5 and warm.summary["dark_age_s"] == 0.0


async def test_limits_are_checked_before_anything_is_sent(tmp_path):
    async with sim_station(tmp_path, ["dbsa"]) as (server, ctx):
        with pytest.raises(LimitError, match="max_voltage_v"):
            await run_sweep(ctx, 1, SweepParams(start_v=0.0, stop_v=12.0, step_v=0.5))
        with pytest.raises(LimitError, match="max_aging_current_density"):
            await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=5000.0))
        with pytest.raises(LimitError, match="pixel 9"):
            await run_sweep(ctx, 9, SweepParams(stop_v=3.0))
        assert server.board.counters.requests["sweep_start"] == 0
        assert server.board.counters.requests["aging_start"] == 0


async def test_aging_1000_virtual_hours_to_t50_matches_the_model_lifetime(tmp_path):
    # The OLED preset at 5 mA/cm²: T50 ≈ 1023 h, T95 ≈ 40 h; 1000 h take 7.2 s of wall time at
    # 5e5. A host latency of 50 ms (a loaded machine) is 7 virtual hours, small
    # beside T95. (At 2 mA/cm² on DBSA and 2e6, T50 ≈ 1 h lasted 2 ms of wall time and a loaded
    # host took its first spectrum after the pixel had faded: no L0, max_duration.)
    j = 5.0  # mA/cm²
    async with sim_station(tmp_path, ["oled"], speed=5e5) as (server, ctx):
        res = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=j, until="t50",
                                                  interval_s=60.0))
        truth = lifetime_truth(get_preset("oled"), j)
        s = res.summary
        assert res.reason == "reached_t50"
        assert float(truth["t50_h"]) > 1000.0
        assert s["l0_cd_m2"] == pytest.approx(float(truth["l0_cd_m2"]), rel=0.03)
        assert s["l_peak_cd_m2"] == pytest.approx(float(truth["l_peak_cd_m2"]), rel=0.03)
        for k in ("t90_h", "t80_h", "t50_h"):
            assert s[k] == pytest.approx(float(truth[k]), rel=0.05), k
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])
        assert not server.board.status().aging_active_mask


async def test_two_pixels_age_in_parallel_while_a_third_is_swept(tmp_path):
    import asyncio

    # 5e4: the 50 h take 3.6 s of wall time, so a loaded host still has each pixel's first
    # spectrum long before the end (at 5e5 the whole run lasted 0.36 s, and under load a run
    # could end before its first spectrum came back)
    async with sim_station(tmp_path, ["dbsa", "otac", "oled"], speed=5e4) as (server, ctx):
        a = asyncio.create_task(run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="50h")))
        b = asyncio.create_task(run_aging(ctx, 2, AgingParams(current_density_ma_cm2=1.0, until="50h")))
        sw = await run_sweep(ctx, 3, SweepParams(start_v=2.0, stop_v=4.0, step_v=0.1))
        ra, rb = await asyncio.gather(a, b)
        assert sw.reason == "completed"
        assert ra.reason == rb.reason == "duration"
        # samples from both channels, each run holding only its own pixel's samples
        for r, px in ((ra, 1), (rb, 2)):
            pixels = {row[0] for row in ctx.store.db.execute(
                "SELECT DISTINCT pixel FROM aging_samples WHERE run_id = ?", (r.run_id,))}
            assert pixels == {px}
            assert math.isclose(r.summary["duration_h"], 50.0, rel_tol=0.05)
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])


async def test_aging_at_a_target_initial_luminance_finds_its_current(tmp_path):
    async with sim_station(tmp_path, ["otac"], speed=1e5) as (server, ctx):
        res = await run_aging(ctx, 1, AgingParams(initial_luminance_cd_m2=100.0, until="5h"))
        # the search (SMU sourcing current) and the aging driver agree on the light: L0 ≈ target
        assert res.summary["l0_cd_m2"] == pytest.approx(100.0, rel=0.05)
        st = server.board.status()
        assert not st.smu_output_on and not st.aging_active_mask


async def test_interim_sweeps_interrupt_aging_and_the_run_goes_on(tmp_path):
    async with sim_station(tmp_path, ["dbsa"], speed=2e4) as (server, ctx):
        res = await run_aging(ctx, 1, AgingParams(
            current_density_ma_cm2=1.0, until="30h", interim_sweep_every_h=8.0,
            interim_sweep=SweepParams(start_v=2.0, stop_v=3.5, step_v=0.1)), job_id="j-interim")
        assert res.reason == "duration"
        sweeps = ctx.store.db.execute(
            "SELECT status FROM runs WHERE kind = 'sweep' AND job_id = 'j-interim'").fetchall()
        assert 2 <= len(sweeps) <= 4 and all(s[0] == "completed" for s in sweeps)
        assert server.board.counters.executed["aging_start"] == len(sweeps) + 1
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])


async def test_noise_floor_is_never_below_one_photodiode_adc_step(tmp_path):
    """Dark readings that all land on one ADC code have a standard deviation of 0; the sweep's
    detection limit is still one ADC step at the dark reading's gain (issue 12), not 0."""
    async with sim_station(tmp_path, ["dbsa"]) as (server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=0.0, stop_v=4.0, step_v=0.1))
        cfg = server.board.cfg  # the simulated amplifier: full scale / 2^bits / transimpedance
        s = res.summary
        step_a = cfg.pd_full_scale_v / 2 ** cfg.pd_adc_bits / cfg.pd_gains_v_per_a[s["dark_pd_gain"]]
        pts = ctx.store.fetch("sweep_points", res.run_id)
    assert s["pd_adc_step_a"] == pytest.approx(step_a, rel=1e-6)
    # cd/m² per ampere of net photocurrent at the top of the sweep, from the stored rows
    net = pts["photodiode_a"][-1] - pts["dark_a"][-1]
    k = pts["luminance_cd_m2"][-1] / net
    assert s["noise_floor_cd_m2"] >= 0.99 * max(3 * s["dark_std_a"], step_a) * k
    assert s["noise_floor_cd_m2"] > 0


@pytest.mark.parametrize("preset", ["dbsa", "otac"])
async def test_until_t50_measures_t50_and_the_export_reanalyses_to_the_same_figures(tmp_path, preset):
    """--until t50 on a pixel that brightens first (DBSA) and one that does not (OTAc): the
    run ends only once the final analysis has seen L cross 0.5 L0, so T50 is measured (not
    extrapolated), within 2 % of the model; station analyze of the export (whose auto-exposure
    probe spectra are marked unused) gives the very same L0 and Tx."""
    import json
    import subprocess
    import sys

    from station.export import export_run

    async with sim_station(tmp_path, [preset], speed=1e5) as (_server, ctx):
        res = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="t50"))
        out = export_run(ctx.store, res.run_id, tmp_path / "exp")
        n_spectra = ctx.store.db.execute("SELECT count(*) FROM spectra WHERE run_id = ?",
                                         (res.run_id,)).fetchone()[0]
    assert res.reason == "reached_t50"
    s = res.summary
    truth = lifetime_truth(get_preset(preset), 1.0)
    for k in ("l0_cd_m2", "t95_h", "t80_h", "t50_h"):
        assert s[k] is not None, k
        assert s[k] == pytest.approx(float(truth[k]), rel=0.02), k
    meta = json.loads((out / "run.json").read_text())
    used = [sp["used"] for sp in meta["spectra"]]
    assert used.count(True) == s["spectra_used"] and False in used and len(used) <= n_spectra
    r = subprocess.run([sys.executable, "-m", "station", "analyze", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    a = a.get("summary", a)
    for k in ("l0_cd_m2", "t95_h", "t90_h", "t80_h", "t50_h"):
        assert a[k] == pytest.approx(s[k], rel=1e-9), k


def test_the_aging_watchdog_needs_both_board_and_host_time_to_call_a_run_stalled():
    """Issue 18: stalled = no sample for 3 intervals of board time AND 5 s on the host's clock
    (a fast simulator's board time races ahead of batched deliveries; a 1 h interval at 1x is
    not late after 5 s). A new sample resets the recoveries; rearm() restarts the watch."""
    from types import SimpleNamespace

    from station.procedures import WATCHDOG_MIN_S, AgingWatchdog

    wd = AgingWatchdog(interval_s=1.0)
    t0 = wd.ref_mono
    col = SimpleNamespace(n=0, last_t_us=None, last_mono=None)
    assert wd.stalled(col, 10_000_000, t0 + 1.0) == (False, 1.0)  # the watch starts at board 10 s
    assert not wd.stalled(col, 12_000_000, t0 + WATCHDOG_MIN_S + 1)[0]  # 2 intervals: not late
    assert not wd.stalled(col, 14_000_000, t0 + 2.0)[0]  # late on the board, not on the host
    assert wd.stalled(col, 14_000_000, t0 + WATCHDOG_MIN_S + 1)[0]
    wd.recoveries = 2
    col.n, col.last_t_us, col.last_mono = 1, 14_500_000, t0 + 6.5  # a sample came
    assert not wd.stalled(col, 15_000_000, t0 + 7.0)[0] and wd.recoveries == 0
    assert wd.stalled(col, 18_000_000, t0 + 6.5 + WATCHDOG_MIN_S + 0.1)[0]
    slow = AgingWatchdog(interval_s=3600.0)  # 1 h interval: 5 s without a sample is normal
    assert not slow.stalled(SimpleNamespace(n=0, last_t_us=None, last_mono=None), 0, t0)[0]
    assert not slow.stalled(SimpleNamespace(n=0, last_t_us=None, last_mono=None), 60_000_000,
                            slow.ref_mono + 60)[0]
