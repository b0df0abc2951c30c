"""Protocol version 2 (issue 15: 256 aging channels and more): pixel and channel numbers are u16,
pinned here on purpose; peers of versions 1 and 2 still handshake through the frozen ``hello`` /
``hello_reply`` (header version 1 in both) and refuse each other naming both versions."""

from __future__ import annotations

import numpy as np
import pytest
from cobs import cobs

from firmware_protocol.codec import StreamDecoder, encode_payload, frame_bytes
from firmware_protocol.connection import Connection, ConnState, HandshakeFailed
from firmware_protocol.messages import AGING_SAMPLE_DTYPE, SWEEP_POINT_DTYPE, Hello, HelloReply
from firmware_protocol.spec import (
    FROZEN_HEADER_VERSION,
    MESSAGES_BY_NAME,
    PROTOCOL_VERSION,
    SPEC_HASH,
)
from sim.board import Board
from sim.layout import layout_from_presets

V1_SPEC_HASH = 0x9B587E93
"""The last version-1 spec (pixels and channels u8), as docs/protocol.md of that release gave it."""
V1 = 1


def test_version_2_pins_u16_pixel_and_channel_numbers():
    # a deliberate, breaking change: any edit of the wire moves these, and must move them here too
    assert (PROTOCOL_VERSION, SPEC_HASH) == (2, 0x68A4D624)
    assert AGING_SAMPLE_DTYPE["channel"] == np.dtype("<u2") and AGING_SAMPLE_DTYPE["pixel"] == np.dtype("<u2")
    assert (AGING_SAMPLE_DTYPE.itemsize, SWEEP_POINT_DTYPE.itemsize) == (34, 36)
    for name, field in (("mux_select", "pixel"), ("sweep_start", "pixel"), ("aging_start", "channel"),
                        ("aging_start", "pixel"), ("aging_set", "channel"), ("aging_stop", "channel"),
                        ("pd_configure", "pixel"), ("pd_read", "pixel"), ("pd_reading", "pixel"),
                        ("spectrum_acquire", "pixel"), ("spectrum", "pixel"), ("event", "channel"),
                        ("event", "pixel"), ("capabilities", "n_aging_channels"),
                        ("capabilities", "pixels_per_substrate")):
        (f,) = (f for f in MESSAGES_BY_NAME[name].fields if f.name == field)
        assert f.type == "u16", (name, field)
    # a full aging_samples frame still fits the 1024-byte payload
    (rec,) = MESSAGES_BY_NAME["aging_samples"].fields
    assert 2 + rec.max_len * AGING_SAMPLE_DTYPE.itemsize <= 1024


def _header_version(frame: bytes) -> int:
    return cobs.decode(frame[:-1])[0]


def test_an_old_host_hears_a_new_board_say_it_speaks_version_2():
    """A version-1 host's hello (header version 1, its spec hash) reaches a version-2 board,
    which answers hello_reply in a frame a version-1 decoder reads: protocol 2, the new hash."""
    board = Board(layout_from_presets("dbsa"), seed=1)
    board.set_link(True)
    hello = Hello(protocol_version=V1, spec_hash=V1_SPEC_HASH)
    board.receive(frame_bytes(hello.MSG_ID, encode_payload(hello), seq=7, version=V1), 0.0)
    board.advance(1000)
    frames = [f for f, _ in board.take_frames()]
    assert frames and _header_version(frames[0]) == FROZEN_HEADER_VERSION == V1
    old_decoder = StreamDecoder(V1)
    (ev,) = old_decoder.feed(frames[0])
    reply = ev.message
    assert isinstance(reply, HelloReply) and ev.header.seq == 7
    assert (reply.protocol_version, reply.spec_hash) == (2, SPEC_HASH)  # the old host refuses it


def test_a_new_host_refuses_an_old_board_naming_both_versions():
    """The version-2 host's hello goes out with header version 1 (an old board decodes it); the
    old board's hello_reply (header version 1, protocol 1) is read and refused, naming both."""
    host = Connection(timeout_s=1.0, max_attempts=3)
    hello = host.start_handshake(0.0)
    assert _header_version(hello) == V1
    (ev,) = StreamDecoder(V1).feed(hello)  # what a version-1 board's decoder sees
    assert isinstance(ev.message, Hello) and ev.message.protocol_version == 2
    old_reply = HelloReply(protocol_version=V1, spec_hash=V1_SPEC_HASH, boot_id=5,
                           firmware_version="fw 1.0", serial_number="OLD1")
    host.receive_data(frame_bytes(old_reply.MSG_ID, encode_payload(old_reply), seq=ev.header.seq,
                                  flags=1, version=V1))
    failed = host.next_event()
    assert isinstance(failed, HandshakeFailed) and not failed.retryable
    assert "v1" in failed.reason and "v2" in failed.reason
    assert f"0x{V1_SPEC_HASH:08X}" in failed.reason and f"0x{SPEC_HASH:08X}" in failed.reason
    assert host.state is ConnState.FAILED


@pytest.mark.parametrize("msg_version", [V1, PROTOCOL_VERSION])
def test_other_messages_of_another_header_version_are_still_dropped(msg_version):
    from firmware_protocol.messages import Ping

    p = Ping(nonce=3)
    frame = frame_bytes(p.MSG_ID, encode_payload(p), version=msg_version)
    (ev,) = StreamDecoder(PROTOCOL_VERSION).feed(frame)
    if msg_version == PROTOCOL_VERSION:
        assert ev.message == p
    else:
        assert ev.reason == "version" and ev.msg_id == p.MSG_ID
