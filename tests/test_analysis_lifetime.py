"""Lifetime analysis on synthetic aging traces whose answers are known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.analysis.lifetime import (
    analyze_lifetime,
    crossing_time,
    fit_acceleration,
    fit_stretched_exponential,
    l0_of,
)

H = 3600.0


def stretched(t_h: np.ndarray, tau: float, beta: float) -> np.ndarray:
    return np.exp(-((t_h / tau) ** beta))


def test_tx_of_a_noise_free_exponential_match_closed_form() -> None:
    tau = 100.0
    t = np.arange(0.0, 400.0 * H, 30.0)
    res = analyze_lifetime(t, 500.0 * np.exp(-t / H / tau))
    for name, x in (("t95", 0.95), ("t90", 0.90), ("t80", 0.80), ("t50", 0.50)):
        # L0 is the luminance at switch-on (robust line through the first 60 s at t = 0)
        expected = tau * math.log(1 / x)
        assert res.tx_h[name] == pytest.approx(expected, rel=1e-4), name
    assert not res.positive_aging
    assert res.l_peak_cd_m2 == res.l0_cd_m2
    assert res.t50_from_peak_h == res.t50_h
    assert res.fit is not None
    assert res.fit.beta == pytest.approx(1.0, abs=1e-4)
    assert res.fit.tau_h == pytest.approx(tau, rel=1e-4)


def test_positive_aging_t50_from_l0_and_from_peak_match_closed_form() -> None:
    """L/L0 rises linearly to 1.2 at 10 h, then decays as 1.2*exp(-(t-10 h)/tau):
    T50 (vs L0) = 10 + tau*ln(2.4); T50 vs the peak = 10 + tau*ln 2."""
    tau, rise = 100.0, 10.0
    t = np.arange(0.0, 400.0 * H, 30.0)
    th = t / H
    rel = np.where(th < rise, 1.0 + 0.2 * th / rise, 1.2 * np.exp(-(th - rise) / tau))
    # bins=0: every sample (a 0.4 h bin would round off the cusp at the peak; checked below)
    res = analyze_lifetime(t, 1000.0 * rel, bins=0)
    assert res.positive_aging
    assert res.l0_cd_m2 == pytest.approx(1000.0, rel=1e-3)
    assert res.l_peak_cd_m2 == pytest.approx(1200.0, rel=1e-3)
    assert res.t_peak_h == pytest.approx(rise, abs=0.5)
    assert res.t50_h == pytest.approx(rise + tau * math.log(2.4), rel=1e-3)
    assert res.t50_from_peak_h == pytest.approx(rise + tau * math.log(2.0), rel=1e-3)
    assert res.tx_h["t95"] == pytest.approx(rise + tau * math.log(1.2 / 0.95), rel=1e-3)
    # the fit covers the decay after the peak: beta = 1, a = 1.2*exp(rise/tau)
    assert res.fit is not None
    assert res.fit.t_start_h == pytest.approx(rise, abs=0.5)
    assert res.fit.beta == pytest.approx(1.0, abs=1e-3)
    assert res.fit.a == pytest.approx(1.2 * math.exp(rise / tau), rel=1e-3)
    assert res.extrapolated["t50_from_peak_h"] == pytest.approx(rise + tau * math.log(2.0), rel=1e-3)
    d = res.to_dict()
    assert d["t50_h"] == pytest.approx(res.t50_h)
    assert d["t50_from_peak_h"] == pytest.approx(res.t50_from_peak_h)
    binned = analyze_lifetime(t, 1000.0 * rel)  # default: 1000 bins of 0.4 h
    assert binned.t50_h == pytest.approx(rise + tau * math.log(2.4), rel=1e-3)
    assert binned.t50_from_peak_h == pytest.approx(rise + tau * math.log(2.0), rel=5e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stretched_exponential_parameters_recovered_from_noisy_trace(seed: int) -> None:
    """1 % multiplicative noise, 20,001 samples over 600 h: tau and beta within 1 % and within
    5 reported standard errors (the errors are statistical only, see docs/measurement.md)."""
    tau, beta = 150.0, 0.6
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 600.0 * H, 20001)
    lum = 800.0 * stretched(t / H, tau, beta) * (1 + 0.01 * rng.standard_normal(t.size))
    res = analyze_lifetime(t, lum)
    f = res.fit
    assert f is not None
    assert f.tau_h == pytest.approx(tau, rel=0.01)
    assert f.beta == pytest.approx(beta, rel=0.01)
    assert abs(f.tau_h - tau) < 5 * f.tau_err
    assert abs(f.beta - beta) < 5 * f.beta_err


def test_unreached_t50_is_extrapolated_with_an_uncertainty() -> None:
    tau, beta = 200.0, 0.8
    true_t50 = tau * math.log(2.0) ** (1 / beta)  # 126.3 h
    rng = np.random.default_rng(7)
    t = np.linspace(0.0, 90.0 * H, 30001)  # stops at L/L0 ~ 0.6
    lum = 300.0 * stretched(t / H, tau, beta) * (1 + 0.01 * rng.standard_normal(t.size))
    res = analyze_lifetime(t, lum)
    assert res.t50_h is None
    d = res.to_dict()
    assert d["t50_h"] is None and d["t80_h"] is not None
    ex, err = res.extrapolated["t50_h"], res.extrapolated["t50_h_err"]
    assert ex is not None and err is not None and err > 0
    # the error includes L0's own (it was left out, and the errors were 15-60x too small)
    assert abs(ex - true_t50) < 4 * err
    assert res.best("t50_h") == (ex, True)
    json.dumps(d, allow_nan=False)


def test_l0_is_the_value_at_switch_on_despite_spikes_and_brightening() -> None:
    t = np.arange(0.0, 3600.0, 1.0)
    lum = np.full(t.size, 100.0)
    lum[5] = 1e6  # a spike in the first minute does not move L0
    lum[30] = 0.0
    assert l0_of(t, lum) == pytest.approx(100.0)
    # a device brightening by 20 % with a 10-minute time constant: L0 is its value at switch-on
    lum2 = 100.0 * (1.0 + 0.2 * -np.expm1(-t / 600.0))
    lum2[10] = 5e5
    assert l0_of(t, lum2) == pytest.approx(100.0, rel=1e-5)
    # sparse logging: fewer than 3 samples in the window -> the first 3 samples
    t2 = np.array([0.0, 120.0, 240.0, 360.0])
    assert l0_of(t2, np.array([10.0, 9.0, 8.0, 1.0])) == pytest.approx(10.0)


def test_crossing_is_interpolated_at_the_first_crossing() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 0.8, 1.0, 0.4, 0.2])
    assert crossing_time(t, y, 0.9) == pytest.approx(0.5)
    assert crossing_time(t, y, 0.5) == pytest.approx(2 + 0.5 / 0.6)
    assert crossing_time(t, y, 0.1) is None


def test_bad_traces_are_rejected() -> None:
    with pytest.raises(ValueError, match="L0"):
        analyze_lifetime([0.0, 1.0, 2.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="2 finite"):
        analyze_lifetime([0.0], [1.0])
    assert fit_stretched_exponential([1.0, 2.0], [1.0, 0.9]) is None


def test_acceleration_law_recovers_a_known_exponent() -> None:
    n_true, t_at_100 = 1.8, 5000.0
    l0 = np.array([200.0, 500.0, 1000.0, 2000.0, 5000.0])
    t50 = t_at_100 * (100.0 / l0) ** n_true
    fit = fit_acceleration(l0, t50)
    assert fit.n == pytest.approx(n_true, abs=1e-9)
    assert fit.t_ref_h == pytest.approx(t_at_100, rel=1e-9)
    assert fit.predict(1000.0) == pytest.approx(t50[2], rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(n_true=st.floats(1.2, 2.5), seed=st.integers(0, 10_000))
def test_acceleration_fit_with_scatter_is_consistent(n_true: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    l0 = np.repeat([300.0, 1000.0, 3000.0], 3)
    sigma = 0.05  # the scatter of ln T50
    t50 = 1e4 * (100.0 / l0) ** n_true * np.exp(sigma * rng.standard_normal(l0.size))
    fit = fit_acceleration(l0, t50, reference_cd_m2=100.0)
    assert fit.n_err is not None and fit.ci_low_h is not None and fit.ci_high_h is not None
    # against the known scatter, not the fit's own estimate of it: with 7 degrees of freedom
    # (n - n_true)/n_err is Student-t, whose tails broke "< 6 n_err" about once in 2,000 draws
    lx = np.log(l0 / 100.0)
    se_true = sigma / math.sqrt(float(np.sum((lx - lx.mean()) ** 2)))  # OLS slope error
    assert abs(fit.n - n_true) < 6 * se_true  # fails with p ~ 2e-9
    # the reported error estimates se_true: (n_err/se_true)² is chi²(7)/7, outside [0.1², 3²]
    # with p < 1e-6
    assert 0.1 * se_true < fit.n_err < 3 * se_true
    assert fit.ci_low_h < fit.t_ref_h < fit.ci_high_h
    assert fit.dof == l0.size - 2


def test_acceleration_needs_three_distinct_l0_or_a_given_n() -> None:
    with pytest.raises(ValueError, match="distinct L0"):
        fit_acceleration([1000.0, 1000.0, 2000.0], [10.0, 11.0, 3.0])
    fit = fit_acceleration([1000.0, 1000.0, 2000.0], [10.0, 11.0, 3.0], n=1.7)
    assert not fit.n_fitted and fit.n == 1.7
    # ln T_ref = mean(ln T_i + n ln(L0_i / 100))
    expected = math.exp(np.mean(np.log([10.0, 11.0, 3.0]) + 1.7 * np.log(np.array([10.0, 10.0, 20.0]))))
    assert fit.t_ref_h == pytest.approx(expected)
    assert fit.ci_low_h is not None and fit.ci_low_h < fit.t_ref_h < fit.ci_high_h  # type: ignore[operator]
    single = fit_acceleration([1000.0], [10.0], n=2.0)
    assert single.t_ref_h == pytest.approx(1000.0) and single.ci_low_h is None
    with pytest.raises(ValueError, match="> 0"):
        fit_acceleration([1000.0, -1.0, 2.0], [1.0, 1.0, 1.0])
