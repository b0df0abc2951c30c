"""What is on the simulated board: substrates, pixels, each pixel's device preset, area and photodiode.

Two ways to describe it:

* from device presets in order (``--preset dbsa,otac``): pixels 1..N on one substrate, each of
  the default area (4 mm²) with the default photodiode (radius 5.64 mm, i.e. 100 mm² of active
  area, 10 mm above the pixel). ``NAME*K`` repeats a preset K times (``dbsa*6``);
* from a TOML layout file (``--layout board.toml``)::

      serial_number = "SIM-LAB-01"          # optional
      [defaults]                            # optional, applies to every pixel
      preset = "dbsa"
      area_mm2 = 4.0
      pd_radius_mm = 5.64
      pd_distance_mm = 10.0

      [[substrate]]                         # one table per substrate, all with the same count
      pixels = [
        { preset = "dbsa" },
        { preset = "otac", area_mm2 = 2.25, pd_distance_mm = 12.0 },
      ]
      [[substrate]]
      pixels = [{ preset = "bad" }, {}]     # {} takes every value from [defaults]

Pixels are numbered 1..N substrate by substrate (pixel = substrate_index × pixels_per_substrate +
position + 1), as the protocol's 1-based pixel numbers. Anything malformed raises
:class:`LayoutError` naming the file and the field.

The photodiode of each pixel collects the fraction F = r²/(r² + d²) of the pixel's forward
(Lambertian) light (:func:`sim.optics.lambertian_fraction`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.optics import lambertian_fraction
from sim.physics import A_M2_PER_MM2, DevicePreset
from sim.presets import PRESETS, get_preset

__all__ = [
    "DEFAULT_AREA_MM2",
    "DEFAULT_PD_DISTANCE_MM",
    "DEFAULT_PD_RADIUS_MM",
    "MAX_PIXELS",
    "Layout",
    "LayoutError",
    "PixelSpec",
    "coerce_layout",
    "layout_from_presets",
    "load_layout",
    "parse_layout",
]

DEFAULT_AREA_MM2 = 4.0
DEFAULT_PD_RADIUS_MM = 5.64
DEFAULT_PD_DISTANCE_MM = 10.0
MAX_PIXELS = 1024  # pixel numbers are u16 on the wire (0: none); as many as aging channels
_MAX_REPEAT = MAX_PIXELS


class LayoutError(ValueError):
    """A layout (preset list or TOML file) is malformed; the message names the field."""


@dataclass(frozen=True)
class PixelSpec:
    """One pixel: 1-based number, 0-based substrate, device preset, area and photodiode geometry."""

    number: int
    substrate: int
    preset: DevicePreset
    area_m2: float
    pd_radius_m: float
    pd_distance_m: float

    @property
    def pd_fraction(self) -> float:
        """F = r²/(r²+d²): the fraction of the forward light the pixel's photodiode collects."""
        return float(lambertian_fraction(self.pd_radius_m, self.pd_distance_m))


@dataclass(frozen=True)
class Layout:
    n_substrates: int
    pixels_per_substrate: int
    pixels: tuple[PixelSpec, ...]
    serial_number: str = ""
    source: str = "presets"

    @property
    def n_pixels(self) -> int:
        return len(self.pixels)

    def pixel(self, number: int) -> PixelSpec:
        """The pixel with 1-based ``number``; KeyError otherwise."""
        if not 1 <= number <= len(self.pixels):
            raise KeyError(number)
        return self.pixels[number - 1]

    def describe(self) -> str:
        return ", ".join(f"px{p.number}={p.preset.name}" for p in self.pixels)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LayoutError(f"{where}: expected a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise LayoutError(f"{where}: must be a positive number, got {value!r}")
    return v


def _preset(name: Any, where: str) -> DevicePreset:
    if not isinstance(name, str):
        raise LayoutError(f"{where}: expected a preset name (string), got {name!r}")
    try:
        return get_preset(name.strip())
    except ValueError:
        raise LayoutError(f"{where}: unknown preset {name!r}; known presets: "
                          f"{', '.join(PRESETS)}") from None


def layout_from_presets(names: str | Sequence[str], *, area_mm2: float = DEFAULT_AREA_MM2,
                        pd_radius_mm: float = DEFAULT_PD_RADIUS_MM,
                        pd_distance_mm: float = DEFAULT_PD_DISTANCE_MM,
                        serial_number: str = "") -> Layout:
    """Pixels 1..N on one substrate, one per preset name (``"dbsa,otac"``, ``["dbsa*4"]``)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    expanded: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise LayoutError(f"--preset: empty preset name in {names!r}")
        name, star, count = item.partition("*")
        k = 1
        if star:
            try:
                k = int(count)
            except ValueError:
                raise LayoutError(f"--preset: bad repeat count in {item!r} (use NAME*K)") from None
            if not 1 <= k <= _MAX_REPEAT:
                raise LayoutError(f"--preset: repeat count in {item!r} must be 1..{_MAX_REPEAT}")
        expanded.extend([name.strip()] * k)
    if not expanded:
        raise LayoutError("--preset: no presets given")
    if len(expanded) > MAX_PIXELS:
        raise LayoutError(f"--preset: {len(expanded)} pixels > max {MAX_PIXELS}")
    area = _positive(area_mm2, "area_mm2") * A_M2_PER_MM2
    r = _positive(pd_radius_mm, "pd_radius_mm") * 1e-3
    d = _positive(pd_distance_mm, "pd_distance_mm") * 1e-3
    pixels = tuple(
        PixelSpec(i + 1, 0, _preset(n, f"--preset (pixel {i + 1})"), area, r, d)
        for i, n in enumerate(expanded)
    )
    return Layout(1, len(pixels), pixels, serial_number, "presets")


_PIXEL_KEYS = ("preset", "area_mm2", "pd_radius_mm", "pd_distance_mm")
_TOP_KEYS = ("serial_number", "defaults", "substrate")


def _parse_defaults(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The per-pixel defaults: the built-in ones overridden by the ``[defaults]`` table."""
    defaults_raw = doc.get("defaults", {})
    if not isinstance(defaults_raw, Mapping):
        raise LayoutError(f"{source}: [defaults] must be a table")
    for key in defaults_raw:
        if key not in _PIXEL_KEYS:
            raise LayoutError(f"{source}: defaults.{key}: unknown key; allowed: "
                              f"{', '.join(_PIXEL_KEYS)}")
    return {"area_mm2": DEFAULT_AREA_MM2, "pd_radius_mm": DEFAULT_PD_RADIUS_MM,
            "pd_distance_mm": DEFAULT_PD_DISTANCE_MM, **defaults_raw}


def _parse_pixel(px: Any, defaults: Mapping[str, Any], number: int, substrate: int,
                 where: str) -> PixelSpec:
    """Pixel ``number`` (1-based) of the board from its table (and the defaults)."""
    if not isinstance(px, Mapping):
        raise LayoutError(f"{where}: must be a table like {{ preset = \"dbsa\" }}")
    for key in px:
        if key not in _PIXEL_KEYS:
            raise LayoutError(f"{where}.{key}: unknown key; allowed: {', '.join(_PIXEL_KEYS)}")
    merged = {**defaults, **px}
    if "preset" not in merged:
        raise LayoutError(f"{where}.preset: missing (and no defaults.preset)")
    preset = _preset(merged["preset"], f"{where}.preset")
    area = _positive(merged["area_mm2"], f"{where}.area_mm2") * A_M2_PER_MM2
    r = _positive(merged["pd_radius_mm"], f"{where}.pd_radius_mm") * 1e-3
    d = _positive(merged["pd_distance_mm"], f"{where}.pd_distance_mm") * 1e-3
    return PixelSpec(number, substrate, preset, area, r, d)


def _substrate_pixels(sub: Any, where_s: str) -> list[Any]:
    """The pixel tables of one ``[[substrate]]``."""
    if not isinstance(sub, Mapping):
        raise LayoutError(f"{where_s}: must be a table")
    for key in sub:
        if key != "pixels":
            raise LayoutError(f"{where_s}.{key}: unknown key; allowed: pixels")
    plist = sub.get("pixels")
    if not isinstance(plist, list) or not plist:
        raise LayoutError(f"{where_s}.pixels: must be a non-empty array of tables")
    return plist


def parse_layout(doc: Mapping[str, Any], source: str = "<layout>") -> Layout:
    """A layout from a parsed TOML document (see the module docstring for the format)."""
    for key in doc:
        if key not in _TOP_KEYS:
            raise LayoutError(f"{source}: unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    serial = doc.get("serial_number", "")
    if not isinstance(serial, str) or len(serial.encode()) > 32:
        raise LayoutError(f"{source}: serial_number must be a string of at most 32 bytes")
    defaults = _parse_defaults(doc, source)
    subs = doc.get("substrate")
    if subs is None:
        raise LayoutError(f"{source}: no [[substrate]] tables (need at least one)")
    if not isinstance(subs, list) or not subs:
        raise LayoutError(f"{source}: substrate must be an array of tables ([[substrate]])")
    pixels: list[PixelSpec] = []
    per: int | None = None
    for si, sub in enumerate(subs):
        where_s = f"{source}: substrate[{si}]"
        plist = _substrate_pixels(sub, where_s)
        if per is None:
            per = len(plist)
        elif len(plist) != per:
            raise LayoutError(f"{where_s}.pixels: {len(plist)} pixels, but substrate[0] has {per} "
                              "(every substrate must have the same number)")
        for pi, px in enumerate(plist):
            pixels.append(_parse_pixel(px, defaults, len(pixels) + 1, si, f"{where_s}.pixels[{pi}]"))
    if len(pixels) > MAX_PIXELS:
        raise LayoutError(f"{source}: {len(pixels)} pixels > max {MAX_PIXELS}")
    assert per is not None
    return Layout(len(subs), per, tuple(pixels), serial, source)


def load_layout(path: str | Path) -> Layout:
    """Read and validate a TOML layout file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise LayoutError(f"{p}: cannot read layout file: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LayoutError(f"{p}: not valid TOML: {e}") from None
    return parse_layout(doc, str(p))


def coerce_layout(layout: Layout | str | Sequence[str]) -> Layout:
    """A :class:`Layout` as is; a preset list (``"dbsa,otac"`` or a sequence of names) otherwise."""
    if isinstance(layout, Layout):
        return layout
    return layout_from_presets(layout)
