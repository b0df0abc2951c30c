"""The simulated board's firmware behaviour, seen by a real host over a real TCP socket.

The host side is :class:`firmware_protocol.Connection` on a pyserial port (``socket://``); the
board is :class:`sim.server.SimServer` in the same event loop. No mocks. Virtual time runs fast
where the test needs hours; nothing here asserts on wall-clock durations (waits have generous
timeouts only so that a broken board fails instead of hanging).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

from firmware_protocol import Connection
from firmware_protocol.base import BaseMessage
from firmware_protocol.codec import encode_frame, frame_bytes
from firmware_protocol.connection import (
    BoardRebooted,
    FrameDropped,
    GapDetected,
    Handshaked,
    HandshakeFailed,
    RequestFailed,
    RequestTimedOut,
    Response,
    SpectrumReceived,
    StreamRecords,
    Unsolicited,
)
from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
    AgingSet,
    AgingStart,
    AgingStop,
    AllOff,
    Capabilities,
    Event,
    GetCapabilities,
    GetStatus,
    Hello,
    HelloReply,
    MuxSelect,
    Ok,
    PdConfigure,
    PdRead,
    PdReading,
    Ping,
    Pong,
    SetWatchdog,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
    SpectrumAcquire,
    Status,
    StreamAck,
    StreamReplay,
    SweepAbort,
    SweepDone,
    SweepStart,
)
from firmware_protocol.spec import (
    MESSAGES,
    PROTOCOL_VERSION,
    SPEC_HASH,
    ErrorCode,
    EventCode,
    Fault,
    FrameFlags,
    SampleFlags,
    SmuMode,
    SpectrumKind,
    Stream,
    SweepEnd,
    WatchdogPolicy,
)
from sim.board import AgingChannel, Board
from sim.faults import parse_faults
from sim.hardware import HardwareConfig, Photodiodes, Pixel, aging_arrays_of
from sim.layout import layout_from_presets, parse_layout
from sim.physics import FailureMode, failure_time_h
from sim.presets import PRESETS
from sim.server import SimServer

HOUR_US = 3_600_000_000
WAIT_S = 20.0  # only a guard against hanging; never a performance assertion


# ---------------------------------------------------------------------------------------------
# a tiny host: pyserial + the sans-I/O connection
# ---------------------------------------------------------------------------------------------


class Host:
    """pyserial port + :class:`Connection`; collects every event the board produces."""

    def __init__(self, url: str, timeout_s: float = 0.3, max_attempts: int = 10) -> None:
        self.conn = Connection(timeout_s=timeout_s, max_attempts=max_attempts)
        self.ser: Any = None
        self.url = url
        self.closed = False
        self.hello: HelloReply | None = None
        self.replies: dict[int, Response | RequestFailed | RequestTimedOut] = {}
        self.blocks: dict[Stream, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in Stream}
        self.spectra: list[SpectrumReceived] = []
        self.unsolicited: list[BaseMessage] = []
        self.gaps: list[GapDetected] = []
        self.dropped: list[FrameDropped] = []
        self.reboots: list[BoardRebooted] = []
        self.raw_in = bytearray()
        self.keep_raw = False
        self.open(url)

    def open(self, url: str) -> None:
        self.url = url
        self.ser = serial.serial_for_url(url, timeout=0)
        self.closed = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ser.close()
        self.closed = True

    def write(self, data: bytes) -> None:
        if data and not self.closed:
            try:
                self.ser.write(data)
            except (serial.SerialException, OSError):
                self.closed = True

    def pump_once(self) -> None:
        if not self.closed:
            try:
                data = self.ser.read(1 << 20)
            except (serial.SerialException, OSError):
                self.closed = True
                data = b""
            if data:
                if self.keep_raw:
                    self.raw_in += data
                self.conn.receive_data(data)
            self.write(self.conn.poll(time.monotonic()))
        for ev in self.conn.events():
            if isinstance(ev, Handshaked):
                self.hello = ev.reply
            elif isinstance(ev, HandshakeFailed):
                raise AssertionError(f"handshake failed: {ev.reason}")
            elif isinstance(ev, Response | RequestFailed | RequestTimedOut):
                self.replies[ev.seq] = ev
            elif isinstance(ev, StreamRecords):
                self.blocks[ev.stream].append((ev.records.copy(), ev.seq64.copy()))
            elif isinstance(ev, SpectrumReceived):
                self.spectra.append(ev)
            elif isinstance(ev, GapDetected):
                self.gaps.append(ev)
            elif isinstance(ev, Unsolicited):
                self.unsolicited.append(ev.message)
            elif isinstance(ev, FrameDropped):
                self.dropped.append(ev)
            elif isinstance(ev, BoardRebooted):
                self.reboots.append(ev)

    async def until(self, pred: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
        end = time.monotonic() + timeout
        while True:
            self.pump_once()
            if pred():
                return
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what or pred}")
            await asyncio.sleep(0.003)

    async def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pump_once()
            await asyncio.sleep(0.003)

    async def handshake(self) -> HelloReply:
        self.hello = None
        self.write(self.conn.start_handshake(time.monotonic()))
        await self.until(lambda: self.hello is not None, what="hello_reply")
        assert self.hello is not None
        return self.hello

    def send(self, msg: BaseMessage) -> int:
        seq, data = self.conn.send_request(msg, time.monotonic())
        self.write(data)
        return seq

    async def request(self, msg: BaseMessage, timeout: float = WAIT_S) -> Response | RequestFailed:
        seq = self.send(msg)
        await self.until(lambda: seq in self.replies, timeout, f"reply to {msg.NAME}")
        ev = self.replies.pop(seq)
        assert not isinstance(ev, RequestTimedOut), f"{msg.NAME} timed out"
        return ev

    async def ok(self, msg: BaseMessage) -> Any:
        ev = await self.request(msg)
        assert isinstance(ev, Response), f"{msg.NAME} failed: {ev}"
        return ev.message

    async def fails(self, msg: BaseMessage, code: ErrorCode) -> str:
        ev = await self.request(msg)
        assert isinstance(ev, RequestFailed), f"{msg.NAME} should fail with {code.name}: {ev}"
        got = ErrorCode(ev.code).name
        assert ev.code == code, f"{msg.NAME}: expected {code.name}, got {got}: {ev.detail}"
        return ev.detail

    def ack(self, stream: Stream, seq: int) -> None:
        self.write(self.conn.send_unacked(StreamAck(stream=int(stream), seq=seq & 0xFFFFFFFF)))

    def records(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """All records of a stream received so far, ordered by (unwrapped) seq."""
        if not self.blocks[stream]:
            from firmware_protocol.messages import AGING_SAMPLE_DTYPE, SWEEP_POINT_DTYPE
            dt = AGING_SAMPLE_DTYPE if stream == Stream.AGING else SWEEP_POINT_DTYPE
            return np.zeros(0, dtype=dt), np.zeros(0, dtype=np.int64)
        recs = np.concatenate([b[0] for b in self.blocks[stream]])
        seq = np.concatenate([b[1] for b in self.blocks[stream]])
        order = np.argsort(seq, kind="stable")
        return recs[order], seq[order]

    def events(self, code: EventCode | None = None) -> list[Event]:
        return [m for m in self.unsolicited if isinstance(m, Event) and (code is None or m.code == code)]

    def sweep_done(self) -> list[SweepDone]:
        return [m for m in self.unsolicited if isinstance(m, SweepDone)]

    async def status(self) -> Status:
        st = await self.ok(GetStatus())
        assert isinstance(st, Status)
        return st

    async def fill_gaps(self, stream: Stream, through_seq: int, timeout: float = WAIT_S) -> None:
        """Replay until every record up to ``through_seq`` (unwrapped) has arrived."""
        tracker = self.conn.trackers[stream]
        end = time.monotonic() + timeout
        while True:
            self.pump_once()
            if tracker.expected is not None and tracker.expected > through_seq and not tracker.missing:
                return
            if time.monotonic() > end:
                raise AssertionError(f"{stream.name}: still missing {tracker.missing}, "
                                     f"expected {tracker.expected} <= {through_seq}")
            if tracker.missing:
                lo, hi = tracker.missing[0]
                ev = await self.request(StreamReplay(stream=int(stream), from_seq=lo & 0xFFFFFFFF,
                                                     to_seq=hi & 0xFFFFFFFF))
                assert isinstance(ev, Response), ev
            elif tracker.expected is None or tracker.expected <= through_seq:
                start = 0 if tracker.expected is None else tracker.expected
                ev = await self.request(StreamReplay(stream=int(stream), from_seq=start & 0xFFFFFFFF,
                                                     to_seq=through_seq & 0xFFFFFFFF))
                assert isinstance(ev, Response), ev
            await self.pump(0.02)


@contextlib.asynccontextmanager
async def running(layout: str = "dbsa*4", **kw: Any) -> AsyncIterator[tuple[SimServer, Host]]:
    """A started server and a handshaken host on it."""
    srv = SimServer(layout, **kw)
    url = await srv.start()
    host = Host(url)
    try:
        await host.handshake()
        yield srv, host
    finally:
        host.close()
        await srv.stop()


def sweep_msg(**kw: Any) -> SweepStart:
    base: dict[str, Any] = dict(sweep_id=1, pixel=1, start_v=0.0, stop_v=6.0, step_v=0.5, dwell_ms=5.0,
                                integration_ms=10.0, compliance_a=0.05, options=0, pd_gain=2,
                                spectrum_integration_ms=50.0)
    base.update(kw)
    return SweepStart(**base)


def aging_msg(**kw: Any) -> AgingStart:
    base: dict[str, Any] = dict(channel=0, pixel=1, current_a=4e-4, interval_ms=60_000, compliance_v=12.0,
                                pd_gain=2)
    base.update(kw)
    return AgingStart(**base)


# ---------------------------------------------------------------------------------------------
# handshake and the request/reply contract
# ---------------------------------------------------------------------------------------------


async def test_handshake_over_tcp_reports_identity_and_capabilities_match_the_layout() -> None:
    async with running("dbsa*3,otac*3", seed=5) as (srv, host):
        assert host.hello is not None
        assert host.hello.spec_hash == SPEC_HASH and host.hello.protocol_version == PROTOCOL_VERSION
        assert host.hello.boot_id == srv.board.boot_id
        assert host.hello.firmware_version.startswith("sim ")
        caps = await host.ok(GetCapabilities())
        assert isinstance(caps, Capabilities)
        assert (caps.n_substrates, caps.pixels_per_substrate, caps.n_aging_channels) == (1, 6, 6)
        assert caps.max_voltage_v == 20 and caps.spectrometer_pixels == 288
        assert caps.spectrum_kind == SpectrumKind.PHOTON_COUNTS
        assert caps.ring_depth == 200_000 and caps.board_tick_us == 1000
        wl = np.polynomial.polynomial.polyval([0, caps.spectrometer_pixels - 1], caps.wavelength_cal)
        assert 330 < wl[0] < 350 and 840 < wl[1] < 860
        assert len(caps.pd_gains_v_per_a) == 5 and caps.pd_adc_bits == 16


async def test_hello_is_answered_whatever_the_hosts_spec_hash() -> None:
    async with running() as (srv, host):
        frame = encode_frame(Hello(protocol_version=1, spec_hash=0xDEADBEEF), seq=77)
        host.write(frame)
        await host.until(lambda: 77 in host.replies or host.conn.stats.late_replies > 0, what="reply")
        assert host.conn.stats.late_replies == 1  # a hello_reply the connection did not ask for
        assert srv.board.counters.executed["hello"] == 2


async def test_every_request_gets_its_reply_or_the_specified_error() -> None:
    async with running() as (_srv, host):
        assert isinstance(await host.ok(Ping(nonce=42)), Pong)
        assert (await host.ok(Ping(nonce=43))).nonce == 43
        assert isinstance(await host.status(), Status)
        assert isinstance(await host.ok(AllOff()), Ok)
        assert isinstance(await host.ok(SetWatchdog(timeout_ms=0, policy=0)), Ok)
        await host.fails(SetWatchdog(timeout_ms=100, policy=7), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(MuxSelect(pixel=2)), Ok)
        assert "pixel 9" in await host.fails(MuxSelect(pixel=9), ErrorCode.BAD_ARGUMENT)
        await host.fails(SmuConfigure(mode=0, range_index=0xFF, compliance=math.nan, integration_ms=10),
                         ErrorCode.BAD_ARGUMENT)
        assert "max_current_a" in await host.fails(
            SmuConfigure(mode=0, range_index=0xFF, compliance=0.5, integration_ms=10), ErrorCode.LIMIT)
        await host.fails(SmuConfigure(mode=3, range_index=0xFF, compliance=0.01, integration_ms=10),
                         ErrorCode.BAD_ARGUMENT)
        await host.fails(SmuConfigure(mode=0, range_index=9, compliance=0.01, integration_ms=10),
                         ErrorCode.BAD_ARGUMENT)
        assert "integration_ms" in await host.fails(
            SmuConfigure(mode=0, range_index=0xFF, compliance=0.01, integration_ms=0), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(SmuConfigure(mode=0, range_index=0xFF, compliance=0.01,
                                                     integration_ms=10)), Ok)
        assert "max_voltage_v" in await host.fails(SmuOutput(enable=1, level=25.0), ErrorCode.LIMIT)
        await host.fails(SmuOutput(enable=1, level=math.inf), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(SmuOutput(enable=1, level=3.0)), Ok)
        assert isinstance(await host.ok(SmuMeasure()), SmuReading)
        assert isinstance(await host.ok(SmuOutput(enable=0, level=0.0)), Ok)
        assert isinstance(await host.ok(PdConfigure(pixel=0, gain_index=3, autorange=1)), Ok)
        await host.fails(PdConfigure(pixel=1, gain_index=5, autorange=1), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(PdRead(pixel=1, n=4, integration_ms=5)), PdReading)
        await host.fails(PdRead(pixel=1, n=0, integration_ms=5), ErrorCode.BAD_ARGUMENT)
        await host.fails(PdRead(pixel=0, n=1, integration_ms=5), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(SpectrumAcquire(pixel=1, integration_ms=10)), Ok)
        await host.fails(SpectrumAcquire(pixel=1, integration_ms=-1), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(SweepAbort()), Ok)  # nothing running: still ok
        await host.fails(sweep_msg(pixel=5), ErrorCode.BAD_ARGUMENT)
        assert "max_voltage_v" in await host.fails(sweep_msg(stop_v=30.0), ErrorCode.LIMIT)
        assert "max_current_a" in await host.fails(sweep_msg(compliance_a=1.0), ErrorCode.LIMIT)
        await host.fails(sweep_msg(step_v=-0.5), ErrorCode.BAD_ARGUMENT)
        await host.fails(sweep_msg(voltages_v=(1.0, math.nan)), ErrorCode.BAD_ARGUMENT)
        await host.fails(sweep_msg(options=0x80), ErrorCode.BAD_ARGUMENT)
        await host.fails(aging_msg(channel=4), ErrorCode.BAD_ARGUMENT)
        assert "max_aging_current_a" in await host.fails(aging_msg(current_a=0.2), ErrorCode.LIMIT)
        assert "aging_compliance_v" in await host.fails(aging_msg(compliance_v=16.0), ErrorCode.LIMIT)
        assert "interval_ms" in await host.fails(aging_msg(interval_ms=1), ErrorCode.BAD_ARGUMENT)
        await host.fails(aging_msg(current_a=math.nan), ErrorCode.BAD_ARGUMENT)
        await host.fails(AgingSet(channel=0, current_a=1e-4, interval_ms=0), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(AgingStop(channel=0)), Ok)
        await host.fails(AgingStop(channel=99), ErrorCode.BAD_ARGUMENT)
        await host.fails(StreamReplay(stream=7, from_seq=0, to_seq=0), ErrorCode.BAD_ARGUMENT)
        assert isinstance(await host.ok(StreamReplay(stream=0, from_seq=0, to_seq=0xFFFFFFFF)), Ok)
        # every host-to-board acknowledged message of the spec was exercised above
        acked = {m.name for m in MESSAGES if m.direction == "host_to_board" and m.acked}
        assert acked <= set(_srv.board.counters.requests) | {"get_capabilities"}


async def test_unknown_message_id_and_wrong_direction_message_get_unknown_message() -> None:
    async with running() as (srv, host):
        host.write(frame_bytes(0x7E, b"", seq=0))  # a message id this spec does not have
        host.write(encode_frame(Pong(nonce=1, t_us=2), seq=500))  # board-to-host message sent to the board
        await host.until(lambda: srv.board.counters.errors["UNKNOWN_MESSAGE"] >= 2, what="two errors")
        await host.pump(0.05)
        errs = [m for m in host.unsolicited if m.NAME == "error"]
        assert errs and errs[0].code == ErrorCode.UNKNOWN_MESSAGE and errs[0].ref_msg_id == 0x7E
        assert host.conn.stats.late_replies >= 1  # the error answering seq 500 (nobody waited for it)


async def test_smu_source_v_in_compliance_limits_the_current_and_flags_it() -> None:
    async with running() as (_srv, host):
        await host.ok(MuxSelect(pixel=1))
        await host.ok(SmuConfigure(mode=SmuMode.SOURCE_V, range_index=0xFF, compliance=1e-3,
                                   integration_ms=20))
        await host.ok(SmuOutput(enable=1, level=8.0))
        r = await host.ok(SmuMeasure())
        assert r.flags & SampleFlags.COMPLIANCE
        assert r.current_a == pytest.approx(1e-3, rel=1e-3)
        assert r.voltage_v < 7.0
        assert r.photodiode_a > 1e-9  # lit
        await host.ok(SmuConfigure(mode=SmuMode.SOURCE_I, range_index=0xFF, compliance=10.0,
                                   integration_ms=20))
        await host.ok(SmuOutput(enable=1, level=1e-4))
        r = await host.ok(SmuMeasure())
        assert not r.flags & SampleFlags.COMPLIANCE
        assert r.current_a == pytest.approx(1e-4, rel=1e-3) and 2.0 < r.voltage_v < 10.0


async def test_pd_read_of_an_unlit_pixel_is_its_dark_current() -> None:
    async with running() as (_srv, host):
        r = await host.ok(PdRead(pixel=2, n=20, integration_ms=20))
        assert 5e-12 < r.mean_a < 80e-12  # 10-50 pA at 25 °C, plus noise
        assert r.std_a < 5e-12
        assert r.gain_index == 4  # autorange went up to the most sensitive gain


async def test_spectrum_acquire_ok_value_is_the_seq_of_the_spectrum_that_follows() -> None:
    async with running() as (_srv, host):
        await host.ok(MuxSelect(pixel=1))
        await host.ok(SmuConfigure(mode=0, range_index=0xFF, compliance=0.02, integration_ms=10))
        await host.ok(SmuOutput(enable=1, level=3.5))
        values = []
        for _ in range(2):
            ok = await host.ok(SpectrumAcquire(pixel=1, integration_ms=50))
            values.append(ok.value)
        await host.until(lambda: len(host.spectra) == 2, what="2 spectra")
        assert [s.message.seq for s in host.spectra] == values == [0, 1]
        sp = host.spectra[0].message
        assert sp.sweep_id == 0xFFFF and sp.pixel == 1 and len(sp.counts) == 288
        net = np.asarray(sp.counts, float) - sp.dark_counts
        cal = (await host.ok(GetCapabilities())).wavelength_cal
        peak_nm = np.polynomial.polynomial.polyval(int(np.argmax(net)), cal)
        assert 495 < peak_nm < 525  # dbsa: green, ~508 nm
        assert net.max() > 50 * math.sqrt(sp.dark_counts)


# ---------------------------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------------------------


async def test_sweep_streams_every_point_then_sweep_done_with_consistent_seqs() -> None:
    async with running(speed=100.0) as (srv, host):
        ok = await host.ok(sweep_msg(sweep_id=9, start_v=0.0, stop_v=5.0, step_v=0.25, options=0x05,
                                     spectrum_at_v=(3.0, 4.0, 4.05), pd_gain=4))
        assert ok.value == 0  # first SWEEP seq of this sweep
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        done = host.sweep_done()[0]
        recs, seq = host.records(Stream.SWEEP)
        assert done.sweep_id == 9 and done.reason == SweepEnd.COMPLETED
        assert done.n_points == len(recs) == 42  # 21 forward (0..5 V, 5 included) + 21 reverse
        assert list(seq) == list(range(42)) and done.last_seq == 41
        assert list(recs["index"]) == list(range(42))
        assert np.all(recs["sweep_id"] == 9) and np.all(recs["pixel"] == 1)
        fwd, rev = recs[:21], recs[21:]
        assert np.allclose(fwd["voltage_set_v"], np.linspace(0, 5, 21))
        assert np.allclose(rev["voltage_set_v"], np.linspace(5, 0, 21))
        assert not np.any(fwd["flags"] & SampleFlags.REVERSE) and np.all(rev["flags"] & SampleFlags.REVERSE)
        assert np.all(np.diff(recs["t_us"].astype(np.int64)) >= 15_000)  # dwell + integration each
        assert np.any(recs["flags"] & SampleFlags.AUTORANGED)  # bit2: the photodiode autoranged
        assert recs["photodiode_a"][20] > 1e3 * recs["photodiode_a"][0]
        # spectra at the program points nearest 3.0 and 4.0 V (4.05 maps to 4.0 too)
        assert sorted(s.message.index for s in host.spectra) == [12, 16]
        assert all(s.message.sweep_id == 9 for s in host.spectra)
        st = await host.status()
        assert st.sweep_active == 0 and st.smu_output_on == 0 and st.sweep_head_seq == 42
        assert srv.board.counters.produced[Stream.SWEEP] == 42
        # the next sweep continues the SWEEP seq counter
        ok2 = await host.ok(sweep_msg(sweep_id=10, voltages_v=(2.0, 3.0)))
        assert ok2.value == 42
        await host.until(lambda: len(host.sweep_done()) == 2, what="second sweep_done")
        assert host.sweep_done()[1].last_seq == 43


async def test_sweep_ends_on_compliance_when_option_bit1_is_set() -> None:
    async with running(speed=100.0) as (_srv, host):
        await host.ok(sweep_msg(stop_v=10.0, step_v=0.25, compliance_a=2e-3, options=0x02 | 0x04))
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        done = host.sweep_done()[0]
        recs, _ = host.records(Stream.SWEEP)
        assert done.reason == SweepEnd.COMPLIANCE and done.n_points == len(recs)
        last = recs[-1]
        assert last["flags"] & SampleFlags.COMPLIANCE
        assert last["current_a"] == pytest.approx(2e-3, rel=1e-3)
        assert last["voltage_v"] < last["voltage_set_v"]
        assert not np.any(recs["flags"][:-1] & SampleFlags.COMPLIANCE)


async def test_sweep_without_bit1_keeps_going_current_limited() -> None:
    async with running(speed=100.0) as (_srv, host):
        await host.ok(sweep_msg(start_v=3.0, stop_v=8.0, step_v=1.0, compliance_a=2e-3, options=0x04))
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        recs, _ = host.records(Stream.SWEEP)
        assert host.sweep_done()[0].reason == SweepEnd.COMPLETED and len(recs) == 6
        limited = recs[recs["flags"] & SampleFlags.COMPLIANCE != 0]
        assert len(limited) >= 2 and np.allclose(limited["current_a"], 2e-3, rtol=1e-3)


async def test_sweep_breakdown_ends_the_sweep_on_a_shorted_pixel() -> None:
    async with running(speed=100.0, faults="short=px1@0s") as (_srv, host):
        await host.ok(sweep_msg(start_v=1.0, stop_v=6.0, step_v=1.0, compliance_a=0.01, breakdown_v_drop=0.5))
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        recs, _ = host.records(Stream.SWEEP)
        assert host.sweep_done()[0].reason == SweepEnd.BREAKDOWN
        assert recs[-1]["voltage_v"] < recs[-1]["voltage_set_v"] - 0.5


async def test_sweep_busy_while_running_then_abort() -> None:
    async with running(speed=1.0) as (_srv, host):
        await host.ok(sweep_msg(start_v=0.0, stop_v=4.0, step_v=1.0, dwell_ms=5_000.0))
        assert "already running" in await host.fails(sweep_msg(), ErrorCode.BUSY)
        await host.fails(SmuOutput(enable=1, level=1.0), ErrorCode.BUSY)
        await host.fails(SmuConfigure(mode=0, range_index=0xFF, compliance=0.01, integration_ms=1),
                         ErrorCode.BUSY)
        await host.fails(SmuMeasure(), ErrorCode.BUSY)
        await host.fails(MuxSelect(pixel=2), ErrorCode.BUSY)
        st = await host.status()
        assert st.sweep_active == 1 and st.smu_output_on == 1
        await host.ok(SweepAbort())
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        done = host.sweep_done()[0]
        assert done.reason == SweepEnd.ABORTED and done.n_points == 0 and done.last_seq == 0xFFFFFFFF
        st = await host.status()
        assert st.sweep_active == 0 and st.smu_output_on == 0


async def test_aging_runs_in_parallel_with_a_sweep_on_another_pixel() -> None:
    async with running(speed=1000.0) as (_srv, host):
        await host.ok(aging_msg(pixel=1, interval_ms=1000))
        await host.fails(sweep_msg(pixel=1), ErrorCode.BUSY)  # that pixel is on the aging driver
        await host.fails(MuxSelect(pixel=1), ErrorCode.BUSY)
        await host.ok(sweep_msg(pixel=2, dwell_ms=500.0, integration_ms=500.0))
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        sweep, _ = host.records(Stream.SWEEP)
        aging, _ = host.records(Stream.AGING)
        t0, t1 = int(sweep["t_us"][0]), int(sweep["t_us"][-1])
        during = aging[(aging["t_us"] > t0) & (aging["t_us"] < t1)]
        assert len(during) >= 5 and np.all(during["pixel"] == 1)


async def test_an_aged_pixel_is_dimmer_and_needs_more_voltage_in_a_later_sweep() -> None:
    async with running("oled*2", speed=1e6) as (srv, host):
        prog = dict(voltages_v=(4.0, 5.0, 6.0), options=0x04, pd_gain=2)
        await host.ok(sweep_msg(sweep_id=1, **prog))
        await host.until(lambda: len(host.sweep_done()) == 1, what="first sweep")
        await host.ok(aging_msg(pixel=1, current_a=2e-3, interval_ms=600_000))
        await host.until(lambda: srv.board.t_us > 150 * HOUR_US, what="150 h of aging")
        await host.ok(AgingStop(channel=0))
        await host.ok(sweep_msg(sweep_id=2, **prog))
        await host.until(lambda: len(host.sweep_done()) == 2, what="second sweep")
        recs, _ = host.records(Stream.SWEEP)
        fresh, aged = recs[recs["sweep_id"] == 1], recs[recs["sweep_id"] == 2]
        assert np.all(aged["photodiode_a"] < 0.8 * fresh["photodiode_a"])
        assert np.all(aged["current_a"] < fresh["current_a"])  # the aged pixel's voltage rose


# ---------------------------------------------------------------------------------------------
# aging
# ---------------------------------------------------------------------------------------------


async def test_aging_samples_follow_the_virtual_clock_for_100_hours() -> None:
    async with running("oled*2", speed=1e6) as (srv, host):
        await host.ok(aging_msg(channel=1, pixel=2, current_a=2e-3, interval_ms=60_000))
        t0 = srv.board.t_us  # the channel started at or before t0 (how long after 0 is wall time)
        await host.until(lambda: srv.board.t_us > t0 + 101 * HOUR_US, what="101 virtual hours")
        await host.ok(AgingStop(channel=1))
        await host.pump(0.05)
        recs, seq = host.records(Stream.AGING)
        assert len(recs) >= 6000
        assert np.array_equal(seq, np.arange(len(recs)))  # one gap-free AGING seq
        dt = np.diff(recs["t_us"].astype(np.int64))
        assert np.all(dt[:-1] == 60_000_000)  # every interval (the last is the stop sample)
        span_h = (int(recs["t_us"][-1]) - int(recs["t_us"][0])) / HOUR_US
        assert span_h > 100
        assert np.all(recs["channel"] == 1) and np.all(recs["pixel"] == 2)
        assert np.allclose(recs["current_a"], 2e-3, rtol=1e-3)
        assert recs["voltage_v"][-1] > recs["voltage_v"][0] + 0.01  # the voltage rises with age
        assert recs["photodiode_a"][-1] < 0.9 * recs["photodiode_a"][0]  # the light falls
        assert recs["flags"][-1] & SampleFlags.STOPPED
        assert not np.any(recs["flags"][:-1] & SampleFlags.STOPPED)
        assert np.all(np.abs(recs["temperature_c"] - 25.0) < 1.0)
        assert srv.board.counters.produced[Stream.AGING] == len(recs)


async def test_aging_channel_errors_busy_and_aging_set() -> None:
    async with running(speed=1000.0) as (_srv, host):
        await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        assert "already on aging channel 0" in await host.fails(aging_msg(channel=1, pixel=1),
                                                                ErrorCode.BAD_ARGUMENT)
        await host.fails(aging_msg(channel=0, pixel=2), ErrorCode.BUSY)
        await host.ok(AgingSet(channel=0, current_a=8e-4, interval_ms=500))
        await host.pump(0.05)
        recs, _ = host.records(Stream.AGING)
        late = recs[recs["current_a"] > 6e-4]
        assert len(late) >= 3 and np.all(np.diff(late["t_us"].astype(np.int64)) == 500_000)
        st = await host.status()
        assert st.aging_active_mask == 0b1
        await host.ok(AllOff())
        st = await host.status()
        assert st.aging_active_mask == 0
        recs, _ = host.records(Stream.AGING)
        assert recs[-1]["flags"] & SampleFlags.STOPPED


async def test_pixel_state_persists_across_stop_and_start() -> None:
    async with running("oled", speed=1e6) as (srv, host):
        await host.ok(aging_msg(current_a=2e-3, interval_ms=600_000))
        await host.until(lambda: srv.board.t_us > 60 * HOUR_US, what="60 h")
        await host.ok(AgingStop(channel=0))
        await host.pump(0.02)
        first, _ = host.records(Stream.AGING)
        await host.ok(aging_msg(current_a=2e-3, interval_ms=600_000))
        await host.until(lambda: len(host.records(Stream.AGING)[0]) > len(first) + 2, what="restart")
        recs, _ = host.records(Stream.AGING)
        restart = recs[len(first)]
        # the restarted pixel continues from where it was, not from fresh
        assert restart["photodiode_a"] < 0.98 * first["photodiode_a"][0]
        assert restart["photodiode_a"] == pytest.approx(first["photodiode_a"][-1], rel=0.05)


async def test_a_shorting_pixel_stops_its_channel_with_an_event() -> None:
    async with running("dbsa,bad", speed=1e6) as (_srv, host):
        # the "bad" preset shorts after a time that depends on the current density
        await host.ok(aging_msg(channel=1, pixel=2, current_a=1e-4, interval_ms=60_000))
        await host.until(lambda: host.events(EventCode.PIXEL_SHORT), what="PIXEL_SHORT")
        await host.pump(0.02)
        recs, _ = host.records(Stream.AGING)
        last = recs[-1]
        assert last["flags"] & SampleFlags.SHORT and last["flags"] & SampleFlags.STOPPED
        assert last["voltage_v"] < 0.5 * recs["voltage_v"][-2]  # the voltage collapsed
        assert last["photodiode_a"] < 1e-9  # dark
        t_fail_h = float(failure_time_h(PRESETS["bad"], 1e-4 / PRESETS["bad"].area_m2))
        assert int(last["t_us"] - recs["t_us"][0]) / HOUR_US == pytest.approx(t_fail_h, rel=1e-6)
        assert np.all(np.diff(recs["t_us"][:-1].astype(np.int64)) == 60_000_000)
        ev = host.events(EventCode.PIXEL_SHORT)[0]
        assert (ev.channel, ev.pixel) == (1, 2)
        assert (await host.status()).aging_active_mask == 0


async def test_injected_open_stops_the_channel_with_current_zero() -> None:
    async with running("dbsa*2", speed=1e5, faults="open=px1@1h") as (_srv, host):
        await host.ok(aging_msg(pixel=1, current_a=4e-5, interval_ms=60_000))
        await host.until(lambda: host.events(EventCode.PIXEL_OPEN), what="PIXEL_OPEN")
        await host.pump(0.02)
        recs, _ = host.records(Stream.AGING)
        last = recs[-1]
        assert last["flags"] & SampleFlags.OPEN and last["flags"] & SampleFlags.STOPPED
        assert abs(last["current_a"]) < 1e-8 and last["voltage_v"] == pytest.approx(12.0, rel=1e-3)
        assert int(last["t_us"]) == HOUR_US


async def test_aging_stops_when_the_voltage_reaches_compliance() -> None:
    async with running("oled", speed=1e6) as (_srv, host):
        caps = await host.ok(GetCapabilities())
        assert caps.aging_compliance_v == 15.0
        await host.ok(aging_msg(current_a=2e-3, interval_ms=60_000, compliance_v=12.0))
        first = None
        await host.until(lambda: len(host.records(Stream.AGING)[0]) > 0, what="first sample")
        first = float(host.records(Stream.AGING)[0]["voltage_v"][0])
        await host.ok(AgingStop(channel=0))
        await host.ok(aging_msg(current_a=2e-3, interval_ms=60_000, compliance_v=first + 0.05))
        await host.until(lambda: host.events(EventCode.COMPLIANCE), what="COMPLIANCE event")
        await host.pump(0.02)
        recs, _ = host.records(Stream.AGING)
        assert recs[-1]["flags"] & SampleFlags.COMPLIANCE and recs[-1]["flags"] & SampleFlags.STOPPED


async def test_saturated_photodiode_is_coped_with_by_autorange() -> None:
    async with running("dbsa*3", faults="saturate=pd3") as (_srv, host):
        r = await host.ok(PdRead(pixel=3, n=5, integration_ms=10))
        assert r.gain_index == 0 and r.flags & SampleFlags.AUTORANGED
        assert not r.flags & SampleFlags.PD_SATURATED
        assert r.mean_a == pytest.approx(200e-6, rel=0.01)
        await host.ok(PdConfigure(pixel=3, gain_index=2, autorange=0))
        r = await host.ok(PdRead(pixel=3, n=2, integration_ms=10))
        assert r.flags & SampleFlags.PD_SATURATED  # a fixed gain cannot cope


# ---------------------------------------------------------------------------------------------
# streams: replay, ring buffer, acknowledgements, retries
# ---------------------------------------------------------------------------------------------


async def test_replay_after_a_gap_returns_the_exact_records() -> None:
    srv = SimServer("dbsa*4", speed=1e5, seed=3)
    url = await srv.start()
    host = Host(url)
    try:
        await host.handshake()
        await host.ok(aging_msg(channel=0, pixel=1, current_a=4e-5, interval_ms=10_000))
        await host.ok(aging_msg(channel=2, pixel=3, current_a=8e-5, interval_ms=25_000))
        await host.until(lambda: len(host.records(Stream.AGING)[0]) > 200, what="200 samples")
        host.close()  # the host goes away; the board keeps sampling into its ring
        gap_from = host.conn.trackers[Stream.AGING].expected
        await asyncio.sleep(0.3)
        host.open(url)
        await host.handshake()
        st = await host.status()
        head = st.aging_head_seq
        assert head > gap_from + 100
        await host.fill_gaps(Stream.AGING, head - 1)
        recs, seq = host.records(Stream.AGING)
        assert np.array_equal(seq[: head], np.arange(head))
        # the board's ring holds byte-identical records
        ring = srv.board.aging_ring.get(0, head - 1)
        assert ring.tobytes() == recs[:head].tobytes()
        # an overlapping replay sends the very same bytes again (the host drops duplicates)
        before = host.conn.trackers[Stream.AGING].duplicates
        ok = await host.ok(StreamReplay(stream=Stream.AGING, from_seq=10, to_seq=40))
        assert ok.value == 10
        await host.until(lambda: host.conn.trackers[Stream.AGING].duplicates >= before + 31, what="dups")
        assert srv.board.counters.replayed[Stream.AGING] >= 31
        # samples are in time order, interleaving the two channels
        t = recs["t_us"][:head].astype(np.int64)
        assert np.all(np.diff(t) >= 0) and set(recs["channel"][:head]) == {0, 2}
    finally:
        host.close()
        await srv.stop()


async def test_ring_overflow_sets_the_fault_and_replay_reports_what_is_lost() -> None:
    async with running(speed=1e6, ring_depth=500) as (srv, host):
        await host.ok(aging_msg(interval_ms=10_000))
        await host.until(lambda: srv.board.aging_ring.head > 1500, what="ring wrapped")
        st = await host.status()
        assert st.faults & Fault.RING_OVERFLOW
        assert st.aging_oldest_seq == (st.aging_head_seq - 500) & 0xFFFFFFFF or \
            st.aging_head_seq - st.aging_oldest_seq == 500
        ok = await host.ok(StreamReplay(stream=Stream.AGING, from_seq=0, to_seq=0xFFFFFFFF))
        assert ok.value >= 1000  # records 0..value-1 are gone for good
        assert srv.board.aging_ring.overwritten_unacked > 0
        await host.ok(AgingStop(channel=0))
        head = (await host.status()).aging_head_seq
        host.ack(Stream.AGING, head - 1)  # the host has dealt with the loss
        await host.until(lambda: not srv.board.faults() & Fault.RING_OVERFLOW, what="fault cleared")
        assert not (await host.status()).faults & Fault.RING_OVERFLOW


async def test_acknowledged_records_are_overwritten_without_a_fault() -> None:
    async with running(speed=1e5, ring_depth=300) as (srv, host):
        await host.ok(aging_msg(interval_ms=10_000))
        for _ in range(4):
            await host.until(lambda: len(host.records(Stream.AGING)[0]) > 0, what="samples")
            await host.pump(0.1)
            _, seq = host.records(Stream.AGING)
            host.ack(Stream.AGING, int(seq[-1]))
        await host.ok(AgingStop(channel=0))
        await host.pump(0.05)
        _, seq = host.records(Stream.AGING)
        host.ack(Stream.AGING, int(seq[-1]))
        await host.pump(0.05)
        assert srv.board.aging_ring.head > 300
        assert not (await host.status()).faults & Fault.RING_OVERFLOW


async def test_aging_seq_wraps_at_2_32_and_replay_and_ack_work_across_the_wrap() -> None:
    start = 2**32 - 50
    async with running(speed=1e5, first_seq=start) as (srv, host):
        ok = await host.ok(aging_msg(interval_ms=1000))
        assert ok.value == start
        await host.until(lambda: srv.board.aging_ring.head > 2**32 + 100, what="past the wrap")
        await host.ok(AgingStop(channel=0))
        await host.pump(0.05)
        recs, seq = host.records(Stream.AGING)
        assert recs["seq"][0] == start and (recs["seq"] == 0).any()
        assert np.all(np.diff(seq) == 1)  # the host's unwrapped seqs are contiguous
        before = host.conn.trackers[Stream.AGING].duplicates
        ok = await host.ok(StreamReplay(stream=Stream.AGING, from_seq=2**32 - 10, to_seq=10))
        assert ok.value == 2**32 - 10
        await host.until(lambda: host.conn.trackers[Stream.AGING].duplicates == before + 21, what="21 dups")
        st = await host.status()
        assert st.aging_head_seq == (srv.board.aging_ring.head & 0xFFFFFFFF) < 1000
        host.ack(Stream.AGING, 5)
        await host.pump(0.02)
        assert srv.board.aging_ring.acked == 2**32 + 5


async def test_a_retried_request_is_answered_from_cache_not_executed_twice() -> None:
    async with running(speed=1.0) as (srv, host):
        frame = encode_frame(aging_msg(interval_ms=1000), seq=900)
        host.keep_raw = True
        host.write(frame)
        await host.pump(0.1)
        retry = frame_bytes(0x18, frame_payload(frame), seq=900, flags=FrameFlags.RETRY)
        host.write(retry)
        await host.pump(0.1)
        replies = [r for r in split_frames(bytes(host.raw_in)) if r[1] == 900]
        assert len(replies) == 2 and replies[0] == replies[1]  # the same ok twice, not BUSY
        assert srv.board.counters.executed["aging_start"] == 1
        assert srv.board.counters.resends == 1


async def test_a_retry_of_a_request_still_executing_is_ignored() -> None:
    async with running(speed=1.0) as (srv, host):
        seq = host.send(PdRead(pixel=1, n=5, integration_ms=100.0))  # 0.5 s of board time
        await host.pump(0.05)
        frame = encode_frame(PdRead(pixel=1, n=5, integration_ms=100.0), seq=seq)
        host.write(frame_bytes(0x1C, frame_payload(frame), seq=seq, flags=FrameFlags.RETRY))
        await host.until(lambda: seq in host.replies, what="pd_reading")
        await host.pump(0.1)
        assert isinstance(host.replies[seq], Response)
        assert srv.board.counters.executed["pd_read"] == 1
        assert srv.board.counters.retries_ignored >= 1
        assert host.conn.stats.late_replies == 0  # exactly one reply


def frame_payload(frame: bytes) -> bytes:
    from cobs import cobs

    raw = cobs.decode(frame[:-1])
    return raw[7:-4]


def split_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(msg_id, seq, raw frame) of every frame in a byte stream."""
    from cobs import cobs

    out = []
    for chunk in data.split(b"\x00"):
        if not chunk:
            continue
        with contextlib.suppress(cobs.DecodeError):
            raw = cobs.decode(chunk)
            out.append((raw[1], int.from_bytes(raw[3:5], "little"), raw))
    return [(mid, seq, raw) for mid, seq, raw in out if raw[2] & 0x01]


# ---------------------------------------------------------------------------------------------
# interlock and watchdog
# ---------------------------------------------------------------------------------------------


async def test_interlock_turns_every_output_off_and_refuses_output_commands() -> None:
    async with running(speed=1.0) as (srv, host):
        await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        await host.ok(sweep_msg(pixel=2, dwell_ms=10_000.0))
        srv.board.set_interlock(True)  # the interlock switch opens (between two board ticks)
        await host.until(lambda: host.events(EventCode.INTERLOCK_OPEN) and host.sweep_done(), what="trip")
        assert host.sweep_done()[0].reason == SweepEnd.INTERLOCK
        stopped = host.events(EventCode.CHANNEL_STOPPED)
        assert stopped and stopped[0].channel == 0 and stopped[0].detail == "interlock"
        recs, _ = host.records(Stream.AGING)
        assert recs[-1]["flags"] & SampleFlags.STOPPED
        st = await host.status()
        assert st.interlock_closed == 0 and st.faults & Fault.INTERLOCK_OPEN
        assert st.aging_active_mask == 0 and st.smu_output_on == 0 and st.sweep_active == 0
        await host.fails(SmuOutput(enable=1, level=1.0), ErrorCode.INTERLOCK)
        await host.fails(sweep_msg(), ErrorCode.INTERLOCK)
        await host.fails(aging_msg(), ErrorCode.INTERLOCK)
        await host.ok(SmuOutput(enable=0, level=0.0))  # switching off is always fine
        await host.ok(AllOff())
        await host.ok(PdRead(pixel=1, n=1, integration_ms=1))  # measuring is not an output
        srv.board.set_interlock(False)
        await host.until(lambda: host.events(EventCode.INTERLOCK_CLOSED), what="closed")
        st = await host.status()
        assert st.interlock_closed == 1 and not st.faults & Fault.INTERLOCK_OPEN
        assert st.aging_active_mask == 0  # nothing restarts by itself
        await host.ok(aging_msg())


async def test_watchdog_go_safe_stops_everything_when_the_host_is_silent() -> None:
    async with running(speed=100.0) as (srv, host):
        await host.ok(aging_msg(interval_ms=1000))
        await host.ok(SetWatchdog(timeout_ms=150, policy=WatchdogPolicy.GO_SAFE))
        # the host keeps reading but sends nothing
        await host.until(lambda: host.events(EventCode.WATCHDOG_EXPIRED), what="watchdog")
        await host.until(lambda: host.events(EventCode.CHANNEL_STOPPED), what="channel stopped")
        st = await host.status()
        assert st.faults & Fault.WATCHDOG_EXPIRED and st.aging_active_mask == 0
        assert srv.board.counters.watchdog_expiries == 1
        await host.ok(SetWatchdog(timeout_ms=0, policy=0))
        assert not (await host.status()).faults & Fault.WATCHDOG_EXPIRED


async def test_watchdog_keep_aging_switches_off_the_smu_only() -> None:
    async with running(speed=100.0) as (_srv, host):
        await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        await host.ok(MuxSelect(pixel=2))
        await host.ok(SmuOutput(enable=1, level=3.0))
        await host.ok(SetWatchdog(timeout_ms=150, policy=WatchdogPolicy.KEEP_AGING))
        await host.until(lambda: host.events(EventCode.WATCHDOG_EXPIRED), what="watchdog")
        st = await host.status()
        assert st.smu_output_on == 0 and st.aging_active_mask == 1


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def _scripted_run(seed: int) -> bytes:
    """Drive a bare Board with a fixed script in virtual time; returns every byte it sent."""
    board = Board(layout_from_presets("dbsa*2"), seed=seed)
    board.set_link(True)
    host = Connection()
    out = bytearray()
    t = 0

    def step(data: bytes, dt_us: int) -> None:
        nonlocal t
        board.receive(data, 0.0)
        t += dt_us
        board.advance(t)
        for fr, _ in board.take_frames():
            out.extend(fr)
            host.receive_data(fr)

    step(host.start_handshake(0.0), 1000)
    for msg in (aging_msg(interval_ms=1000), sweep_msg(pixel=2, spectrum_at_v=(4.0,)),
                PdRead(pixel=2, n=3, integration_ms=10)):
        _, data = host.send_request(msg, 0.0)
        step(data, 1000)
    step(b"", 60_000_000)
    return bytes(out)


def test_same_seed_same_bytes_other_seed_other_noise() -> None:
    a, b, c = _scripted_run(11), _scripted_run(11), _scripted_run(12)
    assert a == b
    assert a != c and len(a) > 2_000


# ---------------------------------------------------------------------------------------------
# aging samples: computed for every due channel at once, the same records as one at a time
# ---------------------------------------------------------------------------------------------

AGING_REFERENCE = Path(__file__).parent / "data" / "aging_reference.npz"
"""Records of :func:`_aging_scenario` written by the simulator as it was before the aging samples
were vectorised (one ``_aging_block`` call per channel); see :func:`_aging_reference_subset`.
Only when the physics or the noise model is meant to change, rewrite it with
``np.savez_compressed(AGING_REFERENCE, records=_aging_reference_subset(_aging_scenario()))``."""


def _aging_scenario(board_cls: type[Board] = Board) -> np.ndarray:
    """Every aging record of a fixed virtual-time script on a bare Board, in seq order.

    Three substrates of mixed presets (one pixel of another area), twelve channels at many
    intervals and start gains (autorange up and down), a saturating photodiode, a preset short,
    forced short and open, a compliance stop, aging_set and aging_stop, an interlock that stops
    everything and restarts after it; 2 ms steps (one or two samples per channel and step), then
    long steps (hundreds of samples per channel).
    """
    doc = {"substrate": [
        {"pixels": [{"preset": "dbsa"}, {"preset": "dbsa", "area_mm2": 2.25}, {"preset": "dbsa"},
                    {"preset": "otac"}, {"preset": "otac"}, {"preset": "oled"}]},
        {"pixels": [{"preset": "oled"}, {"preset": "oled"}, {"preset": "bad"}, {"preset": "bad"},
                    {"preset": "dbsa"}, {"preset": "otac"}]},
        {"pixels": [{"preset": "dbsa"}, {"preset": "otac"}, {"preset": "oled"}, {"preset": "bad"},
                    {"preset": "dbsa"}, {"preset": "dbsa"}]},
    ]}
    plan = parse_faults("saturate=pd3,short=px5@20m,open=px8@40m,interlock=5h+10s")
    board = board_cls(parse_layout(doc), seed=2024, faults=plan, n_aging_channels=12,
                      ring_depth=1_000_000)
    seq = 0

    def send(*msgs: BaseMessage) -> None:
        nonlocal seq
        for m in msgs:
            seq += 1
            board.receive(encode_frame(m, seq), 0.0)

    def run(step_us: int, n: int) -> None:
        for _ in range(n):
            board.advance(board.t_us + step_us)
            board.take_frames()

    comp_v = board.capabilities().aging_compliance_v
    tight_v = board.pixels[12].fresh_at_current(4e-4).voltage_v + 0.05  # px13 reaches compliance
    # (channel, pixel, current A, interval ms, pd gain, compliance V)
    starts = [(0, 1, 8e-5, 12, 2, comp_v), (1, 2, 1e-3, 20, 0, comp_v), (2, 3, 4e-4, 15, 4, comp_v),
              (3, 4, 4e-4, 12, 2, comp_v), (4, 5, 4e-4, 13, 1, comp_v), (5, 6, 2e-4, 17, 3, comp_v),
              (6, 8, 2e-4, 11, 2, comp_v), (7, 9, 2e-3, 25, 2, comp_v), (8, 10, 1e-4, 10, 4, comp_v),
              (9, 13, 4e-4, 14, 2, tight_v), (10, 14, 6e-4, 19, 0, comp_v)]
    send(*(AgingStart(channel=c, pixel=p, current_a=i, interval_ms=ms, compliance_v=v, pd_gain=g)
           for c, p, i, ms, g, v in starts))
    run(2000, 600)
    send(AgingStart(channel=11, pixel=16, current_a=3e-4, interval_ms=10, compliance_v=comp_v, pd_gain=1))
    run(1700, 300)
    send(AgingStop(channel=3), AgingSet(channel=0, current_a=2e-4, interval_ms=0))
    run(3000, 200)
    send(AgingStart(channel=3, pixel=4, current_a=5e-4, interval_ms=30_000, compliance_v=comp_v, pd_gain=2))
    send(*(AgingSet(channel=c, current_a=i, interval_ms=ms)
           for c, i, ms in [(0, 2e-4, 20_000), (1, 1e-3, 30_000), (2, 4e-4, 15_000), (4, 4e-4, 10_000),
                            (5, 2e-4, 45_000), (6, 2e-4, 60_000), (7, 2e-3, 25_000), (8, 1e-4, 40_000),
                            (9, 4e-4, 35_000), (10, 6e-4, 50_000), (11, 3e-4, 20_000)]))
    run(997_000_003, 21)  # through the faults and the interlock
    run(13 * 60_000_000, 30)
    send(*(AgingStart(channel=c, pixel=p, current_a=i, interval_ms=30_000, compliance_v=comp_v, pd_gain=2)
           for c, p, i in [(0, 1, 2e-4), (5, 7, 3e-4), (7, 11, 5e-4), (11, 17, 4e-4)]))
    run(HOUR_US // 3, 6)
    assert board.aging_mask() == 0b1000_1010_0001  # the restarts ran
    ring = board.aging_ring
    return ring.get(ring.base, ring.head - 1)


def _aging_reference_subset(recs: np.ndarray) -> np.ndarray:
    """What the saved reference keeps (to stay small): every flagged record and every 7th."""
    return recs[(recs["flags"] != 0) | (recs["seq"] % 7 == 0)]


def _aging_block_one_channel_at_a_time(board: Board, ch: AgingChannel, times: np.ndarray) -> np.ndarray:
    """REFERENCE: ``Board._aging_block`` as it was before the samples were vectorised across
    channels (one call per channel; copied verbatim but for ``self`` -> ``board``)."""
    n = len(times)
    px = ch.pixel
    dose = ch.dose_at(times)
    ratio, dv, code = px.aging_arrays(dose)
    i_set = ch.current_a
    short = code == FailureMode.SHORT
    opened = code == FailureMode.OPEN
    v_true = np.where(short, i_set * px.preset.failure.short_resistance_ohm, ch.fresh.voltage_v + dv)
    v_true = np.where(opened, ch.compliance_v, v_true)
    v_true = np.minimum(v_true, ch.compliance_v)
    i_true = np.where(opened, 0.0, i_set)
    temp = float(board.thermal.substrate_c(board._substrate_power())[px.spec.substrate])
    pd_true = ch.fresh.pd_signal_a * ratio + board.photodiodes.background_a(px.number, temp)
    z = ch.rng.standard_normal((n, 4))
    cfg = board.cfg
    rec = np.zeros(n, dtype=AGING_SAMPLE_DTYPE)
    rec["t_us"] = times
    rec["channel"] = ch.index
    rec["pixel"] = px.number
    rec["current_a"] = i_true * (1.0 + cfg.smu_noise_rel * z[:, 0]) + 1e-9 * z[:, 0]
    rec["voltage_v"] = v_true * (1.0 + cfg.smu_noise_rel * z[:, 1]) + 1e-5 * z[:, 1]
    pd, gains, flags, ch.gain = board.photodiodes.read(pd_true, ch.gain, True, z[:, 2],
                                                       cfg.aging_pd_integration_ms)
    rec["photodiode_a"] = pd
    rec["pd_gain"] = gains
    flags = flags | np.where(short, np.uint8(SampleFlags.SHORT), np.uint8(0))
    flags = flags | np.where(opened, np.uint8(SampleFlags.OPEN), np.uint8(0))
    at_comp = (v_true >= ch.compliance_v) & ~opened
    flags = flags | np.where(at_comp, np.uint8(SampleFlags.COMPLIANCE), np.uint8(0))
    rec["flags"] = flags
    rec["temperature_c"] = temp + cfg.temperature_noise_c * z[:, 3]
    return rec


class _OneChannelAtATimeBoard(Board):
    """A Board whose aging samples come from the reference, channel after channel."""

    calls = 0

    def _aging_samples(self, due: Any) -> np.ndarray:
        type(self).calls += 1
        return np.concatenate([_aging_block_one_channel_at_a_time(self, ch, t) for ch, t in due])


def _assert_same_records(got: np.ndarray, want: np.ndarray, float_ulps: int = 0) -> None:
    assert got.dtype == want.dtype and len(got) == len(want)
    for name in want.dtype.names or ():
        if want.dtype[name].kind == "f" and float_ulps:
            np.testing.assert_array_max_ulp(got[name], want[name], maxulp=float_ulps)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_aging_samples_of_all_channels_at_once_are_those_of_one_channel_at_a_time() -> None:
    _OneChannelAtATimeBoard.calls = 0
    want = _aging_scenario(_OneChannelAtATimeBoard)
    assert _OneChannelAtATimeBoard.calls > 100  # the reference really made the samples
    got = _aging_scenario()
    _assert_same_records(got, want)  # bit for bit: same arithmetic per sample, same draws
    # the script covered what the vectorised path must get right
    flags = np.bitwise_or.reduce(got["flags"])
    for f in (SampleFlags.SHORT, SampleFlags.OPEN, SampleFlags.COMPLIANCE, SampleFlags.STOPPED,
              SampleFlags.AUTORANGED):
        assert flags & f, f.name
    _, per_t = np.unique(got["t_us"], return_counts=True)
    assert per_t.max() >= 3  # several channels sampled at one time
    assert len(np.unique(got["pd_gain"])) >= 3


def test_aging_samples_match_the_records_saved_before_vectorising() -> None:
    """Against records written by the simulator before this code existed (tests/data)."""
    # saved under protocol 1 (u8 channel and pixel): the same values in today's layout
    want = np.load(AGING_REFERENCE)["records"].astype(AGING_SAMPLE_DTYPE)
    # one float32 ulp: another CPU's libm may round a float64 differently in the last bit
    _assert_same_records(_aging_reference_subset(_aging_scenario()), want, float_ulps=1)


def test_aging_arrays_of_many_pixels_equal_each_pixels_own() -> None:
    pixels = [Pixel(spec) for spec in layout_from_presets("dbsa,otac,oled,bad,dbsa,bad").pixels]
    pixels[4].forced = FailureMode.OPEN
    pixels[1].forced = FailureMode.SHORT
    rng = np.random.default_rng(3)
    owner = rng.integers(0, len(pixels), 400)
    dose = rng.uniform(-1.0, 60.0, 400) * rng.choice([1e-3, 1.0, 100.0], 400)
    for chosen in (pixels, pixels[:1], [pixels[0], pixels[4]]):  # mixed presets, one, one forced
        own = owner % len(chosen)
        ratio, dv, code = aging_arrays_of(chosen, own, dose)
        for k, px in enumerate(chosen):
            r1, dv1, c1 = px.aging_arrays(dose[own == k])
            np.testing.assert_array_equal(ratio[own == k], r1)
            np.testing.assert_array_equal(dv[own == k], dv1)
            np.testing.assert_array_equal(code[own == k], c1)


def test_photodiode_read_blocks_equal_one_read_per_block() -> None:
    cfg = HardwareConfig()
    pds = Photodiodes(cfg, 4, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 6, 200)
    gain = rng.integers(0, len(cfg.pd_gains_v_per_a), 200)
    n = int(counts.sum())
    i_true = 10.0 ** rng.uniform(-12, -3, n)  # from the noise floor to saturating every gain
    z = rng.standard_normal(n)
    vals, gains, flags, last = pds.read_blocks(i_true, counts, gain, z, 100.0)
    stepped = 0
    for j, (lo, hi) in enumerate(zip(np.cumsum(counts) - counts, np.cumsum(counts), strict=True)):
        v1, g1, f1, last1 = pds.read(i_true[lo:hi], int(gain[j]), True, z[lo:hi], 100.0)
        np.testing.assert_array_equal(vals[lo:hi], v1)
        np.testing.assert_array_equal(gains[lo:hi], g1)
        np.testing.assert_array_equal(flags[lo:hi], f1)
        assert last[j] == last1
        stepped += last1 != gain[j]
    assert 0 < stepped < len(counts)  # both paths taken: blocks that keep and that step their gain
