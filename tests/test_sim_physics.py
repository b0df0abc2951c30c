"""Device physics of the simulator, checked against independent expectations.

Expectations come from the seed (Table S1 typed in below), from closed forms, from colour-science's
own colorimetry, and from the diode equation solved another way (brentq) — never from the code's
own output.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import colour
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.optimize import brentq

from sim import optics, physics, truth
from sim.presets import PRESETS, get_preset

# Table S1 of the seed (Jin et al. 2023, SI), typed in.
SEED_CIE: dict[str, tuple[float, float]] = {"otac": (0.0981, 0.7592), "dbsa": (0.0669, 0.6765)}
SEED_TABLE_S1: dict[str, dict[str, float]] = {
    "otac": {
        "von_v": 2.85,
        "l_max_cd_m2": 2339.0,
        "ce_max_cd_a": 9.1,
        "eqe_max_pct": 2.75,
        "pe_max_lm_w": 9.59,
        "el_peak_nm": 516.0,
    },
    "dbsa": {
        "von_v": 2.8,
        "l_max_cd_m2": 4452.0,
        "ce_max_cd_a": 23.8,
        "eqe_max_pct": 8.95,
        "pe_max_lm_w": 22.7,
        "el_peak_nm": 508.0,
    },
}

H = 6.62607015e-34
C = 299_792_458.0
Q = 1.602176634e-19
KB = 1.380649e-23

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def sweep_truths() -> dict[str, dict[str, float]]:
    return {name: truth.sweep_truth(PRESETS[name]) for name in PRESETS}


def _v_at_lmax(preset: physics.DevicePreset) -> float:
    v = np.arange(2.0, preset.sweep_max_voltage_v, 0.001)
    return float(v[np.argmax(physics.luminance_cd_m2(preset, v))])


# --- Table S1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dbsa", "otac"])
def test_sweep_truth_reproduces_seed_table_s1(name: str, sweep_truths: dict[str, dict[str, float]]) -> None:
    got = sweep_truths[name]
    seed = SEED_TABLE_S1[name]
    assert got["von_v"] == pytest.approx(seed["von_v"], abs=0.02)
    for key in ("l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w"):
        assert got[key] == pytest.approx(seed[key], rel=0.02), key
    assert got["el_peak_nm"] == pytest.approx(seed["el_peak_nm"], abs=1.0)
    assert got["cie_x"] == pytest.approx(SEED_CIE[name][0], abs=0.003)
    assert got["cie_y"] == pytest.approx(SEED_CIE[name][1], abs=0.003)


def test_sweep_truth_has_exactly_the_documented_keys(sweep_truths: dict[str, dict[str, float]]) -> None:
    keys = {
        "von_v",
        "l_max_cd_m2",
        "ce_max_cd_a",
        "eqe_max_pct",
        "pe_max_lm_w",
        "el_peak_nm",
        "el_fwhm_nm",
        "cie_x",
        "cie_y",
    }
    for got in sweep_truths.values():
        assert set(got) == keys
        assert all(math.isfinite(v) for v in got.values())


@pytest.mark.filterwarnings("ignore::colour.utilities.ColourRuntimeWarning")
@pytest.mark.parametrize("name", ["dbsa", "otac"])
def test_cie_from_colour_science_matches_seed(name: str) -> None:
    """CIE xy of the model spectrum at the L_max voltage, computed by colour-science itself."""
    preset = PRESETS[name]
    wl = np.arange(360.0, 781.0, 1.0)  # the ASTM E308 practice range colour-science integrates over
    s = physics.spectrum_w_per_nm(preset, wl, _v_at_lmax(preset))
    sd = colour.SpectralDistribution(dict(zip(wl, s, strict=True)), name=name)
    xy = colour.XYZ_to_xy(colour.sd_to_XYZ(sd))
    seed = SEED_CIE[name]
    assert xy[0] == pytest.approx(seed[0], abs=0.003)
    assert xy[1] == pytest.approx(seed[1], abs=0.003)
    # and the simulator's own integration agrees with colour-science's
    x, y = optics.spectrum_xy(wl, s)
    assert float(x) == pytest.approx(xy[0], abs=2e-4)
    assert float(y) == pytest.approx(xy[1], abs=2e-4)


@pytest.mark.filterwarnings("ignore::colour.utilities.ColourRuntimeWarning")
@pytest.mark.parametrize("name", ["dbsa", "otac"])
def test_symmetric_gaussian_at_the_seed_peak_misses_the_seed_cie(name: str) -> None:
    """Why the model needs a red tail: no symmetric Gaussian at the seed's peak reaches its CIE."""
    wl = np.arange(360.0, 781.0, 1.0)
    seed = SEED_TABLE_S1[name]
    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    best = math.inf
    for fwhm in np.arange(10.0, 40.0, 0.5):
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        s = np.exp(-0.5 * ((wl - seed["el_peak_nm"]) / sigma) ** 2)
        sd = colour.SpectralDistribution(dict(zip(wl, s, strict=True)))
        xy = colour.XYZ_to_xy(colour.sd_to_XYZ(sd, cmfs))
        best = min(best, math.hypot(xy[0] - SEED_CIE[name][0], xy[1] - SEED_CIE[name][1]))
    assert best > 0.01


def test_l_max_does_not_depend_on_where_the_sweep_stops(sweep_truths: dict[str, dict[str, float]]) -> None:
    preset = PRESETS["dbsa"]
    v_peak = _v_at_lmax(preset)
    shorter = truth.sweep_truth(replace(preset, sweep_max_voltage_v=v_peak + 1.0))
    longer = truth.sweep_truth(replace(preset, sweep_max_voltage_v=14.0))
    assert shorter["l_max_cd_m2"] == pytest.approx(sweep_truths["dbsa"]["l_max_cd_m2"], rel=1e-6)
    assert longer["l_max_cd_m2"] == pytest.approx(sweep_truths["dbsa"]["l_max_cd_m2"], rel=1e-6)


@pytest.mark.parametrize("name", list(PRESETS))
def test_luminance_voltage_curve_has_an_interior_maximum(name: str) -> None:
    preset = PRESETS[name]
    v_max = _v_at_lmax(preset)
    assert 2.5 < v_max < preset.sweep_max_voltage_v - 0.5
    lum = physics.luminance_cd_m2(preset, np.array([v_max - 0.5, v_max, v_max + 0.5]))
    assert lum[1] > lum[0]
    assert lum[1] > lum[2]


def test_presets_cover_the_requested_devices(sweep_truths: dict[str, dict[str, float]]) -> None:
    assert set(PRESETS) >= {"dbsa", "otac", "oled", "bad"}
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.description and "\n" not in preset.description
        assert preset.area_m2 == pytest.approx(4e-6)
    oled, bad = sweep_truths["oled"], sweep_truths["bad"]
    assert 2.5 <= oled["von_v"] <= 3.0
    assert oled["eqe_max_pct"] > 15.0
    assert PRESETS["oled"].aging.brightening == 0.0
    assert bad["eqe_max_pct"] < 1.0
    assert PRESETS["bad"].failure.mode == physics.FailureMode.SHORT


def test_get_preset_names_the_known_presets_on_error() -> None:
    assert get_preset("dbsa") is PRESETS["dbsa"]
    with pytest.raises(ValueError) as err:
        get_preset("no-such-device")
    for name in PRESETS:
        assert name in str(err.value)


def test_truth_module_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert truth.main(["--preset", "otac"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["preset"] == "otac"
    assert doc["sweep"]["von_v"] == pytest.approx(2.85, abs=0.02)
    assert {"l0_cd_m2", "t50_h", "t50_from_peak_h"} <= set(doc["lifetime"])


# --- J-V ------------------------------------------------------------------------------------


def _implicit_current(preset: physics.DevicePreset, v: float, area: float, temp: float) -> float:
    """Solve I = I0(exp((V − I·Rs)/(n·Vt)) − 1) + (V − I·Rs)/Rsh by bracketing (independent)."""
    d = preset.diode
    a = d.ideality * KB * temp / Q
    i0 = d.j0_a_m2 * area * math.exp(-(d.j0_activation_ev * Q / (d.ideality * KB)) * (1 / temp - 1 / 298.15))
    rs, rsh = d.rs_ohm_m2 / area, d.rsh_ohm_m2 / area

    def f(i: float) -> float:
        vj = v - i * rs
        return i0 * math.expm1(vj / a) + vj / rsh - i

    lo, hi = -abs(v) / rsh - 2 * i0 - 1e-15, abs(v) / rs + 1e-15
    return float(brentq(f, lo, hi, xtol=1e-300, rtol=1e-14, maxiter=500))


@HYP
@given(
    name=st.sampled_from(list(PRESETS)),
    v=st.floats(-3.0, 9.0),
    area_mm2=st.floats(0.5, 20.0),
    temp=st.floats(260.0, 340.0),
)
def test_current_matches_diode_equation_solved_by_brentq(
    name: str, v: float, area_mm2: float, temp: float
) -> None:
    preset = PRESETS[name]
    area = area_mm2 * 1e-6
    got = float(physics.current_a(preset, v, area_m2=area, temperature_k=temp))
    want = _implicit_current(preset, v, area, temp)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-16)


@HYP
@given(name=st.sampled_from(list(PRESETS)), log_i=st.floats(-11.0, -1.5), area_mm2=st.floats(0.5, 20.0))
def test_voltage_for_current_inverts_current(name: str, log_i: float, area_mm2: float) -> None:
    preset = PRESETS[name]
    area = area_mm2 * 1e-6
    i = 10.0**log_i
    v = physics.voltage_for_current(preset, i, area_m2=area)
    assert float(physics.current_a(preset, v, area_m2=area)) == pytest.approx(i, rel=1e-8)


def test_current_is_vectorised_and_scales_with_area() -> None:
    preset = PRESETS["dbsa"]
    v = np.linspace(-2.0, 8.0, 101)
    i_small = physics.current_a(preset, v, area_m2=2e-6)
    i_big = physics.current_a(preset, v, area_m2=8e-6)
    assert i_small.shape == v.shape
    assert np.all(np.diff(i_small) > 0)
    np.testing.assert_allclose(i_big, 4 * i_small, rtol=1e-9)
    # luminance is per unit area: independent of the pixel size
    np.testing.assert_allclose(
        physics.luminance_cd_m2(preset, v[60:], area_m2=2e-6),
        physics.luminance_cd_m2(preset, v[60:], area_m2=8e-6),
        rtol=1e-9,
    )


def test_lambertw_exp_survives_huge_arguments() -> None:
    x = np.array([-50.0, 0.0, 1.0, 400.0, 600.0, 1e4, 1e8])
    w = physics.lambertw_exp(x)
    np.testing.assert_allclose(w + np.log(w), x, rtol=1e-12, atol=1e-13)
    assert w[1] == pytest.approx(0.5671432904097838, rel=1e-12)  # the omega constant, W(1)
    assert w[2] == pytest.approx(1.0, rel=1e-12)  # W(e) = 1


def test_thermal_voltage_and_forward_voltage_temperature_coefficient() -> None:
    assert float(physics.thermal_voltage_v(300.0)) == pytest.approx(KB * 300.0 / Q, rel=1e-12)
    assert float(physics.thermal_voltage_v(300.0)) == pytest.approx(0.025852, abs=1e-6)
    preset = PRESETS["dbsa"]
    i = 1e-3 * 10 * preset.area_m2  # 1 mA/cm²
    dv_dt = (
        physics.voltage_for_current(preset, i, temperature_k=308.15)
        - physics.voltage_for_current(preset, i, temperature_k=288.15)
    ) / 20.0
    assert -4e-3 < float(dv_dt) < -0.5e-3  # LEDs: forward voltage falls ~2 mV/K


# --- light and bookkeeping -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_photon_and_energy_bookkeeping(name: str) -> None:
    preset = PRESETS[name]
    v = np.array([3.0, 3.5, 4.5, 6.0])
    op = physics.operating_point(preset, v)
    # EQE·I/q photons per second
    np.testing.assert_allclose(op.photon_flux_per_s, op.eqe * op.current_a / Q, rtol=1e-12)
    # photon flux × hc/λ, integrated over the photon spectrum, equals the optical power
    wl = np.arange(300.0, 900.0, 0.25)
    s_power = physics.spectrum_w_per_nm(preset, wl, v)
    n_shape = s_power * wl * 1e-9 / (H * C)
    n_shape /= np.trapezoid(n_shape, wl, axis=-1)[:, None]
    photons_per_nm = op.photon_flux_per_s[:, None] * n_shape
    power = np.trapezoid(photons_per_nm * H * C / (wl * 1e-9), wl, axis=-1)
    np.testing.assert_allclose(power, op.optical_power_w, rtol=1e-6)
    # the helpers convert the same way
    np.testing.assert_allclose(
        optics.photon_to_energy(wl, photons_per_nm), photons_per_nm * H * C / (wl * 1e-9)
    )
    # luminance from the power with colour-science's own V(λ), Lambertian: L = Km·P·∫S·V/(π·A)
    lef = colour.SDS_LEFS["CIE 1924 Photopic Standard Observer"]
    wl_v = np.asarray(lef.wavelengths)
    s_v = physics.spectrum_w_per_nm(preset, wl_v, v)
    lum = 683.0 * op.optical_power_w * np.trapezoid(s_v * np.asarray(lef.values), wl_v, axis=-1)
    np.testing.assert_allclose(lum / (math.pi * preset.area_m2), op.luminance_cd_m2, rtol=1e-6)


def test_one_watt_at_555_nm_is_683_lumens_and_known_photon_count() -> None:
    assert float(optics.energy_to_photon(555.0, 1.0)) == pytest.approx(555e-9 / (H * C), rel=1e-12)
    assert float(optics.energy_to_photon(555.0, 1.0)) == pytest.approx(2.794e18, rel=1e-3)
    assert float(optics.photopic_v(555.0)) == pytest.approx(1.0, abs=1e-3)
    assert optics.K_M_LM_PER_W == 683.0


@HYP
@given(wl=st.floats(300.0, 1100.0), p=st.floats(1e-12, 1e3))
def test_photon_energy_round_trip(wl: float, p: float) -> None:
    n = optics.energy_to_photon(wl, p)
    assert float(optics.photon_to_energy(wl, n)) == pytest.approx(p, rel=1e-12)


def test_eqe_rises_then_rolls_off() -> None:
    preset = PRESETS["dbsa"]
    v = np.arange(2.6, 8.0, 0.01)
    e = physics.eqe(preset, v)
    k = int(np.argmax(e))
    assert 0 < k < len(v) - 1
    assert e[0] < 0.5 * e[k]
    assert e[-1] < 0.2 * e[k]


# --- spectrum ------------------------------------------------------------------------------


@HYP
@given(
    name=st.sampled_from(list(PRESETS)),
    step=st.floats(0.05, 2.0),
    v=st.floats(0.0, 12.0),
)
def test_spectrum_is_normalised_on_any_grid(name: str, step: float, v: float) -> None:
    wl = np.arange(250.0, 900.0, step)
    s = physics.spectrum_w_per_nm(PRESETS[name], wl, v)
    assert np.all(s >= 0)
    assert np.trapezoid(s, wl) == pytest.approx(1.0, abs=2e-3)


def test_spectrum_has_a_red_tail_and_shifts_and_broadens_with_voltage() -> None:
    preset = PRESETS["dbsa"]
    peak = float(physics.spectrum_peak_nm(preset, 4.0))
    wl = np.arange(300.0, 900.0, 0.1)
    s = physics.spectrum_w_per_nm(preset, wl, 4.0)
    red = np.trapezoid(np.where(wl > peak + 20, s, 0.0), wl)
    blue = np.trapezoid(np.where(wl < peak - 20, s, 0.0), wl)
    assert red > 2 * blue
    peaks = physics.spectrum_peak_nm(preset, np.array([3.0, 5.0, 7.0]))
    widths = physics.spectrum_fwhm_nm(preset, np.array([3.0, 5.0, 7.0]))
    assert np.all(np.diff(peaks) > 0.1) and peaks[-1] - peaks[0] < 5.0
    assert np.all(np.diff(widths) > 0.0) and widths[-1] / widths[0] < 1.2
    spectra = physics.spectrum_w_per_nm(preset, wl, np.array([3.0, 5.0]))
    assert spectra.shape == (2, wl.size)


def test_fwhm_of_a_pure_gaussian_is_2_355_sigma() -> None:
    spec = physics.SpectrumParams(
        centre_nm=520.0,
        sigma_blue_nm=8.0,
        sigma_red_nm=8.0,
        tail_fraction=0.0,
        tail_offset_nm=20.0,
        tail_sigma_nm=10.0,
        ref_voltage_v=4.0,
    )
    assert float(physics.spectrum_fwhm_nm(spec, 4.0)) == pytest.approx(
        8.0 * 2 * math.sqrt(2 * math.log(2)), abs=0.01
    )
    assert float(physics.spectrum_peak_nm(spec, 4.0)) == pytest.approx(520.0, abs=0.01)


# --- aging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_decay_without_positive_aging_matches_closed_form(name: str) -> None:
    preset = PRESETS[name]
    ag = preset.aging
    j_ma_cm2 = 2.0
    # τ = τ_ref·(J_ref/J)^n, typed from the parameters
    tau = ag.tau_ref_h * (ag.j_ref_a_m2 / (j_ma_cm2 * 10.0)) ** ag.acceleration_n
    got = truth.lifetime_truth(preset, j_ma_cm2, positive_aging=False)
    t_fail = preset.failure.time_ref_h * (ag.j_ref_a_m2 / (j_ma_cm2 * 10.0)) ** ag.acceleration_n
    for pct in (95, 90, 80, 50):
        closed = min(tau * (-math.log(pct / 100)) ** (1 / ag.beta), t_fail)
        assert got[f"t{pct}_h"] == pytest.approx(closed, rel=1e-7), pct
    assert got["t_peak_h"] == 0.0
    assert got["l_peak_cd_m2"] == got["l0_cd_m2"]
    t = np.array([0.0, 0.3 * tau, tau])
    ratio = physics.luminance_ratio(preset, t, j_ma_cm2 * 10.0, positive_aging=False)
    np.testing.assert_allclose(ratio[t < t_fail], np.exp(-((t / tau) ** ag.beta))[t < t_fail], rtol=1e-12)


@HYP
@given(
    name=st.sampled_from(["dbsa", "otac", "oled"]),
    j1=st.floats(0.1, 50.0),
    factor=st.floats(1.5, 20.0),
    positive=st.booleans(),
)
def test_lifetime_scales_as_current_density_to_the_minus_n(
    name: str, j1: float, factor: float, positive: bool
) -> None:
    preset = PRESETS[name]
    a = truth.lifetime_truth(preset, j1, positive_aging=positive)
    b = truth.lifetime_truth(preset, j1 * factor, positive_aging=positive)
    expected = factor**preset.aging.acceleration_n
    for key in ("t90_h", "t50_h", "t50_from_peak_h"):
        assert a[key] / b[key] == pytest.approx(expected, rel=1e-6), key


def test_positive_aging_brightens_before_the_decay() -> None:
    got = truth.lifetime_truth(PRESETS["dbsa"], 0.45)
    assert got["l0_cd_m2"] == pytest.approx(100.0, rel=0.1)  # the preset's reference ~100 cd/m²
    assert got["l_peak_cd_m2"] > 1.02 * got["l0_cd_m2"]
    assert 0 < got["t_peak_h"] < got["t95_h"] < got["t90_h"] < got["t80_h"] < got["t50_h"]
    assert got["t50_from_peak_h"] < got["t50_h"]
    assert 2.0 < got["t50_h"] < 50.0  # CsPbBr3 NC LEDs: T50 of a few to tens of hours at ~100 cd/m²
    state = physics.aging_state(PRESETS["dbsa"], np.array([got["t_peak_h"]]), 4.5)
    assert float(state.luminance_ratio[0]) == pytest.approx(got["l_peak_cd_m2"] / got["l0_cd_m2"], rel=1e-9)


def test_aged_pixel_at_constant_current_gives_l_over_l0_and_rising_voltage() -> None:
    preset = PRESETS["otac"]
    j = 12.5  # A/m²
    i = j * preset.area_m2
    t = np.linspace(0.0, 10.0, 21)
    state = physics.aging_state(preset, t, j)
    assert np.all(np.diff(state.voltage_v) >= 0) and state.voltage_v[-1] > state.voltage_v[0] + 0.3
    assert float(state.voltage_v[0]) == pytest.approx(
        float(physics.voltage_for_current(preset, i)), rel=1e-12
    )
    l0 = float(physics.operating_point_at_current(preset, i).luminance_cd_m2)
    op = physics.operating_point_at_current(preset, np.full(t.shape, i), degradation=state.degradation)
    np.testing.assert_allclose(op.luminance_cd_m2, l0 * state.luminance_ratio, rtol=1e-9)
    np.testing.assert_allclose(op.current_a, i, rtol=1e-9)


def test_sudden_short_kills_the_light_and_collapses_the_voltage() -> None:
    preset = PRESETS["bad"]
    j = 10.0  # A/m², the preset's reference: the short comes at time_ref_h
    i = j * preset.area_m2
    t_fail = preset.failure.time_ref_h
    state = physics.aging_state(preset, np.array([0.5 * t_fail, t_fail, 2 * t_fail]), j)
    assert list(state.failure) == [0, int(physics.FailureMode.SHORT), int(physics.FailureMode.SHORT)]
    assert state.luminance_ratio[0] > 0 and np.all(state.luminance_ratio[1:] == 0)
    np.testing.assert_allclose(state.voltage_v[1:], i * preset.failure.short_resistance_ohm)
    got = truth.lifetime_truth(preset, 1.0)
    assert got["t50_h"] == pytest.approx(t_fail, rel=1e-12)
    assert 5.0 < t_fail < 100.0
    assert float(physics.failure_time_h(preset, 40.0)) == pytest.approx(t_fail * 0.25**1.5)


def test_open_pixel_carries_no_current() -> None:
    preset = PRESETS["dbsa"]
    dead = physics.Degradation(failure=int(physics.FailureMode.OPEN))
    assert float(physics.current_a(preset, 5.0, degradation=dead)) == 0.0
    assert math.isinf(float(physics.voltage_for_current(preset, 1e-3, degradation=dead)))
    assert float(physics.luminance_cd_m2(preset, 5.0, degradation=dead)) == 0.0


# --- optics --------------------------------------------------------------------------------


def test_si_responsivity_is_a_plausible_silicon_curve() -> None:
    r520 = float(optics.si_responsivity_a_per_w(520.0))
    assert 0.22 < r520 < 0.35
    wl = np.arange(300.0, 1101.0, 1.0)
    r = optics.si_responsivity_a_per_w(wl)
    assert 800.0 <= wl[np.argmax(r)] <= 980.0
    assert 0.5 < r.max() < 0.65
    # no silicon photodiode beats an ideal one: R <= qλ/(hc)
    assert np.all(r <= Q * wl * 1e-9 / (H * C))
    assert float(optics.si_responsivity_a_per_w(1200.0)) == 0.0


@HYP
@given(r=st.floats(1e-4, 0.05), d=st.floats(1e-4, 0.2))
def test_lambertian_fraction_equals_solid_angle_integral(r: float, d: float) -> None:
    """∫ cosθ dΩ over the detector cone / π  (Lambertian intensity ∝ cosθ)."""
    theta = math.atan2(r, d)
    collected, _ = quad(lambda t: math.cos(t) * math.sin(t) * 2 * math.pi, 0.0, theta)
    assert float(optics.lambertian_fraction(r, d)) == pytest.approx(collected / math.pi, rel=1e-9)


def test_photodiode_current_from_power_geometry_and_responsivity() -> None:
    preset = PRESETS["dbsa"]
    wl = np.arange(360.0, 831.0, 0.5)
    s = physics.spectrum_w_per_nm(preset, wl, 4.0)
    i_pd = optics.photodiode_current_a(1e-4, wl, s, radius_m=5e-3, distance_m=5e-3)
    # narrow green line: ≈ P · F · R(peak) with F = 1/2
    assert float(i_pd) == pytest.approx(1e-4 * 0.5 * float(optics.si_responsivity_a_per_w(512.0)), rel=0.05)
