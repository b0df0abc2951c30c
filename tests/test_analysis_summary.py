"""Sweep summary (a Table S1 row) on synthetic sweeps whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.analysis.photometry import POINT_DTYPE, Spectrum
from station.analysis.summary import sweep_summary, turn_on_voltage

REQUIRED_KEYS = {
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


def make_points(v: np.ndarray, j: np.ndarray, lum: np.ndarray, eqe: np.ndarray, ce: np.ndarray) -> np.ndarray:
    pts = np.zeros(v.size, dtype=POINT_DTYPE)
    pts["voltage_v"] = v
    pts["current_density_ma_cm2"] = j
    pts["luminance_cd_m2"] = lum
    pts["eqe_pct"] = eqe
    pts["ce_cd_a"] = ce
    pts["pe_lm_w"] = np.where(v > 0, math.pi * ce / np.where(v > 0, v, 1.0), np.nan)
    return pts


def gaussian(wl: np.ndarray, peak: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - peak) / sigma) ** 2)


def test_von_is_log_interpolated_between_bracketing_points() -> None:
    # 0.5 cd/m^2 at 2.7 V and 2 cd/m^2 at 2.9 V: log10 midpoint is 1 cd/m^2 -> 2.8 V exactly
    v = np.array([2.5, 2.7, 2.9, 3.1])
    lum = np.array([0.05, 0.5, 2.0, 30.0])
    von, method = turn_on_voltage(v, lum, 1.0)
    assert von == pytest.approx(2.8, abs=1e-12)
    assert method == "log-interpolated"
    # with another threshold: 10 cd/m^2 between 2 (2.9 V) and 30 (3.1 V)
    von10, _ = turn_on_voltage(v, lum, 10.0)
    assert von10 == pytest.approx(2.9 + 0.2 * math.log10(5.0) / math.log10(15.0), abs=1e-12)


def test_von_edge_cases() -> None:
    v = np.array([2.0, 2.5, 3.0])
    assert turn_on_voltage(v, np.array([-0.2, 0.0, 3.0]), 1.0) == (
        pytest.approx(2.5 + 0.5 / 3.0),
        "linear-interpolated",
    )
    assert turn_on_voltage(v, np.array([0.1, 0.2, 0.3]), 1.0) == (None, "not-reached")
    assert turn_on_voltage(v, np.array([5.0, 6.0, 7.0]), 1.0) == (2.0, "first-point")
    # NaN points are skipped when bracketing
    von, _ = turn_on_voltage(np.array([2.0, 2.5, 3.0]), np.array([0.1, np.nan, 10.0]), 1.0)
    assert von == pytest.approx(2.5)


def test_von_uses_the_first_crossing_in_measurement_order() -> None:
    # forward then reverse branch: the reverse branch crosses again at a lower voltage
    v = np.array([2.0, 2.5, 3.0, 3.5, 3.0, 2.5, 2.0])
    lum = np.array([0.01, 0.1, 10.0, 100.0, 10.0, 5.0, 0.5])
    von, _ = turn_on_voltage(v, lum)
    assert von is not None and 2.5 < von < 3.0


@settings(max_examples=40, deadline=None)
@given(t1=st.floats(0.01, 1e3), t2=st.floats(0.01, 1e3), slope=st.floats(0.5, 5.0))
def test_von_increases_with_threshold_for_a_rising_curve(t1: float, t2: float, slope: float) -> None:
    v = np.linspace(-6.0, 10.0, 161)
    lum = 10 ** (slope * (v - 3.0))
    lo, hi = sorted((t1, t2))
    v_lo, _ = turn_on_voltage(v, lum, lo)
    v_hi, _ = turn_on_voltage(v, lum, hi)
    assert v_lo is not None and v_hi is not None
    assert v_lo <= v_hi + 1e-12
    # the curve is exactly log-linear, so log interpolation is exact
    assert v_lo == pytest.approx(3.0 + math.log10(lo) / slope, abs=1e-9)


def test_maxima_are_reported_with_where_they_occur() -> None:
    v = np.linspace(2.0, 7.0, 501)
    j = 10 ** (v - 4.0)  # mA/cm^2
    lum = 1e3 * np.exp(-0.5 * ((v - 6.0) / 0.6) ** 2) * (v > 2.5)
    # CE and EQE peak at different J (the seed's note): CE at 4 V, EQE at 4.5 V
    ce = 20 * np.exp(-0.5 * ((v - 4.0) / 0.5) ** 2)
    eqe = 8 * np.exp(-0.5 * ((v - 4.5) / 0.5) ** 2)
    pts = make_points(v, j, lum, eqe, ce)
    s = sweep_summary(pts)
    d = s.to_dict()
    assert d["l_max_at"]["v"] == pytest.approx(6.0)
    assert d["ce_max_at"]["v"] == pytest.approx(4.0)
    assert d["eqe_max_at"]["v"] == pytest.approx(4.5)
    assert d["ce_max_at"]["j_ma_cm2"] == pytest.approx(1.0)
    assert d["ce_max_cd_a"] == pytest.approx(20.0)
    assert d["eqe_max_pct"] == pytest.approx(8.0)
    assert d["l_max_cd_m2"] == pytest.approx(1e3)


def test_efficiency_maxima_ignore_points_below_turn_on() -> None:
    """The demo's OTAc sweep once reported PE = 176 lm/W (Table S1: 9.59): at 0.1 V, 0.4 nA, the
    photodiode read one ADC step above its dark reading, 0.00056 cd/m². Efficiencies are light
    over current; below turn-on they are noise over almost nothing."""
    v = np.array([0.1, 0.25, 2.8, 2.95, 3.0, 3.5])
    j = np.array([1e-5, 2.5e-5, 0.02, 0.052, 0.097, 1.0])  # mA/cm^2
    lum = np.array([5.6e-4, 5.6e-4, 1.0, 4.68, 8.83, 80.0])
    ce = np.array([5.6, 2.2, 5.0, 9.04, 9.14, 8.0])
    eqe = np.array([1.7, 0.67, 1.5, 2.72, 2.75, 2.4])
    pts = make_points(v, j, lum, eqe, ce)
    s = sweep_summary(pts, noise_floor_cd_m2=1.19e-3)
    # PE = pi * CE / V (make_points): the 0.1 V point would be 176 lm/W
    assert s.pe_max_lm_w == pytest.approx(math.pi * 9.04 / 2.95)
    assert s.ce_max_cd_a == pytest.approx(9.14) and s.eqe_max_pct == pytest.approx(2.75)
    assert s.to_dict()["efficiency_basis"].startswith("points with L >= 1 cd/m²")
    # a device that never reaches 1 cd/m²: over the points above the noise floor instead
    dim = make_points(v, j, lum / 100.0, eqe, ce)
    d = sweep_summary(dim, noise_floor_cd_m2=1e-5).to_dict()
    assert d["pe_max_at"]["v"] == pytest.approx(2.95) and "noise floor" in d["efficiency_basis"]


def test_spectral_figures_come_from_the_spectrum_nearest_the_max_luminance_point() -> None:
    v = np.linspace(2.0, 7.0, 51)
    lum = 1e3 * np.exp(-(((v - 6.4) / 0.5) ** 2))  # maximum at 6.4 V
    pts = make_points(v, np.ones_like(v), lum, np.ones_like(v), np.ones_like(v))
    wl = np.arange(400.0, 650.0, 0.5)
    # spectra at 3, 4, 5, 6, 7 V peaking at 500, 502, ..., 508 nm
    spectra = [Spectrum(wl, gaussian(wl, 500.0 + 2 * k, 8.0), voltage_v=3.0 + k) for k in range(5)]
    s = sweep_summary(pts, spectra[::-1])
    assert s.spectrum_voltage_v == 6.0
    assert s.el_peak_nm == pytest.approx(506.0, abs=0.01)
    assert s.el_fwhm_nm == pytest.approx(2 * math.sqrt(2 * math.log(2)) * 8.0, rel=1e-3)
    assert "maximum-luminance" in s.spectrum_basis


def test_summary_dict_has_the_table_s1_keys_and_is_strict_json() -> None:
    v = np.linspace(-1.0, 6.0, 71)
    lum = np.where(v > 2.5, 10 ** (v - 2.5), 0.0) + np.random.default_rng(1).normal(0, 1e-3, v.size)
    pts = make_points(v, np.abs(v), lum, np.full(v.size, np.nan), np.ones_like(v))
    wl = np.arange(400.0, 650.0, 1.0)
    d = sweep_summary(pts, [Spectrum(wl, gaussian(wl, 516.0, 9.0), voltage_v=4.0)]).to_dict()
    assert d.keys() >= REQUIRED_KEYS
    assert {
        "ce_max_at",
        "eqe_max_at",
        "pe_max_at",
        "l_max_at",
        "threshold_cd_m2",
        "noise_floor_cd_m2",
    } <= d.keys()
    assert d["eqe_max_pct"] is None and d["eqe_max_at"] is None  # all NaN -> None, not NaN
    json.dumps(d, allow_nan=False)
    # noise floor estimated from the points at V <= 0
    assert d["noise_floor_cd_m2"] == pytest.approx(3e-3, rel=0.5)
    assert d["noise_floor_source"].endswith("V <= 0")


def test_given_noise_floor_is_reported_as_given() -> None:
    v = np.linspace(2.0, 4.0, 5)
    pts = make_points(v, v, 10 ** (v - 2.5), v, v)
    s = sweep_summary(pts, threshold_cd_m2=0.5, noise_floor_cd_m2=0.02)
    assert (s.noise_floor_cd_m2, s.noise_floor_source, s.threshold_cd_m2) == (0.02, "given", 0.5)


def test_empty_sweep_gives_an_empty_row() -> None:
    d = sweep_summary(np.zeros(0, dtype=POINT_DTYPE)).to_dict()
    assert all(d[k] is None for k in REQUIRED_KEYS)


def test_dark_readings_equal_but_for_round_off_give_no_noise_floor() -> None:
    """A dark column whose spread is float round-off (1e-15 relative) is no measurement of noise:
    the floor is not 3 sigma of it (it was ~1e-18 cd/m², issue 12); with too few points at V <= 0
    it is unknown."""
    from station.analysis.summary import estimate_noise_floor

    n = 20
    pts = np.zeros(n, dtype=POINT_DTYPE)
    pts["voltage_v"] = np.linspace(0.0, 5.0, n)
    pts["dark_a"] = 2e-11 * (1 + 1e-15 * np.random.default_rng(1).standard_normal(n))
    pts["photodiode_a"] = pts["dark_a"] + 1e-9 * pts["voltage_v"]
    pts["luminance_cd_m2"] = 10.0 * pts["voltage_v"]
    assert estimate_noise_floor(pts) == (None, "unknown")
    pts["dark_a"] = 2e-11 * (1 + 1e-3 * np.random.default_rng(1).standard_normal(n))  # measured noise
    floor, source = estimate_noise_floor(pts)
    assert floor is not None and floor > 0 and "dark" in source
