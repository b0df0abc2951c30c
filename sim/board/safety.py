"""Outputs off on every path: ``all_off``, the interlock, the host-silence watchdog, a reset,
a pixel failure."""

from __future__ import annotations

from firmware_protocol.messages import (
    SweepDone,
)
from firmware_protocol.spec import (
    EventCode,
    Fault,
    Stream,
    SweepEnd,
    WatchdogPolicy,
)
from sim.board.state import NO_SEQ, LinkAction
from sim.board.sweep import SweepEngine
from sim.hardware import (
    SEQ_MASK,
)
from sim.physics import FailureMode


class Safety(SweepEngine):
    """Interlock, watchdog, reboot, injected failures; every output off."""

    def _smu_off(self, sweep_reason: SweepEnd) -> None:
        if self.sweep is not None:
            self._end_sweep(sweep_reason)
        self.smu.output_on = False
        self.mux = 0

    def _outputs_off(self, cause: str) -> None:
        self._smu_off(SweepEnd.INTERLOCK if cause == "interlock" else SweepEnd.ABORTED)
        for ch in list(self.channels):
            if ch is not None:
                self._stop_channel(ch, cause)

    def inject_failure(self, pixel: int, mode: FailureMode) -> None:
        """Force pixel ``pixel`` shorted or open from now on (and act on it at once)."""
        px = self.pixels[pixel - 1]
        px.forced = mode
        for ch in self.channels:
            if ch is not None and ch.pixel is px:
                self._stop_channel(ch, "short" if mode == FailureMode.SHORT else "open")
        if self.sweep is not None and self.sweep.pixel is px:
            self.sweep.compute(self.sweep.k)

    def set_interlock(self, open_: bool) -> None:
        """Open or close the interlock at the present board time."""
        if open_ == self.interlock_open:
            return
        self.interlock_open = open_
        if open_:
            self._event(EventCode.INTERLOCK_OPEN, detail="interlock open: all outputs off")
            self._outputs_off(cause="interlock")
        else:
            self._event(EventCode.INTERLOCK_CLOSED, detail="interlock closed")

    def reboot(self, drop_link: bool = True) -> None:
        """Board reset: new boot_id, reply cache cleared, every output off (see module docstring)."""
        self.counters.reboots += 1
        if self.sweep is not None:
            sw = self.sweep
            self.sweep = None
            self._sweep_buf.clear()
            self.pixels[sw.pixel.number - 1].dose_ref_h += sw.dose_h()
            if not self.reboot_loses_ring:
                self._boot_notices.append(SweepDone(
                    sweep_id=sw.sweep_id, n_points=sw.n_emitted, reason=int(SweepEnd.REBOOT),
                    last_seq=NO_SEQ if sw.last_seq is None else sw.last_seq & SEQ_MASK))
        for ch in self.channels:
            if ch is not None:
                ch.sync(self.t_us)
        self._reset_state()
        self.endpoint.reset()
        self.discard_frames([f for f, _ in self._frames])
        self._frames.clear()
        self.boot_id = self._new_boot_id(self.boot_id)
        if self.reboot_loses_ring:
            done = self.counters.epoch_produced
            self.counters.epoch_produced.append({
                s: self.counters.produced[s] - sum(e[s] for e in done) for s in Stream})
            self._new_rings(0)
            self._boot_notices.clear()
            self.clock_base_us = self.t_us  # the timer lived in the same retained RAM
        if drop_link:
            self.link_actions.append(LinkAction("reboot", 0, 0.3))

    def check_watchdog(self, wall_s: float) -> None:
        """Called by the server every iteration with the wall clock (host silence is wall time)."""
        self._wall_now = wall_s
        if self.watchdog_timeout_ms <= 0 or self._wd_fired:
            return
        if (wall_s - self._last_heard_wall) * 1000.0 < self.watchdog_timeout_ms:
            return
        self._wd_fired = True
        self.counters.watchdog_expiries += 1
        self._latched |= Fault.WATCHDOG_EXPIRED
        policy = self.watchdog_policy
        self._event(EventCode.WATCHDOG_EXPIRED, value=float(self.watchdog_timeout_ms),
                    detail=f"host silent > {self.watchdog_timeout_ms} ms: {policy.name}")
        if policy == WatchdogPolicy.GO_SAFE:
            self._outputs_off(cause="watchdog")
        else:
            self._smu_off(SweepEnd.ABORTED)

