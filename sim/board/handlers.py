"""The request handlers: each request's checks, in the contract's order, and what it does."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.base import BaseMessage
from firmware_protocol.messages import (
    AgingSet,
    AgingStart,
    AgingStop,
    AllOff,
    GetCapabilities,
    GetStatus,
    Hello,
    HelloReply,
    MuxSelect,
    Ok,
    PdConfigure,
    PdRead,
    PdReading,
    Ping,
    Pong,
    SetWatchdog,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
    Spectrum,
    SpectrumAcquire,
    StreamAck,
    StreamReplay,
    SweepAbort,
    SweepStart,
)
from firmware_protocol.spec import (
    PROTOCOL_VERSION,
    SPEC_HASH,
    ErrorCode,
    Fault,
    SampleFlags,
    SmuMode,
    Stream,
    SweepEnd,
    WatchdogPolicy,
)
from sim.board.aging import AgingChannel
from sim.board.link import Deferred, HandlerResult
from sim.board.rings import StreamRings
from sim.board.state import (
    FIRMWARE_VERSION,
    MAX_AGING_INTERVAL_MS,
    MAX_DWELL_MS,
    MAX_PD_READS,
    MAX_SPECTRUM_INTEGRATION_MS,
    MAX_SWEEP_POINTS,
    MIN_AGING_INTERVAL_MS,
    NO_SWEEP_ID,
    CommandError,
)
from sim.board.sweep import SweepRun
from sim.hardware import (
    AUTO_RANGE,
    SEQ_MASK,
    pick_range,
    smu_noise,
    smu_solve,
)
from sim.physics import Degradation, FailureMode, OperatingPoint


class Handlers(StreamRings):
    """One method per host-to-board request (``_HANDLERS``)."""

    @staticmethod
    def _finite(name: str, value: float) -> float:
        if not math.isfinite(value):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} is {value}: must be a finite number")
        return value

    def _positive_within(self, name: str, value: float, unit: str = "", limit_name: str = "",
                         limit: float | None = None) -> None:
        """A finite value > 0 (else BAD_ARGUMENT) and, with a limit, at most it (else LIMIT)."""
        self._finite(name, value)
        if value <= 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} {value:g} must be > 0")
        if limit is not None and value > limit:
            raise CommandError(ErrorCode.LIMIT, f"{name} {value:g} {unit} beyond {limit_name} "
                               f"{limit:g} {unit}")

    def _pixel_arg(self, pixel: int, allow_none: bool = False) -> None:
        lo = 0 if allow_none else 1
        if not lo <= pixel <= self.layout.n_pixels:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"pixel {pixel} unknown: board has pixels 1..{self.layout.n_pixels}"
                               + (" (0 = none)" if allow_none else ""))

    def _channel_arg(self, channel: int) -> None:
        if not 0 <= channel < self.n_channels:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"channel {channel} unknown: board has channels 0..{self.n_channels - 1}")

    def _gain_arg(self, name: str, gain: int) -> None:
        n = len(self.cfg.pd_gains_v_per_a)
        if not 0 <= gain < n:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} {gain} out of range 0..{n - 1}")

    def _range_arg(self, name: str, value: float, lo: float, hi: float, lo_open: bool = True) -> None:
        self._finite(name, value)
        if (value <= lo if lo_open else value < lo) or value > hi:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"{name} {value:g} out of range {'(' if lo_open else '['}{lo:g}, {hi:g}]")

    def _not_sweeping(self, what: str) -> None:
        if self.sweep is not None:
            raise CommandError(ErrorCode.BUSY, f"{what}: sweep {self.sweep.sweep_id} is running "
                               "(sweep_abort first)")

    def _interlock_closed(self, what: str) -> None:
        if self.interlock_open:
            raise CommandError(ErrorCode.INTERLOCK, f"{what}: interlock is open; outputs are disabled")

    def _h_hello(self, m: Hello) -> HandlerResult:
        if self.hello_busy > 0:
            self.hello_busy -= 1
            raise CommandError(ErrorCode.BUSY, "board is held by another host")
        spec_hash = SPEC_HASH if self.hello_spec_hash is None else self.hello_spec_hash
        reply = HelloReply(protocol_version=PROTOCOL_VERSION, spec_hash=spec_hash, boot_id=self.boot_id,
                           firmware_version=FIRMWARE_VERSION, serial_number=self.serial_number[:32])
        notices, self._boot_notices = self._boot_notices, []
        return reply, notices

    def _h_capabilities(self, m: GetCapabilities) -> HandlerResult:
        return self.capabilities()

    def _h_ping(self, m: Ping) -> HandlerResult:
        return Pong(nonce=m.nonce, t_us=self.clock_us())

    def _h_status(self, m: GetStatus) -> HandlerResult:
        return self.status()

    def _h_all_off(self, m: AllOff) -> HandlerResult:
        self._outputs_off(cause="all_off")
        return Ok(value=0)

    def _h_watchdog(self, m: SetWatchdog) -> HandlerResult:
        try:
            policy = WatchdogPolicy(m.policy)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"policy {m.policy} unknown (0 KEEP_AGING, 1 GO_SAFE)") from None
        self.watchdog_timeout_ms = int(m.timeout_ms)
        self.watchdog_policy = policy
        self._last_heard_wall = self._wall_now
        self._wd_fired = False
        self._latched &= ~Fault.WATCHDOG_EXPIRED
        return Ok(value=0)

    def _h_mux(self, m: MuxSelect) -> HandlerResult:
        self._not_sweeping("mux_select")
        self._pixel_arg(m.pixel, allow_none=True)
        if m.pixel and (ch := self._channel_of_pixel(m.pixel)) is not None:
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by aging channel {ch.index}")
        self.mux = m.pixel
        return Ok(value=0)

    def _h_smu_configure(self, m: SmuConfigure) -> HandlerResult:
        self._not_sweeping("smu_configure")
        try:
            mode = SmuMode(m.mode)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"mode {m.mode} unknown (0 SOURCE_V, 1 SOURCE_I)") from None
        ranges = self.cfg.smu_current_ranges_a if mode == SmuMode.SOURCE_V else self.cfg.smu_voltage_ranges_v
        if m.range_index != AUTO_RANGE and not 0 <= m.range_index < len(ranges):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"range_index {m.range_index} out of range "
                               f"0..{len(ranges) - 1} or 255 (auto)")
        if mode == SmuMode.SOURCE_V:
            self._positive_within("compliance", m.compliance, "A", "max_current_a",
                                  self.cfg.max_current_a)
        elif mode == SmuMode.SOURCE_I:
            self._positive_within("compliance", m.compliance, "V", "max_voltage_v",
                                  self.cfg.max_voltage_v)
        else:
            self._positive_within("compliance", m.compliance)
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        if mode != self.smu.mode:
            self.smu.output_on = False
        self.smu.mode = mode
        self.smu.range_index = m.range_index
        self.smu.compliance = float(m.compliance)
        self.smu.integration_ms = float(m.integration_ms)
        return Ok(value=0)

    def _h_smu_output(self, m: SmuOutput) -> HandlerResult:
        self._not_sweeping("smu_output")
        self._finite("level", m.level)
        if self.smu.mode == SmuMode.SOURCE_V and abs(m.level) > self.cfg.max_voltage_v:
            raise CommandError(ErrorCode.LIMIT, f"level {m.level:g} V beyond max_voltage_v "
                               f"{self.cfg.max_voltage_v:g} V")
        if self.smu.mode == SmuMode.SOURCE_I and abs(m.level) > self.cfg.max_current_a:
            raise CommandError(ErrorCode.LIMIT, f"level {m.level:g} A beyond max_current_a "
                               f"{self.cfg.max_current_a:g} A")
        if m.enable:
            self._interlock_closed("smu_output")
            if self.mux and (ch := self._channel_of_pixel(self.mux)) is not None:
                raise CommandError(ErrorCode.BUSY, f"pixel {self.mux} is driven by aging channel {ch.index}")
        self.smu.output_on = bool(m.enable)
        self.smu.level = float(m.level)
        return Ok(value=0)

    def _h_smu_measure(self, m: SmuMeasure) -> HandlerResult:
        self._not_sweeping("smu_measure")
        cost = round(self.smu.integration_ms * 1000)
        return Deferred(cost, self._finish_smu_measure)

    def _finish_smu_measure(self) -> tuple[BaseMessage, list[BaseMessage]]:
        cfg = self.cfg
        px = self.pixels[self.mux - 1] if self.mux else None
        ro = smu_solve(self.smu, cfg, px)
        z = self._rng_smu.standard_normal(3)
        if self.smu.mode == SmuMode.SOURCE_V:
            irange, over = pick_range(cfg.smu_current_ranges_a, ro.current_a, self.smu.range_index)
            vrange, _ = pick_range(cfg.smu_voltage_ranges_v, ro.voltage_v, AUTO_RANGE)
        else:
            vrange, over = pick_range(cfg.smu_voltage_ranges_v, ro.voltage_v, self.smu.range_index)
            irange, _ = pick_range(cfg.smu_current_ranges_a, ro.current_a, AUTO_RANGE)
        v = float(smu_noise(ro.voltage_v, vrange, z[0], cfg))
        i = float(smu_noise(ro.current_a, irange, z[1], cfg))
        if over and self.smu.mode == SmuMode.SOURCE_V:
            i = math.copysign(irange * 1.05, i)
        elif over:
            v = math.copysign(vrange * 1.05, v)
        flags = SampleFlags.COMPLIANCE if (ro.compliance or over) else SampleFlags.NONE
        pd_a, gain = 0.0, 0
        if px is not None:
            sig = float(px.pd_signal_a(ro.op, ro.deg)) if ro.op is not None and ro.deg is not None else 0.0
            pd_a, gain, pflags = self._pd_once(px.number, sig, z[2:3], self.smu.integration_ms)
            flags |= pflags
        return SmuReading(t_us=self.clock_us(), voltage_v=v, current_a=i, photodiode_a=pd_a, pd_gain=gain,
                          flags=int(flags)), []

    def _pd_once(self, pixel: int, signal_a: float, z: NDArray[np.float64],
                 integration_ms: float) -> tuple[float, int, int]:
        temp = float(self.thermal.substrate_c(self._substrate_power())[self.pixels[pixel - 1].spec.substrate])
        pdv = self.photodiodes
        vals, gains, flags, g = pdv.read(np.array([signal_a + pdv.background_a(pixel, temp)]),
                                         int(pdv.gain_index[pixel]), bool(pdv.autorange[pixel]), z,
                                         integration_ms)
        pdv.gain_index[pixel] = g
        return float(vals[0]), int(gains[0]), int(flags[0])

    def _pixel_light(self, pixel: int) -> tuple[OperatingPoint | None, Degradation | None, float, float]:
        """(op, degradation, voltage, current) of a pixel as it is driven now (None: dark)."""
        px = self.pixels[pixel - 1]
        ch = self._channel_of_pixel(pixel)
        if ch is not None:
            ch.sync(self.t_us)
            deg = px.degradation()
            if deg.failure != FailureMode.NONE:
                return None, None, 0.0, 0.0
            v = float(px.voltage_at(ch.current_a, deg))
            return px.operate_v(v, deg), deg, v, ch.current_a
        if self.mux == pixel and self.smu.output_on:
            ro = smu_solve(self.smu, self.cfg, px)
            return ro.op, ro.deg, ro.voltage_v, ro.current_a
        return None, None, 0.0, 0.0

    def _h_pd_configure(self, m: PdConfigure) -> HandlerResult:
        self._pixel_arg(m.pixel, allow_none=True)
        self._gain_arg("gain_index", m.gain_index)
        sel = slice(None) if m.pixel == 0 else slice(m.pixel, m.pixel + 1)
        self.photodiodes.gain_index[sel] = m.gain_index
        self.photodiodes.autorange[sel] = bool(m.autorange)
        return Ok(value=0)

    def _h_pd_read(self, m: PdRead) -> HandlerResult:
        self._pixel_arg(m.pixel)
        if not 1 <= m.n <= MAX_PD_READS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"n {m.n} out of range 1..{MAX_PD_READS}")
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        cost = round(m.n * m.integration_ms * 1000)

        def finish() -> tuple[BaseMessage, list[BaseMessage]]:
            op, deg, _, _ = self._pixel_light(m.pixel)
            px = self.pixels[m.pixel - 1]
            sig = float(px.pd_signal_a(op, deg)) if op is not None and deg is not None else 0.0
            temp = float(self.thermal.substrate_c(self._substrate_power())[px.spec.substrate])
            pdv = self.photodiodes
            z = self._rng_read.standard_normal(m.n)
            mean, std, g, flags = pdv.read_stats(sig + pdv.background_a(m.pixel, temp), m.n,
                                                 int(pdv.gain_index[m.pixel]), bool(pdv.autorange[m.pixel]),
                                                 z, m.integration_ms)
            pdv.gain_index[m.pixel] = g
            return PdReading(pixel=m.pixel, gain_index=g, flags=flags, mean_a=mean, std_a=std), []

        return Deferred(cost, finish)

    def _h_spectrum(self, m: SpectrumAcquire) -> HandlerResult:
        self._not_sweeping("spectrum_acquire")
        self._pixel_arg(m.pixel)
        self._range_arg("integration_ms", m.integration_ms, 0.0, MAX_SPECTRUM_INTEGRATION_MS)

        def finish() -> tuple[BaseMessage, list[BaseMessage]]:
            op, deg, v, i = self._pixel_light(m.pixel)
            px = self.pixels[m.pixel - 1]
            counts, dark, flags = self.spectrometer.acquire(px, op, deg, m.integration_ms, self._rng_spec)
            seq = self.spectrum_ring.next_seq32()
            msg = Spectrum(seq=seq, t_us=self.clock_us(), sweep_id=NO_SWEEP_ID, index=0, pixel=m.pixel,
                           flags=flags, voltage_v=v, current_a=i, integration_ms=float(m.integration_ms),
                           dark_counts=float(dark), counts=tuple(int(c) for c in counts))
            self.spectrum_ring.push(msg)
            self.counters.produced[Stream.SPECTRUM] += 1
            return Ok(value=seq), [msg]

        return Deferred(round(m.integration_ms * 1000), finish)

    def _sweep_program(self, m: SweepStart) -> NDArray[np.float64]:
        if m.voltages_v:
            v = np.asarray(m.voltages_v, dtype=np.float64)
            if not np.all(np.isfinite(v)):
                raise CommandError(ErrorCode.BAD_ARGUMENT, "voltages_v contains NaN or inf")
            return v
        for name in ("start_v", "stop_v", "step_v"):
            self._finite(name, getattr(m, name))
        start, stop, step = float(m.start_v), float(m.stop_v), float(m.step_v)
        if step == 0 and start != stop:
            raise CommandError(ErrorCode.BAD_ARGUMENT, "step_v is 0 (and no voltages_v list)")
        if step != 0 and (stop - start) * step < 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"step_v {step:g} goes away from stop_v {stop:g} (start_v {start:g})")
        if start == stop:
            return np.array([start])
        n_steps = math.floor((stop - start) / step + 1e-9)
        if n_steps + 1 > MAX_SWEEP_POINTS:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"sweep has {n_steps + 1} points > max {MAX_SWEEP_POINTS}")
        v = start + step * np.arange(n_steps + 1, dtype=np.float64)
        if abs(v[-1] - stop) > 1e-6 * abs(step):
            v = np.append(v, stop)
        else:
            v[-1] = stop
        return v

    def _h_sweep_start(self, m: SweepStart) -> HandlerResult:
        if self.sweep is not None:
            raise CommandError(ErrorCode.BUSY, f"sweep {self.sweep.sweep_id} is already running")
        self._pixel_arg(m.pixel)
        volts = self._sweep_program(m)
        if len(volts) > MAX_SWEEP_POINTS:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"sweep has {len(volts)} points > max {MAX_SWEEP_POINTS}")
        vmax = float(np.max(np.abs(volts)))
        if vmax > self.cfg.max_voltage_v:
            raise CommandError(ErrorCode.LIMIT, f"sweep reaches {vmax:g} V beyond max_voltage_v "
                               f"{self.cfg.max_voltage_v:g} V")
        self._positive_within("compliance_a", m.compliance_a, "A", "max_current_a",
                              self.cfg.max_current_a)
        self._range_arg("dwell_ms", m.dwell_ms, 0.0, MAX_DWELL_MS, lo_open=False)
        self._range_arg("integration_ms", m.integration_ms, 0.0, self.cfg.max_integration_ms)
        if m.options & ~0x07:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"options 0x{m.options:02X}: bits 3-7 are reserved")
        self._gain_arg("pd_gain", m.pd_gain)
        if m.spectrum_at_v:
            if not all(math.isfinite(v) for v in m.spectrum_at_v):
                raise CommandError(ErrorCode.BAD_ARGUMENT, "spectrum_at_v contains NaN or inf")
            self._range_arg("spectrum_integration_ms", m.spectrum_integration_ms, 0.0,
                            MAX_SPECTRUM_INTEGRATION_MS)
        self._finite("breakdown_v_drop", m.breakdown_v_drop)
        if m.breakdown_v_drop < 0:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"breakdown_v_drop {m.breakdown_v_drop:g} must be >= 0")
        self._interlock_closed("sweep_start")
        if (ch := self._channel_of_pixel(m.pixel)) is not None:
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by aging channel {ch.index}")
        self.mux = m.pixel
        self.smu.output_on = True
        self.smu.mode = SmuMode.SOURCE_V
        self.smu.level = float(volts[0])
        self.sweep = SweepRun(self, m, volts, self.t_us)
        return Ok(value=self.sweep_ring.head & SEQ_MASK)

    def _h_sweep_abort(self, m: SweepAbort) -> HandlerResult:
        self._end_sweep(SweepEnd.ABORTED)
        return Ok(value=0)

    def _h_aging_start(self, m: AgingStart) -> HandlerResult:
        self._channel_arg(m.channel)
        self._pixel_arg(m.pixel)
        other = self._channel_of_pixel(m.pixel)
        if other is not None and other.index != m.channel:
            raise CommandError(ErrorCode.BAD_ARGUMENT,
                               f"pixel {m.pixel} is already on aging channel {other.index}")
        cfg = self.cfg
        self._positive_within("current_a", m.current_a, "A", "max_aging_current_a",
                              cfg.max_aging_current_a)
        if not MIN_AGING_INTERVAL_MS <= m.interval_ms <= MAX_AGING_INTERVAL_MS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"interval_ms {m.interval_ms} out of range "
                               f"{MIN_AGING_INTERVAL_MS}..{MAX_AGING_INTERVAL_MS}")
        self._positive_within("compliance_v", m.compliance_v, "V", "aging_compliance_v",
                              cfg.aging_compliance_v)
        self._gain_arg("pd_gain", m.pd_gain)
        self._interlock_closed("aging_start")
        running = self.channels[m.channel]
        if running is not None:
            raise CommandError(ErrorCode.BUSY, f"channel {m.channel} is running (pixel "
                               f"{running.pixel.number}); aging_stop it first")
        if (self.sweep is not None and self.sweep.pixel.number == m.pixel) or (
                self.mux == m.pixel and self.smu.output_on):
            raise CommandError(ErrorCode.BUSY, f"pixel {m.pixel} is driven by the SMU")
        px = self.pixels[m.pixel - 1]
        current = float(np.float32(m.current_a))
        t = self.t_us
        ch = AgingChannel(
            index=m.channel, pixel=px, current_a=current, interval_us=int(m.interval_ms) * 1000,
            compliance_v=float(np.float32(m.compliance_v)), gain=int(m.pd_gain),
            fresh=px.fresh_at_current(current), accel=px.accel(current), next_t=t, anchor_t=t,
            anchor_dose=px.dose_ref_h, rng=self._rng_ch[m.channel])
        self._predict_stop(ch)
        self.channels[m.channel] = ch
        return Ok(value=self.aging_ring.head & SEQ_MASK)

    def _h_aging_set(self, m: AgingSet) -> HandlerResult:
        self._channel_arg(m.channel)
        ch = self.channels[m.channel]
        self._positive_within("current_a", m.current_a, "A", "max_aging_current_a",
                              self.cfg.max_aging_current_a)
        if m.interval_ms != 0 and not MIN_AGING_INTERVAL_MS <= m.interval_ms <= MAX_AGING_INTERVAL_MS:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"interval_ms {m.interval_ms} out of range "
                               f"{MIN_AGING_INTERVAL_MS}..{MAX_AGING_INTERVAL_MS} (0 keeps it)")
        if ch is None:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"channel {m.channel} is not running")
        self._interlock_closed("aging_set")
        t = self.t_us
        ch.sync(t)
        current = float(np.float32(m.current_a))
        ch.current_a = current
        ch.fresh = ch.pixel.fresh_at_current(current)
        ch.accel = ch.pixel.accel(current)
        if m.interval_ms:
            ch.interval_us = int(m.interval_ms) * 1000
        ch.next_t = t + ch.interval_us
        self._predict_stop(ch)
        return Ok(value=0)

    def _h_aging_stop(self, m: AgingStop) -> HandlerResult:
        self._channel_arg(m.channel)
        ch = self.channels[m.channel]
        if ch is not None:
            self._stop_channel(ch, "command")
        return Ok(value=0)

    _HANDLERS: ClassVar[dict[type[BaseMessage], str]] = {
        Hello: "_h_hello",
        GetCapabilities: "_h_capabilities",
        Ping: "_h_ping",
        GetStatus: "_h_status",
        AllOff: "_h_all_off",
        SetWatchdog: "_h_watchdog",
        MuxSelect: "_h_mux",
        SmuConfigure: "_h_smu_configure",
        SmuOutput: "_h_smu_output",
        SmuMeasure: "_h_smu_measure",
        PdConfigure: "_h_pd_configure",
        PdRead: "_h_pd_read",
        SpectrumAcquire: "_h_spectrum",
        SweepStart: "_h_sweep_start",
        SweepAbort: "_h_sweep_abort",
        AgingStart: "_h_aging_start",
        AgingSet: "_h_aging_set",
        AgingStop: "_h_aging_stop",
        StreamAck: "_h_stream_ack",
        StreamReplay: "_h_stream_replay",
    }
    """Request type → handler method; every host-to-board message of the spec has one."""
