"""A constant-current aging run, safe on every path out.

:func:`run_aging` reads as the run it performs: find the operating point (a current density,
or the current for an initial luminance) and the dark current, switch the channel on with its
spectrum at t = 0, then monitor it — a round every 0.5 s: take in the spectrum, pause or
restart the channel, watch for a stall, take the next spectrum or interim sweep when due —
until a stop rule (:mod:`.rules`) ends it; then the final analysis. The monitor is the plan;
:func:`.engine.guarded` switches the channel off on every path out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from firmware_protocol.channels import aging_channel_count, channel_active
from firmware_protocol.messages import Status
from firmware_protocol.spec import Stream

from ..analysis.photometry import Calibration
from ..config import PixelConfig
from ..devices import AgingDriver
from ..errors import LimitError
from ..link import BoardError, LinkDown, RequestTimeout
from ..params import AgingParams, SweepParams
from . import rules
from .aging import AgingCollector, AgingOutcome, finalize_aging
from .calibration import calibration_for
from .context import StationContext
from .engine import Exit, Guard, guarded, stop_task
from .rules import MA_CM2_PER_A_M2
from .search import find_current_for_luminance
from .spectra import SpectrumResult, acquire_spectrum
from .sweep import run_sweep
from .watchdog import AgingWatchdog, watch_aging

log = logging.getLogger(__name__)


ROUND_S = 0.5
"""The monitor's round: the board's status, the watchdog, what is due."""
DARK_N = 16
DARK_INTEGRATION_MS = 20.0


def aging_current_a(ctx: StationContext, pixel: PixelConfig, j_ma_cm2: float) -> float:
    """The current (A) for ``j_ma_cm2`` on ``pixel``; raises LimitError naming the limit."""
    caps = ctx.link.caps
    return rules.aging_current_a(
        j_ma_cm2, pixel.area_mm2, max_j_ma_cm2=ctx.config.limits.max_aging_current_density_ma_cm2,
        driver_max_a=caps.max_aging_current_a if caps is not None else None)


@dataclass
class OperatingPoint:
    """What the aging driver holds the pixel at."""

    channel: int
    current_a: float
    current_density_ma_cm2: float
    compliance_v: float
    search_luminance_cd_m2: float | None = None


def _channel(ctx: StationContext, pixel_no: int, params: AgingParams) -> int:
    caps = ctx.link.caps
    channel = params.channel if params.channel is not None else pixel_no - 1
    if caps is not None and not 0 <= channel < aging_channel_count(caps):
        raise LimitError(f"aging channel {channel} does not exist (board has "
                         f"{aging_channel_count(caps)})")
    return channel


async def _operating_point(ctx: StationContext, pixel_no: int, pixel: PixelConfig,
                           params: AgingParams, cal: Calibration) -> OperatingPoint:
    """A new run's channel, current (from its current density, or searched for its initial
    luminance) and compliance; raises LimitError naming a limit it would break."""
    area = pixel.area_mm2 * 1e-6
    if params.stop_level() is None:
        params.duration_h()  # validates
    caps = ctx.link.caps
    channel = _channel(ctx, pixel_no, params)
    target_l: float | None = None
    if params.current_density_ma_cm2 is not None:
        current_a = aging_current_a(ctx, pixel, params.current_density_ma_cm2)
    elif params.initial_luminance_cd_m2 is not None:
        current_a, target_l = await find_current_for_luminance(
            ctx, pixel_no, pixel, params.initial_luminance_cd_m2, cal)
        aging_current_a(ctx, pixel, current_a / (area / MA_CM2_PER_A_M2))  # limit check
    else:
        raise LimitError("aging needs a current density or an initial luminance")
    compliance_v = params.compliance_v or (caps.aging_compliance_v if caps
                                           else ctx.config.limits.max_voltage_v)
    compliance_v = min(compliance_v, ctx.config.limits.max_voltage_v)
    return OperatingPoint(channel, current_a, current_a / area * MA_CM2_PER_A_M2, compliance_v,
                          target_l)


async def _new_run(ctx: StationContext, pixel_no: int, params: AgingParams, job_id: str | None,
                   progress: Callable[[float, dict[str, float]], None] | None,
                   on_alert: Callable[[str, dict[str, Any]], None] | None,
                   ) -> tuple[AgingCollector, OperatingPoint]:
    """The run's operating point and dark current, its row in the store and its collector."""
    store, board = ctx.store, ctx.board
    sub, pixel = ctx.pixel(pixel_no)
    area = pixel.area_mm2 * 1e-6
    cal = calibration_for(ctx.config, area)
    op = await _operating_point(ctx, pixel_no, pixel, params, cal)
    async with ctx.instrument_lock:  # the dark current, with the pixel off
        dark = await board.pd.read(pixel_no, n=DARK_N, integration_ms=DARK_INTEGRATION_MS)
    run_params = asdict(params) | {
        "current_a": op.current_a, "current_density_ma_cm2": op.current_density_ma_cm2,
        "channel": op.channel, "compliance_v": op.compliance_v,
        "search_luminance_cd_m2": op.search_luminance_cd_m2, "dark_a": dark.mean_a,
        "spectrometer": ctx.spectrometer_info()}
    run_id = store.create_run(
        kind="aging", station=ctx.config.station.id, pixel=pixel_no, area_m2=area,
        substrate=sub.id if sub else None, label=pixel.label, device=pixel.device,
        job_id=job_id, params=run_params, calibration=cal.to_dict(), channel=op.channel,
        board_serial=ctx.link.board.serial_number if ctx.link.board else None)
    col = AgingCollector(ctx, run_id, op.channel, cal, dark.mean_a, params, progress)
    col.pixel = pixel_no
    col.on_alert = on_alert
    ctx.acq.aging[op.channel] = col
    return col, op


def _resumed_run(ctx: StationContext, col: AgingCollector,
                 progress: Callable[[float, dict[str, float]], None] | None,
                 on_alert: Callable[[str, dict[str, Any]], None] | None,
                 ) -> tuple[OperatingPoint, str]:
    """A run rebuilt from the store: its operating point as stored, and its status."""
    run = ctx.store.run(col.run_id)
    rp = run["params"]
    col.progress = progress
    col.on_alert = on_alert
    op = OperatingPoint(rp["channel"], rp["current_a"], rp["current_density_ma_cm2"],
                        rp["compliance_v"])
    return op, str(run["status"])


class _AgingMonitor:
    """The plan of one aging run: the channel on, then a round every ``ROUND_S`` until a stop."""

    def __init__(self, ctx: StationContext, col: AgingCollector, params: AgingParams,
                 pixel_no: int, driver: AgingDriver, job_id: str | None,
                 running: asyncio.Event | None) -> None:
        self.ctx, self.col, self.params, self.pixel_no = ctx, col, params, pixel_no
        self.driver, self.job_id, self.running = driver, job_id, running
        t_h0 = col.last_t_s / 3600.0
        self.next_spectrum_h = t_h0 + params.spectrum_every_h if col.spectra else 0.0
        self.next_sweep_h = ((t_h0 + params.interim_sweep_every_h) if params.interim_sweep_every_h
                             else None)
        self.paused = False
        self.wd = AgingWatchdog(params.interval_s)
        self.spec_task: asyncio.Task[SpectrumResult] | None = None
        self.low_signal_alerted = False
        self.stop_reason: str | None = None
        """The stop rule that ended the run, as the monitor saw it end."""
        self.cancel_reason = "cancelled"

    # -- the plan ---------------------------------------------------------------------------------

    async def switch_on(self, resumed_status: str | None) -> None:
        """A new run: the channel on and its spectrum at switch-on, taken beside the monitor (at
        1x it lasts seconds, and a queue of pixels waiting for the spectrometer must not stop
        the watchdog). A resumed run: marked running again (the monitor restarts its channel)."""
        if resumed_status is None:
            await self.driver.start()
            self.spec_task = self._start_spectrum(first=True)
            self.next_spectrum_h = math.inf
        elif resumed_status != "running":
            self.ctx.store.update_run(self.col.run_id, status="running", end_reason=None,
                                      ended_at=None)

    async def monitor(self) -> None:
        """Rounds until a stop rule ends the run, then its spectrum if it has none yet."""
        col = self.col
        while not col.stopped.is_set():
            await self._wait_round()
            if col.stopped.is_set():
                break
            t_h = col.last_t_s / 3600.0
            self._take_in_spectrum(t_h)
            try:
                if await self._round(t_h):
                    break
            except (LinkDown, RequestTimeout) as e:
                log.info("aging monitor: %s (the board keeps aging; waiting)", e)
            except BoardError as e:
                log.warning("aging monitor: %s", e)
        await self._last_spectrum()
        self.stop_reason = col.stop_reason

    # -- one round ----------------------------------------------------------------------------------

    async def _wait_round(self) -> None:
        """A round every ROUND_S, and at once when the run stops or the spectrum is in."""
        stop_wait = asyncio.ensure_future(self.col.stopped.wait())
        try:
            await asyncio.wait({stop_wait, *([self.spec_task] if self.spec_task else [])},
                               timeout=ROUND_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()

    async def _round(self, t_h: float) -> bool:
        """One round; True when the run stopped."""
        if self.running is not None and not self.running.is_set():
            await self._pause()
            return False
        status = await self._status()
        active = channel_active(status, self.driver.channel)
        if rules.restart_due(active, bool(status.interlock_closed), self.col.stop_reason):
            await self._restart()
            return False
        if not active:
            return False
        await watch_aging(self.ctx.link, self.col, self.wd, status, self.driver)
        if self.col.stopped.is_set():
            return True
        if t_h >= self.next_spectrum_h and self.spec_task is None:
            self.spec_task = self._start_spectrum(first=False)
            self.next_spectrum_h = math.inf
        if self.next_sweep_h is not None and t_h >= self.next_sweep_h:
            await self._interim_sweep(t_h)
        return False

    async def _status(self) -> Status:
        try:
            status = await self.ctx.board.status()
        except RequestTimeout:
            if self.wd.not_answering(time.monotonic()):
                self.col.alert("board_not_answering", {
                    "channel": self.driver.channel, "since_s": self.wd.silent_s(time.monotonic()),
                    "action": "asking again (the board keeps aging and buffering)"})
            raise
        self.wd.answered()
        return status

    async def _pause(self) -> None:
        """Paused (``running`` clear): the channel off until it is set again."""
        if not self.paused:
            await self.driver.off()
            self.paused = True
            self.ctx.store.update_run(self.col.run_id, status="paused")
        self.wd.rearm()

    async def _restart(self) -> None:
        """The channel was stopped by the board (interlock, reboot, restart) or paused: on again."""
        if not self.paused:
            log.warning("aging channel %d was stopped by the board (interlock, reboot,"
                        " restart); restarting it", self.driver.channel)
        await self.driver.start()
        if self.paused:
            self.ctx.store.update_run(self.col.run_id, status="running")
        self.paused = False
        self.col.paused_flag = False
        self.wd.rearm()

    async def _interim_sweep(self, t_h: float) -> None:
        """A sweep of the aging pixel, its channel off meanwhile and on again after."""
        if self.spec_task is not None:
            with contextlib.suppress(Exception):
                await self.spec_task
        await self.driver.off()
        try:
            await run_sweep(self.ctx, self.pixel_no, self.params.interim_sweep or SweepParams(),
                            job_id=self.job_id)
        finally:
            await self.driver.start()
            self.wd.rearm()
        self.next_sweep_h = t_h + (self.params.interim_sweep_every_h or math.inf)

    # -- spectra ------------------------------------------------------------------------------------

    def _start_spectrum(self, first: bool) -> asyncio.Task[SpectrumResult]:
        ctx, col, pixel_no = self.ctx, self.col, self.pixel_no

        async def take() -> SpectrumResult:
            async with ctx.instrument_lock:
                if first:  # the spectrum at switch-on is the run's t = 0 spectrum
                    return await acquire_spectrum(ctx, pixel_no, t_s=0.0)
                return await acquire_spectrum(ctx, pixel_no, t_s=0.0, t0_us=col.t0_us)
        return asyncio.create_task(take(), name=f"spectrum-pixel-{pixel_no}")

    def _take_in_spectrum(self, t_h: float) -> None:
        """The spectrum taken beside the monitor, once it is in: the run's photometry uses it."""
        if self.spec_task is None or not self.spec_task.done():
            return
        done, self.spec_task = self.spec_task, None
        try:
            res: SpectrumResult | None = done.result()
        except (LinkDown, RequestTimeout, BoardError, TimeoutError) as e:
            log.info("aging pixel %d: spectrum not taken (%s); trying again", self.pixel_no, e)
            res = None
        usable = res is not None and res.spectrum is not None
        if res is not None and res.spectrum is not None:
            if not self.col.spectra:  # what came before it is routed before it
                self.ctx.acq.flush()
            self.col.add_spectrum(res.spectrum)
        self.next_spectrum_h = rules.next_spectrum_h(
            t_h, usable=usable, has_spectra=bool(self.col.spectra),
            every_h=self.params.spectrum_every_h, interval_s=self.params.interval_s)
        if res is not None and res.low_signal and not self.low_signal_alerted:
            self.low_signal_alerted = True
            self.col.alert("spectrum_low_signal", {
                "integration_ms": res.msg.integration_ms, "usable": res.spectrum is not None,
                "t_h": t_h})

    async def _last_spectrum(self) -> None:
        """The run ended before it had a spectrum (a short run, pixels queued at the
        spectrometer, a resumed run): its samples need one, taken while the channel is on."""
        col = self.col
        if self.spec_task is None and not col.spectra and rules.still_lit(col.stop_reason):
            self.spec_task = self._start_spectrum(first=col.t0_us is None)
        if self.spec_task is not None and not col.spectra:
            with contextlib.suppress(LinkDown, RequestTimeout, BoardError, TimeoutError):
                res = await self.spec_task
                if res.spectrum is not None:
                    self.ctx.acq.flush()
                    col.add_spectrum(res.spectrum)
            self.spec_task = None

    # -- the way out ----------------------------------------------------------------------------------

    def cancelled(self) -> None:
        """The daemon stopping (SIGTERM) interrupts the run, which its next start resumes;
        anything else cancelling it (a job stopped, Ctrl-C of `station age`) ends it."""
        self.cancel_reason = "interrupted" if self.ctx.shutting_down else "cancelled"

    def end_reason(self, guard: Guard) -> str:
        return rules.aging_end_reason(completed=guard.completed,
                                      cancelled=guard.exit is Exit.CANCELLED,
                                      shutting_down=self.cancel_reason == "interrupted",
                                      stop_reason=self.stop_reason)

    async def stop_helpers(self) -> None:
        await stop_task(self.spec_task)

    async def ended(self, guard: Guard) -> None:
        """Once the channel is off: every record of the run in (best effort), its collector
        released, and a run that did not complete recorded as such."""
        ctx, col = self.ctx, self.col
        with contextlib.suppress(Exception):
            status = await asyncio.wait_for(ctx.board.status(wait_up_s=5.0), 10.0)
            await ctx.board.sync(Stream.AGING, status.aging_head_seq, timeout_s=20.0)
        ctx.acq.flush()
        if ctx.acq.aging.get(self.driver.channel) is col:
            ctx.acq.aging.pop(self.driver.channel, None)
        unfinished = rules.unfinished_aging_status(self.end_reason(guard))
        if unfinished is not None:
            ctx.store.finish_run(col.run_id, *unfinished)


async def run_aging(ctx: StationContext, pixel_no: int, params: AgingParams, *,
                    job_id: str | None = None,
                    progress: Callable[[float, dict[str, float]], None] | None = None,
                    resume: AgingCollector | None = None,
                    running: asyncio.Event | None = None,
                    on_alert: Callable[[str, dict[str, Any]], None] | None = None) -> AgingOutcome:
    """Age one pixel. ``resume`` continues a run rebuilt from the store (after a restart);
    ``running`` (set = run, clear = pause) pauses the run with its output off."""
    _sub, _pixel = ctx.pixel(pixel_no)
    resumed_status: str | None = None
    if resume is not None:
        col = resume
        op, resumed_status = _resumed_run(ctx, col, progress, on_alert)
    else:
        col, op = await _new_run(ctx, pixel_no, params, job_id, progress, on_alert)
    driver = ctx.board.aging_driver(
        channel=op.channel, pixel=pixel_no, current_a=op.current_a,
        interval_ms=max(1, round(params.interval_s * 1000)), compliance_v=op.compliance_v,
        pd_gain=params.pd_gain)
    mon = _AgingMonitor(ctx, col, params, pixel_no, driver, job_id, running)
    async with guarded(off=(driver,), on_cancel=mon.cancelled, before=mon.stop_helpers,
                       after=mon.ended) as guard:
        await mon.switch_on(resumed_status)
        await mon.monitor()
    reason = mon.end_reason(guard)
    summary = finalize_aging(ctx, col.run_id, col)
    summary["end_reason"] = reason
    summary["current_density_ma_cm2"] = op.current_density_ma_cm2
    summary["current_a"] = op.current_a
    ctx.store.finish_run(col.run_id, "completed", reason, summary)
    return AgingOutcome(col.run_id, summary, reason, col.n)
