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

The parts live in modules of their own and are re-exported here, so ``from
station.analysis.lifetime import ...`` works for all of them: :mod:`.lifetime_l0` (L0),
:mod:`.lifetime_trace` (the binned trace, running medians, the peak), :mod:`.lifetime_tx` (Tx
by local fits), :mod:`.lifetime_fit` (the stretched exponential and its extrapolations) and
:mod:`.acceleration` (the acceleration law across pixels). This module puts them together
(:func:`analyze_lifetime`) and holds the result type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .acceleration import AccelerationFit, fit_acceleration
from .lifetime_fit import (
    FloatArray,
    StretchedExpFit,
    finite_or_none,
    fit_stretched_exponential,
    stretched_exponential,
)
from .lifetime_l0 import (
    L0_BETA_MAX,
    L0_FIT_BINS,
    L0_FIT_BLOCK,
    L0_FIT_END_REL,
    L0_FIT_MIN_SAMPLES,
    L0_MIN_SAMPLES,
    L0_WINDOW_S,
    L0Estimate,
    estimate_l0,
    l0_of,
)
from .lifetime_trace import (
    analysis_trace,
    binned_trace,
    binned_trace_with_error,
    crossing_time,
    smooth_peak,
)
from .lifetime_tx import refined_crossing

__all__ = [
    "L0_BETA_MAX",
    "L0_FIT_BINS",
    "L0_FIT_BLOCK",
    "L0_FIT_END_REL",
    "L0_FIT_MIN_SAMPLES",
    "L0_MIN_SAMPLES",
    "L0_WINDOW_S",
    "LEVELS",
    "AccelerationFit",
    "FloatArray",
    "L0Estimate",
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

#: The Tx levels reported, as fractions.
LEVELS: tuple[tuple[str, float], ...] = (("t95", 0.95), ("t90", 0.90), ("t80", 0.80), ("t50", 0.50))


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
            return finite_or_none(d.get(f"{name}_err"))
        return finite_or_none(self.extrapolated.get(f"{name}_err"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "l0_cd_m2": finite_or_none(self.l0_cd_m2),
            "l0_cd_m2_err": finite_or_none(self.l0_err_cd_m2),
            "l0_method": self.l0_method,
            "l0_model": self.l0_model,
            "l_peak_cd_m2": finite_or_none(self.l_peak_cd_m2),
            "l_peak_cd_m2_err": finite_or_none(self.l_peak_err_cd_m2),
            "t_peak_h": finite_or_none(self.t_peak_h),
            "positive_aging": self.positive_aging,
            "duration_h": finite_or_none(self.duration_h),
            "final_l_rel": finite_or_none(self.final_l_rel),
        }
        for name, _ in LEVELS:
            d[f"{name}_h"] = finite_or_none(self.tx_h[name])
            d[f"{name}_h_err"] = finite_or_none(self.tx_err_h.get(name))
        for name, _ in LEVELS:
            d[f"{name}_from_peak_h"] = finite_or_none(self.tx_from_peak_h[name])
            d[f"{name}_from_peak_h_err"] = finite_or_none(self.tx_from_peak_err_h.get(name))
        d["l0_sensitivity"] = {f"{k}_h": finite_or_none(v) for k, v in self.tx_l0_sensitivity.items()}
        d["extrapolated"] = {k: finite_or_none(v) for k, v in self.extrapolated.items()}
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
    t, lum = _clean_trace(t_s, luminance_cd_m2)
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
    l_peak_rel, t_peak_h, start, peak_err = _peak(tb, yb, eb, l0e.model != "stretched", eps,
                                                  float(t_h[0]))
    tx, tx_err, sens = _tx_from_l0(tb, yb, eb, l_peak_rel, t_peak_h, start, eps)
    if start == 0 and l_peak_rel == 1.0:  # no brightening: the same crossings
        txp, txp_err = dict(tx), dict(tx_err)
    else:
        txp, txp_err = _tx_from_peak(tb, yb, eb, l_peak_rel, t_peak_h, start, peak_err)
    sfit = None
    if fit:
        sfit = fit_stretched_exponential(tb[start:], yb[start:], None if eb is None else eb[start:])
    extrap = _extrapolated(sfit, eps, l_peak_rel, peak_err)

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


def _clean_trace(t_s: npt.ArrayLike, luminance_cd_m2: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The trace as :func:`analyze_lifetime` takes it: finite samples, sorted by time."""
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
    return t, lum


def _peak(tb: FloatArray, yb: FloatArray, eb: FloatArray | None, rises: bool, eps: float,
          t_first_h: float) -> tuple[float, float, int, float]:
    """(L_peak/L0, t_peak_h, index of the peak in the trace, L_peak's relative standard error)
    on the trace relative to L0 (L0's relative error ``eps``): the peak of a device that
    brightens, else L0 itself at the first sample. Positive aging: a peak above L0 by more than
    3 times its uncertainty (noise alone puts the largest of many noisy points above L0) and by
    0.01 %, and an early trace that needs the rise (``rises``; a stretched exponential alone
    fits it: no peak)."""
    try:
        pk, t_pk, pk_err, ipk = smooth_peak(tb, yb, eb)
    except (ArithmeticError, ValueError, np.linalg.LinAlgError):  # a degenerate trace
        ipk = int(np.argmax(yb))
        pk, t_pk, pk_err = float(yb[ipk]), float(tb[ipk]), math.nan
    if rises and pk - 1.0 > max(3.0 * math.hypot(pk_err, eps), 1e-4):
        return pk, t_pk, ipk, pk_err
    return 1.0, t_first_h, 0, eps


TxTable = dict[str, float | None]


def _tx_from_l0(tb: FloatArray, yb: FloatArray, eb: FloatArray | None, l_peak_rel: float,
                t_peak_h: float, start: int, eps: float) -> tuple[TxTable, TxTable, TxTable]:
    """The measured Tx (x*L0) of each level, their standard errors and d ln Tx / d ln L0."""
    tx: TxTable = {}
    tx_err: TxTable = {}
    sens: TxTable = {}
    for name, x in LEVELS:
        # L0 enters through the level: the data were divided by an L0 with relative error eps
        v, e, slope = refined_crossing(tb, yb, eb, x, 0, max(1.0, l_peak_rel),
                                       t_peak_h if start else 0.0, eps)
        tx[name] = v
        tx_err[name] = None if v is None or not math.isfinite(e) else e
        # d ln Tx / d ln L0 with the data fixed: y*(1 - d) crosses x at dT = x*d/(dy/dt)
        sens[name] = (x / (slope * v) if v is not None and v > 0 and math.isfinite(slope)
                      and slope < 0 else None)
    return tx, tx_err, sens


def _tx_from_peak(tb: FloatArray, yb: FloatArray, eb: FloatArray | None, l_peak_rel: float,
                  t_peak_h: float, start: int, peak_err: float) -> tuple[TxTable, TxTable]:
    """The measured Tx from the peak (x*L_peak, from t_peak on) and their standard errors: the
    level x*L_peak does not involve L0, only the peak's own error."""
    txp: TxTable = {}
    txp_err: TxTable = {}
    for name, x in LEVELS:
        v, e, _ = refined_crossing(tb, yb, eb, x * l_peak_rel, start, l_peak_rel, t_peak_h,
                                   peak_err / l_peak_rel)
        txp[name] = v
        txp_err[name] = None if v is None or not math.isfinite(e) else e
    return txp, txp_err


def _extrapolated(sfit: StretchedExpFit | None, eps: float, l_peak_rel: float,
                  peak_err: float) -> TxTable:
    """Each Tx (and Tx from the peak) of the fit, with its standard error; empty without a fit."""
    extrap: TxTable = {}
    if sfit is not None:
        for name, x in LEVELS:
            ve, ee = sfit.time_to(x, eps)
            extrap[f"{name}_h"], extrap[f"{name}_h_err"] = ve, ee
        for name, x in LEVELS:
            ve, ee = sfit.time_to(x * l_peak_rel, peak_err / l_peak_rel)
            extrap[f"{name}_from_peak_h"], extrap[f"{name}_from_peak_h_err"] = ve, ee
    return extrap
