"""``station import sweep|aging``: data measured on another setup, as CSV files, turned into an
export (``run.json`` + ``points.csv``/``samples.csv``) that ``station analyze``, ``report`` and
``lifetime`` accept. The derived columns and the summary are computed by the same function as
``station analyze`` (:func:`station.commands.analyze.reanalyze`), so the figures are the
station's own for the raw data given."""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from station.direction import SweepDirection

from .analyze import CommandError, guarded

#: Columns of the raw CSV files: required first, then optional.
JVL_COLUMNS = (("voltage_v", "current_a", "photodiode_a"), ("dark_a", "direction"))
AGING_COLUMNS = (("t_s", "current_a", "voltage_v", "photodiode_a"), ("dark_a", "temperature_c"))
_SPECTRUM_COLUMN = re.compile(r"^(v|t)_(-?[0-9]+(?:[.p][0-9]+)?)$")


def read_csv_columns(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """The named columns of a CSV file with a header line ('#' comment lines allowed); numbers
    as float arrays, ``direction`` as text. Raises CommandError naming the file, line and column."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror or e}") from None
    rows = [r for r in csv.reader(line for line in text.splitlines() if not line.lstrip().startswith("#"))
            if r and any(c.strip() for c in r)]
    if not rows:
        raise CommandError(f"{path}: empty file (expected a header line: {','.join(required)})")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise CommandError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)}; "
                           f"required: {','.join(required)}, optional: {','.join(optional)})")
    unknown = [c for c in header if c not in required + optional]
    if unknown:
        raise CommandError(f"{path}: unknown column(s) {', '.join(unknown)} "
                           f"(known: {','.join(required + optional)})")
    if len(rows) < 2:
        raise CommandError(f"{path}: no data rows")
    out: dict[str, Any] = {}
    for k, name in enumerate(header):
        vals: list[Any] = []
        for n, row in enumerate(rows[1:], 2):
            if len(row) != len(header):
                raise CommandError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
            cell = row[k].strip()
            if name == "direction":
                try:
                    vals.append(SweepDirection.parse(cell).value)
                except ValueError as e:
                    raise CommandError(f"{path}:{n}: {e}") from None
                continue
            try:
                vals.append(float(cell) if cell else math.nan)
            except ValueError:
                raise CommandError(f"{path}:{n}: {name} is not a number: {cell!r}") from None
        out[name] = np.array(vals, dtype=object) if name == "direction" else np.array(vals, dtype=float)
    return out


def read_spectra_csv(path: Path, kind: str, tag: str) -> list[Any]:
    """Spectra from a CSV of ``wavelength_nm`` and one intensity column per spectrum, named
    ``v_<volts>`` (sweep) or ``t_<seconds>`` (aging), e.g. ``v_3.5``; a single other column is one
    spectrum with no tag. ``kind`` is 'energy' (spectral power) or 'photon' (photon counts)."""
    from station.analysis.photometry import Spectrum

    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror or e}") from None
    if len(rows) < 4:
        raise CommandError(f"{path}: expected a header line and at least 3 wavelengths")
    header = [h.strip() for h in rows[0]]
    if header[0] != "wavelength_nm" or len(header) < 2:
        raise CommandError(f"{path}: the first column must be wavelength_nm, then one column per spectrum "
                           f"named {tag}_<value> (got {','.join(header)})")
    try:
        data = np.array([[float(c) for c in r] for r in rows[1:]], dtype=float)
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from None
    if data.shape[1] != len(header):
        raise CommandError(f"{path}: rows do not all have {len(header)} fields")
    spectra = []
    for k, name in enumerate(header[1:], 1):
        m = _SPECTRUM_COLUMN.match(name)
        if m is None or m.group(1) != tag:
            if len(header) == 2:
                value = None  # one untagged spectrum
            else:
                raise CommandError(f"{path}: column {name!r}: expected {tag}_<value> (e.g. {tag}_3.5)")
        else:
            value = float(m.group(2).replace("p", "."))
        try:
            s = Spectrum(data[:, 0], data[:, k], kind,  # type: ignore[arg-type]
                         voltage_v=value if tag == "v" else None,
                         t_s=(value if value is not None else 0.0) if tag == "t" else None)
        except ValueError as e:
            raise CommandError(f"{path}: column {name!r}: {e}") from None
        spectra.append(s)
    return spectra


def _calibration(args: argparse.Namespace) -> Any:
    from station.analysis.photometry import Calibration
    from station.procedures import load_responsivity

    if not (args.area_mm2 and args.area_mm2 > 0):
        raise CommandError("--area-mm2 must be > 0 (the pixel's emitting area)")
    radius_mm, distance_mm, geometry, resp = (args.photodiode_radius_mm, args.photodiode_distance_mm,
                                              args.geometry_factor, args.responsivity)
    if args.config:
        from station.config import ConfigError, load_config

        try:
            c = load_config(args.config).calibration
        except (ConfigError, OSError) as e:
            raise CommandError(f"--config {args.config}: {e}") from None
        radius_mm = radius_mm if radius_mm is not None else c.photodiode_radius_mm
        distance_mm = distance_mm if distance_mm is not None else c.photodiode_distance_mm
        geometry = geometry if geometry is not None else c.geometry_factor
        resp = resp or c.responsivity_file
    if geometry is None and (radius_mm is None or distance_mm is None):
        raise CommandError("give the photodiode geometry: --photodiode-radius-mm and "
                           "--photodiode-distance-mm (or --geometry-factor, or --config)")
    wl, r = load_responsivity(resp)
    return Calibration(pixel_area_m2=args.area_mm2 * 1e-6, responsivity_wavelength_nm=wl,
                       responsivity_a_per_w=r,
                       photodiode_radius_m=None if radius_mm is None else radius_mm * 1e-3,
                       distance_m=None if distance_mm is None else distance_mm * 1e-3,
                       geometry_factor=geometry)


def _run(args: argparse.Namespace) -> int:
    from station.exportfmt import table_from_columns, write_export

    from .analyze import reanalyze

    kind = args.kind
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"--out {out}: exists and is not empty (an import never overwrites)")
    cal = _calibration(args)
    src = Path(args.data)
    required, optional = JVL_COLUMNS if kind == "sweep" else AGING_COLUMNS
    cols = read_csv_columns(src, required, optional)
    n = len(cols[required[0]])
    spectra = read_spectra_csv(Path(args.spectra), args.spectrum_kind, "v" if kind == "sweep" else "t")
    nan = np.full(n, np.nan)
    if kind == "sweep":
        table_cols: dict[str, Any] = {"seq": np.arange(n)}
        if "direction" in cols:
            table_cols["direction"] = cols["direction"]
        table_cols |= {c: cols[c] for c in ("voltage_v", "current_a", "photodiode_a")}
        table_cols["dark_a"] = cols.get("dark_a", np.zeros(n))
        table_cols |= {c: nan for c in ("current_density_ma_cm2", "luminance_cd_m2", "eqe_pct", "ce_cd_a",
                                        "pe_lm_w")}
    else:
        table_cols = {"seq": np.arange(n), **{c: cols[c] for c in ("t_s", "current_a", "voltage_v",
                                                                      "photodiode_a")}}
        table_cols["dark_a"] = cols.get("dark_a", np.zeros(n))
        table_cols["temperature_c"] = cols.get("temperature_c", nan)
        table_cols |= {c: nan for c in ("luminance_cd_m2", "l_rel", "eqe_pct")}
    table = table_from_columns(table_cols)
    meta: dict[str, Any] = {
        "run_id": args.run_id or out.name, "kind": kind, "station": "imported",
        "pixel": args.pixel, "device": args.device, "preset": args.device,
        "calibration": cal.to_dict(), "spectra": [s.to_dict() for s in spectra],
        "imported_from": {"data": str(src), "spectra": str(args.spectra)},
    }
    try:
        res = reanalyze(meta, table, cal, where=str(src))
    except ValueError as e:
        raise CommandError(str(e)) from None
    write_export(out, res.meta, res.table)
    print(f"wrote {out} ({kind}, {n} {'points' if kind == 'sweep' else 'samples'}, "
          f"{len(spectra)} spectra); next: station analyze {out}")
    return 0


EXAMPLES = """examples:
  station import sweep --data examples/import/jvl.csv --spectra examples/import/spectra.csv \\
      --area-mm2 4 --photodiode-radius-mm 5.64 --photodiode-distance-mm 20 --out imported-sweep
  station import aging --data examples/import/aging.csv --spectra examples/import/aging-spectrum.csv \\
      --area-mm2 4 --config examples/sim-station.toml --out imported-aging
  station analyze imported-sweep     # then report / lifetime as for the station's own runs

CSV files (a header line, '#' comments allowed):
  sweep J-V-L:  voltage_v,current_a,photodiode_a[,dark_a][,direction]   (direction: forward|reverse)
  aging:        t_s,current_a,voltage_v,photodiode_a[,dark_a][,temperature_c]
  spectra:      wavelength_nm,v_3.0,v_3.5,...  (sweep: one column per voltage)
                wavelength_nm,t_0,t_3600,...   (aging: one column per time in s)
                or wavelength_nm and a single intensity column
  responsivity: wavelength_nm,a_per_w         (default: the built-in typical Si photodiode)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn CSV data from another setup into an export analyze/report/lifetime accept",
        description="Read a J-V-L (sweep) or aging CSV, its spectra and a photodiode calibration, compute "
        "luminance, EQE, CE, PE and the summary (or the lifetimes) with the station's own analysis, and "
        "write an export directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=("sweep", "aging"), help="what the data are")
    p.add_argument("--data", required=True, metavar="FILE.csv", help="the J-V-L or aging samples")
    p.add_argument("--spectra", required=True, metavar="FILE.csv", help="the EL spectra (see below)")
    p.add_argument("--spectrum-kind", choices=("energy", "photon"), default="energy",
                   help="spectra as spectral power (energy, default) or photon counts")
    p.add_argument("--area-mm2", type=float, required=True, help="the pixel's emitting area in mm²")
    p.add_argument("--responsivity", metavar="FILE.csv",
                   help="photodiode responsivity (wavelength_nm,a_per_w)")
    p.add_argument("--photodiode-radius-mm", type=float, help="active radius of the photodiode")
    p.add_argument("--photodiode-distance-mm", type=float, help="pixel-to-photodiode distance")
    p.add_argument("--geometry-factor", type=float,
                   help="measured fraction of the forward power reaching the photodiode (non-Lambertian)")
    p.add_argument("--config", metavar="STATION.toml",
                   help="take the calibration from a station configuration")
    p.add_argument("--device", default=None, help="device name (e.g. a seed preset: dbsa, otac)")
    p.add_argument("--pixel", default=None, help="pixel label")
    p.add_argument("--run-id", default=None,
                   help="run id in the export (default: the output directory's name)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory to write (new or empty)")
    p.set_defaults(func=guarded("import", _run))
