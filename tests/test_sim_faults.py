"""Fault injection: the spec parser, the link noise, and what faults do to a real host session."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol.messages import AgingStop
from firmware_protocol.spec import EventCode, Fault, SampleFlags, Stream
from sim.faults import FaultEvent, FaultSpecError, LinkNoise, parse_duration_us, parse_faults
from sim.server import SimServer
from tests.test_sim_board import Host, aging_msg, running

H = 3_600_000_000


def test_the_full_example_spec_parses() -> None:
    plan = parse_faults("ber=1e-4,drop=1e-4,disconnect=120s+30s,reboot=600s,saturate=pd3,"
                        "short=px5@50h,open=px2@10h,interlock=300s+10s")
    assert plan.ber == 1e-4 and plan.drop == 1e-4
    assert plan.saturate_pixels == frozenset({3})
    assert plan.events == (
        FaultEvent(120_000_000, "disconnect", 30_000_000),
        FaultEvent(300_000_000, "interlock", 10_000_000),
        FaultEvent(600_000_000, "reboot"),
        FaultEvent(10 * H, "open", 0, 2),
        FaultEvent(50 * H, "short", 0, 5),
    )
    assert plan.pixels() == {2, 3, 5}


def test_several_entries_of_one_kind_and_every_time_unit() -> None:
    plan = parse_faults("disconnect=2h+1m, disconnect=90s, reboot=1.5m,reboot=2e3s, interlock=0s+0.5s")
    assert [(e.kind, e.t_us, e.duration_us) for e in plan.events] == [
        ("interlock", 0, 500_000), ("disconnect", 90_000_000, 0), ("reboot", 90_000_000, 0),
        ("reboot", 2_000_000_000, 0), ("disconnect", 2 * H, 60_000_000)]
    assert parse_duration_us("50h") == 50 * H and parse_duration_us("0.25s") == 250_000
    assert parse_faults("").empty and parse_faults(None).empty


@pytest.mark.parametrize(("spec", "message"), [
    ("bitflip=1e-3", "unknown fault kind 'bitflip'"),
    ("ber", "expected kind=value"),
    ("ber=2", "probability must be in [0, 1)"),
    ("ber=often", "expected a probability"),
    ("ber=1e-4,ber=1e-5", "ber given twice"),
    ("disconnect=120", "needs a unit s, m or h"),
    ("disconnect=120s+", "bad time"),
    ("reboot=-5s", "bad time"),
    ("reboot=5d", "needs a unit"),
    ("short=px5", "short=pxN@TIME"),
    ("short=5@1h", "expected pxN"),
    ("open=px0@1h", "numbered from 1"),
    ("saturate=3", "expected pdN"),
    ("interlock=300s", "interlock=TIME+DURATION"),
    ("ber=1e-4,,drop=1e-4", "empty entry"),
])
def test_bad_specs_are_refused_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as e:
        parse_faults(spec)
    assert message in str(e.value)


def test_a_plan_naming_a_pixel_the_board_lacks_is_refused() -> None:
    with pytest.raises(FaultSpecError, match=r"pixel\(s\) \[9\].*1\.\.4"):
        parse_faults("short=px9@1h").check_pixels(4)


def test_link_noise_is_reproducible_whatever_the_chunking_and_near_its_rates() -> None:
    data = bytes(range(256)) * 4000  # 1 MB
    ss = np.random.SeedSequence(5)
    whole = LinkNoise(1e-4, 1e-4, ss).apply(data)
    noise = LinkNoise(1e-4, 1e-4, np.random.SeedSequence(5))
    parts = b"".join(noise.apply(data[i : i + 777]) for i in range(0, len(data), 777))
    assert whole == parts
    c = noise.counters
    assert c.bytes_seen == len(data)
    assert 600 < c.bits_flipped < 1000  # 8e6 bits × 1e-4
    assert 70 < c.bytes_dropped < 130
    assert len(parts) == len(data) - c.bytes_dropped
    other = LinkNoise(1e-4, 1e-4, np.random.SeedSequence(6)).apply(data)
    assert other != whole


async def test_bit_errors_and_drops_corrupt_frames_yet_every_record_arrives_by_replay() -> None:
    async with running("dbsa*2", speed=2000.0, seed=9, faults="ber=3e-5,drop=2e-5") as (srv, host):
        await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        await host.ok(aging_msg(channel=1, pixel=2, interval_ms=700))
        await host.pump(1.0)
        await host.ok(AgingStop(channel=0))
        await host.ok(AgingStop(channel=1))
        head = srv.board.aging_ring.head
        await host.fill_gaps(Stream.AGING, head - 1)
        recs, seq = host.records(Stream.AGING)
        # the host's decoder saw damaged frames and the host found gaps ...
        errors = host.conn.decoder.errors
        assert errors["crc"] + errors["cobs"] + errors["length"] + errors["short"] > 0
        assert host.gaps
        assert srv.noise_to_host.counters.bits_flipped > 0 and srv.noise_to_host.counters.bytes_dropped > 0
        assert srv.noise_to_board.counters.bytes_seen > 0
        # ... yet it holds every record the board produced, byte for byte
        assert srv.board.counters.produced[Stream.AGING] == head
        assert np.array_equal(seq[:head], np.arange(head))
        assert recs[:head].tobytes() == srv.board.aging_ring.get(0, head - 1).tobytes()


async def test_interlock_fault_opens_then_closes_and_aging_stays_stopped() -> None:
    async with running("dbsa*2", speed=100.0, faults="interlock=30s+20s") as (srv, host):
        await host.ok(aging_msg(interval_ms=1000))
        await host.until(lambda: host.events(EventCode.INTERLOCK_CLOSED), what="interlock closed")
        opened = host.events(EventCode.INTERLOCK_OPEN)[0]
        closed = host.events(EventCode.INTERLOCK_CLOSED)[0]
        assert opened.t_us == 30_000_000 and closed.t_us == 50_000_000
        stops = host.events(EventCode.CHANNEL_STOPPED)
        assert len(stops) == 1 and stops[0].t_us == opened.t_us  # within the same board tick
        recs, _ = host.records(Stream.AGING)
        assert recs[-1]["flags"] & SampleFlags.STOPPED and int(recs[-1]["t_us"]) == 30_000_000
        st = await host.status()
        assert st.interlock_closed == 1 and not st.faults & Fault.INTERLOCK_OPEN
        assert st.aging_active_mask == 0  # the host restarts channels itself
        assert srv.board.counters.events["INTERLOCK_OPEN"] == 1


async def test_a_pixel_shorted_by_a_fault_at_a_virtual_time() -> None:
    async with running("oled*5", speed=1e6, faults="short=px5@50h") as (_srv, host):
        await host.ok(aging_msg(channel=4, pixel=5, current_a=2e-3, interval_ms=600_000))
        await host.until(lambda: host.events(EventCode.PIXEL_SHORT), what="short")
        await host.pump(0.02)
        recs, _ = host.records(Stream.AGING)
        last = recs[-1]
        assert int(last["t_us"]) == 50 * H
        both = SampleFlags.SHORT | SampleFlags.STOPPED
        assert last["flags"] & both == both
        assert last["voltage_v"] < 0.1 and last["photodiode_a"] < 1e-9


async def test_fault_counters_let_a_test_compare_produced_with_received() -> None:
    srv = SimServer("dbsa", speed=1e4, faults="drop=1e-3", seed=2)
    url = await srv.start()
    host = Host(url)
    try:
        await host.handshake()
        await host.ok(aging_msg(interval_ms=1000))
        await host.pump(0.3)
        received = sum(len(b[0]) for b in host.blocks[Stream.AGING])
        assert 0 < received <= srv.board.counters.produced[Stream.AGING]
        assert srv.noise_to_host.counters.bytes_dropped > 0
    finally:
        host.close()
        await srv.stop()
