"""The one place that guarantees "outputs off on every path" (a plan/engine split after Bluesky's).

A procedure (the plan) says what it measures; :func:`guarded` (the engine) runs it and, on
every path out — completion, an exception, Ctrl-C, a cancelled task — stops its helper tasks,
aborts what only a failure aborts, switches its outputs off (each best effort: one failing never
keeps the next from being tried) and then lets the procedure record how it ended. As before
the split, the cleanup itself is not shielded from a further cancellation; only
:func:`all_outputs_off` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..devices import all_outputs_off, sync_stream

__all__ = ["Exit", "Guard", "Output", "all_outputs_off", "guarded", "stop_task", "sync_stream"]


class Exit(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"  # an exception
    CANCELLED = "cancelled"  # the task was cancelled (a job stopped, Ctrl-C, SIGTERM)


class Output(Protocol):
    """Anything the board can switch off (a device of :mod:`station.devices`)."""

    async def off(self, *, best_effort: bool = False) -> None: ...


@dataclass
class Guard:
    """How the guarded block ended (FAILED until it completes)."""

    exit: Exit = Exit.FAILED

    @property
    def completed(self) -> bool:
        return self.exit is Exit.COMPLETED


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a helper task and wait for it, whatever it ends with."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


@asynccontextmanager
async def guarded(*, off: Sequence[Output], off_unless_completed: Sequence[Output] = (),
                  on_cancel: Callable[[], None] | None = None,
                  before: Callable[[], Awaitable[None]] | None = None,
                  after: Callable[[Guard], Awaitable[None]] | None = None) -> AsyncIterator[Guard]:
    """Run the block; ``on_cancel`` is called the moment it is cancelled (to note why, before
    anything else happens). On every path out, in this order: ``before`` (stop the block's helpers),
    ``off_unless_completed`` switched off unless the block completed (a sweep program aborted),
    every one of ``off`` switched off, then ``after`` (the procedure's records of the end)."""
    guard = Guard()
    try:
        yield guard
        guard.exit = Exit.COMPLETED
    except asyncio.CancelledError:
        guard.exit = Exit.CANCELLED
        if on_cancel is not None:
            on_cancel()
        raise
    finally:
        if before is not None:
            await before()
        if not guard.completed:
            for out in off_unless_completed:
                await out.off(best_effort=True)
        for out in off:
            await out.off(best_effort=True)
        if after is not None:
            await after(guard)
