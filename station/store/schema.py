"""Every table of the store file, its columns and its numbered migrations: the one place.

The store file holds the samples and runs (written by :class:`station.store.Store`), the jobs
(:mod:`station.store.jobs`) and the sinks' cursors, events, delivered summaries and time
anchors (:mod:`station.store.sinks`, on each sink's own connection). ``PRAGMA user_version`` is
the schema version; ``MIGRATIONS[v]`` takes a store from version v-1 to v. A new table or
column goes here, with a migration when it changes a table a released store already has, and a
test that a store written by the release before opens and upgrades (``tests/data/store-v*.db``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 2

SWEEP_COLUMNS = (
    "seq", "run_id", "sweep_id", "idx", "t_us", "pixel", "flags", "pd_gain", "direction",
    "voltage_set_v", "voltage_v", "current_a", "photodiode_a", "dark_a",
    "current_density_ma_cm2", "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w", "spectrum_seq",
    "epoch", "rev",
)
AGING_COLUMNS = (
    "seq", "run_id", "t_us", "channel", "pixel", "flags", "pd_gain", "current_a", "voltage_v",
    "photodiode_a", "temperature_c", "dark_a", "luminance_cd_m2", "l_rel", "eqe_pct", "epoch",
    "rev",
)
SPECTRUM_COLUMNS = (
    "seq", "run_id", "t_us", "sweep_id", "idx", "pixel", "flags", "voltage_v", "current_a",
    "integration_ms", "dark_counts", "counts", "epoch",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "sweep_points": SWEEP_COLUMNS, "aging_samples": AGING_COLUMNS, "spectra": SPECTRUM_COLUMNS}
"""The record tables and the columns a writer gives (besides ``id``; ``spectra`` also has
``probe``, set by :meth:`Store.mark_probe_spectra`)."""
SAMPLE_TABLES = ("sweep_points", "aging_samples")
"""The tables whose rows the sinks deliver (with ``events``)."""
REVISABLE = ("sweep_points", "aging_samples")


class StoreError(Exception):
    pass


_RECORDS_LOST_DDL = """
CREATE TABLE IF NOT EXISTS records_lost (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    t_from_us INTEGER,
    t_to_us INTEGER,
    UNIQUE (stream, from_seq)
);"""

JOBS_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    client TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
"""
"""The job queue (:class:`station.jobs.JobManager` through :class:`station.store.jobs.JobTable`)."""

SINK_DDL = (
    # per sink and table, the last delivered ``id``
    "CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT NOT NULL, table_name TEXT NOT NULL, "
    "last_id INTEGER NOT NULL, PRIMARY KEY (sink, table_name))",
    # job lifecycle events and alerts, written before any sink sees them
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
    "kind TEXT NOT NULL, payload TEXT NOT NULL)",
    # run summaries a sink has published, by content digest (runs are updated in place)
    "CREATE TABLE IF NOT EXISTS sink_delivered_runs (sink TEXT NOT NULL, run_id INTEGER NOT NULL, "
    "digest TEXT NOT NULL, PRIMARY KEY (sink, run_id))",
    # per run, board time ``t_us`` to Unix µs, fixed the first time a sink needs it
    "CREATE TABLE IF NOT EXISTS sink_time_anchors (run_key INTEGER PRIMARY KEY, "
    "offset_us INTEGER NOT NULL)",
)
"""The sinks' tables (:mod:`station.store.sinks`); created by the store and, for a store file a
sink opens on its own, by :func:`ensure_sink_schema`."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: board epochs (a reset that restarts the board's counters), lost records, and
    # revisions of derived values
    2: (
        "ALTER TABLE sweep_points ADD COLUMN epoch INTEGER DEFAULT 0",
        "ALTER TABLE aging_samples ADD COLUMN epoch INTEGER DEFAULT 0",
        "ALTER TABLE spectra ADD COLUMN epoch INTEGER DEFAULT 0",
        "ALTER TABLE spectra ADD COLUMN probe INTEGER DEFAULT 0",
        "ALTER TABLE sweep_points ADD COLUMN rev INTEGER DEFAULT 0",
        "ALTER TABLE aging_samples ADD COLUMN rev INTEGER DEFAULT 0",
        "ALTER TABLE stream_state ADD COLUMN base INTEGER NOT NULL DEFAULT 0",
        _RECORDS_LOST_DDL,
    ),
}
"""Schema upgrades: ``MIGRATIONS[v]`` takes a store from version v-1 to v, in one transaction."""

_SINK_SCRIPT = "".join(f"{stmt};\n" for stmt in SINK_DDL)

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('sweep', 'aging')),
    station TEXT NOT NULL,
    pixel INTEGER NOT NULL,
    substrate TEXT,
    label TEXT,
    device TEXT,
    area_m2 REAL NOT NULL,
    job_id TEXT,
    status TEXT NOT NULL DEFAULT 'running',
    end_reason TEXT,
    params TEXT NOT NULL DEFAULT '{{}}',
    calibration TEXT NOT NULL DEFAULT '{{}}',
    summary TEXT,
    board_serial TEXT,
    channel INTEGER,
    sweep_id INTEGER,
    t0_us INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS sweep_points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    sweep_id INTEGER, idx INTEGER, t_us INTEGER, pixel INTEGER, flags INTEGER, pd_gain INTEGER,
    direction TEXT,
    voltage_set_v REAL, voltage_v REAL, current_a REAL, photodiode_a REAL, dark_a REAL,
    current_density_ma_cm2 REAL, luminance_cd_m2 REAL, eqe_pct REAL, ce_cd_a REAL, pe_lm_w REAL,
    spectrum_seq INTEGER,
    epoch INTEGER DEFAULT 0,
    rev INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sweep_points_run ON sweep_points(run_id, idx);
CREATE TABLE IF NOT EXISTS aging_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    t_us INTEGER, channel INTEGER, pixel INTEGER, flags INTEGER, pd_gain INTEGER,
    current_a REAL, voltage_v REAL, photodiode_a REAL, temperature_c REAL, dark_a REAL,
    luminance_cd_m2 REAL, l_rel REAL, eqe_pct REAL,
    epoch INTEGER DEFAULT 0,
    rev INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS aging_samples_run ON aging_samples(run_id, seq);
CREATE TABLE IF NOT EXISTS spectra (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),
    t_us INTEGER, sweep_id INTEGER, idx INTEGER, pixel INTEGER, flags INTEGER,
    voltage_v REAL, current_a REAL, integration_ms REAL, dark_counts REAL,
    counts BLOB NOT NULL,
    epoch INTEGER DEFAULT 0,
    probe INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS stream_state (
    stream INTEGER PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    base INTEGER NOT NULL DEFAULT 0
);
{_RECORDS_LOST_DDL}
{JOBS_DDL}
{_SINK_SCRIPT}
PRAGMA user_version = {SCHEMA_VERSION};
"""
"""The current schema, every table (idempotent: ``IF NOT EXISTS``)."""


def open_schema(db: sqlite3.Connection, path: str | Path) -> None:
    """Create the schema in a new store file, or upgrade an older one in place (each migration
    in its own transaction); refuse one from a newer release."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {version}, newer than this "
                         f"release's {SCHEMA_VERSION}: upgrade the station software")
    has_tables = db.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    if version == 0 and not has_tables:
        db.executescript(DDL)
        return
    for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
        with db:
            db.execute("BEGIN")
            for stmt in MIGRATIONS[v]:
                db.execute(stmt)
            db.execute(f"PRAGMA user_version = {v}")
    db.executescript(DDL)  # anything a migration does not touch (indexes, tables added later)


def ensure_sink_schema(db: sqlite3.Connection) -> None:
    """Create the sink tables in a store if they are missing (idempotent)."""
    for stmt in SINK_DDL:
        db.execute(stmt)


def ensure_jobs_schema(db: sqlite3.Connection) -> None:
    """Create the jobs table in a store if it is missing (idempotent)."""
    db.executescript(JOBS_DDL)
