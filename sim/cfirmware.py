"""Firmware in the loop: the C firmware core (``firmware/``) with the simulator's physics as its HAL.

:class:`CFirmwareBoard` is a :class:`sim.board.Board` whose protocol, request handling, aging
scheduler, sweep engine, rings, replay, interlock and watchdog are the C core's (built for the
host as a shared library, loaded with ctypes); only the hardware — the pixels' physics, the
SMU's and photodiodes' noise, the spectrometer, the temperatures, the fault plan's events — stays
in Python, reached by the core through its HAL (``firmware/hal.h``, ``firmware/hal_host.c``).
:class:`sim.server.SimServer` serves it exactly like the Python board
(``station sim --firmware c``).

Each instance loads its own copy of the library (the core's state is static, one board per
copy), so several C boards can run in one process.
"""

from __future__ import annotations

import ctypes as C
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.base import BaseMessage
from firmware_protocol.codec import decode_payload, encode_payload
from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
    SWEEP_POINT_DTYPE,
    PdRead,
    PdReading,
    SmuReading,
    Status,
)
from firmware_protocol.spec import MESSAGES_BY_ID, ErrorCode, EventCode, SampleFlags, SmuMode, Stream
from sim.board import SPECTRUM_RING_DEPTH, SWEEP_RING_DEPTH, AgingChannel, Board, BoardCounters
from sim.hardware import (
    ACCEL_J_CAP_A_M2,
    AUTO_RANGE,
    US_PER_HOUR,
    SmuState,
    pick_range,
    smu_noise,
)
from sim.physics import FailureMode, lifetime_tau_h

__all__ = ["FIRMWARE_VERSION", "CFirmwareBoard", "FirmwareBuildError", "build_library", "library_path"]

ROOT = Path(__file__).resolve().parent.parent
FW_DIR = ROOT / "firmware"
SOURCES = (FW_DIR / "fw.c", FW_DIR / "hal_host.c")
HEADERS = (FW_DIR / "fw.h", FW_DIR / "hal.h", FW_DIR / "fw_names.h",
           ROOT / "firmware_protocol" / "firmware_protocol.h")
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")
FIRMWARE_VERSION = "sim c-core 0.1.0"
"""Reported in hello_reply: a simulated board ("sim ...") running the C core."""

_STOP_CAUSE = {"short": 1, "open": 2, "compliance": 3}
_build_lock = threading.Lock()


class FirmwareBuildError(RuntimeError):
    """The C core could not be built (no compiler, or a compile error: the message says)."""


def library_path() -> Path:
    return ROOT / "build" / "firmware" / "libfw_host.so"


def build_library(force: bool = False, extra_flags: Sequence[str] = (), out: Path | None = None) -> Path:
    """Build the host library (as ``make firmware`` does) when missing or older than its sources
    (``extra_flags``/``out``: another build of it, e.g. with the sanitizers, elsewhere)."""
    out = library_path() if out is None else out
    with _build_lock:
        newest = max(p.stat().st_mtime for p in (*SOURCES, *HEADERS))
        if not force and out.exists() and out.stat().st_mtime >= newest:
            return out
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise FirmwareBuildError("the C firmware needs gcc (scripts/bootstrap.sh --test installs it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        cmd = [gcc, *CFLAGS, *extra_flags, "-fPIC", "-shared", "-I", str(ROOT / "firmware_protocol"),
               "-I", str(FW_DIR), *map(str, SOURCES), "-o", str(tmp), "-lm"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise FirmwareBuildError(f"building the C firmware failed:\n{p.stderr}")
        os.replace(tmp, out)
        return out


# ---- the C side's structures ------------------------------------------------------------------

class _Config(C.Structure):
    _fields_ = [("n_substrates", C.c_uint8), ("pixels_per_substrate", C.c_uint16),
                ("n_channels", C.c_uint16), ("aging_ring_depth", C.c_uint32),
                ("sweep_ring_depth", C.c_uint32), ("spectrum_ring_depth", C.c_uint32),
                ("first_seq", C.c_uint32), ("reboot_loses_ring", C.c_uint8),
                ("pd_default_gain", C.c_uint8), ("firmware_version", C.c_char * 33),
                ("serial_number", C.c_char * 33)]


class _Counters(C.Structure):
    _fields_ = [("produced", C.c_uint64 * 3), ("replayed", C.c_uint64 * 3), ("unsent", C.c_uint64 * 3),
                ("frames_built", C.c_uint32), ("valid_frames_in", C.c_uint32),
                ("frame_errors_in", C.c_uint32), ("resends", C.c_uint32), ("retries_ignored", C.c_uint32),
                ("requests", C.c_uint32), ("executed", C.c_uint32), ("errors", C.c_uint32),
                ("reboots", C.c_uint32), ("watchdog_expiries", C.c_uint32), ("events", C.c_uint32),
                ("requests_by_id", C.c_uint32 * 64), ("executed_by_id", C.c_uint32 * 64),
                ("errors_by_code", C.c_uint32 * 16), ("events_by_code", C.c_uint32 * 16)]


_u8p = C.POINTER(C.c_uint8)
_fp = C.POINTER(C.c_float)
_CB_RANDOM = C.CFUNCTYPE(C.c_uint32)
_CB_MILLIS = C.CFUNCTYPE(C.c_uint64)
_CB_UART = C.CFUNCTYPE(None, C.c_void_p, C.c_size_t, C.c_int)
_CB_INTERLOCK = C.CFUNCTYPE(C.c_int)
_CB_TEMPS = C.CFUNCTYPE(C.c_uint8, _fp, C.c_uint8)
_CB_SMU_APPLY = C.CFUNCTYPE(None, C.c_uint8, C.c_uint8, C.c_uint8, C.c_uint16, C.c_float, C.c_float,
                             C.c_float)
_CB_SMU_MEASURE = C.CFUNCTYPE(None, _fp, _u8p, C.c_uint8, _u8p)
_CB_SWEEP_POINT = C.CFUNCTYPE(None, C.c_uint16, C.c_float, C.c_float, C.c_float, C.c_uint8, C.c_uint32,
                              _fp, _u8p, _u8p)
_CB_PD_READ = C.CFUNCTYPE(None, C.c_uint16, C.c_uint16, C.c_float, _u8p, C.c_uint8, _fp, _u8p)
_CB_AGING_ON = C.CFUNCTYPE(None, C.c_uint16, C.c_uint16, C.c_float, C.c_float)
_CB_AGING_OFF = C.CFUNCTYPE(None, C.c_uint16)
_CB_AGING_SAMPLE = C.CFUNCTYPE(None, C.c_uint16, C.c_uint64, _u8p, _fp, _u8p)
_CB_SPECTRUM = C.CFUNCTYPE(C.c_int, C.c_uint16, C.c_float, C.POINTER(C.c_uint16), C.c_uint16, _fp, _u8p)
_CB_CAPS = C.CFUNCTYPE(C.c_size_t, _u8p, C.c_size_t)


class _Hal(C.Structure):
    _fields_ = [("random_u32", _CB_RANDOM), ("millis", _CB_MILLIS), ("uart_write", _CB_UART),
                ("interlock_closed", _CB_INTERLOCK), ("temperatures", _CB_TEMPS),
                ("smu_apply", _CB_SMU_APPLY), ("smu_measure", _CB_SMU_MEASURE),
                ("sweep_point", _CB_SWEEP_POINT), ("pd_read", _CB_PD_READ), ("aging_on", _CB_AGING_ON),
                ("aging_off", _CB_AGING_OFF), ("aging_sample", _CB_AGING_SAMPLE),
                ("spectrum", _CB_SPECTRUM), ("capabilities", _CB_CAPS)]


def _load(path: Path) -> C.CDLL:
    """A private copy of the library: its static state belongs to one board."""
    fd, tmp = tempfile.mkstemp(prefix="libfw_host_", suffix=".so")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        lib = C.CDLL(tmp)
    finally:
        os.unlink(tmp)
    lib.fw_init.argtypes = [C.POINTER(_Config)]
    lib.fw_init.restype = C.c_int
    lib.fw_rx.argtypes = [C.c_char_p, C.c_size_t]
    lib.fw_advance.argtypes = [C.c_uint64, C.c_int]
    lib.fw_advance.restype = C.c_uint64
    lib.fw_set_link.argtypes = [C.c_int]
    lib.fw_interlock.argtypes = [C.c_int]
    lib.fw_aging_fault.argtypes = [C.c_uint16, C.c_uint8]
    lib.fw_counters.restype = C.POINTER(_Counters)
    lib.fw_boot_id.restype = C.c_uint32
    lib.fw_now_us.restype = C.c_uint64
    lib.fw_clock_us.restype = C.c_uint64
    lib.fw_channel_schedule.argtypes = [C.c_uint16, C.POINTER(C.c_uint64), C.POINTER(C.c_uint64)]
    lib.fw_next_command_us.restype = C.c_uint64
    lib.fw_aging_due.argtypes = [C.c_uint64]
    lib.fw_aging_due.restype = C.c_uint64
    lib.fw_status_payload.argtypes = [C.c_void_p, C.c_size_t]
    lib.fw_status_payload.restype = C.c_size_t
    lib.fw_ring_info.argtypes = [C.c_uint8, C.POINTER(C.c_int64)]
    lib.fw_ring_record.argtypes = [C.c_uint8, C.c_int64, C.c_void_p]
    lib.fw_ring_record.restype = C.c_int
    lib.fw_debug_hello.argtypes = [C.c_uint32, C.c_int, C.c_uint32]
    lib.fw_host_set_hal.argtypes = [C.POINTER(_Hal)]
    lib.fw_host_hal_size.restype = C.c_size_t
    if lib.fw_host_hal_size() != C.sizeof(_Hal):
        raise FirmwareBuildError("firmware/hal_host.c and sim/cfirmware.py disagree on the HAL table")
    return lib


class _RingView:
    """A read-only view of one of the C core's rings, shaped like :class:`sim.hardware.RecordRing`."""

    def __init__(self, board: CFirmwareBoard, stream: Stream) -> None:
        self._b = board
        self.stream = stream
        self.dtype = AGING_SAMPLE_DTYPE if stream == Stream.AGING else SWEEP_POINT_DTYPE
        self.depth = {Stream.AGING: board.ring_depth, Stream.SWEEP: SWEEP_RING_DEPTH,
                      Stream.SPECTRUM: SPECTRUM_RING_DEPTH}[stream]

    def _info(self) -> list[int]:
        out = (C.c_int64 * 5)()
        self._b._lib.fw_ring_info(int(self.stream), out)
        return list(out)

    @property
    def head(self) -> int:
        return self._info()[0]

    @property
    def oldest(self) -> int:
        return self._info()[1]

    @property
    def acked(self) -> int:
        return self._info()[2]

    @property
    def overwritten_unacked(self) -> int:
        return self._info()[3]

    @property
    def overflow(self) -> bool:
        return bool(self._info()[4])

    def get(self, first: int, last: int) -> NDArray[np.void]:
        head, oldest = self._info()[:2]
        first, last = max(first, oldest), min(last, head - 1)
        n = max(0, last - first + 1)
        buf = (C.c_uint8 * (self.dtype.itemsize * max(n, 1)))()
        for i in range(n):
            self._b._lib.fw_ring_record(int(self.stream), first + i,
                                        C.byref(buf, i * self.dtype.itemsize))
        return np.frombuffer(bytes(buf)[: n * self.dtype.itemsize], dtype=self.dtype).copy()

    def __len__(self) -> int:
        info = self._info()
        return info[0] - info[1]


class CFirmwareBoard(Board):
    """The C firmware core with the simulator's physics as its HAL (see the module docstring)."""

    def __init__(self, *args: Any, library: Path | None = None, **kw: Any) -> None:
        """``Board``'s arguments; ``library``: the host library to load (default: built by
        :func:`build_library`)."""
        self._lib: Any = None
        self._hello_busy = 0
        self._hello_spec_hash: int | None = None
        super().__init__(*args, **kw)
        self._py_counters = self.counters
        self._frames_c: list[tuple[bytes, bool]] = []
        self._cb_error: BaseException | None = None
        self._yield = False
        self._sweep_dose_h = 0.0
        self._sweep_pixel = 0
        self._horizon = 0
        self._aging_cache: dict[int, tuple[NDArray[np.int64], NDArray[np.void], int]] = {}
        self._lib = _load(build_library() if library is None else library)
        self._hal = self._make_hal()
        self._lib.fw_host_set_hal(C.byref(self._hal))
        cfgc = _Config(n_substrates=self.layout.n_substrates,
                       pixels_per_substrate=self.layout.pixels_per_substrate,
                       n_channels=self.n_channels, aging_ring_depth=self.ring_depth,
                       sweep_ring_depth=SWEEP_RING_DEPTH, spectrum_ring_depth=SPECTRUM_RING_DEPTH,
                       first_seq=self.first_seq & 0xFFFFFFFF, reboot_loses_ring=int(self.reboot_loses_ring),
                       pd_default_gain=self.cfg.pd_default_gain,
                       firmware_version=FIRMWARE_VERSION.encode(),
                       serial_number=self.serial_number[:32].encode())
        rc = self._call(self._lib.fw_init, C.byref(cfgc))
        if rc != 0:
            raise ValueError("the C firmware refused the board configuration (ring depth or channel "
                             "count beyond its static buffers?)")
        self._push_hello()
        self.aging_ring = _RingView(self, Stream.AGING)  # type: ignore[assignment]
        self.sweep_ring = _RingView(self, Stream.SWEEP)  # type: ignore[assignment]
        self.rings = {s: _RingView(self, s) for s in Stream}  # type: ignore[misc]

    # -- Python-side state that lives in C now ---------------------------------------------------
    def _new_rings(self, first_seq: int) -> None:
        if self._lib is None:  # Board.__init__: the rings are the C core's
            super()._new_rings(first_seq)

    @property
    def boot_id(self) -> int:
        return int(self._lib.fw_boot_id()) if self._lib is not None else 0

    @boot_id.setter
    def boot_id(self, value: int) -> None:
        # Board.__init__ drew the first boot id: the C core's first hal_random_u32 returns it
        # (the same draws as the Python board's, reset after reset)
        self._first_boot_id: int | None = value

    def _hal_random(self) -> int:
        first, self._first_boot_id = self._first_boot_id, None
        return first if first is not None else int(self._rng_id.integers(1, 1 << 32))

    @property
    def hello_busy(self) -> int:
        return self._hello_busy

    @hello_busy.setter
    def hello_busy(self, value: int) -> None:
        self._hello_busy = int(value)
        self._push_hello()

    @property
    def hello_spec_hash(self) -> int | None:
        return self._hello_spec_hash

    @hello_spec_hash.setter
    def hello_spec_hash(self, value: int | None) -> None:
        self._hello_spec_hash = value
        self._push_hello()

    def _push_hello(self) -> None:
        if self._lib is not None:
            h = self._hello_spec_hash
            self._lib.fw_debug_hello(self._hello_busy, int(h is not None), 0 if h is None else h)

    @property
    def counters(self) -> BoardCounters:
        c = self._py_counters
        if self._lib is None:
            return c
        k = self._lib.fw_counters().contents
        for s in Stream:
            c.produced[s] = int(k.produced[s])
            c.replayed[s] = int(k.replayed[s])
        c.frames_built = k.frames_built
        c.valid_frames_in = k.valid_frames_in
        c.frame_errors_in = k.frame_errors_in
        c.resends = k.resends
        c.retries_ignored = k.retries_ignored
        c.reboots = k.reboots
        c.watchdog_expiries = k.watchdog_expiries
        c.requests.clear()
        c.executed.clear()
        c.errors.clear()
        c.events.clear()
        for mid in range(64):
            name = MESSAGES_BY_ID[mid].name if mid in MESSAGES_BY_ID else f"0x{mid:02X}"
            if k.requests_by_id[mid]:
                c.requests[name] = k.requests_by_id[mid]
            if k.executed_by_id[mid]:
                c.executed[name] = k.executed_by_id[mid]
        for code in range(16):
            if k.errors_by_code[code]:
                c.errors[ErrorCode(code).name] = k.errors_by_code[code]
            if k.events_by_code[code]:
                c.events[EventCode(code).name] = k.events_by_code[code]
        return c

    @counters.setter
    def counters(self, value: BoardCounters) -> None:
        self._py_counters = value

    # -- calling into C ---------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the core; an exception raised in a HAL callback is raised here afterwards."""
        self._cb_error = None
        r = fn(*args)
        if self._cb_error is not None:
            err, self._cb_error = self._cb_error, None
            raise err
        return r

    def _guard(self, fn: Callable[..., Any], default: Any = None) -> Callable[..., Any]:
        def wrapped(*a: Any) -> Any:
            try:
                return fn(*a)
            except BaseException as e:  # raised again by _call, after the C frame
                if self._cb_error is None:
                    self._cb_error = e
                return default
        return wrapped

    def _make_hal(self) -> _Hal:
        g = self._guard
        return _Hal(
            random_u32=_CB_RANDOM(g(self._hal_random, 1)),
            millis=_CB_MILLIS(g(lambda: int(self._wall_now * 1000.0), 0)),
            uart_write=_CB_UART(g(self._hal_uart)),
            interlock_closed=_CB_INTERLOCK(g(lambda: 0 if self.interlock_open else 1, 0)),
            temperatures=_CB_TEMPS(g(self._hal_temperatures, 0)),
            smu_apply=_CB_SMU_APPLY(g(self._hal_smu_apply)),
            smu_measure=_CB_SMU_MEASURE(g(self._hal_smu_measure)),
            sweep_point=_CB_SWEEP_POINT(g(self._hal_sweep_point)),
            pd_read=_CB_PD_READ(g(self._hal_pd_read)),
            aging_on=_CB_AGING_ON(g(self._hal_aging_on)),
            aging_off=_CB_AGING_OFF(g(self._hal_aging_off)),
            aging_sample=_CB_AGING_SAMPLE(g(self._hal_aging_sample)),
            spectrum=_CB_SPECTRUM(g(self._hal_spectrum, -1)),
            capabilities=_CB_CAPS(g(self._hal_capabilities, 0)),
        )

    # -- the HAL: the simulator's physics -------------------------------------------------------
    def _hal_uart(self, ptr: int, n: int, is_stream: int) -> None:
        self._frames_c.append((C.string_at(ptr, n), bool(is_stream)))

    def _hal_temperatures(self, out: Any, max_n: int) -> int:
        temps = self.thermal.readings(self._substrate_power(), self._rng_temp)[:max_n]
        for i, t in enumerate(temps):
            out[i] = t
        return len(temps)

    def _hal_smu_apply(self, mode: int, rng: int, on: int, pixel: int, compliance: float,
                       integration_ms: float, level: float) -> None:
        was_on, was_pixel = self.smu.output_on, self.mux
        self.smu = SmuState(mode=SmuMode(mode), range_index=rng, compliance=compliance,
                            integration_ms=integration_ms, output_on=bool(on), level=level)
        self.mux = pixel
        if self._sweep_pixel and (not on or pixel != was_pixel or not was_on):
            # a sweep's ageing of its pixel, added when the SMU leaves it (sim/board.py: at its end)
            self.pixels[self._sweep_pixel - 1].dose_ref_h += self._sweep_dose_h
            self._sweep_dose_h, self._sweep_pixel = 0.0, 0

    def _set_pd(self, pixel: int, gain: int, autorange: int) -> None:
        self.photodiodes.gain_index[pixel] = gain
        self.photodiodes.autorange[pixel] = bool(autorange)

    def _hal_smu_measure(self, out: Any, gain: Any, autorange: int, flags: Any) -> None:
        self.t_us = int(self._lib.fw_now_us())
        if self.mux:
            self._set_pd(self.mux, gain[0], autorange)
        reading = self._finish_smu_measure()[0]
        assert isinstance(reading, SmuReading)
        out[0], out[1], out[2] = reading.voltage_v, reading.current_a, reading.photodiode_a
        gain[0] = reading.pd_gain
        flags[0] = reading.flags

    def _hal_sweep_point(self, pixel: int, v_set: float, comp: float, integration_ms: float,
                         autorange: int, dt_us: int, out: Any, gain: Any, flags: Any) -> None:
        self.t_us = int(self._lib.fw_now_us())
        px = self.pixels[pixel - 1]
        deg = px.degradation()
        cfg = self.cfg
        i_free = float(np.asarray(px.current_at(np.array([v_set]), deg))[0])
        hit = abs(i_free) > comp
        v_eff = v_set
        if hit:
            v_eff = float(np.asarray(px.voltage_at(math.copysign(comp, i_free), deg)).reshape(-1)[0])
        op = px.operate_v(np.array([v_eff]), deg)
        i_true = math.copysign(comp, i_free) if hit else float(np.asarray(op.current_a).reshape(-1)[0])
        pd_sig = float(np.asarray(px.pd_signal_a(op, deg)).reshape(-1)[0])
        z = self._rng_sweep.standard_normal(3)
        vrange, _ = pick_range(cfg.smu_voltage_ranges_v, v_eff, AUTO_RANGE)
        irange, _ = pick_range(cfg.smu_current_ranges_a, i_true, AUTO_RANGE)
        out[0] = float(smu_noise(v_eff, vrange, z[0], cfg))
        out[1] = float(smu_noise(i_true, irange, z[1], cfg))
        temp = float(self.thermal.substrate_c(self._substrate_power())[px.spec.substrate])
        pd_true = np.array([pd_sig + self.photodiodes.background_a(pixel, temp)])
        pd, gains, pflags, _g = self.photodiodes.read(pd_true, int(gain[0]), bool(autorange), z[2:3],
                                                      integration_ms)
        out[2] = float(pd[0])
        gain[0] = int(gains[0]) if not autorange else int(_g)
        flags[0] = int(pflags[0]) | (int(SampleFlags.COMPLIANCE) if hit else 0)
        # the point's share of the pixel's ageing (sim/board.py SweepRun.dose_h)
        j = min(abs(i_true) / px.area_m2, ACCEL_J_CAP_A_M2)
        tau = float(np.asarray(lifetime_tau_h(px.preset, j)))
        rate = px.preset.aging.tau_ref_h / tau if math.isfinite(tau) and tau > 0 else 0.0
        self._sweep_pixel = pixel
        self._sweep_dose_h += rate * dt_us / US_PER_HOUR

    def _hal_pd_read(self, pixel: int, n: int, integration_ms: float, gain: Any, autorange: int,
                     out: Any, flags: Any) -> None:
        self.t_us = int(self._lib.fw_now_us())
        self._set_pd(pixel, gain[0], autorange)
        deferred = self._h_pd_read(PdRead(pixel=pixel, n=n, integration_ms=integration_ms))
        assert not isinstance(deferred, BaseMessage | tuple) and deferred is not None
        reading = deferred.finish()[0]
        assert isinstance(reading, PdReading)
        out[0], out[1] = reading.mean_a, reading.std_a
        gain[0] = reading.gain_index
        flags[0] = reading.flags

    def _hal_aging_on(self, ch: int, pixel: int, current_a: float, compliance_v: float) -> None:
        t = self.t_us = int(self._lib.fw_now_us())
        px = self.pixels[pixel - 1]
        old = self.channels[ch]
        if old is not None:  # aging_set: a new current on the running channel
            old.sync(t)
            old.current_a = current_a
            old.fresh = px.fresh_at_current(current_a)
            old.accel = px.accel(current_a)
            self._predict_stop(old)
        else:
            c = AgingChannel(index=ch, pixel=px, current_a=current_a, interval_us=1,
                             compliance_v=compliance_v, gain=0, fresh=px.fresh_at_current(current_a),
                             accel=px.accel(current_a), next_t=t, anchor_t=t, anchor_dose=px.dose_ref_h,
                             rng=self._rng_ch[ch])
            self._predict_stop(c)
            self.channels[ch] = c
        self._aging_cache.clear()
        self._yield = True  # the core returns: the driver's predicted fault is a new event
        self._lib.fw_yield()

    def _hal_aging_off(self, ch: int) -> None:
        self._aging_cache.clear()
        c = self.channels[ch]
        if c is not None:
            c.sync(self.t_us)
            self.channels[ch] = None

    def _hal_aging_sample(self, ch: int, t: int, gain: Any, out: Any, flags: Any) -> None:
        c = self.channels[ch]
        if c is None:
            raise RuntimeError(f"C core sampled aging channel {ch}, which the HAL has off")
        rec = self._cached_sample(c, t, int(gain[0]))
        out[0], out[1] = float(rec["current_a"]), float(rec["voltage_v"])
        out[2], out[3] = float(rec["photodiode_a"]), float(rec["temperature_c"])
        gain[0] = int(rec["pd_gain"])
        flags[0] = int(rec["flags"])

    def _cached_sample(self, c: AgingChannel, t: int, gain: int) -> np.void:
        """The channel's sample at ``t``. The physics of the samples the core will ask for next
        (its schedule, up to the next request or the end of this advance: nothing can change the
        channel before) is computed in one numpy pass, as the Python board does, and served from
        a cache: the same values, at the Python board's speed."""
        hit = self._aging_cache.get(c.index)
        if hit is not None:
            times, recs, i = hit
            if i < len(times) and times[i] == t and (i == 0 or int(recs["pd_gain"][i - 1]) == gain):
                self._aging_cache[c.index] = (times, recs, i + 1)
                rec: np.void = recs[i]
                return rec
        nxt, interval = C.c_uint64(), C.c_uint64()
        self._lib.fw_channel_schedule(c.index, C.byref(nxt), C.byref(interval))
        n = 1
        if nxt.value == t and interval.value > 0:  # a scheduled sample, not a final one
            horizon = min(self._horizon, int(self._lib.fw_next_command_us()) - 1)
            n = max(1, min(4096, (horizon - t) // interval.value + 1))
        times = t + int(interval.value) * np.arange(n, dtype=np.int64)
        c.gain = gain
        recs = self._aging_samples([(c, times)])
        self._aging_cache[c.index] = (times, recs, 1)
        first: np.void = recs[0]
        return first

    def _hal_spectrum(self, pixel: int, integration_ms: float, counts: Any, n: int, out: Any,
                      flags: Any) -> int:
        self.t_us = int(self._lib.fw_now_us())
        op, deg, v, i = self._pixel_light(pixel)
        px = self.pixels[pixel - 1]
        cts, dark, fl = self.spectrometer.acquire(px, op, deg, integration_ms, self._rng_spec)
        if len(cts) != n:
            return -1
        C.memmove(counts, np.ascontiguousarray(cts, dtype=np.uint16).ctypes.data, 2 * n)
        out[0], out[1], out[2] = float(dark), float(v), float(i)
        flags[0] = int(fl)
        return 0

    def _hal_capabilities(self, buf: Any, cap: int) -> int:
        data = encode_payload(self.capabilities())
        if len(data) > cap:
            return 0
        C.memmove(buf, data, len(data))
        return len(data)

    # -- what the server calls --------------------------------------------------------------------
    def set_link(self, up: bool) -> None:
        if up == self.link_up:
            return
        self.link_up = up
        self._lib.fw_set_link(int(up))
        if not up:
            self.discard_frames([f for f, _ in self._frames_c])
            self._frames_c.clear()

    def take_frames(self) -> list[tuple[bytes, bool]]:
        out, self._frames_c = self._frames_c, []
        return out

    def receive(self, data: bytes, wall_s: float) -> None:
        self._wall_now = wall_s
        self._call(self._lib.fw_rx, data, len(data))

    def check_watchdog(self, wall_s: float) -> None:
        self._wall_now = wall_s
        self._call(self._lib.fw_check_watchdog)

    def emit_status(self) -> None:
        self._call(self._lib.fw_emit_status)

    def status(self) -> Status:
        buf = (C.c_uint8 * 1024)()
        n = self._call(self._lib.fw_status_payload, buf, 1024)
        msg = decode_payload(Status.MSG_ID, bytes(buf)[:n])
        assert isinstance(msg, Status)
        return msg

    def faults(self) -> int:
        return int(self.status().faults)

    def clock_us(self) -> int:
        return int(self._lib.fw_clock_us())

    def _cap_target(self, target: int) -> int:
        total = int(self._lib.fw_aging_due(target))
        from sim.board import MAX_SAMPLES_PER_ADVANCE
        if total <= MAX_SAMPLES_PER_ADVANCE:
            return target
        self._py_counters.steps_capped += 1
        span = target - self.t_us
        return self.t_us + max(1, int(span * MAX_SAMPLES_PER_ADVANCE / total))

    def _hw_event(self, target: int) -> tuple[int, str | None]:
        """The next event of the simulated hardware (fault plan, interlock, driver faults)."""
        best, kind = target, None
        cands: list[tuple[float, str]] = []
        if self._fault_events:
            cands.append((self._fault_events[0].t_us, "fault"))
        if self._interlock_close_at < math.inf:
            cands.append((self._interlock_close_at, "ilock_close"))
        for ch in self.channels:
            if ch is not None and ch.stop_t < math.inf:
                cands.append((ch.stop_t, "chan_stop"))
        for t, k in cands:
            ti = max(math.ceil(t), self.t_us)
            if ti <= best and (kind is None or ti < best):
                best, kind = ti, k
        return best, kind

    def advance(self, target_us: int) -> int:
        target = self._cap_target(max(int(target_us), self.t_us))
        while True:
            t_e, kind = self._hw_event(target)
            self._yield = False
            self._horizon = t_e if kind is None else t_e - 1
            reached = int(self._call(self._lib.fw_advance, t_e, int(kind is None)))
            self.t_us = reached
            if self._yield:
                continue  # a channel started: its driver fault may come before t_e
            if kind is None:
                break
            self.t_us = t_e
            self._dispatch(kind)
            if self.link_actions:
                break
        return self.t_us

    def _dispatch(self, kind: str) -> None:
        if kind == "chan_stop":
            for ch in list(self.channels):
                if ch is not None and ch.stop_t <= self.t_us:
                    cause = ch.stop_cause
                    ch.stop_t = math.inf
                    self._call(self._lib.fw_aging_fault, ch.index, _STOP_CAUSE.get(cause, 0))
            return
        super()._dispatch(kind)

    def inject_failure(self, pixel: int, mode: FailureMode) -> None:
        self._aging_cache.clear()
        px = self.pixels[pixel - 1]
        px.forced = mode
        cause = _STOP_CAUSE["short" if mode == FailureMode.SHORT else "open"]
        for ch in list(self.channels):
            if ch is not None and ch.pixel is px:
                self._call(self._lib.fw_aging_fault, ch.index, cause)

    def set_interlock(self, open_: bool) -> None:
        if open_ == self.interlock_open:
            return
        self.interlock_open = open_
        self._call(self._lib.fw_interlock, int(open_))

    def reboot(self, drop_link: bool = True) -> None:
        from sim.board import LinkAction

        produced_before = {s: self.counters.produced[s] for s in Stream}
        for ch in self.channels:
            if ch is not None:
                ch.sync(self.t_us)
        self._aging_cache.clear()
        self._call(self._lib.fw_reboot)
        if self._sweep_pixel:
            self.pixels[self._sweep_pixel - 1].dose_ref_h += self._sweep_dose_h
            self._sweep_dose_h, self._sweep_pixel = 0.0, 0
        self.channels = [None] * self.n_channels
        self.smu = SmuState()
        self.mux = 0
        self.photodiodes.reset()
        self.discard_frames([f for f, _ in self._frames_c])
        self._frames_c.clear()
        if self.reboot_loses_ring:
            done = self._py_counters.epoch_produced
            done.append({s: produced_before[s] - sum(e[s] for e in done) for s in Stream})
            self.clock_base_us = self.t_us
        if drop_link:
            self.link_actions.append(LinkAction("reboot", 0, 0.3))


def firmware_kinds() -> Sequence[str]:
    return ("python", "c")
