"""The simulator's transports (real pty, real TCP socket), link faults, the CLI and layouts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import serial

from firmware_protocol.messages import AgingStart, Ping, SweepDone
from firmware_protocol.spec import ErrorCode, SampleFlags, Stream, SweepEnd
from sim.layout import LayoutError, layout_from_presets, load_layout, parse_layout
from sim.server import SimServer, parse_listen
from station.cli import main as station_main
from tests.test_sim_board import WAIT_S, Host, aging_msg, sweep_msg

ROOT = Path(__file__).resolve().parent.parent


async def wait_for(pred: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# pty
# ---------------------------------------------------------------------------------------------


async def test_handshake_over_a_raw_pty_opened_with_pyserial(tmp_path: Path) -> None:
    link = tmp_path / "ledboard"
    srv = SimServer("dbsa*2", listen="pty", link_path=str(link), speed=100.0)
    url = await srv.start()
    try:
        assert url == str(link) and link.is_symlink()
        dev = os.path.realpath(link)
        assert dev.startswith("/dev/pts/")
        fd = os.open(dev, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)  # before pyserial configures it
        try:
            iflag, oflag, _, lflag, _, _, _ = termios.tcgetattr(fd)
        finally:
            os.close(fd)
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)
        assert not iflag & (termios.ICRNL | termios.INLCR | termios.IXON) and not oflag & termios.OPOST
        host = Host(url)  # serial.serial_for_url(path)
        try:
            hello = await host.handshake()
            assert hello.boot_id == srv.board.boot_id
            await host.ok(sweep_msg(stop_v=4.0, step_v=0.5, spectrum_at_v=(3.5,)))  # binary data, 0x00s
            await host.until(lambda: host.sweep_done(), what="sweep_done")
            _, seq = host.records(Stream.SWEEP)
            assert list(seq) == list(range(9)) and len(host.spectra) == 1
            assert not host.dropped
        finally:
            host.close()
    finally:
        await srv.stop()
    assert not link.exists() and not link.is_symlink()


async def test_pty_without_a_host_keeps_recording_and_sends_nothing_stale() -> None:
    srv = SimServer("dbsa", listen="pty", speed=1e4)
    url = await srv.start()
    try:
        host = Host(url)
        await host.handshake()
        await host.ok(aging_msg(interval_ms=1000))
        host.close()
        n_before = srv.board.counters.produced[Stream.AGING]
        await wait_for(lambda: srv.board.counters.produced[Stream.AGING] > n_before + 200, what="samples")
        assert not srv.board.link_up
        head_at_open = srv.board.aging_ring.head
        host = Host(url)
        host.conn.resume_stream(Stream.AGING, 0)  # this host wants everything since seq 0
        await host.handshake()
        await host.pump(0.05)
        # nothing from the time nobody was listening arrives unasked, only fresh data
        _, seq = host.records(Stream.AGING)
        assert len(seq) and seq.min() >= head_at_open
        await host.fill_gaps(Stream.AGING, srv.board.aging_ring.head - 1)
        _, seq = host.records(Stream.AGING)
        assert seq[0] == 0 and np.all(np.diff(seq) == 1)
        host.close()
    finally:
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# TCP
# ---------------------------------------------------------------------------------------------


async def test_tcp_accepts_one_client_at_a_time() -> None:
    srv = SimServer("dbsa")
    url = await srv.start()
    assert url.startswith("socket://127.0.0.1:")
    first = Host(url)
    try:
        await first.handshake()
        second = serial.serial_for_url(url, timeout=0)
        try:
            await wait_for(lambda: srv.stats.refused == 1, what="refusal")
            with pytest.raises(serial.SerialException):
                for _ in range(200):
                    second.read(100)  # the socket was closed by the board
                    await asyncio.sleep(0.005)
        finally:
            second.close()
        assert (await first.ok(Ping(nonce=3))).nonce == 3  # the first client is unaffected
        first.close()
        await wait_for(lambda: not srv.board.link_up, what="first client gone")
        third = Host(url)
        await third.handshake()
        third.close()
        assert srv.stats.connections == 2
    finally:
        first.close()
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# link faults
# ---------------------------------------------------------------------------------------------


async def test_disconnect_closes_the_socket_refuses_connections_and_the_link_comes_back() -> None:
    srv = SimServer("dbsa*2", speed=100.0, faults="disconnect=20s+60s", seed=4)
    url = await srv.start()
    host = Host(url)
    try:
        await host.handshake()
        await host.ok(aging_msg(interval_ms=1000))
        await host.until(lambda: host.closed, what="socket closed by the board")
        assert srv.link_is_down
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        await wait_for(lambda: not srv.link_is_down, what="link back")
        assert srv.board.t_us >= 20_000_000 + 60_000_000  # down for the fault's virtual duration
        host.open(url)
        hello = await host.handshake()
        assert hello.boot_id == srv.board.boot_id  # a cable pull, not a reboot
        head = (await host.status()).aging_head_seq
        await host.fill_gaps(Stream.AGING, head - 1)
        recs, seq = host.records(Stream.AGING)
        assert np.array_equal(seq[:head], np.arange(head))  # the board kept recording
        assert np.all(np.diff(recs["t_us"][:head].astype(np.int64)) == 1_000_000)
        assert srv.stats.link_drops == 1
    finally:
        host.close()
        await srv.stop()


async def test_disconnect_on_a_pty_removes_the_link_and_repoints_it_to_the_new_device(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-sim-board"
    link.parent.mkdir()
    srv = SimServer("dbsa", listen="pty", link_path=str(link), speed=100.0, faults="disconnect=20s+60s")
    url = await srv.start()
    host = Host(url)
    try:
        await host.handshake()
        await host.until(lambda: host.closed, what="pty gone")
        assert not link.exists() and not link.is_symlink()
        await wait_for(lambda: not srv.link_is_down, what="link back")
        assert link.is_symlink() and os.path.realpath(link).startswith("/dev/pts/")
        host.open(str(link))
        await host.handshake()
        assert (await host.status()).boot_id == srv.board.boot_id
    finally:
        host.close()
        await srv.stop()


@pytest.mark.parametrize("loses_ring", [False, True])
async def test_reboot_changes_boot_id_stops_outputs_and_drops_the_link(loses_ring: bool) -> None:
    srv = SimServer("dbsa*2", speed=100.0, faults="reboot=40s", reboot_loses_ring=loses_ring)
    url = await srv.start()
    host = Host(url)
    try:
        old = (await host.handshake()).boot_id
        await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        await host.ok(sweep_msg(pixel=2, dwell_ms=5_000.0))
        await host.until(lambda: host.closed, what="link dropped by the reboot")
        n_before = srv.board.counters.produced[Stream.AGING]
        await wait_for(lambda: not srv.link_is_down, what="link back")
        host.open(url)
        hello = await host.handshake()
        assert hello.boot_id != old and host.reboots and host.reboots[0].new_boot_id == hello.boot_id
        st = await host.status()
        assert st.aging_active_mask == 0 and st.sweep_active == 0 and st.smu_output_on == 0
        assert srv.board.counters.produced[Stream.AGING] == n_before  # the channel stopped
        if loses_ring:
            assert st.aging_head_seq == 0 and st.sweep_head_seq == 0
        else:
            assert st.aging_head_seq == n_before > 30
            await host.until(lambda: host.sweep_done(), what="sweep_done REBOOT after hello")
            done = host.sweep_done()[0]
            assert isinstance(done, SweepDone) and done.reason == SweepEnd.REBOOT
        # the host restarts the channel; seqs continue (or restart at 0 with the ring lost)
        ok = await host.ok(aging_msg(channel=0, pixel=1, interval_ms=1000))
        assert ok.value == (0 if loses_ring else n_before)
    finally:
        host.close()
        await srv.stop()


async def test_baud_pacing_and_usb_latency_still_carry_every_frame() -> None:
    srv = SimServer("dbsa", speed=10.0, baud=115_200, usb_latency_ms=1.0)
    url = await srv.start()
    host = Host(url, timeout_s=0.5)
    try:
        await host.handshake()
        await host.ok(sweep_msg(stop_v=5.0, step_v=0.1, dwell_ms=1.0, integration_ms=1.0,
                                spectrum_at_v=(4.0,)))
        await host.until(lambda: host.sweep_done(), what="sweep_done")
        recs, seq = host.records(Stream.SWEEP)
        assert len(recs) == 51 and list(seq) == list(range(51)) and len(host.spectra) == 1
        assert not host.dropped and srv.stats.tx_frames_dropped == 0
        assert srv.stats.bytes_to_host > 51 * 35
    finally:
        host.close()
        await srv.stop()


def test_paced_wire_carries_baud_over_10_bytes_per_second_however_late_the_loop_runs() -> None:
    """The UART model: a backlogged wire delivers exactly baud/10 B/s even when the simulator's
    loop wakes late (a loaded host), and never more; an idle wire earns only a short burst."""
    from sim.faults import LinkNoise
    from sim.server import _Pipe

    rate = 921_600 / 10.0
    pipe = _Pipe(rate, 0.0, LinkNoise(0.0, 0.0, np.random.SeedSequence(0)))
    pipe.push(b"x" * 1_000_000, 0.0)  # far more than 1 s of wire
    rng = np.random.default_rng(3)
    wall, sent = 0.0, len(pipe.pop(0.0))
    while wall < 1.0:
        wall += float(rng.choice([0.002, 0.011, 0.037]))  # loop periods, some far over 4 ms
        sent += len(pipe.pop(wall))
        assert sent <= rate * wall + 1  # never faster than the wire
    assert sent >= rate * wall - 1  # and, backlogged, never slower either
    # idle for a second, then a burst: at most ~4 ms of credit, not a second's worth
    idle = _Pipe(rate, 0.0, LinkNoise(0.0, 0.0, np.random.SeedSequence(0)))
    idle.pop(0.0)
    idle.pop(1.0)
    idle.push(b"y" * 100_000, 1.0)
    assert len(idle.pop(1.0)) <= int(rate * 0.004) + 1


def test_listen_and_server_arguments_are_validated() -> None:
    assert parse_listen("tcp://127.0.0.1:0") == ("tcp", "127.0.0.1", 0)
    assert parse_listen("pty") == ("pty", "", 0)
    for bad in ("tcp://127.0.0.1", "udp://x:1", "tcp://:80", "serial"):
        with pytest.raises(ValueError, match="--listen"):
            parse_listen(bad)
    with pytest.raises(ValueError, match="link_path"):
        SimServer("dbsa", listen="tcp://127.0.0.1:0", link_path="/tmp/x")
    with pytest.raises(ValueError, match="speed"):
        SimServer("dbsa", speed=0)
    with pytest.raises(ValueError, match="pixel"):
        SimServer("dbsa*2", faults="short=px3@1h")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "station", "sim", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_cli_prints_the_url_first_serves_and_exits_0_on_sigterm() -> None:
    proc = _spawn("--preset", "dbsa,otac", "--listen", "tcp://127.0.0.1:0", "--speed", "1000", "--seed", "3")
    try:
        assert proc.stdout is not None
        url = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT_S)
        assert url.startswith("socket://127.0.0.1:")
        host = Host(url.strip())
        await host.handshake()
        ok = await host.ok(AgingStart(channel=1, pixel=2, current_a=1e-4, interval_ms=1000,
                                      compliance_v=12.0, pd_gain=2))
        assert ok.value == 0
        await host.until(lambda: len(host.records(Stream.AGING)[0]) > 5, what="samples")
        host.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, WAIT_S)
    assert rc == 0


async def test_cli_on_a_pty_with_a_link_exits_0_on_sigint_and_removes_the_link(tmp_path: Path) -> None:
    link = tmp_path / "board"
    proc = _spawn("--preset", "dbsa", "--listen", "pty", "--link", str(link))
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT_S)
        assert first.strip() == str(link) and link.is_symlink()
        host = Host(str(link))
        await host.handshake()
        host.close()
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, WAIT_S)
    assert rc == 0 and not link.is_symlink()


def test_cli_truth_json_has_the_table_s1_and_lifetime_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert station_main(["sim", "--preset", "dbsa", "--truth", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["von_v", "l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w",
                         "el_peak_nm", "el_fwhm_nm", "cie_x", "cie_y"]
    assert 490 < doc["el_peak_nm"] < 530
    assert station_main(["sim", "--preset", "dbsa", "--truth", "--json", "--current-density", "10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for k in ("l0_cd_m2", "l_peak_cd_m2", "t_peak_h", "t95_h", "t90_h", "t80_h", "t50_h", "t50_from_peak_h"):
        assert k in doc
    assert doc["t95_h"] < doc["t50_h"]
    assert station_main(["sim", "--preset", "dbsa", "--truth"]) == 0
    assert "l_max_cd_m2" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "nosuch"], "known presets: dbsa, otac, oled, bad"),
    (["--preset", "nosuch", "--truth"], "known presets"),
    (["--preset", "dbsa,otac", "--truth"], "exactly one preset"),
    (["--faults", "short=px9@1h"], "pixel"),
    (["--faults", "explode=1s"], "unknown fault kind"),
    (["--listen", "udp://1.2.3.4:5"], "--listen"),
    (["--listen", "tcp://127.0.0.1:0", "--link", "/tmp/x"], "--link"),
    (["--layout", "/nonexistent/board.toml"], "cannot read layout"),
    (["--json"], "--truth"),
])
def test_cli_errors_are_clear_and_exit_2(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert station_main(["sim", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        station_main(["sim", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--truth --json" in out and "--faults" in out


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------


def test_layout_from_presets_numbers_pixels_on_one_substrate() -> None:
    lay = layout_from_presets("dbsa*2,otac")
    assert (lay.n_substrates, lay.pixels_per_substrate, lay.n_pixels) == (1, 3, 3)
    assert [p.preset.name for p in lay.pixels] == ["dbsa", "dbsa", "otac"]
    assert lay.pixels[0].area_m2 == pytest.approx(4e-6)
    assert lay.pixels[0].pd_fraction == pytest.approx(5.64**2 / (5.64**2 + 100))


def test_layout_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "board.toml"
    f.write_text('serial_number = "LAB-7"\n[defaults]\npreset = "dbsa"\npd_distance_mm = 12.0\n'
                 '[[substrate]]\npixels = [{}, { preset = "otac", area_mm2 = 2.25 }]\n'
                 '[[substrate]]\npixels = [{ preset = "bad" }, { pd_radius_mm = 3.0 }]\n')
    lay = load_layout(f)
    assert (lay.n_substrates, lay.pixels_per_substrate, lay.serial_number) == (2, 2, "LAB-7")
    assert [(p.number, p.substrate, p.preset.name) for p in lay.pixels] == [
        (1, 0, "dbsa"), (2, 0, "otac"), (3, 1, "bad"), (4, 1, "dbsa")]
    assert lay.pixels[1].area_m2 == pytest.approx(2.25e-6)
    assert lay.pixels[3].pd_radius_m == pytest.approx(3e-3)
    assert lay.pixels[3].pd_distance_m == pytest.approx(12e-3)


@pytest.mark.parametrize(("doc", "field"), [
    ({"substrate": [{"pixels": [{"preset": "dbsa", "area": 4}]}]}, "substrate[0].pixels[0].area"),
    ({"substrate": [{"pixels": [{"preset": "zzz"}]}]}, "substrate[0].pixels[0].preset"),
    ({"substrate": [{"pixels": [{"preset": "dbsa", "area_mm2": -1}]}]}, "area_mm2"),
    ({"substrate": [{"pixels": [{"preset": "dbsa"}]}, {"pixels": [{"preset": "dbsa"}] * 2}]},
     "substrate[1].pixels"),
    ({"substrate": [{"pixels": [{}]}]}, "preset: missing"),
    ({"substrates": []}, "unknown key 'substrates'"),
    ({}, "no [[substrate]]"),
    ({"defaults": {"colour": 1}, "substrate": [{"pixels": [{"preset": "dbsa"}]}]}, "defaults.colour"),
])
def test_layout_errors_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(LayoutError, match=None) as e:
        parse_layout(doc, "board.toml")
    assert field in str(e.value) and "board.toml" in str(e.value)


def test_layout_file_with_bad_toml_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[[substrate]\npixels = 3\n")
    with pytest.raises(LayoutError, match="not valid TOML"):
        load_layout(f)


async def test_in_process_use_exposes_board_counters() -> None:
    async with SimServer("dbsa", speed=1e4) as srv:
        host = Host(srv.url)
        try:
            await host.handshake()
            await host.ok(aging_msg(interval_ms=1000))
            await host.until(lambda: len(host.records(Stream.AGING)[0]) >= 100, what="100 samples")
            await host.fails(aging_msg(), ErrorCode.BUSY)  # channel 0 is running
            recs, _ = host.records(Stream.AGING)
            assert srv.board.counters.produced[Stream.AGING] >= len(recs)
            assert not np.any(recs["flags"] & SampleFlags.STOPPED)
        finally:
            host.close()
