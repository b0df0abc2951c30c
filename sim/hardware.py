"""The simulated board's hardware: SMU, multiplexer, photodiodes, spectrometer, temperature sensors,
the pixels under test (a thin adapter over :mod:`sim.physics`) and the stream ring buffers.

Everything is vectorised where it runs per sample (aging blocks, sweeps) and takes its random
numbers from numpy Generators the board seeds from ``--seed``.

Models
------
*SMU* (one, switched to a pixel by the multiplexer). Source V with a current compliance, or
source I with a voltage compliance. In compliance the source becomes the other kind: a
source-V point whose |I| would exceed ``compliance_a`` is current-limited (I = compliance, the
voltage measured is the lower one the pixel needs for that current) and flagged COMPLIANCE.
Readings carry Gaussian noise of 1e-4 relative plus 1e-6 of the measuring range; in a fixed
current range a current beyond 1.05 × the range reads as the range and is flagged COMPLIANCE.

*Photodiode* over each pixel (a Si photodiode on the pixel's axis). Current
``I_pd = F·P·∫S(λ)R(λ)dλ + I_dark(T) + noise`` with F = r²/(r²+d²) from the layout, R the Si
responsivity (:mod:`sim.optics`), the dark current 10-50 pA per diode (drawn once from the seed)
doubling every 8 °C above 25 °C, noise from the amplifier (50 µV·√(1 ms/t_int) at the
transimpedance output), shot noise √(q·I/t_int) and 1e-4 relative. The transimpedance amplifier
has gains ``pd_gains_v_per_a`` and saturates at ±``pd_full_scale_v``; the ADC quantises with a
step of full scale / 2^bits / gain. Autorange: a reading that saturates is repeated at the
highest gain that keeps the signal under 80 % of full scale, a reading under 5 % of full scale
moves up the same way; the sample is flagged AUTORANGED, and PD_SATURATED if it still saturates
(lowest gain) — readings at a fixed gain that saturate are flagged PD_SATURATED too.

*Spectrometer* (288 pixels, λ(p) = Σ c_k p^k over ~340-850 nm). It reports PHOTON COUNTS:
counts per pixel are proportional to the photon flux falling in that pixel's wavelength bin,
already corrected for the spectrometer's own spectral sensitivity (a flat-fielded instrument), so
``(counts − dark)/|dλ/dp|`` is the photon spectral density. Counts = coupling × forward photon
flux × fraction in the bin × integration time, + dark (500 counts offset + 200 counts/s),
with Poisson shot noise and 6 counts of read noise, clipped at ``spectrometer_max_counts``
(flag bit0 when any pixel is at the maximum).

*Temperature*: each substrate at 25 °C + 8 K/W × the electrical power its driven pixels
dissipate, the board sensor at 27 °C, ±0.02 °C noise.

*Pixels*: each pixel carries an equivalent age (a dose in "reference hours": ∫ dt/a(J), with a(J)
= (J_ref/J)^n the aging acceleration of its preset), so a pixel aged at several currents, or
swept after aging, is in one consistent state; the aging law of :mod:`sim.physics` is evaluated at
that dose. A pixel can also be forced shorted or open (faults).

*Ring buffers* (:class:`RecordRing`, :class:`MessageRing`): one per stream, each with its own
sequence counter. Records stay in the ring until overwritten; ``stream_ack`` frees them (they may
then be overwritten silently); overwriting a record that was never acknowledged sets the
overflow flag (Fault.RING_OVERFLOW) until the host acknowledges past the lost records.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.spec import SampleFlags, SmuMode
from sim.layout import Layout, PixelSpec
from sim.optics import Q_E_C, si_responsivity_a_per_w
from sim.physics import (
    T_REF_K,
    Degradation,
    FailureMode,
    OperatingPoint,
    aging_state,
    current_a,
    lifetime_tau_h,
    operating_point,
    operating_point_at_current,
    spectrum_w_per_nm,
    voltage_for_current,
)

__all__ = [
    "AUTO_RANGE",
    "US_PER_HOUR",
    "FreshPoint",
    "HardwareConfig",
    "MessageRing",
    "Photodiodes",
    "Pixel",
    "RecordRing",
    "SmuReadout",
    "SmuState",
    "Spectrometer",
    "Thermal",
    "aging_arrays_of",
]

FloatArray = NDArray[np.float64]
US_PER_HOUR = 3_600_000_000
AUTO_RANGE = 0xFF
SEQ_MASK = 0xFFFFFFFF
_PD_GRID_NM = np.arange(300.0, 1101.0, 1.0)
_PD_R_GRID = si_responsivity_a_per_w(_PD_GRID_NM)


def _default_wavelength_cal(n_pixels: int = 288, lo: float = 340.0, hi: float = 850.0,
                            c2: float = -3.0e-4) -> tuple[float, ...]:
    p_last = n_pixels - 1
    c1 = (hi - lo - c2 * p_last * p_last) / p_last
    return (lo, c1, c2)


@dataclass(frozen=True)
class HardwareConfig:
    """Fixed properties of the simulated board (what ``capabilities`` reports, and the models)."""

    smu_voltage_ranges_v: tuple[float, ...] = (2.0, 20.0)
    smu_current_ranges_a: tuple[float, ...] = (1e-6, 1e-4, 1e-2, 0.1)
    max_voltage_v: float = 20.0
    max_current_a: float = 0.1
    max_aging_current_a: float = 0.05
    aging_compliance_v: float = 15.0
    pd_gains_v_per_a: tuple[float, ...] = (1e4, 1e5, 1e6, 1e7, 1e8)
    pd_full_scale_v: float = 10.0
    pd_adc_bits: int = 16
    pd_default_gain: int = 2
    spectrometer_pixels: int = 288
    wavelength_cal: tuple[float, ...] = field(default_factory=_default_wavelength_cal)
    spectrometer_max_counts: int = 65535
    board_tick_us: int = 1000
    max_integration_ms: float = 10_000.0  # SMU, sweep, pd_read (the spec allows up to 10 s)
    # model constants
    smu_noise_rel: float = 1e-4
    smu_noise_range: float = 1e-6
    pd_amp_noise_v: float = 50e-6  # at 1 ms integration
    pd_noise_rel: float = 1e-4
    pd_dark_min_a: float = 10e-12
    pd_dark_max_a: float = 50e-12
    pd_dark_doubling_c: float = 8.0
    aging_pd_integration_ms: float = 20.0
    spectrometer_coupling: float = 4e-9  # counts per forward photon (fibre, grating, detector)
    spectrometer_dark_offset: float = 500.0
    spectrometer_dark_rate_per_s: float = 200.0
    spectrometer_read_noise: float = 6.0
    ambient_c: float = 25.0
    board_sensor_c: float = 27.0
    substrate_k_per_w: float = 8.0
    temperature_noise_c: float = 0.02


# ---------------------------------------------------------------------------------------------
# Pixels: the adapter over sim.physics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreshPoint:
    """A fresh pixel at a constant current: what aging samples scale by the aging law."""

    current_a: float
    voltage_v: float
    pd_signal_a: float  # photodiode photocurrent of the fresh pixel (no dark)
    photon_flux_per_s: float


ACCEL_J_CAP_A_M2 = 1000.0
"""100 mA/cm²: the current density above which degradation no longer accelerates (see accel)."""


class Pixel:
    """One pixel under test: its preset, geometry, equivalent age and forced failure."""

    def __init__(self, spec: PixelSpec) -> None:
        self.spec = spec
        self.number = spec.number
        self.preset = spec.preset
        self.area_m2 = spec.area_m2
        self.pd_fraction = spec.pd_fraction
        self.dose_ref_h = 0.0
        """Equivalent age in hours at the preset's reference current density (∫ dt / a(J))."""
        self.forced = FailureMode.NONE
        self._fresh: dict[float, FreshPoint] = {}

    # -- aging -----------------------------------------------------------------------------
    def accel(self, current: float) -> float:
        """a(J) = τ(J)/τ_ref = (J_ref/J)^n: hours at J per reference hour (inf at J <= 0).

        The power law is what constant-current aging measures (at up to tens of mA/cm²); a J–V
        sweep passes seconds at hundreds of mA/cm², where extrapolating J^-n would burn the
        device out in a single sweep. Above ``ACCEL_J_CAP_A_M2`` the rate stops growing.
        """
        j = min(abs(current) / self.area_m2, ACCEL_J_CAP_A_M2)
        if j <= 0:
            return math.inf
        return float(lifetime_tau_h(self.preset, j)) / self.preset.aging.tau_ref_h

    def aging_arrays(self, dose_ref_h: FloatArray) -> tuple[FloatArray, FloatArray, NDArray[np.int_]]:
        """(L/L0, voltage rise, failure code) at equivalent ages ``dose_ref_h`` (vectorised)."""
        st = aging_state(self.preset, np.maximum(dose_ref_h, 0.0), self.preset.aging.j_ref_a_m2,
                         self.area_m2, with_voltage=False)
        code = st.failure
        if self.forced != FailureMode.NONE:
            code = np.full_like(code, int(self.forced))
        ratio = np.where(code == FailureMode.NONE, st.luminance_ratio, 0.0)
        return ratio, st.delta_voltage_v, code

    def degradation(self, dose_ref_h: float | None = None) -> Degradation:
        dose = self.dose_ref_h if dose_ref_h is None else dose_ref_h
        ratio, dv, code = self.aging_arrays(np.asarray(dose, dtype=float))
        return Degradation(float(ratio), float(dv), int(code))

    def failure(self, dose_ref_h: float | None = None) -> FailureMode:
        return FailureMode(int(self.degradation(dose_ref_h).failure))  # type: ignore[arg-type]

    def preset_failure_dose(self) -> float:
        """Equivalent age (reference hours) of the preset's sudden failure; inf if none."""
        f = self.preset.failure
        return f.time_ref_h if f.mode != FailureMode.NONE else math.inf

    # -- electrical / optical ----------------------------------------------------------------
    def operate_v(self, voltage_v: FloatArray | float, deg: Degradation | None = None) -> OperatingPoint:
        return operating_point(self.preset, voltage_v, self.area_m2, T_REF_K,
                               deg if deg is not None else self.degradation())

    def current_at(self, voltage_v: FloatArray | float, deg: Degradation | None = None) -> FloatArray:
        return current_a(self.preset, voltage_v, self.area_m2, T_REF_K,
                         deg if deg is not None else self.degradation())

    def voltage_at(self, current: FloatArray | float, deg: Degradation | None = None) -> FloatArray:
        return voltage_for_current(self.preset, current, self.area_m2, T_REF_K,
                                   deg if deg is not None else self.degradation())

    def spectrum_voltage(self, op: OperatingPoint, deg: Degradation) -> FloatArray:
        """The voltage at which the EL line shape is evaluated (terminal V minus the aging offset)."""
        return np.asarray(op.voltage_v - np.asarray(deg.voltage_offset_v, dtype=float), dtype=float)

    def pd_signal_a(self, op: OperatingPoint, deg: Degradation) -> FloatArray:
        """Photocurrent F·P·∫S·R dλ of the photodiode over this pixel at ``op`` (no dark, no noise)."""
        power = np.asarray(op.optical_power_w, dtype=float)
        if not np.any(power > 0):
            return np.zeros(power.shape)
        s = spectrum_w_per_nm(self.preset, _PD_GRID_NM, self.spectrum_voltage(op, deg))
        weight = np.trapezoid(s * _PD_R_GRID, _PD_GRID_NM, axis=-1)
        return np.asarray(self.pd_fraction * power * weight, dtype=float)

    def fresh_at_current(self, current: float) -> FreshPoint:
        """The fresh pixel at a constant current (cached per current)."""
        fp = self._fresh.get(current)
        if fp is None:
            fresh = Degradation()
            op = operating_point_at_current(self.preset, current, self.area_m2, T_REF_K, fresh)
            fp = FreshPoint(current, float(op.voltage_v), float(self.pd_signal_a(op, fresh)),
                            float(op.photon_flux_per_s))
            if len(self._fresh) > 256:
                self._fresh.clear()
            self._fresh[current] = fp
        return fp


def aging_arrays_of(pixels: Sequence[Pixel], owner: NDArray[np.intp],
                    dose_ref_h: FloatArray) -> tuple[FloatArray, FloatArray, NDArray[np.int_]]:
    """:meth:`Pixel.aging_arrays` of samples of several pixels at once: sample i is of
    ``pixels[owner[i]]`` at equivalent age ``dose_ref_h[i]``.

    One :func:`aging_state` per preset, with that preset's scalar parameters as for a single
    pixel, so every sample gets the very value ``Pixel.aging_arrays`` gives it.
    """
    dose = np.maximum(dose_ref_h, 0.0)
    presets = list({id(px.preset): px.preset for px in pixels}.values())
    if len(presets) == 1:
        st = aging_state(presets[0], dose, presets[0].aging.j_ref_a_m2, with_voltage=False)
        lum, dv, code = st.luminance_ratio, st.delta_voltage_v, st.failure
    else:
        index = {id(preset): i for i, preset in enumerate(presets)}
        of_sample = np.array([index[id(px.preset)] for px in pixels])[owner]
        lum, dv = np.empty(dose.shape), np.empty(dose.shape)
        code = np.empty(dose.shape, dtype=int)
        for i, preset in enumerate(presets):
            sel = of_sample == i
            st = aging_state(preset, dose[sel], preset.aging.j_ref_a_m2, with_voltage=False)
            lum[sel], dv[sel], code[sel] = st.luminance_ratio, st.delta_voltage_v, st.failure
    forced = np.array([int(px.forced) for px in pixels])[owner]
    code = np.where(forced != FailureMode.NONE, forced, code)
    ratio = np.where(code == FailureMode.NONE, lum, 0.0)
    return ratio, dv, code


# ---------------------------------------------------------------------------------------------
# SMU
# ---------------------------------------------------------------------------------------------


@dataclass
class SmuState:
    mode: SmuMode = SmuMode.SOURCE_V
    range_index: int = AUTO_RANGE
    compliance: float = 1e-3
    integration_ms: float = 20.0
    output_on: bool = False
    level: float = 0.0


@dataclass(frozen=True)
class SmuReadout:
    """The true (noise-free) state of the SMU and its pixel, before the measurement chain."""

    voltage_v: float
    current_a: float
    compliance: bool
    op: OperatingPoint | None
    deg: Degradation | None


def smu_solve(state: SmuState, cfg: HardwareConfig, pixel: Pixel | None) -> SmuReadout:
    """Operating point of the SMU output: source V with I-compliance or source I with V-compliance."""
    if not state.output_on:
        return SmuReadout(0.0, 0.0, False, None, None)
    if pixel is None:  # nothing connected: open circuit
        if state.mode == SmuMode.SOURCE_V:
            return SmuReadout(state.level, 0.0, False, None, None)
        v = math.copysign(state.compliance, state.level) if state.level else 0.0
        return SmuReadout(v, 0.0, state.level != 0.0, None, None)
    deg = pixel.degradation()
    if state.mode == SmuMode.SOURCE_V:
        v = state.level
        i = float(pixel.current_at(v, deg))
        hit = abs(i) > state.compliance
        if hit:
            i = math.copysign(state.compliance, i)
            v = float(pixel.voltage_at(i, deg))
    else:
        i = state.level
        v_need = float(pixel.voltage_at(i, deg))
        hit = not math.isfinite(v_need) or abs(v_need) > state.compliance
        if hit:
            v = math.copysign(state.compliance, i if i else 1.0)
            i = float(pixel.current_at(v, deg))
        else:
            v = v_need
    op = pixel.operate_v(v, deg)
    return SmuReadout(v, i, hit, op, deg)


def pick_range(ranges: tuple[float, ...], value: float, index: int) -> tuple[float, bool]:
    """(range used, overrange) for a reading of ``value`` with ``index`` (AUTO_RANGE: smallest fit)."""
    if index == AUTO_RANGE:
        for r in ranges:
            if abs(value) <= r * 1.05:
                return r, False
        return ranges[-1], abs(value) > ranges[-1] * 1.05
    r = ranges[index]
    return r, abs(value) > r * 1.05


def smu_noise(value: FloatArray | float, rng_range: float, z: FloatArray | float,
              cfg: HardwareConfig) -> FloatArray:
    v = np.asarray(value, dtype=float)
    sigma = cfg.smu_noise_rel * np.abs(v) + cfg.smu_noise_range * rng_range
    return np.asarray(v + sigma * np.asarray(z, dtype=float), dtype=float)


# ---------------------------------------------------------------------------------------------
# Photodiodes
# ---------------------------------------------------------------------------------------------


class Photodiodes:
    """The photodiode and transimpedance amplifier over every pixel."""

    def __init__(self, cfg: HardwareConfig, n_pixels: int, rng: np.random.Generator,
                 saturate_pixels: frozenset[int] = frozenset(), stray_a: float = 200e-6) -> None:
        self.cfg = cfg
        self.gains = np.asarray(cfg.pd_gains_v_per_a, dtype=float)
        self.dark_25c_a = rng.uniform(cfg.pd_dark_min_a, cfg.pd_dark_max_a, n_pixels + 1)
        self.dark_25c_a[0] = 0.0
        self.stray_a = np.zeros(n_pixels + 1)
        for p in saturate_pixels:
            self.stray_a[p] = stray_a
        self.gain_index = np.full(n_pixels + 1, cfg.pd_default_gain, dtype=int)
        self.autorange = np.ones(n_pixels + 1, dtype=bool)

    def reset(self) -> None:
        self.gain_index[:] = self.cfg.pd_default_gain
        self.autorange[:] = True

    def background_a(self, pixel: int, temperature_c: float) -> float:
        """Dark current (temperature dependent) plus any forced stray current."""
        dark = self.dark_25c_a[pixel] * 2.0 ** ((temperature_c - 25.0) / self.cfg.pd_dark_doubling_c)
        return float(dark + self.stray_a[pixel])

    def _best_gain(self, i_abs: FloatArray) -> NDArray[np.int_]:
        fs = 0.8 * self.cfg.pd_full_scale_v
        fits = i_abs[:, None] * self.gains[None, :] < fs
        # highest index that fits; 0 when none does
        idx = np.where(fits.any(axis=1), len(self.gains) - 1 - np.argmax(fits[:, ::-1], axis=1), 0)
        return idx.astype(int)

    def _read_at(self, i_true: FloatArray, gain_idx: NDArray[np.int_], z: FloatArray,
                 integration_ms: float) -> tuple[FloatArray, NDArray[np.bool_]]:
        cfg = self.cfg
        g = self.gains[gain_idx]
        t_s = max(integration_ms, 0.01) * 1e-3
        v_amp = cfg.pd_amp_noise_v * math.sqrt(1e-3 / t_s)
        sigma_i = np.sqrt((v_amp / g) ** 2 + Q_E_C * np.abs(i_true) / t_s + (cfg.pd_noise_rel * i_true) ** 2)
        v = (i_true + sigma_i * z) * g
        fs = cfg.pd_full_scale_v
        sat = np.abs(v) >= fs
        lsb = fs / float(2 ** cfg.pd_adc_bits)
        v = np.clip(v, -fs, fs)
        i_meas = np.round(v / lsb) * lsb / g
        return i_meas, sat

    def read(self, i_true: FloatArray, gain: int, autorange: bool, z: FloatArray,
             integration_ms: float) -> tuple[FloatArray, NDArray[np.uint8], NDArray[np.uint8], int]:
        """Read a block of photocurrents in time order. Returns (amps, gain per sample, flags, last gain).

        ``z`` holds one standard normal per sample (the amplifier noise of that reading).
        """
        n = len(i_true)
        out = np.empty(n)
        gains = np.empty(n, dtype=np.uint8)
        flags = np.zeros(n, dtype=np.uint8)
        pos = 0
        g = int(gain)
        while pos < n:
            sl = slice(pos, n)
            gi = np.full(n - pos, g, dtype=int)
            vals, sat = self._read_at(i_true[sl], gi, z[sl], integration_ms)
            if not autorange:
                out[sl], gains[sl] = vals, g
                flags[sl] = np.where(sat, np.uint8(SampleFlags.PD_SATURATED), np.uint8(0))
                break
            wrong, best = self._misranged(i_true[sl], vals, sat, g)
            # saturated at the lowest gain: nothing to do but flag it
            stuck = sat & ~wrong
            hits = np.flatnonzero(wrong)
            end = n - pos if hits.size == 0 else int(hits[0])
            out[pos : pos + end] = vals[:end]
            gains[pos : pos + end] = g
            flags[pos : pos + end] = np.where(stuck[:end], np.uint8(SampleFlags.PD_SATURATED), np.uint8(0))
            if hits.size == 0:
                break
            k = pos + end
            g = int(best[end])
            v1, s1 = self._read_at(i_true[k : k + 1], np.array([g]), z[k : k + 1], integration_ms)
            out[k] = v1[0]
            gains[k] = g
            flags[k] = int(SampleFlags.AUTORANGED) | (int(SampleFlags.PD_SATURATED) if s1[0] else 0)
            pos = k + 1
        return out, gains, flags, g

    def _misranged(self, i_true: FloatArray, vals: FloatArray, sat: NDArray[np.bool_],
                   g: NDArray[np.int_] | int) -> tuple[NDArray[np.bool_], NDArray[np.int_]]:
        """(readings at gain ``g`` that autorange must repeat, the gain it would pick for each)."""
        fs = self.cfg.pd_full_scale_v
        low = (np.abs(vals) * self.gains[g] < 0.05 * fs) & (g < len(self.gains) - 1)
        wrong = (sat & (g > 0)) | low
        best = self._best_gain(np.abs(i_true))
        return wrong & (best != g), best

    def read_blocks(self, i_true: FloatArray, counts: NDArray[np.intp], gain: NDArray[np.int_],
                    z: FloatArray, integration_ms: float
                    ) -> tuple[FloatArray, NDArray[np.uint8], NDArray[np.uint8], NDArray[np.int_]]:
        """:meth:`read` with autorange of consecutive blocks at once (block j: the next ``counts[j]``
        samples, starting at gain ``gain[j]``). Returns (amps, gain per sample, flags, last gain
        per block).

        Every sample is first read at its block's gain, all together; a block where autorange
        must step is read again by :meth:`read`, which follows the gain sample by sample.
        """
        g = np.repeat(gain, counts)
        vals, sat = self._read_at(i_true, g, z, integration_ms)
        wrong, _ = self._misranged(i_true, vals, sat, g)
        gains = g.astype(np.uint8)
        flags = np.where(sat & ~wrong, np.uint8(SampleFlags.PD_SATURATED), np.uint8(0))
        last = np.array(gain, dtype=int)
        if wrong.any():
            ends = np.cumsum(counts)
            for j in np.unique(np.searchsorted(ends, np.flatnonzero(wrong), side="right")):
                sl = slice(int(ends[j] - counts[j]), int(ends[j]))
                vals[sl], gains[sl], flags[sl], last[j] = self.read(i_true[sl], int(gain[j]), True,
                                                                    z[sl], integration_ms)
        return vals, gains, flags, last

    def read_stats(self, i_true: float, n: int, gain: int, autorange: bool, z: FloatArray,
                   integration_ms: float) -> tuple[float, float, int, int]:
        """pd_read: (mean, std, final gain, flags) of ``n`` readings of a steady current."""
        vals, gains, flags, g = self.read(np.full(n, i_true), gain, autorange, z, integration_ms)
        f = int(np.bitwise_or.reduce(flags)) if n else 0
        # the statistic is over the readings at the final gain (an autorange re-read replaces)
        last = vals[gains == g] if np.any(gains == g) else vals
        std = float(np.std(last, ddof=1)) if len(last) > 1 else 0.0
        return float(np.mean(last)), std, g, f


# ---------------------------------------------------------------------------------------------
# Spectrometer
# ---------------------------------------------------------------------------------------------


class Spectrometer:
    """A grating spectrometer reporting photon counts per pixel (see the module docstring)."""

    def __init__(self, cfg: HardwareConfig) -> None:
        self.cfg = cfg
        p = np.arange(cfg.spectrometer_pixels, dtype=float)
        coeffs = np.asarray(cfg.wavelength_cal, dtype=float)
        self.wavelength_nm = np.polynomial.polynomial.polyval(p, coeffs)
        deriv = np.polynomial.polynomial.polyder(coeffs)
        self.dlambda_nm = np.abs(np.polynomial.polynomial.polyval(p, deriv))

    def dark_mean(self, integration_ms: float) -> float:
        c = self.cfg
        return c.spectrometer_dark_offset + c.spectrometer_dark_rate_per_s * integration_ms * 1e-3

    def acquire(self, pixel: Pixel | None, op: OperatingPoint | None, deg: Degradation | None,
                integration_ms: float, rng: np.random.Generator) -> tuple[NDArray[np.uint16], float, int]:
        """(counts, mean dark counts, flags) of one spectrum of ``pixel`` at ``op`` (None: dark)."""
        c = self.cfg
        t_s = integration_ms * 1e-3
        mean = np.zeros(c.spectrometer_pixels)
        if pixel is not None and op is not None and deg is not None:
            flux = float(np.asarray(op.photon_flux_per_s).reshape(-1)[0])
            if flux > 0:
                v_s = float(np.asarray(pixel.spectrum_voltage(op, deg)).reshape(-1)[0])
                fine = np.arange(300.0, 1001.0, 0.5)
                s_fine = spectrum_w_per_nm(pixel.preset, fine, v_s) * fine
                norm = float(np.trapezoid(s_fine, fine))
                s_pix = spectrum_w_per_nm(pixel.preset, self.wavelength_nm, v_s) * self.wavelength_nm
                if norm > 0:
                    mean = c.spectrometer_coupling * flux * s_pix / norm * self.dlambda_nm * t_s
        signal = rng.poisson(np.maximum(mean, 0.0)).astype(float)
        dark = self.dark_mean(integration_ms)
        dark_counts = rng.poisson(max(dark, 0.0), c.spectrometer_pixels).astype(float)
        total = signal + dark_counts + rng.normal(0.0, c.spectrometer_read_noise, c.spectrometer_pixels)
        total = np.clip(np.round(total), 0, c.spectrometer_max_counts)
        flags = 1 if np.any(total >= c.spectrometer_max_counts) else 0
        return total.astype(np.uint16), dark, flags


# ---------------------------------------------------------------------------------------------
# Temperatures
# ---------------------------------------------------------------------------------------------


class Thermal:
    """Substrate temperatures: ambient + thermal resistance × electrical power dissipated."""

    def __init__(self, cfg: HardwareConfig, layout: Layout) -> None:
        self.cfg = cfg
        self.n_substrates = layout.n_substrates

    def substrate_c(self, power_w_by_substrate: FloatArray) -> FloatArray:
        return np.asarray(self.cfg.ambient_c + self.cfg.substrate_k_per_w * power_w_by_substrate,
                          dtype=float)

    def readings(self, power_w_by_substrate: FloatArray, rng: np.random.Generator) -> list[float]:
        t = np.append(self.substrate_c(power_w_by_substrate), self.cfg.board_sensor_c)
        t = t + self.cfg.temperature_noise_c * rng.standard_normal(len(t))
        return [round(float(x), 3) for x in t]


# ---------------------------------------------------------------------------------------------
# Ring buffers
# ---------------------------------------------------------------------------------------------


class _SeqRing:
    """Sequence bookkeeping shared by the ring buffers: 64-bit seqs inside, u32 on the wire."""

    def __init__(self, depth: int, first_seq: int = 0) -> None:
        if depth < 1:
            raise ValueError("ring depth must be >= 1")
        self.depth = int(depth)
        self.base = int(first_seq)  # first seq ever produced
        self.head = int(first_seq)  # next seq to use
        self.acked = int(first_seq) - 1  # highest seq the host has acknowledged
        self.lost_to = int(first_seq) - 1  # highest un-acked seq overwritten
        self.overflow = False
        self.overwritten_unacked = 0

    @property
    def oldest(self) -> int:
        """Oldest seq still held (== head when empty)."""
        return max(self.base, self.head - self.depth)

    def unwrap(self, seq32: int) -> int:
        """A wire seq as the 64-bit seq nearest the head (in (head − 2^31, head + 2^31])."""
        ref = self.head
        delta = (int(seq32) - ref) % (1 << 32)
        if delta > (1 << 31):
            delta -= 1 << 32
        return ref + delta

    def _advance(self, n: int) -> None:
        new_head = self.head + n
        new_oldest = max(self.base, new_head - self.depth)
        lo = max(self.oldest, self.acked + 1)
        if new_oldest > lo:  # records lo .. new_oldest-1 overwritten before being acknowledged
            self.overwritten_unacked += new_oldest - lo
            self.lost_to = new_oldest - 1
            self.overflow = True
        self.head = new_head

    def ack(self, seq32: int) -> None:
        s = min(self.unwrap(seq32), self.head - 1)
        if s > self.acked:
            self.acked = s
        if self.overflow and self.acked >= self.lost_to:
            self.overflow = False

    def replay_range(self, from32: int, to32: int) -> tuple[int, int]:
        """(first, last) 64-bit seqs to resend, inclusive (first > last when none)."""
        first = self.unwrap(from32)
        last = self.head - 1 if to32 == SEQ_MASK else min(self.unwrap(to32), self.head - 1)
        first = max(first, self.oldest)
        return first, last


class RecordRing(_SeqRing):
    """Ring of numpy structured records (AGING, SWEEP streams)."""

    def __init__(self, dtype: np.dtype, depth: int, first_seq: int = 0) -> None:
        super().__init__(depth, first_seq)
        self.dtype = dtype
        self._buf = np.zeros(self.depth, dtype=dtype)

    def push(self, records: NDArray[np.void]) -> NDArray[np.void]:
        """Assign seqs to ``records`` (in place) and store them; returns the records."""
        n = len(records)
        if n == 0:
            return records
        seqs = np.arange(self.head, self.head + n, dtype=np.int64)
        records["seq"] = (seqs & SEQ_MASK).astype(np.uint32)
        self._advance(n)
        keep = records[-self.depth :] if n > self.depth else records
        kseq = seqs[-len(keep) :]
        self._buf[kseq % self.depth] = keep
        return records

    def get(self, first: int, last: int) -> NDArray[np.void]:
        first = max(first, self.oldest)
        last = min(last, self.head - 1)
        if last < first:
            return np.zeros(0, dtype=self.dtype)
        idx = np.arange(first, last + 1, dtype=np.int64) % self.depth
        return self._buf[idx]

    def __len__(self) -> int:
        return self.head - self.oldest


T = TypeVar("T")


class MessageRing(_SeqRing, Generic[T]):
    """Ring of whole messages (SPECTRUM stream)."""

    def __init__(self, depth: int, first_seq: int = 0) -> None:
        super().__init__(depth, first_seq)
        self._items: deque[tuple[int, T]] = deque(maxlen=self.depth)

    def next_seq32(self) -> int:
        return self.head & SEQ_MASK

    def push(self, item: T) -> int:
        seq = self.head
        self._advance(1)
        self._items.append((seq, item))
        return seq

    def get(self, first: int, last: int) -> list[T]:
        return [it for s, it in self._items if first <= s <= last]

    def __len__(self) -> int:
        return len(self._items)
