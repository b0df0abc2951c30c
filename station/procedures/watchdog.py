"""The aging watchdog: no run is ever stuck."""

from __future__ import annotations

import logging
import time

from firmware_protocol.messages import (
    AgingSet,
    AgingStart,
    Status,
)
from firmware_protocol.spec import Stream

from .aging import AgingCollector
from .context import StationContext

log = logging.getLogger(__name__)

WATCHDOG_INTERVALS = 3.0
"""An aging run is stalled when no sample came for this many intervals of board time..."""
WATCHDOG_MIN_S = 5.0
"""... and for at least this long on the host's clock (samples reach the host in batches, and a
fast simulator's board time races ahead of the host's)."""
WATCHDOG_RECOVERIES = 2
"""Recoveries (replay, re-arm) tried on a stalled run before it is ended with reason 'stalled'."""
BOARD_SILENT_ALERT_S = 30.0
"""The board not answering a run's status requests for this long raises board_not_answering."""


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
        if self.silent_alerted or self.silent_s(now) < BOARD_SILENT_ALERT_S:
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
        late = board_t_us - last_t > WATCHDOG_INTERVALS * self.interval_us
        return late and age_s > WATCHDOG_MIN_S, age_s


async def _watch_aging(ctx: StationContext, col: AgingCollector, wd: AgingWatchdog, status: Status,
                       start_msg: AgingStart) -> None:
    """One watchdog round of a running channel: recover or end a stalled run."""
    stalled, age_s = wd.stalled(col, int(status.t_us), time.monotonic())
    if not stalled:
        return
    link = ctx.link
    info = {"channel": col.channel, "last_sample_age_s": round(age_s, 3),
            "interval_s": col.params.interval_s}
    if wd.recoveries >= WATCHDOG_RECOVERIES:
        col._alert("aging_stalled", {**info, "action": "ended", "recoveries": wd.recoveries})
        col._stop("stalled", col.last_t_s)
        return
    wd.recoveries += 1
    missing = link.missing_before(Stream.AGING, status.aging_head_seq)
    if missing > 0:
        action = f"fetching {missing} records the board holds"
        link.note_head(Stream.AGING, status.aging_head_seq)
    else:
        action = "re-armed the channel"
        await link.request(AgingSet(channel=col.channel, current_a=start_msg.current_a,
                                    interval_ms=start_msg.interval_ms))
    log.warning("aging pixel %d: no sample for %.1f s; %s", col.pixel, age_s, action)
    col._alert("aging_stalled", {**info, "action": action, "recovery": wd.recoveries})
    wd.rearm()
