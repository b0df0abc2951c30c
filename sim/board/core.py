"""The board: its main loop (everything due, in time order) and the fault plan."""

from __future__ import annotations

import math

from sim.board.handlers import Handlers
from sim.board.state import MAX_SAMPLES_PER_ADVANCE, LinkAction
from sim.faults import FaultEvent
from sim.physics import FailureMode


class Board(Handlers):
    """The simulated board (see :mod:`sim.board` for its behaviour)."""

    def advance(self, target_us: int) -> int:
        """Do everything due up to ``target_us``; returns the board time reached.

        Stops short of the target when the work budget (:data:`MAX_SAMPLES_PER_ADVANCE`) is
        spent or a link action (disconnect, reboot) must be carried out first.
        """
        target = self._cap_target(max(int(target_us), self.t_us))
        while True:
            t_next, kind = self._next_event(target)
            self._run_aging(t_next, inclusive=kind is None)
            self.t_us = t_next
            if kind is None:
                break
            self._dispatch(kind)
            if self.link_actions:
                break
        self._flush_sweep()
        return self.t_us

    def _cap_target(self, target: int) -> int:
        total = 0
        for ch in self.channels:
            if ch is not None and ch.next_t <= target:
                total += (target - ch.next_t) // ch.interval_us + 1
        if total <= MAX_SAMPLES_PER_ADVANCE:
            return target
        self.counters.steps_capped += 1
        span = target - self.t_us
        return self.t_us + max(1, int(span * MAX_SAMPLES_PER_ADVANCE / total))

    def _next_event(self, target: int) -> tuple[int, str | None]:
        best, kind = target, None
        cands: list[tuple[float, str]] = []
        if self._fault_events:
            cands.append((self._fault_events[0].t_us, "fault"))
        if self._interlock_close_at < math.inf:
            cands.append((self._interlock_close_at, "ilock_close"))
        for ch in self.channels:
            if ch is not None and ch.stop_t < math.inf:
                cands.append((ch.stop_t, "chan_stop"))
        if self.sweep is not None:
            cands.append((self.sweep.next_t, "sweep"))
        if self._running is not None:
            cands.append((self._running.done_us, "cmd"))
        elif self._queue:
            cands.append((max(self._queue[0][1], self._busy_until), "cmd"))
        for t, k in cands:  # ties keep this order: faults, interlock, channels, sweep, commands
            ti = max(math.ceil(t), self.t_us)
            if ti <= best and (kind is None or ti < best):
                best, kind = ti, k
        return best, kind

    def _dispatch(self, kind: str) -> None:
        t = self.t_us
        if kind == "fault":
            self._apply_fault(self._fault_events.popleft())
        elif kind == "ilock_close":
            self._interlock_close_at = math.inf
            self.set_interlock(False)
        elif kind == "chan_stop":
            for ch in list(self.channels):
                if ch is not None and ch.stop_t <= t:
                    self._stop_channel(ch, ch.stop_cause)
        elif kind == "sweep":
            self._sweep_step()
        elif kind == "cmd":
            self._cmd_step()

    def _apply_fault(self, ev: FaultEvent) -> None:
        if ev.kind in ("short", "open"):
            self.inject_failure(ev.pixel, FailureMode.SHORT if ev.kind == "short" else FailureMode.OPEN)
        elif ev.kind == "interlock":
            self._interlock_close_at = max(
                self._interlock_close_at if self._interlock_close_at < math.inf else 0,
                self.t_us + max(ev.duration_us, self.cfg.board_tick_us))
            self.set_interlock(True)
        elif ev.kind == "reboot":
            self.reboot(drop_link=True)
        elif ev.kind == "disconnect":
            self.link_actions.append(LinkAction("disconnect", ev.duration_us, 0.3))
