"""Sweep summary: one Table S1 row (V_on, L_max, CE_max, EQE_max, PE_max, EL peak, FWHM, CIE x, y).

Pure and vectorised: a 10,000-point sweep is summarised in well under a millisecond plus one
spectrum's features (see ``bench/bench_analysis.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .photometry import PreparedSpectra, Spectrum, nearest_index, spectrum_features

__all__ = ["AtPoint", "SweepSummary", "estimate_noise_floor", "sweep_summary", "turn_on_voltage"]


def _num(x: float | None) -> float | None:
    """JSON-safe number: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class AtPoint:
    """Where a maximum occurs."""

    index: int
    j_ma_cm2: float
    v: float
    l_cd_m2: float

    def to_dict(self) -> dict[str, Any]:
        return {"j_ma_cm2": _num(self.j_ma_cm2), "v": _num(self.v), "l_cd_m2": _num(self.l_cd_m2)}


@dataclass(frozen=True)
class SweepSummary:
    von_v: float | None
    von_method: str
    threshold_cd_m2: float
    noise_floor_cd_m2: float | None
    noise_floor_source: str
    l_max_cd_m2: float | None
    l_max_at: AtPoint | None
    ce_max_cd_a: float | None
    ce_max_at: AtPoint | None
    eqe_max_pct: float | None
    eqe_max_at: AtPoint | None
    pe_max_lm_w: float | None
    pe_max_at: AtPoint | None
    el_peak_nm: float | None
    el_fwhm_nm: float | None
    cie_x: float | None
    cie_y: float | None
    spectrum_voltage_v: float | None
    spectrum_basis: str
    n_points: int
    efficiency_basis: str = "all points"

    def to_dict(self) -> dict[str, Any]:
        def at(a: AtPoint | None) -> dict[str, Any] | None:
            return a.to_dict() if a is not None else None

        return {
            "von_v": _num(self.von_v),
            "l_max_cd_m2": _num(self.l_max_cd_m2),
            "ce_max_cd_a": _num(self.ce_max_cd_a),
            "eqe_max_pct": _num(self.eqe_max_pct),
            "pe_max_lm_w": _num(self.pe_max_lm_w),
            "el_peak_nm": _num(self.el_peak_nm),
            "el_fwhm_nm": _num(self.el_fwhm_nm),
            "cie_x": _num(self.cie_x),
            "cie_y": _num(self.cie_y),
            "l_max_at": at(self.l_max_at),
            "ce_max_at": at(self.ce_max_at),
            "eqe_max_at": at(self.eqe_max_at),
            "pe_max_at": at(self.pe_max_at),
            "von_method": self.von_method,
            "threshold_cd_m2": self.threshold_cd_m2,
            "noise_floor_cd_m2": _num(self.noise_floor_cd_m2),
            "noise_floor_source": self.noise_floor_source,
            "spectrum_voltage_v": _num(self.spectrum_voltage_v),
            "spectrum_basis": self.spectrum_basis,
            "n_points": self.n_points,
            "efficiency_basis": self.efficiency_basis,
        }


def turn_on_voltage(
    voltage_v: npt.ArrayLike, luminance_cd_m2: npt.ArrayLike, threshold_cd_m2: float = 1.0
) -> tuple[float | None, str]:
    """Voltage at which L first reaches ``threshold_cd_m2``, in the order the points were taken.

    Between the last point below and the first point at/above the threshold, V is interpolated
    linearly in log10(L) (L rises roughly exponentially with V near turn-on); if the point below
    has L <= 0 (below the detector's noise) the interpolation is linear in L. Returns
    ``(V_on, method)``; ``(None, "not-reached")`` when L never reaches it, and the first point's
    voltage with method ``"first-point"`` (an upper bound) when the sweep starts above it.
    """
    v = np.asarray(voltage_v, dtype=float)
    lum = np.asarray(luminance_cd_m2, dtype=float)
    above = lum >= threshold_cd_m2  # NaN compares False
    if not above.any():
        return None, "not-reached"
    i = int(np.argmax(above))
    if i == 0:
        return float(v[0]), "first-point"
    # the last finite point before i
    prev = np.flatnonzero(np.isfinite(lum[:i]))
    if prev.size == 0:
        return float(v[i]), "first-point"
    j = int(prev[-1])
    l0, l1, v0, v1 = float(lum[j]), float(lum[i]), float(v[j]), float(v[i])
    if l0 > 0:
        frac = (math.log10(threshold_cd_m2) - math.log10(l0)) / (math.log10(l1) - math.log10(l0))
        method = "log-interpolated"
    else:
        frac = (threshold_cd_m2 - l0) / (l1 - l0)
        method = "linear-interpolated"
    return v0 + frac * (v1 - v0), method


def estimate_noise_floor(points: np.ndarray, k_sigma: float = 3.0) -> tuple[float | None, str]:
    """A luminance noise floor when none is given: ``k_sigma`` standard deviations of the
    per-point dark readings (converted with each point's cd/m^2-per-ampere factor) if the dark
    varies between points; else ``k_sigma`` standard deviations of L at the points at V <= 0
    (at least 3 of them); else unknown."""
    names = points.dtype.names or ()
    lum = points["luminance_cd_m2"]
    if "dark_a" in names and "photodiode_a" in names:
        dark = points["dark_a"]
        good = np.isfinite(dark)
        # a spread at the level of float round-off (identical readings stored through other
        # arithmetic) is no measured noise
        spread = float(np.std(dark[good])) if np.count_nonzero(good) >= 3 else 0.0
        if spread > 1e-9 * float(np.max(np.abs(dark[good]), initial=0.0)):
            net = points["photodiode_a"] - dark
            ok = np.isfinite(lum) & (np.abs(net) > 0)
            if ok.any():
                k = float(np.median(np.abs(lum[ok] / net[ok])))
                return k_sigma * float(np.std(dark[good], ddof=1)) * k, f"{k_sigma:g} sigma of dark readings"
    v = points["voltage_v"]
    sel = (v <= 0) & np.isfinite(lum)
    if np.count_nonzero(sel) >= 3:
        return k_sigma * float(np.std(lum[sel], ddof=1)), f"{k_sigma:g} sigma of L at V <= 0"
    return None, "unknown"


def _max_at(points: np.ndarray, field: str,
            among: np.ndarray | None = None) -> tuple[float | None, AtPoint | None]:
    """The largest finite ``field`` (among the points where ``among`` is true) and where it is."""
    vals = points[field]
    finite = np.isfinite(vals) if among is None else np.isfinite(vals) & among
    if not finite.any():
        return None, None
    i = int(np.argmax(np.where(finite, vals, -np.inf)))
    p = points[i]
    return float(vals[i]), AtPoint(
        index=i,
        j_ma_cm2=float(p["current_density_ma_cm2"]),
        v=float(p["voltage_v"]),
        l_cd_m2=float(p["luminance_cd_m2"]),
    )


def efficiency_points(luminance_cd_m2: np.ndarray, threshold_cd_m2: float,
                      noise_floor_cd_m2: float | None) -> tuple[np.ndarray, str]:
    """Which points the efficiency maxima (CE, EQE, PE) are taken over, and why.

    An efficiency is light over current: below turn-on the light is a few ADC steps above the
    dark reading and the current is nanoamperes, so one step of photodiode noise at 0.1 V gives
    an absurd PE (it has V in the denominator). The maxima are therefore taken over the points
    at or above the turn-on threshold (the V_on luminance, default 1 cd/m²); if no point reaches
    it, over the points above the noise floor; if the floor is unknown too, over all points.
    """
    lum = np.asarray(luminance_cd_m2, dtype=float)
    lit = lum >= threshold_cd_m2
    if lit.any():
        return lit, f"points with L >= {threshold_cd_m2:g} cd/m² (the turn-on threshold)"
    if noise_floor_cd_m2 is not None:
        return lum > noise_floor_cd_m2, f"points with L above the noise floor ({noise_floor_cd_m2:.3g} cd/m²)"
    return np.isfinite(lum), "all points (no point at the threshold, noise floor unknown)"


def sweep_summary(
    points: np.ndarray,
    spectra: Sequence[Spectrum] | Spectrum | PreparedSpectra | None = None,
    threshold_cd_m2: float = 1.0,
    noise_floor_cd_m2: float | None = None,
) -> SweepSummary:
    """Summarise a J-V-L sweep (a structured array with at least voltage_v, current_density_ma_cm2,
    luminance_cd_m2, eqe_pct, ce_cd_a, pe_lm_w, e.g. from :func:`compute_points`).

    The EL peak, FWHM and CIE (x, y) come from the spectrum measured nearest in voltage to the
    maximum-luminance point. CE, EQE and PE maxima are taken over the points
    :func:`efficiency_points` chooses (at/above the turn-on threshold). V_on is the first
    crossing of ``threshold_cd_m2`` in the order the points were taken (so pass the forward
    branch first, or only it).
    """
    n = int(points.shape[0])
    if noise_floor_cd_m2 is not None:
        floor: float | None = float(noise_floor_cd_m2)
        floor_src = "given"
    else:
        floor, floor_src = estimate_noise_floor(points) if n else (None, "unknown")
    if n == 0:
        von, method = None, "not-reached"
    else:
        von, method = turn_on_voltage(points["voltage_v"], points["luminance_cd_m2"], threshold_cd_m2)
    l_max, l_at = _max_at(points, "luminance_cd_m2") if n else (None, None)
    lit, eff_basis = efficiency_points(points["luminance_cd_m2"] if n else np.zeros(0),
                                       threshold_cd_m2, floor)
    ce_max, ce_at = _max_at(points, "ce_cd_a", lit) if n else (None, None)
    eqe_max, eqe_at = _max_at(points, "eqe_pct", lit) if n else (None, None)
    pe_max, pe_at = _max_at(points, "pe_lm_w", lit) if n else (None, None)

    peak = fwhm = cx = cy = None
    spec_v: float | None = None
    basis = "no spectrum"
    spec_list: tuple[Spectrum, ...]
    if spectra is None:
        spec_list = ()
    elif isinstance(spectra, PreparedSpectra):
        spec_list = spectra.spectra
    elif isinstance(spectra, Spectrum):
        spec_list = (spectra,)
    else:
        spec_list = tuple(spectra)
    if spec_list:
        keyed = [s for s in spec_list if s.voltage_v is not None]
        if keyed and l_at is not None:
            ks = np.array([s.voltage_v for s in keyed], dtype=float)
            order = np.argsort(ks, kind="stable")
            j = int(nearest_index(ks[order], l_at.v)[()])
            chosen = keyed[int(order[j])]
            spec_v = chosen.voltage_v
            basis = f"spectrum nearest in voltage to the maximum-luminance point (V = {l_at.v:.4g} V)"
        else:
            chosen = spec_list[-1]
            spec_v = chosen.voltage_v
            basis = "the only/last spectrum (no voltage tags)"
        feats = spectrum_features(chosen)
        peak, fwhm, cx, cy = feats.peak_nm, feats.fwhm_nm, feats.cie_x, feats.cie_y

    return SweepSummary(
        von_v=von,
        von_method=method,
        threshold_cd_m2=float(threshold_cd_m2),
        noise_floor_cd_m2=floor,
        noise_floor_source=floor_src,
        l_max_cd_m2=l_max,
        l_max_at=l_at,
        ce_max_cd_a=ce_max,
        ce_max_at=ce_at,
        eqe_max_pct=eqe_max,
        eqe_max_at=eqe_at,
        pe_max_lm_w=pe_max,
        pe_max_at=pe_at,
        el_peak_nm=peak,
        el_fwhm_nm=fwhm,
        cie_x=cx,
        cie_y=cy,
        spectrum_voltage_v=spec_v,
        spectrum_basis=basis,
        n_points=n,
        efficiency_basis=eff_basis,
    )
