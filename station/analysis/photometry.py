"""Photometry and radiometry of an LED pixel, per point and vectorised over blocks of points.

Pure functions and frozen dataclasses: no I/O, no clock. Every formula is written out, with its
assumptions and sources, in ``docs/measurement.md``.

The chain, for one point with LED current I at voltage V and photodiode current I_pd:

* dark subtraction: I_net = I_pd - I_dark
* the spectrum measured nearest the point (by voltage in a sweep, by time in an aging run), as a
  spectral *power* distribution S(lambda) normalised so that integral S dlambda = 1 (a
  spectrometer that reports photon counts is converted first: power ~ counts * hc / lambda)
* forward optical power P = I_net / (F * integral S*R dlambda)   (R: photodiode responsivity, A/W)
* luminance L = K_m * P_axis * integral S*V dlambda / (pi * A)
* EQE = P * integral S*lambda/(hc) dlambda * q / I
* CE = L * A / I;  PE = K_m * P * integral S*V dlambda / (I * V)  (= pi*L*A/(I*V) for a Lambertian pixel)
* J = I / A, reported in mA/cm^2

Per spectrum the three integrals are computed once (:func:`prepare_spectra`), so a block of points
is a handful of numpy operations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from scipy import constants as _const

__all__ = [
    "ELEMENTARY_CHARGE_C",
    "K_M_LM_PER_W",
    "LIGHT_SPEED_M_S",
    "PLANCK_J_S",
    "POINT_DTYPE",
    "Calibration",
    "PointFactors",
    "PreparedSpectra",
    "Spectrum",
    "SpectrumFeatures",
    "SpectrumKind",
    "cie_xy",
    "compute_points",
    "dark_noise_floor_cd_m2",
    "detection_limit_a",
    "el_peak_fwhm",
    "lambertian_fraction",
    "luminance_and_eqe",
    "luminance_per_photodiode_amp",
    "nearest_index",
    "point_factors",
    "prepare_spectra",
    "spectral_power",
    "spectrum_features",
    "subtract_dark",
]

FloatArray = npt.NDArray[np.float64]
SpectrumKind = Literal["photon", "energy"]
MatchKey = Literal["voltage_v", "t_s"]

#: Maximum luminous efficacy for photopic vision (CIE 1924 V(lambda), SI definition of the candela).
K_M_LM_PER_W = 683.0
PLANCK_J_S: float = float(_const.h)
LIGHT_SPEED_M_S: float = float(_const.c)
ELEMENTARY_CHARGE_C: float = float(_const.e)

#: 1 A/m^2 = 1000 mA / 1e4 cm^2 = 0.1 mA/cm^2
_A_PER_M2_TO_MA_PER_CM2 = 0.1

#: One row per measured point. ``photodiode_a`` is the raw reading; ``dark_a`` what was subtracted.
POINT_DTYPE = np.dtype(
    [
        ("voltage_v", "f8"),
        ("current_a", "f8"),
        ("current_density_ma_cm2", "f8"),
        ("photodiode_a", "f8"),
        ("dark_a", "f8"),
        ("optical_power_w", "f8"),
        ("luminance_cd_m2", "f8"),
        ("eqe_pct", "f8"),
        ("ce_cd_a", "f8"),
        ("pe_lm_w", "f8"),
        ("spectrum_index", "i4"),
    ]
)


def _trapz(y: FloatArray, x: FloatArray) -> float:
    """Trapezoidal integral (numpy-version independent)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) * 0.5)


def lambertian_fraction(radius_m: float, distance_m: float) -> float:
    """Fraction of a small Lambertian emitter's forward (hemispherical) power that falls on a
    coaxial disc detector of radius r at distance d: F = r^2 / (r^2 + d^2)."""
    r2 = radius_m * radius_m
    return r2 / (r2 + distance_m * distance_m)


def _as_float_tuple(values: Any, name: str) -> tuple[float, ...]:
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a list of numbers ({exc})") from None
    return tuple(float(v) for v in arr)


def _positive_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return v


@dataclass(frozen=True)
class Calibration:
    """Everything needed to turn a photodiode current into light, for one pixel position.

    Geometry: give the photodiode's active radius and its distance from the pixel (on-axis,
    Lambertian F = r^2/(r^2+d^2)), or a measured ``geometry_factor`` (the fraction of the
    forward-emitted power that reaches the photodiode, e.g. from a goniometer or an
    integrating-sphere cross-check) for non-Lambertian emitters, or both. When both are given the
    measured factor is used for optical power (EQE, PE) and the Lambertian on-axis factor for
    luminance and CE (an on-axis detector of small solid angle measures axial intensity whatever the
    angular profile). When only one is given it is used for everything.
    """

    pixel_area_m2: float
    #: Any sequence or array is accepted; stored as a tuple of floats.
    responsivity_wavelength_nm: Sequence[float] | npt.NDArray[Any]
    responsivity_a_per_w: Sequence[float] | npt.NDArray[Any]
    photodiode_radius_m: float | None = None
    distance_m: float | None = None
    geometry_factor: float | None = None

    def __post_init__(self) -> None:
        area = _positive_or_none(self.pixel_area_m2, "pixel_area_m2")
        if area is None:
            raise ValueError("pixel_area_m2 is required")
        object.__setattr__(self, "pixel_area_m2", area)
        wl = _as_float_tuple(self.responsivity_wavelength_nm, "responsivity.wavelength_nm")
        rr = _as_float_tuple(self.responsivity_a_per_w, "responsivity.a_per_w")
        if len(wl) != len(rr):
            raise ValueError(f"responsivity: wavelength_nm has {len(wl)} values but a_per_w has {len(rr)}")
        if len(wl) < 2:
            raise ValueError("responsivity: need at least 2 (wavelength, A/W) pairs")
        w = np.asarray(wl)
        r = np.asarray(rr)
        if not np.all(np.isfinite(w)) or not np.all(np.diff(w) > 0):
            raise ValueError("responsivity.wavelength_nm must be finite and strictly increasing")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError("responsivity.a_per_w must be finite and >= 0")
        object.__setattr__(self, "responsivity_wavelength_nm", wl)
        object.__setattr__(self, "responsivity_a_per_w", rr)
        rad = _positive_or_none(self.photodiode_radius_m, "photodiode_radius_m")
        dist = _positive_or_none(self.distance_m, "distance_m")
        gf = _positive_or_none(self.geometry_factor, "geometry_factor")
        if (rad is None) != (dist is None):
            raise ValueError("geometry: give both photodiode_radius_m and distance_m, or neither")
        if rad is None and gf is None:
            raise ValueError(
                "geometry: give photodiode_radius_m and distance_m (Lambertian), or geometry_factor"
            )
        if gf is not None and gf > 1.0:
            raise ValueError(f"geometry_factor is a collected fraction and must be <= 1, got {gf}")
        object.__setattr__(self, "photodiode_radius_m", rad)
        object.__setattr__(self, "distance_m", dist)
        object.__setattr__(self, "geometry_factor", gf)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def lambertian_factor(self) -> float | None:
        if self.photodiode_radius_m is None or self.distance_m is None:
            return None
        return lambertian_fraction(self.photodiode_radius_m, self.distance_m)

    @property
    def collection_fraction(self) -> float:
        """F used for total forward optical power (EQE, PE)."""
        if self.geometry_factor is not None:
            return self.geometry_factor
        lf = self.lambertian_factor
        assert lf is not None
        return lf

    @property
    def axial_fraction(self) -> float:
        """F used for on-axis luminance (L, CE)."""
        lf = self.lambertian_factor
        if lf is not None:
            return lf
        assert self.geometry_factor is not None
        return self.geometry_factor

    def responsivity_at(self, wavelength_nm: npt.ArrayLike) -> FloatArray:
        """Responsivity (A/W) linearly interpolated; zero outside the table."""
        return np.interp(
            np.asarray(wavelength_nm, dtype=float),
            np.asarray(self.responsivity_wavelength_nm),
            np.asarray(self.responsivity_a_per_w),
            left=0.0,
            right=0.0,
        )

    def replace(self, **changes: Any) -> Calibration:
        return replace(self, **changes)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_area_m2": self.pixel_area_m2,
            "responsivity": {
                "wavelength_nm": list(self.responsivity_wavelength_nm),
                "a_per_w": list(self.responsivity_a_per_w),
            },
            "geometry": {
                "photodiode_radius_m": self.photodiode_radius_m,
                "distance_m": self.distance_m,
                "geometry_factor": self.geometry_factor,
                # informational, ignored when read back:
                "lambertian_factor": self.lambertian_factor,
                "collection_fraction": self.collection_fraction,
                "axial_fraction": self.axial_fraction,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"calibration: expected an object, got {type(data).__name__}")
        if "pixel_area_m2" not in data:
            raise ValueError("calibration: missing field 'pixel_area_m2'")
        resp = data.get("responsivity")
        if not isinstance(resp, Mapping):
            raise ValueError("calibration: missing object 'responsivity' {wavelength_nm[], a_per_w[]}")
        for key in ("wavelength_nm", "a_per_w"):
            if key not in resp:
                raise ValueError(f"calibration: missing field 'responsivity.{key}'")
        geom = data.get("geometry", {})
        if not isinstance(geom, Mapping):
            raise ValueError("calibration: 'geometry' must be an object")
        return cls(
            pixel_area_m2=data["pixel_area_m2"],
            responsivity_wavelength_nm=resp["wavelength_nm"],
            responsivity_a_per_w=resp["a_per_w"],
            photodiode_radius_m=geom.get("photodiode_radius_m"),
            distance_m=geom.get("distance_m"),
            geometry_factor=geom.get("geometry_factor"),
        )


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One spectrometer reading. ``values`` are spectral densities (per nm, or per pixel on a
    uniform pixel grid) in photon counts (``kind="photon"``) or power (``kind="energy"``).
    ``voltage_v`` tags a sweep spectrum, ``t_s`` an aging spectrum."""

    wavelength_nm: FloatArray
    values: FloatArray
    kind: SpectrumKind = "energy"
    voltage_v: float | None = None
    t_s: float | None = None

    def __post_init__(self) -> None:
        wl = np.array(self.wavelength_nm, dtype=float).ravel()  # copies: we freeze them
        v = np.array(self.values, dtype=float).ravel()
        if wl.shape != v.shape:
            raise ValueError(f"spectrum: {wl.size} wavelengths but {v.size} values")
        if wl.size < 3:
            raise ValueError("spectrum: need at least 3 samples")
        if not np.all(np.isfinite(wl)) or not np.all(np.isfinite(v)):
            raise ValueError("spectrum: wavelengths and values must be finite")
        if not np.all(np.diff(wl) > 0):
            order = np.argsort(wl, kind="stable")
            wl, v = wl[order], v[order]
            if not np.all(np.diff(wl) > 0):
                raise ValueError("spectrum: repeated wavelength")
        if self.kind not in ("photon", "energy"):
            raise ValueError(f"spectrum: kind must be 'photon' or 'energy', got {self.kind!r}")
        wl.setflags(write=False)
        v.setflags(write=False)
        object.__setattr__(self, "wavelength_nm", wl)
        object.__setattr__(self, "values", v)
        for name in ("voltage_v", "t_s"):
            val = getattr(self, name)
            if val is not None:
                object.__setattr__(self, name, float(val))

    def power(self) -> FloatArray:
        """Relative spectral power distribution (not normalised)."""
        return spectral_power(self.wavelength_nm, self.values, self.kind)

    def normalised_power(self) -> FloatArray:
        """S(lambda) with integral S dlambda = 1 (lambda in nm)."""
        p = self.power()
        area = _trapz(p, self.wavelength_nm)
        if not area > 0:
            raise ValueError("spectrum: integrated power is not positive")
        return p / area

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.voltage_v is not None:
            d["voltage_v"] = self.voltage_v
        if self.t_s is not None:
            d["t_s"] = self.t_s
        d["kind"] = self.kind
        d["wavelength_nm"] = self.wavelength_nm.tolist()
        d["counts_or_power"] = self.values.tolist()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spectrum:
        if not isinstance(data, Mapping):
            raise ValueError(f"spectrum: expected an object, got {type(data).__name__}")
        for key in ("wavelength_nm", "counts_or_power"):
            if key not in data:
                raise ValueError(f"spectrum: missing field {key!r}")
        kind = data.get("kind", "energy")
        if kind not in ("photon", "energy"):
            raise ValueError(f"spectrum: kind must be 'photon' or 'energy', got {kind!r}")
        try:
            wl = np.asarray(data["wavelength_nm"], dtype=float)
            vals = np.asarray(data["counts_or_power"], dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"spectrum: wavelength_nm/counts_or_power not numeric ({exc})") from None
        return cls(
            wavelength_nm=wl,
            values=vals,
            kind=cast(SpectrumKind, kind),
            voltage_v=data.get("voltage_v"),
            t_s=data.get("t_s"),
        )


def spectral_power(wavelength_nm: npt.ArrayLike, values: npt.ArrayLike, kind: SpectrumKind) -> FloatArray:
    """Relative spectral power from a spectrometer reading: photon counts N(lambda) carry energy
    N*h*c/lambda, so power ~ counts / lambda (the constant hc drops out on normalisation)."""
    wl = np.asarray(wavelength_nm, dtype=float)
    v = np.asarray(values, dtype=float)
    if kind == "energy":
        return v.copy()
    if kind == "photon":
        return v * (PLANCK_J_S * LIGHT_SPEED_M_S) / (wl * 1e-9)
    raise ValueError(f"spectrum kind must be 'photon' or 'energy', got {kind!r}")


# -- CIE tables (from colour-science, never typed by hand) -------------------------------------


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
    return np.interp(np.asarray(wavelength_nm, dtype=float), wl, v, left=0.0, right=0.0)


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
    xyz = [_trapz(p * cm[:, k], wl) for k in range(3)]
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


# -- prepared spectra: the per-spectrum integrals ------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreparedSpectra:
    """Per-spectrum integrals for one calibration, sorted by the key the points are matched on.

    ``sr_a_per_w`` = integral S*R dlambda, ``sv`` = integral S*V dlambda,
    ``photons_per_j`` = integral S*lambda/(hc) dlambda (photons per joule of emitted light),
    ``outside_responsivity`` the fraction of power outside the responsivity table (ideally 0).
    Index arrays refer to the order the spectra were given in (``spectra``)."""

    match: MatchKey
    key: FloatArray
    order: npt.NDArray[np.intp]
    sr_a_per_w: FloatArray
    sv: FloatArray
    photons_per_j: FloatArray
    outside_responsivity: FloatArray
    spectra: tuple[Spectrum, ...] = field(default=())

    def nearest(self, query: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Index (into the sorted arrays) of the spectrum nearest each query value."""
        return nearest_index(self.key, query)

    def interpolated(self, query: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(sr_a_per_w, sv, photons_per_j)`` of the spectrum at each query value, linearly
        interpolated between the two measured spectra around it (each normalised to unit
        power, so the mixture is too and its integrals are the same mixture of theirs); the
        end spectrum outside the measured range (no extrapolation)."""
        k = self.key
        q = np.asarray(query, dtype=float)
        if k.size == 1:
            z = np.zeros(q.shape, dtype=np.intp)
            return self.sr_a_per_w[z], self.sv[z], self.photons_per_j[z]
        hi = np.clip(np.searchsorted(k, q, side="right"), 1, k.size - 1)
        lo = hi - 1
        span = k[hi] - k[lo]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(span > 0, (q - k[lo]) / np.where(span > 0, span, 1.0), 0.0)
        w = np.clip(w, 0.0, 1.0)

        def mix(a: FloatArray) -> FloatArray:
            return (1.0 - w) * a[lo] + w * a[hi]

        return mix(self.sr_a_per_w), mix(self.sv), mix(self.photons_per_j)


def nearest_index(sorted_keys: npt.ArrayLike, query: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """For each query value the index of the nearest value in ``sorted_keys`` (ascending; ties go
    to the lower key). Vectorised: one ``searchsorted``."""
    k = np.asarray(sorted_keys, dtype=float)
    q = np.asarray(query, dtype=float)
    if k.size == 1:
        return np.zeros(q.shape, dtype=np.intp)
    hi = np.clip(np.searchsorted(k, q, side="left"), 1, k.size - 1)
    lo = hi - 1
    choose_hi = np.abs(k[hi] - q) < np.abs(q - k[lo])
    return np.where(choose_hi, hi, lo).astype(np.intp)


def prepare_spectra(
    spectra: Sequence[Spectrum] | Spectrum,
    calibration: Calibration,
    match: MatchKey = "voltage_v",
) -> PreparedSpectra:
    """Integrals of each spectrum against responsivity, V(lambda) and lambda/(hc)."""
    if isinstance(spectra, Spectrum):
        spectra = [spectra]
    spectra = tuple(spectra)
    if not spectra:
        raise ValueError("no spectrum: luminance and EQE need the emission spectrum")
    n = len(spectra)
    keys = np.empty(n)
    for i, s in enumerate(spectra):
        val = getattr(s, match)
        if val is None:
            if n > 1:
                raise ValueError(f"spectrum {i} has no {match}; needed to pick the nearest of {n}")
            val = 0.0
        keys[i] = val
    order = np.argsort(keys, kind="stable")
    sr = np.empty(n)
    sv = np.empty(n)
    ph = np.empty(n)
    outside = np.empty(n)
    rwl = np.asarray(calibration.responsivity_wavelength_nm)
    for j, i in enumerate(order):
        s = spectra[int(i)]
        wl = s.wavelength_nm
        S = s.normalised_power()
        sr[j] = _trapz(S * calibration.responsivity_at(wl), wl)
        sv[j] = _trapz(S * photopic_v(wl), wl)
        ph[j] = _trapz(S * (wl * 1e-9) / (PLANCK_J_S * LIGHT_SPEED_M_S), wl)
        inside = (wl >= rwl[0]) & (wl <= rwl[-1])
        outside[j] = 1.0 - _trapz(np.where(inside, S, 0.0), wl)
        if not sr[j] > 0:
            raise ValueError(
                f"spectrum {int(i)}: no overlap with the photodiode responsivity table "
                f"({rwl[0]:g}-{rwl[-1]:g} nm)"
            )
    return PreparedSpectra(
        match=match,
        key=keys[order],
        order=order.astype(np.intp),
        sr_a_per_w=sr,
        sv=sv,
        photons_per_j=ph,
        outside_responsivity=outside,
        spectra=spectra,
    )


def subtract_dark(photodiode_a: npt.ArrayLike, dark_a: npt.ArrayLike = 0.0) -> FloatArray:
    """Net photocurrent I_pd - I_dark (broadcasting; a scalar dark or one per point)."""
    return np.asarray(photodiode_a, dtype=float) - np.asarray(dark_a, dtype=float)


@dataclass(frozen=True)
class PointFactors:
    """Per prepared spectrum (sorted order), what one ampere of net photocurrent means:

    ``lum_cd_m2_per_a`` = K_m ∫S·V dλ / (π A f_axial ∫S·R dλ)  — luminance (cd/m²) per A;
    ``eqe_pct_a_per_a`` = 100 q ∫S·λ/(hc) dλ / (f_collected ∫S·R dλ)  — EQE (%) times the drive
    current (A), per A of photocurrent. The formulas of :func:`compute_points`, factored so a
    block of points costs two multiplications (docs/measurement.md)."""

    lum_cd_m2_per_a: FloatArray
    eqe_pct_a_per_a: FloatArray


def point_factors(calibration: Calibration, prepared: PreparedSpectra) -> PointFactors:
    return factors_of(calibration, prepared.sr_a_per_w, prepared.sv, prepared.photons_per_j)


def factors_of(calibration: Calibration, sr: FloatArray, sv: FloatArray,
               photons_per_j: FloatArray) -> PointFactors:
    """:class:`PointFactors` of spectra with these integrals (see :class:`PreparedSpectra`)."""
    return PointFactors(
        lum_cd_m2_per_a=(K_M_LM_PER_W / (math.pi * calibration.pixel_area_m2))
        * sv / (calibration.axial_fraction * sr),
        eqe_pct_a_per_a=(100.0 * ELEMENTARY_CHARGE_C) * photons_per_j
        / (calibration.collection_fraction * sr),
    )


def luminance_and_eqe(
    net_photodiode_a: FloatArray, current_a: FloatArray, factors: PointFactors,
    idx: npt.NDArray[np.intp],
) -> tuple[FloatArray, FloatArray]:
    """Luminance (cd/m²) and EQE (%) of points whose spectra are ``idx``; EQE is NaN where the
    current is <= 0."""
    lum = net_photodiode_a * factors.lum_cd_m2_per_a[idx]
    ok = current_a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        eqe = np.where(ok, net_photodiode_a * factors.eqe_pct_a_per_a[idx]
                       / np.where(ok, current_a, 1.0), np.nan)
    return lum, eqe


def luminance_per_photodiode_amp(
    calibration: Calibration, prepared: PreparedSpectra, index: int = 0
) -> float:
    """cd/m^2 per ampere of net photocurrent for the ``index``-th (sorted) prepared spectrum."""
    return float(point_factors(calibration, prepared).lum_cd_m2_per_a[index])


def detection_limit_a(dark_std_a: float, adc_step_a: float | None = None, k_sigma: float = 3.0) -> float:
    """The photocurrent detection limit: ``k_sigma`` (default 3) standard deviations of the dark
    readings (IUPAC's limit of detection), but never less than one ADC step at the gain they
    were read at: readings that all land on one ADC code have a standard deviation of 0, yet
    nothing below a step is resolved."""
    limit = k_sigma * float(dark_std_a) if math.isfinite(dark_std_a) else 0.0
    if adc_step_a is not None and math.isfinite(adc_step_a):
        limit = max(limit, float(adc_step_a))
    return limit


def dark_noise_floor_cd_m2(
    dark_samples_a: npt.ArrayLike,
    calibration: Calibration,
    prepared: PreparedSpectra,
    index: int = 0,
    k_sigma: float = 3.0,
    adc_step_a: float | None = None,
) -> float:
    """Detection limit (:func:`detection_limit_a` of repeated dark readings) converted to
    luminance with the given spectrum."""
    d = np.asarray(dark_samples_a, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise ValueError("noise floor: need at least 2 dark readings")
    return detection_limit_a(float(np.std(d, ddof=1)), adc_step_a, k_sigma) * luminance_per_photodiode_amp(
        calibration, prepared, index)


def compute_points(
    voltage_v: npt.ArrayLike,
    current_a: npt.ArrayLike,
    photodiode_a: npt.ArrayLike,
    calibration: Calibration,
    spectra: Sequence[Spectrum] | Spectrum | PreparedSpectra,
    dark_a: npt.ArrayLike = 0.0,
    *,
    t_s: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Photometry of a block of points (or one point), vectorised.

    A sweep's point uses the spectrum at its voltage, interpolated between the two measured
    around it (:meth:`PreparedSpectra.interpolated`); an aging sample (``t_s`` given) the
    spectrum nearest in time. Pass a :class:`PreparedSpectra` (from :func:`prepare_spectra`) to reuse the
    integrals across blocks. Returns a structured array of :data:`POINT_DTYPE`. EQE, CE and PE are
    NaN where the current is <= 0 (PE also where V <= 0) instead of infinite.
    """
    v = np.atleast_1d(np.asarray(voltage_v, dtype=float))
    i_a = np.atleast_1d(np.asarray(current_a, dtype=float))
    pd = np.atleast_1d(np.asarray(photodiode_a, dtype=float))
    dark = np.atleast_1d(np.asarray(dark_a, dtype=float))
    # the usual block (equal 1-D arrays, one dark value) needs no broadcast copies; the rest does
    if not (v.ndim == 1 and v.shape == i_a.shape == pd.shape and dark.shape in ((1,), v.shape)):
        try:
            v, i_a, pd, dark = np.broadcast_arrays(v, i_a, pd, dark)
        except ValueError:
            raise ValueError(
                f"compute_points: arrays of different lengths (voltage {v.size}, current "
                f"{i_a.size}, photodiode {pd.size}, dark {dark.size})"
            ) from None
    if v.ndim != 1:
        raise ValueError("compute_points: expected 1-D arrays")
    match: MatchKey = "voltage_v" if t_s is None else "t_s"
    if isinstance(spectra, PreparedSpectra):
        prepared = spectra
        if prepared.match != match:
            raise ValueError(f"prepared spectra are matched on {prepared.match}, points on {match}")
    else:
        prepared = prepare_spectra(spectra, calibration, match)
    if t_s is None:
        query = v
    else:
        query = np.asarray(t_s, dtype=float)
        if query.shape != v.shape:
            query = np.broadcast_to(query, v.shape)
    idx = prepared.nearest(query)

    area = calibration.pixel_area_m2
    net = pd - dark
    if t_s is None:
        # a sweep: the spectrum at each point's voltage, interpolated between the two measured
        # around it (the emission shifts with voltage; docs/measurement.md)
        sr, sv, ph = prepared.interpolated(query)
        lum, eqe = luminance_and_eqe(net, i_a, factors_of(calibration, sr, sv, ph),
                                     np.arange(v.shape[0]))
    else:
        # an aging run: the spectrum nearest in time (spectra are hours apart and barely change)
        sr = prepared.sr_a_per_w[idx]
        sv = prepared.sv[idx]
        lum, eqe = luminance_and_eqe(net, i_a, point_factors(calibration, prepared), idx)
    p_total = net / (calibration.collection_fraction * sr)

    out = np.empty(v.shape[0], dtype=POINT_DTYPE)
    out["voltage_v"] = v
    out["current_a"] = i_a
    out["current_density_ma_cm2"] = i_a * (_A_PER_M2_TO_MA_PER_CM2 / area)
    out["photodiode_a"] = pd
    out["dark_a"] = dark
    out["optical_power_w"] = p_total
    out["luminance_cd_m2"] = lum
    ok = i_a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_i = np.where(ok, 1.0 / np.where(ok, i_a, 1.0), np.nan)
        out["eqe_pct"] = eqe
        out["ce_cd_a"] = lum * area * inv_i
        pe_ok = ok & (v > 0)
        out["pe_lm_w"] = np.where(
            pe_ok, K_M_LM_PER_W * p_total * sv * inv_i / np.where(pe_ok, v, 1.0), np.nan
        )
    out["spectrum_index"] = prepared.order[idx]
    return out
