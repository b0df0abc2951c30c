"""The generated C header compiles strictly and speaks the same bytes as the Python codec."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol import gen_c
from firmware_protocol.codec import FrameReceived, StreamDecoder, encode_frame
from firmware_protocol.messages import AgingSamples, Capabilities, HelloReply, Ping
from firmware_protocol.spec import SPEC_HASH

from .strategies import message

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def cprog(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is required (scripts/bootstrap.sh --test installs it)")
    d = tmp_path_factory.mktemp("c")
    (d / "firmware_protocol.h").write_text(gen_c.generate())
    exe = d / "roundtrip"
    subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1",
                    "-I", str(d), str(HERE / "c" / "roundtrip.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


def run(exe: Path, data: bytes, *args: str) -> tuple[bytes, str]:
    p = subprocess.run([str(exe), *args], input=data, capture_output=True, check=True)
    return p.stdout, p.stderr.decode()


def test_frames_encoded_in_c_are_accepted_by_python(cprog):
    out, _ = run(cprog, b"", "gen")
    evs = StreamDecoder().feed(out)
    assert all(isinstance(e, FrameReceived) for e in evs)
    msgs = [e.message for e in evs]
    assert msgs[0] == Ping(nonce=0xDEADBEEF) and evs[0].header.seq == 42
    hr = msgs[1]
    assert isinstance(hr, HelloReply)
    assert (hr.spec_hash, hr.boot_id, hr.firmware_version, hr.serial_number) == (
        SPEC_HASH, 7, "c-test 1.0", "SN-0001")
    block = msgs[2]
    assert isinstance(block, AgingSamples)
    r = block.records
    assert r["seq"][0] == 4294967280 and r["seq"][15] == 4294967295 and r["seq"][16] == 0
    assert np.allclose(r["current_a"], 1e-4 * (np.arange(30) + 1), rtol=1e-6)
    assert r["t_us"][29] == 5_029_000_000
    assert r["channel"].tolist() == [i % 4 + 250 for i in range(30)]  # u16 channels and pixels
    assert r["pixel"].tolist() == [i % 8 + 251 for i in range(30)]
    cap = msgs[3]
    assert isinstance(cap, Capabilities)
    assert cap.smu_voltage_ranges_v == (2.0, 20.0)
    assert cap.wavelength_cal == (340.25, 1.5, -1e-4) and cap.spectrometer_pixels == 288


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(message(), min_size=1, max_size=30))
def test_c_decodes_python_frames_and_reencodes_them_identically(cprog, msgs):
    wire = b"".join(encode_frame(m, seq=i, flags=i % 8) for i, m in enumerate(msgs))
    out, err = run(cprog, wire)
    assert err == ""
    assert out == wire  # byte for byte: same header, payload layout, CRC and COBS


def test_c_rejects_corrupted_frames(cprog):
    good = encode_frame(Ping(nonce=1))
    bad = bytearray(good)
    bad[3] ^= 0x10
    out, err = run(cprog, bytes(bad) + good)
    assert out == good
    assert err.strip().startswith("reject")


def test_c_reads_an_older_boards_capabilities_with_the_extension_fields_zero(cprog):
    """capabilities grew extension fields (the board's ranges): the C decoder reads a payload
    that ends before them as 0, and skips bytes after the last field it knows."""
    from firmware_protocol.codec import decode_payload, encode_fields, encode_payload, frame_bytes, make_plan
    from firmware_protocol.spec import MESSAGES_BY_NAME

    full = Capabilities(spectrometer_pixels=288, max_integration_ms=5000.0, max_pd_reads=1000)
    fields = MESSAGES_BY_NAME["capabilities"].fields
    assert sum(f.extension for f in fields) >= 7
    payload = encode_payload(full)
    # as a board built before the extensions sends it
    old = encode_fields(make_plan(tuple(f for f in fields if not f.extension)), full, "capabilities")
    assert payload.startswith(old) and len(old) < len(payload)
    assert decode_payload(Capabilities.MSG_ID, old).max_integration_ms == 0.0
    out, err = run(cprog, frame_bytes(Capabilities.MSG_ID, old, seq=3)
                   + frame_bytes(Capabilities.MSG_ID, payload + b"\x01\x02\x03", seq=4))
    assert err == ""
    a, b = (e.message for e in StreamDecoder().feed(out))
    assert isinstance(a, Capabilities) and isinstance(b, Capabilities)
    assert a.spectrometer_pixels == 288 and a.max_integration_ms == 0.0 and a.max_pd_reads == 0
    assert b.to_dict() == full.to_dict()  # the newer peer's extra bytes skipped
