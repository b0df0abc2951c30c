"""Device presets for the simulator.

``dbsa`` and ``otac`` reproduce Table S1 of the seed (Jin et al. 2023, Supporting Information:
DBSA- and OTAc-capped CsPbBr3 nanocrystal LEDs). Their parameters were fitted offline (scipy
least_squares on :func:`sim.truth.sweep_truth`) to V_on, L_max, CE_max, EQE_max, PE_max, the EL
peak and the CIE point, with soft preferences for a realistic curve shape (L_max near 5-5.5 V
at 100-200 mA/cm², FWHM ~24 nm, a slightly wider red side). Held fixed, not fitted: the shunt
resistance, the thermal resistance and quenching temperature, and the spectral drift with voltage
(+0.25 nm/V, +1 %/V in width). The numbers below are the result, rounded to 6 significant
digits; nothing is fitted at import. ``oled`` and ``bad`` are plausible made-up devices for
exercising the station. Lifetimes: T50 of a few hours (OTAc) to ~13 h (DBSA) at ~100 cd/m²,
~10^4 h for the OLED at ~1000 cd/m² (each preset's aging reference current density).
"""

from __future__ import annotations

from sim.physics import (
    A_M2_PER_MA_CM2,
    A_M2_PER_MM2,
    AgingParams,
    DevicePreset,
    DiodeParams,
    EfficiencyParams,
    FailureMode,
    FailureParams,
    SpectrumParams,
)

__all__ = ["DEFAULT_AREA_M2", "PRESETS", "DevicePreset", "get_preset"]

DEFAULT_AREA_M2 = 4.0 * A_M2_PER_MM2

# Perovskite parameters: fitted offline to Table S1 (see the module docstring). The effective
# J0 activation energy gives dV/dT ≈ -2 mV/K at constant current near 3 V, typical of LEDs.
DBSA = DevicePreset(
    name="dbsa",
    description="DBSA-capped CsPbBr3 nanocrystal LED of the seed (Table S1: EQE 8.95 %, 4452 cd/m2, 508 nm)",
    diode=DiodeParams(
        ideality=4.08044, j0_a_m2=2.50184e-13, rs_ohm_m2=1.05749e-3, rsh_ohm_m2=2.0e3, j0_activation_ev=3.6
    ),
    efficiency=EfficiencyParams(
        eta0=0.099924,
        j_trap_a_m2=0.223992,
        trap_exponent=0.648619,
        j_rolloff_a_m2=260.266,
        rolloff_exponent=1.05613,
        thermal_resistance_k_m2_w=2.0e-3,
        quench_temperature_k=60.0,
    ),
    spectrum=SpectrumParams(
        centre_nm=507.944,
        sigma_blue_nm=10.2887,
        sigma_red_nm=10.3846,
        tail_fraction=0.151816,
        tail_offset_nm=16.2435,
        tail_sigma_nm=21.3564,
        ref_voltage_v=5.5,
        shift_nm_per_v=0.25,
        broadening_per_v=0.01,
    ),
    aging=AgingParams(
        tau_ref_h=15.0,
        beta=0.7,
        j_ref_a_m2=0.45 * A_M2_PER_MA_CM2,
        acceleration_n=1.7,
        brightening=0.25,
        brightening_tau_ref_h=0.5,
        delta_voltage_max_v=0.6,
    ),
)

OTAC = DevicePreset(
    name="otac",
    description="OTAc-capped CsPbBr3 nanocrystal LED of the seed (Table S1: EQE 2.75 %, 2339 cd/m2, 516 nm)",
    diode=DiodeParams(
        ideality=3.09039, j0_a_m2=3.78676e-17, rs_ohm_m2=7.32378e-4, rsh_ohm_m2=1.0e3, j0_activation_ev=3.6
    ),
    efficiency=EfficiencyParams(
        eta0=0.0291639,
        j_trap_a_m2=0.0905879,
        trap_exponent=1.94373,
        j_rolloff_a_m2=146.265,
        rolloff_exponent=0.612446,
        thermal_resistance_k_m2_w=2.0e-3,
        quench_temperature_k=60.0,
    ),
    spectrum=SpectrumParams(
        centre_nm=515.758,
        sigma_blue_nm=10.8564,
        sigma_red_nm=11.647,
        tail_fraction=0.0793669,
        tail_offset_nm=21.7204,
        tail_sigma_nm=13.9912,
        ref_voltage_v=5.5,
        shift_nm_per_v=0.25,
        broadening_per_v=0.01,
    ),
    aging=AgingParams(
        tau_ref_h=4.5,
        beta=0.8,
        j_ref_a_m2=1.25 * A_M2_PER_MA_CM2,
        acceleration_n=1.6,
        brightening=0.2,
        brightening_tau_ref_h=0.1,
        delta_voltage_max_v=0.8,
    ),
)

# A healthy green phosphorescent OLED (Ir(ppy)3-class): low turn-on, ~20 % EQE, mild roll-off,
# broad emission with a vibronic shoulder, tens of thousands of hours at 1000 cd/m².
OLED = DevicePreset(
    name="oled",
    description="healthy green phosphorescent OLED: V_on ~2.7 V, EQE ~20 %, long lifetime, no positive aging",
    diode=DiodeParams(
        ideality=2.4, j0_a_m2=6.4e-21, rs_ohm_m2=5.0e-4, rsh_ohm_m2=1.0e4, j0_activation_ev=3.2
    ),
    efficiency=EfficiencyParams(
        eta0=0.21,
        j_trap_a_m2=0.005,
        trap_exponent=1.0,
        j_rolloff_a_m2=800.0,
        rolloff_exponent=1.0,
        thermal_resistance_k_m2_w=2.0e-3,
        quench_temperature_k=150.0,
    ),
    spectrum=SpectrumParams(
        centre_nm=515.0,
        sigma_blue_nm=10.0,
        sigma_red_nm=15.0,
        tail_fraction=0.55,
        tail_offset_nm=40.0,
        tail_sigma_nm=35.0,
        ref_voltage_v=6.0,
        shift_nm_per_v=0.1,
        broadening_per_v=0.005,
    ),
    aging=AgingParams(
        tau_ref_h=16000.0,
        beta=0.8,
        j_ref_a_m2=1.4 * A_M2_PER_MA_CM2,
        acceleration_n=1.8,
        delta_voltage_max_v=0.3,
    ),
    sweep_max_voltage_v=12.0,
)

# A pixel with a pinhole: leaky shunt, poor injection balance, and a short after tens of hours.
BAD = DevicePreset(
    name="bad",
    description="failing perovskite pixel: leaky shunt, EQE <1 %, shorts after ~20 h at 1 mA/cm2",
    diode=DiodeParams(ideality=4.5, j0_a_m2=5.0e-13, rs_ohm_m2=2.0e-3, rsh_ohm_m2=5.0, j0_activation_ev=3.6),
    efficiency=EfficiencyParams(
        eta0=0.012,
        j_trap_a_m2=5.0,
        trap_exponent=1.0,
        j_rolloff_a_m2=100.0,
        rolloff_exponent=0.8,
        thermal_resistance_k_m2_w=3.0e-3,
        quench_temperature_k=50.0,
    ),
    spectrum=SpectrumParams(
        centre_nm=517.0,
        sigma_blue_nm=11.0,
        sigma_red_nm=13.0,
        tail_fraction=0.12,
        tail_offset_nm=25.0,
        tail_sigma_nm=25.0,
        ref_voltage_v=5.5,
        shift_nm_per_v=0.5,
        broadening_per_v=0.02,
    ),
    aging=AgingParams(
        tau_ref_h=60.0,
        beta=0.6,
        j_ref_a_m2=1.0 * A_M2_PER_MA_CM2,
        acceleration_n=1.5,
        delta_voltage_max_v=1.0,
    ),
    failure=FailureParams(mode=FailureMode.SHORT, time_ref_h=20.0, short_resistance_ohm=15.0),
)

PRESETS: dict[str, DevicePreset] = {p.name: p for p in (DBSA, OTAC, OLED, BAD)}


def get_preset(name: str) -> DevicePreset:
    """The preset called ``name``; ValueError naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown device preset {name!r}; known presets: {', '.join(PRESETS)}") from None
