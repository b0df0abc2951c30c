"""``station lifetime RUN_DIR...``: lifetime of each aging export and the acceleration law
T(L1) = T(L0)*(L0/L1)^n across them, reporting T at a reference luminance with a confidence
interval. n is fitted (log-log least squares) from pixels aged at three or more L0, or given."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .analyze import CommandError, guarded, load_export

METRICS = (
    "t95_h",
    "t90_h",
    "t80_h",
    "t50_h",
    "t95_from_peak_h",
    "t90_from_peak_h",
    "t80_from_peak_h",
    "t50_from_peak_h",
)


def _run(args: argparse.Namespace) -> int:
    from station.analysis.lifetime import analyze_lifetime, fit_acceleration

    if not args.reference_luminance > 0:
        raise CommandError("--reference-luminance must be > 0")
    if args.n is not None and not (math.isfinite(args.n) and args.n > 0):
        raise CommandError("--n must be > 0")
    if not 0 < args.confidence < 1:
        raise CommandError("--confidence must be between 0 and 1")
    pixels: list[dict[str, Any]] = []
    for d in args.run_dirs:
        meta, table = load_export(d, kind="aging")
        res = analyze_lifetime(table["t_s"], table["luminance_cd_m2"])
        value, extrapolated = res.best(args.metric)
        pixels.append(
            {
                "run_dir": str(d),
                "run_id": meta.get("run_id"),
                "pixel": meta.get("pixel"),
                "l0_cd_m2": res.l0_cd_m2,
                args.metric: value,
                "extrapolated": extrapolated,
                "lifetime": res.to_dict(),
            }
        )
    fit, why_not = _acceleration(pixels, args, fit_acceleration)
    if args.json:
        doc: dict[str, Any] = {"pixels": pixels, "acceleration": fit.to_dict() if fit else None}
        if why_not:
            doc["acceleration_not_fitted"] = why_not
        print(json.dumps(doc, indent=2, default=str))
        return 0
    name = args.metric.removesuffix("_h").upper().replace("_FROM_PEAK", " from peak")
    print(f"{'export':28}{'pixel':>8}{'L0 (cd/m²)':>14}{name + ' (h)':>18}")
    for p in pixels:
        mark = " (fit)" if p["extrapolated"] else ""
        value = p[args.metric]
        shown = f"{value:>12.4g}" if value is not None else f"{'not reached':>12}"
        # the export directory names the run; run ids repeat across stores
        label = str(p["run_dir"]) + (f" (run {p['run_id']})" if p["run_id"] is not None else "")
        label = label if len(label) <= 27 else "…" + label[-26:]
        print(f"{label:28}{p['pixel']!s:>8}{p['l0_cd_m2']:>14.4g}"
              f"{shown}{mark:6}")
    if fit is None:
        print(f"acceleration law not fitted: {why_not}")
        return 0
    n_txt = (
        f"n = {fit.n:.3f} ± {fit.n_err:.3f} (fitted, {fit.dof} dof)"
        if fit.n_fitted and fit.n_err
        else f"n = {fit.n:.3f} ({'given' if not fit.n_fitted else 'fitted'})"
    )
    print(n_txt)
    ci = (
        f"{fit.confidence * 100:g} % CI [{fit.ci_low_h:.4g}, {fit.ci_high_h:.4g}] h"
        if fit.ci_low_h is not None and fit.ci_high_h is not None
        else "no confidence interval (too few pixels)"
    )
    print(f"{name} at {fit.reference_cd_m2:g} cd/m²: {fit.t_ref_h:.4g} h, {ci}")
    return 0


def _acceleration(pixels: list[dict[str, Any]], args: argparse.Namespace,
                  fit_acceleration: Any) -> tuple[Any, str | None]:
    """The acceleration fit across ``pixels``, or (None, why) when it cannot be made: a single
    run, fewer distinct L0 than fitting n needs (and no --n), or a pixel with no lifetime."""
    missing = [p["run_dir"] for p in pixels if p[args.metric] is None]
    if missing:
        return None, (f"{args.metric} neither reached nor extrapolable (no usable fit) in "
                      f"{', '.join(missing)}")
    try:
        fit = fit_acceleration(
            [p["l0_cd_m2"] for p in pixels],
            [p[args.metric] for p in pixels],
            n=args.n,
            reference_cd_m2=args.reference_luminance,
            confidence=args.confidence,
            metric=args.metric,
        )
    except ValueError as e:
        if args.n is None and "distinct L0" in str(e):
            return None, str(e).removeprefix("acceleration: ")
        raise CommandError(str(e)) from e
    return fit, None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lifetime",
        help="lifetime across aging exports and the acceleration law",
        description="Analyse each aging export (L0, Tx, fit) and fit T(L) = T(L0)*(L0/L)^n across them "
        "(n fitted from >= 3 distinct L0, or given with --n); report T at a reference luminance with a "
        "confidence interval. A pixel that has not reached the level uses its fit's extrapolation. "
        "With one run (or fewer than 3 distinct L0 and no --n) each run's lifetimes are reported "
        "without the acceleration law.",
        epilog="""examples:
  station lifetime age1                                   # one run: its L0, T95..T50, fit
  station lifetime age1 age2 age3 --reference-luminance 100   # n fitted from three L0
  station lifetime age1 age2 --n 1.8 --metric t90_h --json    # n given
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--reference-luminance",
        type=float,
        default=100.0,
        metavar="CD_M2",
        help="report T at this luminance (default 100 cd/m²)",
    )
    p.add_argument("--n", type=float, default=None, help="acceleration exponent (default: fitted)")
    p.add_argument("--metric", choices=METRICS, default="t50_h", help="which lifetime (default t50_h)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded("lifetime", _run))
