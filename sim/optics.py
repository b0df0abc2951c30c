"""Optical helpers for the simulator: a silicon photodiode, the Lambertian geometry and colorimetry.

Pure numpy (plus colour-science for the CIE tables); no I/O, no clock. SI inside, units in names.

Colorimetry follows CIE 015:2018 *Colorimetry*, 4th ed.: the CIE 1931 2° colour-matching functions
and the CIE 1924 photopic luminous efficiency function V(λ), both tabulated every 1 nm from 360 nm
to 830 nm (the tables shipped by colour-science), linearly interpolated onto other grids and taken
as zero outside that range. K_m = 683 lm/W (CIE 015:2018 gives 683.002 lm/W; the 683 lm/W of the
SI definition of the candela is used throughout this project).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CIE_WAVELENGTH_NM",
    "C_LIGHT_M_S",
    "H_PLANCK_J_S",
    "K_M_LM_PER_W",
    "Q_E_C",
    "SI_RESPONSIVITY_A_PER_W",
    "SI_RESPONSIVITY_WAVELENGTH_NM",
    "cie_1931_cmfs",
    "energy_to_photon",
    "lambertian_fraction",
    "photodiode_current_a",
    "photon_to_energy",
    "photopic_v",
    "si_responsivity_a_per_w",
    "spectrum_xy",
]

# CODATA 2018 exact values (SI 2019).
H_PLANCK_J_S = 6.62607015e-34
C_LIGHT_M_S = 299_792_458.0
Q_E_C = 1.602176634e-19
K_M_LM_PER_W = 683.0

# --------------------------------------------------------------------------------------------
# Silicon photodiode spectral responsivity.
#
# Source: ams OSRAM BPX 65 silicon PIN photodiode datasheet — "relative spectral sensitivity"
# typical curve (digitised by P. J. Aphalo, repository aphalo/photobiologySensors,
# data-raw/ams_BPX65.csv, 400-1150 nm), resampled here every 10 nm with an 8 nm local linear fit,
# and scaled by the typical spectral sensitivity S_λ ≈ 0.55 A/W at 850 nm (quantum yield ≈ 0.80)
# quoted for the BPX-series PIN photodiodes (check the current datasheet before relying on it).
# The datasheet gives the spectral range of sensitivity (S = 10 % of S_max) as 350-1100 nm; the
# 300-390 nm values are an extrapolation to that 10 % point and below it (marked below), not
# datasheet readings. Values near 520 nm (~0.27 A/W) and the peak
# (~0.55 A/W at 860-870 nm) are typical of unfiltered Si photodiodes (Hamamatsu S1337 / Thorlabs
# FDS100 class detectors peak a little higher, ~0.6 A/W near 900-960 nm). This is a *typical*
# curve for simulation, not a calibration: a real station uses its detector's calibration file.
# --------------------------------------------------------------------------------------------
SI_RESPONSIVITY_WAVELENGTH_NM: NDArray[np.float64] = np.arange(300.0, 1101.0, 10.0)
SI_RESPONSIVITY_A_PER_W: NDArray[np.float64] = np.array(
    [
        # 300-390 nm: extrapolated (10 % of peak at 350 nm per the datasheet's spectral range)
        0.010, 0.017, 0.025, 0.033, 0.042, 0.055, 0.068, 0.082, 0.094, 0.107,
        # 400-490 nm
        0.119, 0.136, 0.152, 0.166, 0.179, 0.192, 0.205, 0.217, 0.228, 0.239,
        # 500-590 nm
        0.251, 0.261, 0.271, 0.282, 0.293, 0.303, 0.314, 0.325, 0.336, 0.349,
        # 600-690 nm
        0.362, 0.376, 0.392, 0.408, 0.426, 0.441, 0.455, 0.463, 0.469, 0.475,
        # 700-790 nm
        0.479, 0.483, 0.487, 0.491, 0.495, 0.498, 0.502, 0.507, 0.511, 0.515,
        # 800-890 nm
        0.520, 0.525, 0.529, 0.534, 0.540, 0.543, 0.547, 0.547, 0.546, 0.543,
        # 900-990 nm
        0.536, 0.528, 0.518, 0.505, 0.491, 0.477, 0.460, 0.439, 0.406, 0.371,
        # 1000-1090 nm
        0.341, 0.312, 0.286, 0.258, 0.227, 0.188, 0.151, 0.127, 0.106, 0.087,
        # 1100 nm
        0.072,
    ]
)  # fmt: skip


def si_responsivity_a_per_w(wavelength_nm: ArrayLike) -> NDArray[np.float64]:
    """Silicon photodiode responsivity (A/W) at ``wavelength_nm``, linear interpolation of the table.

    Zero outside 300-1100 nm (the table's range).
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    r = np.interp(wl, SI_RESPONSIVITY_WAVELENGTH_NM, SI_RESPONSIVITY_A_PER_W, left=0.0, right=0.0)
    return np.asarray(r, dtype=np.float64)


def lambertian_fraction(radius_m: ArrayLike, distance_m: ArrayLike) -> NDArray[np.float64]:
    """Fraction of a Lambertian emitter's forward flux collected by a coaxial disc detector.

    For a small Lambertian source on the axis of a disc of radius ``r`` at distance ``d`` the
    collected fraction of the forward (hemispherical) flux is F = sin²θ = r² / (r² + d²).
    """
    r = np.asarray(radius_m, dtype=float)
    d = np.asarray(distance_m, dtype=float)
    if np.any(r < 0) or np.any(d < 0):
        raise ValueError("radius_m and distance_m must be non-negative")
    r2 = r * r
    return np.asarray(r2 / (r2 + d * d), dtype=float)


def energy_to_photon(wavelength_nm: ArrayLike, power_w_per_nm: ArrayLike) -> NDArray[np.float64]:
    """Spectral power (W/nm) to spectral photon flux (photons s⁻¹ nm⁻¹): N = P·λ/(hc).

    ``wavelength_nm`` broadcasts against ``power_w_per_nm`` (wavelength on the last axis).
    """
    wl_m = np.asarray(wavelength_nm, dtype=float) * 1e-9
    return np.asarray(power_w_per_nm, dtype=float) * wl_m / (H_PLANCK_J_S * C_LIGHT_M_S)


def photon_to_energy(wavelength_nm: ArrayLike, photons_per_s_nm: ArrayLike) -> NDArray[np.float64]:
    """Spectral photon flux (photons s⁻¹ nm⁻¹) to spectral power (W/nm): P = N·hc/λ.

    A spectrometer counts photons; V(λ) and the CIE functions weigh power, so convert first.
    """
    wl_m = np.asarray(wavelength_nm, dtype=float) * 1e-9
    return np.asarray(photons_per_s_nm, dtype=float) * (H_PLANCK_J_S * C_LIGHT_M_S) / wl_m


@cache
def _cie_tables() -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    import colour  # imported lazily: colour-science is slow to import

    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    lef = colour.SDS_LEFS["CIE 1924 Photopic Standard Observer"]
    wl = np.asarray(cmfs.wavelengths, dtype=float)
    xyz = np.asarray(cmfs.values, dtype=float)
    v = np.interp(wl, np.asarray(lef.wavelengths, dtype=float), np.asarray(lef.values, dtype=float))
    for arr in (wl, xyz, v):
        arr.setflags(write=False)
    return wl, xyz, v


CIE_WAVELENGTH_NM: NDArray[np.float64] = np.arange(360.0, 831.0, 1.0)
"""The 1 nm grid (360-830 nm) of the CIE tables; the simulator integrates on it."""


def photopic_v(wavelength_nm: ArrayLike) -> NDArray[np.float64]:
    """CIE 1924 photopic luminous efficiency V(λ) (CIE 015:2018), zero outside 360-830 nm."""
    wl_tab, _, v = _cie_tables()
    return np.asarray(np.interp(np.asarray(wavelength_nm, dtype=float), wl_tab, v, left=0.0, right=0.0),
                      dtype=np.float64)


def cie_1931_cmfs(wavelength_nm: ArrayLike) -> NDArray[np.float64]:
    """CIE 1931 2° colour-matching functions x̄, ȳ, z̄ at ``wavelength_nm``; shape (..., 3)."""
    wl_tab, xyz, _ = _cie_tables()
    wl = np.asarray(wavelength_nm, dtype=float)
    return np.stack([np.interp(wl, wl_tab, xyz[:, i], left=0.0, right=0.0) for i in range(3)], axis=-1)


def spectrum_xy(
    wavelength_nm: ArrayLike, spectral_power: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """CIE 1931 chromaticity (x, y) of a spectral *power* distribution (CIE 015:2018 §7).

    ``spectral_power`` has wavelength on its last axis (any leading shape); the scale is
    irrelevant. Integration is by the trapezoidal rule on the given grid.
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    s = np.asarray(spectral_power, dtype=float)
    cmf = cie_1931_cmfs(wl)  # (n, 3)
    xyz = np.trapezoid(s[..., :, None] * cmf, wl, axis=-2)
    total = xyz.sum(axis=-1)
    return xyz[..., 0] / total, xyz[..., 1] / total


def photodiode_current_a(
    optical_power_w: ArrayLike,
    wavelength_nm: ArrayLike,
    spectrum_w_per_nm: ArrayLike,
    radius_m: float,
    distance_m: float,
) -> NDArray[np.float64]:
    """Photocurrent of a coaxial Si photodiode over a Lambertian pixel: I = F·P·∫S·R dλ.

    ``spectrum_w_per_nm`` is the relative spectral power normalised to ∫S dλ = 1 (wavelength on
    the last axis, leading axes broadcasting with ``optical_power_w``); P is the forward optical
    power. Dark current and noise are the caller's business.
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    s = np.asarray(spectrum_w_per_nm, dtype=float)
    weight = np.trapezoid(s * si_responsivity_a_per_w(wl), wl, axis=-1)
    frac = lambertian_fraction(radius_m, distance_m)
    return np.asarray(np.asarray(optical_power_w, dtype=float) * frac * weight, dtype=np.float64)
