"""What the web API returns, read from the store (the truth) and the job manager.

Pure functions of a connection to the store (its queries are :mod:`station.store.queries`) and
the station's configuration, so the same code answers
the HTTP API and fills the push channel. Figures come from the same functions as everywhere else:
sweep summaries are the ones the procedures stored, lifetimes come from
:func:`station.analysis.lifetime.analyze_lifetime` on the stored samples (as ``station analyze``),
the Table S1 row from :func:`station.analysis.report.seed_row`.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import numpy as np

from firmware_protocol.spec import Fault, SampleFlags

from ..config import StationConfig
from ..store import queries
from ..store.jobs import JobTable

# samples that are not analysed (as in station.procedures.finalize_aging)
BAD_AGING_FLAGS = int(SampleFlags.STOPPED | SampleFlags.SHORT | SampleFlags.OPEN)
ACTIVE = ("running", "paused")


def num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def nums(a: np.ndarray | list[Any], digits: int | None = None) -> list[float | None]:
    arr = np.asarray(a, dtype=float)
    if digits is not None:
        arr = np.round(arr, digits)
    return [v if math.isfinite(v) else None for v in arr.tolist()]


def fault_list(bits: int | None) -> list[str] | None:
    """The board's fault bits by name; bits this host does not know as hex."""
    if bits is None:
        return None
    names = [f.name.lower() for f in Fault if f.value and bits & f.value and f.name]
    unknown = bits & ~sum(f.value for f in Fault)
    return names + ([f"0x{unknown:x}"] if unknown else [])


def job_progress(db: sqlite3.Connection, info: dict[str, Any]) -> dict[str, Any]:
    """A job's info with ``fraction`` (pixel-steps done / all), ``steps_total``, ``words``."""
    stored = JobTable(db).spec(info["id"])
    total = 0
    spec: dict[str, Any] = {}
    if stored is not None:
        spec = stored
        steps = spec.get("steps") or [{"pixels": spec.get("pixels", [])}]
        total = sum(len(s.get("pixels", [])) for s in steps)
    prog = info.get("progress") or {}
    done = [d for d in prog.get("done", []) if isinstance(d, dict)]
    step = int(prog.get("step", 0) or 0)
    n_steps = int(info.get("steps") or 0) or len(spec.get("steps") or [1])
    frac = 1.0 if info.get("state") == "completed" else (len(done) / total if total else 0.0)
    if info.get("state") == "completed":
        words = f"all {n_steps} steps done"
    else:
        words = f"step {min(step + 1, max(n_steps, 1))} of {max(n_steps, 1)}, " \
                f"{len(done)} of {total} runs done"
    early = [d for d in done if d.get("reason") not in ("completed", "duration", "t50", "t95",
                                                        "t90", "t80", "t70")]
    if early:
        words += f", {len(early)} ended early"
    return {**info, "fraction": frac, "runs_total": total, "words": words}


def pixels(db: sqlite3.Connection, cfg: StationConfig) -> list[dict[str, Any]]:
    """Every configured pixel (and any other the store has runs of): its state (idle, sweep,
    aging, paused), its active run, its latest sweep and aging runs, the latest L/L0 and V."""
    out: dict[int, dict[str, Any]] = {}
    for sub, p in cfg.all_pixels():
        out[p.number] = {"pixel": p.number, "label": p.label or f"px{p.number}",
                         "substrate": sub.id, "device": p.device, "area_mm2": p.area_mm2,
                         "state": "idle", "run_id": None, "job_id": None, "last_sweep": None,
                         "last_aging": None, "l_rel": None, "voltage_v": None}
    for rid, kind, px, status, job_id, label, device, substrate in queries.run_summaries_by_id(db):
        d = out.setdefault(int(px), {
            "pixel": int(px), "label": label or f"px{px}", "substrate": substrate,
            "device": device, "area_mm2": None, "state": "idle", "run_id": None, "job_id": None,
            "last_sweep": None, "last_aging": None, "l_rel": None, "voltage_v": None})
        d["last_sweep" if kind == "sweep" else "last_aging"] = int(rid)
        if status in ACTIVE:
            d["state"] = ("paused" if status == "paused" else
                          "sweeping" if kind == "sweep" else "aging")
            d["run_id"], d["job_id"] = int(rid), job_id
        elif d["run_id"] == rid:
            d["state"], d["run_id"], d["job_id"] = "idle", None, None
    for d in out.values():
        if d["last_aging"] is not None:
            r = queries.last_aging_sample(db, d["last_aging"])
            if r is not None:
                d["l_rel"], d["voltage_v"] = num(r[0]), num(r[1])
    return [out[k] for k in sorted(out)]


def runs(db: sqlite3.Connection, *, limit: int = 200, pixel: int | None = None,
         kind: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
    return queries.list_runs(db, limit=limit, pixel=pixel, kind=kind, job_id=job_id)


def run_info(db: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    d = queries.run_row(db, run_id)
    if d is None:
        return None
    for k in ("params", "calibration", "summary"):
        d[k] = json.loads(d[k]) if d.get(k) else None
    from ..analysis.report import seed_row

    d["table_s1_seed"] = seed_row({"device": d.get("device")})
    return d


def _decimate(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return idx


def aging_t0(db: sqlite3.Connection, run_id: int, t0_us: int | None) -> int | None:
    """The run's time origin (board µs): the drive's switch-on, else its first sample."""
    if t0_us is not None:
        return int(t0_us)
    return queries.aging_first_t_us(db, run_id)


def aging_data(db: sqlite3.Connection, run: dict[str, Any], max_points: int = 2000
               ) -> dict[str, Any]:
    """An aging run's trace (decimated evenly to ``max_points``) and its lifetimes so far."""
    from ..analysis.lifetime import analyze_lifetime

    rows = queries.aging_trace(db, run["id"])
    t0 = aging_t0(db, run["id"], run.get("t0_us"))
    if rows:
        a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    else:
        a = np.zeros((0, 7))
    t_s = (a[:, 0] - (t0 or 0)) / 1e6
    lifetime: dict[str, Any] | None = None
    lifetime_error: str | None = None
    live = (a[:, 1].astype(np.int64) & BAD_AGING_FLAGS) == 0 if len(a) else np.zeros(0, bool)
    try:
        lifetime = analyze_lifetime(t_s[live], a[live, 3], fit=False).to_dict()
    except ValueError as e:
        lifetime_error = str(e)
    idx = _decimate(len(a), max_points)
    return {"run_id": run["id"], "kind": "aging", "pixel": run["pixel"], "n": len(a),
            "decimated": len(idx) < len(a), "last_seq": int(a[-1, 6]) if len(a) else None,
            "t_s": nums(t_s[idx], 3), "l_rel": nums(a[idx, 4], 5), "voltage_v": nums(a[idx, 2], 4),
            "luminance_cd_m2": nums(a[idx, 3], 4), "temperature_c": nums(a[idx, 5], 2),
            "lifetime": lifetime, "lifetime_error": lifetime_error}


SWEEP_DATA_COLS = queries.SWEEP_TRACE_COLUMNS


def sweep_data(store_db: sqlite3.Connection, run: dict[str, Any]) -> dict[str, Any]:
    """A sweep run's points, its spectra (power-normalised), summary and Table S1 rows."""
    rows = queries.sweep_trace(store_db, run["id"])
    cols: dict[str, Any] = {c: [r[i] for r in rows] for i, c in enumerate(SWEEP_DATA_COLS)}
    for c in SWEEP_DATA_COLS[1:]:
        cols[c] = nums(np.array([np.nan if v is None else v for v in cols[c]], dtype=float))
    return {"run_id": run["id"], "kind": "sweep", "pixel": run["pixel"], "n": len(rows), **cols,
            "spectra": _spectra(store_db, run), "summary": run.get("summary"),
            "table_s1_seed": run.get("table_s1_seed")}


def _spectra(db: sqlite3.Connection, run: dict[str, Any]) -> list[dict[str, Any]]:
    from ..export import run_spectra
    from ..store import spectra_of

    class _S:  # run_spectra wants a Store; it only calls spectra_of
        def spectra_of(self, run_id: int) -> list[dict[str, Any]]:
            return spectra_of(db, run_id)

    try:
        specs = run_spectra(_S(), run)  # type: ignore[arg-type]
    except Exception as e:  # a spectrum that cannot be converted is shown as missing
        return [{"error": f"{type(e).__name__}: {e}"}]
    out = []
    for s in specs:
        if "counts_or_power" not in s or s.get("used") is False:
            continue  # a probe, or no emission: recorded in the export, not shown
        v = np.asarray(s["counts_or_power"], dtype=float)
        peak = float(np.nanmax(v)) if v.size else 0.0
        out.append({"voltage_v": s.get("voltage_v"), "t_s": s.get("t_s"), "kind": s["kind"],
                    "wavelength_nm": nums(s["wavelength_nm"], 2),
                    "relative": nums(v / peak if peak > 0 else v, 4)})
    return out
