"""The branch of a J–V–L sweep a point belongs to: ``forward`` (voltage rising) or ``reverse``.

The board marks a reverse point with ``SampleFlags.REVERSE``; the store, the exports, MQTT and
InfluxDB (the ``direction`` tag) carry the value text, ``"forward"`` or ``"reverse"``. A
:class:`SweepDirection` is a ``str``, so it compares equal to, and serialises as, that text.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from firmware_protocol.spec import SampleFlags


class SweepDirection(StrEnum):
    FORWARD = "forward"
    REVERSE = "reverse"

    @classmethod
    def parse(cls, text: str) -> SweepDirection:
        """The direction named ``text``; ValueError naming the allowed values otherwise."""
        try:
            return cls(text)
        except ValueError:
            allowed = " or ".join(repr(d.value) for d in cls)
            raise ValueError(f"direction must be {allowed}, got {text!r}") from None

    @classmethod
    def of_flags(cls, flags: np.ndarray) -> np.ndarray:
        """The direction text of each sweep record from its board flags (a str array)."""
        return np.where(flags & int(SampleFlags.REVERSE), cls.REVERSE.value, cls.FORWARD.value)
