"""``station analyze EXPORT_DIR``: recompute every figure of an exported run from its raw columns
(voltage, current, photodiode and dark current), its spectra and a calibration - the sidecar's,
or a new one (``--calibration CAL.json``, e.g. after the photodiode was recalibrated).

Also home of the helpers the ``lifetime`` and ``report`` subcommands share.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports are deferred so `station --help` stays fast
    import numpy as np

    from station.analysis.lifetime import LifetimeResult
    from station.analysis.photometry import Calibration, PreparedSpectra, Spectrum
    from station.analysis.summary import SweepSummary

EXIT_BAD_INPUT = 2


class CommandError(Exception):
    """Bad input to a subcommand: printed as one line, exit code 2."""


def guarded(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected failures of ``func`` into a clear message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from station.exportfmt import ExportError

        try:
            return func(args)
        except BrokenPipeError:
            raise  # our reader went away: the CLI ends quietly
        except (CommandError, ExportError, ValueError, OSError) as exc:
            print(f"station {name}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


def load_export(path: str | Path, kind: str | None = None) -> tuple[dict[str, Any], np.ndarray]:
    from station.exportfmt import read_export

    p = Path(path)
    if not p.exists():
        raise CommandError(f"{p}: no such export directory")
    meta, table = read_export(p)
    if kind is not None and meta.get("kind") != kind:
        raise CommandError(f"{p}: is a {meta.get('kind')!r} export, expected {kind!r}")
    return meta, table


def load_calibration_file(path: str | Path) -> Calibration:
    """A calibration JSON: the :meth:`Calibration.to_dict` object itself, or any object with it
    under ``"calibration"`` (so a run.json works too)."""
    from station.analysis.photometry import Calibration

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"{p}: calibration file not found") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict) and "pixel_area_m2" not in data and isinstance(data.get("calibration"), dict):
        data = data["calibration"]
    try:
        return Calibration.from_dict(data)
    except ValueError as exc:
        raise CommandError(f"{p}: {exc}") from None


def _require(table: np.ndarray, cols: Sequence[str], where: str) -> None:
    names = table.dtype.names or ()
    missing = [c for c in cols if c not in names]
    if missing:
        raise CommandError(f"{where}: raw column(s) {missing} missing; cannot recompute")


def _seq_order(table: np.ndarray) -> np.ndarray:
    import numpy as np

    names = table.dtype.names or ()
    if "seq" in names and table.size and np.any(np.diff(table["seq"]) < 0):
        return table[np.argsort(table["seq"], kind="stable")]
    return table


@dataclass
class Reanalysis:
    meta: dict[str, Any]
    table: np.ndarray
    calibration: Calibration
    spectra: list[Spectrum]
    summary: SweepSummary | None = None
    lifetime: LifetimeResult | None = None
    notes: list[str] = field(default_factory=list)


def reanalyze(
    meta: Mapping[str, Any],
    table: np.ndarray,
    calibration: Calibration | None = None,
    threshold_cd_m2: float = 1.0,
    noise_floor_cd_m2: float | None = None,
    where: str = "export",
) -> Reanalysis:
    """Recompute the derived columns and the summary (sweep) or lifetime (aging) of a run."""
    import numpy as np

    from station.exportfmt import calibration_from_meta, spectra_from_meta

    notes: list[str] = []
    cal = calibration if calibration is not None else calibration_from_meta(meta, f"{where}/run.json")
    spectra = spectra_from_meta(meta, f"{where}/run.json")
    if not spectra:
        raise CommandError(f"{where}/run.json: no spectra recorded; luminance and EQE need one")
    table = _seq_order(table).copy()
    names = table.dtype.names or ()
    kind = meta.get("kind")
    if "dark_a" in names:
        dark = table["dark_a"]
    else:
        dark = np.zeros(table.shape[0])
        notes.append("no dark_a column: no dark-current subtraction")
    run = Reanalysis(dict(meta), table, cal, spectra, notes=notes)
    run.meta["calibration"] = cal.to_dict()
    if kind == "sweep":
        _reanalyze_sweep(run, dark, threshold_cd_m2, noise_floor_cd_m2, where)
        return run
    if kind == "aging":
        _reanalyze_aging(run, dark, where)
        return run
    raise CommandError(f"{where}/run.json: unknown kind {kind!r}")


def _reanalyze_sweep(run: Reanalysis, dark: np.ndarray, threshold_cd_m2: float,
                     noise_floor_cd_m2: float | None, where: str) -> None:
    """:func:`reanalyze` of a sweep: the points' derived columns and the summary, into ``run``."""
    import numpy as np

    from station.analysis.photometry import compute_points, prepare_spectra
    from station.analysis.summary import sweep_summary

    table, cal, spectra, notes = run.table, run.calibration, run.spectra, run.notes
    names = table.dtype.names or ()
    _require(table, ("voltage_v", "current_a", "photodiode_a"), f"{where}/points.csv")
    if len(spectra) > 1 and any(s.voltage_v is None for s in spectra):
        raise CommandError(f"{where}/run.json: several spectra but not all have voltage_v")
    prepared = prepare_spectra(spectra, cal, "voltage_v")
    pts = compute_points(
        table["voltage_v"], table["current_a"], table["photodiode_a"], cal, prepared, dark
    )
    for col in ("current_density_ma_cm2", "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w"):
        if col in names:
            table[col] = pts[col]
    floor = noise_floor_cd_m2
    if floor is None:
        floor = _recorded_noise_floor(run.meta, cal, prepared, notes)
    sel = pts
    if "direction" in names:
        forward = np.asarray(table["direction"]) == "forward"
        if forward.any() and not forward.all():
            sel = pts[forward]
            notes.append("summary over the forward branch (direction == 'forward')")
    summary = sweep_summary(sel, spectra, threshold_cd_m2, floor)
    run.meta["summary"] = summary.to_dict()
    run.meta["summary"]["n_points"] = len(pts)  # every point, as the station's summary counts
    run.summary = summary


def _recorded_noise_floor(meta: Mapping[str, Any], cal: Calibration, prepared: PreparedSpectra,
                          notes: list[str]) -> float | None:
    """A sweep's noise floor from what its sidecar recorded (dark readings, their standard
    deviation, the ADC step), in luminance with the spectrum at the highest voltage; None when
    nothing was recorded."""
    from station.analysis.photometry import (
        dark_noise_floor_cd_m2,
        detection_limit_a,
        luminance_per_photodiode_amp,
    )

    recorded = meta.get("summary") if isinstance(meta.get("summary"), Mapping) else None
    dark_std = meta.get("dark_std_a", recorded.get("dark_std_a") if recorded else None)
    top = len(prepared.key) - 1  # the spectrum at the highest voltage
    dark_samples = meta.get("dark_samples_a")
    step = meta.get("pd_adc_step_a", recorded.get("pd_adc_step_a") if recorded else None)
    step = float(step) if isinstance(step, int | float) and math.isfinite(step) and step > 0 else None
    if isinstance(dark_samples, list) and len(dark_samples) >= 2:
        floor = dark_noise_floor_cd_m2(dark_samples, cal, prepared, top, adc_step_a=step)
        notes.append("noise floor: 3 sigma of the sidecar's dark_samples_a, at least one ADC step")
        return floor
    if (isinstance(dark_std, int | float) and math.isfinite(dark_std) and dark_std > 0) or step is not None:
        std = float(dark_std) if isinstance(dark_std, int | float) else math.nan
        floor = detection_limit_a(std, step) * luminance_per_photodiode_amp(cal, prepared, top)
        notes.append("noise floor: 3 x the recorded dark_std_a, at least one ADC step (pd_adc_step_a)")
        return floor
    return None


def _reanalyze_aging(run: Reanalysis, dark: np.ndarray, where: str) -> None:
    """:func:`reanalyze` of an aging run: luminance, EQE and L/L0 of each sample and the
    lifetime, into ``run``."""
    import numpy as np

    from station.analysis.lifetime import analyze_lifetime
    from station.analysis.photometry import compute_points, prepare_spectra

    table, cal, spectra, notes = run.table, run.calibration, run.spectra, run.notes
    names = table.dtype.names or ()
    _require(table, ("t_s", "current_a", "voltage_v", "photodiode_a"), f"{where}/samples.csv")
    if len(spectra) > 1 and any(s.t_s is None for s in spectra):
        raise CommandError(f"{where}/run.json: several spectra but not all have t_s")
    prepared = prepare_spectra(spectra, cal, "t_s")
    pts = compute_points(
        table["voltage_v"],
        table["current_a"],
        table["photodiode_a"],
        cal,
        prepared,
        dark,
        t_s=table["t_s"],
    )
    if "luminance_cd_m2" in names:
        table["luminance_cd_m2"] = pts["luminance_cd_m2"]
    if "eqe_pct" in names:
        table["eqe_pct"] = pts["eqe_pct"]
    # the samples the run's own analysis used: not a channel's final STOPPED sample nor a
    # failure's, and none after the stop condition (the board goes on sampling until the
    # host's stop reaches it); both recorded in the summary
    prev = run.meta.get("summary") or {}
    use = np.ones(len(table["t_s"]), dtype=bool)
    bad = prev.get("analysed_exclude_flags")
    if isinstance(bad, int) and "flags" in names:
        use &= (np.nan_to_num(table["flags"]).astype(np.int64) & bad) == 0
    until = prev.get("analysed_until_t_s")
    if isinstance(until, int | float) and math.isfinite(until):
        use &= table["t_s"] <= until
        notes.append(f"samples up to t = {until:g} s, where the run's stop condition was met")
    result = analyze_lifetime(table["t_s"][use], pts["luminance_cd_m2"][use])
    if "l_rel" in names:
        table["l_rel"] = pts["luminance_cd_m2"] / result.l0_cd_m2
    run.meta["summary"] = result.to_dict()
    run.lifetime = result


def _fmt(v: Any, unit: str = "", sig: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{sig}g}{(' ' + unit) if unit else ''}"
    return f"{v}{(' ' + unit) if unit else ''}"


SWEEP_ROWS = (
    ("von_v", "V_on", "V"),
    ("l_max_cd_m2", "L_max", "cd/m²"),
    ("ce_max_cd_a", "CE_max", "cd/A"),
    ("eqe_max_pct", "EQE_max", "%"),
    ("pe_max_lm_w", "PE_max", "lm/W"),
    ("el_peak_nm", "EL peak", "nm"),
    ("el_fwhm_nm", "EL FWHM", "nm"),
    ("cie_x", "CIE x", ""),
    ("cie_y", "CIE y", ""),
)
AGING_ROWS = (
    ("l0_cd_m2", "L0", "cd/m²"),
    ("l_peak_cd_m2", "L_peak", "cd/m²"),
    ("t_peak_h", "t_peak", "h"),
    ("t95_h", "T95", "h"),
    ("t90_h", "T90", "h"),
    ("t80_h", "T80", "h"),
    ("t50_h", "T50", "h"),
    ("t50_from_peak_h", "T50 from peak", "h"),
)


def format_comparison(recomputed: Mapping[str, Any], recorded: Mapping[str, Any] | None, kind: str) -> str:
    rows = SWEEP_ROWS if kind == "sweep" else AGING_ROWS
    lines = [f"{'':16}{'recomputed':>18}" + (f"{'recorded':>18}" if recorded else "")]
    for key, label, unit in rows:
        line = f"{label:16}{_fmt(recomputed.get(key), unit):>18}"
        if recorded:
            line += f"{_fmt(recorded.get(key), unit):>18}"
        lines.append(line)
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from station.exportfmt import write_export

    src = Path(args.export_dir)
    meta, table = load_export(src)
    cal = load_calibration_file(args.calibration) if args.calibration else None
    if args.threshold is not None and not args.threshold > 0:
        raise CommandError("--threshold must be > 0 cd/m²")
    res = reanalyze(meta, table, cal, args.threshold, args.noise_floor, where=str(src))
    recorded = meta.get("summary") if isinstance(meta.get("summary"), dict) else None
    if args.out:
        dst = Path(args.out)
        if dst.resolve() == src.resolve():
            raise CommandError("--out must be a new directory (the original export is never overwritten)")
        res.meta["reanalysis_of"] = meta.get("run_id")
        write_export(dst, res.meta, res.table)
    if args.json:
        doc = {
            "run_id": meta.get("run_id"),
            "kind": meta.get("kind"),
            "calibration_source": str(args.calibration) if args.calibration else "sidecar",
            "summary": res.meta["summary"],
            "recorded_summary": recorded,
            "notes": res.notes,
        }
        print(json.dumps(doc, indent=2, allow_nan=False, default=str))
        return 0
    print(
        f"run {meta.get('run_id', '?')} ({meta.get('kind')}, pixel {meta.get('pixel', '?')}, "
        f"device {meta.get('preset') or meta.get('device') or '?'}); calibration: "
        f"{args.calibration or 'sidecar'}"
    )
    print(format_comparison(res.meta["summary"], recorded, str(meta.get("kind"))))
    if res.summary is not None:
        s = res.summary
        print(
            f"V_on: L first reaches {s.threshold_cd_m2:g} cd/m² ({s.von_method}); noise floor "
            f"{_fmt(s.noise_floor_cd_m2, 'cd/m²', 3)} ({s.noise_floor_source}); "
            f"EL/CIE from the {s.spectrum_basis}"
        )
    if res.lifetime is not None:
        print(f"L0: {res.lifetime.l0_method}")
    for note in res.notes:
        print(f"note: {note}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="recompute every figure of an exported run from its raw columns",
        description="Recompute L, EQE, CE, PE and the summary (sweep) or lifetime (aging) of an export "
        "from its raw voltage, current, photodiode and dark columns, its spectra and a calibration.",
        epilog="""examples:
  station analyze run1                        # recompute and compare with the recorded summary
  station analyze run1 --json
  station analyze run1 --calibration examples/calibration.json --out run1-recal
  station analyze age1 --noise-floor 0.05

A calibration file is the JSON object of run.json's "calibration" (a run.json itself works):
pixel_area_m2, responsivity {wavelength_nm[], a_per_w[]} of the photodiode, and geometry
{photodiode_radius_m, distance_m} or {geometry_factor}; see examples/calibration.json and
docs/measurement.md.
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR")
    p.add_argument("--calibration", metavar="CAL.json", help="use this calibration instead of the sidecar's")
    p.add_argument("--threshold", type=float, default=1.0, metavar="CD_M2", help="V_on threshold (default 1)")
    p.add_argument("--noise-floor", type=float, default=None, metavar="CD_M2", help="detector noise floor")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", metavar="DIR", help="also write the re-analysed run as a new export")
    p.set_defaults(func=guarded("analyze", _run))
