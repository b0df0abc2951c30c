"""The aging trace as the lifetime analysis sees it: reduced to bins with their errors
(:func:`analysis_trace`), running medians, the first crossing of a level (:func:`crossing_time`)
and the peak of a device that brightens (:func:`smooth_peak`).

Part of the lifetime analysis (:mod:`station.analysis.lifetime`; ``docs/measurement.md``).
"""

from __future__ import annotations

import math

import numpy as np

from .lifetime_fit import FloatArray

__all__ = [
    "analysis_trace",
    "binned_trace",
    "binned_trace_with_error",
    "crossing_time",
    "noise_scale",
    "point_error",
    "smooth_peak",
    "smoothed",
    "smoothing_half_width",
]


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
    eb = smoothed(eb, 10)
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


def noise_scale(y: FloatArray, err: FloatArray | None) -> float:
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


def smoothed(y: FloatArray, half: int) -> FloatArray:
    """Running median over 2*half + 1 points (shorter at the ends); y itself for half = 0."""
    if half <= 0 or y.size < 3:
        return y
    idx = np.clip(np.arange(y.size)[:, None] + np.arange(-half, half + 1)[None, :], 0, y.size - 1)
    return np.asarray(np.median(y[idx], axis=1), dtype=float)


def point_error(err: FloatArray | None, noise: float, i: int) -> float:
    """The standard error of point ``i``: its bin's, or ``noise`` for an unbinned trace."""
    return float(err[i]) if err is not None else noise


def smoothing_half_width(e: float, w: float) -> int:
    """Half-width of the running median that brings one point's scatter ``e`` to w/4 or less
    (a median of m points scatters sqrt(pi/2/m) times one point), for locating a crossing or a
    peak without the noisy points' first-passage bias; capped at 50."""
    if e <= 0 or w <= 0:
        return 0
    m = (4.0 * e / w) ** 2 * math.pi / 2
    return int(min(50, math.ceil(max(m - 1.0, 0.0) / 2.0)))


def smooth_peak(t: FloatArray, y: FloatArray, err: FloatArray | None
                ) -> tuple[float, float, float, int]:
    """(peak, t_peak, sigma, index): the vertex of a quadratic in ln t fitted to the points
    around the peak, so the peak is not the maximum of noisy points, which is biased high (a
    rise that saturates times a stretched-exponential decay is nearly symmetric in ln t). The
    points are chosen without looking at their own noise: those where a running median (then
    the fitted quadratic) is within max(6 sigma, 0.1 %) of its maximum, at least 7. The vertex
    value is corrected for its own bias, var(c1)/(4|c2|). Falls back to the running median's
    maximum where no concave vertex lies inside the window (or the peak is the first point)."""
    noise = noise_scale(y, err)
    i0 = int(np.argmax(y))
    e = point_error(err, noise, i0)
    wp = max(6.0 * e, 0.001 * float(y[i0]))
    ys = smoothed(y, smoothing_half_width(e, wp / 2))
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
    """:func:`smooth_peak`'s fit with band ``wp``: (peak, ln t_peak, sigma, index) or None."""
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
