"""Measurement science of the station, as pure functions (numpy, scipy, colour-science; no I/O).

Per point / per block (procedures, as points arrive)::

    cal = Calibration(pixel_area_m2=..., responsivity_wavelength_nm=..., responsivity_a_per_w=...,
                      photodiode_radius_m=..., distance_m=...)
    prepared = prepare_spectra(spectra, cal)            # once per new spectrum
    block = compute_points(v, i, i_pd, cal, prepared, dark_a=i_dark)   # structured POINT_DTYPE

Summaries: :func:`sweep_summary` (a Table S1 row), :func:`analyze_lifetime` (L0, peak, Tx, fit),
:func:`fit_acceleration` (T at a reference luminance across pixels). Plots and the HTML report
live in :mod:`station.analysis.plots` and :mod:`station.analysis.report` (matplotlib; imported
on demand). Formulas: ``docs/measurement.md``.
"""

from .lifetime import (
    LEVELS,
    AccelerationFit,
    LifetimeResult,
    StretchedExpFit,
    analyze_lifetime,
    fit_acceleration,
    fit_stretched_exponential,
    stretched_exponential,
)
from .photometry import (
    K_M_LM_PER_W,
    POINT_DTYPE,
    Calibration,
    PreparedSpectra,
    Spectrum,
    SpectrumFeatures,
    cie_xy,
    compute_points,
    dark_noise_floor_cd_m2,
    el_peak_fwhm,
    lambertian_fraction,
    luminance_per_photodiode_amp,
    prepare_spectra,
    spectral_power,
    spectrum_features,
    subtract_dark,
)
from .summary import AtPoint, SweepSummary, estimate_noise_floor, sweep_summary, turn_on_voltage

__all__ = [
    "K_M_LM_PER_W",
    "LEVELS",
    "POINT_DTYPE",
    "AccelerationFit",
    "AtPoint",
    "Calibration",
    "LifetimeResult",
    "PreparedSpectra",
    "Spectrum",
    "SpectrumFeatures",
    "StretchedExpFit",
    "SweepSummary",
    "analyze_lifetime",
    "cie_xy",
    "compute_points",
    "dark_noise_floor_cd_m2",
    "el_peak_fwhm",
    "estimate_noise_floor",
    "fit_acceleration",
    "fit_stretched_exponential",
    "lambertian_fraction",
    "luminance_per_photodiode_amp",
    "prepare_spectra",
    "spectral_power",
    "spectrum_features",
    "stretched_exponential",
    "subtract_dark",
    "sweep_summary",
    "turn_on_voltage",
]
