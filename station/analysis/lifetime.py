"""Operational lifetime: L0, peak, Tx, stretched-exponential fit and the acceleration law.

Conventions (see ``docs/measurement.md``):

* ``t_s`` is seconds since the constant drive was switched on; results are in hours.
* L0 is the median luminance of the samples in the first ``l0_window_s`` seconds (default 60 s)
  after the first sample; if fewer than ``l0_min_samples`` (3) fall in it, the median of the first
  ``l0_min_samples`` samples.
* The trace is reduced to at most ``bins`` (default 1000) equal-count bins, each represented by the
  median time and median luminance of its samples (robust to spikes, and it keeps log-spaced
  logging intact). Tx, the peak and the fit are taken on that trace; traces with no more samples
  than ``bins`` are used as they are.
* L_peak is the largest binned luminance, or L0 if none exceeds it (then t_peak is the first
  sample's time). "Positive aging" means L_peak > L0.
* Tx (x = 95, 90, 80, 50 %) is the first time the trace falls to x*L0, linearly interpolated
  between the two samples that bracket that first crossing; ``tx_from_peak`` the same with
  x*L_peak, searched from t_peak on. Both are times since the drive was switched on.
* Fit: L/L0 = A*exp(-(t/tau)^beta) on the binned trace from t_peak on (the decaying part),
  each bin weighted by its median's standard error estimated from the bin's own scatter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "LEVELS",
    "AccelerationFit",
    "LifetimeResult",
    "StretchedExpFit",
    "analyze_lifetime",
    "binned_trace",
    "binned_trace_with_error",
    "crossing_time",
    "fit_acceleration",
    "fit_stretched_exponential",
    "l0_of",
    "stretched_exponential",
]

FloatArray = npt.NDArray[np.float64]

#: The Tx levels reported, as fractions.
LEVELS: tuple[tuple[str, float], ...] = (("t95", 0.95), ("t90", 0.90), ("t80", 0.80), ("t50", 0.50))


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def stretched_exponential(t: npt.ArrayLike, a: float, tau: float, beta: float) -> FloatArray:
    """A*exp(-(t/tau)^beta), t >= 0."""
    tt = np.maximum(np.asarray(t, dtype=float), 0.0)
    return a * np.exp(-np.power(tt / tau, beta))


L0_WINDOW_S = 60.0
"""L0 comes from the samples of the first minute (at least L0_MIN_SAMPLES): the live stop rule
and the final analysis use the same window and the same estimator (:func:`l0_of`)."""
L0_MIN_SAMPLES = 3


def l0_of(t_s: FloatArray, lum: FloatArray, window_s: float = L0_WINDOW_S,
          min_samples: int = L0_MIN_SAMPLES) -> float:
    """Initial luminance, the luminance at switch-on (the first sample's time).

    A robust straight line (Theil-Sen: the median of pairwise slopes, as scipy.stats.theilslopes)
    through the samples of the first ``window_s`` seconds after the first sample - or the first
    ``min_samples`` samples if fewer fall in the window - evaluated at the first sample's time.
    Robust to a spike or dropout in the window like a median, but without a median's bias when
    the device is already brightening or dimming during the window (fast positive aging).
    At most 200 samples are used."""
    in_window = int(np.searchsorted(t_s, t_s[0] + window_s, side="right"))
    n = min(max(in_window, min(min_samples, t_s.size)), 200)
    if n < 3 or np.ptp(t_s[:n]) <= 0:
        return float(np.median(lum[:n]))
    x = t_s[:n] - t_s[0]
    # Theil-Sen slope as scipy.stats.theilslopes computes it (the median of the slopes of all
    # pairs with distinct times), in numpy: the aging procedure calls this live, and importing
    # scipy.stats there would stall the event loop for half a second
    dx = x[:, None] - x[None, :]
    dy = lum[:n][:, None] - lum[:n][None, :]
    pos = dx > 0
    slope = float(np.median(dy[pos] / dx[pos]))
    return float(np.median(lum[:n] - slope * x))


def binned_trace(t: FloatArray, y: FloatArray, bins: int) -> tuple[FloatArray, FloatArray]:
    """Reduce to at most ``bins`` equal-count bins (median t, median y); the remainder samples
    form one more bin. No-op when there are no more samples than bins."""
    tb, yb, _ = binned_trace_with_error(t, y, bins)
    return tb, yb


def binned_trace_with_error(
    t: FloatArray, y: FloatArray, bins: int
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """:func:`binned_trace` plus each bin median's standard error, estimated robustly from the
    bin's own scatter (1.4826*MAD*sqrt(pi/2)/sqrt(k)); None when not binned."""
    n = t.size
    if bins <= 0 or n <= bins:
        return t, y, None
    k = n // bins
    m = k * bins
    tb = np.median(t[:m].reshape(bins, k), axis=1)
    yk = y[:m].reshape(bins, k)
    yb = np.median(yk, axis=1)
    mad = np.median(np.abs(yk - yb[:, None]), axis=1)
    eb = 1.4826 * math.sqrt(math.pi / 2) * mad / math.sqrt(k)
    if m < n:
        rest = y[m:]
        r_med = float(np.median(rest))
        tb = np.append(tb, np.median(t[m:]))
        yb = np.append(yb, r_med)
        r_err = (
            1.4826 * math.sqrt(math.pi / 2) * float(np.median(np.abs(rest - r_med))) / math.sqrt(rest.size)
        )
        eb = np.append(eb, r_err if rest.size >= 3 else float(np.median(eb)))
    return tb, yb, eb


def crossing_time(t: FloatArray, y: FloatArray, level: float, start: int = 0) -> float | None:
    """First time at or after index ``start`` where y falls to ``level``, linearly interpolated
    between the bracketing samples; None if it never does (or t[start] if it starts there)."""
    below = np.flatnonzero(y[start:] <= level)
    if below.size == 0:
        return None
    i = int(below[0]) + start
    if i == start:
        return float(t[i])
    y0, y1 = float(y[i - 1]), float(y[i])
    t0, t1 = float(t[i - 1]), float(t[i])
    if y0 == y1:
        return t1
    return t0 + (y0 - level) * (t1 - t0) / (y0 - y1)


@dataclass(frozen=True)
class StretchedExpFit:
    """L/L0 = a*exp(-(t/tau_h)^beta), with 1-sigma standard errors from the covariance."""

    a: float
    tau_h: float
    beta: float
    a_err: float
    tau_err: float
    beta_err: float
    covariance: tuple[tuple[float, ...], ...]
    t_start_h: float
    n_points: int
    rms_residual: float

    def predict(self, t_h: npt.ArrayLike) -> FloatArray:
        return stretched_exponential(t_h, self.a, self.tau_h, self.beta)

    def time_to(self, level_rel: float) -> tuple[float | None, float | None]:
        """Time (h) at which the model reaches ``level_rel`` (relative to L0), and its 1-sigma
        error propagated from the parameter covariance (delta method)."""
        if not (0 < level_rel < self.a):
            return None, None
        u = math.log(self.a / level_rel)
        t = self.tau_h * u ** (1.0 / self.beta)
        grad = np.array(
            [
                t / (self.beta * u * self.a),  # d t / d a
                t / self.tau_h,  # d t / d tau
                -t * math.log(u) / (self.beta * self.beta),  # d t / d beta
            ]
        )
        cov = np.asarray(self.covariance, dtype=float)
        var = float(grad @ cov @ grad)
        err = math.sqrt(var) if var >= 0 and math.isfinite(var) else math.nan
        return t, err

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "tau_h": self.tau_h,
            "beta": self.beta,
            "a_err": _num(self.a_err),
            "tau_err": _num(self.tau_err),
            "beta_err": _num(self.beta_err),
            "t_start_h": self.t_start_h,
            "n_points": self.n_points,
            "rms_residual": self.rms_residual,
            "model": "L/L0 = a*exp(-(t/tau_h)^beta)",
        }


def _initial_guess(t: FloatArray, y: FloatArray) -> tuple[float, float, float]:
    a0 = float(np.max(y)) * 1.001
    ok = (t > 0) & (y > 0) & (y < a0 * 0.999)
    beta0, tau0 = 1.0, float(t[-1]) if t[-1] > 0 else 1.0
    if np.count_nonzero(ok) >= 2:
        z = np.log(-np.log(y[ok] / a0))
        lt = np.log(t[ok])
        if np.ptp(lt) > 0:
            slope, icept = np.polyfit(lt, z, 1)
            if math.isfinite(slope) and slope > 0:
                beta0 = float(np.clip(slope, 0.1, 3.0))
                # a nearly flat record (a run of seconds) gives a tiny slope: exp() would
                # overflow; the clip below bounds tau0 anyway
                tau0 = float(math.exp(min(-icept / slope, 700.0)))
    if not (math.isfinite(tau0) and tau0 > 0):
        tau0 = max(float(t[-1]), 1e-6)
    tau0 = float(np.clip(tau0, 1e-6, 1e9))
    return a0, tau0, beta0


def fit_stretched_exponential(
    t_h: npt.ArrayLike, y_rel: npt.ArrayLike, sigma: npt.ArrayLike | None = None
) -> StretchedExpFit | None:
    """Least-squares fit of a*exp(-(t/tau)^beta) to (t_h, y_rel) (scipy ``curve_fit``, trust
    region with bounds a>0, tau>0, 0.05<=beta<=10), weighted by 1/sigma^2 when per-point errors
    ``sigma`` are given (e.g. the binned medians' standard errors; non-positive ones are raised to
    a tenth of the median). Standard errors are the square roots of the covariance diagonal,
    scaled by the reduced chi-square (``absolute_sigma=False``). Returns None if there are fewer
    than 4 points or the fit fails."""
    t = np.asarray(t_h, dtype=float)
    y = np.asarray(y_rel, dtype=float)
    sg = None if sigma is None else np.asarray(sigma, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    if sg is not None:
        ok &= np.isfinite(sg)
    t, y = t[ok], y[ok]
    if sg is not None:
        sg = sg[ok]
        pos = sg > 0
        sg = np.maximum(sg, 0.1 * float(np.median(sg[pos]))) if pos.any() else None
    if t.size < 4 or not np.any(y > 0):
        return None
    from scipy import optimize  # deferred: keeps `import station.analysis` light

    p0 = _initial_guess(t, y)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            popt, pcov = optimize.curve_fit(
                stretched_exponential,
                t,
                y,
                p0=p0,
                sigma=sg,
                absolute_sigma=False,
                bounds=([1e-9, 1e-9, 0.05], [np.inf, np.inf, 10.0]),
                method="trf",
                x_scale="jac",
                maxfev=2000,
            )
    except (RuntimeError, ValueError):
        return None
    a, tau, beta = (float(v) for v in popt)
    resid = y - stretched_exponential(t, a, tau, beta)
    errs = np.sqrt(np.clip(np.diag(pcov), 0, np.inf)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    return StretchedExpFit(
        a=a,
        tau_h=tau,
        beta=beta,
        a_err=float(errs[0]),
        tau_err=float(errs[1]),
        beta_err=float(errs[2]),
        covariance=tuple(tuple(float(v) for v in row) for row in np.asarray(pcov)),
        t_start_h=float(t[0]),
        n_points=int(t.size),
        rms_residual=float(np.sqrt(np.mean(resid * resid))),
    )


@dataclass(frozen=True)
class LifetimeResult:
    l0_cd_m2: float
    l0_method: str
    l_peak_cd_m2: float
    t_peak_h: float
    positive_aging: bool
    duration_h: float
    final_l_rel: float
    tx_h: dict[str, float | None]
    tx_from_peak_h: dict[str, float | None]
    fit: StretchedExpFit | None
    extrapolated: dict[str, float | None] = field(default_factory=dict)

    @property
    def t95_h(self) -> float | None:
        return self.tx_h["t95"]

    @property
    def t90_h(self) -> float | None:
        return self.tx_h["t90"]

    @property
    def t80_h(self) -> float | None:
        return self.tx_h["t80"]

    @property
    def t50_h(self) -> float | None:
        return self.tx_h["t50"]

    @property
    def t50_from_peak_h(self) -> float | None:
        return self.tx_from_peak_h["t50"]

    def best(self, name: str = "t50_h") -> tuple[float | None, bool]:
        """The measured Tx if reached, else the fit's extrapolation: ``(value_h, extrapolated)``."""
        measured = self.to_dict().get(name)
        if measured is not None:
            return float(measured), False
        ex = self.extrapolated.get(name)
        return (float(ex), True) if ex is not None else (None, True)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "l0_cd_m2": _num(self.l0_cd_m2),
            "l0_method": self.l0_method,
            "l_peak_cd_m2": _num(self.l_peak_cd_m2),
            "t_peak_h": _num(self.t_peak_h),
            "positive_aging": self.positive_aging,
            "duration_h": _num(self.duration_h),
            "final_l_rel": _num(self.final_l_rel),
        }
        for name, _ in LEVELS:
            d[f"{name}_h"] = _num(self.tx_h[name])
        for name, _ in LEVELS:
            d[f"{name}_from_peak_h"] = _num(self.tx_from_peak_h[name])
        d["extrapolated"] = {k: _num(v) for k, v in self.extrapolated.items()}
        d["fit"] = self.fit.to_dict() if self.fit is not None else None
        return d


def analyze_lifetime(
    t_s: npt.ArrayLike,
    luminance_cd_m2: npt.ArrayLike,
    *,
    l0_window_s: float = L0_WINDOW_S,
    l0_min_samples: int = L0_MIN_SAMPLES,
    bins: int = 1000,
    fit: bool = True,
) -> LifetimeResult:
    """Everything about one aging trace. Non-finite samples are dropped; the trace is sorted by time."""
    t = np.asarray(t_s, dtype=float).ravel()
    lum = np.asarray(luminance_cd_m2, dtype=float).ravel()
    if t.shape != lum.shape:
        raise ValueError(f"lifetime: {t.size} times but {lum.size} luminance values")
    ok = np.isfinite(t) & np.isfinite(lum)
    if not ok.all():
        t, lum = t[ok], lum[ok]
    if t.size < 2:
        raise ValueError("lifetime: need at least 2 finite samples")
    if np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, lum = t[order], lum[order]
    l0 = l0_of(t, lum, l0_window_s, l0_min_samples)
    if not l0 > 0:
        raise ValueError(f"lifetime: L0 = {l0:g} cd/m^2 is not positive (light off or dark not subtracted?)")
    l0_method = (
        f"Theil-Sen line through the samples of the first {l0_window_s:g} s (at least the first "
        f"{l0_min_samples}), evaluated at the first sample"
    )
    t_h = t / 3600.0
    tb, yb, eb = binned_trace_with_error(t_h, lum / l0, bins)

    ipk = int(np.argmax(yb))
    if yb[ipk] > 1.0:
        l_peak_rel, t_peak_h, start = float(yb[ipk]), float(tb[ipk]), ipk
    else:
        l_peak_rel, t_peak_h, start = 1.0, float(t_h[0]), 0

    tx = {name: crossing_time(tb, yb, x) for name, x in LEVELS}
    txp = {name: crossing_time(tb, yb, x * l_peak_rel, start) for name, x in LEVELS}

    sfit = None
    if fit:
        sfit = fit_stretched_exponential(tb[start:], yb[start:], None if eb is None else eb[start:])
    extrap: dict[str, float | None] = {}
    if sfit is not None:
        for name, x in LEVELS:
            v, e = sfit.time_to(x)
            extrap[f"{name}_h"], extrap[f"{name}_h_err"] = v, e
        for name, x in LEVELS:
            v, e = sfit.time_to(x * l_peak_rel)
            extrap[f"{name}_from_peak_h"], extrap[f"{name}_from_peak_h_err"] = v, e

    return LifetimeResult(
        l0_cd_m2=l0,
        l0_method=l0_method,
        l_peak_cd_m2=l_peak_rel * l0,
        t_peak_h=t_peak_h,
        positive_aging=l_peak_rel > 1.0,
        duration_h=float(t_h[-1]),
        final_l_rel=float(yb[-1]),
        tx_h=tx,
        tx_from_peak_h=txp,
        fit=sfit,
        extrapolated=extrap,
    )


# -- acceleration law --------------------------------------------------------------------------


@dataclass(frozen=True)
class AccelerationFit:
    """T(L) = T_ref * (L_ref / L)^n fitted in log-log space.

    With n fitted: ordinary least squares of ln T on ln L0 (slope -n); the confidence interval of
    T at the reference luminance is that of the regression's mean prediction (t-distribution,
    N-2 degrees of freedom). With n given: ln T_ref is the mean of ln T_i + n ln(L0_i/L_ref) and
    its interval uses the standard error of that mean (N-1 degrees of freedom); the
    uncertainty of the given n is not included."""

    n: float
    n_err: float | None
    n_fitted: bool
    reference_cd_m2: float
    t_ref_h: float
    ci_low_h: float | None
    ci_high_h: float | None
    confidence: float
    dof: int
    l0_cd_m2: tuple[float, ...]
    t_h: tuple[float, ...]
    metric: str = "t50_h"

    def predict(self, l_cd_m2: npt.ArrayLike) -> FloatArray:
        return self.t_ref_h * np.power(self.reference_cd_m2 / np.asarray(l_cd_m2, dtype=float), self.n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "n": self.n,
            "n_err": _num(self.n_err),
            "n_fitted": self.n_fitted,
            "reference_cd_m2": self.reference_cd_m2,
            f"{self.metric.removesuffix('_h')}_at_reference_h": self.t_ref_h,
            "t_ref_h": self.t_ref_h,
            "ci_low_h": _num(self.ci_low_h),
            "ci_high_h": _num(self.ci_high_h),
            "confidence": self.confidence,
            "dof": self.dof,
            "pixels": [{"l0_cd_m2": l0, "t_h": th} for l0, th in zip(self.l0_cd_m2, self.t_h, strict=True)],
        }


def fit_acceleration(
    l0_cd_m2: Sequence[float] | npt.ArrayLike,
    t_h: Sequence[float] | npt.ArrayLike,
    *,
    n: float | None = None,
    reference_cd_m2: float = 100.0,
    confidence: float = 0.95,
    metric: str = "t50_h",
    min_distinct_l0: int = 3,
) -> AccelerationFit:
    """Fit (or apply) the acceleration law and report T at ``reference_cd_m2`` with a
    ``confidence`` interval. Fitting n needs pixels aged at ``min_distinct_l0`` (3) or more
    distinct L0 (values within 1 % count as one)."""
    x = np.asarray(l0_cd_m2, dtype=float).ravel()
    y = np.asarray(t_h, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"acceleration: {x.size} L0 values but {y.size} lifetimes")
    if x.size == 0:
        raise ValueError("acceleration: no pixels")
    if np.any(~np.isfinite(x) | (x <= 0)) or np.any(~np.isfinite(y) | (y <= 0)):
        raise ValueError("acceleration: every L0 and lifetime must be finite and > 0")
    if not (0 < confidence < 1):
        raise ValueError("confidence must be between 0 and 1")
    lx = np.log(x / reference_cd_m2)
    ly = np.log(y)
    N = x.size
    if n is None:
        distinct = np.unique(np.round(np.log(x) / math.log(1.01)))
        if distinct.size < min_distinct_l0:
            raise ValueError(
                f"acceleration: fitting n needs pixels aged at >= {min_distinct_l0} distinct L0, "
                f"got {distinct.size}; give n (typically 1.5-2) instead"
            )
        xm = float(lx.mean())
        sxx = float(np.sum((lx - xm) ** 2))
        slope = float(np.sum((lx - xm) * (ly - ly.mean())) / sxx)
        icept = float(ly.mean() - slope * xm)  # ln T at L = reference
        dof = N - 2
        resid = ly - (icept + slope * lx)
        if dof > 0:
            s2 = float(np.sum(resid * resid)) / dof
            se_slope = math.sqrt(s2 / sxx)
            se_icept = math.sqrt(s2 * (1.0 / N + xm * xm / sxx))
        else:
            se_slope = se_icept = math.nan
        n_val, n_err, fitted = -slope, se_slope, True
    else:
        n_val = float(n)
        c = ly + n_val * lx
        icept = float(c.mean())
        dof = N - 1
        se_icept = float(np.std(c, ddof=1)) / math.sqrt(N) if N > 1 else math.nan
        n_err, fitted = None, False
    t_ref = math.exp(icept)
    lo = hi = None
    if dof > 0 and math.isfinite(se_icept):
        from scipy import stats

        q = float(stats.t.ppf(0.5 + confidence / 2.0, dof))
        lo, hi = math.exp(icept - q * se_icept), math.exp(icept + q * se_icept)
    return AccelerationFit(
        n=n_val,
        n_err=n_err,
        n_fitted=fitted,
        reference_cd_m2=float(reference_cd_m2),
        t_ref_h=t_ref,
        ci_low_h=lo,
        ci_high_h=hi,
        confidence=confidence,
        dof=dof,
        l0_cd_m2=tuple(float(v) for v in x),
        t_h=tuple(float(v) for v in y),
        metric=metric,
    )
