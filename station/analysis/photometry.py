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

The parts live in modules of their own and are re-exported here, so ``from
station.analysis.photometry import ...`` works for all of them: :mod:`.spectrum` (a reading, its
spectral power, the constants), :mod:`.calibration` (area, responsivity, geometry),
:mod:`.colorimetry` (CIE tables, x and y, EL peak and FWHM) and :mod:`.prepared` (the
per-spectrum integrals, matching points to spectra). This module computes the points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from .calibration import Calibration, lambertian_fraction
from .colorimetry import (
    PEAK_FIT_FRACTION,
    SpectrumFeatures,
    cie_xy,
    cmfs_1931,
    el_peak_fwhm,
    load_reference_tables,
    photopic_v,
    spectrum_features,
)
from .prepared import MatchKey, PreparedSpectra, nearest_index, prepare_spectra
from .spectrum import (
    ELEMENTARY_CHARGE_C,
    K_M_LM_PER_W,
    LIGHT_SPEED_M_S,
    PLANCK_J_S,
    FloatArray,
    Spectrum,
    SpectrumKind,
    spectral_power,
)

__all__ = [
    "ELEMENTARY_CHARGE_C",
    "K_M_LM_PER_W",
    "LIGHT_SPEED_M_S",
    "PEAK_FIT_FRACTION",
    "PLANCK_J_S",
    "POINT_DTYPE",
    "Calibration",
    "MatchKey",
    "PointFactors",
    "PreparedSpectra",
    "Spectrum",
    "SpectrumFeatures",
    "SpectrumKind",
    "cie_xy",
    "cmfs_1931",
    "compute_points",
    "dark_noise_floor_cd_m2",
    "detection_limit_a",
    "el_peak_fwhm",
    "factors_of",
    "lambertian_fraction",
    "load_reference_tables",
    "luminance_and_eqe",
    "luminance_per_photodiode_amp",
    "nearest_index",
    "photopic_v",
    "point_factors",
    "prepare_spectra",
    "spectral_power",
    "spectrum_features",
    "subtract_dark",
]

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


def subtract_dark(photodiode_a: npt.ArrayLike, dark_a: npt.ArrayLike = 0.0) -> FloatArray:
    """Net photocurrent I_pd - I_dark (broadcasting; a scalar dark or one per point)."""
    return cast(FloatArray, np.asarray(photodiode_a, dtype=float) - np.asarray(dark_a, dtype=float))


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
