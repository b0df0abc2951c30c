"""The stretched exponential L/L0 = a*exp(-(t/tau)^beta) and its fit to an aging trace, from
which lifetimes not reached in the run are extrapolated with their standard errors.

Part of the lifetime analysis (:mod:`station.analysis.lifetime`; ``docs/measurement.md``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "FloatArray",
    "StretchedExpFit",
    "finite_or_none",
    "fit_stretched_exponential",
    "initial_guess",
    "stretched_exponential",
]

FloatArray = npt.NDArray[np.float64]


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, None for None, NaN or infinity (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def stretched_exponential(t: npt.ArrayLike, a: float, tau: float, beta: float) -> FloatArray:
    """A*exp(-(t/tau)^beta), t >= 0."""
    tt = np.maximum(np.asarray(t, dtype=float), 0.0)
    return cast(FloatArray, a * np.exp(-np.power(tt / tau, beta)))


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
            "a_err": finite_or_none(self.a_err),
            "tau_err": finite_or_none(self.tau_err),
            "beta_err": finite_or_none(self.beta_err),
            "t_start_h": self.t_start_h,
            "n_points": self.n_points,
            "rms_residual": self.rms_residual,
            "model": "L/L0 = a*exp(-(t/tau_h)^beta)",
        }


def initial_guess(t: FloatArray, y: FloatArray) -> tuple[float, float, float]:
    """Starting point (a, tau, beta) of a stretched-exponential fit: a just above the highest
    point, tau and beta from a straight line of ln(-ln(y/a)) against ln t."""
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

    p0 = initial_guess(t, y)
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
