"""Prepared spectra: the per-spectrum integrals against responsivity, V(lambda) and
lambda/(hc), computed once per spectrum and calibration (:func:`prepare_spectra`), and the
matching of points to spectra (nearest, or interpolated between the two around a point).

Part of the photometry chain described in :mod:`station.analysis.photometry` and
``docs/measurement.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from .calibration import Calibration
from .colorimetry import photopic_v
from .spectrum import LIGHT_SPEED_M_S, PLANCK_J_S, FloatArray, Spectrum, trapz

__all__ = ["MatchKey", "PreparedSpectra", "nearest_index", "prepare_spectra"]

MatchKey = Literal["voltage_v", "t_s"]


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
        sr[j] = trapz(S * calibration.responsivity_at(wl), wl)
        sv[j] = trapz(S * photopic_v(wl), wl)
        ph[j] = trapz(S * (wl * 1e-9) / (PLANCK_J_S * LIGHT_SPEED_M_S), wl)
        inside = (wl >= rwl[0]) & (wl <= rwl[-1])
        outside[j] = 1.0 - trapz(np.where(inside, S, 0.0), wl)
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
