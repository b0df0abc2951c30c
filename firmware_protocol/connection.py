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
"""

from __future__ import annotations

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
    reason: str


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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamRecords):
            return NotImplemented
        return (self.stream == other.stream and self.records.tobytes() == other.records.tobytes()
                and np.array_equal(self.seq64, other.seq64))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SpectrumReceived:
    message: Spectrum
    seq64: int


@dataclass(frozen=True)
class GapDetected:
    """Records ``from_seq``..``to_seq`` (unwrapped, inclusive) of a stream are missing."""

    stream: Stream
    from_seq: int
    to_seq: int


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
         | BoardRebooted)


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

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected
        self.missing: list[list[int]] = []
        self.duplicates = 0
        self.delivered = 0

    def unwrap(self, seqs: np.ndarray) -> np.ndarray:
        s = seqs.astype(np.int64)
        if self.expected is None:
            return s
        ref = self.expected
        delta = (s - (ref % _MOD)) % _MOD
        delta = np.where(delta >= _HALF, delta - _MOD, delta)
        return ref + delta

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

    def resume_stream(self, stream: Stream, next_seq: int) -> None:
        """Tell the tracker the next unwrapped seq the host expects (e.g. from its store)."""
        self.trackers[stream] = SeqTracker(next_seq)

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
            p = self._pending.pop(hdr.seq, None)
            if p is None:
                self.stats.late_replies += 1  # a reply to a retry already answered
                return
            if hdr.seq == self._hello_seq:
                self._on_hello(p, msg)
                return
            if isinstance(msg, Error):
                self._events.append(RequestFailed(hdr.seq, p.name, msg.code, msg.detail))
                return
            expected = MESSAGES_BY_NAME[p.name].reply or "ok"
            if expected != msg.NAME:
                self._events.append(RequestFailed(hdr.seq, p.name, -1,
                                                  f"expected {expected}, got {msg.NAME}"))
                return
            self._events.append(Response(hdr.seq, p.name, msg))
            return
        if self.state is not ConnState.READY:
            return  # stale stream data from before the handshake
        if isinstance(msg, AgingSamples | SweepPoints):
            stream = Stream.AGING if isinstance(msg, AgingSamples) else Stream.SWEEP
            self._on_records(stream, msg.records)
            return
        if isinstance(msg, Spectrum):
            tr = self.trackers[Stream.SPECTRUM]
            new, seq64, gaps = tr.accept(np.array([msg.seq], dtype=np.uint32))
            for lo, hi in gaps:
                self._events.append(GapDetected(Stream.SPECTRUM, lo, hi))
            if new[0]:
                self._events.append(SpectrumReceived(msg, int(seq64[0])))
            return
        if isinstance(msg, Status) and self.boot_id is not None and msg.boot_id != self.boot_id:
            self._events.append(BoardRebooted(self.boot_id, msg.boot_id))
            self.boot_id = msg.boot_id
        self._events.append(Unsolicited(msg))

    def _on_records(self, stream: Stream, records: np.ndarray) -> None:
        tr = self.trackers[stream]
        new, seq64, gaps = tr.accept(records["seq"])
        for lo, hi in gaps:
            self._events.append(GapDetected(stream, lo, hi))
        if new.all():
            self._events.append(StreamRecords(stream, records, seq64))
        elif new.any():
            self._events.append(StreamRecords(stream, records[new], seq64[new]))

    def _on_hello(self, p: _Pending, msg: BaseMessage) -> None:
        if not isinstance(msg, HelloReply):
            detail = msg.detail if isinstance(msg, Error) else msg.NAME
            self._transition("hello_mismatch")
            self._events.append(HandshakeFailed(f"board refused hello: {detail}"))
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
