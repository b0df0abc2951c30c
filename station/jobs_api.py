"""The job interface the daemon exposes to its control plane (MQTT commands, the CLI).

:class:`JobControl` is what ``station.control`` (the MQTT command server) calls; the daemon's
``station.jobs.JobManager`` implements it. Job files and command payloads are validated with the
pydantic models in ``station.jobs``; this module only fixes the contract between the two sides.
"""

from __future__ import annotations

from typing import Any, Protocol


class JobError(Exception):
    """A job request that cannot be carried out; ``str()`` says what is wrong and what to do."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code  # bad_request | limit | not_found | conflict | unavailable


class JobControl(Protocol):
    async def submit(self, job: dict[str, Any], client: str) -> dict[str, Any]:
        """Validate (schema and safety limits) and queue a job given as the parsed TOML/JSON
        object of a job file. Returns the job's info dict (``id``, ``state``, ...). Raises
        :class:`JobError` (code ``bad_request`` or ``limit``) and changes nothing when invalid."""
        ...

    async def stop(self, job_id: str, client: str) -> dict[str, Any]:
        """Stop a job (outputs off for its pixels); its data so far is kept."""
        ...

    async def pause(self, job_id: str, client: str) -> dict[str, Any]:
        ...

    async def resume(self, job_id: str, client: str) -> dict[str, Any]:
        ...

    def list(self) -> list[dict[str, Any]]:
        """Every job the store knows, newest first: id, name, kind, state, created, progress."""
        ...

    def get(self, job_id: str) -> dict[str, Any]:
        """One job's info (raises JobError code ``not_found``)."""
        ...

    def status(self) -> dict[str, Any]:
        """The station: id, board (serial, firmware, link up), interlock, running jobs, sinks."""
        ...
