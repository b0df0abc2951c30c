"""One spectrometer reading (:class:`Spectrum`), its spectral power, and the physical constants
of photometry (SI, from ``scipy.constants``; K_m from the SI definition of the candela).

Part of the photometry chain described in :mod:`station.analysis.photometry` and
``docs/measurement.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from scipy import constants as _const

__all__ = [
    "ELEMENTARY_CHARGE_C",
    "K_M_LM_PER_W",
    "LIGHT_SPEED_M_S",
    "PLANCK_J_S",
    "FloatArray",
    "Spectrum",
    "SpectrumKind",
    "spectral_power",
    "trapz",
]

FloatArray = npt.NDArray[np.float64]
SpectrumKind = Literal["photon", "energy"]

#: Maximum luminous efficacy for photopic vision (CIE 1924 V(lambda), SI definition of the candela).
K_M_LM_PER_W = 683.0
PLANCK_J_S: float = float(_const.h)
LIGHT_SPEED_M_S: float = float(_const.c)
ELEMENTARY_CHARGE_C: float = float(_const.e)


def trapz(y: FloatArray, x: FloatArray) -> float:
    """Trapezoidal integral (numpy-version independent)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) * 0.5)


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
        area = trapz(p, self.wavelength_nm)
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
