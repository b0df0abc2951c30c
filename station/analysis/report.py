"""Self-contained HTML report of one run: the summary table (beside the seed paper's Table S1 row
when the device is a seed preset) and the figures embedded as SVG (with a PNG alternative), so the
file can be mailed or archived alone. Pure: returns a string; the caller writes it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import plots
from .lifetime import LEVELS, LifetimeResult
from .photometry import Spectrum
from .summary import SweepSummary

__all__ = ["SEED_TABLE_S1", "render_report", "report_title", "run_label", "seed_row", "sweep_figures"]

#: Table S1 of the seed (Jin et al. 2023, Supporting Information): measured CsPbBr3 NC LEDs.
SEED_TABLE_S1: dict[str, dict[str, Any]] = {
    "otac": {
        "device": "OTAc-PeNCs",
        "von_v": 2.85,
        "l_max_cd_m2": 2339.0,
        "ce_max_cd_a": 9.1,
        "eqe_max_pct": 2.75,
        "pe_max_lm_w": 9.59,
        "el_peak_nm": 516.0,
        "cie_x": 0.0981,
        "cie_y": 0.7592,
    },
    "dbsa": {
        "device": "DBSA-PeNCs",
        "von_v": 2.8,
        "l_max_cd_m2": 4452.0,
        "ce_max_cd_a": 23.8,
        "eqe_max_pct": 8.95,
        "pe_max_lm_w": 22.7,
        "el_peak_nm": 508.0,
        "cie_x": 0.0669,
        "cie_y": 0.6765,
    },
}

_ROWS: tuple[tuple[str, str, int], ...] = (
    ("von_v", "V<sub>on</sub> (V)", 3),
    ("l_max_cd_m2", "L<sub>max</sub> (cd/m²)", 4),
    ("ce_max_cd_a", "CE<sub>max</sub> (cd/A)", 3),
    ("eqe_max_pct", "EQE<sub>max</sub> (%)", 3),
    ("pe_max_lm_w", "PE<sub>max</sub> (lm/W)", 3),
    ("el_peak_nm", "EL peak (nm)", 4),
    ("el_fwhm_nm", "EL FWHM (nm)", 3),
    ("cie_x", "CIE x", 4),
    ("cie_y", "CIE y", 4),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.meta td{text-align:left} .note{color:#555;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0;flex:1 1 460px}
figure img{width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
"""


def _fmt(v: Any, sig: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float | np.floating | np.integer):
        x = float(v)
        if not math.isfinite(x):
            return "—"
        if x == 0:
            return "0"
        mag = math.floor(math.log10(abs(x)))
        if -3 <= mag < 6:
            decimals = max(sig - 1 - mag, 0)
            return f"{x:.{decimals}f}"
        return f"{x:.{sig - 1}e}"
    return html.escape(str(v))


def seed_row(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The seed's Table S1 row when the run's ``preset`` (or ``device``) is ``dbsa`` or ``otac``."""
    for key in ("preset", "device"):
        val = meta.get(key)
        if isinstance(val, Mapping):
            val = val.get("preset") or val.get("name")
        if isinstance(val, str) and val.strip().lower() in SEED_TABLE_S1:
            return SEED_TABLE_S1[val.strip().lower()]
    return None


def _figure_html(fig: Any, caption: str) -> str:
    svg = base64.b64encode(plots.figure_bytes(fig, "svg")).decode("ascii")
    png = base64.b64encode(plots.figure_bytes(fig, "png")).decode("ascii")
    fig.clear()
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/svg+xml;base64,{svg}">'
        f"<figcaption>{html.escape(caption)} — "
        f'<a download="figure.png" href="data:image/png;base64,{png}">PNG</a></figcaption></figure>'
    )


def _meta_table(meta: Mapping[str, Any]) -> str:
    """The run's identity and its calibration, lengths in mm and areas in mm² throughout."""
    rows = []
    names = {"run_id": "run", "kind": "kind", "station": "station", "substrate": "substrate",
             "pixel": "pixel", "label": "pixel label", "device": "device", "started": "started",
             "ended": "ended", "status": "status", "end_reason": "end"}
    for key, name in names.items():
        if meta.get(key) is not None:
            val = str(meta[key])
            if key in ("started", "ended") and len(val) >= 19 and val[10] == "T":
                val = val[:10] + " " + val[11:19] + (" UTC" if val.endswith("+00:00") else "")
            rows.append(f"<tr><td>{name}</td><td>{html.escape(val)}</td></tr>")
    cal = meta.get("calibration")
    if isinstance(cal, Mapping):
        geom = cal.get("geometry") or {}
        area = cal.get("pixel_area_m2")
        if isinstance(area, int | float):
            rows.append(f"<tr><td>pixel area</td><td>{_fmt(area * 1e6)} mm²</td></tr>")
        if isinstance(geom, Mapping):
            for k, name in (("photodiode_radius_m", "photodiode radius"),
                            ("distance_m", "photodiode distance")):
                if isinstance(geom.get(k), int | float):
                    rows.append(f"<tr><td>{name}</td><td>{_fmt(geom[k] * 1e3)} mm</td></tr>")
            for k, name in (("geometry_factor", "geometry factor F (measured)"),
                            ("collection_fraction", "collection fraction F")):
                if isinstance(geom.get(k), int | float):
                    rows.append(f"<tr><td>{name}</td><td>{_fmt(geom[k])}</td></tr>")
    return '<table class="meta">' + "".join(rows) + "</table>"


def report_title(meta: Mapping[str, Any]) -> str:
    """``J–V–L sweep — otac, pixel 1 (S7-P1), substrate S7, 2026-12-02``."""
    kind = meta.get("kind")
    what = "J–V–L sweep" if kind == "sweep" else "Operational lifetime"
    parts = [str(meta["device"])] if meta.get("device") else []
    if meta.get("pixel") is not None:
        px = f"pixel {meta['pixel']}"
        if meta.get("label"):
            px += f" ({meta['label']})"
        parts.append(px)
    if meta.get("substrate"):
        parts.append(f"substrate {meta['substrate']}")
    started = meta.get("started")
    if isinstance(started, str) and started:
        parts.append(started[:10])
    if not parts:
        parts.append(f"run {meta.get('run_id', '')}".strip())
    return f"{what} — {', '.join(parts)}"


def run_label(meta: Mapping[str, Any]) -> str:
    """``pixel 3 (S1-P3) otac``: what a figure's legend calls the run."""
    parts = []
    if meta.get("pixel") is not None:
        parts.append(f"pixel {meta['pixel']}")
        if meta.get("label") and str(meta["label"]).lower() not in (f"p{meta['pixel']}",
                                                                      f"px{meta['pixel']}"):
            parts[-1] += f" ({meta['label']})"
    if meta.get("device"):
        parts.append(str(meta["device"]))
    return " ".join(parts) or f"run {meta.get('run_id', '')}".strip()


def sweep_figures(meta: Mapping[str, Any], points: np.ndarray, summary: SweepSummary,
                  spectra: Sequence[Spectrum]) -> list[tuple[str, Any, str]]:
    """The figures of a sweep as ``(name, figure, caption)``: the report embeds them and
    ``station report --figures`` writes them, from this one function."""
    who = run_label(meta)
    floor = summary.noise_floor_cd_m2
    figs: list[tuple[str, Any, str]] = [
        ("jvl", plots.jvl_figure(points, f"J–V–L, {who}", noise_floor_cd_m2=floor),
         "J–V–L: current density and luminance (log) against voltage; luminance below the "
         "detector's noise floor is not drawn"),
        ("efficiency", plots.efficiency_figure(points, f"Efficiencies, {who}",
                                               threshold_cd_m2=summary.threshold_cd_m2,
                                               noise_floor_cd_m2=floor),
         "EQE, current efficiency and power efficiency against current density, at and above "
         "turn-on"),
    ]
    if spectra:
        figs.append(("spectra", plots.spectra_figure(spectra, f"EL spectra, {who}"),
                     "EL spectra at the recorded voltages, each normalised to its maximum"))
    devices: list[tuple[str, float, float]] = []
    if summary.cie_x is not None and summary.cie_y is not None:
        devices.append((who, summary.cie_x, summary.cie_y))
    seed = seed_row(meta)
    if seed:
        devices.append((f"seed Table S1, {seed['device']}", seed["cie_x"], seed["cie_y"]))
    if devices:
        figs.append(("cie", plots.cie_figure(devices), "CIE 1931 chromaticity"))
    return figs


def _sweep_html(
    meta: Mapping[str, Any], points: np.ndarray, summary: SweepSummary, spectra: Sequence[Spectrum]
) -> str:
    d = summary.to_dict()
    seed = seed_row(meta)
    head = "<tr><th>quantity</th><th>this run</th>"
    if seed:
        head += f"<th>seed Table S1 ({html.escape(seed['device'])})</th><th>ratio</th>"
    head += "</tr>"
    body = []
    for key, label, sig in _ROWS:
        val = d.get(key)
        row = f"<tr><td>{label}</td><td>{_fmt(val, sig)}</td>"
        if seed:
            ref = seed.get(key)
            ratio = (float(val) / ref) if (val is not None and ref) else None
            row += f"<td>{_fmt(ref, sig)}</td><td>{_fmt(ratio, 3)}</td>"
        body.append(row + "</tr>")
    at_rows = []
    for key, label in (
        ("l_max_at", "L<sub>max</sub>"),
        ("ce_max_at", "CE<sub>max</sub>"),
        ("eqe_max_at", "EQE<sub>max</sub>"),
        ("pe_max_at", "PE<sub>max</sub>"),
    ):
        at = d.get(key)
        if at:
            at_rows.append(
                f"<tr><td>{label}</td><td>{_fmt(at['j_ma_cm2'])}</td><td>{_fmt(at['v'])}</td>"
                f"<td>{_fmt(at['l_cd_m2'])}</td></tr>"
            )
    notes = (
        f"V<sub>on</sub>: first voltage where L reaches {_fmt(summary.threshold_cd_m2)} cd/m² "
        f"({html.escape(summary.von_method)}); detector noise floor "
        f"{_fmt(summary.noise_floor_cd_m2, 3)} cd/m² ({html.escape(summary.noise_floor_source)}). "
        f"EL peak, FWHM and CIE from the {html.escape(summary.spectrum_basis)}."
    )
    figs = [_figure_html(fig, caption) for _name, fig, caption
            in sweep_figures(meta, points, summary, spectra)]
    return (
        "<h2>Summary</h2><table>" + head + "".join(body) + "</table>"
        f'<p class="note">{notes}</p>'
        "<h2>Where the maxima are</h2><table><tr><th>maximum</th><th>J (mA/cm²)</th><th>V (V)</th>"
        "<th>L (cd/m²)</th></tr>" + "".join(at_rows) + "</table>"
        '<h2>Figures</h2><div class="figs">' + "".join(figs) + "</div>"
    )


def _aging_html(meta: Mapping[str, Any], samples: np.ndarray, result: LifetimeResult) -> str:
    d = result.to_dict()
    rows = [
        ("L0 (cd/m²)", _fmt(d["l0_cd_m2"]), html.escape(result.l0_method)),
        (
            "L_peak (cd/m²)",
            _fmt(d["l_peak_cd_m2"]),
            "positive aging (brightens first)" if result.positive_aging else "no brightening: L_peak = L0",
        ),
        ("t_peak (h)", _fmt(d["t_peak_h"]), ""),
        ("duration (h)", _fmt(d["duration_h"]), f"final L/L0 = {_fmt(d['final_l_rel'], 3)}"),
    ]
    ex = d.get("extrapolated") or {}
    for name, _ in LEVELS:
        for suffix, ref in (("", "L0"), ("_from_peak", "L_peak")):
            key = f"{name}{suffix}_h"
            e, err = ex.get(key), ex.get(f"{key}_err")
            fit_txt = f"fit: {_fmt(e)} ± {_fmt(err, 2)} h" if e is not None else ""
            rows.append((f"{name.upper()} vs {ref} (h)", _fmt(d.get(key)), fit_txt))
    table = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
    fit = d.get("fit")
    fit_txt = (
        "Stretched exponential L/L0 = a·exp(−(t/τ)^β) on the decaying part "
        f"(from {_fmt(fit['t_start_h'])} h): a = {_fmt(fit['a'])} ± {_fmt(fit['a_err'], 2)}, "
        f"τ = {_fmt(fit['tau_h'])} ± {_fmt(fit['tau_err'], 2)} h, "
        f"β = {_fmt(fit['beta'])} ± {_fmt(fit['beta_err'], 2)} (1σ)."
        if fit
        else "No fit."
    )
    names = samples.dtype.names or ()
    volt = samples["voltage_v"] if "voltage_v" in names else None
    fig = plots.aging_figure(samples["t_s"], samples["luminance_cd_m2"], result, volt,
                             title=f"Operational lifetime, {run_label(meta)}")
    return (
        "<h2>Lifetime</h2><table><tr><th>quantity</th><th>measured</th><th>note / fit</th></tr>"
        + table
        + "</table>"
        f'<p class="note">{fit_txt} Times are hours since the drive was switched on; Tx “vs L_peak” is the '
        "time at which L falls to x·L_peak.</p>"
        '<h2>Figures</h2><div class="figs">'
        + _figure_html(fig, "L/L0 and voltage against time, with Tx marked (▼ = extrapolated)")
        + "</div>"
    )


def render_report(
    meta: Mapping[str, Any],
    table: np.ndarray,
    *,
    summary: SweepSummary | None = None,
    lifetime: LifetimeResult | None = None,
    spectra: Sequence[Spectrum] = (),
) -> str:
    """The HTML page for a sweep (give ``summary``) or an aging run (give ``lifetime``)."""
    kind = meta.get("kind")
    title = report_title(meta)
    if kind == "sweep":
        if summary is None:
            raise ValueError("a sweep report needs its summary")
        body = _sweep_html(meta, table, summary, spectra)
    elif kind == "aging":
        if lifetime is None:
            raise ValueError("an aging report needs its lifetime result")
        body = _aging_html(meta, table, lifetime)
    else:
        raise ValueError(f"unknown run kind {kind!r}")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + _meta_table(meta)
        + body
        + '<p class="note">Formulas and conventions: docs/measurement.md of the LED test station.</p>'
        "</body></html>\n"
    )
