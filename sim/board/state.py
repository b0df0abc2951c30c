"""The board's state: its constants, its parts (pixels, photodiodes, spectrometer, rings) and
what a reset does to them (:class:`BoardState`, the bottom layer of :class:`sim.board.Board`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.board.aging import AgingChannel
    from sim.board.link import RunningRequest
    from sim.board.sweep import SweepRun

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.base import BaseMessage
from firmware_protocol.board import Request
from firmware_protocol.channels import MAX_AGING_CHANNELS as SPEC_MAX_AGING_CHANNELS
from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
    SWEEP_POINT_DTYPE,
    Spectrum,
)
from firmware_protocol.spec import (
    AGING_INTERVAL_MS,
    DWELL_MS,
    INTEGRATION_MS,
    MESSAGES_BY_NAME,
    PD_READS,
    SPECTRUM_INTEGRATION_MS,
    ErrorCode,
    Fault,
    Stream,
    WatchdogPolicy,
)
from firmware_protocol.spec import MAX_SWEEP_POINTS as SPEC_MAX_SWEEP_POINTS
from sim.board.endpoint import SimEndpoint
from sim.faults import SATURATE_STRAY_A, FaultEvent, FaultPlan
from sim.hardware import (
    SEQ_MASK,
    HardwareConfig,
    MessageRing,
    Photodiodes,
    Pixel,
    RecordRing,
    SmuState,
    Spectrometer,
    Thermal,
)
from sim.layout import Layout

SIM_VERSION = "0.1.0"
FIRMWARE_VERSION = f"sim {SIM_VERSION}"
DEFAULT_RING_DEPTH = 200_000
SWEEP_RING_DEPTH = 20_000
SPECTRUM_RING_DEPTH = 256
MAX_AGING_CHANNELS = SPEC_MAX_AGING_CHANNELS  # channel numbers are u16; a status names up to 1024
# the ranges of the spec (firmware_protocol/spec.py), reported in capabilities
MIN_AGING_INTERVAL_MS = int(AGING_INTERVAL_MS.lo)
MAX_AGING_INTERVAL_MS = int(AGING_INTERVAL_MS.hi)
MAX_SWEEP_POINTS = SPEC_MAX_SWEEP_POINTS  # forward program; the reverse scan may double it
MAX_INTEGRATION_MS = INTEGRATION_MS.hi  # HardwareConfig.max_integration_ms may narrow it
MAX_DWELL_MS = DWELL_MS.hi
MAX_SPECTRUM_INTEGRATION_MS = SPECTRUM_INTEGRATION_MS.hi
MAX_PD_READS = int(PD_READS.hi)
MAX_SAMPLES_PER_ADVANCE = 50_000
"""Work budget per :meth:`Board.advance` call; beyond it the board stops short (the clock slips)."""

NO_SEQ = SEQ_MASK
NO_SWEEP_ID = 0xFFFF
NONE_CHANNEL = 0xFFFF


def max_records(msg_name: str) -> int:
    (f,) = (f for f in MESSAGES_BY_NAME[msg_name].fields if f.type == "records")
    return f.max_len


AGING_PER_FRAME = max_records("aging_samples")
SWEEP_PER_FRAME = max_records("sweep_points")


class CommandError(Exception):
    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail



@dataclass(frozen=True)
class LinkAction:
    """The link must drop now (``kind`` disconnect or reboot) for the given time."""

    kind: str
    virtual_us: int
    min_wall_s: float



@dataclass
class BoardCounters:
    """What the board did, for tests to compare with what a host saw."""

    produced: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    """Records produced per stream (replays not counted), whether or not a host was connected."""
    replayed: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    frames_built: int = 0
    valid_frames_in: int = 0
    frame_errors_in: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    """Requests processed (executed or refused with an error), by message name."""
    executed: Counter[str] = field(default_factory=Counter)
    """Requests executed successfully, by name (a cached resend or an ignored retry is not counted)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Error replies sent, by ErrorCode name."""
    unsent: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    """Records whose frames were discarded before they left the board (a reset or a dropped
    link with frames still queued; a full TX buffer): no host can know of them but by a replay."""
    epoch_produced: list[dict[Stream, int]] = field(default_factory=list)
    """At each reboot that lost the rings: records produced per stream in the epoch it ended."""
    resends: int = 0
    retries_ignored: int = 0
    events: Counter[str] = field(default_factory=Counter)
    reboots: int = 0
    watchdog_expiries: int = 0
    steps_capped: int = 0


class BoardState:
    """What the board holds: configuration, parts, rings, volatile state (reset by a reboot)."""

    def __init__(self, layout: Layout, *, seed: int = 0, faults: FaultPlan | None = None,
                 ring_depth: int = DEFAULT_RING_DEPTH, reboot_loses_ring: bool = False,
                 n_aging_channels: int | None = None, first_seq: int = 0,
                 hardware: HardwareConfig | None = None) -> None:
        self.layout = layout
        self.cfg = hardware or HardwareConfig()
        self.plan = faults or FaultPlan()
        self.plan.check_pixels(layout.n_pixels)
        if ring_depth < 1:
            raise ValueError("ring_depth must be >= 1")
        self.ring_depth = int(ring_depth)
        self.reboot_loses_ring = reboot_loses_ring
        n_ch = min(layout.n_pixels, MAX_AGING_CHANNELS) if n_aging_channels is None else n_aging_channels
        if not 1 <= n_ch <= MAX_AGING_CHANNELS:
            raise ValueError(f"n_aging_channels must be 1..{MAX_AGING_CHANNELS}")
        self.n_channels = n_ch
        self.seed = int(seed)
        ss = np.random.SeedSequence(self.seed)
        (s_id, s_pd, s_sweep, s_smu, s_read, s_spec, s_temp, s_ch) = ss.spawn(8)
        self._rng_id = np.random.default_rng(s_id)
        self._rng_sweep = np.random.default_rng(s_sweep)
        self._rng_smu = np.random.default_rng(s_smu)
        self._rng_read = np.random.default_rng(s_read)
        self._rng_spec = np.random.default_rng(s_spec)
        self._rng_temp = np.random.default_rng(s_temp)
        self._rng_ch = [np.random.default_rng(s) for s in s_ch.spawn(n_ch)]
        self.serial_number = layout.serial_number or f"SIM-{self.seed & 0xFFFFFFFF:08X}"
        self.pixels = [Pixel(p) for p in layout.pixels]
        self.photodiodes = Photodiodes(self.cfg, layout.n_pixels, np.random.default_rng(s_pd),
                                       self.plan.saturate_pixels, SATURATE_STRAY_A)
        self.spectrometer = Spectrometer(self.cfg)
        self.thermal = Thermal(self.cfg, layout)
        self.endpoint = SimEndpoint()
        self.counters = BoardCounters()
        self.first_seq = int(first_seq)
        self._new_rings(self.first_seq)
        self.t_us = 0
        self.clock_base_us = 0
        """Simulator time of the board's epoch start: message times are t_us - clock_base_us."""
        self.boot_id = self._new_boot_id(0)
        self.link_up = False
        self.link_actions: list[LinkAction] = []
        self._frames: list[tuple[bytes, bool]] = []
        self._sweep_buf: list[NDArray[np.void]] = []
        self._boot_notices: list[BaseMessage] = []
        self._fault_events: deque[FaultEvent] = deque(self.plan.events)
        self._interlock_close_at = math.inf
        self.interlock_open = False
        self._latched = Fault.NONE
        self._reset_state()
        self._wall_now = 0.0
        self._last_heard_wall = 0.0
        # as a board held by another host: the next ``hello_busy`` hellos are answered with
        # error BUSY (the host retries with backoff); ``hello_spec_hash``: a firmware built from
        # another spec (the host refuses it as a protocol mismatch)
        self.hello_busy = 0
        self.hello_spec_hash: int | None = None

    def warm_up(self) -> None:
        """Do the slow first-time work (colour tables, physics) before a host is served."""
        for px in self.pixels:
            deg = px.degradation()
            op = px.operate_v(np.array([3.0]), deg)
            px.pd_signal_a(op, deg)
        if self.pixels:
            px = self.pixels[0]
            deg = px.degradation()
            self.spectrometer.acquire(px, px.operate_v(3.0, deg), deg, 1.0, np.random.default_rng(0))

    def _new_rings(self, first_seq: int) -> None:
        self.rings: dict[Stream, RecordRing | MessageRing[Spectrum]] = {}
        self.aging_ring = RecordRing(AGING_SAMPLE_DTYPE, self.ring_depth, first_seq)
        self.sweep_ring = RecordRing(SWEEP_POINT_DTYPE, SWEEP_RING_DEPTH, first_seq)
        self.spectrum_ring: MessageRing[Spectrum] = MessageRing(SPECTRUM_RING_DEPTH, first_seq)
        self.rings = {Stream.AGING: self.aging_ring, Stream.SWEEP: self.sweep_ring,
                      Stream.SPECTRUM: self.spectrum_ring}

    def _new_boot_id(self, old: int) -> int:
        while True:
            b = int(self._rng_id.integers(1, 1 << 32))
            if b != old:
                return b

    def _reset_state(self) -> None:
        """Power-on state of the firmware's volatile part."""
        self.smu = SmuState()
        self.mux = 0
        self.sweep: SweepRun | None = None
        self.channels: list[AgingChannel | None] = [None] * self.n_channels
        self.photodiodes.reset()
        self.watchdog_timeout_ms = 0
        self.watchdog_policy = WatchdogPolicy.KEEP_AGING
        self._wd_fired = False
        self._latched = Fault.NONE
        self._queue: deque[tuple[Request, int]] = deque()
        self._running: RunningRequest | None = None
        self._busy_until = 0

    def clock_us(self) -> int:
        """The board's clock as its messages carry it (µs since its epoch)."""
        return self.t_us - self.clock_base_us
