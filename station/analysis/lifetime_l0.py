"""L0, the luminance at switch-on, from a model fitted to the early trace (:func:`estimate_l0`,
:func:`l0_of`): a stretched exponential, or the same times a saturating rise (positive aging),
the one with the lower BIC, with its standard error from the fit. The live stop rule and the
final analysis use the same estimator.

Part of the lifetime analysis (:mod:`station.analysis.lifetime`; ``docs/measurement.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .lifetime_fit import FloatArray, initial_guess

__all__ = [
    "L0_BETA_MAX",
    "L0_FIT_BINS",
    "L0_FIT_BLOCK",
    "L0_FIT_END_REL",
    "L0_FIT_MIN_SAMPLES",
    "L0_MIN_SAMPLES",
    "L0_WINDOW_S",
    "L0Estimate",
    "estimate_l0",
    "l0_of",
]


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


Bounds = tuple[list[float], list[float]]
EarlyFit = tuple[FloatArray, float, FloatArray]
"""(params, weighted SSR, Jacobian of the weighted residuals) of :func:`_fit_early`."""
Candidate = tuple[str, FloatArray, float, FloatArray, Bounds]
"""An early-trace model fitted: (model, params, weighted SSR, Jacobian, the bounds it had)."""


def _fit_early(dt: FloatArray, ly: FloatArray, w: FloatArray, model: str,
               starts: list[list[float]], bounds: Bounds) -> EarlyFit | None:
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
    candidates = _early_candidates(dt, ly, w, sigma_ln)
    if not candidates:
        return _l0_theil_sen(t_s, lum, window_s, min_samples), math.nan
    n = dt.size

    def bic(c: Candidate) -> float:
        return n * math.log(max(c[2] / n, 1e-300)) + math.log(n) * c[1].size

    model, p, ssr, jac, bounds = min(candidates, key=bic)
    dt, ly, w, (p, ssr, jac) = _refit_without_spikes(dt, ly, w, model, (p, ssr, jac), bounds)
    err = _l0_fit_error(dt, ly, w, model, (p, ssr, jac), bounds)
    rms = math.sqrt(ssr / float(np.sum(w)))
    return L0Estimate(math.exp(float(p[0])), err, model, tuple(float(v) for v in p), t_end), rms


def _early_candidates(dt: FloatArray, ly: FloatArray, w: FloatArray, sigma_ln: float) -> list[Candidate]:
    """The early-trace models fitted to (dt, ln L, weight): the stretched exponential, and the
    same times a rise unless the stretched exponential already fits to the scatter of the
    samples (then the rise cannot lower the BIC by its two more parameters' worth)."""
    t_end = float(dt[-1])
    span = t_end if t_end > 0 else 1.0
    first = float(np.median(ly[: min(3, ly.size)]))
    # starting points: tau and beta from ln(-ln(L/L_first)) against ln t on the decaying part
    y_rel = np.exp(ly - first)
    _, tau0, beta0 = initial_guess(dt, y_rel)
    lt0 = math.log(max(tau0, 1e-3 * span))
    lo_s = [first - 2.0, math.log(1e-6 * span), 0.05]
    hi_s = [first + 2.0, math.log(1e6 * span), L0_BETA_MAX]
    fs = _fit_early(dt, ly, w, "stretched", [[first, lt0, beta0]], (lo_s, hi_s))
    if fs is None or fs[1] > 1e-3 * dt.size:  # a poor start: try two more
        more = _fit_early(dt, ly, w, "stretched", [[first, math.log(span), 1.0],
                                                  [first, math.log(10 * span), 0.5]], (lo_s, hi_s))
        if more is not None and (fs is None or more[1] < fs[1]):
            fs = more
    candidates: list[Candidate] = []
    if fs is not None:
        candidates.append(("stretched", *fs, (lo_s, hi_s)))
    fits_to_noise = fs is not None and math.sqrt(fs[1] / float(np.sum(w))) <= 1.2 * sigma_ln
    if dt.size >= 8 and not fits_to_noise:
        p_s = fs[0] if fs is not None else np.array([first, lt0, beta0])
        fb = _fit_brightening(dt, ly, w, first, p_s, (lo_s, hi_s))
        if fb is not None:
            candidates.append(fb)
    return candidates


def _fit_brightening(dt: FloatArray, ly: FloatArray, w: FloatArray, first: float, p_s: FloatArray,
                     bounds_s: Bounds) -> Candidate | None:
    """The stretched exponential times a saturating rise, started from the stretched
    exponential's parameters ``p_s`` and three guesses of the rise (from the highest sample)."""
    lo_s, hi_s = bounds_s
    t_end = float(dt[-1])
    span = t_end if t_end > 0 else 1.0
    ipk = int(np.argmax(ly))
    rise = max(float(ly[ipk] - first), 0.0)
    tpk = max(float(dt[ipk]), float(dt[1]))
    lo_b = [*lo_s, 0.0, math.log(max(float(np.min(np.diff(dt)[np.diff(dt) > 0])), 1e-9) * 0.1)]
    hi_b = [*hi_s, 20.0, math.log(100.0 * span)]
    starts_b = [[p_s[0], p_s[1], p_s[2], a, math.log(tb)]
                for a, tb in ((max(2 * math.expm1(rise), 0.02), tpk / 3.0),
                              (max(math.expm1(rise), 0.02), tpk), (0.3, 0.01 * span))]
    fb = _fit_early(dt, ly, w, "brightening", starts_b, (lo_b, hi_b))
    return None if fb is None else ("brightening", *fb, (lo_b, hi_b))


def _refit_without_spikes(dt: FloatArray, ly: FloatArray, w: FloatArray, model: str, fit: EarlyFit,
                          bounds: Bounds) -> tuple[FloatArray, FloatArray, FloatArray, EarlyFit]:
    """Spikes and dropouts: the single samples (weight 1) more than 6 robust sigmas (and 0.1 %)
    off the fit are left out, and the model is fitted again once. The data and the fit kept."""
    p = fit[0]
    r = _early_log_model(dt, p, model) - ly
    single = w == 1.0
    mad = 1.4826 * float(np.median(np.abs(r[single] - np.median(r[single])))) if single.any() else 0.0
    bad = single & (np.abs(r) > max(6.0 * mad, 1e-3))
    if bad.any() and np.count_nonzero(~bad) >= p.size + 2:
        keep = ~bad
        dt, ly, w = dt[keep], ly[keep], w[keep]
        refit = _fit_early(dt, ly, w, model, [list(p)], bounds)
        if refit is not None:
            fit = refit
    return dt, ly, w, fit


def _l0_fit_error(dt: FloatArray, ly: FloatArray, w: FloatArray, model: str, fit: EarlyFit,
                  bounds: Bounds) -> float:
    """L0's standard error from the fit's Jacobian, scaled by the residual scatter (for the rise,
    the SSR profile's where that is larger); NaN without degrees of freedom."""
    p, ssr, jac = fit
    dof = dt.size - p.size
    if dof <= 0:
        return math.nan
    try:
        cov = np.linalg.pinv(jac.T @ jac) * (ssr / dof)
        sig = math.sqrt(max(float(cov[0, 0]), 0.0))
    except np.linalg.LinAlgError:
        sig = math.nan
    if math.isfinite(sig) and model == "brightening":
        # a rise and a decay trade off: the SSR profile's error where it is larger
        sig = max(sig, _profile_sigma(dt, ly, w, model, p, ssr, ssr / dof, 1.5 * sig, bounds))
    return math.exp(float(p[0])) * sig


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
