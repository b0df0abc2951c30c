"""What every procedure shares: outputs off on every path, stream sync."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from firmware_protocol.messages import (
    AllOff,
)
from firmware_protocol.spec import Stream

from ..link import BoardError, BoardLink, LinkDown, RequestTimeout


async def all_outputs_off(link: BoardLink) -> None:
    """Best effort: everything off. Used on every path out."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(link.request(AllOff(), wait_up_s=2.0)), 5.0)


async def _safe(link: BoardLink, *msgs: Any) -> None:
    for m in msgs:
        with contextlib.suppress(BoardError, LinkDown, RequestTimeout, TimeoutError):
            await asyncio.wait_for(link.request(m, wait_up_s=5.0), 10.0)


async def sync_stream(link: BoardLink, stream: Stream, head32: int, timeout_s: float = 120.0) -> None:
    """Wait until every record of ``stream`` before the board's ``head32`` has arrived.

    A gap is only visible when a later record arrives; records lost at the very end of a burst
    are declared missing here, and the link's repair loop fetches them.
    """
    link.note_head(stream, head32)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while link.missing_before(stream, head32) > 0:
        if loop.time() > deadline:
            raise RequestTimeout(f"{link.missing_before(stream, head32)} {stream.name} records "
                                 f"before {head32} did not arrive within {timeout_s:g} s")
        await asyncio.sleep(0.02)
