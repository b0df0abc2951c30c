"""Fault injection: a spec string parsed into a plan, and the link noise that corrupts bytes.

Spec (``--faults``), comma-separated ``kind=value`` entries; times are VIRTUAL board time, a
number followed by ``s``, ``m`` or ``h``; every kind but ``ber``/``drop`` may appear several
times::

    ber=1e-4               each bit on the wire flips with this probability (both directions)
    drop=1e-4              each byte on the wire is deleted with this probability (both directions)
    disconnect=120s+30s    at t=120 s the link goes away (the socket is closed / the pty is
                           destroyed and its --link symlink removed) for 30 s of virtual time,
                           but at least 0.3 s of wall time; the board keeps running and buffering
    reboot=600s            board reset at t=600 s: new boot_id, reply cache cleared, every output
                           off (aging channels stop, a running sweep is cut), the link drops for
                           >= 0.3 s wall (USB re-enumeration); ring buffers and sequence counters
                           survive unless --reboot-loses-ring
    saturate=pd3           photodiode 3 sees a large stray current (a light leak / damaged
                           detector: 200 µA, which saturates every gain but the lowest); the
                           board's autorange must step down to cope, and dark readings include it
    short=px5@50h          pixel 5 shorts at t=50 h (voltage collapses, light goes dark)
    open=px2@10h           pixel 2 goes open-circuit at t=10 h (no current, no light)
    interlock=300s+10s     the interlock opens at t=300 s for 10 s: every output off within one
                           board tick, event INTERLOCK_OPEN, output commands refused, then
                           event INTERLOCK_CLOSED; aging channels stay stopped (the host restarts)

Example: ``ber=1e-4,drop=1e-4,disconnect=120s+30s,disconnect=2h+1m,reboot=600s,saturate=pd3,
short=px5@50h,open=px2@10h,interlock=300s+10s``.

Randomness (which bits flip, which bytes drop) comes from numpy Generators spawned from the
simulator's ``--seed``, one per direction and purpose, drawn per byte, so a given byte stream is
corrupted identically in every run whatever the chunking.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LINK_MIN_DOWN_WALL_S",
    "SATURATE_STRAY_A",
    "FaultEvent",
    "FaultPlan",
    "FaultSpecError",
    "LinkNoise",
    "parse_duration_us",
    "parse_faults",
]

LINK_MIN_DOWN_WALL_S = 0.3
"""A dropped link (disconnect or reboot) stays down at least this long in wall time."""

SATURATE_STRAY_A = 200e-6
"""Stray photocurrent added by ``saturate=pdN``."""

_KINDS = ("ber", "drop", "disconnect", "reboot", "saturate", "short", "open", "interlock")
_UNITS_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
_TIME_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*([a-zA-Z]*)\s*$")


class FaultSpecError(ValueError):
    """A --faults spec is malformed; the message quotes the bad entry and says what is expected."""


@dataclass(frozen=True, order=True)
class FaultEvent:
    """One timed fault. ``kind`` is disconnect, reboot, short, open or interlock."""

    t_us: int
    kind: str
    duration_us: int = 0
    pixel: int = 0


@dataclass(frozen=True)
class FaultPlan:
    ber: float = 0.0
    drop: float = 0.0
    saturate_pixels: frozenset[int] = frozenset()
    events: tuple[FaultEvent, ...] = ()
    spec: str = ""

    @property
    def empty(self) -> bool:
        return not (self.ber or self.drop or self.saturate_pixels or self.events)

    def pixels(self) -> set[int]:
        """Every pixel the plan names (for validation against a layout)."""
        return set(self.saturate_pixels) | {e.pixel for e in self.events if e.pixel}

    def check_pixels(self, n_pixels: int) -> None:
        bad = sorted(p for p in self.pixels() if not 1 <= p <= n_pixels)
        if bad:
            raise FaultSpecError(f"fault spec {self.spec!r} names pixel(s) {bad}, but the board "
                                 f"has pixels 1..{n_pixels}")


def parse_duration_us(text: str, where: str = "time") -> int:
    """``"50h"`` → microseconds. Units s, m, h; the number may be fractional or in e-notation."""
    raw = text
    m = _TIME_RE.match(text)
    if not m:
        raise FaultSpecError(f"{where}: bad time {raw!r} (a number followed by s, m or h, "
                             "e.g. 120s, 5m, 50h)")
    num_text = text.strip()[: len(text.strip()) - len(m.group(2))]
    unit = m.group(2).lower()
    if unit not in _UNITS_US:
        raise FaultSpecError(f"{where}: time {raw!r} needs a unit s, m or h (e.g. 120s, 5m, 50h)")
    value = float(num_text)
    if not math.isfinite(value) or value < 0:
        raise FaultSpecError(f"{where}: time {raw!r} must be a finite number >= 0")
    return round(value * _UNITS_US[unit])


def _probability(value: str, where: str) -> float:
    try:
        p = float(value)
    except ValueError:
        raise FaultSpecError(f"{where}: expected a probability like 1e-4, got {value!r}") from None
    if not (0.0 <= p < 1.0):
        raise FaultSpecError(f"{where}: probability must be in [0, 1), got {value!r}")
    return p


def _target(value: str, prefix: str, where: str) -> int:
    v = value.strip().lower()
    if not v.startswith(prefix) or not v[len(prefix):].isdigit():
        raise FaultSpecError(f"{where}: expected {prefix}N (e.g. {prefix}3), got {value!r}")
    n = int(v[len(prefix):])
    if n < 1:
        raise FaultSpecError(f"{where}: pixels are numbered from 1, got {value!r}")
    return n


def _split_entry(entry: str) -> tuple[str, str, str]:
    """(kind, value, where) of one ``kind=value`` entry; a clear error when it is not one."""
    key, eq, value = entry.partition("=")
    key = key.strip().lower()
    where = f"fault {entry!r}"
    if not eq or not value.strip():
        raise FaultSpecError(f"{where}: expected kind=value (kinds: {', '.join(_KINDS)})")
    if key not in _KINDS:
        raise FaultSpecError(f"{where}: unknown fault kind {key!r}; known: {', '.join(_KINDS)}")
    return key, value.strip(), where


def _event(key: str, value: str, where: str) -> FaultEvent:
    """The timed event of a short, open, reboot, disconnect or interlock entry."""
    if key in ("short", "open"):
        target, at, when = value.partition("@")
        if not at:
            raise FaultSpecError(f"{where}: expected {key}=pxN@TIME (e.g. {key}=px5@50h)")
        return FaultEvent(parse_duration_us(when, where), key, 0, _target(target, "px", where))
    if key == "reboot":
        return FaultEvent(parse_duration_us(value, where), "reboot")
    # disconnect, interlock: TIME+DURATION
    start, plus, dur = value.partition("+")
    if not plus and key == "interlock":
        raise FaultSpecError(f"{where}: expected interlock=TIME+DURATION (e.g. 300s+10s)")
    d_us = parse_duration_us(dur, where) if plus else 0
    return FaultEvent(parse_duration_us(start, where), key, d_us)


def parse_faults(spec: str | None) -> FaultPlan:
    """Parse a --faults spec (see the module docstring). Empty or None → no faults."""
    if spec is None or not spec.strip():
        return FaultPlan(spec="")
    probabilities: dict[str, float] = {}
    saturate: set[int] = set()
    events: list[FaultEvent] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            raise FaultSpecError(f"fault spec {spec!r}: empty entry (two commas in a row?)")
        key, value, where = _split_entry(entry)
        if key in ("ber", "drop"):
            if key in probabilities:
                raise FaultSpecError(f"{where}: {key} given twice")
            probabilities[key] = _probability(value, where)
        elif key == "saturate":
            saturate.add(_target(value, "pd", where))
        else:
            events.append(_event(key, value, where))
    return FaultPlan(probabilities.get("ber", 0.0), probabilities.get("drop", 0.0), frozenset(saturate),
                     tuple(sorted(events)), spec)


@dataclass
class NoiseCounters:
    bytes_seen: int = 0
    bits_flipped: int = 0
    bytes_dropped: int = 0


@dataclass
class LinkNoise:
    """Bit flips and byte drops for one direction of the link (per byte, reproducible)."""

    ber: float
    drop: float
    seed_seq: np.random.SeedSequence
    counters: NoiseCounters = field(default_factory=NoiseCounters)

    def __post_init__(self) -> None:
        s_flip, s_bit, s_drop = self.seed_seq.spawn(3)
        self._flip = np.random.default_rng(s_flip)
        self._bit = np.random.default_rng(s_bit)
        self._drop = np.random.default_rng(s_drop)
        self._p_byte = -math.expm1(8.0 * math.log1p(-self.ber)) if self.ber > 0 else 0.0

    @property
    def active(self) -> bool:
        return self.ber > 0 or self.drop > 0

    def apply(self, data: bytes) -> bytes:
        """The bytes as they arrive at the far end (some bits flipped, some bytes gone)."""
        if not data or not self.active:
            return data
        self.counters.bytes_seen += len(data)
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        if self._p_byte > 0:
            hit = np.flatnonzero(self._flip.random(len(arr)) < self._p_byte)
            if hit.size:
                # random() rather than integers(): its stream does not depend on the chunking
                bits = np.minimum(self._bit.random(hit.size) * 8, 7).astype(np.uint8)
                arr[hit] ^= np.left_shift(np.uint8(1), bits).astype(np.uint8)
                self.counters.bits_flipped += int(hit.size)
        if self.drop > 0:
            keep = self._drop.random(len(arr)) >= self.drop
            n_drop = int(len(arr) - np.count_nonzero(keep))
            if n_drop:
                arr = arr[keep]
                self.counters.bytes_dropped += n_drop
        return arr.tobytes()
