"""Open a station: store, board link, acquisition — and close it safely on every path.

``async with open_station(config) as ctx:`` connects to the board, resumes every stream where
the store left off, and on the way out (normal exit, exception, Ctrl-C, SIGTERM) switches every
output off, flushes the store and closes the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from .acquisition import Acquisition
from .analysis.photometry import load_reference_tables
from .config import StationConfig
from .link import BoardLink, serial_url
from .procedures import StationContext, all_outputs_off
from .sinks.cursor import publish_event
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.asynccontextmanager
async def open_station(config: StationConfig, *, url: str | None = None,
                       connect_timeout_s: float | None = 15.0,
                       prepare: Callable[[StationContext], None] | None = None,
                       wait_for_board: bool = True) -> AsyncIterator[StationContext]:
    """``prepare(ctx)`` runs before the link starts, so that records the board replays at once
    (a restart after a crash) already find the procedures that own them. With
    ``wait_for_board=False`` the context is yielded at once, whether or not a board answers
    (the daemon: its control plane runs while the board is unplugged; ``ctx.link.describe()``
    says why the link is down, and requests wait for it).

    With a ``connect_timeout_s`` (a one-shot command) a board that cannot be reached by retrying
    (connection refused, no such device) fails at once; without one (the daemon) the link keeps
    retrying."""
    b = config.board
    serial_url(url or b.url)  # a malformed URL fails before the store is created
    store = Store(config.store.path)
    link = BoardLink(url or b.url, baudrate=b.baudrate, timeout_s=b.request_timeout_s,
                     max_attempts=b.max_attempts, reconnect_min_s=b.reconnect_min_s,
                     reconnect_max_s=b.reconnect_max_s, watchdog_s=b.watchdog_s,
                     watchdog_policy=b.watchdog_policy)
    acq = Acquisition(link, store, batch_ms=config.store.batch_ms)
    acq.resume_from_store()

    def lost(info: dict[str, Any]) -> None:
        # as data, once: the MQTT sink publishes it as event/alert/records_lost
        publish_event(store, "alert/records_lost", info)
        if acq.on_commit is not None:
            acq.on_commit()

    acq.lost_listeners.append(lost)
    ctx = StationContext(config=config, link=link, store=store, acq=acq)
    # colour-science's import takes ~1.5 s, scipy.optimize's (the lifetime fits an aging run
    # makes live) a few hundred ms: done in a thread while the link comes up, not on the event
    # loop when the first spectrum or the first minute of samples arrives
    tables = asyncio.ensure_future(asyncio.to_thread(_load_heavy_modules))
    try:
        if prepare is not None:
            prepare(ctx)
        await link.start(connect_timeout_s, wait=wait_for_board,
                         fail_fast=wait_for_board and connect_timeout_s is not None)
        await tables
    except BaseException:
        with contextlib.suppress(BaseException):
            await asyncio.shield(tables)
        store.close()
        raise
    acq.start()
    try:
        yield ctx
    finally:
        if link.is_up:
            await all_outputs_off(link)
        await acq.stop()
        await link.close()
        store.close()


def _load_heavy_modules() -> None:
    load_reference_tables()
    import scipy.optimize  # noqa: F401


def run_with_signals(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` under asyncio; SIGTERM and SIGINT cancel it so its cleanup runs."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await main()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(runner())
