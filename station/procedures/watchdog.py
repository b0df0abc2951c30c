"""The aging watchdog: no run is ever stuck."""

from __future__ import annotations

import logging
import time

from firmware_protocol.messages import Status
from firmware_protocol.spec import Stream

from ..devices import AgingDriver
from ..link import BoardLink
from . import rules
from .aging import AgingCollector
from .rules import BOARD_SILENT_ALERT_S, WATCHDOG_INTERVALS, WATCHDOG_MIN_S, WATCHDOG_RECOVERIES

__all__ = ["BOARD_SILENT_ALERT_S", "WATCHDOG_INTERVALS", "WATCHDOG_MIN_S", "WATCHDOG_RECOVERIES",
           "AgingWatchdog", "watch_aging"]

log = logging.getLogger(__name__)


class AgingWatchdog:
    """No run is ever stuck: the per-run watchdog of :func:`run_aging`.

    Each monitor round compares the board's time (its status) with the newest sample's: a run
    with no sample for ``WATCHDOG_INTERVALS`` intervals of board time and ``WATCHDOG_MIN_S`` of
    host time is stalled. A stalled run raises ``alert/aging_stalled`` and is recovered — the
    records the board holds and the host lacks are fetched again, or, when there are none, the
    channel is re-armed (``aging_set`` restarts its schedule) — at most ``WATCHDOG_RECOVERIES``
    times without a sample in between; then the run ends with reason ``stalled``. A board that
    does not answer for ``BOARD_SILENT_ALERT_S`` raises ``alert/board_not_answering`` (the run
    waits: the board keeps aging and buffering, and the link replays what it missed)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_us = max(interval_s, 0.0) * 1e6
        self.ref_t_us: int | None = None  # board time the watch (re)started, before any sample
        self.ref_mono = time.monotonic()
        self.recoveries = 0
        self.seen_n = -1
        self.last_answer = time.monotonic()
        self.silent_alerted = False

    def rearm(self) -> None:
        """The channel was (re)started or paused: watch afresh."""
        self.ref_t_us = None
        self.ref_mono = time.monotonic()

    def answered(self) -> None:
        self.last_answer = time.monotonic()
        self.silent_alerted = False

    def silent_s(self, now: float) -> float:
        return now - self.last_answer

    def not_answering(self, now: float) -> bool:
        """True once per silence, when it has lasted BOARD_SILENT_ALERT_S."""
        if not rules.silent_alert_due(self.silent_s(now), self.silent_alerted):
            return False
        self.silent_alerted = True
        return True

    def stalled(self, col: AgingCollector, board_t_us: int, now: float) -> tuple[bool, float]:
        """(stalled?, host seconds since the newest sample or the watch's start)."""
        if col.n != self.seen_n:  # a new sample: progress, the recoveries start over
            self.seen_n = col.n
            self.recoveries = 0
        if self.ref_t_us is None:
            self.ref_t_us = board_t_us
        last_t = self.ref_t_us if col.last_t_us is None else max(col.last_t_us, self.ref_t_us)
        last_mono = self.ref_mono if col.last_mono is None else max(col.last_mono, self.ref_mono)
        age_s = now - last_mono
        return rules.is_stalled(board_t_us, last_t, self.interval_us, age_s), age_s


async def watch_aging(link: BoardLink, col: AgingCollector, wd: AgingWatchdog, status: Status,
                      driver: AgingDriver) -> None:
    """One watchdog round of a running channel: recover or end a stalled run."""
    stalled, age_s = wd.stalled(col, int(status.t_us), time.monotonic())
    if not stalled:
        return
    info = {"channel": col.channel, "last_sample_age_s": round(age_s, 3),
            "interval_s": col.params.interval_s}
    if rules.recoveries_spent(wd.recoveries):
        col.alert("aging_stalled", {**info, "action": "ended", "recoveries": wd.recoveries})
        col.stop("stalled", col.last_t_s)
        return
    wd.recoveries += 1
    missing = link.missing_before(Stream.AGING, status.aging_head_seq)
    if rules.recovery(missing) == "fetch":
        what = f"fetching {missing} records the board holds"
        link.note_head(Stream.AGING, status.aging_head_seq)
    else:
        what = "re-armed the channel"
        await driver.rearm()
    log.warning("aging pixel %d: no sample for %.1f s; %s", col.pixel, age_s, what)
    col.alert("aging_stalled", {**info, "action": what, "recovery": wd.recoveries})
    wd.rearm()
