"""Tx, the time the trace first falls to a level (x*L0 or x*L_peak), measured by a local
stretched-exponential fit around the crossing, so that noise does not make it come early
(:func:`refined_crossing`), with its standard error and the slope there.

Part of the lifetime analysis (:mod:`station.analysis.lifetime`; ``docs/measurement.md``).
"""

from __future__ import annotations

import math

import numpy as np

from .lifetime_fit import FloatArray
from .lifetime_trace import crossing_time, noise_scale, point_error, smoothed, smoothing_half_width

__all__ = ["CROSSING_MAX_HALF_WIDTH", "CROSSING_WIDEST", "Crossing", "refined_crossing"]

Crossing = tuple[float | None, float, float]
"""(Tx, its standard error, the slope dy/dt there); Tx None while not reached."""


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


def refined_crossing(t: FloatArray, y: FloatArray, err: FloatArray | None, level: float,
                     start: int = 0, ref: float = 1.0, t0: float = 0.0,
                     level_rel_err: float = 0.0) -> Crossing:
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
                           ) -> Crossing:
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
    noise = noise_scale(y, err)
    i_raw = start + int(np.flatnonzero(y[start:] <= level)[0])
    e = point_error(err, noise, i_raw)
    w = max(1.5 * e, 0.003 * abs(level))
    ys = smoothed(y, smoothing_half_width(e, w))
    t_s = crossing_time(t, ys, level, start)
    if t_s is None:
        return None, math.nan, math.nan
    i = start + int(np.flatnonzero(ys[start:] <= level)[0])
    if i == start or not t_s > 0 or not 0 < level < ref:
        return t_s, math.nan, math.nan
    lo = max(start, int(np.searchsorted(t, 0.0, side="right")))
    fitted = _crossing_by_local_fits(t, y, err, level, ref, level_rel_err, lo, t_s, e, w)
    if fitted is not None:
        return fitted
    return _crossing_by_line(t, y, err, level, level_rel_err, lo, i, t_s, e)


def _crossing_by_local_fits(t: FloatArray, y: FloatArray, err: FloatArray | None, level: float,
                            ref: float, level_rel_err: float, lo: int, t_s: float, e: float, w: float
                            ) -> Crossing | None:
    """:func:`_refined_crossing_from`'s local fits, the window first centred on the running
    median's crossing ``t_s``, then on the root found; the second accepted root is the result.
    ``(None, nan, nan)`` while fewer than 3 points follow a window; None when no clean fit."""
    t_c = t_s
    result: Crossing | None = None
    z_level = math.log(-math.log(level / ref))
    # window: where the curve is within w of the level (at least 9 points), in ln t; the slope
    # dy/dln t = -y*ln(ref/y)*beta is first guessed with beta = 0.7, then taken from the fit
    dydlnt = level * math.log(ref / level) * 0.7
    accepted = 0
    for _ in range(4):
        a, b = _crossing_window(t, lo, t_c, w, e, dydlnt)
        if b + 3 > t.size:
            # fewer than 3 points after the window: not measured yet (later samples would
            # change the window; the stop rule waits for them)
            return None, math.nan, math.nan
        f = _local_stretched_fit(t[a:b], y[a:b], None if err is None else err[a:b], ref, t_c)
        if f is None:
            break
        (c0, c1, c2), cov = f
        sv = _root(c0, c1, c2, z_level)
        if sv is None:
            break
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
            sig = _with_level_error(sig, (c0, c1, c2), level, ref, level_rel_err, t_fit, slope)
        result = (tx, sig, slope)
        accepted += 1
        if accepted >= 2:
            break
    return result


def _crossing_window(t: FloatArray, lo: int, t_c: float, w: float, e: float, dydlnt: float
                     ) -> tuple[int, int]:
    """Indices [a, b) of the points fitted around ``t_c``: where the curve is within ``w`` of
    the level (half-width in ln t from the slope ``dydlnt``, at most
    :data:`CROSSING_MAX_HALF_WIDTH`), widened up to :data:`CROSSING_WIDEST` until the slope is
    known to 10 %, and to at least 9 points (from index ``lo`` on)."""
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
    return a, b


def _with_level_error(sig: float, c: tuple[float, float, float], level: float, ref: float,
                      level_rel_err: float, t_fit: float, slope: float) -> float:
    """``sig`` with the level's own error (L0's) added: the fitted curve (``c``, centred on
    ``t_fit``) solved at level*(1 -+ err), half the difference (not the slope: T95 of a
    small-beta device is far from linear in L0); the slope where it has no such roots."""
    c0, c1, c2 = c
    ends = []
    for lv in (level * (1 - level_rel_err), level * (1 + level_rel_err)):
        s_lv = _root(c0, c1, c2, math.log(-math.log(lv / ref))) if 0 < lv < ref else None
        ends.append(None if s_lv is None else t_fit * math.exp(s_lv))
    if ends[0] is not None and ends[1] is not None:
        return math.hypot(sig, abs(ends[0] - ends[1]) / 2)
    return math.hypot(sig, level * level_rel_err / abs(slope))


def _crossing_by_line(t: FloatArray, y: FloatArray, err: FloatArray | None, level: float,
                      level_rel_err: float, lo: int, i: int, t_s: float, e: float) -> Crossing:
    """No clean local fit: a straight line through the 9 points nearest the running median's
    crossing (index ``i``, time ``t_s``), solved for the level."""
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
