"""No SQL outside the store package (issue 13): every table, migration, write and read of the
store file is in ``station/store/``, so a schema change has one place to go."""

from __future__ import annotations

import re
from pathlib import Path

STATION = Path(__file__).resolve().parent.parent / "station"
STORE = STATION / "store"

SQL = re.compile(
    r"(?<!\w)(?:execute|executemany|executescript)\("
    r"|sqlite3\.connect\("
    r"|\b(?:SELECT|INSERT|UPDATE|DELETE FROM|CREATE TABLE|CREATE INDEX|ALTER TABLE|PRAGMA)\s")

# Statements allowed outside the store (a regex over the source, across lines), each with its
# reason. Keyed by the code itself, not by file, so moving it (the procedures split) neither
# hides nor breaks anything; nothing else on the lines it spans is exempt.
ALLOWED: dict[str, str] = {}


def sql_lines_outside_the_store() -> list[str]:
    found = []
    for path in sorted(STATION.rglob("*.py")):
        if STORE in path.parents:
            continue
        text = path.read_text()
        for allowed in ALLOWED:
            text = re.sub(allowed, lambda m: "\n" * m.group().count("\n"), text)
        for n, line in enumerate(text.splitlines(), 1):
            if SQL.search(line):
                found.append(f"{path.relative_to(STATION.parent)}:{n}: {line.strip()}")
    return found


def test_no_sql_outside_the_store_package():
    assert sql_lines_outside_the_store() == [], (
        "SQL belongs in station/store/ (schema.py for tables and migrations, core.py, jobs.py, "
        "sinks.py, queries.py for queries); add a store method and call it")


def test_the_check_sees_sql(tmp_path):
    """The pattern catches what it is for, and not a method merely named like it."""
    for line in ('db.execute("x")', "self.db.executemany(q, rows)", "con.executescript(DDL)",
                 'sqlite3.connect(path)', '"SELECT id FROM runs"', '"INSERT INTO jobs (id) "',
                 '"UPDATE runs SET x = 1"', '"CREATE TABLE t (x)"'):
        assert SQL.search(line), line
    for line in ("await self._execute(verb, req, who)", "reply = await _execute(jobs, verb)",
                 "# selected columns", "def update_run(self)"):
        assert not SQL.search(line), line
