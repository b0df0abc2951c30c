"""The lifetime estimators on synthetic aging traces whose answers are known in closed form.

Devices: L(t) = L0 * B(t) * exp(-(t/tau)^beta) with beta from 0.3 to 1, without (B = 1) and
with positive aging, B(t) = 1 + a*(1 - exp(-t/tb)) (the simulator's model). The truths are
computed here from those formulas, never from the code under test: Tx of a pure stretched
exponential is tau*(ln(1/x))^(1/beta); with brightening, Tx (the first time L falls to x*L0)
and the peak come from the closed-form model by bisection / golden section.

* noise-free: L0 within 0.1 %, Tx (from L0 and from the peak) within 0.5 %, over the grid of
  beta, brightening and two sampling schemes (12 samples in the first minute then one a
  minute; one a minute);
* noisy (multiplicative, fixed seeds, >= 50 draws): the reported standard errors are
  calibrated, i.e. the rms of (estimate - truth)/sigma lies between 0.7 and 1.5, for L0, T95,
  T50 (measured and extrapolated) and the acceleration exponent n, and the estimates are
  unbiased within their scatter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from station.analysis.lifetime import analyze_lifetime, fit_acceleration

H = 3600.0
L0 = 700.0
LEVELS = (("t95", 0.95), ("t90", 0.90), ("t80", 0.80), ("t50", 0.50))


def rel_model(t_h: np.ndarray | float, tau: float, beta: float, a: float, tb: float) -> np.ndarray:
    t = np.asarray(t_h, dtype=float)
    rise = 1.0 + a * (1.0 - np.exp(-t / tb)) if a > 0 else np.ones_like(t)
    return rise * np.exp(-((t / tau) ** beta))


def bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    """f(lo) > 0 >= f(hi)."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def truths(tau: float, beta: float, a: float, tb: float) -> dict[str, float]:
    """Peak (relative to L0) and its time, Tx from L0 and from the peak, in hours."""
    def g(t: float) -> float:
        return float(rel_model(t, tau, beta, a, tb))

    out: dict[str, float] = {}
    if a > 0:
        ts = np.concatenate([[0.0], np.geomspace(1e-9, 1e6, 400001)])
        i = int(np.argmax(rel_model(ts, tau, beta, a, tb)))
        lo, hi = float(ts[max(i - 1, 0)]), float(ts[i + 1])
        for _ in range(200):  # golden section on the unimodal peak
            m1, m2 = lo + (hi - lo) * 0.382, hi - (hi - lo) * 0.382
            if g(m1) < g(m2):
                lo = m1
            else:
                hi = m2
        t_pk = 0.5 * (lo + hi)
        pk = g(t_pk)
    else:
        t_pk, pk = 0.0, 1.0
    out["peak"], out["t_peak"] = pk, t_pk
    grid = np.concatenate([[0.0], np.geomspace(1e-9, 1e6, 400001)])
    yg = rel_model(grid, tau, beta, a, tb)
    for name, x in LEVELS:
        if a == 0:
            out[name] = tau * math.log(1.0 / x) ** (1.0 / beta)  # closed form
            out[name + "_from_peak"] = out[name]
            continue
        for key, level, t_from in ((name, x, 0.0), (name + "_from_peak", x * pk, t_pk)):
            j = int(np.flatnonzero((yg <= level) & (grid >= t_from))[0])
            def above(t: float, lv: float = level) -> float:
                return g(t) - lv

            out[key] = bisect(above, float(grid[j - 1]), float(grid[j]))
    return out


def sample_times(scheme: str, t_end_h: float, dt_s: float = 60.0) -> np.ndarray:
    if scheme == "12 in the first minute":
        return np.concatenate([np.arange(0.0, 60.0, 5.0), np.arange(60.0, t_end_h * H, dt_s)])
    return np.arange(0.0, t_end_h * H, dt_s)


def device(beta: float, brightening: tuple[float, float], t50: float = 100.0
           ) -> tuple[float, float, float, float]:
    """(tau, beta, a, tb) of a device whose pure stretched exponential has T50 = ``t50``;
    ``brightening`` = (a, tb as a fraction of t50)."""
    tau = t50 / math.log(2.0) ** (1.0 / beta)
    a, tb_frac = brightening
    return tau, beta, a, max(tb_frac * t50, 1e-9)


BETAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BRIGHTENING = {"none": (0.0, 1.0), "20 % over 5 h": (0.2, 0.05), "25 % over 18 min": (0.25, 0.003)}
SCHEMES = ("12 in the first minute", "one a minute")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bright", list(BRIGHTENING))
@pytest.mark.parametrize("beta", BETAS)
def test_noise_free_l0_and_tx_are_unbiased(beta: float, bright: str, scheme: str) -> None:
    """The issue's case (beta = 0.6, 12 samples in the first minute) had L0 -0.67 % and T50
    +1.6 % with a Theil-Sen line through the first minute."""
    tau, beta, a, tb = device(beta, BRIGHTENING[bright])
    tr = truths(tau, beta, a, tb)
    t = sample_times(scheme, 1.6 * tr["t50"])
    res = analyze_lifetime(t, L0 * rel_model(t / H, tau, beta, a, tb))
    assert res.l0_cd_m2 == pytest.approx(L0, rel=1e-3)
    assert res.l_peak_cd_m2 == pytest.approx(L0 * tr["peak"], rel=1e-3)
    assert res.positive_aging == (a > 0 and tr["peak"] > 1.0)
    for name, _ in LEVELS:
        assert res.tx_h[name] == pytest.approx(tr[name], rel=5e-3), name
        assert res.tx_from_peak_h[name] == pytest.approx(tr[name + "_from_peak"], rel=5e-3), name


@pytest.mark.parametrize("bright", list(BRIGHTENING))
@pytest.mark.parametrize("beta", BETAS)
def test_noise_free_short_lived_devices_are_unbiased(beta: float, bright: str) -> None:
    """T50 = 3.4 h (the simulated DBSA pixel at 1 mA/cm2): the first minute curves most. The
    issue's case, beta = 0.6 with 12 samples in the first minute, gave L0 -0.64 % and T50
    +1.55 % with the Theil-Sen line."""
    tau, beta, a, tb = device(beta, BRIGHTENING[bright], t50=3.4)
    tr = truths(tau, beta, a, tb)
    t = sample_times("12 in the first minute", 1.6 * tr["t50"], dt_s=20.0)
    res = analyze_lifetime(t, L0 * rel_model(t / H, tau, beta, a, tb))
    assert res.l0_cd_m2 == pytest.approx(L0, rel=1e-3)
    for name, _ in LEVELS:
        if tr[name] < t[3] / H:
            # before the fourth sample (T95 of beta = 0.3: 2 s): not measurable to 0.5 %
            got = res.tx_h[name]
            assert got is not None and 0 <= got <= t[3] / H
            continue
        assert res.tx_h[name] == pytest.approx(tr[name], rel=5e-3), name
        assert res.tx_from_peak_h[name] == pytest.approx(tr[name + "_from_peak"], rel=5e-3), name


def test_noise_free_acceleration_exponent_is_unbiased() -> None:
    """Pixels at 300, 1000 and 3000 cd/m2 whose T50 follow n = 1.7 exactly (beta = 0.6, 12
    samples in the first minute): n was 1.6985 +- 0.0006 with the Theil-Sen L0."""
    n_true, t_ref = 1.7, 3000.0
    l0s: list[float] = []
    t50s: list[float] = []
    for l0 in (300.0, 1000.0, 3000.0):
        t50 = t_ref * (100.0 / l0) ** n_true
        tau, beta, _, _ = device(0.6, (0.0, 1.0), t50)
        t = sample_times("12 in the first minute", 1.2 * t50, dt_s=max(60.0, t50 * H / 2000))
        res = analyze_lifetime(t, l0 * rel_model(t / H, tau, beta, 0.0, 1.0), fit=False)
        assert res.t50_h is not None
        l0s.append(res.l0_cd_m2)
        t50s.append(res.t50_h)
    fit = fit_acceleration(l0s, t50s)
    assert fit.n == pytest.approx(n_true, abs=1e-3)


def z_stats(est: list[float], err: list[float], truth: float) -> tuple[float, float]:
    """rms and mean of (estimate - truth)/sigma."""
    z = (np.asarray(est) - truth) / np.asarray(err)
    return float(np.sqrt(np.mean(z * z))), float(np.mean(z))


NOISY = {
    # beta, brightening, scheme, sample interval (s), noise, trace length (x T50), t50 (h);
    # one sample every 5 min (the first device: 12 in the first minute, then every 5 min)
    "beta 0.6, 1 % noise": (0.6, (0.0, 1.0), "12 in the first minute", 300.0, 0.01, 1.3, 100.0),
    "beta 0.7, 20 % brightening, 1 % noise": (0.7, (0.2, 0.05), "regular", 300.0, 0.01, 1.3, 100.0),
    "beta 1, 0.5 % noise, stops at 0.7 T50": (1.0, (0.0, 1.0), "regular", 300.0, 0.005, 0.7, 100.0),
}


@pytest.mark.parametrize("case", list(NOISY))
def test_noisy_errors_are_calibrated_and_estimates_unbiased(case: str) -> None:
    beta, bright, scheme, dt_s, noise, length, t50 = NOISY[case]
    tau, beta, a, tb = device(beta, bright, t50)
    tr = truths(tau, beta, a, tb)
    t = sample_times(scheme, length * tr["t50"], dt_s)
    clean = L0 * rel_model(t / H, tau, beta, a, tb)
    draws: dict[str, tuple[list[float], list[float], float]] = {
        k: ([], [], v) for k, v in (("l0", L0), ("t95", tr["t95"]), ("t50", tr["t50"]),
                                    ("t50 extrapolated", tr["t50"]), ("t50 from peak", tr["t50_from_peak"]))
    }
    for seed in range(50):
        rng = np.random.default_rng(seed)
        res = analyze_lifetime(t, clean * (1.0 + noise * rng.standard_normal(t.size)))
        d = res.to_dict()
        got = {
            "l0": (d["l0_cd_m2"], d["l0_cd_m2_err"]),
            "t95": (d["t95_h"], d["t95_h_err"]),
            "t50": (d["t50_h"], d["t50_h_err"]),
            "t50 extrapolated": (d["extrapolated"]["t50_h"], d["extrapolated"]["t50_h_err"]),
            "t50 from peak": (d["t50_from_peak_h"], d["t50_from_peak_h_err"]),
        }
        for k, (v, e) in got.items():
            if v is None:
                continue
            assert e is not None and e > 0, (k, seed)
            draws[k][0].append(v)
            draws[k][1].append(e)
    checked = 0
    for k, (est, err, truth) in draws.items():
        if length < 1.0 and k in ("t50", "t50 from peak"):
            assert not est  # not reached: no measured value
            continue
        if a == 0 and k == "t50 from peak":
            continue  # the same as from L0
        assert len(est) == 50, k
        rms, mean = z_stats(est, err, truth)
        rel = np.asarray(est) / truth - 1.0
        # unbiased: within 3 standard errors of the mean of 50 draws
        assert abs(float(np.mean(rel))) < 3 * float(np.std(rel)) / math.sqrt(50), k
        if k == "t50 from peak":
            # the peak's error is less well known (a quadratic vertex, fewer points): within 2
            assert rms <= 2.0, (k, rms)
            continue
        assert 0.7 <= rms <= 1.5, (k, rms)
        assert abs(mean) < 0.5, (k, mean)
        checked += 1
    assert checked >= 3


def test_acceleration_exponent_error_is_calibrated() -> None:
    """50 draws of 9 pixels (3 at each of 300, 1000, 3000 cd/m2), 1 % noise: n's reported
    error (the regression's, from its scatter with 7 degrees of freedom) covers the truth."""
    n_true, t_ref = 1.7, 3000.0
    l0_levels = np.repeat([300.0, 1000.0, 3000.0], 3)
    z, ns = [], []
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        l0s: list[float] = []
        t50s: list[float] = []
        for l0 in l0_levels:
            t50 = t_ref * (100.0 / l0) ** n_true
            tau = t50 / math.log(2.0) ** (1.0 / 0.6)
            t = np.arange(0.0, 1.2 * t50 * H, t50 * H / 500)
            lum = l0 * rel_model(t / H, tau, 0.6, 0.0, 1.0) * (1.0 + 0.01 * rng.standard_normal(t.size))
            res = analyze_lifetime(t, lum, fit=False)
            assert res.t50_h is not None
            l0s.append(res.l0_cd_m2)
            t50s.append(res.t50_h)
        fit = fit_acceleration(l0s, t50s)
        assert fit.n_err is not None
        z.append((fit.n - n_true) / fit.n_err)
        ns.append(fit.n)
    rms = float(np.sqrt(np.mean(np.square(z))))
    assert 0.7 <= rms <= 1.5, rms
    assert abs(float(np.mean(ns)) - n_true) < 3 * float(np.std(ns)) / math.sqrt(len(ns))


def test_acceleration_exponent_from_three_pixels_with_their_errors_is_calibrated() -> None:
    """One pixel at each of 300, 1000, 3000 cd/m2 (1 degree of freedom: the regression's own
    scatter is Cauchy-tailed as an error): with the pixels' T50 and L0 errors and T50's
    sensitivity to L0, the weighted fit's error covers the truth."""
    n_true, t_ref = 1.7, 3000.0
    z, ns = [], []
    for seed in range(50):
        rng = np.random.default_rng(2000 + seed)
        l0s: list[float] = []
        t50s: list[float] = []
        errs: list[float] = []
        l0_errs: list[float] = []
        sens: list[float] = []
        for l0 in (300.0, 1000.0, 3000.0):
            t50 = t_ref * (100.0 / l0) ** n_true
            tau = t50 / math.log(2.0) ** (1.0 / 0.6)
            t = np.arange(0.0, 1.2 * t50 * H, t50 * H / 500)
            lum = l0 * rel_model(t / H, tau, 0.6, 0.0, 1.0) * (1.0 + 0.01 * rng.standard_normal(t.size))
            res = analyze_lifetime(t, lum, fit=False)
            t50_h, err, g = res.t50_h, res.tx_err_h["t50"], res.tx_l0_sensitivity["t50"]
            assert t50_h is not None and err is not None and g is not None
            l0s.append(res.l0_cd_m2)
            l0_errs.append(res.l0_err_cd_m2)
            t50s.append(t50_h)
            errs.append(err)
            sens.append(g)
        fit = fit_acceleration(l0s, t50s, t_err_h=errs, l0_err_cd_m2=l0_errs, dlnt_dlnl0=sens)
        assert fit.n_err is not None
        z.append((fit.n - n_true) / fit.n_err)
        ns.append(fit.n)
    rms = float(np.sqrt(np.mean(np.square(z))))
    assert 0.7 <= rms <= 1.5, rms
    assert abs(float(np.mean(ns)) - n_true) < 3 * float(np.std(ns)) / math.sqrt(len(ns))
