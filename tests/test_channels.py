"""Aging channel sets of any size (issue 15): a board with more than 32 aging channels is
described (capabilities.n_aging_channels, status.aging_active) and simulated up to 1024; pixel and
channel numbers are u16 on the wire, so a 256-channel board ages pixel 256 on channel 255; the
station ages pixels on channels past 31 — against the simulator (Python and C firmware) over a
real socket and a real pty."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocol.channels import active_channels, aging_channel_count, channel_set_fields
from firmware_protocol.codec import decode_payload, encode_payload
from firmware_protocol.connection import StreamRecords
from firmware_protocol.messages import (
    AgingStart,
    Capabilities,
    GetCapabilities,
    GetStatus,
    MuxSelect,
    Status,
)
from firmware_protocol.spec import Stream
from sim.server import SimServer
from station.jobs import JobManager
from station.link import BoardError, BoardLink
from station.session import open_station

from .stationkit import station_config


@given(n=st.integers(1, 1024), data=st.data())
def test_a_channel_set_of_any_board_size_survives_the_wire(n, data):
    chans = data.draw(st.sets(st.integers(0, n - 1)))
    status = Status(**channel_set_fields(chans, n))
    back = decode_payload(Status.MSG_ID, encode_payload(status))
    assert active_channels(back) == chans
    assert back.aging_active_mask == sum(1 << k for k in chans if k < 32)
    assert (back.aging_active == ()) == (n <= 32)  # small boards: the u32 mask as before


def test_an_older_32_channel_board_is_read_from_its_mask():
    old = Status(aging_active_mask=0b1000_0000_0000_0000_0000_0000_0000_0101)
    assert active_channels(old) == {0, 2, 31}
    assert aging_channel_count(Capabilities(n_aging_channels=24)) == 24
    with pytest.raises(ValueError):
        channel_set_fields([40], 32)


async def _serve_256_channels(url: str, server: SimServer) -> None:
    """Capabilities, the status's channel set and an aging sample of channel 256 (index 255,
    pixel 256) of a 256-channel board, through ``url``."""
    link = BoardLink(url)
    records: list[np.ndarray] = []
    link.add_stream_consumer(
        lambda ev: records.append(ev.records) if isinstance(ev, StreamRecords) else None)
    try:
        await link.start()
        caps = await link.request(GetCapabilities(), Capabilities)
        assert (caps.n_substrates, caps.pixels_per_substrate, caps.n_aging_channels) == (1, 256, 256)
        assert aging_channel_count(caps) == 256
        for ch in (0, 31, 32, 200, 254, 255):
            await link.request(AgingStart(channel=ch, pixel=ch + 1, current_a=1e-4, interval_ms=100,
                                          compliance_v=10.0, pd_gain=2))
        st = await link.request(GetStatus(), Status)
        assert active_channels(st) == {0, 31, 32, 200, 254, 255}
        assert len(st.aging_active) == 32 and st.aging_active_mask == (1 | 1 << 31)
        assert st.aging_active[31] == 0b1100_0000  # channels 254 and 255
        for _ in range(200):
            if records and any(np.any(r["channel"] == 255) for r in records):
                break
            await asyncio.sleep(0.05)
        recs = np.concatenate(records)
        last = recs[recs["channel"] == 255]
        assert len(last) and set(last["pixel"].tolist()) == {256}
        assert np.all(last["current_a"] > 0.5e-4)
        assert recs.dtype["pixel"] == np.dtype("<u2") and recs.dtype["channel"] == np.dtype("<u2")
        # a request for pixel 257 is refused as an unknown pixel (not truncated to pixel 1)
        with pytest.raises(BoardError, match="pixel 257 unknown"):
            await link.request(MuxSelect(pixel=257))
    finally:
        await link.close()
        await server.stop()


async def test_the_simulator_serves_a_256_channel_board_over_a_socket():
    server = SimServer("dbsa*256", speed=1e3, seed=3)
    await _serve_256_channels(await server.start(), server)
    with pytest.raises(ValueError, match=r"n_aging_channels must be 1\.\.1024"):
        SimServer("dbsa", n_aging_channels=1025)


async def test_the_c_firmware_serves_a_256_channel_board_over_a_pty(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    server = SimServer("dbsa*256", speed=1e3, seed=3, listen="pty", link_path=str(tmp_path / "board"),
                       firmware="c")
    await _serve_256_channels(await server.start(), server)


async def test_the_station_ages_pixels_on_channels_past_31(tmp_path):
    presets = ["dbsa"] * 60
    server = SimServer(presets, speed=2e4, seed=5, n_aging_channels=256)
    url = await server.start()
    try:
        async with open_station(station_config(tmp_path, presets), url=url) as ctx:
            jm = JobManager(ctx)
            info = await jm.submit({"kind": "aging", "pixels": [1, 45, 60], "aging": {
                "current_density_ma_cm2": 1.0, "until": "3h", "interval_s": 60}}, "t")
            status = jm.status()
            final = await jm.wait(info["id"])
            assert final["state"] == "completed", final
            assert sorted(r["pixel"] for r in final["runs"]) == [1, 45, 60]
            assert all(r["status"] == "completed" for r in final["runs"]), final["runs"]
            assert isinstance(status["aging_channels_active"], list)
            produced = server.board.counters.produced[Stream.AGING]
            assert produced > 3 * 100
    finally:
        await server.stop()


def test_one_aging_job_can_name_every_pixel_of_a_256_channel_board():
    """Issue 15: a 256-channel board's pixels fit in one job (and one schedule step); more pixels
    than the protocol can name are refused, naming the key."""
    from station.jobs import JobError, parse_job

    every = list(range(1, 257))
    spec = parse_job({"kind": "aging", "pixels": every,
                      "aging": {"current_density_ma_cm2": 1.0, "until": "t50"}})
    assert spec.pixels == every
    step = parse_job({"kind": "schedule", "steps": [
        {"kind": "aging", "pixels": every, "aging": {"current_density_ma_cm2": 1.0}}]})
    assert step.steps[0].pixels == every
    with pytest.raises(JobError, match="pixels"):
        parse_job({"kind": "schedule", "steps": [
            {"kind": "aging", "pixels": list(range(1, 1026)),
             "aging": {"current_density_ma_cm2": 1.0}}]})
