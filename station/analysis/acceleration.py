"""The acceleration law T(L) = T_ref*(L_ref/L)^n across pixels aged at different L0
(:func:`fit_acceleration`, ``station lifetime``): n fitted or given, T at a reference luminance
with a confidence interval.

Part of the lifetime analysis (:mod:`station.analysis.lifetime`; ``docs/measurement.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .lifetime_fit import FloatArray, finite_or_none

__all__ = ["AccelerationFit", "fit_acceleration"]


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
            "n_err": finite_or_none(self.n_err),
            "n_fitted": self.n_fitted,
            "reference_cd_m2": self.reference_cd_m2,
            f"{self.metric.removesuffix('_h')}_at_reference_h": self.t_ref_h,
            "t_ref_h": self.t_ref_h,
            "ci_low_h": finite_or_none(self.ci_low_h),
            "ci_high_h": finite_or_none(self.ci_high_h),
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
