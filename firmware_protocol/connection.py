"""Host-side connection state machine, sans-I/O in the manner of h11.

The whole contract::

    conn = Connection()
    wire.write(conn.start_handshake(now))
    conn.receive_data(wire.read())          # bytes in
    while (ev := conn.next_event()) is not None:
        ...                                  # frozen dataclass events
    seq, data = conn.send_request(msg, now)  # bytes out
    wire.write(conn.poll(now))               # retransmissions; queues timeout events

Time is whatever the caller passes as ``now`` (seconds, any monotonic origin). Nothing here
touches sockets, serial ports, asyncio or clocks.

Requests are retried with the same seq and the RETRY flag; the board answers a retried seq
from its cache of recent replies instead of executing the command twice (and ignores a retry of
one still queued or running), so every request is safe to repeat. A request is first retried
only once its reply is overdue: when the board would have finished the requests queued ahead of
it and its own declared cost (:func:`~firmware_protocol.spec.request_cost_ms`: a spectrum's
integration, a photodiode average's n × integration, an SMU reading's integration) plus
``timeout_s``, the link's margin. A 6 s spectrum is never given up after 0.5 s.

Stream records carry 32-bit sequence numbers which the connection unwraps to 64 bits,
de-duplicates, and checks for gaps (:class:`GapDetected` tells the caller to ask for a replay).

Board epochs. A board reset that loses its ring buffers restarts its sequence counters (and its
clock, which lives in the same retained RAM) at 0. The host keeps one monotonic sequence per
stream anyway: each restart opens a new host *epoch* whose records map to host seqs from a
``base`` above everything the previous epoch used (host seq = base + board seq), and whose
board times map to a host time axis continuing after the last time the host saw (host t_us =
t_offset_us + board t_us). :meth:`Connection.reconcile_heads` decides, from the status the host
reads at every (re)connection, whether the counters continued or restarted; what the host never
received and the board no longer holds is reported once as :class:`RecordsLost` and no longer
tracked, so acknowledgement moves past it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .base import BaseMessage
from .codec import FrameError, FrameReceived, StreamDecoder, encode_frame
from .messages import (
    AgingSamples,
    Error,
    Hello,
    HelloReply,
    Spectrum,
    Status,
    SweepPoints,
)
from .spec import (
    MESSAGES_BY_ID,
    MESSAGES_BY_NAME,
    PROTOCOL_VERSION,
    SPEC_HASH,
    ErrorCode,
    FrameFlags,
    Stream,
    request_cost_ms,
)

# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshaked:
    reply: HelloReply


@dataclass(frozen=True)
class HandshakeFailed:
    """The handshake did not succeed. ``retryable``: the board answered ``hello`` with an
    ``error`` other than VERSION_MISMATCH (e.g. BUSY: another host holds it), so trying again
    later may work; a mismatch of protocol or spec never will."""

    reason: str
    retryable: bool = False


@dataclass(frozen=True)
class Response:
    seq: int
    request: str
    message: BaseMessage


@dataclass(frozen=True)
class RequestFailed:
    """The board answered a request with an ``error`` message."""

    seq: int
    request: str
    code: int
    detail: str


@dataclass(frozen=True)
class RequestTimedOut:
    seq: int
    request: str
    attempts: int


@dataclass(frozen=True, eq=False)
class StreamRecords:
    """New (never delivered before) records of a stream, with their unwrapped 64-bit seqs."""

    stream: Stream
    records: np.ndarray
    seq64: np.ndarray
    epoch: int = 0
    """The host epoch the records belong to (see the module docstring)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamRecords):
            return NotImplemented
        return (self.stream == other.stream and self.records.tobytes() == other.records.tobytes()
                and np.array_equal(self.seq64, other.seq64) and self.epoch == other.epoch)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SpectrumReceived:
    message: Spectrum
    seq64: int
    epoch: int = 0


@dataclass(frozen=True)
class GapDetected:
    """Records ``from_seq``..``to_seq`` (unwrapped, inclusive) of a stream are missing."""

    stream: Stream
    from_seq: int
    to_seq: int


@dataclass(frozen=True)
class RecordsLost:
    """Records ``from_seq``..``to_seq`` (host seqs, inclusive) of ``stream`` will never arrive:
    the board no longer holds them. ``reason`` is ``board_reset`` (a reset lost the board's
    rings) or ``ring_overwritten`` (a replay found them overwritten). Raised once per hole.
    ``t_before_us``/``t_after_us`` bound the lost span in host board time where the connection
    knows them (the last record it got before the hole; the reset), else None."""

    stream: Stream
    from_seq: int
    to_seq: int
    reason: str
    epoch: int
    t_before_us: int | None = None
    t_after_us: int | None = None

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1


@dataclass(frozen=True)
class EpochStarted:
    """The board's counters and clock restarted (a reset that lost its rings): from now on a
    record's host seq is ``base[stream]`` + its board seq and its host time ``t_offset_us`` + its
    board time. ``epoch`` counts such restarts seen by this host (0 = the first epoch)."""

    epoch: int
    boot_id: int
    base: dict[Stream, int]
    t_offset_us: int


@dataclass(frozen=True)
class Unsolicited:
    """A board-initiated message: status, event, sweep_done, or a reply nobody waits for."""

    message: BaseMessage


@dataclass(frozen=True)
class FrameDropped:
    reason: str
    detail: str


@dataclass(frozen=True)
class BoardRebooted:
    old_boot_id: int
    new_boot_id: int


Event = (Handshaked | HandshakeFailed | Response | RequestFailed | RequestTimedOut
         | StreamRecords | SpectrumReceived | GapDetected | Unsolicited | FrameDropped
         | BoardRebooted | RecordsLost | EpochStarted)


class ConnState(enum.Enum):
    IDLE = "idle"
    HANDSHAKING = "handshaking"
    READY = "ready"
    FAILED = "failed"


# Transition table: (state, trigger) -> next state. Triggers not listed are errors.
TRANSITIONS: dict[tuple[ConnState, str], ConnState] = {
    (ConnState.IDLE, "start_handshake"): ConnState.HANDSHAKING,
    (ConnState.READY, "start_handshake"): ConnState.HANDSHAKING,
    (ConnState.FAILED, "start_handshake"): ConnState.HANDSHAKING,
    # the host gave up waiting for hello_reply (its own deadline) and connects again
    (ConnState.HANDSHAKING, "start_handshake"): ConnState.HANDSHAKING,
    (ConnState.HANDSHAKING, "hello_ok"): ConnState.READY,
    (ConnState.HANDSHAKING, "hello_mismatch"): ConnState.FAILED,
    (ConnState.HANDSHAKING, "hello_timeout"): ConnState.FAILED,
}


class LocalProtocolError(Exception):
    """The caller used the connection in a way its state does not allow."""


# --- sequence tracking ------------------------------------------------------------------------

_MOD = 1 << 32
_HALF = 1 << 31


class SeqTracker:
    """Unwraps 32-bit sequence numbers, drops duplicates, remembers holes.

    ``expected`` is the next unwrapped seq after the highest one seen; ``missing`` is a sorted
    list of inclusive ``[lo, hi]`` holes below it.
    """

    def __init__(self, expected: int | None = None, base: int = 0) -> None:
        self.expected = expected
        self.base = base
        """Host seq of board seq 0 in the current epoch (host seq = base + board seq)."""
        self.missing: list[list[int]] = []
        self.duplicates = 0
        self.delivered = 0
        self.last_t_us: int | None = None
        """Host board time of the highest record delivered (records carrying ``t_us``)."""

    def unwrap(self, seqs: np.ndarray) -> np.ndarray:
        s = seqs.astype(np.int64)
        if self.expected is None:
            return s + self.base
        ref = self.expected - self.base
        delta = (s - (ref % _MOD)) % _MOD
        delta = np.where(delta >= _HALF, delta - _MOD, delta)
        return self.base + ref + delta

    def to_board(self, seq64: int) -> int:
        """The 32-bit board seq of host seq ``seq64`` (of the current epoch)."""
        return (seq64 - self.base) % _MOD

    def drop_range(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Stop tracking ``lo``..``hi``: the holes inside it are given up (returned, clipped);
        if it reaches past ``expected``, ``expected`` moves to ``hi + 1``."""
        gone: list[tuple[int, int]] = []
        keep: list[list[int]] = []
        for a, b in self.missing:
            if b < lo or a > hi:
                keep.append([a, b])
                continue
            gone.append((max(a, lo), min(b, hi)))
            if a < lo:
                keep.append([a, lo - 1])
            if b > hi:
                keep.append([hi + 1, b])
        self.missing = keep
        if self.expected is not None and hi >= self.expected:
            gone.append((max(lo, self.expected), hi))
            self.expected = hi + 1
        return gone

    def accept(self, seqs32: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Returns (mask of new records, their unwrapped seqs, newly found gaps)."""
        n = len(seqs32)
        if n == 0:
            return np.zeros(0, bool), np.zeros(0, np.int64), []
        seq64 = self.unwrap(seqs32)
        if self.expected is None:
            self.expected = int(seq64[0])
        exp = self.expected
        # Fast path: exactly the next contiguous block.
        if not self.missing and seq64[0] == exp and seq64[-1] - seq64[0] == n - 1 and (
                n == 1 or bool(np.all(np.diff(seq64) == 1))):
            self.expected = int(seq64[-1]) + 1
            self.delivered += n
            return np.ones(n, bool), seq64, []
        new = np.zeros(n, bool)
        gaps: list[tuple[int, int]] = []
        seen_in_block: set[int] = set()
        for i in range(n):
            s = int(seq64[i])
            if s in seen_in_block:
                self.duplicates += 1
                continue
            if s >= self.expected:
                if s > self.expected:
                    gaps.append((self.expected, s - 1))
                    self.missing.append([self.expected, s - 1])
                self.expected = s + 1
                new[i] = True
            elif self._fill(s):
                new[i] = True
            else:
                self.duplicates += 1
                continue
            seen_in_block.add(s)
        self.delivered += int(new.sum())
        return new, seq64, gaps

    def note_head(self, head: int) -> list[tuple[int, int]]:
        """The board says its next seq is ``head`` (unwrapped): records up to head-1 we have not
        seen are missing. Returns the newly found gap (a tail loss no later record revealed)."""
        if self.expected is None:
            self.expected = head
            return []
        if head <= self.expected:
            return []
        gap = (self.expected, head - 1)
        self.missing.append([gap[0], gap[1]])
        self.expected = head
        return [gap]

    def _fill(self, s: int) -> bool:
        for k, (lo, hi) in enumerate(self.missing):
            if lo <= s <= hi:
                if lo == hi:
                    del self.missing[k]
                elif s == lo:
                    self.missing[k][0] = s + 1
                elif s == hi:
                    self.missing[k][1] = s - 1
                else:
                    self.missing[k : k + 1] = [[lo, s - 1], [s + 1, hi]]
                return True
            if lo > s:
                return False
        return False

    @property
    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing)


# --- the connection ---------------------------------------------------------------------------


@dataclass
class _Pending:
    seq: int
    name: str
    data: bytes
    deadline: float
    attempts: int
    done_by: float = 0.0
    """When the board should have finished it: after the requests queued ahead and its cost."""


@dataclass
class Stats:
    frames_in: int = 0
    frames_out: int = 0
    retries: int = 0
    timeouts: int = 0
    late_replies: int = 0
    frame_errors: dict[str, int] = field(default_factory=dict)


class Connection:
    """The host's side of one board link."""

    def __init__(self, *, timeout_s: float = 0.5, max_attempts: int = 4,
                 spec_hash: int = SPEC_HASH, protocol_version: int = PROTOCOL_VERSION) -> None:
        if timeout_s <= 0 or max_attempts < 1:
            raise ValueError("timeout_s must be > 0 and max_attempts >= 1")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.spec_hash = spec_hash
        self.protocol_version = protocol_version
        self.state = ConnState.IDLE
        self.decoder = StreamDecoder(protocol_version)
        self.board: HelloReply | None = None
        self.boot_id: int | None = None
        self.trackers: dict[Stream, SeqTracker] = {s: SeqTracker() for s in Stream}
        self.stats = Stats(frame_errors=self.decoder.errors)
        self._events: deque[Event] = deque()
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 1
        self._hello_seq: int | None = None
        self.smu_integration_ms: float | None = None
        """The SMU integration of the last ``smu_configure`` sent (None: not known)."""
        # board epochs (see the module docstring)
        self.epoch = 0
        self.epoch_boot_id: int | None = None
        """The boot id the trackers' state was last reconciled with (None: not known)."""
        self.t_offset_us = 0
        self.last_board_t_us: int | None = None
        """Latest board time (the board's own clock) seen in this epoch."""
        self._last_heads: dict[Stream, int] = {}
        self._holding = False
        """Stream data is ignored between a handshake and :meth:`reconcile_heads` (the replay
        that follows resends it): until then the host cannot tell which epoch it belongs to."""
        self.lost: dict[Stream, int] = dict.fromkeys(Stream, 0)

    # -- state ------------------------------------------------------------------------------
    def _transition(self, trigger: str) -> None:
        nxt = TRANSITIONS.get((self.state, trigger))
        if nxt is None:
            raise LocalProtocolError(f"cannot {trigger} in state {self.state.value}")
        self.state = nxt

    def _alloc_seq(self) -> int:
        for _ in range(0xFFFF):
            seq = self._next_seq
            self._next_seq = self._next_seq % 0xFFFF + 1  # 1..65535; 0 marks unsolicited
            if seq not in self._pending:
                return seq
        raise LocalProtocolError("no free request sequence number (65535 outstanding)")

    # -- output -----------------------------------------------------------------------------
    def start_handshake(self, now: float) -> bytes:
        """Begin (or redo, after a reconnect) the handshake; returns the hello frame."""
        self._transition("start_handshake")
        self._pending.clear()
        self.smu_integration_ms = None  # a new session: the board may have been reset
        self.decoder = StreamDecoder(self.protocol_version)
        self.stats.frame_errors = self.decoder.errors
        seq, data = self._request(Hello(protocol_version=self.protocol_version,
                                        spec_hash=self.spec_hash), now)
        self._hello_seq = seq
        return data

    def send_request(self, msg: BaseMessage, now: float) -> tuple[int, bytes]:
        """Frame an acknowledged request; its answer comes back as an event with this seq."""
        if self.state is not ConnState.READY:
            raise LocalProtocolError(f"cannot send {msg.NAME} in state {self.state.value}")
        spec = MESSAGES_BY_ID[msg.MSG_ID]
        if spec.direction != "host_to_board":
            raise LocalProtocolError(f"{msg.NAME} is not a host-to-board message")
        if not spec.acked:
            raise LocalProtocolError(f"{msg.NAME} is not acknowledged; use send_unacked")
        return self._request(msg, now)

    def _request(self, msg: BaseMessage, now: float) -> tuple[int, bytes]:
        seq = self._alloc_seq()
        data = encode_frame(msg, seq)
        done_by = self.expected_done(msg, now)
        if msg.NAME == "smu_configure":
            self.smu_integration_ms = float(getattr(msg, "integration_ms", 0.0))
        self._pending[seq] = _Pending(seq, msg.NAME, data, done_by + self.timeout_s, 1, done_by)
        self.stats.frames_out += 1
        return seq, data

    def expected_done(self, msg: BaseMessage, now: float) -> float:
        """When the board should have executed ``msg`` if it were sent at ``now``: after every
        request still pending (the board runs them in arrival order) and its own cost."""
        start = max([now, *(p.done_by for p in self._pending.values())])
        return start + request_cost_ms(msg, self.smu_integration_ms) / 1000.0

    def send_unacked(self, msg: BaseMessage) -> bytes:
        """Frame a message the board does not answer (``stream_ack``)."""
        spec = MESSAGES_BY_ID[msg.MSG_ID]
        if spec.acked or spec.direction != "host_to_board":
            raise LocalProtocolError(f"{msg.NAME} is acknowledged; use send_request")
        if self.state is not ConnState.READY:
            raise LocalProtocolError(f"cannot send {msg.NAME} in state {self.state.value}")
        self.stats.frames_out += 1
        return encode_frame(msg, 0)

    def poll(self, now: float) -> bytes:
        """Retransmit requests whose deadline passed; queue timeouts for those out of tries."""
        out: list[bytes] = []
        for p in list(self._pending.values()):
            if now < p.deadline:
                continue
            if p.attempts >= self.max_attempts:
                del self._pending[p.seq]
                self.stats.timeouts += 1
                self._events.append(RequestTimedOut(p.seq, p.name, p.attempts))
                if p.seq == self._hello_seq and self.state is ConnState.HANDSHAKING:
                    self._transition("hello_timeout")
                    self._events.append(HandshakeFailed(
                        f"no answer to hello after {p.attempts} attempts"))
                continue
            p.attempts += 1
            p.deadline = now + self.timeout_s * p.attempts  # linear backoff
            self.stats.retries += 1
            out.append(_with_retry_flag(p.data))
        return b"".join(out)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def cancel(self, seq: int) -> None:
        self._pending.pop(seq, None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def resume_stream(self, stream: Stream, next_seq: int, base: int = 0) -> None:
        """Tell the tracker the next host seq it expects (e.g. from its store), and the host seq
        of board seq 0 in the board's current epoch."""
        self.trackers[stream] = SeqTracker(next_seq, base)

    # -- epochs -----------------------------------------------------------------------------
    def epoch_state(self) -> dict[str, object]:
        """What the host must keep (with each stream's next seq) to map a board's seqs and
        times after its own restart: restore it with :meth:`restore_epoch_state`."""
        return {"epoch": self.epoch, "boot_id": self.epoch_boot_id,
                "t_offset_us": self.t_offset_us, "last_board_t_us": self.last_board_t_us,
                "base": {s.name: self.trackers[s].base for s in Stream},
                "heads": {s.name: h for s, h in self._last_heads.items()}}

    def restore_epoch_state(self, state: dict[str, object]) -> None:
        self.epoch = int(state.get("epoch") or 0)  # type: ignore[call-overload]
        boot = state.get("boot_id")
        self.epoch_boot_id = None if boot is None else int(boot)  # type: ignore[call-overload]
        self.t_offset_us = int(state.get("t_offset_us") or 0)  # type: ignore[call-overload]
        last = state.get("last_board_t_us")
        self.last_board_t_us = None if last is None else int(last)  # type: ignore[call-overload]
        for name, base in dict(state.get("base") or {}).items():  # type: ignore[call-overload]
            if name in Stream.__members__:
                self.trackers[Stream[name]].base = int(base)
        for name, head in dict(state.get("heads") or {}).items():  # type: ignore[call-overload]
            if name in Stream.__members__:
                self._last_heads[Stream[name]] = int(head)

    def reconcile_heads(self, status: Status) -> list[tuple[Stream, int]]:
        """Compare a status read after a (re)connection with what the host expects.

        A board whose boot id changed and whose clock or counters are behind the host's lost
        its rings: a new epoch starts (:class:`EpochStarted`), what the host had not received
        of the old one is reported as :class:`RecordsLost`, and the new epoch is replayed from
        its first record. Otherwise (same boot, or a reset that kept the rings) the streams
        continue and each is replayed from the first record the host lacks; a head behind the
        host's on the same boot is no loss (a status read before records the host already got).
        Returns the replays to ask for, as (stream, first host seq). Stream data flows again.
        """
        heads = {Stream.AGING: status.aging_head_seq, Stream.SWEEP: status.sweep_head_seq,
                 Stream.SPECTRUM: status.spectrum_head_seq}
        same_boot = self.epoch_boot_id is not None and status.boot_id == self.epoch_boot_id
        restarted = False
        if not same_boot:
            if (self.epoch_boot_id is not None and self.last_board_t_us is not None
                    and status.t_us < self.last_board_t_us):
                restarted = True  # the clock restarted with the rings
            for stream in Stream:
                tr = self.trackers[stream]
                if tr.expected is not None and self._head64(stream, heads[stream]) < tr.expected:
                    restarted = True
        replays: list[tuple[Stream, int]] = []
        if restarted:
            self._start_epoch(status)
            for stream in Stream:
                tr = self.trackers[stream]
                if tr.expected is not None:
                    replays.append((stream, tr.expected))
        else:
            for stream in Stream:
                tr = self.trackers[stream]
                if tr.expected is None:  # never seen: start at the board's head
                    tr.expected = self._head64(stream, heads[stream])
                    continue
                replays.append((stream, tr.expected))
        self.epoch_boot_id = status.boot_id
        self._note_board_time(status.t_us)
        for stream in Stream:
            self._last_heads[stream] = self._head64(stream, heads[stream])
        self._holding = False
        return replays

    @property
    def holding(self) -> bool:
        """Stream data is being ignored until :meth:`reconcile_heads`."""
        return self._holding

    def _head64(self, stream: Stream, head32: int) -> int:
        return int(self.trackers[stream].unwrap(np.array([head32], dtype=np.uint32))[0])

    def _start_epoch(self, status: Status) -> None:
        old_epoch = self.epoch
        t_host_last = None if self.last_board_t_us is None else self.last_board_t_us + self.t_offset_us
        self.epoch += 1
        self.t_offset_us = 0 if t_host_last is None else t_host_last + 1
        base: dict[Stream, int] = {}
        for stream in Stream:
            tr = self.trackers[stream]
            if tr.expected is None:
                base[stream] = tr.base
                continue
            end = max(tr.expected, self._last_heads.get(stream, tr.expected))
            holes = [(lo, hi) for lo, hi in tr.missing]
            if end > tr.expected:
                holes.append((tr.expected, end - 1))
            for lo, hi in holes:
                self._lost(RecordsLost(stream, lo, hi, "board_reset", old_epoch,
                                       tr.last_t_us if hi == end - 1 else None,
                                       self.t_offset_us))
            nt = SeqTracker(end, end)
            nt.last_t_us = tr.last_t_us
            self.trackers[stream] = nt
            base[stream] = end
        self.last_board_t_us = None
        self._last_heads = {}
        self._events.append(EpochStarted(self.epoch, status.boot_id, base, self.t_offset_us))

    def _lost(self, ev: RecordsLost) -> None:
        self.lost[ev.stream] += ev.count
        self._events.append(ev)

    def replay_answered(self, stream: Stream, from_seq: int, first32: int) -> None:
        """The board answered a replay from host seq ``from_seq`` with its oldest record
        ``first32`` (board seq): records before it that the host still lacks are gone for good.
        They are reported once (:class:`RecordsLost`) and no longer asked for."""
        tr = self.trackers[stream]
        first = self._head64(stream, first32) if tr.expected is not None else from_seq
        if first <= from_seq:
            return
        for lo, hi in tr.drop_range(from_seq, first - 1):
            self._lost(RecordsLost(stream, lo, hi, "ring_overwritten", self.epoch))

    def _note_board_time(self, t_us: int) -> None:
        if self.last_board_t_us is None or t_us > self.last_board_t_us:
            self.last_board_t_us = t_us

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        for ev in self.decoder.feed(data):
            if isinstance(ev, FrameError):
                self._events.append(FrameDropped(ev.reason, ev.detail))
            else:
                self.stats.frames_in += 1
                self._handle(ev)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def _handle(self, fr: FrameReceived) -> None:
        msg, hdr = fr.message, fr.header
        if hdr.flags & FrameFlags.RESPONSE and hdr.seq:
            self._on_reply(hdr.seq, msg)
            return
        if self.state is not ConnState.READY:
            return  # stale stream data from before the handshake
        if self._holding and isinstance(msg, AgingSamples | SweepPoints | Spectrum):
            return  # its epoch is not known yet: the replay after reconcile_heads resends it
        if isinstance(msg, AgingSamples | SweepPoints):
            stream = Stream.AGING if isinstance(msg, AgingSamples) else Stream.SWEEP
            self._on_records(stream, msg.records)
            return
        if isinstance(msg, Spectrum):
            self._on_spectrum(msg)
            return
        if isinstance(msg, Status):
            self._on_status(msg)
        self._events.append(Unsolicited(msg))

    def _on_reply(self, seq: int, msg: BaseMessage) -> None:
        """A reply (RESPONSE flag) to the request ``seq``."""
        p = self._pending.pop(seq, None)
        if p is None:
            self.stats.late_replies += 1  # a reply to a retry already answered
            return
        if seq == self._hello_seq:
            self._on_hello(p, msg)
            return
        if isinstance(msg, Error):
            self._events.append(RequestFailed(seq, p.name, msg.code, msg.detail))
            return
        expected = MESSAGES_BY_NAME[p.name].reply or "ok"
        if expected != msg.NAME:
            self._events.append(RequestFailed(seq, p.name, -1, f"expected {expected}, got {msg.NAME}"))
            return
        self._events.append(Response(seq, p.name, msg))

    def _on_spectrum(self, msg: Spectrum) -> None:
        tr = self.trackers[Stream.SPECTRUM]
        new, seq64, gaps = tr.accept(np.array([msg.seq], dtype=np.uint32))
        for lo, hi in gaps:
            self._events.append(GapDetected(Stream.SPECTRUM, lo, hi))
        if new[0]:
            self._note_board_time(msg.t_us)
            if self.t_offset_us:
                msg = dataclasses.replace(msg, t_us=msg.t_us + self.t_offset_us)
            tr.last_t_us = msg.t_us
            self._events.append(SpectrumReceived(msg, int(seq64[0]), self.epoch))

    def _on_status(self, msg: Status) -> None:
        """An unsolicited status: a reset without the link dropping, or the heads the board holds."""
        if self.boot_id is not None and msg.boot_id != self.boot_id:
            # reset without the link dropping: hold stream data until the caller reconciles
            self._events.append(BoardRebooted(self.boot_id, msg.boot_id))
            self.boot_id = msg.boot_id
            self._holding = True
        elif msg.boot_id == self.epoch_boot_id and not self._holding:
            self._note_board_time(msg.t_us)
            for stream, head in ((Stream.AGING, msg.aging_head_seq),
                                 (Stream.SWEEP, msg.sweep_head_seq),
                                 (Stream.SPECTRUM, msg.spectrum_head_seq)):
                if self.trackers[stream].expected is not None:
                    h = self._head64(stream, head)
                    self._last_heads[stream] = max(h, self._last_heads.get(stream, h))

    def _on_records(self, stream: Stream, records: np.ndarray) -> None:
        tr = self.trackers[stream]
        new, seq64, gaps = tr.accept(records["seq"])
        for lo, hi in gaps:
            self._events.append(GapDetected(stream, lo, hi))
        if not new.any():
            return
        if not new.all():
            records, seq64 = records[new], seq64[new]
        t = records["t_us"]
        self._note_board_time(int(t.max()))
        if self.t_offset_us:
            records = records.copy()
            records["t_us"] = t + np.uint64(self.t_offset_us)
        tr.last_t_us = int(records["t_us"][-1])
        self._events.append(StreamRecords(stream, records, seq64, self.epoch))

    def _on_hello(self, p: _Pending, msg: BaseMessage) -> None:
        if not isinstance(msg, HelloReply):
            detail = msg.detail if isinstance(msg, Error) else msg.NAME
            retryable = isinstance(msg, Error) and msg.code != ErrorCode.VERSION_MISMATCH
            if isinstance(msg, Error):
                try:
                    detail = f"{ErrorCode(msg.code).name}: {detail}"
                except ValueError:
                    detail = f"error {msg.code}: {detail}"
            self._transition("hello_mismatch")
            self._events.append(HandshakeFailed(f"board refused hello: {detail}", retryable))
            return
        if msg.spec_hash != self.spec_hash or msg.protocol_version != self.protocol_version:
            self._transition("hello_mismatch")
            self._events.append(HandshakeFailed(
                f"protocol mismatch: board firmware {msg.firmware_version!r} "
                f"(serial {msg.serial_number}) speaks protocol v{msg.protocol_version} "
                f"spec 0x{msg.spec_hash:08X}; this host speaks protocol v{self.protocol_version} "
                f"spec 0x{self.spec_hash:08X}. Flash firmware built from this host's "
                f"firmware_protocol (python -m firmware_protocol c-header) or install the "
                f"matching host version."))
            return
        self._transition("hello_ok")
        if self.boot_id is not None and msg.boot_id != self.boot_id:
            self._events.append(BoardRebooted(self.boot_id, msg.boot_id))
        known = self.epoch_boot_id if self.epoch_boot_id is not None else self.boot_id
        if known is not None and msg.boot_id != known and any(
                tr.expected is not None for tr in self.trackers.values()):
            # another boot than the one the trackers follow: until reconcile_heads tells whether
            # its counters continued, stream data cannot be placed (the replay resends it)
            self._holding = True
        self.boot_id = msg.boot_id
        self.board = msg
        self._events.append(Handshaked(msg))


def _with_retry_flag(frame: bytes) -> bytes:
    """Re-frame a request with the RETRY flag set (same seq, same payload)."""
    from cobs import cobs

    from .codec import frame_bytes

    raw = cobs.decode(frame[:-1])
    version, msg_id, flags, seq = raw[0], raw[1], raw[2], int.from_bytes(raw[3:5], "little")
    payload = raw[7:-4]
    return frame_bytes(msg_id, payload, seq, flags | FrameFlags.RETRY, version)
