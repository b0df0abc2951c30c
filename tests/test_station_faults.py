"""Faults during sweeps and aging: corruption, dropped bytes, a link that goes away, a board
reboot. For each, what the board produced is compared with what the store holds: nothing lost,
nothing duplicated, no corrupted sample accepted."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol.spec import Stream
from sim.board import LinkAction
from station.procedures import AgingParams, SweepParams, run_aging, run_sweep

from .stationkit import assert_complete, sim_station, stored_seqs

pytestmark = pytest.mark.faults


def board_records(server, stream: Stream) -> np.ndarray:
    """The board's own ring content for a stream, to compare values, not only counts."""
    ring = server.board.rings[stream]
    return ring.get(ring.oldest, ring.head - 1)


# The simulator's ber is per bit; 1.25e-5 and 1.25e-4 per bit corrupt about 1e-4 and 1e-3 of
# the bytes (the per-byte rates the station must survive).
@pytest.mark.parametrize("faults", ["ber=1.25e-5,drop=1e-4", "ber=1.25e-4"])
async def test_sweep_and_aging_on_a_noisy_line_lose_and_corrupt_nothing(tmp_path, faults):
    async with sim_station(tmp_path, ["dbsa", "otac"], speed=2e5, faults=faults, seed=5) as (server, ctx):
        sw = await run_sweep(ctx, 1, SweepParams(start_v=2.0, stop_v=5.0, step_v=0.05, reverse=True))
        ag = await run_aging(ctx, 2, AgingParams(current_density_ma_cm2=1.0, until="40h"))
        assert sw.reason == "completed" and ag.reason == "duration"
        assert ctx.link.conn.decoder.errors["crc"] + ctx.link.conn.decoder.errors["cobs"] > 0
        c = server.board.counters.produced
        assert_complete(stored_seqs(ctx, "sweep_points"), c[Stream.SWEEP])
        assert_complete(stored_seqs(ctx, "aging_samples"), c[Stream.AGING])
        # values, not just counts: every stored sample equals the board's record
        ring = board_records(server, Stream.AGING)
        rows = ctx.store.db.execute(
            "SELECT seq, current_a, voltage_v, photodiode_a FROM aging_samples ORDER BY seq").fetchall()
        got = np.array(rows, dtype=float)
        sel = np.isin(ring["seq"], got[:, 0].astype(np.int64))
        assert sel.sum() == len(ring)  # everything the ring still holds was stored
        idx = np.searchsorted(got[:, 0], ring["seq"][sel])
        for k, col in (("current_a", 1), ("voltage_v", 2), ("photodiode_a", 3)):
            assert np.array_equal(got[idx, col].astype(np.float32), ring[k][sel]), k


async def test_link_gone_during_aging_reconnects_and_replays(tmp_path):
    async with sim_station(tmp_path, ["dbsa"], speed=1e5, faults="disconnect=20h+10h,disconnect=50h+5h",
                           seed=7) as (server, ctx):
        ag = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="80h"))
        assert ag.reason == "duration"
        assert ctx.link.stats.disconnects >= 2 and ctx.link.stats.connects >= 3
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])
        # the board kept aging through the outages: no hole in board time
        t = np.array([r[0] for r in ctx.store.db.execute(
            "SELECT t_us FROM aging_samples WHERE run_id = ? ORDER BY seq", (ag.run_id,))])
        assert np.max(np.diff(t)) == pytest.approx(60e6, rel=1e-6)


def fault_after(n_points: int, action):
    """A sweep progress callback that fires ``action`` once, after ``n_points`` points."""
    fired = []

    def progress(n: int, total: int, last: dict) -> None:
        if n >= n_points and not fired:
            fired.append(n)
            action()

    return progress


async def test_link_gone_during_a_sweep(tmp_path):
    # a slow clock (x20) so the link drops while the board is still sweeping
    async with sim_station(tmp_path, ["otac"], speed=20.0, seed=2) as (server, ctx):
        drop = fault_after(20, lambda: server.board.link_actions.append(
            LinkAction("disconnect", 2_000_000, 0.3)))
        sw = await run_sweep(ctx, 1, SweepParams(start_v=1.0, stop_v=5.0, step_v=0.05, dwell_ms=5,
                                                  integration_ms=5, spectrum_at_v=[4.0, 5.0]),
                             progress=drop)
        assert ctx.link.stats.disconnects >= 1
        assert sw.reason == "completed"
        assert_complete(stored_seqs(ctx, "sweep_points"), server.board.counters.produced[Stream.SWEEP])
        assert sw.n_points == server.board.counters.produced[Stream.SWEEP] == 81


async def test_board_reboot_during_aging_restarts_the_channel_and_keeps_every_sample(tmp_path):
    async with sim_station(tmp_path, ["otac"], speed=1e5, faults="reboot=15h", seed=11) as (server, ctx):
        ag = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="40h"))
        assert server.board.counters.reboots == 1
        assert ctx.link.stats.reboots >= 1
        assert ag.reason == "duration"
        assert server.board.counters.executed["aging_start"] >= 2  # restarted by the host
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])
        assert not server.board.status().aging_active_mask


async def test_board_reboot_during_a_sweep_fails_it_cleanly(tmp_path):
    async with sim_station(tmp_path, ["dbsa"], speed=20.0, seed=4) as (server, ctx):
        boom = fault_after(20, lambda: server.board.reboot(drop_link=True))
        res = await run_sweep(ctx, 1, SweepParams(start_v=1.0, stop_v=5.0, step_v=0.05, dwell_ms=5,
                                                   integration_ms=5, spectrum_at_v=[4.0, 5.0]),
                              progress=boom)
        assert res.reason == "reboot"
        assert 20 <= res.n_points < 81
        assert_complete(stored_seqs(ctx, "sweep_points"), server.board.counters.produced[Stream.SWEEP])
        st = server.board.status()
        assert not st.smu_output_on and not st.sweep_active
        assert ctx.store.run(res.run_id)["end_reason"] == "reboot"
