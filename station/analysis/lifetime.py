"""Operational lifetime: L0, peak, Tx, stretched-exponential fit and the acceleration law.

Conventions (see ``docs/measurement.md``, which also says what was proven on synthetic data):

* ``t_s`` is seconds since the constant drive was switched on; results are in hours.
* L0 (:func:`estimate_l0`, :func:`l0_of`) is the switch-on value of an early-trace model fitted
  to ln L: a stretched exponential, or the same times a saturating rise (positive aging), the
  one with the lower BIC; its standard error from the fit. The fit covers the trace until it
  first falls to 97 % of its first value (the first minute sample by sample).
* The trace is reduced to at most ``bins`` (default 1000) points: the first ``bins // 10``
  samples as they are, the rest as equal-count bins (median t, median L, the median's standard
  error), at least 3 samples a bin (:func:`analysis_trace`).
* L_peak is the bias-corrected vertex of a quadratic in ln t around the peak; "positive aging"
  needs the early trace to need the rise and the peak to stand 3 sigma above L0.
* Tx (x = 95, 90, 80, 50 %) is the first crossing of x*L0, located on a running median and
  measured by a local stretched-exponential fit around it (no first-passage bias from noise);
  ``tx_from_peak`` the same with x*L_peak, from t_peak on. Both are times since the drive was
  switched on. Each has a standard error that includes L0's (or L_peak's).
* Fit: L/L0 = A*exp(-(t/tau)^beta) on the trace from t_peak on (the decaying part), weighted by
  the bins' errors; extrapolated Tx carry the fit's covariance and L0's error.
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
    "analysis_trace",
    "analyze_lifetime",
    "binned_trace",
    "binned_trace_with_error",
    "crossing_time",
    "estimate_l0",
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
"""The samples of the first minute (at least L0_MIN_SAMPLES) enter the L0 fit one by one; later
samples enter it reduced to bins. The live stop rule and the final analysis use the same
estimator (:func:`l0_of`)."""
L0_MIN_SAMPLES = 3
L0_FIT_BINS = 200
"""Samples after the first window enter the L0 fit as at most this many equal-count bins."""
L0_FIT_END_REL = 0.97
"""The L0 fit covers the trace until it first falls to this fraction of its first value."""
L0_BETA_MAX = 1.2
"""Upper bound of beta in the L0 fit: devices show 0.3-1; with a rise and a decay in the same
early trace, a free beta trades off against the rise (beta ~ 1.7 with a weaker, slower rise
fits 20 h of a beta = 0.7 device as well, with L0 1 % lower)."""
L0_FIT_BLOCK = 16
L0_FIT_MIN_SAMPLES = 30


@dataclass(frozen=True)
class L0Estimate:
    """L0 and its 1-sigma standard error; ``model`` names the early-trace model it came from,
    ``params`` its parameters (times in seconds from the first sample)."""

    value: float
    err: float
    model: str
    params: tuple[float, ...] = ()
    t_end_s: float = math.nan  # the fit covers [t_first, t_end_s]

    def predict_rel(self, dt_s: npt.ArrayLike) -> FloatArray:
        """The fitted early model relative to L0, at ``dt_s`` seconds after the first sample."""
        return np.exp(_early_log_model(np.asarray(dt_s, dtype=float), (0.0, *self.params[1:]), self.model))


def _early_log_model(dt: FloatArray, p: Sequence[float] | FloatArray, model: str) -> FloatArray:
    """ln L of the early-trace models: ``stretched`` ln L0 - (t/tau)^beta, ``brightening``
    ln L0 + ln(1 + a(1 - exp(-t/tb))) - (t/tau)^beta (p = ln L0, ln tau, beta[, a, ln tb])."""
    x = np.maximum(dt, 0.0)
    out = p[0] - np.power(x * math.exp(-p[1]), p[2])
    if model == "brightening":
        out = out + np.log1p(p[3] * -np.expm1(-x * math.exp(-p[4])))
    return out


def _early_log_jac(dt: FloatArray, p: Sequence[float] | FloatArray, model: str) -> FloatArray:
    """Jacobian of :func:`_early_log_model` with respect to its parameters."""
    x = np.maximum(dt, 0.0)
    pos = x > 0
    lx = np.where(pos, np.log(np.where(pos, x, 1.0)), 0.0) - p[1]
    v = np.where(pos, np.exp(np.clip(p[2] * lx, -700, 700)), 0.0)  # (t/tau)^beta
    cols = [np.ones_like(x), p[2] * v, -v * lx]
    if model == "brightening":
        r = x * math.exp(-p[4])  # t/tb
        e = np.exp(-r)
        g = -np.expm1(-r)
        b = 1.0 + p[3] * g
        cols += [g / b, -p[3] * e * r / b]
    return np.column_stack(cols)


def _l0_segment_end(t_s: FloatArray, lum: FloatArray, window_s: float) -> int:
    """Number of samples the L0 fit may use: up to the end of the first block of 16 samples
    whose median falls to L0_FIT_END_REL of the median of the first three (at least the first
    ``window_s`` and L0_FIT_MIN_SAMPLES samples; all samples if the trace never falls that far).
    Fixed blocks from the start: samples recorded later never change the segment once it ends,
    so a run stopped at T95 and its export (which holds samples past the stop) give one L0."""
    n = t_s.size
    pos = lum[:3] > 0
    if not pos.any():
        return n
    first = float(np.median(lum[:3][pos]))
    m = (n // L0_FIT_BLOCK) * L0_FIT_BLOCK
    if m == 0:
        return n
    med = np.median(lum[:m].reshape(-1, L0_FIT_BLOCK), axis=1)
    below = np.flatnonzero(med <= L0_FIT_END_REL * first)
    if below.size == 0:
        return n
    end = (int(below[0]) + 1) * L0_FIT_BLOCK
    end = max(end, int(np.searchsorted(t_s, t_s[0] + window_s, side="right")), L0_FIT_MIN_SAMPLES)
    return min(end, n)


def _l0_fit_data(t_s: FloatArray, lum: FloatArray, window_s: float, min_samples: int,
                 t_max: float = math.inf) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(dt, ln L, weight) for the L0 fit on the samples given (the segment): those of the first
    ``window_s`` one by one (weight 1; spikes and dropouts left out), later ones as at most
    L0_FIT_BINS equal-count bins (median t, median ln L, weight 2k/pi: a median of k samples with
    Gaussian scatter has pi/2 times the variance of their mean), up to ``t_max`` after the first.
    Non-positive luminance is left out (no logarithm)."""
    pos = (lum > 0) & (t_s - t_s[0] <= t_max)
    t, y = t_s[pos], lum[pos]
    dt = t - t_s[0]
    ly = np.log(y)
    n_win = int(np.searchsorted(dt, window_s, side="right"))
    n_win = min(max(n_win, min_samples), dt.size)
    d0, l0_, w0 = dt[:n_win], ly[:n_win], np.ones(n_win)
    if n_win >= 5:  # spikes and dropouts: off the running median of 5 by > max(8 sigma, 5 %)
        idx = np.clip(np.arange(n_win)[:, None] + np.arange(-2, 3)[None, :], 0, n_win - 1)
        dev = l0_ - np.median(l0_[idx], axis=1)
        sig = 1.4826 * float(np.median(np.abs(dev - np.median(dev))))
        keep = np.abs(dev) <= max(8.0 * sig, 0.05)
        d0, l0_, w0 = d0[keep], l0_[keep], w0[keep]
    rest_t, rest_l = dt[n_win:], ly[n_win:]
    if rest_t.size == 0:
        return d0, l0_, w0
    k = max(1, rest_t.size // L0_FIT_BINS)
    m = (rest_t.size // k) * k
    bt = np.median(rest_t[:m].reshape(-1, k), axis=1)
    bl = np.median(rest_l[:m].reshape(-1, k), axis=1)
    bw = np.full(bt.size, 2.0 * k / math.pi if k > 1 else 1.0)
    return np.concatenate([d0, bt]), np.concatenate([l0_, bl]), np.concatenate([w0, bw])


def _fit_early(dt: FloatArray, ly: FloatArray, w: FloatArray, model: str,
               starts: list[list[float]], bounds: tuple[list[float], list[float]]
               ) -> tuple[FloatArray, float, FloatArray] | None:
    """Weighted least squares of ln L on the early model from several starts: (params, weighted
    SSR, Jacobian of the weighted residuals at the best solution)."""
    from scipy import optimize

    sw = np.sqrt(w)
    best = None
    for start in starts:
        p0 = np.clip(start, np.asarray(bounds[0]) + 1e-9, np.asarray(bounds[1]) - 1e-9)
        try:
            r = optimize.least_squares(lambda p: sw * (_early_log_model(dt, p, model) - ly), p0,
                                       jac=lambda p: sw[:, None] * _early_log_jac(dt, p, model),
                                       bounds=bounds, method="trf", x_scale="jac",
                                       xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=200)
        except (ValueError, np.linalg.LinAlgError):
            continue
        ssr = float(np.sum(r.fun * r.fun))
        if math.isfinite(ssr) and (best is None or ssr < best[1]):
            best = (r.x, ssr, r.jac)
    return best


def estimate_l0(t_s: FloatArray, lum: FloatArray, window_s: float = L0_WINDOW_S,
                min_samples: int = L0_MIN_SAMPLES) -> L0Estimate:
    """L0, the luminance at the first sample's time (switch-on), with its standard error.

    The early trace (the samples of the first ``window_s`` one by one, later ones binned, until
    the trace falls to 97 % of its first value, see :func:`_l0_segment_end`) is fitted in ln L
    with two models of the shapes devices show: a stretched exponential L0*exp(-(t/tau)^beta),
    and the same times a saturating rise (positive aging) 1 + a(1 - exp(-t/tb)). The model with
    the lower BIC is kept, and L0 is its value at the first sample; its standard error is the
    model's, from the Jacobian, scaled by the residual scatter. Both models are exact for such
    traces, so noise-free L0 carries no bias from the curvature of the first minutes (which
    biases a straight line or a median). A model that misfits (rms residual above 1.5 times
    the sample scatter, allowing for that estimate's own uncertainty, and 0.03 %) is fitted again
    over a quarter of the time, down to the first window (while a model can still be fitted).
    ``t_s`` must be sorted. With fewer than 5 usable samples: a Theil-Sen line."""
    t_s = np.asarray(t_s, dtype=float)
    lum = np.asarray(lum, dtype=float)
    if t_s.size == 0:
        return L0Estimate(math.nan, math.nan, "none")
    seg = _l0_segment_end(t_s, lum, window_s)
    t_s, lum = t_s[:seg], lum[:seg]
    # the scatter of one sample in ln L, from second differences (smooth trends cancel)
    pos = lum[:20000] > 0
    lr = np.log(lum[:20000][pos])
    d2 = np.diff(lr, 2)
    sigma_ln = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0) if d2.size >= 5 else 0.0
    # a model that does not describe the early trace (rms residual above 1.5 times the scatter,
    # and above 0.03 %) is fitted again over a quarter of the time, down to the first window
    t_max = math.inf
    # (the scatter is itself estimated from the segment's samples: allow for its uncertainty)
    tol = 1.5 + 4.0 / math.sqrt(max(d2.size, 1))
    try:
        prev = None
        while True:
            est, rms = _fit_l0_segment(t_s, lum, window_s, min_samples, t_max, sigma_ln)
            if not math.isfinite(rms):  # too few samples for a model: the last model's, if any
                return prev if prev is not None else est
            if rms <= max(tol * sigma_ln, 3e-4):
                return est
            prev = est
            t_max = est.t_end_s / 4.0
            if t_max <= window_s:
                est, rms = _fit_l0_segment(t_s, lum, window_s, min_samples, window_s, sigma_ln)
                return est if math.isfinite(rms) else prev
    except (ArithmeticError, ValueError, np.linalg.LinAlgError):  # a degenerate trace
        return _l0_theil_sen(t_s, lum, window_s, min_samples)


def _fit_l0_segment(t_s: FloatArray, lum: FloatArray, window_s: float, min_samples: int,
                    t_max: float, sigma_ln: float = 0.0) -> tuple[L0Estimate, float]:
    """:func:`estimate_l0` on the samples up to ``t_max`` after the first: the estimate and the
    rms weighted residual of the fit (NaN when no model was fitted)."""
    dt, ly, w = _l0_fit_data(t_s, lum, window_s, min_samples, t_max)
    if dt.size < 5 or np.ptp(dt) <= 0:
        return _l0_theil_sen(t_s, lum, window_s, min_samples), math.nan
    t_end = float(dt[-1])
    span = t_end if t_end > 0 else 1.0
    first = float(np.median(ly[: min(3, ly.size)]))
    # starting points: tau and beta from ln(-ln(L/L_first)) against ln t on the decaying part
    y_rel = np.exp(ly - first)
    _, tau0, beta0 = _initial_guess(dt, y_rel)
    lt0 = math.log(max(tau0, 1e-3 * span))
    lo_s = [first - 2.0, math.log(1e-6 * span), 0.05]
    hi_s = [first + 2.0, math.log(1e6 * span), L0_BETA_MAX]
    fs = _fit_early(dt, ly, w, "stretched", [[first, lt0, beta0]], (lo_s, hi_s))
    if fs is None or fs[1] > 1e-3 * dt.size:  # a poor start: try two more
        more = _fit_early(dt, ly, w, "stretched", [[first, math.log(span), 1.0],
                                                  [first, math.log(10 * span), 0.5]], (lo_s, hi_s))
        if more is not None and (fs is None or more[1] < fs[1]):
            fs = more
    candidates: list[tuple[str, FloatArray, float, FloatArray]] = []
    if fs is not None:
        candidates.append(("stretched", *fs))
    # the rise is tried unless the stretched exponential already fits to the scatter of the
    # samples (then it cannot lower the BIC by its two more parameters' worth)
    fits_to_noise = fs is not None and math.sqrt(fs[1] / float(np.sum(w))) <= 1.2 * sigma_ln
    if dt.size >= 8 and not fits_to_noise:
        ipk = int(np.argmax(ly))
        rise = max(float(ly[ipk] - first), 0.0)
        tpk = max(float(dt[ipk]), float(dt[1]))
        p_s = fs[0] if fs is not None else np.array([first, lt0, beta0])
        lo_b = [*lo_s, 0.0, math.log(max(float(np.min(np.diff(dt)[np.diff(dt) > 0])), 1e-9) * 0.1)]
        hi_b = [*hi_s, 20.0, math.log(100.0 * span)]
        starts_b = [[p_s[0], p_s[1], p_s[2], a, math.log(tb)]
                    for a, tb in ((max(2 * math.expm1(rise), 0.02), tpk / 3.0),
                                  (max(math.expm1(rise), 0.02), tpk), (0.3, 0.01 * span))]
        fb = _fit_early(dt, ly, w, "brightening", starts_b, (lo_b, hi_b))
        if fb is not None:
            candidates.append(("brightening", *fb))
    if not candidates:
        return _l0_theil_sen(t_s, lum, window_s, min_samples), math.nan
    n = dt.size

    def bic(c: tuple[str, FloatArray, float, FloatArray]) -> float:
        return n * math.log(max(c[2] / n, 1e-300)) + math.log(n) * c[1].size

    model, p, ssr, jac = min(candidates, key=bic)
    # spikes and dropouts: the single samples (weight 1) more than 6 robust sigmas (and 0.1 %)
    # off the fit are left out, and the chosen model is fitted again once
    r = _early_log_model(dt, p, model) - ly
    single = w == 1.0
    mad = 1.4826 * float(np.median(np.abs(r[single] - np.median(r[single])))) if single.any() else 0.0
    bad = single & (np.abs(r) > max(6.0 * mad, 1e-3))
    if bad.any() and np.count_nonzero(~bad) >= p.size + 2:
        keep = ~bad
        dt, ly, w, n = dt[keep], ly[keep], w[keep], int(np.count_nonzero(keep))
        bnds = (lo_s, hi_s) if model == "stretched" else (lo_b, hi_b)
        refit = _fit_early(dt, ly, w, model, [list(p)], bnds)
        if refit is not None:
            p, ssr, jac = refit
    dof = n - p.size
    err = math.nan
    if dof > 0:
        try:
            cov = np.linalg.pinv(jac.T @ jac) * (ssr / dof)
            sig = math.sqrt(max(float(cov[0, 0]), 0.0))
        except np.linalg.LinAlgError:
            sig = math.nan
        if math.isfinite(sig) and model == "brightening":
            # a rise and a decay trade off: the SSR profile's error where it is larger
            sig = max(sig, _profile_sigma(dt, ly, w, model, p, ssr, ssr / dof, 1.5 * sig,
                                          (lo_b, hi_b)))
        err = math.exp(float(p[0])) * sig
    rms = math.sqrt(ssr / float(np.sum(w)))
    return L0Estimate(math.exp(float(p[0])), err, model, tuple(float(v) for v in p), t_end), rms


def _profile_sigma(dt: FloatArray, ly: FloatArray, w: FloatArray, model: str, p: FloatArray,
                   ssr: float, s2: float, h: float, bounds: tuple[list[float], list[float]]) -> float:
    """Standard error of ln L0 from the profile of the weighted SSR: ln L0 held at its estimate
    +- h, the other parameters refitted; sigma = h*sqrt(s2/dSSR) on the flatter side. Where
    the model is far from linear in its parameters (a rise and a decay that trade off), the
    Jacobian's error can be several times too small, and the profile sees that."""
    if not (h > 0 and s2 > 0):
        return 0.0
    from scipy import optimize

    sw = np.sqrt(w)
    lo, hi = np.asarray(bounds[0][1:]), np.asarray(bounds[1][1:])
    out = 0.0
    for sgn in (-1.0, 1.0):
        p0 = float(p[0]) + sgn * h

        def res(q: FloatArray, p0: float = p0) -> FloatArray:
            return sw * (_early_log_model(dt, np.concatenate([[p0], q]), model) - ly)

        def jac(q: FloatArray, p0: float = p0) -> FloatArray:
            return sw[:, None] * _early_log_jac(dt, np.concatenate([[p0], q]), model)[:, 1:]

        try:
            r = optimize.least_squares(res, np.clip(p[1:], lo + 1e-9, hi - 1e-9), jac=jac, bounds=(lo, hi),
                                       method="trf", x_scale="jac", xtol=1e-10, ftol=1e-10,
                                       gtol=1e-10, max_nfev=200)
        except (ValueError, np.linalg.LinAlgError):
            continue
        d = float(np.sum(r.fun * r.fun)) - ssr
        if d > 0:
            out = max(out, h * math.sqrt(s2 / d))
    return out


def _l0_theil_sen(t_s: FloatArray, lum: FloatArray, window_s: float, min_samples: int) -> L0Estimate:
    """Too few samples for a model: a Theil-Sen line through the first window (at least
    ``min_samples``), at the first sample (no standard error)."""
    in_window = int(np.searchsorted(t_s, t_s[0] + window_s, side="right"))
    n = min(max(in_window, min(min_samples, t_s.size)), 200)
    if n < 3 or np.ptp(t_s[:n]) <= 0:
        return L0Estimate(float(np.median(lum[:n])), math.nan, "median of the first samples")
    x = t_s[:n] - t_s[0]
    # Theil-Sen slope as scipy.stats.theilslopes computes it (the median of the slopes of all
    # pairs with distinct times), in numpy: the aging procedure calls this live, and importing
    # scipy.stats there would stall the event loop for half a second
    dx = x[:, None] - x[None, :]
    dy = lum[:n][:, None] - lum[:n][None, :]
    pos = dx > 0
    slope = float(np.median(dy[pos] / dx[pos]))
    return L0Estimate(float(np.median(lum[:n] - slope * x)), math.nan, "Theil-Sen line (too few samples)")


def l0_of(t_s: FloatArray, lum: FloatArray, window_s: float = L0_WINDOW_S,
          min_samples: int = L0_MIN_SAMPLES) -> float:
    """Initial luminance, the luminance at switch-on (the first sample's time): the value of
    :func:`estimate_l0` (an early-trace model fit; see there and ``docs/measurement.md``)."""
    return estimate_l0(t_s, lum, window_s, min_samples).value


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


def analysis_trace(
    t: FloatArray, y: FloatArray, bins: int
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """The trace Tx, the peak and the fit are taken on: the first ``bins // 10`` samples as they
    are (the steep start of a stretched exponential with small beta, and an early peak, would be
    lost in a bin), the rest as in :func:`binned_trace_with_error` with ``bins - bins // 10`` bins
    (at least 3 samples each; their errors smoothed over 21 bins).
    The single samples' standard error is the scatter of one sample (from the bins' errors, or
    from second differences when there are too few samples for bins). No-op (errors None) when
    there are no more samples than bins."""
    n = t.size
    if bins <= 0 or n <= bins:
        return t, y, None
    n_raw = bins // 10
    # at least 3 samples a bin: a bin estimates its error from its own scatter
    n_bins = min(bins - n_raw, (n - n_raw) // 3)
    tb, yb, eb = binned_trace_with_error(t[n_raw:], y[n_raw:], n_bins)
    if eb is None:
        return t, y, None
    k = (n - n_raw) // n_bins
    # a bin's own scatter (MAD of k samples) is a noisy estimate of its error: weights taken
    # from it let a few bins dominate a fit. The noise varies slowly, so each bin gets the
    # running median of 21 bins' estimates
    eb = _smoothed(eb, 10)
    # a bin's median of k samples has sqrt(pi/2/k) times one sample's scatter
    one = float(np.median(eb)) * math.sqrt(k / (math.pi / 2))
    return (np.concatenate([t[:n_raw], tb]), np.concatenate([y[:n_raw], yb]),
            np.concatenate([np.full(n_raw, one), eb]))


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

    def time_to(self, level_rel: float, level_rel_err: float = 0.0) -> tuple[float | None, float | None]:
        """Time (h) at which the model reaches ``level_rel`` (relative to L0), and its 1-sigma
        error propagated from the parameter covariance (delta method), plus the relative
        standard error ``level_rel_err`` of the level itself (L0's own, for a level relative to
        L0: the data were divided by an L0 that is uncertain), which enters like a's."""
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
        var = float(grad @ cov @ grad) + (t / (self.beta * u) * level_rel_err) ** 2
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


def _noise_scale(y: FloatArray, err: FloatArray | None) -> float:
    """Typical 1-sigma scatter of one point of a trace: the median of the bins' standard
    errors, or, unbinned, from second differences (1.4826*MAD/sqrt(6); smooth trends cancel)."""
    if err is not None and err.size:
        return float(np.median(err))
    if y.size < 5:
        return 0.0
    d2 = np.diff(y, 2)
    return 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0)


def _quadratic(t: FloatArray, y: FloatArray, err: FloatArray | None, noise: float, t_c: float
               ) -> tuple[FloatArray, FloatArray] | None:
    """Weighted least-squares quadratic y = c0 + c1*(t - t_c) + c2*(t - t_c)^2 and the covariance
    of (c0, c1, c2): from the residual scatter with 3 or more degrees of freedom, else from the
    points' errors (``err`` or ``noise``)."""
    if t.size < 3:
        return None
    d = t - t_c
    X = np.column_stack([np.ones_like(d), d, d * d])
    if err is not None:
        e = np.maximum(err, 0.1 * float(np.median(err)) if np.any(err > 0) else 1e-12)
        e = np.where(e > 0, e, 1.0)
    else:
        e = np.ones_like(d)
    Xw, yw = X / e[:, None], y / e
    try:
        coef, *_ = np.linalg.lstsq(Xw, yw, rcond=None)
        xtx_inv = np.linalg.pinv(Xw.T @ Xw)
    except np.linalg.LinAlgError:
        return None
    resid = yw - Xw @ coef
    dof = t.size - 3
    if dof >= 3:
        s2 = float(resid @ resid) / dof
    elif err is not None:
        s2 = 1.0
    else:
        s2 = noise * noise
    return np.asarray(coef, dtype=float), np.asarray(xtx_inv * s2, dtype=float)


def _window(y: FloatArray, i: int, lo_val: float, hi_val: float, start: int, min_points: int = 7
            ) -> tuple[int, int]:
    """Indices [a, b) around i of the points with lo_val <= y <= hi_val, grown outward while one
    of the next three points is still in that band, and to at least ``min_points``."""
    n = y.size
    a = b = i
    while a - 1 >= start and any(lo_val <= y[j] <= hi_val for j in range(max(start, a - 3), a)):
        a -= 1
    while b + 1 < n and any(lo_val <= y[j] <= hi_val for j in range(b + 1, min(n, b + 4))):
        b += 1
    while b - a + 1 < min_points and (a > start or b < n - 1):
        if a > start:
            a -= 1
        if b < n - 1 and b - a + 1 < min_points:
            b += 1
    return a, b + 1


def _smoothed(y: FloatArray, half: int) -> FloatArray:
    """Running median over 2*half + 1 points (shorter at the ends); y itself for half = 0."""
    if half <= 0 or y.size < 3:
        return y
    idx = np.clip(np.arange(y.size)[:, None] + np.arange(-half, half + 1)[None, :], 0, y.size - 1)
    return np.asarray(np.median(y[idx], axis=1), dtype=float)


def _point_error(err: FloatArray | None, noise: float, i: int) -> float:
    return float(err[i]) if err is not None else noise


def _smoothing_half_width(e: float, w: float) -> int:
    """Half-width of the running median that brings one point's scatter ``e`` to w/4 or less
    (a median of m points scatters sqrt(pi/2/m) times one point), for locating a crossing or a
    peak without the noisy points' first-passage bias; capped at 50."""
    if e <= 0 or w <= 0:
        return 0
    m = (4.0 * e / w) ** 2 * math.pi / 2
    return int(min(50, math.ceil(max(m - 1.0, 0.0) / 2.0)))


def _smooth_peak(t: FloatArray, y: FloatArray, err: FloatArray | None
                 ) -> tuple[float, float, float, int]:
    """(peak, t_peak, sigma, index): the vertex of a quadratic in ln t fitted to the points
    around the peak, so the peak is not the maximum of noisy points, which is biased high (a
    rise that saturates times a stretched-exponential decay is nearly symmetric in ln t). The
    points are chosen without looking at their own noise: those where a running median (then
    the fitted quadratic) is within max(6 sigma, 0.1 %) of its maximum, at least 7. The vertex
    value is corrected for its own bias, var(c1)/(4|c2|). Falls back to the running median's
    maximum where no concave vertex lies inside the window (or the peak is the first point)."""
    noise = _noise_scale(y, err)
    i0 = int(np.argmax(y))
    e = _point_error(err, noise, i0)
    wp = max(6.0 * e, 0.001 * float(y[i0]))
    ys = _smoothed(y, _smoothing_half_width(e, wp / 2))
    ipk = int(np.argmax(ys))
    lo = int(np.searchsorted(t, 0.0, side="right"))
    if ipk <= lo:
        return float(ys[ipk]), float(t[ipk]), e, ipk
    lt = np.log(np.maximum(t, t[lo]))
    for widen in (1.0, 2.0, 4.0):  # a window too short for a clean vertex is widened
        found = _peak_vertex(lt, y, err, noise, ys, ipk, lo, wp * widen)
        if found is not None:
            peak, x_v, sig, i_v = found
            return peak, math.exp(x_v), sig, i_v
    return float(ys[ipk]), float(t[ipk]), e, ipk


def _peak_vertex(lt: FloatArray, y: FloatArray, err: FloatArray | None, noise: float,
                 ys: FloatArray, ipk: int, lo: int, wp: float
                 ) -> tuple[float, float, float, int] | None:
    """:func:`_smooth_peak`'s fit with band ``wp``: (peak, ln t_peak, sigma, index) or None."""
    sel = ys
    x_c = float(lt[ipk])
    for _ in range(3):
        a, b = _window(sel, ipk, float(sel[ipk]) - wp, math.inf, lo)
        q = _quadratic(lt[a:b], y[a:b], None if err is None else err[a:b], noise, x_c)
        if q is None:
            return None
        (c0, c1, c2), cov = q
        if not c2 < 0:
            return None
        dv = -c1 / (2 * c2)
        if not (lt[a] <= x_c + dv <= lt[b - 1]):
            return None
        d = lt - x_c
        sel = c0 + c1 * d + c2 * d * d  # the points' places on the fitted peak, not their noise
        ipk = int(np.clip(np.searchsorted(lt, x_c + dv), lo, lt.size - 1))
    # c0 - c1^2/(4 c2), with c1^2 replaced by its unbiased estimate c1^2 - var(c1): the vertex
    # of a noisy parabola is biased high by var(c1)/(4|c2|)
    peak = c0 - (c1 * c1 - float(cov[1, 1])) / (4 * c2)
    g = np.array([1.0, dv, dv * dv])
    var = float(g @ cov @ g)
    return float(peak), x_c + dv, math.sqrt(max(var, 0.0)), ipk


CROSSING_MAX_HALF_WIDTH = 0.5
"""Largest half-width, in ln t, of the window of points fitted around a crossing, unless the
slope needs a wider one."""
CROSSING_WIDEST = 1.5
"""Widest half-width, in ln t, when the slope is not known to 10 % in a narrower window."""


def _local_stretched_fit(t: FloatArray, y: FloatArray, err: FloatArray | None, ref: float,
                         t_c: float) -> tuple[FloatArray, FloatArray] | None:
    """:func:`_local_stretched_fit_k` with the curvature term c2 only where it is significant
    (beyond 3 standard errors): a noise-dominated c2 only adds scatter."""
    f = _local_stretched_fit_k(t, y, err, ref, t_c, 3)
    if f is not None:
        c, cov = f
        if abs(c[2]) > 3.0 * math.sqrt(max(float(cov[2, 2]), 0.0)):
            return f
    return _local_stretched_fit_k(t, y, err, ref, t_c, 2)


def _local_stretched_fit_k(t: FloatArray, y: FloatArray, err: FloatArray | None, ref: float,
                           t_c: float, k: int) -> tuple[FloatArray, FloatArray] | None:
    """Least squares (Gauss-Newton, in y) of y = ref*exp(-exp(c0 + c1*s + c2*s^2)), s = ln(t/t_c):
    a stretched exponential (c2 = 0) with a slowly varying exponent, on a few points around t_c.
    Returns (c, covariance of c scaled by the residual scatter, or by the points' errors with
    fewer than 3 degrees of freedom)."""
    sv = np.log(t / t_c)
    X = np.column_stack([np.ones_like(sv), sv, sv * sv])[:, :k]
    e = np.ones_like(sv) if err is None else np.where(err > 0, err, float(np.median(err)) or 1.0)
    u = np.clip(y / ref, 1e-9, 1 - 1e-9)
    zl = np.log(-np.log(u))
    try:
        c, *_ = np.linalg.lstsq(X[:, :2], zl, rcond=None)
    except np.linalg.LinAlgError:
        return None
    c = np.array([c[0], c[1], 0.0])[:k]

    def resid(cc: FloatArray) -> tuple[FloatArray, FloatArray]:
        ez = np.exp(np.clip(X @ cc, -50, 50))
        f = ref * np.exp(-ez)
        return (y - f) / e, (-(f * ez))[:, None] * X / e[:, None]

    r, J = resid(c)
    ssr = float(r @ r)
    for _ in range(20):
        try:
            step, *_ = np.linalg.lstsq(J, r, rcond=None)
        except np.linalg.LinAlgError:
            return None
        lam = 1.0
        while lam > 1e-4:
            c_new = c + lam * step
            r_new, J_new = resid(c_new)
            ssr_new = float(r_new @ r_new)
            if ssr_new <= ssr:
                break
            lam /= 2
        else:
            break
        done = ssr - ssr_new <= 1e-12 * max(ssr, 1e-300)
        c, r, J, ssr = c_new, r_new, J_new, ssr_new
        if done:
            break
    dof = y.size - k
    s2 = ssr / dof if dof >= 3 else 1.0
    if err is None and dof < 3:
        return None
    cov = np.zeros((3, 3))
    cov[:k, :k] = np.linalg.pinv(J.T @ J) * s2
    return np.append(c, np.zeros(3 - k)), cov


def _refined_crossing(t: FloatArray, y: FloatArray, err: FloatArray | None, level: float,
                      start: int = 0, ref: float = 1.0, t0: float = 0.0,
                      level_rel_err: float = 0.0) -> tuple[float | None, float, float]:
    """:func:`_refined_crossing_from` with time counted from ``t0`` (the peak, for a device that
    brightens: after the peak, -ln(y/peak) grows as a power of the time since the peak)."""
    first = crossing_time(t, y, level, start)
    if t0 > 0 and first is not None and first < t0 and level < 1.0:
        t0, ref = 0.0, 1.0  # the level is crossed before the peak: a decay from L0 there
    try:
        v, sig, slope = _refined_crossing_from(t - t0, y, err, level, start, ref, level_rel_err)
    except (ArithmeticError, ValueError, np.linalg.LinAlgError):  # a degenerate trace
        return first, math.nan, math.nan
    return (None if v is None else v + t0), sig, slope


def _root(c0: float, c1: float, c2: float, z: float) -> float | None:
    """The root of c0 + c1*s + c2*s^2 = z nearest s = 0 on the rising branch, or None."""
    disc = c1 * c1 - 4 * c2 * (c0 - z)
    if not (c1 > 0 and disc >= 0):
        return None
    if abs(c2) < 1e-12 * abs(c1):
        return (z - c0) / c1
    r = math.sqrt(disc)
    sv = min(((-c1 + r) / (2 * c2), (-c1 - r) / (2 * c2)), key=abs)
    return sv if c1 + 2 * c2 * sv > 0 else None


def _refined_crossing_from(t: FloatArray, y: FloatArray, err: FloatArray | None, level: float,
                           start: int = 0, ref: float = 1.0, level_rel_err: float = 0.0
                           ) -> tuple[float | None, float, float]:
    """(Tx, sigma, slope): the first crossing of ``level`` at or after index ``start`` (None if
    the trace never falls to it), from a local fit, so that noise does not make it come early
    (the first of many noisy points to fall below a level does so before the curve does). The
    crossing is first located on a running median of the trace; then y = ref*exp(-exp(z)), with
    z quadratic in ln t (exact for a stretched exponential from ``ref``; ``ref`` is the peak
    for a brightening device), is fitted in y to the points where the curve is within
    max(3 sigma, 1 %) of the level (at most ln t +- 0.5, at least 9 points), and solved for the
    level; the window is centred on that and fitted once more. Sigma from
    the fit's covariance; slope dy/dt there. None also while fewer than 3 points follow that
    window: the crossing counts as measured once the trace has passed it."""
    if crossing_time(t, y, level, start) is None:
        return None, math.nan, math.nan
    noise = _noise_scale(y, err)
    i_raw = start + int(np.flatnonzero(y[start:] <= level)[0])
    e = _point_error(err, noise, i_raw)
    w = max(1.5 * e, 0.003 * abs(level))
    ys = _smoothed(y, _smoothing_half_width(e, w))
    t_s = crossing_time(t, ys, level, start)
    if t_s is None:
        return None, math.nan, math.nan
    i = start + int(np.flatnonzero(ys[start:] <= level)[0])
    if i == start or not t_s > 0 or not 0 < level < ref:
        return t_s, math.nan, math.nan
    lo = max(start, int(np.searchsorted(t, 0.0, side="right")))
    t_c = t_s
    result: tuple[float, float, float] | None = None
    z_level = math.log(-math.log(level / ref))
    # window: where the curve is within w of the level (at least 9 points), in ln t; the slope
    # dy/dln t = -y*ln(ref/y)*beta is first guessed with beta = 0.7, then taken from the fit
    dydlnt = level * math.log(ref / level) * 0.7
    accepted = 0
    for _ in range(4):
        h = min(max(w / dydlnt, 0.02), CROSSING_MAX_HALF_WIDTH)
        while True:
            a = max(lo, int(np.searchsorted(t, t_c * math.exp(-h))))
            b = int(np.searchsorted(t, t_c * math.exp(h), side="right"))
            # a slope known to 10 % or better: else widen (exact for a stretched exponential)
            n_pts = max(b - a, 2)
            if e * math.sqrt(12.0 / n_pts) <= 0.1 * 2 * h * dydlnt or h >= CROSSING_WIDEST:
                break
            h = min(1.5 * h, CROSSING_WIDEST)
        k = int(np.searchsorted(t, t_c))
        while b - a < 9 and (a > lo or b < t.size):
            if a > lo and (k - a <= b - k or b >= t.size):
                a -= 1
            else:
                b += 1
        if b + 3 > t.size:
            # fewer than 3 points after the window: not measured yet (later samples would
            # change the window; the stop rule waits for them)
            return None, math.nan, math.nan
        f = _local_stretched_fit(t[a:b], y[a:b], None if err is None else err[a:b], ref, t_c)
        if f is None:
            break
        (c0, c1, c2), cov = f
        disc = c1 * c1 - 4 * c2 * (c0 - z_level)
        if not (c1 > 0 and disc >= 0):
            break
        if abs(c2) < 1e-12 * abs(c1):
            sv = (z_level - c0) / c1
        else:
            r = math.sqrt(disc)
            sv = min(((-c1 + r) / (2 * c2), (-c1 - r) / (2 * c2)), key=abs)
        dz = c1 + 2 * c2 * sv
        if not (dz > 0 and abs(sv) < 1.0):
            break
        tx = t_c * math.exp(sv)
        t_fit = t_c
        t_c = tx
        dydlnt = level * math.log(ref / level) * dz
        if not (t[a] <= tx <= t[b - 1]):
            continue  # the root lies outside this window: centre the next one on it
        g = -np.array([1.0, sv, sv * sv]) / dz  # d s / d c
        sig = tx * math.sqrt(max(float(g @ cov @ g), 0.0))
        slope = -level * (-math.log(level / ref)) * dz / tx  # dy/dt = -y*e^z*dz/ds / t
        if level_rel_err > 0:
            # the level's own error (L0's): the fitted curve solved at level*(1 -+ err), half
            # the difference (not the slope: T95 of a small-beta device is far from linear in L0)
            ends = []
            for lv in (level * (1 - level_rel_err), level * (1 + level_rel_err)):
                s_lv = _root(c0, c1, c2, math.log(-math.log(lv / ref))) if 0 < lv < ref else None
                ends.append(None if s_lv is None else t_fit * math.exp(s_lv))
            if ends[0] is not None and ends[1] is not None:
                sig = math.hypot(sig, abs(ends[0] - ends[1]) / 2)
            else:
                sig = math.hypot(sig, level * level_rel_err / abs(slope))
        result = (tx, sig, slope)
        accepted += 1
        if accepted >= 2:
            break
    if result is not None:
        return result
    # no clean local fit: a straight line through the 9 points nearest the running median's
    # crossing, solved for the level
    a = max(lo, i - 4)
    b = min(t.size, a + 9)
    if b + 3 > t.size:
        return None, math.nan, math.nan
    tt, yy = t[a:b] - t_s, y[a:b]
    X = np.column_stack([np.ones_like(tt), tt])
    coef, *_ = np.linalg.lstsq(X, yy, rcond=None)
    res = yy - X @ coef
    s2 = float(res @ res) / max(tt.size - 2, 1)
    cov2 = np.linalg.pinv(X.T @ X) * max(s2, e * e if err is not None else s2)
    c0, c1 = float(coef[0]), float(coef[1])
    if not c1 < 0:
        return t_s, math.nan, math.nan
    d = (level - c0) / c1
    if not t[a] <= t_s + d <= t[b - 1]:  # the line does not cross inside its points
        return t_s, math.nan, math.nan
    g2 = np.array([-1.0, -d]) / c1
    var = max(float(g2 @ cov2 @ g2), 0.0) + (level * level_rel_err / c1) ** 2
    return t_s + d, math.sqrt(var), c1


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
    l0_err_cd_m2: float = math.nan
    l_peak_err_cd_m2: float = math.nan
    tx_err_h: dict[str, float | None] = field(default_factory=dict)
    tx_from_peak_err_h: dict[str, float | None] = field(default_factory=dict)
    l0_model: str = ""
    #: d ln Tx / d ln L0 with the data held (negative: a higher L0 puts x*L0 earlier); the
    #: acceleration fit needs it, since each pixel's L0 and Tx errors are correlated through it
    tx_l0_sensitivity: dict[str, float | None] = field(default_factory=dict)

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

    def best_err(self, name: str = "t50_h") -> float | None:
        """The standard error of :meth:`best`'s value."""
        d = self.to_dict()
        if d.get(name) is not None:
            return _num(d.get(f"{name}_err"))
        return _num(self.extrapolated.get(f"{name}_err"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "l0_cd_m2": _num(self.l0_cd_m2),
            "l0_cd_m2_err": _num(self.l0_err_cd_m2),
            "l0_method": self.l0_method,
            "l0_model": self.l0_model,
            "l_peak_cd_m2": _num(self.l_peak_cd_m2),
            "l_peak_cd_m2_err": _num(self.l_peak_err_cd_m2),
            "t_peak_h": _num(self.t_peak_h),
            "positive_aging": self.positive_aging,
            "duration_h": _num(self.duration_h),
            "final_l_rel": _num(self.final_l_rel),
        }
        for name, _ in LEVELS:
            d[f"{name}_h"] = _num(self.tx_h[name])
            d[f"{name}_h_err"] = _num(self.tx_err_h.get(name))
        for name, _ in LEVELS:
            d[f"{name}_from_peak_h"] = _num(self.tx_from_peak_h[name])
            d[f"{name}_from_peak_h_err"] = _num(self.tx_from_peak_err_h.get(name))
        d["l0_sensitivity"] = {f"{k}_h": _num(v) for k, v in self.tx_l0_sensitivity.items()}
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
    """Everything about one aging trace. Non-finite samples are dropped; the trace is sorted by
    time. ``fit=False`` skips only the stretched-exponential fit and its extrapolations: L0,
    the peak and the measured Tx are the same either way."""
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
    l0e = estimate_l0(t, lum, l0_window_s, l0_min_samples)
    l0 = l0e.value
    if not l0 > 0:
        raise ValueError(f"lifetime: L0 = {l0:g} cd/m^2 is not positive (light off or dark not subtracted?)")
    l0_method = (
        f"{l0e.model} model fitted to ln L of the early trace (the first {l0_window_s:g} s "
        f"sample by sample, at least {l0_min_samples} samples), evaluated at the first sample"
    )
    eps = l0e.err / l0 if math.isfinite(l0e.err) else 0.0  # relative standard error of L0
    t_h = t / 3600.0
    tb, yb, eb = analysis_trace(t_h, lum / l0, bins)

    try:
        pk, t_pk, pk_err, ipk = _smooth_peak(tb, yb, eb)
    except (ArithmeticError, ValueError, np.linalg.LinAlgError):  # a degenerate trace
        ipk = int(np.argmax(yb))
        pk, t_pk, pk_err = float(yb[ipk]), float(tb[ipk]), math.nan
    # positive aging: a peak above L0 by more than 3 times its uncertainty (noise alone puts the
    # largest of many noisy points above L0) and by 0.01 %, and an early trace that needs the
    # rise (a stretched exponential alone fits it: no peak)
    rises = l0e.model != "stretched"
    if rises and pk - 1.0 > max(3.0 * math.hypot(pk_err, eps), 1e-4):
        l_peak_rel, t_peak_h, start, peak_err = pk, t_pk, ipk, pk_err
    else:
        l_peak_rel, t_peak_h, start, peak_err = 1.0, float(t_h[0]), 0, eps

    tx: dict[str, float | None] = {}
    tx_err: dict[str, float | None] = {}
    sens: dict[str, float | None] = {}
    txp: dict[str, float | None] = {}
    txp_err: dict[str, float | None] = {}
    for name, x in LEVELS:
        # L0 enters through the level: the data were divided by an L0 with relative error eps
        v, e, slope = _refined_crossing(tb, yb, eb, x, 0, max(1.0, l_peak_rel),
                                        t_peak_h if start else 0.0, eps)
        tx[name] = v
        tx_err[name] = None if v is None or not math.isfinite(e) else e
        # d ln Tx / d ln L0 with the data fixed: y*(1 - d) crosses x at dT = x*d/(dy/dt)
        sens[name] = (x / (slope * v) if v is not None and v > 0 and math.isfinite(slope)
                      and slope < 0 else None)
        if not (start == 0 and l_peak_rel == 1.0):  # else no brightening: the same crossing
            # from the peak: the level x*L_peak does not involve L0, only the peak's own error
            v, e, _ = _refined_crossing(tb, yb, eb, x * l_peak_rel, start, l_peak_rel, t_peak_h,
                                        peak_err / l_peak_rel)
        txp[name] = v
        txp_err[name] = None if v is None or not math.isfinite(e) else e

    sfit = None
    if fit:
        sfit = fit_stretched_exponential(tb[start:], yb[start:], None if eb is None else eb[start:])
    extrap: dict[str, float | None] = {}
    if sfit is not None:
        for name, x in LEVELS:
            ve, ee = sfit.time_to(x, eps)
            extrap[f"{name}_h"], extrap[f"{name}_h_err"] = ve, ee
        for name, x in LEVELS:
            ve, ee = sfit.time_to(x * l_peak_rel, peak_err / l_peak_rel)
            extrap[f"{name}_from_peak_h"], extrap[f"{name}_from_peak_h_err"] = ve, ee

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
        l0_err_cd_m2=l0e.err,
        # L_peak = (peak of L/L0)*L0 does not depend on L0: only the peak fit's own error
        l_peak_err_cd_m2=peak_err * l0 if l_peak_rel > 1.0 else l0e.err,
        tx_err_h=tx_err,
        tx_from_peak_err_h=txp_err,
        l0_model=l0e.model,
        tx_l0_sensitivity=sens,
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
    t_err_h: Sequence[float] | npt.ArrayLike | None = None,
    l0_err_cd_m2: Sequence[float] | npt.ArrayLike | None = None,
    dlnt_dlnl0: Sequence[float] | npt.ArrayLike | None = None,
) -> AccelerationFit:
    """Fit (or apply) the acceleration law and report T at ``reference_cd_m2`` with a
    ``confidence`` interval. Fitting n needs pixels aged at ``min_distinct_l0`` (3) or more
    distinct L0 (values within 1 % count as one).

    With the pixels' standard errors ``t_err_h`` (and optionally ``l0_err_cd_m2`` and each
    Tx's ``dlnt_dlnl0``, :attr:`LifetimeResult.tx_l0_sensitivity`), n is fitted by weighted
    least squares: pixel i's residual ln T_i - c + n ln L0_i has the variance
    (sT/T)^2 + (n^2 + 2 n g)(sL0/L0)^2 (g = d ln T/d ln L0: its L0 error moves both
    coordinates), n iterated; the errors are those of the weights, scaled up by
    sqrt(chi2/dof) where the scatter exceeds them (devices differ more than their noise).
    This is calibrated with 3 pixels, where the regression's own scatter (1 degree of freedom)
    is not."""
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
    if n is None and t_err_h is not None:
        return _fit_acceleration_weighted(x, y, lx, ly, t_err_h, l0_err_cd_m2, dlnt_dlnl0,
                                          reference_cd_m2, confidence, metric, min_distinct_l0)
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


def _fit_acceleration_weighted(
    x: FloatArray, y: FloatArray, lx: FloatArray, ly: FloatArray,
    t_err_h: Sequence[float] | npt.ArrayLike, l0_err_cd_m2: Sequence[float] | npt.ArrayLike | None,
    dlnt_dlnl0: Sequence[float] | npt.ArrayLike | None, reference_cd_m2: float, confidence: float,
    metric: str, min_distinct_l0: int,
) -> AccelerationFit:
    """:func:`fit_acceleration` with per-pixel errors (see there)."""
    N = x.size
    distinct = np.unique(np.round(np.log(x) / math.log(1.01)))
    if distinct.size < min_distinct_l0:
        raise ValueError(
            f"acceleration: fitting n needs pixels aged at >= {min_distinct_l0} distinct L0, "
            f"got {distinct.size}; give n (typically 1.5-2) instead"
        )
    st = np.asarray(t_err_h, dtype=float).ravel() / y
    sx = (np.zeros(N) if l0_err_cd_m2 is None
          else np.asarray(l0_err_cd_m2, dtype=float).ravel() / x)
    g = np.zeros(N) if dlnt_dlnl0 is None else np.asarray(dlnt_dlnl0, dtype=float).ravel()
    if st.shape != (N,) or sx.shape != (N,) or g.shape != (N,):
        raise ValueError("acceleration: one error (and sensitivity) per pixel")
    if not (np.all(np.isfinite(st)) and np.all(st > 0)
            and np.all(np.isfinite(sx)) and np.all(np.isfinite(g))):
        raise ValueError("acceleration: every lifetime error must be finite and > 0")
    xm = float(lx.mean())
    n_val = -float(np.sum((lx - xm) * (ly - ly.mean())) / float(np.sum((lx - xm) ** 2)))
    for _ in range(5):
        var = st * st + (n_val * n_val + 2.0 * n_val * g) * sx * sx
        w = 1.0 / np.maximum(var, 1e-300)
        sw = float(w.sum())
        xw = float(np.sum(w * lx)) / sw
        yw = float(np.sum(w * ly)) / sw
        sxx = float(np.sum(w * (lx - xw) ** 2))
        slope = float(np.sum(w * (lx - xw) * (ly - yw))) / sxx
        n_val = -slope
    icept = yw - slope * xw
    dof = N - 2
    resid = ly - (icept + slope * lx)
    chi2 = float(np.sum(w * resid * resid))
    birge = math.sqrt(max(1.0, chi2 / dof)) if dof > 0 else 1.0
    se_slope = birge / math.sqrt(sxx)
    se_icept = birge * math.sqrt(1.0 / sw + xw * xw / sxx)
    lo = hi = None
    if math.isfinite(se_icept):
        from scipy import stats

        q = float(stats.norm.ppf(0.5 + confidence / 2.0))
        lo, hi = math.exp(icept - q * se_icept), math.exp(icept + q * se_icept)
    return AccelerationFit(
        n=n_val,
        n_err=se_slope,
        n_fitted=True,
        reference_cd_m2=float(reference_cd_m2),
        t_ref_h=math.exp(icept),
        ci_low_h=lo,
        ci_high_h=hi,
        confidence=confidence,
        dof=dof,
        l0_cd_m2=tuple(float(v) for v in x),
        t_h=tuple(float(v) for v in y),
        metric=metric,
    )
