"""The C firmware core (firmware/) in the loop: the board's protocol, request, stream and fault
tests, run again with every simulated board's firmware the C core (sim/cfirmware.py) instead of
the Python model. The physics is the same Python (the core's HAL), so a test that passes against
the Python board and fails here is a behaviour difference of the C core: a bug.

The tests are the same functions as in tests/test_sim_board.py, tests/test_sim_server.py,
tests/test_sim_faults.py, tests/test_station_faults.py and tests/test_station_procedures.py
(imported, not copied), with ``sim.server.DEFAULT_FIRMWARE`` set to ``c`` for the test's
duration. What the C core does not do yet is skipped with its reason (NOT_YET: nothing now)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sim.server
from firmware_protocol.spec import Stream

from . import test_sim_board as board_tests
from . import test_sim_faults as sim_fault_tests
from . import test_sim_server as server_tests
from . import test_station_faults as fault_tests
from . import test_station_procedures as procedure_tests
from .test_sim_board import Host, aging_msg, running, sweep_msg

ROOT = Path(__file__).resolve().parent.parent

# tests of the Python board's internals (its numpy vectorisation, its Python classes), not of
# behaviour on the wire: they construct sim.board.Board directly
NOT_WIRE = {
    "test_same_seed_same_bytes_other_seed_other_noise",
    "test_aging_samples_of_all_channels_at_once_are_those_of_one_channel_at_a_time",
    "test_aging_samples_match_the_records_saved_before_vectorising",
    "test_aging_arrays_of_many_pixels_equal_each_pixels_own",
    "test_photodiode_read_blocks_equal_one_read_per_block",
    # server tests without a board behind them
    "test_paced_wire_carries_baud_over_10_bytes_per_second_however_late_the_loop_runs",
    "test_listen_and_server_arguments_are_validated",
    "test_cli_truth_json_has_the_table_s1_and_lifetime_keys",
    "test_cli_errors_are_clear_and_exit_2",
    "test_cli_help_has_examples",
    "test_layout_from_presets_numbers_pixels_on_one_substrate",
    "test_layout_toml_file",
    "test_layout_errors_name_the_field",
    "test_layout_file_with_bad_toml_is_reported",
    # fault-plan parsing and link noise, no board behind them
    "test_the_full_example_spec_parses",
    "test_several_entries_of_one_kind_and_every_time_unit",
    "test_bad_specs_are_refused_with_a_clear_message",
    "test_a_plan_naming_a_pixel_the_board_lacks_is_refused",
    "test_link_noise_is_reproducible_whatever_the_chunking_and_near_its_rates",
    # these start `python -m sim` in a subprocess: covered for the C core by
    # test_cli_serves_the_c_firmware_with_the_url_first below
    "test_cli_prints_the_url_first_serves_and_exits_0_on_sigterm",
    "test_cli_on_a_pty_with_a_link_exits_0_on_sigint_and_removes_the_link",
}

# behaviour of the C core not implemented yet: test name -> what is missing
NOT_YET: dict[str, str] = {}


def _collect(module: Any) -> list[Any]:
    out = []
    for name, fn in sorted(vars(module).items()):
        if not name.startswith("test_") or not callable(fn) or name in NOT_WIRE:
            continue
        marks = [pytest.mark.skip(reason=f"C firmware: {NOT_YET[name]}")] if name in NOT_YET else []
        params = getattr(fn, "pytestmark", [])
        out.append(pytest.param(fn, id=f"{module.__name__.rsplit('.', 1)[-1]}::{name}",
                                marks=[*marks, *(m for m in params if m.name != "parametrize")]))
    return out


@pytest.fixture(autouse=True)
def c_firmware(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sim.server, "DEFAULT_FIRMWARE", "c")
    yield


def _parametrized(fn: Callable[..., Any]) -> list[dict[str, Any]]:
    """The argument sets of a test's own @pytest.mark.parametrize marks (one empty set if none)."""
    sets: list[dict[str, Any]] = [{}]
    for m in getattr(fn, "pytestmark", []):
        if m.name != "parametrize":
            continue
        names = [n.strip() for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])]
        new = []
        for s in sets:
            for v in m.args[1]:
                vals = v.values if hasattr(v, "values") else (v if len(names) > 1 else (v,))
                new.append({**s, **dict(zip(names, vals, strict=True))})
        sets = new
    return sets


async def _run(fn: Callable[..., Any], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    wanted = inspect.signature(fn).parameters
    for args in _parametrized(fn):
        kw = dict(args)
        if "tmp_path" in wanted:
            kw["tmp_path"] = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
            kw["tmp_path"].mkdir()
        for name in wanted:
            if name not in kw:
                kw[name] = request.getfixturevalue(name)
        result = fn(**kw)
        if inspect.isawaitable(result):
            await result


@pytest.mark.parametrize("fn", _collect(board_tests))
async def test_board_contract_against_the_c_core(fn: Callable[..., Any], request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    await _run(fn, request, tmp_path)


@pytest.mark.parametrize("fn", _collect(server_tests))
async def test_server_against_the_c_core(fn: Callable[..., Any], request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    await _run(fn, request, tmp_path)


@pytest.mark.parametrize("fn", _collect(sim_fault_tests))
async def test_simulated_faults_against_the_c_core(fn: Callable[..., Any], request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    await _run(fn, request, tmp_path)


@pytest.mark.faults
@pytest.mark.parametrize("fn", _collect(fault_tests))
async def test_station_faults_against_the_c_core(fn: Callable[..., Any], request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    await _run(fn, request, tmp_path)


@pytest.mark.parametrize("fn", _collect(procedure_tests))
async def test_station_procedures_against_the_c_core(fn: Callable[..., Any], request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    """Among them: a sweep through the whole measurement chain gives the seed's Table S1 within
    the Python board's tolerances; aging for 1000 virtual hours matches the model's lifetime."""
    await _run(fn, request, tmp_path)


# ---------------------------------------------------------------------------------------------
# the C core's own
# ---------------------------------------------------------------------------------------------


async def test_the_server_runs_the_c_core_when_asked() -> None:
    from sim.cfirmware import FIRMWARE_VERSION, CFirmwareBoard

    async with running("dbsa*2") as (srv, host):
        assert isinstance(srv.board, CFirmwareBoard)
        assert host.hello is not None and host.hello.firmware_version == FIRMWARE_VERSION
        assert host.hello.boot_id == srv.board.boot_id


async def test_two_c_boards_in_one_process_keep_their_own_state() -> None:
    async with running("dbsa*2", seed=1) as (a, ha), running("otac*3", seed=2) as (b, hb):
        assert a.board.boot_id != b.board.boot_id
        await ha.ok(aging_msg(interval_ms=1000))
        await hb.ok(sweep_msg(stop_v=2.0))
        await hb.until(lambda: bool(hb.sweep_done()), what="sweep_done")
        assert (await ha.status()).aging_active_mask == 1
        assert (await hb.status()).aging_active_mask == 0
        assert a.board.counters.produced[Stream.SWEEP] == 0
        assert b.board.counters.produced[Stream.AGING] == 0


def test_cli_serves_the_c_firmware_with_the_url_first() -> None:
    p = subprocess.Popen([sys.executable, "-m", "sim", "--firmware", "c",
                          "--preset", "dbsa", "--listen", "tcp://127.0.0.1:0"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        url = p.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
    finally:
        p.terminate()
        _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err


def test_host_helper_is_the_board_tests_own() -> None:
    assert Host is board_tests.Host  # the same host code drives both firmwares


def _scripted(board_cls: type[Any]) -> list[Any]:
    """Messages a board sends for a fixed script of requests (no server: fed and advanced by
    hand), with the Python board's physics and seed."""
    from firmware_protocol.codec import StreamDecoder, encode_frame
    from firmware_protocol.messages import (
        AgingSet,
        AgingStart,
        AgingStop,
        GetStatus,
        Hello,
        MuxSelect,
        PdRead,
        SmuConfigure,
        SmuMeasure,
        SmuOutput,
        SpectrumAcquire,
        StreamReplay,
        SweepStart,
    )
    from firmware_protocol.spec import FrameFlags
    from sim.layout import layout_from_presets

    b = board_cls(layout_from_presets("dbsa*2,otac*2"), seed=3)
    b.set_link(True)
    wire = bytearray()

    def step(t_us: int, *msgs: tuple[int, Any], flags: int = 0) -> None:
        b.receive(b"".join(encode_frame(m, seq=s, flags=flags) for s, m in msgs), 0.0)
        b.advance(t_us)
        wire.extend(b"".join(f for f, _ in b.take_frames()))

    step(10, (1, Hello(protocol_version=1, spec_hash=0)))
    step(5_000_000, (2, AgingStart(channel=0, pixel=1, current_a=4e-4, interval_ms=1000, compliance_v=12.0,
                                   pd_gain=2)),
         (3, AgingStart(channel=2, pixel=3, current_a=2e-4, interval_ms=700, compliance_v=12.0, pd_gain=2)))
    step(60_000_000, (4, PdRead(pixel=1, n=10, integration_ms=20.0)),
         (5, PdRead(pixel=9, n=1, integration_ms=1.0)))
    step(3_600_000_000, (6, SweepStart(sweep_id=7, pixel=2, start_v=0.0, stop_v=5.0, step_v=0.25,
                                       dwell_ms=5.0, integration_ms=10.0, compliance_a=0.05, options=5,
                                       pd_gain=2, spectrum_at_v=(3.0, 4.0), spectrum_integration_ms=50.0)))
    step(3_700_000_000, (7, MuxSelect(pixel=4)),
         (8, SmuConfigure(mode=0, range_index=255, compliance=0.01, integration_ms=20.0)),
         (9, SmuOutput(enable=1, level=3.0)), (10, SmuMeasure()),
         (11, SpectrumAcquire(pixel=4, integration_ms=30.0)))
    step(3_700_000_001, (10, SmuMeasure()), flags=FrameFlags.RETRY)  # answered from the reply cache
    step(3_800_000_000, (12, AgingSet(channel=2, current_a=3e-4, interval_ms=0)),
         (13, StreamReplay(stream=int(Stream.AGING), from_seq=100, to_seq=180)),
         (14, StreamReplay(stream=int(Stream.SWEEP), from_seq=0, to_seq=0xFFFFFFFF)))
    step(7_200_000_000, (15, AgingStop(channel=0)), (16, GetStatus()))
    return [e.message.to_dict() for e in StreamDecoder().feed(bytes(wire))]


def test_the_c_core_sends_the_python_boards_messages_message_for_message() -> None:
    """Same seed, same physics, same script: every message equal, records, spectra, replies,
    replays and errors alike (only the firmware_version of hello_reply names the C core)."""
    from sim.board import Board
    from sim.cfirmware import CFirmwareBoard

    py, c = _scripted(Board), _scripted(CFirmwareBoard)
    assert len(py) > 400
    for m in (py[0], c[0]):
        m.pop("firmware_version")
    assert len(c) == len(py)
    for i, (a, b) in enumerate(zip(py, c, strict=True)):
        assert a == b, f"message {i} differs"


def test_the_firmwares_message_names_are_generated_from_the_spec() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_names", ROOT / "firmware" / "gen_names.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "firmware" / "fw_names.h").read_text() == mod.generate(), \
        "firmware/fw_names.h is out of date: python firmware/gen_names.py"


def test_the_scripted_session_runs_clean_under_the_undefined_behaviour_sanitizer(tmp_path: Path) -> None:
    """The core built with -fsanitize=undefined (alignment, overflow, bounds, shifts...) runs the
    scripted session to the same messages, in a child process (a finding aborts it)."""
    from sim.cfirmware import build_library

    lib = build_library(force=True, extra_flags=("-O1", "-g", "-fsanitize=undefined",
                                                 "-fno-sanitize-recover=all"),
                        out=tmp_path / "libfw_host_ubsan.so")
    code = f"""
import functools, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from sim.board import Board
from sim.cfirmware import CFirmwareBoard
from tests.test_firmware_c import _scripted
c = _scripted(functools.partial(CFirmwareBoard, library=Path({str(lib)!r})))
py = _scripted(Board)
c[0].pop("firmware_version"); py[0].pop("firmware_version")
sys.exit(0 if c == py else 3)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "runtime error" not in p.stderr, p.stderr
    assert p.returncode == 0, p.stderr
