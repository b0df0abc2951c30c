"""Export a stored run: a CSV of its points or samples and a JSON sidecar (``station.exportfmt``).

The sidecar holds the summary, the calibration (pixel area, photodiode responsivity table,
geometry) and every spectrum the board sent for the run: processed (wavelength, power
density) where it carries light, always with its raw counts, dark level, integration time,
flags and whether the analysis used it (auto-exposure probes and spectra without emission are
recorded but not used); the spectrometer's wavelength calibration is in ``params``. So anyone
can recompute every figure from the export alone (``station analyze``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from .exportfmt import table_from_columns, write_export
from .procedures import board_spectrum
from .store import Store


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def run_spectra(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    spec = (run.get("params") or {}).get("spectrometer") or {}
    if not spec:
        return []
    out = []
    t0 = run.get("t0_us")
    for row in store.spectra_of(run["id"]):
        t_s = None
        if run["kind"] == "aging":
            t_s = (row["t_us"] - t0) / 1e6 if t0 is not None else 0.0
        s = board_spectrum(row["counts"], row["dark_counts"], row["flags"], spec["wavelength_cal"],
                           spec["spectrum_kind"], voltage_v=row["voltage_v"] if t_s is None else None,
                           t_s=t_s)
        # what the board sent, so the spectrum can be processed again from the export alone
        raw = {"seq": row["seq"], "raw_counts": [int(c) for c in row["counts"]],
               "dark_counts": row["dark_counts"], "integration_ms": row["integration_ms"],
               "flags": row["flags"], "board_voltage_v": row["voltage_v"],
               "board_current_a": row["current_a"], "t_us": row["t_us"]}
        if s is not None:
            d = s.to_dict() | raw
            d["used"] = not row["probe"]  # auto-exposure probes: recorded, not analysed
        else:  # no emission above the detector's noise: recorded, not analysed
            d = raw | {"used": False, "voltage_v": row["voltage_v"] if t_s is None else None,
                       "t_s": t_s}
        out.append(d)
    return out


def export_run(store: Store, run_id: int, out_dir: str | Path) -> Path:
    store.flush()
    run = store.run(run_id)
    kind = run["kind"]
    meta: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "station": run["station"],
        "pixel": run["pixel"],
        "substrate": run["substrate"],
        "label": run["label"],
        "device": run["device"],
        "preset": run["device"],
        "job_id": run["job_id"],
        "status": run["status"],
        "end_reason": run["end_reason"],
        "board_serial": run["board_serial"],
        "started": _iso(run["started_at"]),
        "ended": _iso(run["ended_at"]),
        "params": run["params"],
        "calibration": run["calibration"],
        "spectra": run_spectra(store, run),
        "summary": run["summary"] or {},
    }
    if kind == "sweep":
        d = store.fetch("sweep_points", run_id)
        cols = {c: d[c] for c in ("seq", "direction", "voltage_set_v", "voltage_v", "current_a",
                                  "current_density_ma_cm2", "photodiode_a", "dark_a",
                                  "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w", "flags",
                                  "pd_gain", "t_us", "epoch")}
        cols["direction"] = np.asarray(d["direction"], dtype=str)
    else:
        d = store.fetch("aging_samples", run_id)
        t0 = run.get("t0_us")
        t_s = (d["t_us"] - (t0 if t0 is not None else (d["t_us"][0] if len(d["t_us"]) else 0))) / 1e6
        cols = {"seq": d["seq"], "t_s": t_s}
        cols |= {c: d[c] for c in ("current_a", "voltage_v", "photodiode_a", "dark_a",
                                   "luminance_cd_m2", "l_rel", "eqe_pct", "temperature_c", "flags",
                                   "channel", "t_us", "epoch")}
    cols["seq"] = np.asarray(cols["seq"], dtype=np.int64)
    cols["epoch"] = np.nan_to_num(np.asarray(cols["epoch"], dtype=float)).astype(np.int64)
    ts = d["t_us"][np.isfinite(d["t_us"])]
    meta["records_lost"] = [] if not len(ts) else [
        {k: r[k] for k in ("stream", "epoch", "from_seq", "to_seq", "count", "reason",
                           "t_from_us", "t_to_us")}
        for r in store.records_lost(int(ts.min()), int(ts.max()),
                                    "sweep" if kind == "sweep" else "aging")]
    return write_export(out_dir, meta, table_from_columns(cols))
