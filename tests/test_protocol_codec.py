"""Codec and framing: round trips for every message, streaming, junk, corruption."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol import codec
from firmware_protocol.codec import (
    FrameError,
    FrameReceived,
    ProtocolError,
    StreamDecoder,
    decode_payload,
    encode_frame,
    encode_payload,
)
from firmware_protocol.messages import AGING_SAMPLE_DTYPE, AgingSamples, Error, Ping, SweepStart
from firmware_protocol.spec import CRC_SEEDS, MESSAGES, MESSAGES_BY_NAME, PROTOCOL_VERSION

from .strategies import message

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def messages_of(events):
    return [e.message for e in events if isinstance(e, FrameReceived)]


@pytest.mark.parametrize("spec", MESSAGES, ids=lambda m: m.name)
@SETTINGS
@given(data=st.data())
def test_every_message_round_trips_through_payload_and_frame(spec, data):
    msg = data.draw(message(spec))
    assert decode_payload(spec.id, encode_payload(msg)) == msg
    frame = encode_frame(msg, seq=1234, flags=1)
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]
    (ev,) = StreamDecoder().feed(frame)
    assert isinstance(ev, FrameReceived)
    assert ev.message == msg and ev.header.seq == 1234 and ev.header.flags == 1


@SETTINGS
@given(msgs=st.lists(message(), min_size=1, max_size=6), data=st.data())
def test_frames_fed_whole_byte_by_byte_and_split_anywhere(msgs, data):
    wire = b"".join(encode_frame(m) for m in msgs)
    assert messages_of(StreamDecoder().feed(wire)) == msgs
    dec = StreamDecoder()
    got = []
    for i in range(len(wire)):
        got += messages_of(dec.feed(wire[i : i + 1]))
    assert got == msgs
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    dec = StreamDecoder()
    got = []
    prev = 0
    for c in [*cuts, len(wire)]:
        got += messages_of(dec.feed(wire[prev:c]))
        prev = c
    assert got == msgs


@SETTINGS
@given(msgs=st.lists(message(), min_size=1, max_size=4), junk_before=st.binary(max_size=300),
       junk_after=st.binary(max_size=300))
def test_junk_before_and_after_is_dropped_and_frames_survive(msgs, junk_before, junk_after):
    wire = junk_before + b"\x00" + b"".join(encode_frame(m) for m in msgs) + junk_after
    dec = StreamDecoder()
    evs = dec.feed(wire)
    got = messages_of(evs)
    # Junk can only add frames if it happens to contain a valid frame (probability ~2^-32).
    assert got == msgs


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_random_bytes_never_raise_and_never_yield_messages(data):
    dec = StreamDecoder()
    evs = dec.feed(data) + dec.feed(b"\x00")
    assert all(isinstance(e, FrameError) for e in evs)


@SETTINGS
@given(msg=message(), data=st.data())
def test_bit_flips_and_truncations_are_rejected_not_misread(msg, data):
    frame = encode_frame(msg, seq=7)
    body = bytearray(frame[:-1])
    kind = data.draw(st.sampled_from(["flip", "truncate", "drop", "insert"]))
    i = data.draw(st.integers(0, len(body) - 1))
    if kind == "flip":
        body[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del body[i:]
    elif kind == "drop":
        del body[i]
    else:
        body.insert(i, data.draw(st.integers(1, 255)))
    follow = encode_frame(Ping(nonce=99))
    evs = StreamDecoder().feed(bytes(body) + b"\x00" + follow)
    got = messages_of(evs)
    # the damaged frame is never accepted as anything; the next good frame always is
    assert got == [Ping(nonce=99)] or (got == [msg, Ping(nonce=99)] and bytes(body) == frame[:-1])
    if kind == "flip":
        assert got == [Ping(nonce=99)]


def test_crc_is_crc32_with_the_message_seed_independently_computed():
    frame = encode_frame(Ping(nonce=0x01020304), seq=5)
    raw = cobs.decode(frame[:-1])
    assert raw[:7] == bytes([PROTOCOL_VERSION, MESSAGES_BY_NAME["ping"].id, 0, 5, 0, 4, 0])
    assert raw[7:11] == bytes([4, 3, 2, 1])
    expect = zlib.crc32(raw[:11], CRC_SEEDS[MESSAGES_BY_NAME["ping"].id])
    assert int.from_bytes(raw[11:], "little") == expect
    # same frame with a zero seed (as a board of another spec would send) is refused
    bad = cobs.encode(raw[:11] + zlib.crc32(raw[:11]).to_bytes(4, "little")) + b"\x00"
    dec = StreamDecoder()
    (ev,) = dec.feed(bad)
    assert isinstance(ev, FrameError) and ev.reason == "crc" and dec.errors["crc"] == 1


def test_oversize_runs_are_bounded_and_resynchronised():
    dec = StreamDecoder()
    evs = dec.feed(b"\x01" * (codec.MAX_ENCODED + 10))
    assert [e.reason for e in evs if isinstance(e, FrameError)] == ["oversize"]
    assert dec.buffered == 0
    evs = dec.feed(b"\x05" * 100 + b"\x00" + encode_frame(Ping(nonce=1)))
    assert messages_of(evs) == [Ping(nonce=1)]


def test_wrong_version_counts_and_drops():
    payload = encode_payload(Ping(nonce=3))
    frame = codec.frame_bytes(Ping.MSG_ID, payload, version=9)
    dec = StreamDecoder()
    (ev,) = dec.feed(frame)
    assert isinstance(ev, FrameError) and ev.reason == "version"


def test_sample_block_decodes_to_a_structured_array_in_one_call():
    rec = np.zeros(30, dtype=AGING_SAMPLE_DTYPE)  # a full block (protocol 2: 30 of 34 bytes)
    rec["seq"] = np.arange(1000, 1030)
    rec["current_a"] = np.linspace(1e-4, 2e-4, 30, dtype=np.float32)
    (ev,) = StreamDecoder().feed(encode_frame(AgingSamples(records=rec)))
    out = ev.message.records
    assert out.dtype == AGING_SAMPLE_DTYPE and out.shape == (30,)
    assert out["seq"].tolist() == list(range(1000, 1030))
    assert AGING_SAMPLE_DTYPE.itemsize == 34  # packed, no padding


def test_encode_rejects_out_of_range_values_with_the_field_named():
    with pytest.raises(ProtocolError, match="ping"):
        encode_payload(Ping(nonce=-1))
    with pytest.raises(ProtocolError, match="detail"):
        encode_payload(Error(code=1, ref_msg_id=2, detail="x" * 200))
    with pytest.raises(ProtocolError, match="voltages_v"):
        encode_payload(SweepStart(voltages_v=tuple([1.0] * 500)))


def test_payload_truncated_is_a_decode_error_and_bytes_after_it_are_a_newer_peers_fields():
    msg = SweepStart(voltages_v=(1.0, 2.0), spectrum_at_v=(3.0,))
    p = encode_payload(msg)
    for cut in range(len(p)):
        with pytest.raises(ProtocolError):
            decode_payload(SweepStart.MSG_ID, p[:cut])
    # trailing bytes are extension fields this spec does not know (MAVLink v2): ignored
    assert decode_payload(SweepStart.MSG_ID, p + b"\x00\x07").to_dict() == msg.to_dict()


def test_noisy_line_yields_only_sent_messages():
    rng = random.Random(1)
    sent = [Ping(nonce=i) for i in range(2000)]
    wire = bytearray(b"".join(encode_frame(m) for m in sent))
    for _ in range(200):
        wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
    got = messages_of(StreamDecoder().feed(bytes(wire)))
    assert set(m.nonce for m in got) <= set(range(2000))
    assert len(got) >= 2000 - 200 - 200  # each flip kills at most its frame and a neighbour
