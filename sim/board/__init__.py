"""The board's firmware, in Python: message handling, the sweep program, aging channels, watchdog.

Sans-I/O like :mod:`firmware_protocol`: the server feeds it bytes (:meth:`Board.receive`), moves
its time forward (:meth:`Board.advance`) and sends what it produced (:meth:`Board.take_frames`).
Board time is virtual (:mod:`sim.clock`); the board does everything due up to the time it is
given, in time order, in bulk (the aging samples of every due channel and timestamp in one
numpy pass).

Organised as a firmware is, one layer per module, each using only the layers below it
(:class:`Board` is the top of the stack)::

    core.py       Board: the main loop (everything due, in time order) and the fault plan
    handlers.py   every request: its checks in the order below, and what it does
    rings.py      stream_ack and stream_replay
    safety.py     outputs off on every path: all_off, interlock, watchdog, reboot, failures
    sweep.py      the sweep engine (SweepRun: program, timeline, physics; points and spectra)
    aging.py      the aging scheduler (AgingChannel; samples in bulk; predicted self-stops)
    status.py     status and capabilities
    link.py       frames out (replies, events, stream blocks), the request queue, dispatch
    state.py      constants, counters, the board's parts and what a reset does to them
    endpoint.py   framing: reply cache, retries, unknown message ids

Pixel and channel numbers are u16 on the wire (protocol version 2): up to 1024 channels (as
many as ``status.aging_active`` names) and pixels.

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

from sim.board.aging import AgingChannel
from sim.board.core import Board
from sim.board.endpoint import SimEndpoint
from sim.board.state import (
    DEFAULT_RING_DEPTH,
    FIRMWARE_VERSION,
    MAX_AGING_CHANNELS,
    MAX_SAMPLES_PER_ADVANCE,
    SIM_VERSION,
    SPECTRUM_RING_DEPTH,
    SWEEP_RING_DEPTH,
    BoardCounters,
    CommandError,
    LinkAction,
)
from sim.board.sweep import SweepRun

__all__ = [
    "DEFAULT_RING_DEPTH",
    "FIRMWARE_VERSION",
    "MAX_AGING_CHANNELS",
    "MAX_SAMPLES_PER_ADVANCE",
    "SIM_VERSION",
    "SPECTRUM_RING_DEPTH",
    "SWEEP_RING_DEPTH",
    "AgingChannel",
    "Board",
    "BoardCounters",
    "CommandError",
    "LinkAction",
    "SimEndpoint",
    "SweepRun",
]
