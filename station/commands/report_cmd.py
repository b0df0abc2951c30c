"""``station report RUN_DIR [--out FILE.html]``: a self-contained HTML report of an export (summary
table beside the seed's Table S1 row for the dbsa/otac presets, figures embedded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .analyze import CommandError, guarded, load_export


def _run(args: argparse.Namespace) -> int:
    from station.analysis import plots
    from station.analysis.lifetime import analyze_lifetime
    from station.analysis.report import render_report, run_label, sweep_figures
    from station.analysis.summary import sweep_summary
    from station.exportfmt import spectra_from_meta

    src = Path(args.run_dir)
    meta, table = load_export(src)
    spectra = spectra_from_meta(meta, str(src / "run.json"))
    out = Path(args.out) if args.out else src / "report.html"
    figdir = Path(args.figures) if args.figures else None
    if meta["kind"] == "sweep":
        sel = table
        if "direction" in (table.dtype.names or ()):
            forward = table["direction"] == "forward"
            if forward.any():
                sel = table[forward]  # the summary is that of the forward branch, as recorded
        recorded = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
        floor = recorded.get("noise_floor_cd_m2") if recorded else None
        floor = float(floor) if isinstance(floor, int | float) and floor > 0 else None
        summary = sweep_summary(sel, spectra, args.threshold, floor)
        page = render_report(meta, table, summary=summary, spectra=spectra)
        figs = {name: fig for name, fig, _caption in sweep_figures(meta, table, summary, spectra)}
    else:
        result = analyze_lifetime(table["t_s"], table["luminance_cd_m2"])
        page = render_report(meta, table, lifetime=result, spectra=spectra)
        names = table.dtype.names or ()
        figs = {
            "aging": plots.aging_figure(
                table["t_s"],
                table["luminance_cd_m2"],
                result,
                table["voltage_v"] if "voltage_v" in names else None,
                title=f"Operational lifetime, {run_label(meta)}",
            )
        }
    if out.parent and not out.parent.exists():
        raise CommandError(f"{out.parent}: no such directory")
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}")
    if figdir is not None:
        figdir.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            for fmt in ("png", "svg"):
                (figdir / f"{name}.{fmt}").write_bytes(plots.figure_bytes(fig, fmt))
        print(f"wrote {len(figs) * 2} figures to {figdir}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of an export",
        description="Write an HTML report (summary table, figures embedded) of a sweep or aging export.",
        epilog="""examples:
  station report run1                         # run1/report.html
  station report age1 --out age1.html --figures age1-figs   # and each figure as PNG + SVG
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.html", help="default: RUN_DIR/report.html")
    p.add_argument("--figures", metavar="DIR", help="also write each figure as PNG and SVG here")
    p.add_argument("--threshold", type=float, default=1.0, metavar="CD_M2", help="V_on threshold (default 1)")
    p.set_defaults(func=guarded("report", _run))
