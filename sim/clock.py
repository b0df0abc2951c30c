"""The simulator's virtual clock: board time runs ``speed`` times faster than the wall clock.

Board time ``t_us`` (what ``pong``, ``status``, every sample and every event carry) is::

    t_us = start_us + speed × (monotonic wall seconds since the clock started) × 1e6

The emulator is event-driven: each iteration of the server loop (every ~2 ms of wall time) reads
the virtual now and the board produces everything due since its last iteration in bulk
(vectorised), so ``speed=1e6`` covers 1,000 virtual hours in a few wall seconds. Integration
and dwell times cost *virtual* time (a 100 ms integration takes 0.1 µs of wall time at
``speed=1e6``).

If the computer cannot keep up (too many samples per wall second), the board processes as much
as its per-iteration budget allows and the clock *slips* (:meth:`VirtualClock.slip_to`):
virtual time slows down instead of the board skipping work, and board time never jumps or
runs backwards.

Two things deliberately run on the WALL clock, not on this one: the host watchdog (a host
talks in wall time: at ``speed=1e6`` one wall millisecond between two host frames is 1,000
virtual seconds, so a virtual-time watchdog would trip between any two frames) and the
unsolicited ``status`` message (once per wall second).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["VirtualClock"]


class VirtualClock:
    """Monotonic virtual microseconds, ``speed`` × the wall clock, starting at ``start_us``.

    ``wall`` is the wall-clock source (seconds, monotonic); tests of the clock itself may pass
    their own, everything else uses :func:`time.monotonic`.
    """

    def __init__(self, speed: float = 1.0, *, start_us: int = 0,
                 wall: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive finite number, got {speed!r}")
        if start_us < 0:
            raise ValueError("start_us must be >= 0")
        self._speed = float(speed)
        self._wall = wall
        self._wall0 = wall()
        self._start_us = int(start_us)
        self._last_us = int(start_us)
        self.slipped_us = 0
        """Total virtual time given up because the board could not keep up."""

    @property
    def speed(self) -> float:
        return self._speed

    def wall(self) -> float:
        """The wall clock (monotonic seconds) this clock is derived from."""
        return self._wall()

    def now_us(self) -> int:
        """Virtual now in integer microseconds; never decreases (except through :meth:`slip_to`)."""
        t = self._start_us + int((self._wall() - self._wall0) * self._speed * 1e6)
        if t < self._last_us:
            t = self._last_us
        self._last_us = t
        return t

    def wall_s_for(self, virtual_us: float) -> float:
        """Wall seconds that ``virtual_us`` of board time take at this speed."""
        return max(0.0, virtual_us) / (self._speed * 1e6)

    def slip_to(self, t_us: int) -> None:
        """Hold virtual time back to ``t_us``: from now on the clock continues from there.

        Used when the board could only process up to ``t_us`` of the time the clock had
        reached: the board's time is the truth, and the clock follows it at the same speed.
        This is the one way virtual time is held back (the board never saw the later values).
        """
        if t_us < 0:
            raise ValueError("cannot slip to a negative time")
        now = self.now_us()
        if t_us >= now:
            return
        self.slipped_us += now - int(t_us)
        self._start_us -= now - int(t_us)
        self._last_us = int(t_us)
