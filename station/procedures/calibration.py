"""The photodiode calibration: the responsivity table and a pixel's Calibration."""

from __future__ import annotations

from pathlib import Path

from ..analysis.photometry import (
    Calibration,
)
from ..config import StationConfig

DATA_DIR = Path(__file__).parent.parent / "data"


def load_responsivity(path: str | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A CSV of ``wavelength_nm,a_per_w`` ('#' comments and a header line allowed); default: the
    built-in typical Si photodiode table."""
    p = Path(path) if path else DATA_DIR / "si_photodiode_responsivity.csv"
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"responsivity file {p}: {e}") from None
    wl: list[float] = []
    r: list[float] = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or (not wl and not line[0].isdigit()):
            continue  # comment, blank or the header
        parts = line.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            wl.append(float(parts[0]))
            r.append(float(parts[1]))
        except ValueError:
            raise ValueError(f"responsivity file {p}, line {n}: expected 'wavelength_nm,a_per_w', "
                             f"got {line!r}") from None
    if len(wl) < 2:
        raise ValueError(f"responsivity file {p}: needs at least two rows")
    return tuple(wl), tuple(r)


def calibration_for(config: StationConfig, area_m2: float) -> Calibration:
    wl, r = load_responsivity(config.calibration.responsivity_file)
    c = config.calibration
    return Calibration(pixel_area_m2=area_m2, responsivity_wavelength_nm=wl,
                       responsivity_a_per_w=r, photodiode_radius_m=c.photodiode_radius_mm * 1e-3,
                       distance_m=c.photodiode_distance_mm * 1e-3, geometry_factor=c.geometry_factor)
