"""The local store: SQLite in WAL mode, one file per station — the truth — and the only module
of ``station`` that speaks SQL.

- :mod:`~station.store.schema` — every table, the columns of the record tables, the numbered
  migrations;
- :mod:`~station.store.core` — :class:`Store`: runs, samples, stream state, lost records,
  revisions (the acquisition's and the procedures' connection);
- :mod:`~station.store.jobs` — the job queue's table;
- :mod:`~station.store.sinks` — the sinks' cursors, events, anchors, on their own connection;
- :mod:`~station.store.queries` — the reads of the web page and the commands.
"""

from .core import Store, spectra_of
from .jobs import JobTable
from .schema import (
    AGING_COLUMNS,
    COLUMNS,
    MIGRATIONS,
    SAMPLE_TABLES,
    SCHEMA_VERSION,
    SPECTRUM_COLUMNS,
    SWEEP_COLUMNS,
    StoreError,
)

__all__ = [
    "AGING_COLUMNS",
    "COLUMNS",
    "MIGRATIONS",
    "SAMPLE_TABLES",
    "SCHEMA_VERSION",
    "SPECTRUM_COLUMNS",
    "SWEEP_COLUMNS",
    "JobTable",
    "Store",
    "StoreError",
    "spectra_of",
]
