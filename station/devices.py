"""The board as typed devices: what a procedure measures with, not the messages it sends.

In the spirit of ophyd's devices: each instrument of the board (the SMU and its multiplexer,
the photodiode, the spectrometer, the on-board sweep program, the aging drivers) is an object
with the operations a measurement uses — ``smu.configure(...)``, ``pd.read(...)``,
``spectrometer.acquire(...)`` — over :meth:`BoardLink.request`. The wire messages
(``firmware_protocol.messages``) are built here and nowhere else in the procedures.

Every operation that switches something off takes ``best_effort``: on a path out (an error,
a cancellation, the link down) it is tried once, waiting at most ``BEST_EFFORT_WAIT_UP_S`` for
the link and ``BEST_EFFORT_TIMEOUT_S`` in all, and a failure is swallowed — the next step of the
cleanup still runs (the board's own watchdog switches everything off if the host is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_protocol.base import BaseMessage
from firmware_protocol.messages import (
    AgingSet,
    AgingStart,
    AgingStop,
    AllOff,
    GetStatus,
    MuxSelect,
    PdRead,
    PdReading,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
    SpectrumAcquire,
    Status,
    SweepAbort,
    SweepStart,
)
from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.spec import SmuMode, Stream

from .acquisition import Acquisition
from .link import BoardError, BoardLink, EventListener, LinkDown, RequestTimeout

BEST_EFFORT_WAIT_UP_S = 5.0
"""A best-effort request waits this long for a link that is down..."""
BEST_EFFORT_TIMEOUT_S = 10.0
"""... and this long in all."""
ALL_OFF_WAIT_UP_S = 2.0
ALL_OFF_TIMEOUT_S = 5.0
SPECTRUM_TIMEOUT_S = 120.0
"""The longest wait for a spectrum record after the board accepted its acquisition."""
AUTORANGE = 0xFF
"""``range_index`` for the SMU's autorange."""

SWEEP_REVERSE = 1
SWEEP_STOP_ON_COMPLIANCE = 2
SWEEP_AUTORANGE = 4
"""``sweep_start.options`` bits (docs/protocol.md)."""


async def _send(link: BoardLink, msg: BaseMessage, best_effort: bool) -> None:
    """One request whose reply is a plain Ok; on a path out (``best_effort``) its failure is
    swallowed."""
    if not best_effort:
        await link.request(msg)
        return
    with contextlib.suppress(BoardError, LinkDown, RequestTimeout, TimeoutError):
        await asyncio.wait_for(link.request(msg, wait_up_s=BEST_EFFORT_WAIT_UP_S),
                               BEST_EFFORT_TIMEOUT_S)


@dataclass(frozen=True)
class Mux:
    """The multiplexer that connects one pixel to the SMU and its photodiode."""

    link: BoardLink

    async def select(self, pixel: int) -> None:
        await _send(self.link, MuxSelect(pixel=pixel), False)

    async def off(self, *, best_effort: bool = False) -> None:
        """Every pixel disconnected (the mux open)."""
        await _send(self.link, MuxSelect(pixel=0), best_effort)


@dataclass(frozen=True)
class Smu:
    """The source-measure unit on the selected pixel."""

    link: BoardLink

    async def configure(self, mode: SmuMode, *, compliance: float, integration_ms: float,
                        range_index: int = AUTORANGE) -> None:
        """Source voltage (compliance in A) or current (compliance in V)."""
        await _send(self.link, SmuConfigure(mode=int(mode), range_index=range_index,
                                            compliance=compliance, integration_ms=integration_ms),
                    False)

    async def source(self, level: float) -> None:
        """Output on at ``level`` (V or A, as configured)."""
        await _send(self.link, SmuOutput(enable=1, level=level), False)

    async def off(self, *, best_effort: bool = False) -> None:
        await _send(self.link, SmuOutput(enable=0, level=0.0), best_effort)

    async def measure(self) -> SmuReading:
        return await self.link.request(SmuMeasure(), SmuReading)


@dataclass(frozen=True)
class Photodiode:
    """The photodiode above each pixel, read through its transimpedance amplifier."""

    link: BoardLink

    async def read(self, pixel: int, *, n: int, integration_ms: float) -> PdReading:
        """Mean and standard deviation of ``n`` readings (the dark current when nothing drives
        the pixel)."""
        return await self.link.request(PdRead(pixel=pixel, n=n, integration_ms=integration_ms),
                                       PdReading)


@dataclass(frozen=True)
class Spectrometer:
    """The spectrometer: a spectrum arrives as a record of the SPECTRUM stream."""

    link: BoardLink
    acq: Acquisition

    async def acquire(self, pixel: int, integration_ms: float) -> tuple[SpectrumMsg, int]:
        """One spectrum of ``pixel`` at ``integration_ms``: the record and its host seq. The
        board's reply names the record's seq; the record is fetched again if it is lost."""
        ok = await self.link.request(SpectrumAcquire(pixel=pixel, integration_ms=integration_ms))
        fut = self.acq.wait_spectrum(ok.value)
        self.link.note_head(Stream.SPECTRUM, (ok.value + 1) & 0xFFFFFFFF)
        return await asyncio.wait_for(fut, SPECTRUM_TIMEOUT_S)


@dataclass(frozen=True)
class SweepProgram:
    """The board's own J–V–L sweep (one program, never a host round trip per point)."""

    link: BoardLink

    async def start(self, *, sweep_id: int, pixel: int, start_v: float, stop_v: float,
                    step_v: float, voltages_v: Sequence[float], dwell_ms: float,
                    integration_ms: float, compliance_a: float, reverse: bool,
                    stop_on_compliance: bool, autorange: bool, pd_gain: int,
                    spectrum_at_v: Sequence[float], spectrum_integration_ms: float,
                    breakdown_v_drop: float) -> None:
        options = ((SWEEP_REVERSE if reverse else 0)
                   | (SWEEP_STOP_ON_COMPLIANCE if stop_on_compliance else 0)
                   | (SWEEP_AUTORANGE if autorange else 0))
        await _send(self.link, SweepStart(
            sweep_id=sweep_id, pixel=pixel, start_v=start_v, stop_v=stop_v, step_v=step_v,
            voltages_v=tuple(voltages_v), dwell_ms=dwell_ms, integration_ms=integration_ms,
            compliance_a=compliance_a, options=options, pd_gain=pd_gain,
            spectrum_at_v=tuple(spectrum_at_v), spectrum_integration_ms=spectrum_integration_ms,
            breakdown_v_drop=breakdown_v_drop), False)

    async def off(self, *, best_effort: bool = False) -> None:
        """Abort the running sweep program."""
        await _send(self.link, SweepAbort(), best_effort)


@dataclass(frozen=True)
class AgingDriver:
    """One aging channel: a constant current on its pixel, sampled every ``interval_ms``."""

    link: BoardLink
    channel: int
    pixel: int
    current_a: float
    interval_ms: int
    compliance_v: float
    pd_gain: int

    async def start(self) -> None:
        """(Re)start the channel: its schedule starts afresh."""
        await _send(self.link, AgingStart(channel=self.channel, pixel=self.pixel,
                                          current_a=self.current_a, interval_ms=self.interval_ms,
                                          compliance_v=self.compliance_v, pd_gain=self.pd_gain),
                    False)

    async def rearm(self) -> None:
        """Set the running channel's current and interval again (restarts its schedule)."""
        await _send(self.link, AgingSet(channel=self.channel, current_a=self.current_a,
                                        interval_ms=self.interval_ms), False)

    async def off(self, *, best_effort: bool = False) -> None:
        await _send(self.link, AgingStop(channel=self.channel), best_effort)


@dataclass(frozen=True)
class Board:
    """The board's devices over one link (cheap to make: it holds no state of its own)."""

    link: BoardLink
    acq: Acquisition

    @property
    def mux(self) -> Mux:
        return Mux(self.link)

    @property
    def smu(self) -> Smu:
        return Smu(self.link)

    @property
    def pd(self) -> Photodiode:
        return Photodiode(self.link)

    @property
    def spectrometer(self) -> Spectrometer:
        return Spectrometer(self.link, self.acq)

    @property
    def sweeper(self) -> SweepProgram:
        return SweepProgram(self.link)

    def aging_driver(self, *, channel: int, pixel: int, current_a: float, interval_ms: int,
                     compliance_v: float, pd_gain: int) -> AgingDriver:
        return AgingDriver(self.link, channel, pixel, current_a, interval_ms, compliance_v, pd_gain)

    async def status(self, *, wait_up_s: float | None = 30.0) -> Status:
        return await self.link.request(GetStatus(), Status, wait_up_s=wait_up_s)

    async def all_off(self) -> None:
        """Best effort: everything off, shielded from a cancellation of the caller."""
        await all_outputs_off(self.link)

    async def sync(self, stream: Stream, head32: int, timeout_s: float = 120.0) -> None:
        await sync_stream(self.link, stream, head32, timeout_s)

    def listen(self, fn: EventListener) -> None:
        self.link.add_listener(fn)

    def unlisten(self, fn: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self.link._listeners.remove(fn)


async def all_outputs_off(link: BoardLink) -> None:
    """Best effort: everything off. Used on every path out."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(link.request(AllOff(), wait_up_s=ALL_OFF_WAIT_UP_S)),
                               ALL_OFF_TIMEOUT_S)


async def sync_stream(link: BoardLink, stream: Stream, head32: int, timeout_s: float = 120.0) -> None:
    """Wait until every record of ``stream`` before the board's ``head32`` has arrived.

    A gap is only visible when a later record arrives; records lost at the very end of a burst
    are declared missing here, and the link's repair loop fetches them.
    """
    link.note_head(stream, head32)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while link.missing_before(stream, head32) > 0:
        if loop.time() > deadline:
            raise RequestTimeout(f"{link.missing_before(stream, head32)} {stream.name} records "
                                 f"before {head32} did not arrive within {timeout_s:g} s")
        await asyncio.sleep(0.02)
