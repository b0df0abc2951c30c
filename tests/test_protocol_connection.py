"""Host connection state machine against the board endpoint, back to back (h11's ConnectionPair)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol import BoardEndpoint, Connection, ConnState, Request, Resend
from firmware_protocol.connection import (
    GapDetected,
    Handshaked,
    HandshakeFailed,
    LocalProtocolError,
    RequestFailed,
    RequestTimedOut,
    Response,
    SeqTracker,
    StreamRecords,
)
from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
    AgingSamples,
    AgingStop,
    HelloReply,
    Ok,
    PdRead,
    Ping,
    Pong,
    SmuConfigure,
    SmuMeasure,
    SpectrumAcquire,
    StreamAck,
)
from firmware_protocol.spec import MESSAGES_BY_ID, SPEC_HASH, ErrorCode, Stream


class Pair:
    """A host connection wired to a board endpoint whose replies the test scripts."""

    def __init__(self, spec_hash: int = SPEC_HASH) -> None:
        self.host = Connection(timeout_s=1.0, max_attempts=3)
        self.board = BoardEndpoint()
        self.board_hash = spec_hash
        self.executed: list = []

    def board_handle(self, data: bytes) -> bytes:
        out = b""
        for item in self.board.receive_data(data):
            if isinstance(item, Resend):
                out += item.data
            elif isinstance(item, Request):
                self.executed.append(item.message)
                m = item.message
                if m.NAME == "hello":
                    out += self.board.respond(item.seq, HelloReply(
                        protocol_version=1, spec_hash=self.board_hash, boot_id=11,
                        firmware_version="test-fw 2.1", serial_number="SN9"))
                elif m.NAME == "ping":
                    out += self.board.respond(item.seq, Pong(nonce=m.nonce, t_us=5))
                elif m.NAME == "aging_stop" and m.channel > 7:
                    out += self.board.error(item, ErrorCode.BAD_ARGUMENT, "no channel 8")
                elif MESSAGES_BY_ID[m.MSG_ID].acked:
                    out += self.board.respond(item.seq, Ok(value=0))
        return out

    def handshake(self) -> None:
        self.host.receive_data(self.board_handle(self.host.start_handshake(0.0)))
        assert isinstance(self.host.next_event(), Handshaked)


def test_handshake_then_request_response_matched_by_seq():
    p = Pair()
    p.handshake()
    assert p.host.state is ConnState.READY
    s1, d1 = p.host.send_request(Ping(nonce=1), 0.0)
    s2, d2 = p.host.send_request(Ping(nonce=2), 0.0)
    # answers arrive in reverse order; each is matched to its own request
    p.host.receive_data(p.board_handle(d2) + p.board_handle(d1))
    evs = p.host.events()
    assert evs == [Response(s2, "ping", Pong(nonce=2, t_us=5)), Response(s1, "ping", Pong(nonce=1, t_us=5))]


def test_spec_mismatch_is_refused_naming_both_versions():
    p = Pair(spec_hash=0x12345678)
    p.host.receive_data(p.board_handle(p.host.start_handshake(0.0)))
    ev = p.host.next_event()
    assert isinstance(ev, HandshakeFailed)
    assert "0x12345678" in ev.reason and f"0x{SPEC_HASH:08X}" in ev.reason and "test-fw 2.1" in ev.reason
    assert p.host.state is ConnState.FAILED
    with pytest.raises(LocalProtocolError):
        p.host.send_request(Ping(nonce=1), 0.0)


def test_lost_reply_is_retried_and_the_board_does_not_execute_twice():
    p = Pair()
    p.handshake()
    seq, data = p.host.send_request(AgingStop(channel=2), now=10.0)
    p.board_handle(data)  # executed, but the reply is lost on the wire
    assert p.host.poll(10.5) == b""  # not yet due
    retry = p.host.poll(11.0)
    assert retry
    p.host.receive_data(p.board_handle(retry))
    assert p.host.events() == [Response(seq, "aging_stop", Ok(value=0))]
    assert [m.NAME for m in p.executed].count("aging_stop") == 1


def test_timeout_after_max_attempts_with_backoff():
    p = Pair()
    p.handshake()
    seq, _ = p.host.send_request(Ping(nonce=5), now=0.0)
    sends = [t for t in np.arange(0, 10, 0.25) if p.host.poll(float(t))]
    assert sends == [1.0, 3.0]  # deadline doubles: 1 s, then 2 s
    assert p.host.events() == [RequestTimedOut(seq, "ping", 3)]
    assert p.host.pending == 0


def test_error_reply_becomes_request_failed():
    p = Pair()
    p.handshake()
    seq, data = p.host.send_request(AgingStop(channel=9), 0.0)
    p.host.receive_data(p.board_handle(data))
    assert p.host.events() == [RequestFailed(seq, "aging_stop", ErrorCode.BAD_ARGUMENT, "no channel 8")]


def test_stream_gaps_replays_and_duplicates():
    p = Pair()
    p.handshake()

    def block(first: int, n: int) -> bytes:
        r = np.zeros(n, AGING_SAMPLE_DTYPE)
        r["seq"] = (np.arange(first, first + n) % 2**32).astype(np.uint32)
        return p.board.unsolicited(AgingSamples(records=r))

    p.host.receive_data(block(100, 10) + block(115, 5))
    evs = p.host.events()
    assert [type(e) for e in evs] == [StreamRecords, GapDetected, StreamRecords]
    assert evs[1] == GapDetected(Stream.AGING, 110, 114)
    # a replay overlapping what we have delivers only the missing records, once
    p.host.receive_data(block(105, 15) + block(105, 15))
    evs = p.host.events()
    assert len(evs) == 1 and evs[0].seq64.tolist() == list(range(110, 115))
    assert p.host.trackers[Stream.AGING].missing == []
    assert p.host.trackers[Stream.AGING].duplicates == 25


def test_seq_tracker_unwraps_32_bit_rollover():
    t = SeqTracker(2**32 - 3)
    new, seq64, gaps = t.accept(np.array([2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1], np.uint32))
    assert new.all() and gaps == []
    assert seq64.tolist() == [2**32 - 3, 2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1]
    new, seq64, gaps = t.accept(np.array([5], np.uint32))
    assert seq64.tolist() == [2**32 + 5] and gaps == [(2**32 + 2, 2**32 + 4)]


def test_unacked_messages_and_state_rules():
    p = Pair()
    with pytest.raises(LocalProtocolError):
        p.host.send_request(Ping(nonce=1), 0.0)  # before the handshake
    p.handshake()
    data = p.host.send_unacked(StreamAck(stream=0, seq=10))
    assert p.board_handle(data) == b"" and p.executed[-1] == StreamAck(stream=0, seq=10)
    with pytest.raises(LocalProtocolError):
        p.host.send_unacked(Ping(nonce=1))
    with pytest.raises(LocalProtocolError):
        p.host.send_request(StreamAck(stream=0, seq=1), 0.0)


def test_a_long_request_is_waited_for_its_declared_cost_and_so_are_those_queued_behind_it():
    """A 6.7 s spectrum is not retried after the link margin (issue 18): its first deadline is
    its integration plus the margin; a request sent behind it waits for it too; an SMU reading
    costs the integration of the last smu_configure; retries then back off as before."""
    p = Pair()
    p.handshake()
    s1, _ = p.host.send_request(SpectrumAcquire(pixel=1, integration_ms=6700.0), now=0.0)
    s2, _ = p.host.send_request(Ping(nonce=1), now=0.1)
    assert p.host.poll(6.0) == b"" and p.host.poll(7.6) == b""
    assert p.host.poll(7.7)  # 6.7 s + 1 s margin: the spectrum's first retry
    assert p.host.events() == []
    assert p.host.poll(7.75) == b""  # the ping, queued behind it, is due at the same time
    p.host.cancel(s1)
    p.host.cancel(s2)
    _, cfg = p.host.send_request(SmuConfigure(mode=0, range_index=0xFF, compliance=0.01,
                                              integration_ms=3000.0), now=100.0)
    p.host.receive_data(p.board_handle(cfg))
    p.host.events()
    s3, _ = p.host.send_request(SmuMeasure(), now=100.0)
    assert p.host.expected_done(PdRead(pixel=1, n=10, integration_ms=200.0), 100.0) == 105.0
    sends = [t for t in np.arange(100.0, 112.0, 0.25) if p.host.poll(float(t))]
    assert sends == [104.0, 106.0]  # 3 s + 1 s margin, then 2 s more
    assert p.host.events()[-1] == RequestTimedOut(s3, "smu_measure", 3)
