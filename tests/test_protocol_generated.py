"""Generated files in the repository match the spec; the spec hash is sensitive to changes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from firmware_protocol import spec
from firmware_protocol.__main__ import GENERATED, ROOT


def test_generated_files_are_fresh():
    for rel, gen in GENERATED.items():
        text = gen() + ("\n" if rel.endswith(".md") else "")
        assert (ROOT / rel).read_text() == text, (
            f"{rel} is stale: run `python -m firmware_protocol check --write`")


def test_check_command_reports_staleness(tmp_path, monkeypatch):
    # run the checker against a copy of the repo with one file altered
    import firmware_protocol.__main__ as m

    fake = tmp_path / "repo"
    for rel in GENERATED:
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text((ROOT / rel).read_text())
    (fake / "docs/protocol.md").write_text("edited by hand\n")
    monkeypatch.setattr(m, "ROOT", fake)
    assert m.main(["check"]) == 1
    assert m.main(["check", "--write"]) == 0
    assert m.main(["check"]) == 0


def test_message_seed_changes_when_a_field_changes():
    ping = spec.MESSAGES_BY_NAME["ping"]
    changed = dataclasses.replace(ping, fields=(spec.Field("nonce", "u16"),))
    assert spec.message_crc_seed(changed) != spec.message_crc_seed(ping)


def test_cli_encode_decode_round_trip():
    enc = subprocess.run([sys.executable, "-m", "firmware_protocol", "encode", "--seq", "9"],
                         input=b'{"type": "aging_stop", "channel": 3}', capture_output=True,
                         check=True).stdout
    dec = subprocess.run([sys.executable, "-m", "firmware_protocol", "decode"], input=enc + b"\x01\x02",
                         capture_output=True, check=True).stdout.decode().splitlines()
    assert dec[0] == '{"type": "aging_stop", "channel": 3, "_seq": 9, "_flags": 0}'
    assert '"error": "incomplete"' in dec[1]


def test_cli_encode_names_the_bad_field():
    p = subprocess.run([sys.executable, "-m", "firmware_protocol", "encode"],
                       input=b'{"type": "aging_stop", "chanel": 3}', capture_output=True)
    assert p.returncode == 2 and b"chanel" in p.stderr and p.stdout == b""


def _reworded(f: spec.Field) -> spec.Field:
    return dataclasses.replace(f, doc=f"reworded: {f.doc[::-1]} (typo fixed)")


def test_rewording_every_doc_string_changes_no_crc_seed_and_no_spec_hash():
    """Seeds and hash cover what is on the wire, like MAVLink's CRC_EXTRA: a typo fix in the
    documentation must not force a reflash."""
    records = tuple(dataclasses.replace(r, doc="reworded " + r.doc,
                                        fields=tuple(_reworded(f) for f in r.fields))
                    for r in spec.RECORDS)
    by_name = {r.name: r for r in records}
    messages = tuple(dataclasses.replace(m, doc="Reworded. " + m.doc,
                                         fields=tuple(_reworded(f) for f in m.fields))
                     for m in spec.MESSAGES)
    assert all(a.doc != b.doc for a, b in zip(messages, spec.MESSAGES, strict=True))
    assert spec.spec_hash(messages, records) == spec.SPEC_HASH
    assert {m.id: spec.message_crc_seed(m, by_name) for m in messages} == spec.CRC_SEEDS
    # ... while what is on the wire still counts: a unit, a length, a record field
    status = spec.MESSAGES_BY_NAME["status"]
    temps = next(f for f in status.fields if f.name == "temperatures_c")
    for changed in (dataclasses.replace(temps, unit="K"), dataclasses.replace(temps, max_len=9)):
        moved = dataclasses.replace(status, fields=tuple(changed if f is temps else f
                                                         for f in status.fields))
        assert spec.message_crc_seed(moved) != spec.CRC_SEEDS[status.id]
        assert spec.spec_hash(tuple(moved if m is status else m for m in spec.MESSAGES),
                              spec.RECORDS) != spec.SPEC_HASH
    aging = spec.RECORDS_BY_NAME["aging_sample"]
    wider = dataclasses.replace(aging, fields=(*aging.fields, spec.Field("extra", "u8")))
    samples = spec.MESSAGES_BY_NAME["aging_samples"]
    assert spec.message_crc_seed(samples, {**spec.RECORDS_BY_NAME, "aging_sample": wider}) \
        != spec.CRC_SEEDS[samples.id]


# The frozen handshake as every firmware has it: its seeds and its wire layout never change.
FROZEN_HANDSHAKE = {
    "hello": (0x01, 0xE14F7EE7, [("protocol_version", "u16", 0), ("spec_hash", "u32", 0)]),
    "hello_reply": (0x02, 0x24E8EA61, [("protocol_version", "u16", 0), ("spec_hash", "u32", 0),
                                       ("boot_id", "u32", 0), ("firmware_version", "str", 32),
                                       ("serial_number", "str", 32)]),
}


def test_the_frozen_handshakes_seeds_and_layout_are_pinned():
    for name, (msg_id, seed, layout) in FROZEN_HANDSHAKE.items():
        m = spec.MESSAGES_BY_NAME[name]
        assert m.frozen and m.id == msg_id
        assert [(f.name, f.type, f.max_len) for f in m.fields] == layout
        assert all(f.unit == "" and f.record == "" for f in m.fields)
        assert spec.CRC_SEEDS[msg_id] == seed == spec.FROZEN_CRC_SEEDS[msg_id]
    header = (ROOT / "firmware_protocol" / "firmware_protocol.h").read_text()
    assert "FP_MSG_HELLO_CRC_SEED 0xE14F7EE7u" in header
    assert "FP_MSG_HELLO_REPLY_CRC_SEED 0x24E8EA61u" in header
