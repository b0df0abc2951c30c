"""The board's firmware, in Python: message handling, the sweep program, aging channels, watchdog.

Sans-I/O like :mod:`firmware_protocol`: the server feeds it bytes (:meth:`Board.receive`), moves
its time forward (:meth:`Board.advance`) and sends what it produced (:meth:`Board.take_frames`).
Board time is virtual (:mod:`sim.clock`); the board does everything due up to the time it is
given, in time order, in bulk (the aging samples of every due channel and timestamp in one
numpy pass).

What a host can rely on
-----------------------
Requests
    Answered exactly as firmware would: ``hello`` always gets ``hello_reply`` (whatever the host's
    spec); every acknowledged request gets one ``ok``/named reply/``error`` with its seq. A
    retried request (RETRY flag, same seq) already answered is answered again from the reply
    cache without executing; a request still executing (a retry of a long ``pd_read``) is
    ignored — its one reply is on the way. Requests run one at a time in arrival order, each
    answered after its virtual cost: ``smu_measure`` after the SMU integration time, ``pd_read``
    after n × integration, ``spectrum_acquire`` after its integration (``ok`` whose value is the
    SPECTRUM seq, immediately followed by that ``spectrum`` message); everything else at once.
    ``sweep_start``'s ``ok.value`` is the SWEEP seq its first point will carry, ``aging_start``'s
    the next AGING seq; other ``ok`` values are 0 unless stated.
    An unknown message id gets an unsolicited ``error`` UNKNOWN_MESSAGE (seq 0); a board-to-host
    message sent to the board gets ``error`` UNKNOWN_MESSAGE with its seq.
Errors
    Checked in this order: BUSY when the SMU is owned by a running sweep (``sweep_start``,
    ``smu_*``, ``mux_select``, ``spectrum_acquire``); BAD_ARGUMENT for unknown pixel/channel/stream,
    NaN/inf, a pixel already on another aging channel, or a value outside a documented range
    (the detail names the field and the limit); LIMIT beyond ``max_voltage_v``,
    ``max_current_a``, ``max_aging_current_a`` or ``aging_compliance_v``; INTERLOCK for any
    output command (``smu_output`` enable, ``sweep_start``, ``aging_start``, ``aging_set``) while
    the interlock is open; BUSY when the pixel is driven by something else (an aging channel vs
    the SMU), or ``aging_start`` on a running channel. ``all_off`` is always accepted.
Ranges
    integration_ms (SMU, sweep, pd_read) in (0, 10000]; dwell_ms in [0, 60000];
    spectrum integration in (0, 60000]; pd_read n in 1..1000; aging interval_ms in
    10..86400000; a linear sweep program has at most 2000 points (4000 with the reverse scan).
SMU ``range_index``
    Indexes the ranges of the *measured* quantity: current ranges in SOURCE_V, voltage ranges in
    SOURCE_I; 0xFF autoranges.
Sweep program (``sweep_start``)
    Linear (start, stop, step; stop included when it lies on the step grid, else appended) or a
    list (≤ 200 points, as the message allows); option bit0 appends the reverse scan (the same
    voltages in reverse order, the top one measured twice, flagged REVERSE, indices continuing);
    per point: dwell, then integration; the board's compliance always applies (source V: a point
    whose current would exceed ``compliance_a`` is current-limited, its voltage measured lower,
    flagged COMPLIANCE; with bit1 the sweep then ends with reason COMPLIANCE); bit2 autoranges
    the photodiode; ``breakdown_v_drop`` > 0 ends the sweep (BREAKDOWN) when |V_set| − |V_meas|
    exceeds it. Each point is one SWEEP record, sent as produced (``sweep_points`` frames, one
    SWEEP seq counter); one spectrum (SPECTRUM stream, with ``sweep_id`` and ``index``) at the
    forward-program point nearest each requested ``spectrum_at_v`` (requests mapping to the same
    point give one spectrum), taken after that point's reading and costing
    ``spectrum_integration_ms``. At the end: SMU output off, mux to none, unsolicited
    ``sweep_done`` with n_points, reason and last_seq (0xFFFFFFFF if no point). ``sweep_abort``,
    ``all_off`` and the watchdog end it with ABORTED, the interlock with INTERLOCK. A sweep cut by
    a reboot is reported by ``sweep_done`` reason REBOOT right after the first ``hello_reply`` of
    the new boot (unless the ring is lost with it).
Aging channels
    ``aging_start`` drives a pixel at constant current on its own driver (independent of the
    SMU/mux). Samples at t_start, t_start + interval, … on the AGING stream (one seq counter for
    all channels, records in time order). ``aging_set`` restarts the schedule at the set time
    (next sample one new interval later; interval 0 keeps the interval). A pixel's age persists
    across stop/start and is shared with sweeps (see :mod:`sim.hardware`). A channel stops
    itself with a final sample flagged STOPPED plus: SHORT (voltage collapses, photodiode dark;
    event PIXEL_SHORT), OPEN (current 0, voltage at compliance; event PIXEL_OPEN), or COMPLIANCE
    (its voltage reached ``compliance_v``; event COMPLIANCE). ``aging_stop`` and ``all_off``
    give a final STOPPED sample without an event; the interlock and the GO_SAFE watchdog give a
    final STOPPED sample and event CHANNEL_STOPPED. A reboot stops every channel without a final
    sample. Stopped channels stay stopped: the host restarts them.
Streams, ring buffers, replay
    Samples fill the rings whether or not a host is connected (frames are only built while one
    is). ``stream_ack`` frees records up to its seq; a full ring overwrites its oldest records
    and, if any of them were not acknowledged, sets Fault.RING_OVERFLOW until the host
    acknowledges past the lost ones. ``stream_replay(from, to)`` answers ``ok`` with value =
    max(from, oldest seq held) — records from..value−1 are gone for good — and then resends the
    held records value..to (0xFFFFFFFF: to the head) as ordinary stream frames, byte-identical to
    the originals, in blocks. Rings and seq counters survive a reboot unless
    ``reboot_loses_ring`` (then every stream restarts at seq 0).
Interlock
    Opening: every output off in the same board tick (sweep ends INTERLOCK, SMU off, mux none,
    aging channels stop), event INTERLOCK_OPEN, Fault.INTERLOCK_OPEN while open, output commands
    refused. Closing: event INTERLOCK_CLOSED; nothing restarts by itself.
Watchdog
    ``set_watchdog(timeout_ms, policy)`` (0 disables; disabled after boot) counts host silence —
    time since the last valid frame received — in WALL-clock time, because a sped-up simulator
    would otherwise trip it between two host frames. On expiry: Fault.WATCHDOG_EXPIRED (latched
    until the next ``set_watchdog``), event WATCHDOG_EXPIRED, and: KEEP_AGING → SMU off, sweep
    aborted, aging channels keep running; GO_SAFE → everything off. It fires once per silence.
Board time
    ``t_us`` (in every message) counts from the board's epoch: the simulator's start, and again
    from 0 after a reboot that loses the rings (``reboot_loses_ring``: the timer lives in the
    same retained RAM as the rings and their seq counters). A reboot that keeps the rings keeps
    the clock. Internally ``self.t_us`` is the simulator's own monotonic time.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.base import BaseMessage
from firmware_protocol.board import BoardEndpoint, Request, Resend
from firmware_protocol.channels import channel_set_fields
from firmware_protocol.codec import FrameError, StreamDecoder, encode_frame
from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
    SWEEP_POINT_DTYPE,
    AgingSamples,
    AgingSet,
    AgingStart,
    AgingStop,
    AllOff,
    Capabilities,
    Error,
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
    Spectrum,
    SpectrumAcquire,
    Status,
    StreamAck,
    StreamReplay,
    SweepAbort,
    SweepDone,
    SweepPoints,
    SweepStart,
)
from firmware_protocol.spec import (
    AGING_INTERVAL_MS,
    DWELL_MS,
    INTEGRATION_MS,
    MESSAGES_BY_ID,
    MESSAGES_BY_NAME,
    PD_READS,
    PROTOCOL_VERSION,
    SPEC_HASH,
    SPECTRUM_INTEGRATION_MS,
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
from firmware_protocol.spec import MAX_SWEEP_POINTS as SPEC_MAX_SWEEP_POINTS
from sim.faults import SATURATE_STRAY_A, FaultEvent, FaultPlan
from sim.hardware import (
    ACCEL_J_CAP_A_M2,
    AUTO_RANGE,
    SEQ_MASK,
    US_PER_HOUR,
    FreshPoint,
    HardwareConfig,
    MessageRing,
    Photodiodes,
    Pixel,
    RecordRing,
    SmuState,
    Spectrometer,
    Thermal,
    aging_arrays_of,
    pick_range,
    smu_noise,
    smu_solve,
)
from sim.layout import Layout
from sim.physics import Degradation, FailureMode, OperatingPoint, lifetime_tau_h

__all__ = [
    "DEFAULT_RING_DEPTH",
    "FIRMWARE_VERSION",
    "SIM_VERSION",
    "Board",
    "BoardCounters",
    "LinkAction",
    "SimEndpoint",
]

SIM_VERSION = "0.1.0"
FIRMWARE_VERSION = f"sim {SIM_VERSION}"
DEFAULT_RING_DEPTH = 200_000
SWEEP_RING_DEPTH = 20_000
SPECTRUM_RING_DEPTH = 256
MAX_AGING_CHANNELS = 256  # channel numbers are u8; status.aging_active carries any number
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

_NO_SEQ = SEQ_MASK
_NO_SWEEP_ID = 0xFFFF
_NONE_CHANNEL = 0xFF


def _max_records(msg_name: str) -> int:
    (f,) = (f for f in MESSAGES_BY_NAME[msg_name].fields if f.type == "records")
    return f.max_len


_AGING_PER_FRAME = _max_records("aging_samples")
_SWEEP_PER_FRAME = _max_records("sweep_points")


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


class SimEndpoint(BoardEndpoint):
    """:class:`BoardEndpoint` plus what the firmware needs around it.

    - a request whose seq is still executing is ignored (its reply is on the way), so a retry
      of a long request never runs it twice;
    - a frame with an unknown message id gets an unsolicited ``error`` UNKNOWN_MESSAGE;
    - counts valid frames (the watchdog's notion of "the host spoke").
    """

    def __init__(self, cache_size: int = 64) -> None:
        super().__init__(cache_size)
        self.in_flight: set[int] = set()
        self.valid_frames = 0
        self.retries_ignored = 0

    def receive_data(self, data: bytes) -> list[Request | Resend | bytes]:
        out: list[Request | Resend | bytes] = []
        for ev in self.decoder.feed(data):
            if isinstance(ev, FrameError):
                self.frame_errors += 1
                if ev.reason == "unknown_id":
                    try:
                        mid = int(ev.detail.rsplit("0x", 1)[1], 16)
                    except (IndexError, ValueError):
                        mid = 0
                    out.append(self.unsolicited(Error(
                        code=int(ErrorCode.UNKNOWN_MESSAGE), ref_msg_id=mid,
                        detail=f"unknown message id 0x{mid:02X}")))
                continue
            self.valid_frames += 1
            h, msg = ev.header, ev.message
            if MESSAGES_BY_ID[h.msg_id].direction != "host_to_board":
                if h.seq:
                    out.append(self.respond(h.seq, Error(
                        code=int(ErrorCode.UNKNOWN_MESSAGE), ref_msg_id=h.msg_id,
                        detail=f"{msg.NAME} is not a host-to-board message")))
                continue
            if h.seq and h.seq in self.in_flight:
                self.retries_ignored += 1
                continue
            if h.flags & FrameFlags.RETRY and h.seq in self._cache:
                out.append(Resend(self._cache[h.seq]))
                continue
            if h.seq:
                self.in_flight.add(h.seq)
            out.append(Request(h.seq, h.flags, msg))
        return out

    def reset(self) -> None:
        super().reset()
        self.in_flight.clear()


@dataclass
class _Deferred:
    """A request whose reply comes after ``cost_us`` of board time; ``finish`` runs then."""

    cost_us: int
    finish: Callable[[], tuple[BaseMessage, list[BaseMessage]]]


_Result = BaseMessage | tuple[BaseMessage, list[BaseMessage]] | _Deferred | None


@dataclass
class _Running:
    req: Request
    done_us: int
    finish: Callable[[], tuple[BaseMessage, list[BaseMessage]]]


@dataclass
class AgingChannel:
    index: int
    pixel: Pixel
    current_a: float
    interval_us: int
    compliance_v: float
    gain: int
    fresh: FreshPoint
    accel: float
    next_t: int
    anchor_t: int
    anchor_dose: float
    rng: np.random.Generator
    stop_t: float = math.inf
    stop_cause: str = ""

    def dose_at(self, t: NDArray[np.int64] | int) -> NDArray[np.float64]:
        dt_h = (np.asarray(t, dtype=np.float64) - self.anchor_t) / US_PER_HOUR
        return np.asarray(self.anchor_dose + dt_h / self.accel, dtype=np.float64)

    def sync(self, t: int) -> None:
        """Re-anchor at ``t`` and write the pixel's equivalent age back."""
        self.anchor_dose = float(self.dose_at(t))
        self.anchor_t = t
        self.pixel.dose_ref_h = self.anchor_dose


class SweepRun:
    """A running sweep program: its timeline, precomputed physics and emission state."""

    def __init__(self, board: Board, msg: SweepStart, volts: NDArray[np.float64], t0: int) -> None:
        self.board = board
        self.msg = msg
        self.sweep_id = msg.sweep_id
        self.pixel = board.pixels[msg.pixel - 1]
        fwd = volts
        self.n_fwd = len(fwd)
        reverse = bool(msg.options & 0x01)
        self.v_set = np.concatenate([fwd, fwd[::-1]]) if reverse else fwd.copy()
        self.n = len(self.v_set)
        self.base_flags = np.zeros(self.n, dtype=np.uint8)
        if reverse:
            self.base_flags[self.n_fwd :] = SampleFlags.REVERSE
        self.stop_on_compliance = bool(msg.options & 0x02)
        self.autorange = bool(msg.options & 0x04)
        self.gain = int(msg.pd_gain)
        self.spectrum_idx: set[int] = {int(np.argmin(np.abs(fwd - v))) for v in msg.spectrum_at_v}
        point_us = round((msg.dwell_ms + msg.integration_ms) * 1000)
        spec_us = round(msg.spectrum_integration_ms * 1000)
        self.spec_us = spec_us
        self.point_us = point_us
        times = np.empty(self.n, dtype=np.int64)
        t = t0
        for k in range(self.n):
            t += point_us
            times[k] = t
            if k in self.spectrum_idx:
                t += spec_us
        self.times = times
        self.k = 0
        self.pending_spec: tuple[int, int] | None = None
        self.n_emitted = 0
        self.last_seq: int | None = None
        self.meas_v = np.zeros(self.n)
        self.meas_i = np.zeros(self.n)
        self.i_true = np.zeros(self.n)
        self.v_eff = np.zeros(self.n)
        self.hit = np.zeros(self.n, dtype=bool)
        self.pd_sig = np.zeros(self.n)
        self.deg = self.pixel.degradation()
        self.compute(0)

    def compute(self, k0: int) -> None:
        """(Re)compute the true operating points from index ``k0`` on (pixel state may change)."""
        if k0 >= self.n:
            return
        px = self.pixel
        deg = self.deg = px.degradation()
        v = self.v_set[k0:]
        comp = self.msg.compliance_a
        i_free = np.asarray(px.current_at(v, deg), dtype=float)
        hit = np.abs(i_free) > comp
        v_eff = v.copy()
        if np.any(hit):
            i_lim = np.copysign(comp, i_free[hit])
            v_eff[hit] = px.voltage_at(i_lim, deg)
        op = px.operate_v(v_eff, deg)
        i_true = np.where(hit, np.copysign(comp, i_free), op.current_a)
        self.v_eff[k0:] = v_eff
        self.i_true[k0:] = i_true
        self.hit[k0:] = hit
        self.pd_sig[k0:] = px.pd_signal_a(op, deg)

    @property
    def next_t(self) -> int:
        if self.pending_spec is not None:
            return self.pending_spec[0]
        return int(self.times[self.k]) if self.k < self.n else self.board.t_us

    def dose_h(self) -> float:
        """Equivalent age added by the points emitted so far."""
        n = self.n_emitted
        if n == 0:
            return 0.0
        j = np.minimum(np.abs(self.i_true[:n]) / self.pixel.area_m2, ACCEL_J_CAP_A_M2)
        tau = np.asarray(lifetime_tau_h(self.pixel.preset, j), dtype=float)
        with np.errstate(divide="ignore"):
            rate = np.where(np.isfinite(tau) & (tau > 0), self.pixel.preset.aging.tau_ref_h / tau, 0.0)
        return float(np.sum(rate) * self.point_us / US_PER_HOUR)


class Board:
    """The simulated board (see the module docstring for its behaviour)."""

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

    # ------------------------------------------------------------------ state -------------
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
        self._running: _Running | None = None
        self._busy_until = 0

    # ------------------------------------------------------------------ I/O ---------------
    def set_link(self, up: bool) -> None:
        """The transport tells the board whether a host is there to receive frames."""
        if up == self.link_up:
            return
        self.link_up = up
        if not up:
            self.discard_frames([f for f, _ in self._frames])
            self._frames.clear()

    def discard_frames(self, frames: Sequence[bytes]) -> None:
        """Count the stream records in frames thrown away unsent (``counters.unsent``)."""
        if not frames:
            return
        dec = StreamDecoder(PROTOCOL_VERSION)
        for ev in dec.feed(b"".join(frames)):
            if isinstance(ev, FrameError):
                continue
            m = ev.message
            if isinstance(m, AgingSamples):
                self.counters.unsent[Stream.AGING] += len(m.records)
            elif isinstance(m, SweepPoints):
                self.counters.unsent[Stream.SWEEP] += len(m.records)
            elif isinstance(m, Spectrum):
                self.counters.unsent[Stream.SPECTRUM] += 1

    def take_frames(self) -> list[tuple[bytes, bool]]:
        """Frames produced since the last call, as (bytes, is_stream_data) in order."""
        self._flush_sweep()
        out, self._frames = self._frames, []
        return out

    def receive(self, data: bytes, wall_s: float) -> None:
        """Bytes from the host (any chunking). Requests run in the next :meth:`advance`."""
        self._wall_now = wall_s
        before = self.endpoint.valid_frames
        errs = self.endpoint.frame_errors
        items = self.endpoint.receive_data(data)
        n_valid = self.endpoint.valid_frames - before
        self.counters.valid_frames_in += n_valid
        self.counters.frame_errors_in += self.endpoint.frame_errors - errs
        self.counters.retries_ignored = self.endpoint.retries_ignored
        if n_valid:
            self._last_heard_wall = wall_s
            self._wd_fired = False
        for it in items:
            if isinstance(it, Resend):
                self.counters.resends += 1
                self._out(it.data, False)
            elif isinstance(it, bytes):
                self.counters.errors[ErrorCode.UNKNOWN_MESSAGE.name] += 1
                self._out(it, False)
            else:
                self._queue.append((it, self.t_us))

    def _out(self, data: bytes, stream: bool) -> None:
        self._flush_sweep()
        if self.link_up:
            self._frames.append((data, stream))
            self.counters.frames_built += 1

    def _emit(self, msg: BaseMessage, stream: bool = False) -> None:
        """An unsolicited frame (seq 0): status, event, sweep_done, stream data."""
        self._flush_sweep()
        if self.link_up:
            self._out(BoardEndpoint.unsolicited(msg), stream)

    def _event(self, code: EventCode, channel: int = _NONE_CHANNEL, pixel: int = 0,
               value: float = 0.0, detail: str = "") -> None:
        self.counters.events[code.name] += 1
        self._emit(Event(code=int(code), channel=channel, pixel=pixel, t_us=self.clock_us(),
                         value=float(np.float32(value)), detail=detail[:64]))

    def _flush_sweep(self) -> None:
        if not self._sweep_buf:
            return
        recs = np.concatenate(self._sweep_buf)
        self._sweep_buf = []
        if not self.link_up:
            return
        for i in range(0, len(recs), _SWEEP_PER_FRAME):
            data = BoardEndpoint.unsolicited(SweepPoints(records=recs[i : i + _SWEEP_PER_FRAME]))
            self._frames.append((data, True))
            self.counters.frames_built += 1

    def _send_aging(self, recs: NDArray[np.void]) -> None:
        if not self.link_up:
            return
        self._flush_sweep()
        for i in range(0, len(recs), _AGING_PER_FRAME):
            data = encode_frame(AgingSamples(records=recs[i : i + _AGING_PER_FRAME]), 0, FrameFlags.STREAM)
            self._frames.append((data, True))
            self.counters.frames_built += 1

    # ------------------------------------------------------------------ time --------------
    def advance(self, target_us: int) -> int:
        """Do everything due up to ``target_us``; returns the board time reached.

        Stops short of the target when the work budget (:data:`MAX_SAMPLES_PER_ADVANCE`) is
        spent or a link action (disconnect, reboot) must be carried out first.
        """
        target = self._cap_target(max(int(target_us), self.t_us))
        while True:
            t_next, kind = self._next_event(target)
            self._run_aging(t_next, inclusive=kind is None)
            self.t_us = t_next
            if kind is None:
                break
            self._dispatch(kind)
            if self.link_actions:
                break
        self._flush_sweep()
        return self.t_us

    def _cap_target(self, target: int) -> int:
        total = 0
        for ch in self.channels:
            if ch is not None and ch.next_t <= target:
                total += (target - ch.next_t) // ch.interval_us + 1
        if total <= MAX_SAMPLES_PER_ADVANCE:
            return target
        self.counters.steps_capped += 1
        span = target - self.t_us
        return self.t_us + max(1, int(span * MAX_SAMPLES_PER_ADVANCE / total))

    def _next_event(self, target: int) -> tuple[int, str | None]:
        best, kind = target, None
        cands: list[tuple[float, str]] = []
        if self._fault_events:
            cands.append((self._fault_events[0].t_us, "fault"))
        if self._interlock_close_at < math.inf:
            cands.append((self._interlock_close_at, "ilock_close"))
        for ch in self.channels:
            if ch is not None and ch.stop_t < math.inf:
                cands.append((ch.stop_t, "chan_stop"))
        if self.sweep is not None:
            cands.append((self.sweep.next_t, "sweep"))
        if self._running is not None:
            cands.append((self._running.done_us, "cmd"))
        elif self._queue:
            cands.append((max(self._queue[0][1], self._busy_until), "cmd"))
        for t, k in cands:  # ties keep this order: faults, interlock, channels, sweep, commands
            ti = max(math.ceil(t), self.t_us)
            if ti <= best and (kind is None or ti < best):
                best, kind = ti, k
        return best, kind

    def _dispatch(self, kind: str) -> None:
        t = self.t_us
        if kind == "fault":
            self._apply_fault(self._fault_events.popleft())
        elif kind == "ilock_close":
            self._interlock_close_at = math.inf
            self.set_interlock(False)
        elif kind == "chan_stop":
            for ch in list(self.channels):
                if ch is not None and ch.stop_t <= t:
                    self._stop_channel(ch, ch.stop_cause)
        elif kind == "sweep":
            self._sweep_step()
        elif kind == "cmd":
            self._cmd_step()

    # ------------------------------------------------------------------ faults ------------
    def _apply_fault(self, ev: FaultEvent) -> None:
        if ev.kind in ("short", "open"):
            self.inject_failure(ev.pixel, FailureMode.SHORT if ev.kind == "short" else FailureMode.OPEN)
        elif ev.kind == "interlock":
            self._interlock_close_at = max(
                self._interlock_close_at if self._interlock_close_at < math.inf else 0,
                self.t_us + max(ev.duration_us, self.cfg.board_tick_us))
            self.set_interlock(True)
        elif ev.kind == "reboot":
            self.reboot(drop_link=True)
        elif ev.kind == "disconnect":
            self.link_actions.append(LinkAction("disconnect", ev.duration_us, 0.3))

    def inject_failure(self, pixel: int, mode: FailureMode) -> None:
        """Force pixel ``pixel`` shorted or open from now on (and act on it at once)."""
        px = self.pixels[pixel - 1]
        px.forced = mode
        for ch in self.channels:
            if ch is not None and ch.pixel is px:
                self._stop_channel(ch, "short" if mode == FailureMode.SHORT else "open")
        if self.sweep is not None and self.sweep.pixel is px:
            self.sweep.compute(self.sweep.k)

    def set_interlock(self, open_: bool) -> None:
        """Open or close the interlock at the present board time."""
        if open_ == self.interlock_open:
            return
        self.interlock_open = open_
        if open_:
            self._event(EventCode.INTERLOCK_OPEN, detail="interlock open: all outputs off")
            self._outputs_off(cause="interlock")
        else:
            self._event(EventCode.INTERLOCK_CLOSED, detail="interlock closed")

    def reboot(self, drop_link: bool = True) -> None:
        """Board reset: new boot_id, reply cache cleared, every output off (see module docstring)."""
        self.counters.reboots += 1
        if self.sweep is not None:
            sw = self.sweep
            self.sweep = None
            self._sweep_buf.clear()
            self.pixels[sw.pixel.number - 1].dose_ref_h += sw.dose_h()
            if not self.reboot_loses_ring:
                self._boot_notices.append(SweepDone(
                    sweep_id=sw.sweep_id, n_points=sw.n_emitted, reason=int(SweepEnd.REBOOT),
                    last_seq=_NO_SEQ if sw.last_seq is None else sw.last_seq & SEQ_MASK))
        for ch in self.channels:
            if ch is not None:
                ch.sync(self.t_us)
        self._reset_state()
        self.endpoint.reset()
        self.discard_frames([f for f, _ in self._frames])
        self._frames.clear()
        self.boot_id = self._new_boot_id(self.boot_id)
        if self.reboot_loses_ring:
            done = self.counters.epoch_produced
            self.counters.epoch_produced.append({
                s: self.counters.produced[s] - sum(e[s] for e in done) for s in Stream})
            self._new_rings(0)
            self._boot_notices.clear()
            self.clock_base_us = self.t_us  # the timer lived in the same retained RAM
        if drop_link:
            self.link_actions.append(LinkAction("reboot", 0, 0.3))

    # ------------------------------------------------------------------ status ------------
    def clock_us(self) -> int:
        """The board's clock as its messages carry it (µs since its epoch)."""
        return self.t_us - self.clock_base_us

    def faults(self) -> int:
        f = self._latched
        if self.interlock_open:
            f |= Fault.INTERLOCK_OPEN
        if any(r.overflow for r in self.rings.values()):
            f |= Fault.RING_OVERFLOW
        return int(f)

    def aging_mask(self) -> int:
        """The running channels among 0..31 (``status.aging_active_mask``)."""
        return sum(1 << ch.index for ch in self.channels if ch is not None and ch.index < 32)

    def active_channels(self) -> list[int]:
        return [ch.index for ch in self.channels if ch is not None]

    def _substrate_power(self) -> NDArray[np.float64]:
        p = np.zeros(self.layout.n_substrates)
        for ch in self.channels:
            if ch is not None:
                p[ch.pixel.spec.substrate] += abs(ch.current_a * ch.fresh.voltage_v)
        return p  # SMU use (sweeps, spot measurements) is brief: its heating is not modelled

    def status(self) -> Status:
        temps = self.thermal.readings(self._substrate_power(), self._rng_temp)
        return Status(
            t_us=self.clock_us(), boot_id=self.boot_id, faults=self.faults(),
            interlock_closed=0 if self.interlock_open else 1,
            smu_output_on=int(self.smu.output_on), sweep_active=int(self.sweep is not None),
            **channel_set_fields(self.active_channels(), self.n_channels),
            temperatures_c=tuple(temps),
            aging_head_seq=self.aging_ring.head & SEQ_MASK,
            sweep_head_seq=self.sweep_ring.head & SEQ_MASK,
            spectrum_head_seq=self.spectrum_ring.head & SEQ_MASK,
            aging_oldest_seq=self.aging_ring.oldest & SEQ_MASK,
        )

    def emit_status(self) -> None:
        """The unsolicited once-per-second status (the server calls it on the wall clock)."""
        self._emit(self.status())

    def capabilities(self) -> Capabilities:
        c = self.cfg
        return Capabilities(
            n_substrates=self.layout.n_substrates,
            pixels_per_substrate=self.layout.pixels_per_substrate,
            n_aging_channels=min(self.n_channels, 255), aging_channels=self.n_channels,
            n_temperature_sensors=self.layout.n_substrates + 1,
            smu_voltage_ranges_v=c.smu_voltage_ranges_v,
            smu_current_ranges_a=c.smu_current_ranges_a,
            max_voltage_v=c.max_voltage_v, max_current_a=c.max_current_a,
            max_aging_current_a=c.max_aging_current_a, aging_compliance_v=c.aging_compliance_v,
            pd_gains_v_per_a=c.pd_gains_v_per_a, pd_full_scale_v=c.pd_full_scale_v,
            pd_adc_bits=c.pd_adc_bits, spectrometer_pixels=c.spectrometer_pixels,
            wavelength_cal=c.wavelength_cal, spectrum_kind=int(SpectrumKind.PHOTON_COUNTS),
            spectrometer_max_counts=c.spectrometer_max_counts, ring_depth=self.ring_depth,
            board_tick_us=c.board_tick_us,
            max_integration_ms=c.max_integration_ms,
            max_spectrum_integration_ms=MAX_SPECTRUM_INTEGRATION_MS, max_dwell_ms=MAX_DWELL_MS,
            min_aging_interval_ms=MIN_AGING_INTERVAL_MS, max_aging_interval_ms=MAX_AGING_INTERVAL_MS,
            max_sweep_points=MAX_SWEEP_POINTS, max_pd_reads=MAX_PD_READS,
        )

    # ------------------------------------------------------------------ watchdog ----------
    def check_watchdog(self, wall_s: float) -> None:
        """Called by the server every iteration with the wall clock (host silence is wall time)."""
        self._wall_now = wall_s
        if self.watchdog_timeout_ms <= 0 or self._wd_fired:
            return
        if (wall_s - self._last_heard_wall) * 1000.0 < self.watchdog_timeout_ms:
            return
        self._wd_fired = True
        self.counters.watchdog_expiries += 1
        self._latched |= Fault.WATCHDOG_EXPIRED
        policy = self.watchdog_policy
        self._event(EventCode.WATCHDOG_EXPIRED, value=float(self.watchdog_timeout_ms),
                    detail=f"host silent > {self.watchdog_timeout_ms} ms: {policy.name}")
        if policy == WatchdogPolicy.GO_SAFE:
            self._outputs_off(cause="watchdog")
        else:
            self._smu_off(SweepEnd.ABORTED)

    # ------------------------------------------------------------------ outputs -----------
    def _smu_off(self, sweep_reason: SweepEnd) -> None:
        if self.sweep is not None:
            self._end_sweep(sweep_reason)
        self.smu.output_on = False
        self.mux = 0

    def _outputs_off(self, cause: str) -> None:
        self._smu_off(SweepEnd.INTERLOCK if cause == "interlock" else SweepEnd.ABORTED)
        for ch in list(self.channels):
            if ch is not None:
                self._stop_channel(ch, cause)

    # ------------------------------------------------------------------ aging -------------
    def _channel_of_pixel(self, pixel: int) -> AgingChannel | None:
        for ch in self.channels:
            if ch is not None and ch.pixel.number == pixel:
                return ch
        return None

    def _predict_stop(self, ch: AgingChannel) -> None:
        px = ch.pixel
        t0, d0 = ch.anchor_t, ch.anchor_dose
        ch.stop_t, ch.stop_cause = math.inf, ""
        code = px.failure(d0)
        if code != FailureMode.NONE:
            ch.stop_t, ch.stop_cause = t0, "short" if code == FailureMode.SHORT else "open"
            return
        us_per_dose = ch.accel * US_PER_HOUR
        d_fail = px.preset_failure_dose()
        if math.isfinite(d_fail):
            t = t0 + max(0.0, d_fail - d0) * us_per_dose
            if t < ch.stop_t:
                ch.stop_t = math.ceil(t)
                ch.stop_cause = "short" if px.preset.failure.mode == FailureMode.SHORT else "open"
        ag = px.preset.aging
        headroom = ch.compliance_v - ch.fresh.voltage_v
        dv0 = float(px.aging_arrays(np.asarray(d0))[1])
        if headroom <= dv0:
            ch.stop_t, ch.stop_cause = t0, "compliance"
        elif ag.delta_voltage_max_v > headroom:
            x = headroom / ag.delta_voltage_max_v
            d_c = ag.tau_ref_h * (-math.log1p(-x)) ** (1.0 / ag.beta)
            t = t0 + max(0.0, d_c - d0) * us_per_dose
            if t < ch.stop_t:
                ch.stop_t, ch.stop_cause = math.ceil(t), "compliance"

    def _aging_samples(self, due: Sequence[tuple[AgingChannel, NDArray[np.int64]]]) -> NDArray[np.void]:
        """The records of each channel in ``due`` at its times, channel after channel.

        Vectorised over every sample of every channel (a 2 ms step of many channels is one or
        two samples each: per-call overhead, not arithmetic, is the cost). Per-channel values
        are spread over the samples (``[owner]``); the arithmetic on each sample is the same as
        for one channel at a time. What stays per channel: the noise, drawn from the channel's
        own stream as before; the dark current (scalar, like a single channel's); and the
        photodiode autorange when it steps (:meth:`Photodiodes.read_blocks`).
        """
        chans = [ch for ch, _ in due]
        counts = np.array([len(t) for _, t in due], dtype=np.intp)
        owner = np.repeat(np.arange(len(due)), counts)

        def per_sample(values: Sequence[float]) -> NDArray[np.float64]:
            return np.array(values, dtype=np.float64)[owner]

        times = np.concatenate([t for _, t in due])
        dt_h = (times.astype(np.float64) - per_sample([ch.anchor_t for ch in chans])) / US_PER_HOUR
        dose = per_sample([ch.anchor_dose for ch in chans]) + dt_h / per_sample([ch.accel for ch in chans])
        ratio, dv, code = aging_arrays_of([ch.pixel for ch in chans], owner, dose)
        i_set = per_sample([ch.current_a for ch in chans])
        comp = per_sample([ch.compliance_v for ch in chans])
        short = code == FailureMode.SHORT
        opened = code == FailureMode.OPEN
        r_short = per_sample([ch.pixel.preset.failure.short_resistance_ohm for ch in chans])
        v_true = np.where(short, i_set * r_short, per_sample([ch.fresh.voltage_v for ch in chans]) + dv)
        v_true = np.where(opened, comp, v_true)
        v_true = np.minimum(v_true, comp)
        i_true = np.where(opened, 0.0, i_set)
        substrate_c = self.thermal.substrate_c(self._substrate_power())
        temps = [float(substrate_c[ch.pixel.spec.substrate]) for ch in chans]
        dark = [self.photodiodes.background_a(ch.pixel.number, temp)
                for ch, temp in zip(chans, temps, strict=True)]
        pd_true = per_sample([ch.fresh.pd_signal_a for ch in chans]) * ratio + per_sample(dark)
        z = np.concatenate([ch.rng.standard_normal((len(t), 4)) for ch, t in due])
        cfg = self.cfg
        rec = np.zeros(len(times), dtype=AGING_SAMPLE_DTYPE)
        rec["t_us"] = times - self.clock_base_us
        rec["channel"] = np.array([ch.index for ch in chans])[owner]
        rec["pixel"] = np.array([ch.pixel.number for ch in chans])[owner]
        rec["current_a"] = i_true * (1.0 + cfg.smu_noise_rel * z[:, 0]) + 1e-9 * z[:, 0]
        rec["voltage_v"] = v_true * (1.0 + cfg.smu_noise_rel * z[:, 1]) + 1e-5 * z[:, 1]
        pd, gains, flags, last_gain = self.photodiodes.read_blocks(
            pd_true, counts, np.array([ch.gain for ch in chans]), z[:, 2], cfg.aging_pd_integration_ms)
        for ch, g in zip(chans, last_gain, strict=True):
            ch.gain = int(g)
        rec["photodiode_a"] = pd
        rec["pd_gain"] = gains
        flags = flags | np.where(short, np.uint8(SampleFlags.SHORT), np.uint8(0))
        flags = flags | np.where(opened, np.uint8(SampleFlags.OPEN), np.uint8(0))
        at_comp = (v_true >= comp) & ~opened
        flags = flags | np.where(at_comp, np.uint8(SampleFlags.COMPLIANCE), np.uint8(0))
        rec["flags"] = flags
        rec["temperature_c"] = per_sample(temps) + cfg.temperature_noise_c * z[:, 3]
        return rec

    def _run_aging(self, t_end: int, inclusive: bool) -> None:
        last = t_end if inclusive else t_end - 1
        due = []
        for ch in self.channels:
            if ch is None or ch.next_t > last:
                continue
            n = (last - ch.next_t) // ch.interval_us + 1
            due.append((ch, ch.next_t + ch.interval_us * np.arange(n, dtype=np.int64)))
            ch.next_t += ch.interval_us * n
        if not due:
            return
        recs = self._aging_samples(due)
        if len(due) > 1:
            recs = recs[np.lexsort((recs["channel"], recs["t_us"]))]
        self._push_aging(recs)

    def _push_aging(self, recs: NDArray[np.void]) -> None:
        self.aging_ring.push(recs)
        self.counters.produced[Stream.AGING] += len(recs)
        self._send_aging(recs)

    def _stop_channel(self, ch: AgingChannel, cause: str) -> None:
        t = self.t_us
        rec = self._aging_samples([(ch, np.array([t], dtype=np.int64))])
        extra = {"short": SampleFlags.SHORT, "open": SampleFlags.OPEN,
                 "compliance": SampleFlags.COMPLIANCE}.get(cause, SampleFlags.NONE)
        rec["flags"] |= np.uint8(SampleFlags.STOPPED | extra)
        self._push_aging(rec)
        ch.sync(t)
        self.channels[ch.index] = None
        px = ch.pixel.number
        if cause == "short":
            self._event(EventCode.PIXEL_SHORT, ch.index, px, float(rec["voltage_v"][0]),
                        f"pixel {px} shorted; channel {ch.index} stopped")
        elif cause == "open":
            self._event(EventCode.PIXEL_OPEN, ch.index, px, ch.compliance_v,
                        f"pixel {px} open; channel {ch.index} stopped")
        elif cause == "compliance":
            self._event(EventCode.COMPLIANCE, ch.index, px, ch.compliance_v,
                        f"pixel {px} reached {ch.compliance_v:g} V; channel {ch.index} stopped")
        elif cause in ("interlock", "watchdog"):
            self._event(EventCode.CHANNEL_STOPPED, ch.index, px, 0.0, cause)

    # ------------------------------------------------------------------ sweep -------------
    def _sweep_step(self) -> None:
        sw = self.sweep
        assert sw is not None
        t = self.t_us
        if sw.pending_spec is not None:
            if sw.pending_spec[0] <= t:
                k = sw.pending_spec[1]
                sw.pending_spec = None
                self._sweep_spectrum(sw, k)
                if sw.k >= sw.n:
                    self._end_sweep(SweepEnd.COMPLETED)
            return
        if sw.k >= sw.n:
            self._end_sweep(SweepEnd.COMPLETED)
            return
        k = sw.k
        cfg = self.cfg
        z = self._rng_sweep.standard_normal(3)
        v_eff, i_true = float(sw.v_eff[k]), float(sw.i_true[k])
        vrange, _ = pick_range(cfg.smu_voltage_ranges_v, v_eff, AUTO_RANGE)
        irange, _ = pick_range(cfg.smu_current_ranges_a, i_true, AUTO_RANGE)
        v_meas = float(smu_noise(v_eff, vrange, z[0], cfg))
        i_meas = float(smu_noise(i_true, irange, z[1], cfg))
        temp = float(self.thermal.substrate_c(self._substrate_power())[sw.pixel.spec.substrate])
        pd_true = np.array([sw.pd_sig[k] + self.photodiodes.background_a(sw.pixel.number, temp)])
        pd, gains, pflags, sw.gain = self.photodiodes.read(pd_true, sw.gain, sw.autorange, z[2:3],
                                                            sw.msg.integration_ms)
        flags = int(sw.base_flags[k]) | int(pflags[0])
        if sw.hit[k]:
            flags |= SampleFlags.COMPLIANCE
        rec = np.zeros(1, dtype=SWEEP_POINT_DTYPE)
        rec["t_us"] = t - self.clock_base_us
        rec["sweep_id"] = sw.sweep_id
        rec["index"] = k
        rec["pixel"] = sw.pixel.number
        rec["flags"] = flags
        rec["pd_gain"] = gains[0]
        rec["voltage_set_v"] = sw.v_set[k]
        rec["voltage_v"] = v_meas
        rec["current_a"] = i_meas
        rec["photodiode_a"] = pd[0]
        self.sweep_ring.push(rec)
        self.counters.produced[Stream.SWEEP] += 1
        sw.last_seq = self.sweep_ring.head - 1
        sw.n_emitted += 1
        sw.meas_v[k], sw.meas_i[k] = v_meas, i_meas
        self.smu.level = float(sw.v_set[k])
        sw.k += 1
        if self.link_up:
            self._sweep_buf.append(rec)
        drop = sw.msg.breakdown_v_drop
        if drop > 0 and abs(float(sw.v_set[k])) - abs(v_meas) > drop:
            self._end_sweep(SweepEnd.BREAKDOWN)
            return
        if sw.hit[k] and sw.stop_on_compliance:
            self._end_sweep(SweepEnd.COMPLIANCE)
            return
        if k in sw.spectrum_idx and k < sw.n_fwd:
            sw.pending_spec = (t + sw.spec_us, k)
            return
        if sw.k >= sw.n:
            self._end_sweep(SweepEnd.COMPLETED)

    def _sweep_spectrum(self, sw: SweepRun, k: int) -> None:
        deg = sw.deg
        op = sw.pixel.operate_v(float(sw.v_eff[k]), deg)
        counts, dark, flags = self.spectrometer.acquire(sw.pixel, op, deg, sw.msg.spectrum_integration_ms,
                                                        self._rng_spec)
        self._push_spectrum(sw.sweep_id, k, sw.pixel.number, flags, float(sw.meas_v[k]),
                            float(sw.meas_i[k]), sw.msg.spectrum_integration_ms, dark, counts)

    def _push_spectrum(self, sweep_id: int, index: int, pixel: int, flags: int, voltage: float,
                       current: float, integration_ms: float, dark: float,
                       counts: NDArray[np.uint16]) -> Spectrum:
        msg = Spectrum(seq=self.spectrum_ring.next_seq32(), t_us=self.clock_us(), sweep_id=sweep_id,
                       index=index, pixel=pixel, flags=flags, voltage_v=voltage, current_a=current,
                       integration_ms=float(integration_ms), dark_counts=float(dark),
                       counts=tuple(int(c) for c in counts))
        self.spectrum_ring.push(msg)
        self.counters.produced[Stream.SPECTRUM] += 1
        self._emit(msg, stream=True)
        return msg

    def _end_sweep(self, reason: SweepEnd) -> None:
        sw = self.sweep
        if sw is None:
            return
        self.sweep = None
        self._flush_sweep()
        sw.pixel.dose_ref_h += sw.dose_h()
        self.smu.output_on = False
        self.mux = 0
        last = _NO_SEQ if sw.last_seq is None else sw.last_seq & SEQ_MASK
        self._emit(SweepDone(sweep_id=sw.sweep_id, n_points=sw.n_emitted, reason=int(reason),
                             last_seq=last))

    # ------------------------------------------------------------------ commands ----------
    def _cmd_step(self) -> None:
        t = self.t_us
        if self._running is not None:
            run = self._running
            if run.done_us > t:
                return
            self._running = None
            self._busy_until = t
            reply, extras = run.finish()
            self._send_reply(run.req, reply, extras)
            return
        if not self._queue:
            return
        req, _arrival = self._queue.popleft()
        name = req.message.NAME
        self.counters.requests[name] += 1
        try:
            result = self._execute(req)
        except CommandError as e:
            self.counters.errors[e.code.name] += 1
            self._send_reply(req, Error(code=int(e.code), ref_msg_id=req.message.MSG_ID,
                                        detail=e.detail[:96]), [])
            return
        self.counters.executed[name] += 1
        if isinstance(result, _Deferred):
            if result.cost_us <= 0:
                reply, extras = result.finish()
                self._send_reply(req, reply, extras)
            else:
                self._running = _Running(req, t + result.cost_us, result.finish)
            return
        if result is None:
            self.endpoint.in_flight.discard(req.seq)
            return
        if isinstance(result, tuple):
            self._send_reply(req, result[0], result[1])
        else:
            self._send_reply(req, result, [])

    def _send_reply(self, req: Request, reply: BaseMessage, extras: Sequence[BaseMessage]) -> None:
        self.endpoint.in_flight.discard(req.seq)
        self._out(self.endpoint.respond(req.seq, reply), False)
        for m in extras:
            stream = isinstance(m, AgingSamples | SweepPoints | Spectrum)
            self._emit(m, stream=stream)

    def _execute(self, req: Request) -> _Result:
        m = req.message
        name = _HANDLERS.get(type(m))
        if name is None:
            raise CommandError(ErrorCode.UNKNOWN_MESSAGE, f"{m.NAME} is not handled by this board")
        handler: Callable[[BaseMessage], _Result] = getattr(self, name)
        return handler(m)

    # -- argument checks ----------------------------------------------------------------------
    @staticmethod
    def _finite(name: str, value: float) -> float:
        if not math.isfinite(value):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} is {value}: must be a finite number")
        return value

    def _pixel_arg(self, pixel: int, allow_none: bool = False) -> None:
        lo = 0 if allow_none else 1
        if not lo <= pixel <= self.layout.n_pixels:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"pixel {pixel} unknown: board has pixels 1..{self.layout.n_pixels}"
                               + (" (0 = none)" if allow_none else ""))

    def _channel_arg(self, channel: int) -> None:
        if not 0 <= channel < self.n_channels:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"channel {channel} unknown: board has channels 0..{self.n_channels - 1}")

    def _gain_arg(self, name: str, gain: int) -> None:
        n = len(self.cfg.pd_gains_v_per_a)
        if not 0 <= gain < n:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} {gain} out of range 0..{n - 1}")

    def _range_arg(self, name: str, value: float, lo: float, hi: float, lo_open: bool = True) -> None:
        self._finite(name, value)
        if (value <= lo if lo_open else value < lo) or value > hi:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"{name} {value:g} out of range {'(' if lo_open else '['}{lo:g}, {hi:g}]")

    def _not_sweeping(self, what: str) -> None:
        if self.sweep is not None:
            raise CommandError(ErrorCode.BUSY, f"{what}: sweep {self.sweep.sweep_id} is running "
                               "(sweep_abort first)")

    def _interlock_closed(self, what: str) -> None:
        if self.interlock_open:
            raise CommandError(ErrorCode.INTERLOCK, f"{what}: interlock is open; outputs are disabled")

    # -- handlers -----------------------------------------------------------------------------
    def _h_hello(self, m: Hello) -> _Result:
        if self.hello_busy > 0:
            self.hello_busy -= 1
            raise CommandError(ErrorCode.BUSY, "board is held by another host")
        spec_hash = SPEC_HASH if self.hello_spec_hash is None else self.hello_spec_hash
        reply = HelloReply(protocol_version=PROTOCOL_VERSION, spec_hash=spec_hash, boot_id=self.boot_id,
                           firmware_version=FIRMWARE_VERSION, serial_number=self.serial_number[:32])
        notices, self._boot_notices = self._boot_notices, []
        return reply, notices

    def _h_capabilities(self, m: GetCapabilities) -> _Result:
        return self.capabilities()

    def _h_ping(self, m: Ping) -> _Result:
        return Pong(nonce=m.nonce, t_us=self.clock_us())

    def _h_status(self, m: GetStatus) -> _Result:
        return self.status()

    def _h_all_off(self, m: AllOff) -> _Result:
        self._outputs_off(cause="all_off")
        return Ok(value=0)

    def _h_watchdog(self, m: SetWatchdog) -> _Result:
        try:
            policy = WatchdogPolicy(m.policy)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"policy {m.policy} unknown (0 KEEP_AGING, 1 GO_SAFE)") from None
        self.watchdog_timeout_ms = int(m.timeout_ms)
        self.watchdog_policy = policy
        self._last_heard_wall = self._wall_now
        self._wd_fired = False
        self._latched &= ~Fault.WATCHDOG_EXPIRED
        return Ok(value=0)

    def _h_mux(self, m: MuxSelect) -> _Result:
        self._not_sweeping("mux_select")
        self._pixel_arg(m.pixel, allow_none=True)
        if m.pixel and (ch := self._channel_of_pixel(m.pixel)) is not None:
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by aging channel {ch.index}")
        self.mux = m.pixel
        return Ok(value=0)

    def _h_smu_configure(self, m: SmuConfigure) -> _Result:
        self._not_sweeping("smu_configure")
        try:
            mode = SmuMode(m.mode)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"mode {m.mode} unknown (0 SOURCE_V, 1 SOURCE_I)") from None
        ranges = self.cfg.smu_current_ranges_a if mode == SmuMode.SOURCE_V else self.cfg.smu_voltage_ranges_v
        if m.range_index != AUTO_RANGE and not 0 <= m.range_index < len(ranges):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"range_index {m.range_index} out of range "
                               f"0..{len(ranges) - 1} or 255 (auto)")
        self._finite("compliance", m.compliance)
        if m.compliance <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"compliance {m.compliance:g} must be > 0")
        if mode == SmuMode.SOURCE_V and m.compliance > self.cfg.max_current_a:
            raise CommandError(ErrorCode.LIMIT, f"compliance {m.compliance:g} A beyond max_current_a "
                               f"{self.cfg.max_current_a:g} A")
        if mode == SmuMode.SOURCE_I and m.compliance > self.cfg.max_voltage_v:
            raise CommandError(ErrorCode.LIMIT, f"compliance {m.compliance:g} V beyond max_voltage_v "
                               f"{self.cfg.max_voltage_v:g} V")
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        if mode != self.smu.mode:
            self.smu.output_on = False
        self.smu.mode = mode
        self.smu.range_index = m.range_index
        self.smu.compliance = float(m.compliance)
        self.smu.integration_ms = float(m.integration_ms)
        return Ok(value=0)

    def _h_smu_output(self, m: SmuOutput) -> _Result:
        self._not_sweeping("smu_output")
        self._finite("level", m.level)
        if self.smu.mode == SmuMode.SOURCE_V and abs(m.level) > self.cfg.max_voltage_v:
            raise CommandError(ErrorCode.LIMIT, f"level {m.level:g} V beyond max_voltage_v "
                               f"{self.cfg.max_voltage_v:g} V")
        if self.smu.mode == SmuMode.SOURCE_I and abs(m.level) > self.cfg.max_current_a:
            raise CommandError(ErrorCode.LIMIT, f"level {m.level:g} A beyond max_current_a "
                               f"{self.cfg.max_current_a:g} A")
        if m.enable:
            self._interlock_closed("smu_output")
            if self.mux and (ch := self._channel_of_pixel(self.mux)) is not None:
                raise CommandError(ErrorCode.BUSY, f"pixel {self.mux} is driven by aging channel {ch.index}")
        self.smu.output_on = bool(m.enable)
        self.smu.level = float(m.level)
        return Ok(value=0)

    def _h_smu_measure(self, m: SmuMeasure) -> _Result:
        self._not_sweeping("smu_measure")
        cost = round(self.smu.integration_ms * 1000)
        return _Deferred(cost, self._finish_smu_measure)

    def _finish_smu_measure(self) -> tuple[BaseMessage, list[BaseMessage]]:
        cfg = self.cfg
        px = self.pixels[self.mux - 1] if self.mux else None
        ro = smu_solve(self.smu, cfg, px)
        z = self._rng_smu.standard_normal(3)
        if self.smu.mode == SmuMode.SOURCE_V:
            irange, over = pick_range(cfg.smu_current_ranges_a, ro.current_a, self.smu.range_index)
            vrange, _ = pick_range(cfg.smu_voltage_ranges_v, ro.voltage_v, AUTO_RANGE)
        else:
            vrange, over = pick_range(cfg.smu_voltage_ranges_v, ro.voltage_v, self.smu.range_index)
            irange, _ = pick_range(cfg.smu_current_ranges_a, ro.current_a, AUTO_RANGE)
        v = float(smu_noise(ro.voltage_v, vrange, z[0], cfg))
        i = float(smu_noise(ro.current_a, irange, z[1], cfg))
        if over and self.smu.mode == SmuMode.SOURCE_V:
            i = math.copysign(irange * 1.05, i)
        elif over:
            v = math.copysign(vrange * 1.05, v)
        flags = SampleFlags.COMPLIANCE if (ro.compliance or over) else SampleFlags.NONE
        pd_a, gain = 0.0, 0
        if px is not None:
            sig = float(px.pd_signal_a(ro.op, ro.deg)) if ro.op is not None and ro.deg is not None else 0.0
            pd_a, gain, pflags = self._pd_once(px.number, sig, z[2:3], self.smu.integration_ms)
            flags |= pflags
        return SmuReading(t_us=self.clock_us(), voltage_v=v, current_a=i, photodiode_a=pd_a, pd_gain=gain,
                          flags=int(flags)), []

    def _pd_once(self, pixel: int, signal_a: float, z: NDArray[np.float64],
                 integration_ms: float) -> tuple[float, int, int]:
        temp = float(self.thermal.substrate_c(self._substrate_power())[self.pixels[pixel - 1].spec.substrate])
        pdv = self.photodiodes
        vals, gains, flags, g = pdv.read(np.array([signal_a + pdv.background_a(pixel, temp)]),
                                         int(pdv.gain_index[pixel]), bool(pdv.autorange[pixel]), z,
                                         integration_ms)
        pdv.gain_index[pixel] = g
        return float(vals[0]), int(gains[0]), int(flags[0])

    def _pixel_light(self, pixel: int) -> tuple[OperatingPoint | None, Degradation | None, float, float]:
        """(op, degradation, voltage, current) of a pixel as it is driven now (None: dark)."""
        px = self.pixels[pixel - 1]
        ch = self._channel_of_pixel(pixel)
        if ch is not None:
            ch.sync(self.t_us)
            deg = px.degradation()
            if deg.failure != FailureMode.NONE:
                return None, None, 0.0, 0.0
            v = float(px.voltage_at(ch.current_a, deg))
            return px.operate_v(v, deg), deg, v, ch.current_a
        if self.mux == pixel and self.smu.output_on:
            ro = smu_solve(self.smu, self.cfg, px)
            return ro.op, ro.deg, ro.voltage_v, ro.current_a
        return None, None, 0.0, 0.0

    def _h_pd_configure(self, m: PdConfigure) -> _Result:
        self._pixel_arg(m.pixel, allow_none=True)
        self._gain_arg("gain_index", m.gain_index)
        sel = slice(None) if m.pixel == 0 else slice(m.pixel, m.pixel + 1)
        self.photodiodes.gain_index[sel] = m.gain_index
        self.photodiodes.autorange[sel] = bool(m.autorange)
        return Ok(value=0)

    def _h_pd_read(self, m: PdRead) -> _Result:
        self._pixel_arg(m.pixel)
        if not 1 <= m.n <= MAX_PD_READS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"n {m.n} out of range 1..{MAX_PD_READS}")
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        cost = round(m.n * m.integration_ms * 1000)

        def finish() -> tuple[BaseMessage, list[BaseMessage]]:
            op, deg, _, _ = self._pixel_light(m.pixel)
            px = self.pixels[m.pixel - 1]
            sig = float(px.pd_signal_a(op, deg)) if op is not None and deg is not None else 0.0
            temp = float(self.thermal.substrate_c(self._substrate_power())[px.spec.substrate])
            pdv = self.photodiodes
            z = self._rng_read.standard_normal(m.n)
            mean, std, g, flags = pdv.read_stats(sig + pdv.background_a(m.pixel, temp), m.n,
                                                 int(pdv.gain_index[m.pixel]), bool(pdv.autorange[m.pixel]),
                                                 z, m.integration_ms)
            pdv.gain_index[m.pixel] = g
            return PdReading(pixel=m.pixel, gain_index=g, flags=flags, mean_a=mean, std_a=std), []

        return _Deferred(cost, finish)

    def _h_spectrum(self, m: SpectrumAcquire) -> _Result:
        self._not_sweeping("spectrum_acquire")
        self._pixel_arg(m.pixel)
        self._range_arg("integration_ms", m.integration_ms, 0.0, MAX_SPECTRUM_INTEGRATION_MS)

        def finish() -> tuple[BaseMessage, list[BaseMessage]]:
            op, deg, v, i = self._pixel_light(m.pixel)
            px = self.pixels[m.pixel - 1]
            counts, dark, flags = self.spectrometer.acquire(px, op, deg, m.integration_ms, self._rng_spec)
            seq = self.spectrum_ring.next_seq32()
            msg = Spectrum(seq=seq, t_us=self.clock_us(), sweep_id=_NO_SWEEP_ID, index=0, pixel=m.pixel,
                           flags=flags, voltage_v=v, current_a=i, integration_ms=float(m.integration_ms),
                           dark_counts=float(dark), counts=tuple(int(c) for c in counts))
            self.spectrum_ring.push(msg)
            self.counters.produced[Stream.SPECTRUM] += 1
            return Ok(value=seq), [msg]

        return _Deferred(round(m.integration_ms * 1000), finish)

    def _sweep_program(self, m: SweepStart) -> NDArray[np.float64]:
        if m.voltages_v:
            v = np.asarray(m.voltages_v, dtype=np.float64)
            if not np.all(np.isfinite(v)):
                raise CommandError(ErrorCode.BAD_ARGUMENT, "voltages_v contains NaN or inf")
            return v
        for name in ("start_v", "stop_v", "step_v"):
            self._finite(name, getattr(m, name))
        start, stop, step = float(m.start_v), float(m.stop_v), float(m.step_v)
        if step == 0 and start != stop:
            raise CommandError(ErrorCode.BAD_ARGUMENT, "step_v is 0 (and no voltages_v list)")
        if step != 0 and (stop - start) * step < 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"step_v {step:g} goes away from stop_v {stop:g} (start_v {start:g})")
        if start == stop:
            return np.array([start])
        n_steps = math.floor((stop - start) / step + 1e-9)
        if n_steps + 1 > MAX_SWEEP_POINTS:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"sweep has {n_steps + 1} points > max {MAX_SWEEP_POINTS}")
        v = start + step * np.arange(n_steps + 1, dtype=np.float64)
        if abs(v[-1] - stop) > 1e-6 * abs(step):
            v = np.append(v, stop)
        else:
            v[-1] = stop
        return v

    def _h_sweep_start(self, m: SweepStart) -> _Result:
        if self.sweep is not None:
            raise CommandError(ErrorCode.BUSY, f"sweep {self.sweep.sweep_id} is already running")
        self._pixel_arg(m.pixel)
        volts = self._sweep_program(m)
        if len(volts) > MAX_SWEEP_POINTS:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"sweep has {len(volts)} points > max {MAX_SWEEP_POINTS}")
        vmax = float(np.max(np.abs(volts)))
        if vmax > self.cfg.max_voltage_v:
            raise CommandError(ErrorCode.LIMIT, f"sweep reaches {vmax:g} V beyond max_voltage_v "
                               f"{self.cfg.max_voltage_v:g} V")
        self._finite("compliance_a", m.compliance_a)
        if m.compliance_a <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"compliance_a {m.compliance_a:g} must be > 0")
        if m.compliance_a > self.cfg.max_current_a:
            raise CommandError(ErrorCode.LIMIT, f"compliance_a {m.compliance_a:g} A beyond max_current_a "
                               f"{self.cfg.max_current_a:g} A")
        self._range_arg("dwell_ms", m.dwell_ms, 0.0, MAX_DWELL_MS, lo_open=False)
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        if m.options & ~0x07:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"options 0x{m.options:02X}: bits 3-7 are reserved")
        self._gain_arg("pd_gain", m.pd_gain)
        if m.spectrum_at_v:
            if not all(math.isfinite(v) for v in m.spectrum_at_v):
                raise CommandError(ErrorCode.BAD_ARGUMENT, "spectrum_at_v contains NaN or inf")
            self._range_arg("spectrum_integration_ms", m.spectrum_integration_ms, 0.0,
                            MAX_SPECTRUM_INTEGRATION_MS)
        self._finite("breakdown_v_drop", m.breakdown_v_drop)
        if m.breakdown_v_drop < 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"breakdown_v_drop {m.breakdown_v_drop:g} must be >= 0")
        self._interlock_closed("sweep_start")
        if (ch := self._channel_of_pixel(m.pixel)) is not None:
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by aging channel {ch.index}")
        self.mux = m.pixel
        self.smu.output_on = True
        self.smu.mode = SmuMode.SOURCE_V
        self.smu.level = float(volts[0])
        self.sweep = SweepRun(self, m, volts, self.t_us)
        return Ok(value=self.sweep_ring.head & SEQ_MASK)

    def _h_sweep_abort(self, m: SweepAbort) -> _Result:
        self._end_sweep(SweepEnd.ABORTED)
        return Ok(value=0)

    def _h_aging_start(self, m: AgingStart) -> _Result:
        self._channel_arg(m.channel)
        self._pixel_arg(m.pixel)
        other = self._channel_of_pixel(m.pixel)
        if other is not None and other.index != m.channel:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"pixel {m.pixel} is already on aging channel {other.index}")
        cfg = self.cfg
        self._finite("current_a", m.current_a)
        if m.current_a <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"current_a {m.current_a:g} must be > 0")
        if m.current_a > cfg.max_aging_current_a:
            raise CommandError(ErrorCode.LIMIT, f"current_a {m.current_a:g} A beyond max_aging_current_a "
                               f"{cfg.max_aging_current_a:g} A")
        if not MIN_AGING_INTERVAL_MS <= m.interval_ms <= MAX_AGING_INTERVAL_MS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"interval_ms {m.interval_ms} out of range "
                               f"{MIN_AGING_INTERVAL_MS}..{MAX_AGING_INTERVAL_MS}")
        self._finite("compliance_v", m.compliance_v)
        if m.compliance_v <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"compliance_v {m.compliance_v:g} must be > 0")
        if m.compliance_v > cfg.aging_compliance_v:
            raise CommandError(ErrorCode.LIMIT, f"compliance_v {m.compliance_v:g} V beyond "
                               f"aging_compliance_v {cfg.aging_compliance_v:g} V")
        self._gain_arg("pd_gain", m.pd_gain)
        self._interlock_closed("aging_start")
        running = self.channels[m.channel]
        if running is not None:
            raise CommandError(ErrorCode.BUSY, f"channel {m.channel} is running (pixel "
                               f"{running.pixel.number}); aging_stop it first")
        if (self.sweep is not None and self.sweep.pixel.number == m.pixel) or (
                self.mux == m.pixel and self.smu.output_on):
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by the SMU")
        px = self.pixels[m.pixel - 1]
        current = float(np.float32(m.current_a))
        t = self.t_us
        ch = AgingChannel(
            index=m.channel, pixel=px, current_a=current, interval_us=int(m.interval_ms) * 1000,
            compliance_v=float(np.float32(m.compliance_v)), gain=int(m.pd_gain),
            fresh=px.fresh_at_current(current), accel=px.accel(current), next_t=t, anchor_t=t,
            anchor_dose=px.dose_ref_h, rng=self._rng_ch[m.channel])
        self._predict_stop(ch)
        self.channels[m.channel] = ch
        return Ok(value=self.aging_ring.head & SEQ_MASK)

    def _h_aging_set(self, m: AgingSet) -> _Result:
        self._channel_arg(m.channel)
        ch = self.channels[m.channel]
        self._finite("current_a", m.current_a)
        if m.current_a <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"current_a {m.current_a:g} must be > 0")
        if m.current_a > self.cfg.max_aging_current_a:
            raise CommandError(ErrorCode.LIMIT, f"current_a {m.current_a:g} A beyond max_aging_current_a "
                               f"{self.cfg.max_aging_current_a:g} A")
        if m.interval_ms != 0 and not MIN_AGING_INTERVAL_MS <= m.interval_ms <= MAX_AGING_INTERVAL_MS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"interval_ms {m.interval_ms} out of range "
                               f"{MIN_AGING_INTERVAL_MS}..{MAX_AGING_INTERVAL_MS} (0 keeps it)")
        if ch is None:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"channel {m.channel} is not running")
        self._interlock_closed("aging_set")
        t = self.t_us
        ch.sync(t)
        current = float(np.float32(m.current_a))
        ch.current_a = current
        ch.fresh = ch.pixel.fresh_at_current(current)
        ch.accel = ch.pixel.accel(current)
        if m.interval_ms:
            ch.interval_us = int(m.interval_ms) * 1000
        ch.next_t = t + ch.interval_us
        self._predict_stop(ch)
        return Ok(value=0)

    def _h_aging_stop(self, m: AgingStop) -> _Result:
        self._channel_arg(m.channel)
        ch = self.channels[m.channel]
        if ch is not None:
            self._stop_channel(ch, "command")
        return Ok(value=0)

    def _stream_arg(self, stream: int) -> Stream:
        try:
            return Stream(stream)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"stream {stream} unknown (0 AGING, 1 SWEEP, "
                               "2 SPECTRUM)") from None

    def _h_stream_ack(self, m: StreamAck) -> _Result:
        try:
            s = self._stream_arg(m.stream)
        except CommandError:
            return None
        self.rings[s].ack(m.seq)
        return None

    def _h_stream_replay(self, m: StreamReplay) -> _Result:
        s = self._stream_arg(m.stream)
        ring = self.rings[s]
        first, last = ring.replay_range(m.from_seq, m.to_seq)
        value = first & SEQ_MASK
        msgs: list[BaseMessage] = []
        if first <= last:
            if isinstance(ring, MessageRing):
                msgs.extend(ring.get(first, last))
                self.counters.replayed[s] += len(msgs)
            else:
                recs = ring.get(first, last)
                self.counters.replayed[s] += len(recs)
                if s == Stream.AGING:
                    msgs.extend(AgingSamples(records=recs[i : i + _AGING_PER_FRAME])
                                for i in range(0, len(recs), _AGING_PER_FRAME))
                else:
                    msgs.extend(SweepPoints(records=recs[i : i + _SWEEP_PER_FRAME])
                                for i in range(0, len(recs), _SWEEP_PER_FRAME))
        return Ok(value=value), msgs


_HANDLERS: dict[type[BaseMessage], str] = {
    Hello: "_h_hello",
    GetCapabilities: "_h_capabilities",
    Ping: "_h_ping",
    GetStatus: "_h_status",
    AllOff: "_h_all_off",
    SetWatchdog: "_h_watchdog",
    MuxSelect: "_h_mux",
    SmuConfigure: "_h_smu_configure",
    SmuOutput: "_h_smu_output",
    SmuMeasure: "_h_smu_measure",
    PdConfigure: "_h_pd_configure",
    PdRead: "_h_pd_read",
    SpectrumAcquire: "_h_spectrum",
    SweepStart: "_h_sweep_start",
    SweepAbort: "_h_sweep_abort",
    AgingStart: "_h_aging_start",
    AgingSet: "_h_aging_set",
    AgingStop: "_h_aging_stop",
    StreamAck: "_h_stream_ack",
    StreamReplay: "_h_stream_replay",
}
"""Request type → handler method; every host-to-board message of the spec has one."""
