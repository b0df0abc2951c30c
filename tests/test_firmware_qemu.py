"""The reference firmware on an emulated Cortex-M3 (qemu-system-arm -M mps2-an385): it fits the
budget (64 KiB flash, 16 KiB RAM), speaks the protocol over its UART on a TCP socket with no
frame error, and ``station sweep`` against it completes with a Table S1 summary.

Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (scripts/bootstrap.sh --test
installs them). The emulated board runs in real time: one short sweep each."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_protocol.base import BaseMessage
from firmware_protocol.codec import FrameReceived, StreamDecoder, encode_frame
from firmware_protocol.messages import GetCapabilities, Ping, Pong, StreamReplay, SweepPoints
from firmware_protocol.spec import FrameFlags, Stream

from .test_sim_board import Host, sweep_msg

ROOT = Path(__file__).resolve().parent.parent
FLASH_BUDGET = 64 * 1024
RAM_BUDGET = 16 * 1024


def decode_one(frame: bytes) -> BaseMessage | None:
    evs = StreamDecoder().feed(frame)
    return evs[0].message if evs and isinstance(evs[0], FrameReceived) else None


@pytest.fixture(scope="module")
def elf() -> Path:
    missing = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} required (scripts/bootstrap.sh --test installs them)")
    from sim.qemu import build_elf
    return build_elf()


def test_the_cortex_m3_image_fits_64_kib_of_flash_and_16_kib_of_ram(elf: Path) -> None:
    out = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], check=True, capture_output=True,
                         text=True).stdout
    sec = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\S+)\s+(\d+)", out, re.M)}
    flash = sec[".text"] + sec.get(".ARM.exidx", 0) + sec[".data"]
    ram = sec[".data"] + sec[".bss"]  # the 4 KiB stack (.stack) is budgeted apart
    print(f"flash {flash} B ({flash / 1024:.1f} KiB), RAM {ram} B ({ram / 1024:.1f} KiB) + stack "
          f"{sec['.stack']} B")
    assert flash <= FLASH_BUDGET
    assert ram <= RAM_BUDGET


@pytest.fixture
async def qemu(elf: Path) -> AsyncIterator[str]:
    from sim.qemu import QemuBoard

    board = QemuBoard()
    url = await board.start()
    try:
        yield url
    finally:
        await board.stop()


async def test_the_emulated_board_answers_sweeps_replays_and_retries_with_no_frame_error(qemu: str) -> None:
    host = Host(qemu)
    try:
        hello = await host.handshake()
        assert hello.firmware_version.startswith("mps2-an385 c-core")
        caps = await host.ok(GetCapabilities())
        assert caps.n_substrates * caps.pixels_per_substrate == 1 and caps.spectrometer_pixels == 64
        ok = await host.ok(sweep_msg(stop_v=4.0, step_v=0.25, options=5, spectrum_at_v=(3.5,),
                                     spectrum_integration_ms=50.0))
        await host.until(lambda: bool(host.sweep_done()), what="sweep_done")
        (done,) = host.sweep_done()
        recs, seqs = host.records(Stream.SWEEP)
        assert done.reason == 0 and done.n_points == len(recs) == 34 and ok.value == 0
        assert list(seqs) == list(range(34)) and len(host.spectra) == 1
        assert recs["current_a"][16] > recs["current_a"][0]  # the diode conducts at 4 V
        # a replay sends what the ring still holds again: this MCU's SWEEP ring keeps 32 points
        # (make firmware-arm: FW_SWEEP_RING_MAX), so ok.value = max(from, oldest held) = 2
        host.keep_raw = True
        rep = await host.ok(StreamReplay(stream=int(Stream.SWEEP), from_seq=0, to_seq=0xFFFFFFFF))
        assert rep.value == 34 - 32

        def replayed() -> list[int]:
            return [int(q) for f in bytes(host.raw_in).split(b"\x00") if f
                    and isinstance(m := decode_one(f + b"\x00"), SweepPoints) for q in m.records["seq"]]
        await host.until(lambda: len(replayed()) >= 32, what="the replay")
        assert replayed() == list(range(2, 34))
        host.raw_in.clear()
        # a retried request is answered from the reply cache: the same bytes (the same board
        # time in the pong), not executed again
        host.write(encode_frame(Ping(nonce=7), seq=900))
        await host.pump(0.3)
        host.write(encode_frame(Ping(nonce=7), seq=900, flags=FrameFlags.RETRY))
        await host.pump(0.3)
        pongs = [f for f in bytes(host.raw_in).split(b"\x00") if f
                 and isinstance(m := decode_one(f + b"\x00"), Pong) and m.nonce == 7]
        assert len(pongs) == 2 and pongs[0] == pongs[1]
        assert not host.dropped and sum(host.conn.decoder.errors.values()) == 0
    finally:
        host.close()


def test_station_sweep_against_the_emulated_cortex_m_completes(elf: Path, tmp_path: Path) -> None:
    sim = subprocess.Popen([sys.executable, "-m", "sim", "--firmware", "qemu",
                            "--listen", "tcp://127.0.0.1:0"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:"), sim.stderr.read() if sim.stderr else ""
        p = subprocess.run([sys.executable, "-m", "station", "sweep", "--port", url, "--pixel", "1",
                            "--stop", "7", "--out", str(tmp_path / "run"), "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout)
        assert "error" not in summary, summary
        assert summary["end_reason"] == "completed"
        assert 505 < summary["el_peak_nm"] < 515  # the HAL's emission line, at 510 nm
        assert summary["l_max_cd_m2"] > 0 and summary["eqe_max_pct"] > 0
    finally:
        sim.terminate()
        sim.communicate(timeout=30)
    assert sim.returncode == 0
