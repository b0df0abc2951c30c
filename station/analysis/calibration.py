"""The calibration of one pixel position: pixel area, photodiode responsivity and the
collection geometry (:class:`Calibration`, Lambertian :func:`lambertian_fraction`).

Part of the photometry chain described in :mod:`station.analysis.photometry` and
``docs/measurement.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .spectrum import FloatArray

__all__ = ["Calibration", "lambertian_fraction"]


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
        return cast(FloatArray, np.interp(
            np.asarray(wavelength_nm, dtype=float),
            np.asarray(self.responsivity_wavelength_nm),
            np.asarray(self.responsivity_a_per_w),
            left=0.0,
            right=0.0,
        ))

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
