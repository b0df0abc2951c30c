"""Colorimetry of a spectral power distribution: the CIE tables (from colour-science, never
typed by hand, loaded on first use or by :func:`load_reference_tables`), CIE 1931 (x, y), the EL
peak and its FWHM (:func:`spectrum_features`).

Formulas: ``docs/measurement.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from .spectrum import FloatArray, Spectrum, trapz

__all__ = [
    "PEAK_FIT_FRACTION",
    "SpectrumFeatures",
    "cie_xy",
    "cmfs_1931",
    "el_peak_fwhm",
    "load_reference_tables",
    "photopic_v",
    "spectrum_features",
]


@functools.cache
def _cmfs_1931() -> tuple[FloatArray, FloatArray]:
    import colour  # deferred: importing colour costs ~1 s

    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    wl = np.asarray(cmfs.wavelengths, dtype=float)
    vals = np.asarray(cmfs.values, dtype=float)
    wl.setflags(write=False)
    vals.setflags(write=False)
    return wl, vals


@functools.cache
def _photopic_1924() -> tuple[FloatArray, FloatArray]:
    from colour.colorimetry import SDS_LEFS_PHOTOPIC

    sd = SDS_LEFS_PHOTOPIC["CIE 1924 Photopic Standard Observer"]
    wl = np.asarray(sd.wavelengths, dtype=float)
    vals = np.asarray(sd.values, dtype=float)
    wl.setflags(write=False)
    vals.setflags(write=False)
    return wl, vals


def load_reference_tables() -> None:
    """Import colour-science and load the CIE tables now (about 1.5 s, once per process).

    The station calls it in a worker thread while it connects to the board, so the first
    spectrum of a run does not stall the event loop (and the samples behind it) for that long.
    """
    _cmfs_1931()
    _photopic_1924()


def photopic_v(wavelength_nm: npt.ArrayLike) -> FloatArray:
    """CIE 1924 V(lambda) interpolated linearly to ``wavelength_nm`` (zero outside 360-830 nm)."""
    wl, v = _photopic_1924()
    return cast(FloatArray, np.interp(np.asarray(wavelength_nm, dtype=float), wl, v, left=0.0, right=0.0))


def cmfs_1931(wavelength_nm: npt.ArrayLike) -> FloatArray:
    """CIE 1931 2 deg x-bar, y-bar, z-bar (shape (n, 3)) interpolated to ``wavelength_nm``."""
    wl, vals = _cmfs_1931()
    w = np.asarray(wavelength_nm, dtype=float)
    return np.stack([np.interp(w, wl, vals[:, k], left=0.0, right=0.0) for k in range(3)], axis=-1)


def cie_xy(wavelength_nm: npt.ArrayLike, power: npt.ArrayLike) -> tuple[float, float]:
    """CIE 1931 chromaticity (x, y) of a spectral *power* distribution (CIE 015:2018, emitter:
    X = integral S*x-bar dlambda, etc.; x = X/(X+Y+Z))."""
    wl = np.asarray(wavelength_nm, dtype=float)
    p = np.asarray(power, dtype=float)
    cm = cmfs_1931(wl)
    xyz = [trapz(p * cm[:, k], wl) for k in range(3)]
    s = xyz[0] + xyz[1] + xyz[2]
    if not s > 0:
        return (math.nan, math.nan)
    return (xyz[0] / s, xyz[1] / s)


def _parabolic_vertex(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Vertex of the parabola through three points (any spacing)."""
    x0, x1, x2 = (float(v) for v in x)
    y0, y1, y2 = (float(v) for v in y)
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    c = (x1 * x2 * (x1 - x2) * y0 + x2 * x0 * (x2 - x0) * y1 + x0 * x1 * (x0 - x1) * y2) / denom
    if not a < 0:
        return x1, y1
    xv = -b / (2 * a)
    if not x0 <= xv <= x2:
        return x1, y1
    return xv, c - b * b / (4 * a)


PEAK_FIT_FRACTION = 0.35
"""The EL peak is fitted over the contiguous samples at or above this fraction of the maximum."""


def _quadratic_roots(a: float, b: float, c: float) -> list[float]:
    """Real roots of a x² + b x + c, without cancellation (Numerical Recipes §5.6)."""
    if a == 0:
        return [-c / b] if b != 0 else []
    disc = b * b - 4.0 * a * c
    if disc < 0:
        return []
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    return [q / a] + ([c / q] if q != 0 else [])


def _fit_peak(wl: FloatArray, p: FloatArray, i: int) -> tuple[float, float] | None:
    """Peak of a cubic fitted to ln(power) over the samples around ``i`` at or above
    :data:`PEAK_FIT_FRACTION` of ``p[i]``, weighted for counting noise (σ(ln y) ∝ 1/√y). A
    Gaussian line is a parabola in ln(power), which the cubic holds exactly; the cubic term
    takes up an asymmetric line's skew. Using every sample of the peak region instead of the
    three highest keeps noise from moving the peak by a sample spacing. None when the region is
    too small or the fit has no maximum inside it."""
    top = p[i]
    if not top > 0:
        return None
    lo = i
    while lo > 0 and p[lo - 1] >= PEAK_FIT_FRACTION * top:
        lo -= 1
    hi = i
    while hi < p.size - 1 and p[hi + 1] >= PEAK_FIT_FRACTION * top:
        hi += 1
    x, y = wl[lo : hi + 1], p[lo : hi + 1]
    if x.size < 5 or not np.all(y > 0):
        return None
    x0, half_width = float(wl[i]), 0.5 * float(x[-1] - x[0])
    u = (x - x0) / half_width  # centred and scaled: a well-conditioned fit
    poly = np.polynomial.Polynomial(np.polynomial.polynomial.polyfit(u, np.log(y), 3, w=np.sqrt(y / top)))
    lo_u, hi_u = float(u[0]), float(u[-1])
    # the stationary points: roots of c1 + 2 c2 u + 3 c3 u² by the cancellation-free formula
    # (c3 is ~0 for a symmetric line, where a companion-matrix solver loses the finite root)
    _, c1, c2, c3 = (float(v) for v in poly.coef)
    roots = _quadratic_roots(3.0 * c3, 2.0 * c2, c1)
    cands = [r for r in roots if math.isfinite(r) and lo_u <= r <= hi_u and poly.deriv(2)(r) < 0]
    if not cands:
        return None
    best = max(cands, key=lambda c: float(poly(c)))
    return x0 + best * half_width, float(np.exp(poly(best)))


def el_peak_fwhm(wavelength_nm: npt.ArrayLike, power: npt.ArrayLike) -> tuple[float, float]:
    """EL peak wavelength and FWHM of a spectral power distribution.

    The peak is the maximum of a weighted cubic fitted to ln(power) over the peak region (the
    contiguous samples above :data:`PEAK_FIT_FRACTION` of the maximum; :func:`_fit_peak`), with
    3-point parabolic interpolation as the fallback for a region of fewer than 5 samples. The
    FWHM is the distance between the half-maximum crossings nearest the peak on each side,
    linearly interpolated (NaN if the spectrum does not fall below half maximum on both sides).
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    p = np.asarray(power, dtype=float)
    i = int(np.argmax(p))
    fitted = _fit_peak(wl, p, i)
    if fitted is not None:
        peak_nm, peak_val = fitted
    elif 0 < i < wl.size - 1:
        peak_nm, peak_val = _parabolic_vertex(wl[i - 1 : i + 2], p[i - 1 : i + 2])
    else:
        peak_nm, peak_val = float(wl[i]), float(p[i])
    half = 0.5 * peak_val
    below = p < half
    left_idx = np.flatnonzero(below[:i])
    right_idx = np.flatnonzero(below[i + 1 :])
    if left_idx.size == 0 or right_idx.size == 0 or not peak_val > 0:
        return peak_nm, math.nan
    j = int(left_idx[-1])  # p[j] < half <= p[j+1]
    k = int(right_idx[0]) + i + 1  # p[k-1] >= half > p[k]
    xl = wl[j] + (half - p[j]) * (wl[j + 1] - wl[j]) / (p[j + 1] - p[j])
    xr = wl[k - 1] + (half - p[k - 1]) * (wl[k] - wl[k - 1]) / (p[k] - p[k - 1])
    return peak_nm, float(xr - xl)


@dataclass(frozen=True)
class SpectrumFeatures:
    peak_nm: float
    fwhm_nm: float
    cie_x: float
    cie_y: float


def spectrum_features(spectrum: Spectrum) -> SpectrumFeatures:
    """EL peak, FWHM and CIE 1931 (x, y), all on the spectral power distribution."""
    p = spectrum.power()
    peak, fwhm = el_peak_fwhm(spectrum.wavelength_nm, p)
    x, y = cie_xy(spectrum.wavelength_nm, p)
    return SpectrumFeatures(peak_nm=peak, fwhm_nm=fwhm, cie_x=x, cie_y=y)
