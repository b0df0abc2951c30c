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
