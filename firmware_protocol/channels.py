"""Aging channel sets of any size (up to 1024 channels).

Channel and pixel numbers are u16 on the wire (protocol version 2), and
``capabilities.n_aging_channels`` is a u16. ``status.aging_active_mask`` (u32) names channels
0..31 only; boards with more channels also send the extension field ``status.aging_active``, a
bitmask of ``ceil(n / 8)`` bytes (bit k % 8 of byte k // 8 is channel k; at most 128 bytes, so
1024 channels). These helpers read and write both, so a host works with a 32-channel board and
a 256- or 1024-channel one alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from firmware_protocol.spec import MESSAGES_BY_NAME

MAX_AGING_CHANNELS = 8 * next(f.max_len for f in MESSAGES_BY_NAME["status"].fields
                              if f.name == "aging_active")
"""The most channels a status can name (1024): channel numbers are u16 on the wire."""


def aging_channel_count(caps: Any) -> int:
    """The board's number of aging channels (``capabilities``)."""
    return int(caps.n_aging_channels)


def active_channels(status: Any) -> frozenset[int]:
    """The running aging channels of a ``status`` message."""
    bits = getattr(status, "aging_active", ())
    if bits:
        return frozenset(8 * i + b for i, byte in enumerate(bits) for b in range(8)
                         if byte >> b & 1)
    mask = int(status.aging_active_mask)
    return frozenset(k for k in range(32) if mask >> k & 1)


def channel_active(status: Any, channel: int) -> bool:
    return channel in active_channels(status)


def channel_set_fields(channels: Iterable[int], n_channels: int) -> dict[str, Any]:
    """``aging_active_mask`` and ``aging_active`` of a status for the running ``channels`` of a
    board with ``n_channels`` (the byte field only when it has more than 32)."""
    chans = sorted(set(channels))
    if chans and not 0 <= chans[0] <= chans[-1] < n_channels <= MAX_AGING_CHANNELS:
        raise ValueError(f"channels {chans} not all in 0..{n_channels - 1}")
    mask = sum(1 << k for k in chans if k < 32)
    if n_channels <= 32:
        return {"aging_active_mask": mask, "aging_active": ()}
    out = bytearray((n_channels + 7) // 8)
    for k in chans:
        out[k // 8] |= 1 << (k % 8)
    return {"aging_active_mask": mask, "aging_active": tuple(out)}


__all__ = ["MAX_AGING_CHANNELS", "active_channels", "aging_channel_count", "channel_active",
           "channel_set_fields"]
