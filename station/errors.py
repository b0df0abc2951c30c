"""Errors shared by the station's layers."""

from __future__ import annotations


class LimitError(ValueError):
    """A request that would break the station's safety limits; nothing was sent."""
