"""Device physics of one thin-film LED pixel (perovskite LED, OLED, QLED) for the simulator.

Pure numpy/scipy: no I/O, no asyncio, no clock. Every public function is vectorised (numpy arrays
in, numpy arrays out, broadcasting like numpy). SI inside; units are in the names.

The model, piece by piece
-------------------------
Electrical (per unit area, so current scales with pixel area A)::

    I = I0·(exp((V − I·Rs)/(n·Vt)) − 1) + (V − I·Rs)/Rsh

the Shockley diode (W. Shockley, Bell Syst. Tech. J. 28, 435 (1949)) with ideality factor n,
series and shunt resistance, with I0 = J0·A, Rs = rs_ohm_m2/A, Rsh = rsh_ohm_m2/A and
Vt = k_B·T/q. It is solved exactly with the Lambert W function (A. Jain & A. Kapoor, Sol. Energy
Mater. Sol. Cells 81, 269 (2004); T. C. Banwell & A. Jayakumar, Electron. Lett. 36, 291 (2000)),
both ways: current at a voltage and voltage at a current. J0 may carry an Arrhenius temperature
dependence J0(T) = J0(T_ref)·exp(−E_a/(n·k_B)·(1/T − 1/T_ref)).

Light. Only the diode (recombination) current I_d = I0·(exp(V_j/(n·Vt)) − 1) makes light; the
shunt current is leakage. Photons leaving through the front per second::

    Φ = η(J_d, T)·I_d/q,   η = η0 · 1/(1 + (J_t/J_d)^p) · 1/(1 + (J_d/J_r)^m) · exp(−(T − T_ref)/T_q)

a trap-filling onset at low current density, an Auger/field-quenching roll-off at high current
density and thermal quenching by Joule heating, T = T_amb + R_th·J·V. The external quantum
efficiency, counted as forward photons per injected electron (the Lambertian convention of
S. R. Forrest, D. D. C. Bradley & M. E. Thompson, Adv. Mater. 15, 1043 (2003)), is EQE = Φ·q/I.
The optical power follows from the normalised spectrum S(λ) (∫S dλ = 1, power units):
P = Φ / ∫S·λ/(hc) dλ, and the luminance of a Lambertian emitter of area A is
L = K_m·P·∫S·V dλ / (π·A) (CIE 015:2018 for V(λ) and K_m). Because the roll-off and the heating
both grow faster than the current, L(V) has a true maximum: beyond it L falls, so L_max does not
depend on where a sweep stops.

Spectrum. A split Gaussian (different widths on the blue and red sides) plus a weaker,
red-shifted Gaussian component (the red tail that the seed's CIE points require), both
red-shifting and broadening slowly with voltage (seed Fig. S14).

Aging at constant current. L/L0 = B(t)·exp(−(t/τ)^β) with a positive-aging (brightening) factor
B(t) = 1 + b·(1 − exp(−t/τ_b)) and a stretched-exponential decay; τ and τ_b scale with current
density as (J_ref/J)^n. The voltage rises by ΔV_max·(1 − exp(−(t/τ)^β)) (a barrier growing with
the degraded fraction, modelled as a series voltage step that dissipates no heat, so L/L0 at
constant current is exactly the law above). An optional sudden failure (short or open) occurs at
t_fail·(J_ref/J)^n.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import lambertw

from sim.optics import (
    C_LIGHT_M_S,
    CIE_WAVELENGTH_NM,
    H_PLANCK_J_S,
    K_M_LM_PER_W,
    Q_E_C,
    photopic_v,
)

__all__ = [
    "A_M2_PER_MA_CM2",
    "A_M2_PER_MM2",
    "K_B_J_K",
    "T_REF_K",
    "AgingParams",
    "AgingState",
    "Degradation",
    "DevicePreset",
    "DiodeParams",
    "EfficiencyParams",
    "FailureMode",
    "FailureParams",
    "OperatingPoint",
    "SpectrumParams",
    "aging_state",
    "current_a",
    "current_density_a_m2",
    "eqe",
    "failure_time_h",
    "lambertw_exp",
    "lifetime_tau_h",
    "luminance_cd_m2",
    "luminance_ratio",
    "operating_point",
    "operating_point_at_current",
    "optical_power_w",
    "photon_flux_per_s",
    "spectral_integrals",
    "spectrum_fwhm_nm",
    "spectrum_peak_nm",
    "spectrum_w_per_nm",
    "thermal_voltage_v",
    "voltage_for_current",
]

FloatArray = NDArray[np.float64]

K_B_J_K = 1.380649e-23
T_REF_K = 298.15
A_M2_PER_MA_CM2 = 10.0  # 1 mA/cm² = 10 A/m²
A_M2_PER_MM2 = 1e-6  # area: 1 mm² = 1e-6 m²

# W(exp(x)) switches from scipy's lambertw to a Newton iteration in log space above this x.
_LAMBERTW_LOG_SWITCH = 500.0
# Voltages are evaluated in chunks so spectra (chunk x wavelengths) stay small in memory.
_CHUNK = 2048


class FailureMode(enum.IntEnum):
    """Catastrophic failure state of a pixel."""

    NONE = 0
    SHORT = 1  # a pinhole short: the pixel becomes a small resistor and goes dark
    OPEN = 2  # a delaminated / burnt contact: no current, no light


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiodeParams:
    """Shockley diode with series and shunt resistance, all per unit area.

    ``j0_a_m2`` is the saturation current density at T_REF_K; ``j0_activation_ev`` (0: none) its
    Arrhenius activation energy, J0(T) = J0·exp(−E_a/(n·k_B)·(1/T − 1/T_ref)).
    """

    ideality: float
    j0_a_m2: float
    rs_ohm_m2: float
    rsh_ohm_m2: float
    j0_activation_ev: float = 0.0

    def __post_init__(self) -> None:
        if not (self.ideality > 0 and self.j0_a_m2 > 0 and self.rs_ohm_m2 > 0 and self.rsh_ohm_m2 > 0):
            raise ValueError(f"diode parameters must be positive: {self}")


@dataclass(frozen=True)
class EfficiencyParams:
    """Internal photon yield η(J_d, T) of the diode current (see the module docstring).

    ``eta0`` scales η (forward photons per electron); ``j_trap_a_m2``/``trap_exponent`` the
    low-current onset; ``j_rolloff_a_m2``/``rolloff_exponent`` the high-current roll-off;
    ``thermal_resistance_k_m2_w`` the temperature rise per W/m² dissipated and
    ``quench_temperature_k`` the e-folding temperature of thermal quenching.
    """

    eta0: float
    j_trap_a_m2: float
    trap_exponent: float
    j_rolloff_a_m2: float
    rolloff_exponent: float
    thermal_resistance_k_m2_w: float
    quench_temperature_k: float

    def __post_init__(self) -> None:
        if not (0 < self.eta0 <= 1):
            raise ValueError("eta0 must be in (0, 1]")
        if min(self.j_trap_a_m2, self.trap_exponent, self.j_rolloff_a_m2, self.rolloff_exponent) <= 0:
            raise ValueError("efficiency current densities and exponents must be positive")
        if self.thermal_resistance_k_m2_w < 0 or self.quench_temperature_k <= 0:
            raise ValueError("thermal parameters out of range")


@dataclass(frozen=True)
class SpectrumParams:
    """EL line shape: split Gaussian (centre, blue/red widths) + a red-shifted Gaussian tail.

    At ``ref_voltage_v`` the main component is centred at ``centre_nm``; it moves by
    ``shift_nm_per_v`` and all widths scale by (1 + ``broadening_per_v``·ΔV) with the voltage,
    which is clipped to [``min_voltage_v``, ``max_voltage_v``]. ``tail_fraction`` of the power
    is in the tail, centred ``tail_offset_nm`` to the red of the main component.
    """

    centre_nm: float
    sigma_blue_nm: float
    sigma_red_nm: float
    tail_fraction: float
    tail_offset_nm: float
    tail_sigma_nm: float
    ref_voltage_v: float
    shift_nm_per_v: float = 0.0
    broadening_per_v: float = 0.0
    min_voltage_v: float = 2.0
    max_voltage_v: float = 10.0

    def __post_init__(self) -> None:
        if min(self.sigma_blue_nm, self.sigma_red_nm, self.tail_sigma_nm) <= 0:
            raise ValueError("spectral widths must be positive")
        if not (0 <= self.tail_fraction < 1):
            raise ValueError("tail_fraction must be in [0, 1)")
        lo = 1 + self.broadening_per_v * (self.min_voltage_v - self.ref_voltage_v)
        hi = 1 + self.broadening_per_v * (self.max_voltage_v - self.ref_voltage_v)
        if min(lo, hi) <= 0:
            raise ValueError("broadening_per_v makes a width negative inside the voltage range")


@dataclass(frozen=True)
class AgingParams:
    """Constant-current aging law (see the module docstring).

    ``tau_ref_h`` and ``brightening_tau_ref_h`` hold at ``j_ref_a_m2``; both scale as
    (J_ref/J)^``acceleration_n``. ``brightening`` is the positive-aging amplitude b (0: none).
    ``delta_voltage_max_v`` is the voltage rise of a fully degraded device.
    """

    tau_ref_h: float
    beta: float
    j_ref_a_m2: float
    acceleration_n: float
    brightening: float = 0.0
    brightening_tau_ref_h: float = 1.0
    delta_voltage_max_v: float = 0.0

    def __post_init__(self) -> None:
        if min(self.tau_ref_h, self.beta, self.j_ref_a_m2, self.brightening_tau_ref_h) <= 0:
            raise ValueError("aging time constants, beta and j_ref must be positive")
        if self.brightening < 0 or self.delta_voltage_max_v < 0 or self.acceleration_n < 0:
            raise ValueError("brightening, delta_voltage_max_v and acceleration_n must be >= 0")


@dataclass(frozen=True)
class FailureParams:
    """Optional sudden failure at ``time_ref_h`` (at J_ref; scales like τ with current density)."""

    mode: FailureMode = FailureMode.NONE
    time_ref_h: float = math.inf
    short_resistance_ohm: float = 20.0

    def __post_init__(self) -> None:
        if self.time_ref_h <= 0 or self.short_resistance_ohm <= 0:
            raise ValueError("failure time and short resistance must be positive")


@dataclass(frozen=True)
class DevicePreset:
    """Everything the simulator knows about one kind of device."""

    name: str
    description: str
    diode: DiodeParams
    efficiency: EfficiencyParams
    spectrum: SpectrumParams
    aging: AgingParams
    failure: FailureParams = field(default_factory=FailureParams)
    area_m2: float = 4.0 * A_M2_PER_MM2
    sweep_max_voltage_v: float = 10.0

    def __post_init__(self) -> None:
        if self.area_m2 <= 0:
            raise ValueError("area_m2 must be positive")


@dataclass(frozen=True, eq=False)
class Degradation:
    """State of an aged pixel, applied on top of the fresh device (arrays broadcast with V or I).

    ``efficiency_factor`` multiplies η, ``voltage_offset_v`` is added in series (terminal
    V = fresh V + offset at the same current), ``failure`` holds FailureMode codes.
    """

    efficiency_factor: ArrayLike = 1.0
    voltage_offset_v: ArrayLike = 0.0
    failure: ArrayLike = int(FailureMode.NONE)


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """Everything at one (array of) operating point(s); all arrays share one shape."""

    voltage_v: FloatArray
    current_a: FloatArray
    junction_voltage_v: FloatArray
    diode_current_a: FloatArray
    temperature_k: FloatArray
    eqe: FloatArray  # forward photons per injected electron (fraction, not %)
    photon_flux_per_s: FloatArray  # forward photons per second
    optical_power_w: FloatArray  # forward optical power
    luminance_cd_m2: FloatArray
    spectrum_voltage_v: FloatArray  # evaluate spectrum_w_per_nm at this voltage (V − aging offset)


@dataclass(frozen=True, eq=False)
class AgingState:
    """Aging at constant current, arrays over time (see :func:`aging_state`)."""

    time_h: FloatArray
    luminance_ratio: FloatArray  # L(t)/L(0) at constant current (0 after a failure)
    brightening: FloatArray  # B(t) (1 with positive aging off)
    degraded_fraction: FloatArray  # 1 − exp(−(t/τ)^β)
    delta_voltage_v: FloatArray  # voltage rise from aging (not counting a failure)
    voltage_v: FloatArray  # terminal voltage at the constant current (inf if open)
    failure: NDArray[np.int_]  # FailureMode codes

    @property
    def degradation(self) -> Degradation:
        """The aged device's state, for :func:`current_a`, :func:`operating_point` and friends."""
        return Degradation(self.luminance_ratio, self.delta_voltage_v, self.failure)


# ---------------------------------------------------------------------------------------------
# Electrical
# ---------------------------------------------------------------------------------------------


def thermal_voltage_v(temperature_k: ArrayLike = T_REF_K) -> FloatArray:
    """Thermal voltage k_B·T/q (V)."""
    return np.asarray(temperature_k, dtype=float) * (K_B_J_K / Q_E_C)


def current_density_a_m2(current_a: ArrayLike, area_m2: float) -> FloatArray:
    """Current density (A/m²) of a current through a pixel of area ``area_m2``."""
    return np.asarray(current_a, dtype=float) / area_m2


def lambertw_exp(x: ArrayLike) -> FloatArray:
    """W(exp(x)), the principal branch of Lambert W of exp(x), for any real x (no overflow).

    Uses scipy.special.lambertw for moderate x and Newton's method on w + ln w = x beyond.
    """
    xa = np.asarray(x, dtype=float)
    out = np.empty_like(xa)
    small = xa < _LAMBERTW_LOG_SWITCH
    if np.any(small):
        out[small] = lambertw(np.exp(xa[small])).real
    if not np.all(small):
        xl = xa[~small]
        w = xl - np.log(xl)
        for _ in range(6):
            w = w - (w + np.log(w) - xl) * w / (w + 1.0)
        out[~small] = w
    return out


def _diode_terms(
    d: DiodeParams, area_m2: float, temperature_k: ArrayLike
) -> tuple[FloatArray, FloatArray, float, float]:
    """(n·Vt, I0, Rs, Rsh) of a pixel of ``area_m2`` at ``temperature_k``."""
    if area_m2 <= 0:
        raise ValueError("area_m2 must be positive")
    t = np.asarray(temperature_k, dtype=float)
    if np.any(t <= 0):
        raise ValueError("temperature_k must be positive")
    a = d.ideality * thermal_voltage_v(t)
    arrhenius = (d.j0_activation_ev * Q_E_C) / (d.ideality * K_B_J_K) * (1.0 / t - 1.0 / T_REF_K)
    i0 = d.j0_a_m2 * area_m2 * np.exp(-arrhenius)
    return a, i0, d.rs_ohm_m2 / area_m2, d.rsh_ohm_m2 / area_m2


def _fresh_current(
    d: DiodeParams, junction_side_v: FloatArray, area_m2: float, temperature_k: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Exact (I, V_j) of the fresh diode at the voltage across diode + Rs (Lambert W form)."""
    a, i0, rs, rsh = _diode_terms(d, area_m2, temperature_k)
    x = np.log(i0 * rs * rsh / (a * (rs + rsh))) + rsh * (junction_side_v + i0 * rs) / (a * (rs + rsh))
    w = lambertw_exp(x)
    current = (junction_side_v - i0 * rsh) / (rs + rsh) + a * w / rs
    return current, junction_side_v - current * rs


def _fresh_voltage(
    d: DiodeParams, current: FloatArray, area_m2: float, temperature_k: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Exact (V, V_j) of the fresh diode carrying ``current`` (Lambert W form)."""
    a, i0, rs, rsh = _diode_terms(d, area_m2, temperature_k)
    x = np.log(i0 * rsh / a) + (current + i0) * rsh / a
    w = lambertw_exp(x)
    vj = (current + i0) * rsh - a * w
    return current * rs + vj, vj


def _degradation_arrays(
    shape: tuple[int, ...], degradation: Degradation | None
) -> tuple[FloatArray, FloatArray, NDArray[np.int_]]:
    if degradation is None:
        return np.ones(shape), np.zeros(shape), np.zeros(shape, dtype=int)
    eff = np.broadcast_to(np.asarray(degradation.efficiency_factor, dtype=float), shape)
    off = np.broadcast_to(np.asarray(degradation.voltage_offset_v, dtype=float), shape)
    fail = np.broadcast_to(np.asarray(degradation.failure, dtype=int), shape)
    return eff, off, fail


def _broadcast_shape(value: FloatArray, degradation: Degradation | None) -> tuple[int, ...]:
    if degradation is None:
        return value.shape
    return np.broadcast_shapes(
        value.shape,
        np.shape(degradation.efficiency_factor),
        np.shape(degradation.voltage_offset_v),
        np.shape(degradation.failure),
    )


def current_a(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """Current (A) through the pixel at terminal voltage ``voltage_v`` — exact Lambert W solution.

    ``area_m2`` defaults to the preset's pixel area; ``temperature_k`` is the ambient (substrate)
    temperature used in the thermal voltage and J0(T).
    """
    v = np.asarray(voltage_v, dtype=float)
    area = preset.area_m2 if area_m2 is None else area_m2
    shape = _broadcast_shape(v, degradation)
    _, off, fail = _degradation_arrays(shape, degradation)
    v = np.broadcast_to(v, shape)
    fresh, _ = _fresh_current(preset.diode, v - off, area, temperature_k)
    short = v / preset.failure.short_resistance_ohm
    out = np.where(fail == FailureMode.SHORT, short, np.where(fail == FailureMode.OPEN, 0.0, fresh))
    return np.asarray(out, dtype=float)


def voltage_for_current(
    preset: DevicePreset,
    current_a: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """Terminal voltage (V) at which the pixel carries ``current_a`` — exact inverse of current_a.

    A shorted pixel gives I·R_short; an open one +inf (the source's compliance decides).
    """
    i = np.asarray(current_a, dtype=float)
    area = preset.area_m2 if area_m2 is None else area_m2
    shape = _broadcast_shape(i, degradation)
    _, off, fail = _degradation_arrays(shape, degradation)
    i = np.broadcast_to(i, shape)
    fresh, _ = _fresh_voltage(preset.diode, i, area, temperature_k)
    short = i * preset.failure.short_resistance_ohm
    open_v = np.where(i == 0, 0.0, np.copysign(np.inf, i))
    out = np.where(fail == FailureMode.SHORT, short, np.where(fail == FailureMode.OPEN, open_v, fresh + off))
    return np.asarray(out, dtype=float)


# ---------------------------------------------------------------------------------------------
# Spectrum
# ---------------------------------------------------------------------------------------------


def _spectrum_params(p: DevicePreset | SpectrumParams) -> SpectrumParams:
    return p.spectrum if isinstance(p, DevicePreset) else p


def spectrum_w_per_nm(
    preset: DevicePreset | SpectrumParams, wavelength_nm: ArrayLike, voltage_v: ArrayLike
) -> FloatArray:
    """Relative spectral power (1/nm, ∫S dλ = 1 analytically) on any wavelength grid.

    Output shape: ``np.shape(voltage_v) + np.shape(wavelength_nm)``. The normalisation is exact
    over the whole real line, so a grid covering the line (±5 widths) integrates to 1.
    """
    s = _spectrum_params(preset)
    wl = np.asarray(wavelength_nm, dtype=float)
    v = np.clip(np.asarray(voltage_v, dtype=float), s.min_voltage_v, s.max_voltage_v)
    dv = v - s.ref_voltage_v
    expand = (...,) + (None,) * wl.ndim
    scale = (1.0 + s.broadening_per_v * dv)[expand]
    centre = (s.centre_nm + s.shift_nm_per_v * dv)[expand]
    sb = s.sigma_blue_nm * scale
    sr = s.sigma_red_nm * scale
    st = s.tail_sigma_nm * scale
    delta = wl - centre
    sigma = np.where(delta < 0, sb, sr)
    main = np.exp(-0.5 * (delta / sigma) ** 2) * (2.0 / (math.sqrt(2.0 * math.pi) * (sb + sr)))
    tail = np.exp(-0.5 * ((delta - s.tail_offset_nm) / st) ** 2) / (math.sqrt(2.0 * math.pi) * st)
    return np.asarray((1.0 - s.tail_fraction) * main + s.tail_fraction * tail, dtype=float)


def _fine_line(s: SpectrumParams, voltage_v: float, step_nm: float = 0.005) -> tuple[FloatArray, FloatArray]:
    v = float(np.clip(voltage_v, s.min_voltage_v, s.max_voltage_v))
    dv = v - s.ref_voltage_v
    scale = 1.0 + s.broadening_per_v * dv
    centre = s.centre_nm + s.shift_nm_per_v * dv
    lo = centre - 5.0 * s.sigma_blue_nm * scale
    hi = centre + max(5.0 * s.sigma_red_nm, s.tail_offset_nm + 5.0 * s.tail_sigma_nm) * scale
    wl = np.arange(lo, hi + step_nm, step_nm)
    return wl, spectrum_w_per_nm(s, wl, v)


def spectrum_peak_nm(preset: DevicePreset | SpectrumParams, voltage_v: ArrayLike) -> FloatArray:
    """Wavelength (nm) of the spectral power maximum at ``voltage_v`` (parabolic refinement)."""
    s = _spectrum_params(preset)
    v = np.asarray(voltage_v, dtype=float)
    out = np.empty(v.shape)
    for idx, vv in np.ndenumerate(v):
        wl, y = _fine_line(s, float(vv))
        k = int(np.clip(np.argmax(y), 1, len(y) - 2))
        y0, y1, y2 = y[k - 1], y[k], y[k + 1]
        denom = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
        out[idx] = wl[k] + frac * (wl[1] - wl[0])
    return out


def spectrum_fwhm_nm(preset: DevicePreset | SpectrumParams, voltage_v: ArrayLike) -> FloatArray:
    """Full width at half maximum (nm) of the spectral power at ``voltage_v``.

    The half-maximum crossings nearest the peak on either side, linearly interpolated.
    """
    s = _spectrum_params(preset)
    v = np.asarray(voltage_v, dtype=float)
    out = np.empty(v.shape)
    for idx, vv in np.ndenumerate(v):
        wl, y = _fine_line(s, float(vv))
        k = int(np.argmax(y))
        half = 0.5 * y[k]
        below_left = np.nonzero(y[:k] < half)[0]
        below_right = np.nonzero(y[k:] < half)[0]
        i = int(below_left[-1])
        j = int(below_right[0]) + k
        x_left = wl[i] + (half - y[i]) / (y[i + 1] - y[i]) * (wl[i + 1] - wl[i])
        x_right = wl[j - 1] + (half - y[j - 1]) / (y[j] - y[j - 1]) * (wl[j] - wl[j - 1])
        out[idx] = x_right - x_left
    return out


def spectral_integrals(
    preset: DevicePreset | SpectrumParams, voltage_v: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """(∫S·λ/(hc) dλ in photons/J, ∫S·V dλ) of the normalised spectrum at ``voltage_v``.

    Trapezoidal rule on the 1 nm CIE grid (360-830 nm).
    """
    s = _spectrum_params(preset)
    v = np.asarray(voltage_v, dtype=float)
    flat = v.reshape(-1)
    wl = CIE_WAVELENGTH_NM
    vlam = photopic_v(wl)
    photons_per_joule_weight = wl * 1e-9 / (H_PLANCK_J_S * C_LIGHT_M_S)
    photons = np.empty(flat.shape)
    lum = np.empty(flat.shape)
    for start in range(0, flat.size, _CHUNK):
        spec = spectrum_w_per_nm(s, wl, flat[start : start + _CHUNK])
        photons[start : start + _CHUNK] = np.trapezoid(spec * photons_per_joule_weight, wl, axis=-1)
        lum[start : start + _CHUNK] = np.trapezoid(spec * vlam, wl, axis=-1)
    return photons.reshape(v.shape), lum.reshape(v.shape)


# ---------------------------------------------------------------------------------------------
# Light
# ---------------------------------------------------------------------------------------------


def _eta(e: EfficiencyParams, j_diode_a_m2: FloatArray, temperature_k: FloatArray) -> FloatArray:
    j = np.maximum(j_diode_a_m2, 0.0)
    with np.errstate(divide="ignore", over="ignore"):
        onset = 1.0 / (1.0 + (e.j_trap_a_m2 / j) ** e.trap_exponent)
        rolloff = 1.0 / (1.0 + (j / e.j_rolloff_a_m2) ** e.rolloff_exponent)
    quench = np.exp(-(temperature_k - T_REF_K) / e.quench_temperature_k)
    return np.asarray(np.where(j > 0, e.eta0 * onset * rolloff * quench, 0.0), dtype=float)


def operating_point(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> OperatingPoint:
    """Current, temperature, EQE, forward photon flux, optical power and luminance at ``voltage_v``.

    The spectrum at the same point is ``spectrum_w_per_nm(preset, wl, op.spectrum_voltage_v)``
    (the voltage less the degradation's offset). Scalar inputs give 0-d arrays.
    """
    area = preset.area_m2 if area_m2 is None else area_m2
    v = np.asarray(voltage_v, dtype=float)
    shape = _broadcast_shape(v, degradation)
    eff, off, fail = _degradation_arrays(shape, degradation)
    v = np.broadcast_to(v, shape)
    t_amb = np.broadcast_to(np.asarray(temperature_k, dtype=float), shape)
    ok = fail == FailureMode.NONE
    v_int = np.where(ok, v - off, 0.0)  # voltage across diode + Rs (the offset dissipates nothing)
    i_fresh, vj = _fresh_current(preset.diode, v_int, area, t_amb)
    a, i0, _, _ = _diode_terms(preset.diode, area, t_amb)
    i_diode = i0 * np.expm1(np.minimum(vj / a, 700.0))
    short = fail == FailureMode.SHORT
    current = np.where(short, v / preset.failure.short_resistance_ohm, np.where(ok, i_fresh, 0.0))
    e = preset.efficiency
    temp = t_amb + e.thermal_resistance_k_m2_w * np.abs(current * v) / area
    temp_internal = t_amb + e.thermal_resistance_k_m2_w * np.abs(i_fresh * v_int) / area
    eta = _eta(e, i_diode / area, temp_internal) * eff
    photons = np.where(ok, eta * np.maximum(i_diode, 0.0) / Q_E_C, 0.0)
    photons_per_joule, v_weight = spectral_integrals(preset, v_int)
    power = photons / photons_per_joule
    lum = K_M_LM_PER_W * power * v_weight / (math.pi * area)
    with np.errstate(divide="ignore", invalid="ignore"):
        eqe_val = np.where(current > 0, photons * Q_E_C / current, 0.0)
    return OperatingPoint(
        voltage_v=np.array(v, dtype=float),
        current_a=current,
        junction_voltage_v=np.where(ok, vj, 0.0),
        diode_current_a=np.where(ok, i_diode, 0.0),
        temperature_k=np.where(ok, temp_internal, temp),
        eqe=np.asarray(eqe_val, dtype=float),
        photon_flux_per_s=np.asarray(photons, dtype=float),
        optical_power_w=np.asarray(power, dtype=float),
        luminance_cd_m2=np.asarray(lum, dtype=float),
        spectrum_voltage_v=np.asarray(v_int, dtype=float),
    )


def operating_point_at_current(
    preset: DevicePreset,
    current_a: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> OperatingPoint:
    """As :func:`operating_point`, for a forced current (constant-current drive).

    An open pixel cannot carry a current: its point is reported at V = 0, I = 0 (the source
    hits compliance; the caller decides what that looks like).
    """
    v = voltage_for_current(preset, current_a, area_m2, temperature_k, degradation)
    return operating_point(preset, np.where(np.isfinite(v), v, 0.0), area_m2, temperature_k, degradation)


def luminance_cd_m2(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """Luminance (cd/m²) of the Lambertian pixel at ``voltage_v``."""
    return operating_point(preset, voltage_v, area_m2, temperature_k, degradation).luminance_cd_m2


def photon_flux_per_s(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """Forward photon flux (photons/s) at ``voltage_v``: EQE·I/q."""
    return operating_point(preset, voltage_v, area_m2, temperature_k, degradation).photon_flux_per_s


def optical_power_w(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """Forward optical power (W) at ``voltage_v``."""
    return operating_point(preset, voltage_v, area_m2, temperature_k, degradation).optical_power_w


def eqe(
    preset: DevicePreset,
    voltage_v: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    degradation: Degradation | None = None,
) -> FloatArray:
    """External quantum efficiency (fraction, forward photons per electron) at ``voltage_v``."""
    return operating_point(preset, voltage_v, area_m2, temperature_k, degradation).eqe


# ---------------------------------------------------------------------------------------------
# Aging
# ---------------------------------------------------------------------------------------------


def _acceleration(ag: AgingParams, current_density_a_m2: ArrayLike) -> FloatArray:
    j = np.asarray(current_density_a_m2, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(j > 0, (ag.j_ref_a_m2 / np.where(j > 0, j, 1.0)) ** ag.acceleration_n, np.inf)


def lifetime_tau_h(preset: DevicePreset, current_density_a_m2: ArrayLike) -> FloatArray:
    """Stretched-exponential time constant τ = τ_ref·(J_ref/J)^n (h); inf at J <= 0."""
    return preset.aging.tau_ref_h * _acceleration(preset.aging, current_density_a_m2)


def failure_time_h(preset: DevicePreset, current_density_a_m2: ArrayLike) -> FloatArray:
    """Time (h) of the preset's sudden failure at ``current_density_a_m2`` (inf if none)."""
    if preset.failure.mode == FailureMode.NONE:
        return np.full(np.shape(current_density_a_m2), np.inf)
    return preset.failure.time_ref_h * _acceleration(preset.aging, current_density_a_m2)


def luminance_ratio(
    preset: DevicePreset,
    time_h: ArrayLike,
    current_density_a_m2: ArrayLike,
    positive_aging: bool = True,
) -> FloatArray:
    """L(t)/L(0) at constant current density: B(t)·exp(−(t/τ)^β), 0 after a sudden failure."""
    return aging_state(
        preset, time_h, current_density_a_m2, positive_aging=positive_aging, with_voltage=False
    ).luminance_ratio


def aging_state(
    preset: DevicePreset,
    time_h: ArrayLike,
    current_density_a_m2: ArrayLike,
    area_m2: float | None = None,
    temperature_k: ArrayLike = T_REF_K,
    positive_aging: bool = True,
    with_voltage: bool = True,
) -> AgingState:
    """State of a pixel aged at constant current density for ``time_h`` hours (vectorised in t).

    L/L0 = B(t)·exp(−(t/τ)^β) (exactly; L0 = the luminance at t = 0), B = 1 with
    ``positive_aging=False``; the voltage is the exact voltage for the constant current
    J·A with the aging voltage rise and any failure applied (NaN with ``with_voltage=False``,
    which skips that solve).
    """
    ag = preset.aging
    area = preset.area_m2 if area_m2 is None else area_m2
    t = np.asarray(time_h, dtype=float)
    if np.any(t < 0):
        raise ValueError("time_h must be >= 0")
    j = np.asarray(current_density_a_m2, dtype=float)
    accel = _acceleration(ag, j)
    with np.errstate(invalid="ignore"):
        stretched = np.where(np.isinf(accel), 0.0, (t / (ag.tau_ref_h * accel)) ** ag.beta)
        decay = np.exp(-stretched)
        if positive_aging and ag.brightening > 0:
            tb = ag.brightening_tau_ref_h * accel
            bright = 1.0 + ag.brightening * -np.expm1(-np.where(np.isinf(tb), 0.0, t / tb))
        else:
            bright = np.ones_like(decay)
    fail_t = failure_time_h(preset, j)
    failed = t >= fail_t
    code = np.where(failed, int(preset.failure.mode), int(FailureMode.NONE)).astype(int)
    ratio = np.where(failed, 0.0, bright * decay)
    degraded = -np.expm1(-stretched)
    dv = ag.delta_voltage_max_v * degraded
    shape = np.broadcast_shapes(t.shape, j.shape)
    deg = Degradation(ratio, dv, code)
    if with_voltage:
        volts = voltage_for_current(preset, np.broadcast_to(j * area, shape), area, temperature_k, deg)
    else:
        volts = np.full(shape, np.nan)
    return AgingState(
        time_h=np.broadcast_to(t, shape).astype(float),
        luminance_ratio=np.broadcast_to(ratio, shape).astype(float),
        brightening=np.broadcast_to(bright, shape).astype(float),
        degraded_fraction=np.broadcast_to(degraded, shape).astype(float),
        delta_voltage_v=np.broadcast_to(dv, shape).astype(float),
        voltage_v=volts,
        failure=np.broadcast_to(code, shape).astype(int),
    )
