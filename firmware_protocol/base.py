"""Base class of every message: frozen dataclass with array-aware equality."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class BaseMessage:
    MSG_ID: ClassVar[int] = 0
    NAME: ClassVar[str] = ""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                    return False
                if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif isinstance(a, float) and isinstance(b, float):
                if not (a == b or (a != a and b != b)):  # NaN equals NaN for round trips
                    return False
            elif isinstance(a, tuple) and isinstance(b, tuple):
                if len(a) != len(b) or any(
                    not (x == y or (x != x and y != y)) for x, y in zip(a, b, strict=True)
                ):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"type": name, ...fields}``; record blocks become lists of dicts."""
        d: dict[str, Any] = {"type": self.NAME}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                names = v.dtype.names or ()
                d[f.name] = [{n: r[n].item() for n in names} for r in v]
            elif isinstance(v, tuple):
                d[f.name] = list(v)
            else:
                d[f.name] = v
        return d
