"""Host connection state machine against the board endpoint, back to back (h11's ConnectionPair)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol import BoardEndpoint, Connection, ConnState, Request, Resend
from firmware_protocol.connection import (
    BoardRebooted,
    EpochStarted,
    GapDetected,
    Handshaked,
    HandshakeFailed,
    LocalProtocolError,
    RecordsLost,
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
    Status,
    StreamAck,
)
from firmware_protocol.spec import MESSAGES_BY_ID, PROTOCOL_VERSION, SPEC_HASH, ErrorCode, Stream


class Pair:
    """A host connection wired to a board endpoint whose replies the test scripts."""

    def __init__(self, spec_hash: int = SPEC_HASH) -> None:
        self.host = Connection(timeout_s=1.0, max_attempts=3)
        self.board = BoardEndpoint()
        self.board_hash = spec_hash
        self.boot_id = 11
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
                        protocol_version=PROTOCOL_VERSION, spec_hash=self.board_hash, boot_id=self.boot_id,
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
# -- board epochs: a reset that restarts the board's counters and clock -----------------------

def _aging_block(p: Pair, first: int, n: int, t0_us: int) -> bytes:
    r = np.zeros(n, AGING_SAMPLE_DTYPE)
    r["seq"] = (np.arange(first, first + n) % 2**32).astype(np.uint32)
    r["t_us"] = t0_us + 1_000_000 * np.arange(n)
    return p.board.unsolicited(AgingSamples(records=r))


def _status(boot: int, t_us: int, aging_head: int, oldest: int = 0) -> Status:
    return Status(t_us=t_us, boot_id=boot, aging_head_seq=aging_head, sweep_head_seq=0,
                  spectrum_head_seq=0, aging_oldest_seq=oldest)


def test_a_board_reset_that_restarts_its_counters_opens_a_new_epoch_and_reports_the_loss():
    p = Pair()
    p.handshake()
    # a host that never saw the board starts at its heads: nothing to replay
    assert p.host.reconcile_heads(_status(11, 90_000_000, 100)) == []
    assert p.host.trackers[Stream.AGING].expected == 100
    # records 100..109 at t = 100..109 s, a hole 110..111, 112..114; the board then says (its
    # once-a-second status) that it made records up to 119
    p.host.receive_data(_aging_block(p, 100, 10, 100_000_000) + _aging_block(p, 112, 3, 112_000_000))
    p.host.receive_data(p.board.unsolicited(_status(11, 120_000_000, 120)))
    p.host.events()
    # the board resets and loses its rings: counters and clock start again at 0
    p.boot_id = 12
    p.host.receive_data(p.board_handle(p.host.start_handshake(1.0)))
    evs = p.host.events()
    assert any(isinstance(e, BoardRebooted) for e in evs) and any(isinstance(e, Handshaked) for e in evs)
    # the new boot's first records arrive before the host has read its status: held, not misplaced
    p.host.receive_data(_aging_block(p, 0, 3, 1_000_000))
    assert p.host.events() == []
    replays = p.host.reconcile_heads(_status(12, 3_500_000, 3))
    evs = p.host.events()
    lost = [e for e in evs if isinstance(e, RecordsLost)]
    assert [(e.from_seq, e.to_seq, e.count, e.reason, e.epoch) for e in lost] == [
        (110, 111, 2, "board_reset", 0), (115, 119, 5, "board_reset", 0)]
    assert lost[1].t_before_us == 114_000_000  # the last record the host got before the loss
    started = [e for e in evs if isinstance(e, EpochStarted)]
    assert len(started) == 1 and started[0].epoch == 1 and started[0].base[Stream.AGING] == 120
    assert started[0].t_offset_us == 120_000_000 + 1  # after the latest board time seen
    assert (Stream.AGING, 120) in replays  # the new epoch from its first record
    # the replayed records get host seqs above everything before, and a time axis that goes on
    p.host.receive_data(_aging_block(p, 0, 3, 1_000_000))
    (ev,) = p.host.events()
    assert isinstance(ev, StreamRecords) and ev.epoch == 1
    assert ev.seq64.tolist() == [120, 121, 122]
    assert ev.records["t_us"].tolist() == [121_000_001, 122_000_001, 123_000_001]
    tr = p.host.trackers[Stream.AGING]
    assert tr.to_board(122) == 2 and tr.missing == [] and tr.expected == 123
    assert p.host.lost[Stream.AGING] == 7


def test_a_restarted_host_on_the_same_boot_is_no_reset_and_no_loss():
    """kill -9 of the daemon: the new host resumes from its store; a status read just before
    records the old host already stored shows a head behind the host's next seq. Not a loss."""
    p = Pair()
    p.host.resume_stream(Stream.AGING, 186153, 0)
    p.host.restore_epoch_state({"epoch": 0, "boot_id": 11, "t_offset_us": 0,
                                "last_board_t_us": 9_000_000, "base": {"AGING": 0}})
    p.handshake()
    replays = p.host.reconcile_heads(_status(11, 9_100_000, 186147))
    assert not any(isinstance(e, RecordsLost | EpochStarted) for e in p.host.events())
    assert (Stream.AGING, 186153) in replays and p.host.epoch == 0
    p.host.receive_data(_aging_block(p, 186153, 2, 9_200_000))
    (ev,) = p.host.events()
    assert ev.seq64.tolist() == [186153, 186154]


def test_a_reset_that_keeps_the_rings_continues_the_epoch():
    p = Pair()
    p.handshake()
    p.host.reconcile_heads(_status(11, 10_000_000, 50))
    p.host.receive_data(_aging_block(p, 50, 5, 10_000_000))
    p.host.events()
    p.boot_id = 12
    p.host.receive_data(p.board_handle(p.host.start_handshake(1.0)))
    p.host.events()
    replays = p.host.reconcile_heads(_status(12, 20_000_000, 58))  # clock and counters went on
    assert not any(isinstance(e, RecordsLost | EpochStarted) for e in p.host.events())
    assert (Stream.AGING, 55) in replays and p.host.epoch == 0


def test_a_hole_the_board_can_no_longer_fill_is_declared_lost_once_and_passed():
    p = Pair()
    p.handshake()
    p.host.reconcile_heads(_status(11, 0, 100))
    p.host.receive_data(_aging_block(p, 100, 5, 0) + _aging_block(p, 120, 5, 20_000_000))
    p.host.events()
    tr = p.host.trackers[Stream.AGING]
    assert tr.missing == [[105, 119]]
    # the replay's answer: the oldest record the board still holds is 112
    p.host.replay_answered(Stream.AGING, 105, 112)
    (ev,) = p.host.events()
    assert isinstance(ev, RecordsLost)
    assert (ev.from_seq, ev.to_seq, ev.count, ev.reason) == (105, 111, 7, "ring_overwritten")
    assert tr.missing == [[112, 119]]  # what the board still holds is asked for, not the rest
    p.host.replay_answered(Stream.AGING, 105, 112)  # the same answer again: reported once
    assert p.host.events() == []
    # a replay from the host's head that finds the board's ring moved past it (an outage
    # longer than the ring) skips ahead instead of waiting for records that cannot come
    p.host.receive_data(_aging_block(p, 112, 8, 12_000_000))
    p.host.events()
    p.host.replay_answered(Stream.AGING, 125, 140)
    (ev,) = p.host.events()
    assert (ev.from_seq, ev.to_seq) == (125, 139) and tr.expected == 140 and tr.missing == []
