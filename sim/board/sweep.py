"""The sweep engine: an on-board J-V-L program, point by point, with its spectra."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.messages import (
    SWEEP_POINT_DTYPE,
    Spectrum,
    SweepDone,
    SweepStart,
)
from firmware_protocol.spec import (
    SampleFlags,
    Stream,
    SweepEnd,
)
from sim.board.aging import AgingScheduler
from sim.board.state import NO_SEQ, BoardState
from sim.hardware import (
    ACCEL_J_CAP_A_M2,
    AUTO_RANGE,
    SEQ_MASK,
    US_PER_HOUR,
    pick_range,
    smu_noise,
)
from sim.physics import lifetime_tau_h


class SweepRun:
    """A running sweep program: its timeline, precomputed physics and emission state."""

    def __init__(self, board: BoardState, msg: SweepStart, volts: NDArray[np.float64], t0: int) -> None:
        self.board = board
        self.msg = msg
        self.sweep_id = msg.sweep_id
        self.pixel = board.pixels[msg.pixel - 1]
        fwd = volts
        self.n_fwd = len(fwd)
        reverse = bool(msg.options & 0x01)
        self.v_set = np.concatenate([fwd, fwd[::-1]]) if reverse else fwd.copy()
        self.n = len(self.v_set)
        self.base_flags = np.zeros(self.n, dtype=np.uint8)
        if reverse:
            self.base_flags[self.n_fwd :] = SampleFlags.REVERSE
        self.stop_on_compliance = bool(msg.options & 0x02)
        self.autorange = bool(msg.options & 0x04)
        self.gain = int(msg.pd_gain)
        self.spectrum_idx: set[int] = {int(np.argmin(np.abs(fwd - v))) for v in msg.spectrum_at_v}
        point_us = round((msg.dwell_ms + msg.integration_ms) * 1000)
        spec_us = round(msg.spectrum_integration_ms * 1000)
        self.spec_us = spec_us
        self.point_us = point_us
        times = np.empty(self.n, dtype=np.int64)
        t = t0
        for k in range(self.n):
            t += point_us
            times[k] = t
            if k in self.spectrum_idx:
                t += spec_us
        self.times = times
        self.k = 0
        self.pending_spec: tuple[int, int] | None = None
        self.n_emitted = 0
        self.last_seq: int | None = None
        self.meas_v = np.zeros(self.n)
        self.meas_i = np.zeros(self.n)
        self.i_true = np.zeros(self.n)
        self.v_eff = np.zeros(self.n)
        self.hit = np.zeros(self.n, dtype=bool)
        self.pd_sig = np.zeros(self.n)
        self.deg = self.pixel.degradation()
        self.compute(0)

    def compute(self, k0: int) -> None:
        """(Re)compute the true operating points from index ``k0`` on (pixel state may change)."""
        if k0 >= self.n:
            return
        px = self.pixel
        deg = self.deg = px.degradation()
        v = self.v_set[k0:]
        comp = self.msg.compliance_a
        i_free = np.asarray(px.current_at(v, deg), dtype=float)
        hit = np.abs(i_free) > comp
        v_eff = v.copy()
        if np.any(hit):
            i_lim = np.copysign(comp, i_free[hit])
            v_eff[hit] = px.voltage_at(i_lim, deg)
        op = px.operate_v(v_eff, deg)
        i_true = np.where(hit, np.copysign(comp, i_free), op.current_a)
        self.v_eff[k0:] = v_eff
        self.i_true[k0:] = i_true
        self.hit[k0:] = hit
        self.pd_sig[k0:] = px.pd_signal_a(op, deg)

    @property
    def next_t(self) -> int:
        if self.pending_spec is not None:
            return self.pending_spec[0]
        return int(self.times[self.k]) if self.k < self.n else self.board.t_us

    def dose_h(self) -> float:
        """Equivalent age added by the points emitted so far."""
        n = self.n_emitted
        if n == 0:
            return 0.0
        j = np.minimum(np.abs(self.i_true[:n]) / self.pixel.area_m2, ACCEL_J_CAP_A_M2)
        tau = np.asarray(lifetime_tau_h(self.pixel.preset, j), dtype=float)
        with np.errstate(divide="ignore"):
            rate = np.where(np.isfinite(tau) & (tau > 0), self.pixel.preset.aging.tau_ref_h / tau, 0.0)
        return float(np.sum(rate) * self.point_us / US_PER_HOUR)


class SweepEngine(AgingScheduler):
    """The running sweep program: one point per step, spectra, its end."""

    def _sweep_step(self) -> None:
        sw = self.sweep
        assert sw is not None
        t = self.t_us
        if sw.pending_spec is not None:
            if sw.pending_spec[0] <= t:
                k = sw.pending_spec[1]
                sw.pending_spec = None
                self._sweep_spectrum(sw, k)
                if sw.k >= sw.n:
                    self._end_sweep(SweepEnd.COMPLETED)
            return
        if sw.k >= sw.n:
            self._end_sweep(SweepEnd.COMPLETED)
            return
        k = sw.k
        cfg = self.cfg
        z = self._rng_sweep.standard_normal(3)
        v_eff, i_true = float(sw.v_eff[k]), float(sw.i_true[k])
        vrange, _ = pick_range(cfg.smu_voltage_ranges_v, v_eff, AUTO_RANGE)
        irange, _ = pick_range(cfg.smu_current_ranges_a, i_true, AUTO_RANGE)
        v_meas = float(smu_noise(v_eff, vrange, z[0], cfg))
        i_meas = float(smu_noise(i_true, irange, z[1], cfg))
        temp = float(self.thermal.substrate_c(self._substrate_power())[sw.pixel.spec.substrate])
        pd_true = np.array([sw.pd_sig[k] + self.photodiodes.background_a(sw.pixel.number, temp)])
        pd, gains, pflags, sw.gain = self.photodiodes.read(pd_true, sw.gain, sw.autorange, z[2:3],
                                                            sw.msg.integration_ms)
        flags = int(sw.base_flags[k]) | int(pflags[0])
        if sw.hit[k]:
            flags |= SampleFlags.COMPLIANCE
        rec = np.zeros(1, dtype=SWEEP_POINT_DTYPE)
        rec["t_us"] = t - self.clock_base_us
        rec["sweep_id"] = sw.sweep_id
        rec["index"] = k
        rec["pixel"] = sw.pixel.number
        rec["flags"] = flags
        rec["pd_gain"] = gains[0]
        rec["voltage_set_v"] = sw.v_set[k]
        rec["voltage_v"] = v_meas
        rec["current_a"] = i_meas
        rec["photodiode_a"] = pd[0]
        self.sweep_ring.push(rec)
        self.counters.produced[Stream.SWEEP] += 1
        sw.last_seq = self.sweep_ring.head - 1
        sw.n_emitted += 1
        sw.meas_v[k], sw.meas_i[k] = v_meas, i_meas
        self.smu.level = float(sw.v_set[k])
        sw.k += 1
        if self.link_up:
            self._sweep_buf.append(rec)
        drop = sw.msg.breakdown_v_drop
        if drop > 0 and abs(float(sw.v_set[k])) - abs(v_meas) > drop:
            self._end_sweep(SweepEnd.BREAKDOWN)
            return
        if sw.hit[k] and sw.stop_on_compliance:
            self._end_sweep(SweepEnd.COMPLIANCE)
            return
        if k in sw.spectrum_idx and k < sw.n_fwd:
            sw.pending_spec = (t + sw.spec_us, k)
            return
        if sw.k >= sw.n:
            self._end_sweep(SweepEnd.COMPLETED)

    def _sweep_spectrum(self, sw: SweepRun, k: int) -> None:
        deg = sw.deg
        op = sw.pixel.operate_v(float(sw.v_eff[k]), deg)
        counts, dark, flags = self.spectrometer.acquire(sw.pixel, op, deg, sw.msg.spectrum_integration_ms,
                                                        self._rng_spec)
        self._push_spectrum(sw.sweep_id, k, sw.pixel.number, flags, float(sw.meas_v[k]),
                            float(sw.meas_i[k]), sw.msg.spectrum_integration_ms, dark, counts)

    def _push_spectrum(self, sweep_id: int, index: int, pixel: int, flags: int, voltage: float,
                       current: float, integration_ms: float, dark: float,
                       counts: NDArray[np.uint16]) -> Spectrum:
        msg = Spectrum(seq=self.spectrum_ring.next_seq32(), t_us=self.clock_us(), sweep_id=sweep_id,
                       index=index, pixel=pixel, flags=flags, voltage_v=voltage, current_a=current,
                       integration_ms=float(integration_ms), dark_counts=float(dark),
                       counts=tuple(int(c) for c in counts))
        self.spectrum_ring.push(msg)
        self.counters.produced[Stream.SPECTRUM] += 1
        self._emit(msg, stream=True)
        return msg

    def _end_sweep(self, reason: SweepEnd) -> None:
        sw = self.sweep
        if sw is None:
            return
        self.sweep = None
        self._flush_sweep()
        sw.pixel.dose_ref_h += sw.dose_h()
        self.smu.output_on = False
        self.mux = 0
        last = NO_SEQ if sw.last_seq is None else sw.last_seq & SEQ_MASK
        self._emit(SweepDone(sweep_id=sw.sweep_id, n_points=sw.n_emitted, reason=int(reason),
                             last_seq=last))
