"""Extension fields (MAVLink v2's): a message grows compatibly. An old and a new version of a
spec talk to each other over real frames — the new peer's extra trailing fields are skipped by
the old one, the old peer's shorter payload reads as defaults on the new one — and neither the
CRC seed nor the spec hash moves, so the handshake still matches (issue 15)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from firmware_protocol import spec
from firmware_protocol.codec import (
    ProtocolError,
    StreamDecoder,
    decode_fields,
    encode_fields,
    encode_payload,
    frame_bytes,
    make_plan,
)
from firmware_protocol.messages import SmuConfigure

OLD = spec.MESSAGES_BY_NAME["smu_configure"]
EXTENSIONS = (
    spec.Field("settle_ms", "f32", "ms", "wait before the first reading", extension=True),
    spec.Field("label", "str", doc="who asked", max_len=16, extension=True),
    spec.Field("gains", "u8[]", doc="photodiode gains to try", max_len=4, extension=True),
)
NEW = dataclasses.replace(OLD, fields=(*OLD.fields, *EXTENSIONS))
BASE = {"mode": 1, "range_index": 0xFF, "compliance": 0.01, "integration_ms": 20.0}


def frames_of(data: bytes) -> list:
    events = StreamDecoder().feed(data)
    assert all(hasattr(e, "message") for e in events), events
    return events


def test_an_extension_field_moves_no_crc_seed_and_no_spec_hash():
    assert spec.message_crc_seed(NEW) == spec.message_crc_seed(OLD) == spec.CRC_SEEDS[OLD.id]
    newer = tuple(NEW if m is OLD else m for m in spec.MESSAGES)
    assert spec.spec_hash(newer, spec.RECORDS) == spec.SPEC_HASH
    # an ordinary (non-extension) field appended instead would: that is a breaking change
    breaking = dataclasses.replace(OLD, fields=(*OLD.fields, spec.Field("settle_ms", "f32")))
    assert spec.message_crc_seed(breaking) != spec.CRC_SEEDS[OLD.id]


def test_a_new_peers_frame_reads_on_an_old_peer_which_skips_the_extensions():
    new_plan = make_plan(NEW.fields)
    sent = SimpleNamespace(**BASE, settle_ms=5.0, label="alice", gains=(0, 3))
    payload = encode_fields(new_plan, sent, NEW.name)
    # the old peer: this package's own codec, built from the spec without the extensions
    (ev,) = frames_of(frame_bytes(OLD.id, payload, seq=7))
    assert isinstance(ev.message, SmuConfigure) and ev.header.seq == 7
    got = ev.message.to_dict()
    assert got["mode"] == 1 and got["range_index"] == 0xFF and got["integration_ms"] == 20.0
    assert got["compliance"] == pytest.approx(0.01)
    assert not {"settle_ms", "label", "gains"} & set(got)


def test_an_old_peers_frame_reads_on_a_new_peer_with_the_extensions_defaulted():
    old_payload = encode_payload(SmuConfigure(**BASE))  # what an old board sends
    new_plan = make_plan(NEW.fields)
    got = decode_fields(new_plan, old_payload, NEW.name)
    assert set(got) == set(BASE)  # the extensions absent: the message class's defaults apply
    # and a payload of a version in between (the first extension only) reads that far
    mid = dataclasses.replace(NEW, fields=(*OLD.fields, EXTENSIONS[0]))
    payload = encode_fields(make_plan(mid.fields), SimpleNamespace(**BASE, settle_ms=2.5),
                            mid.name)
    got = decode_fields(new_plan, payload, NEW.name)
    assert got["settle_ms"] == 2.5 and "label" not in got and "gains" not in got
    # new to new: everything
    full = SimpleNamespace(**BASE, settle_ms=5.0, label="bob", gains=(1, 2, 3))
    got = decode_fields(new_plan, encode_fields(new_plan, full, NEW.name), NEW.name)
    assert (got["settle_ms"], got["label"], got["gains"]) == (5.0, "bob", (1, 2, 3))


def test_an_extension_cut_in_the_middle_is_still_a_decode_error():
    new_plan = make_plan(NEW.fields)
    payload = encode_fields(new_plan, SimpleNamespace(**BASE, settle_ms=5.0, label="abcdef",
                                                      gains=(1, 2)), NEW.name)
    base_len = len(encode_fields(make_plan(OLD.fields), SimpleNamespace(**BASE), OLD.name))
    for cut in (base_len + 2, base_len + 4 + 3, len(payload) - 1):
        with pytest.raises(ProtocolError):
            decode_fields(new_plan, payload[:cut], NEW.name)


def test_the_spec_refuses_extension_fields_that_are_not_trailing_or_in_records():
    bad = dataclasses.replace(OLD, fields=(EXTENSIONS[0], *OLD.fields))
    with pytest.raises(AssertionError, match="after every other field"):
        spec._validate(tuple(bad if m is OLD else m for m in spec.MESSAGES))
    hello = spec.MESSAGES_BY_NAME["hello"]
    grown = dataclasses.replace(hello, fields=(*hello.fields, EXTENSIONS[0]))
    with pytest.raises(AssertionError, match="frozen"):
        spec._validate(tuple(grown if m is hello else m for m in spec.MESSAGES))
