"""The read side: what the web page and the commands ask of the store, as functions of a
connection to the store file (the web server passes the :class:`~station.store.Store`'s own, on
the event loop's thread). Nothing here writes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from .schema import SAMPLE_TABLES

RUN_LIST_COLUMNS = ("id", "kind", "pixel", "substrate", "label", "device", "job_id", "status",
                    "end_reason", "started_at", "ended_at", "summary")
AGING_TRACE_COLUMNS = ("t_us", "flags", "voltage_v", "luminance_cd_m2", "l_rel", "temperature_c",
                       "seq")
SWEEP_TRACE_COLUMNS = ("direction", "voltage_v", "current_density_ma_cm2", "luminance_cd_m2",
                       "eqe_pct", "ce_cd_a", "pe_lm_w")
LIVE_AGING_COLUMNS = ("id", "run_id", "pixel", "seq", "t_us", "voltage_v", "l_rel",
                      "luminance_cd_m2", "temperature_c")
LIVE_SWEEP_COLUMNS = ("id", "run_id", "pixel", "seq", "direction", "voltage_v",
                      "current_density_ma_cm2", "luminance_cd_m2", "eqe_pct")
_FOLLOWED = (*SAMPLE_TABLES, "events")


def runs_in_file(path: str | Path) -> int:
    """How many runs a store file holds, read-only (0 if it is not a readable store)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


# -- runs -----------------------------------------------------------------------------------------
def run_summaries_by_id(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every run, oldest first: id, kind, pixel, status, job_id, label, device, substrate."""
    return db.execute("SELECT id, kind, pixel, status, job_id, label, device, substrate FROM runs "
                      "ORDER BY id").fetchall()


def list_runs(db: sqlite3.Connection, *, limit: int, pixel: int | None = None,
              kind: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` runs (optionally of one pixel, kind, job): :data:`RUN_LIST_COLUMNS`,
    ``summary`` decoded."""
    where: list[str] = []
    args: list[Any] = []
    if pixel is not None:
        where.append("pixel = ?")
        args.append(pixel)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind)
    if job_id is not None:
        where.append("job_id = ?")
        args.append(job_id)
    q = (f"SELECT {', '.join(RUN_LIST_COLUMNS)} FROM runs"
         + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?")
    out = []
    for row in db.execute(q, (*args, limit)):
        d = dict(zip(RUN_LIST_COLUMNS, row, strict=True))
        d["summary"] = json.loads(d["summary"]) if d["summary"] else None
        out.append(d)
    return out


def run_row(db: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    """A run's row as stored (JSON columns still text), None if there is no such run."""
    cur = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cur.description], row, strict=True))


def run_t0_us(db: sqlite3.Connection, run_id: int) -> int | None:
    """The run's stored ``t0_us`` (None if unset or no such run)."""
    r = db.execute("SELECT t0_us FROM runs WHERE id = ?", (run_id,)).fetchone()
    return r[0] if r else None


# -- samples --------------------------------------------------------------------------------------
def aging_first_t_us(db: sqlite3.Connection, run_id: int) -> int | None:
    """The board time of an aging run's first sample."""
    r = db.execute("SELECT min(t_us) FROM aging_samples WHERE run_id = ?", (run_id,)).fetchone()
    return None if r is None or r[0] is None else int(r[0])


def last_aging_sample(db: sqlite3.Connection, run_id: int) -> tuple[Any, Any] | None:
    """``(l_rel, voltage_v)`` of an aging run's newest sample."""
    r = db.execute("SELECT l_rel, voltage_v FROM aging_samples WHERE run_id = ? "
                   "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
    return None if r is None else (r[0], r[1])


def aging_trace(db: sqlite3.Connection, run_id: int) -> list[tuple[Any, ...]]:
    """An aging run's samples by seq: :data:`AGING_TRACE_COLUMNS`."""
    return db.execute(f"SELECT {', '.join(AGING_TRACE_COLUMNS)} FROM aging_samples "
                      "WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()


def sweep_trace(db: sqlite3.Connection, run_id: int) -> list[tuple[Any, ...]]:
    """A sweep run's points by seq: :data:`SWEEP_TRACE_COLUMNS`."""
    return db.execute(f"SELECT {', '.join(SWEEP_TRACE_COLUMNS)} FROM sweep_points "
                      "WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()


# -- following the store (the web page's push channel) --------------------------------------------
def max_id(db: sqlite3.Connection, table: str) -> int:
    """The newest row id of a followed table (0 if empty, or for ``events`` before the first)."""
    if table not in _FOLLOWED:
        raise ValueError(f"not a followed table: {table}")
    try:
        r = db.execute(f"SELECT max(id) FROM {table}").fetchone()
    except sqlite3.OperationalError:  # the events table of an old store is created by the first event
        return 0
    return int(r[0] or 0)


def aging_after(db: sqlite3.Connection, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Aging samples with ``id > after`` in id order: :data:`LIVE_AGING_COLUMNS`."""
    return db.execute(f"SELECT {', '.join(LIVE_AGING_COLUMNS)} FROM aging_samples WHERE id > ? "
                      "ORDER BY id LIMIT ?", (after, limit)).fetchall()


def sweep_after(db: sqlite3.Connection, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Sweep points with ``id > after`` in id order: :data:`LIVE_SWEEP_COLUMNS`."""
    return db.execute(f"SELECT {', '.join(LIVE_SWEEP_COLUMNS)} FROM sweep_points WHERE id > ? "
                      "ORDER BY id LIMIT ?", (after, limit)).fetchall()


def events_after(db: sqlite3.Connection, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Events with ``id > after`` in id order: id, ts, kind, payload (JSON text)."""
    try:
        return db.execute("SELECT id, ts, kind, payload FROM events WHERE id > ? "
                          "ORDER BY id LIMIT ?", (after, limit)).fetchall()
    except sqlite3.OperationalError:  # no events table yet
        return []
