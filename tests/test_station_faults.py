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


async def test_interlock_trip_turns_outputs_off_alerts_and_aging_resumes_after(tmp_path):
    from station.jobs import JobManager

    events: list[tuple[str, dict]] = []
    async with sim_station(tmp_path, ["dbsa", "otac"], speed=2e4, faults="interlock=10h+3h",
                           seed=12) as (server, ctx):
        from firmware_protocol.connection import Unsolicited
        from firmware_protocol.messages import Event
        from firmware_protocol.spec import EventCode

        def on_link(ev: object) -> None:
            if isinstance(ev, Unsolicited) and isinstance(ev.message, Event):
                events.append((EventCode(ev.message.code).name, {"t_us": ev.message.t_us}))

        ctx.link.add_listener(on_link)
        jm = JobManager(ctx)
        info = await jm.submit({"kind": "aging", "pixels": [1, 2],
                                "aging": {"current_density_ma_cm2": 1.0, "until": "30h"}}, "t")
        final = await jm.wait(info["id"])
        assert final["state"] == "completed"
        assert [r["end_reason"] for r in final["runs"]] == ["duration", "duration"]
        names = [e[0] for e in events]
        assert "INTERLOCK_OPEN" in names and "INTERLOCK_CLOSED" in names
        # while open, the board produced nothing on either channel: outputs were off
        t_open = next(e[1]["t_us"] for e in events if e[0] == "INTERLOCK_OPEN")
        t_close = next(e[1]["t_us"] for e in events if e[0] == "INTERLOCK_CLOSED")
        inside = ctx.store.db.execute(
            "SELECT count(*) FROM aging_samples WHERE t_us > ? AND t_us < ?", (t_open, t_close)).fetchone()[0]
        assert inside == 0
        assert server.board.counters.executed["aging_start"] == 4  # each channel restarted once
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])


async def test_a_pixel_shorting_ends_its_run_and_the_others_go_on(tmp_path):
    import asyncio

    async with sim_station(tmp_path, ["dbsa", "otac"], speed=5e4, faults="short=px1@8h",
                           seed=13) as (server, ctx):
        a = asyncio.create_task(run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="20h")))
        b = asyncio.create_task(run_aging(ctx, 2, AgingParams(current_density_ma_cm2=1.0, until="20h")))
        ra, rb = await asyncio.gather(a, b)
        assert ra.reason == "failure_short" and rb.reason == "duration"
        assert ra.summary["duration_h"] < 8.5
        assert_complete(stored_seqs(ctx, "aging_samples"), server.board.counters.produced[Stream.AGING])


async def test_compliance_ends_a_sweep_with_its_reason(tmp_path):
    async with sim_station(tmp_path, ["oled"], speed=1e4, seed=14) as (server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=2.0, stop_v=8.0, step_v=0.1,
                                                  compliance_ma_cm2=10.0))
        assert res.reason == "compliance"
        j = [r[0] for r in ctx.store.db.execute(
            "SELECT current_density_ma_cm2 FROM sweep_points WHERE run_id = ?", (res.run_id,))]
        assert max(j) == pytest.approx(10.0, rel=0.02)  # current-limited at the compliance
        assert not server.board.status().smu_output_on


async def test_a_reset_that_loses_the_rings_keeps_every_later_sample_and_counts_the_loss(tmp_path):
    """A board reset that empties its rings restarts its seqs and clock at 0: the samples of the
    new boot are stored beside the old ones (not dropped as duplicates), the run's time axis
    goes on, and what the board lost is counted once: old-epoch records stored + reported lost
    + never sent (frames still queued at the reset, of which no host can know) = made."""
    async with sim_station(tmp_path, ["dbsa"], speed=1e5, faults="drop=1e-4,reboot=15h",
                           reboot_loses_ring=True, seed=11) as (server, ctx):
        losses: list[dict] = []
        ctx.acq.lost_listeners.append(losses.append)
        ag = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="40h"))
        assert ag.reason == "duration" and server.board.counters.reboots == 1
        ctx.acq.flush()
        (old,) = server.board.counters.epoch_produced
        db = ctx.store.db
        by_epoch = dict(db.execute("SELECT epoch, count(*) FROM aging_samples GROUP BY epoch"))
        lost = db.execute("SELECT coalesce(sum(count), 0) FROM records_lost WHERE stream = 'aging' "
                          "AND epoch = 0").fetchone()[0]
        unsent = server.board.counters.unsent[Stream.AGING]
        assert by_epoch[0] + lost + unsent == old[Stream.AGING]
        assert by_epoch[1] == server.board.counters.produced[Stream.AGING] - old[Stream.AGING]
        assert sum(x["count"] for x in losses if x["stream"] == "aging") == lost
        # each loss is also an alert for the sinks (event/alert/records_lost on MQTT)
        import json
        has_events = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0]
        alerts = [json.loads(p) for p, in db.execute(
            "SELECT payload FROM events WHERE kind = 'alert/records_lost'")] if has_events else []
        assert sum(a["count"] for a in alerts if a["stream"] == "aging") == lost
        assert all(a["reason"] == "board_reset" and a["epoch"] == 0 for a in alerts)
        # one time axis: monotonic board time, the run's samples every 60 s but for the outage
        t = np.array([r[0] for r in db.execute(
            "SELECT t_us FROM aging_samples WHERE run_id = ? ORDER BY seq", (ag.run_id,))])
        gaps = np.diff(t)
        assert np.all(gaps > 0)
        # every interval has its sample but one: the board's own outage (the reset and the
        # host's reconnection), which no record covers
        assert np.count_nonzero(gaps > 60.5e6) == 1
        regular = gaps[:-1][gaps[:-1] <= 60.5e6]  # (the last is the final sample at the stop)
        assert np.all(np.abs(regular - 60e6) < 0.5e6)
        # the samples of the run after the reset are in the store and in its analysis
        summary = ctx.store.run(ag.run_id)["summary"]
        assert summary["n_samples"] == len(t) and summary["records_lost"] == lost


async def test_records_the_ring_overwrote_during_an_outage_are_declared_lost_once(tmp_path):
    """A ring of 100 records and a 10 h outage at a sample a minute: the board overwrites what
    the host has not got. On reconnection the replay's answer says so; the loss is counted
    exactly once (stored + lost = produced), raised as alert/records_lost, and passed: no
    endless repair, the acknowledgement moves on and the run ends normally."""
    import json

    async with sim_station(tmp_path, ["dbsa"], speed=1e5, faults="disconnect=10h+10h",
                           ring_depth=100, seed=13) as (server, ctx):
        ag = await run_aging(ctx, 1, AgingParams(current_density_ma_cm2=1.0, until="30h"))
        assert ag.reason == "duration"
        ctx.acq.flush()
        db = ctx.store.db
        stored = db.execute("SELECT count(*) FROM aging_samples").fetchone()[0]
        losses = ctx.store.records_lost(stream="aging")
        lost = sum(r["count"] for r in losses)
        assert lost > 300 and all(r["reason"] == "ring_overwritten" for r in losses)
        assert stored + lost == server.board.counters.produced[Stream.AGING]
        alerts = [json.loads(p) for p, in db.execute(
            "SELECT payload FROM events WHERE kind = 'alert/records_lost'")]
        assert sum(a["count"] for a in alerts) == lost and len(alerts) == len(losses)
        assert all(a["t_from_us"] < a["t_to_us"] for a in alerts)
        assert not ctx.link.conn.trackers[Stream.AGING].missing
        assert ctx.link.stats.replays_requested < 20
        assert ctx.store.run(ag.run_id)["summary"]["records_lost"] == lost
