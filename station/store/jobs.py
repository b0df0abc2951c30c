"""The job queue's table: every query :class:`station.jobs.JobManager` and the web page make
of ``jobs`` (and of the runs a job made). The table itself is defined in
:mod:`station.store.schema`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from .schema import ensure_jobs_schema

JOB_FIELDS = ("name", "kind", "spec", "state", "client", "created_at", "started_at", "ended_at",
              "progress", "error")
_JSON_FIELDS = ("spec", "progress")


class JobTable:
    """The ``jobs`` table on a store connection (the :class:`~station.store.Store`'s: the event
    loop's thread)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def ensure(self) -> None:
        """Create the table if it is missing (a store file from before it existed)."""
        ensure_jobs_schema(self.db)

    def insert(self, job_id: str, *, name: str, kind: str, spec: dict[str, Any], state: str,
               client: str | None, created_at: float, progress: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, name, kind, spec, state, client, created_at, progress) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (job_id, name, kind, json.dumps(spec), state, client, created_at,
             json.dumps(progress)))

    def row(self, job_id: str) -> dict[str, Any] | None:
        """The job's row (``spec`` and ``progress`` decoded), None if there is no such job."""
        cur = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        d = dict(zip([c[0] for c in cur.description], row, strict=True))
        d["spec"] = json.loads(d["spec"])
        d["progress"] = json.loads(d["progress"])
        return d

    def spec(self, job_id: str) -> dict[str, Any] | None:
        """The job's spec as submitted, None if there is no such job."""
        row = self.db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job (``progress`` and ``spec`` given as objects)."""
        bad = set(fields) - set(JOB_FIELDS)
        if bad:
            raise ValueError(f"cannot update job fields {sorted(bad)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        vals = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
        self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*vals, job_id))

    def ids_newest_first(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM jobs ORDER BY created_at DESC")]

    def ids_in_states(self, states: Sequence[str]) -> list[str]:
        return [r[0] for r in self.db.execute(
            f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(states))})",
            tuple(states)).fetchall()]

    def in_states_oldest_first(self, states: Sequence[str]) -> list[tuple[str, str]]:
        """``(id, state)`` of the jobs in one of ``states``, in the order they were created."""
        return [(r[0], r[1]) for r in self.db.execute(
            f"SELECT id, state FROM jobs WHERE state IN ({','.join('?' * len(states))}) "
            "ORDER BY created_at", tuple(states)).fetchall()]

    def count_by_state(self) -> dict[str, int]:
        return {s: n for s, n in self.db.execute("SELECT state, count(*) FROM jobs GROUP BY state")}

    def active_ids(self) -> list[str]:
        """Jobs running, paused or queued."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM jobs WHERE state IN ('running', 'paused', 'queued')")]

    # -- the runs of jobs -----------------------------------------------------------------------
    def runs_of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's runs, oldest first: id, kind, pixel, status, end_reason."""
        return [dict(id=x[0], kind=x[1], pixel=x[2], status=x[3], end_reason=x[4])
                for x in self.db.execute("SELECT id, kind, pixel, status, end_reason FROM runs "
                                         "WHERE job_id = ? ORDER BY id", (job_id,))]

    def busy_aging_pixels(self) -> dict[int, str]:
        """``{pixel: job id}`` of the aging runs running or paused."""
        out: dict[int, str] = {}
        for r in self.db.execute("SELECT pixel, job_id FROM runs WHERE kind = 'aging' AND "
                                 "status IN ('running', 'paused')"):
            out[int(r[0])] = str(r[1])
        return out

    def resumable_aging_runs(self, job_id: str) -> list[tuple[int, int]]:
        """``(run id, pixel)`` of the job's aging runs a restart resumes."""
        return [(int(r), int(p)) for r, p in self.db.execute(
            "SELECT id, pixel FROM runs WHERE job_id = ? AND kind = 'aging' AND "
            "status IN ('running', 'paused', 'interrupted')", (job_id,)).fetchall()]

    def interrupt_running_sweeps(self, job_id: str) -> None:
        """End the job's sweeps a crash cut as interrupted (the job runs them again)."""
        self.db.execute("UPDATE runs SET status = 'interrupted', end_reason = 'station restart' "
                        "WHERE job_id = ? AND kind = 'sweep' AND status = 'running'", (job_id,))
