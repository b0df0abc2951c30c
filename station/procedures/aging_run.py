"""A constant-current aging run, safe on every path out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from firmware_protocol.channels import aging_channel_count, channel_active
from firmware_protocol.messages import (
    AgingStart,
    AgingStop,
    GetStatus,
    PdRead,
    PdReading,
    Status,
)
from firmware_protocol.spec import Stream

from ..config import PixelConfig
from ..errors import LimitError
from ..link import BoardError, LinkDown, RequestTimeout
from ..params import AgingParams, SweepParams
from .aging import AgingCollector, AgingOutcome, finalize_aging
from .calibration import MA_CM2_PER_A_M2, calibration_for
from .context import StationContext
from .engine import _safe, sync_stream
from .search import find_current_for_luminance
from .spectra import SpectrumResult, acquire_spectrum
from .sweep import run_sweep
from .watchdog import AgingWatchdog, _watch_aging

log = logging.getLogger(__name__)


def aging_current_a(ctx: StationContext, pixel: PixelConfig, j_ma_cm2: float) -> float:
    lim = ctx.config.limits
    if j_ma_cm2 <= 0:
        raise LimitError("current density must be > 0")
    if j_ma_cm2 > lim.max_aging_current_density_ma_cm2:
        raise LimitError(f"{j_ma_cm2:g} mA/cm² is above limits.max_aging_current_density_ma_cm2 = "
                         f"{lim.max_aging_current_density_ma_cm2:g}")
    i = j_ma_cm2 / MA_CM2_PER_A_M2 * pixel.area_mm2 * 1e-6
    caps = ctx.link.caps
    if caps is not None and i > caps.max_aging_current_a:
        raise LimitError(f"{i * 1e3:g} mA is above the aging driver's {caps.max_aging_current_a * 1e3:g} mA")
    return i


async def run_aging(ctx: StationContext, pixel_no: int, params: AgingParams, *,
                    job_id: str | None = None,
                    progress: Callable[[float, dict[str, float]], None] | None = None,
                    resume: AgingCollector | None = None,
                    running: asyncio.Event | None = None,
                    on_alert: Callable[[str, dict[str, Any]], None] | None = None) -> AgingOutcome:
    """Age one pixel. ``resume`` continues a run rebuilt from the store (after a restart);
    ``running`` (set = run, clear = pause) pauses the run with its output off."""
    link, store = ctx.link, ctx.store
    sub, pixel = ctx.pixel(pixel_no)
    area = pixel.area_mm2 * 1e-6
    if resume is not None:
        col = resume
        run = store.run(col.run_id)
        rp = run["params"]
        current_a, compliance_v, channel = rp["current_a"], rp["compliance_v"], rp["channel"]
        j_ma_cm2 = rp["current_density_ma_cm2"]
        col.progress = progress
        col.on_alert = on_alert
    else:
        cal = calibration_for(ctx.config, area)
        if params.stop_level() is None:
            params.duration_h()  # validates
        caps = link.caps
        channel = params.channel if params.channel is not None else pixel_no - 1
        if caps is not None and not 0 <= channel < aging_channel_count(caps):
            raise LimitError(f"aging channel {channel} does not exist (board has "
                             f"{aging_channel_count(caps)})")
        if params.current_density_ma_cm2 is not None:
            current_a = aging_current_a(ctx, pixel, params.current_density_ma_cm2)
            target_l = None
        elif params.initial_luminance_cd_m2 is not None:
            current_a, target_l = await find_current_for_luminance(
                ctx, pixel_no, pixel, params.initial_luminance_cd_m2, cal)
            aging_current_a(ctx, pixel, current_a / (area / MA_CM2_PER_A_M2))  # limit check
        else:
            raise LimitError("aging needs a current density or an initial luminance")
        compliance_v = params.compliance_v or (caps.aging_compliance_v if caps
                                               else ctx.config.limits.max_voltage_v)
        compliance_v = min(compliance_v, ctx.config.limits.max_voltage_v)
        j_ma_cm2 = current_a / area * MA_CM2_PER_A_M2
        # dark current with the pixel off
        async with ctx.instrument_lock:
            dark = await link.request(PdRead(pixel=pixel_no, n=16, integration_ms=20.0), PdReading)
        run_params = asdict(params) | {"current_a": current_a, "current_density_ma_cm2": j_ma_cm2,
                                       "channel": channel, "compliance_v": compliance_v,
                                       "search_luminance_cd_m2": target_l, "dark_a": dark.mean_a,
                                       "spectrometer": ctx.spectrometer_info()}
        run_id = store.create_run(
            kind="aging", station=ctx.config.station.id, pixel=pixel_no, area_m2=area,
            substrate=sub.id if sub else None, label=pixel.label, device=pixel.device,
            job_id=job_id, params=run_params, calibration=cal.to_dict(), channel=channel,
            board_serial=link.board.serial_number if link.board else None)
        col = AgingCollector(ctx, run_id, channel, cal, dark.mean_a, params, progress)
        col.pixel = pixel_no
        col.on_alert = on_alert
        ctx.acq.aging[channel] = col
    run_id = col.run_id
    start_msg = AgingStart(channel=channel, pixel=pixel_no, current_a=current_a,
                           interval_ms=max(1, round(params.interval_s * 1000)),
                           compliance_v=compliance_v, pd_gain=params.pd_gain)
    reason = "error"
    t_h0 = col.last_t_s / 3600.0
    next_spectrum_h = t_h0 + params.spectrum_every_h if col.spectra else 0.0
    next_sweep_h = (t_h0 + params.interim_sweep_every_h) if params.interim_sweep_every_h else None
    paused = False
    wd = AgingWatchdog(params.interval_s)
    spec_task: asyncio.Task[SpectrumResult] | None = None
    low_signal_alerted = False

    def start_spectrum(first: bool) -> asyncio.Task[SpectrumResult]:
        async def take() -> SpectrumResult:
            async with ctx.instrument_lock:
                if first:  # the spectrum at switch-on is the run's t = 0 spectrum
                    return await acquire_spectrum(ctx, pixel_no, t_s=0.0)
                return await acquire_spectrum(ctx, pixel_no, t_s=0.0, t0_us=col.t0_us)
        return asyncio.create_task(take(), name=f"spectrum-pixel-{pixel_no}")

    try:
        if resume is None:
            await link.request(start_msg)
            # the spectrum at switch-on, taken beside the monitor (at 1x it lasts seconds, and a
            # queue of pixels waiting for the spectrometer must not stop the watchdog)
            spec_task = start_spectrum(first=True)
            next_spectrum_h = math.inf
        elif run["status"] != "running":
            store.update_run(run_id, status="running", end_reason=None, ended_at=None)
        while not col.stopped.is_set():
            stop_wait = asyncio.ensure_future(col.stopped.wait())
            try:  # a round every 0.5 s, and at once when the spectrum is in
                await asyncio.wait({stop_wait, *([spec_task] if spec_task else [])}, timeout=0.5,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            if col.stopped.is_set():
                break
            t_h = col.last_t_s / 3600.0
            if spec_task is not None and spec_task.done():
                done, spec_task = spec_task, None
                try:
                    res = done.result()
                except (LinkDown, RequestTimeout, BoardError, TimeoutError) as e:
                    log.info("aging pixel %d: spectrum not taken (%s); trying again", pixel_no, e)
                    res = None
                if res is not None and res.spectrum is not None:
                    if not col.spectra:  # what came before it is routed before it
                        ctx.acq.flush()
                    col.add_spectrum(res.spectrum)
                    next_spectrum_h = t_h + params.spectrum_every_h
                else:
                    # no usable spectrum: soon again while the run has none, else in 0.1 h
                    next_spectrum_h = t_h + (0.1 if col.spectra else
                                             min(0.1, 10 * params.interval_s / 3600.0))
                if res is not None and res.low_signal and not low_signal_alerted:
                    low_signal_alerted = True
                    col._alert("spectrum_low_signal", {
                        "integration_ms": res.msg.integration_ms, "usable": res.spectrum is not None,
                        "t_h": t_h})
            try:
                if running is not None and not running.is_set():
                    if not paused:
                        await link.request(AgingStop(channel=channel))
                        paused = True
                        store.update_run(run_id, status="paused")
                    wd.rearm()
                    continue
                try:
                    status: Status = await link.request(GetStatus(), Status)
                except RequestTimeout:
                    if wd.not_answering(time.monotonic()):
                        col._alert("board_not_answering", {
                            "channel": channel, "since_s": wd.silent_s(time.monotonic()),
                            "action": "asking again (the board keeps aging and buffering)"})
                    raise
                wd.answered()
                active = channel_active(status, channel)
                if not active and status.interlock_closed and col.stop_reason is None:
                    if not paused:
                        log.warning("aging channel %d was stopped by the board (interlock, reboot,"
                                    " restart); restarting it", channel)
                    await link.request(start_msg)
                    if paused:
                        store.update_run(run_id, status="running")
                    paused = False
                    col.paused_flag = False
                    wd.rearm()
                    continue
                if active:
                    await _watch_aging(ctx, col, wd, status, start_msg)
                    if col.stopped.is_set():
                        break
                if active and t_h >= next_spectrum_h and spec_task is None:
                    spec_task = start_spectrum(first=False)
                    next_spectrum_h = math.inf
                if next_sweep_h is not None and active and t_h >= next_sweep_h:
                    if spec_task is not None:
                        with contextlib.suppress(Exception):
                            await spec_task
                    await link.request(AgingStop(channel=channel))
                    try:
                        await run_sweep(ctx, pixel_no, params.interim_sweep or SweepParams(),
                                        job_id=job_id)
                    finally:
                        await link.request(start_msg)
                        wd.rearm()
                    next_sweep_h = t_h + (params.interim_sweep_every_h or math.inf)
            except (LinkDown, RequestTimeout) as e:
                log.info("aging monitor: %s (the board keeps aging; waiting)", e)
            except BoardError as e:
                log.warning("aging monitor: %s", e)
        lit = not (col.stop_reason or "").startswith(("failure", "voltage", "stalled"))
        if spec_task is None and not col.spectra and lit:
            spec_task = start_spectrum(first=col.t0_us is None)  # the channel is still on
        if spec_task is not None and not col.spectra:
            # the run ended before it had a spectrum (a short run, pixels queued at the
            # spectrometer, a resumed run): its samples need one
            with contextlib.suppress(LinkDown, RequestTimeout, BoardError, TimeoutError):
                res = await spec_task
                if res.spectrum is not None:
                    ctx.acq.flush()
                    col.add_spectrum(res.spectrum)
            spec_task = None
        reason = col.stop_reason or "stopped"
    except asyncio.CancelledError:
        # the daemon stopping (SIGTERM) interrupts the run, which its next start resumes;
        # anything else cancelling it (a job stopped, Ctrl-C of `station age`) ends it
        reason = "interrupted" if ctx.shutting_down else "cancelled"
        raise
    finally:
        if spec_task is not None:
            spec_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await spec_task
        await _safe(link, AgingStop(channel=channel))
        with contextlib.suppress(Exception):
            status = await asyncio.wait_for(link.request(GetStatus(), Status, wait_up_s=5.0), 10.0)
            await sync_stream(link, Stream.AGING, status.aging_head_seq, timeout_s=20.0)
        ctx.acq.flush()
        if ctx.acq.aging.get(channel) is col:
            ctx.acq.aging.pop(channel, None)
        if reason == "interrupted":
            store.finish_run(run_id, "interrupted", "station stopped; resumes at its next start")
        elif reason in ("error", "cancelled"):
            store.finish_run(run_id, "failed" if reason == "error" else "cancelled", reason)
    summary = finalize_aging(ctx, run_id, col)
    summary["end_reason"] = reason
    summary["current_density_ma_cm2"] = j_ma_cm2
    summary["current_a"] = current_a
    store.finish_run(run_id, "completed", reason, summary)
    return AgingOutcome(run_id, summary, reason, col.n)
