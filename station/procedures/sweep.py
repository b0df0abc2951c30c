"""A J–V–L sweep: one on-board sweep program, its collector, limits and final analysis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from firmware_protocol.connection import Unsolicited
from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.messages import Status, SweepDone
from firmware_protocol.spec import SampleFlags, SmuMode, Stream, SweepEnd

from ..analysis.photometry import (
    Calibration,
    PreparedSpectra,
    Spectrum,
    compute_points,
    detection_limit_a,
    luminance_per_photodiode_amp,
    prepare_spectra,
)
from ..analysis.summary import sweep_summary
from ..config import PixelConfig
from ..link import LinkDown, RequestTimeout
from ..params import SweepParams
from ..store import Store
from . import rules
from .calibration import calibration_for
from .context import DarkReading, StationContext
from .engine import Guard, guarded
from .rules import MA_CM2_PER_A_M2
from .spectra import acquire_spectrum

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    run_id: int
    summary: dict[str, Any]
    reason: str
    n_points: int


class SweepCollector:
    """Owns one sweep's records: photometry as they arrive, the spectra, the end."""

    def __init__(self, ctx: StationContext, run_id: int, sweep_id: int, calibration: Calibration,
                 dark_a: float, n_expected: int,
                 progress: Callable[[int, int, dict[str, float]], None] | None) -> None:
        self.ctx, self.run_id, self.sweep_id = ctx, run_id, sweep_id
        self.calibration = calibration
        self.dark_a = dark_a
        self.n_expected = n_expected
        self.progress = progress
        self.spectra: list[Spectrum] = []
        self.spectrum_seqs: list[int] = []
        self.prepared: PreparedSpectra | None = None
        self.n_points = 0
        self.done = asyncio.Event()
        self.done_msg: SweepDone | None = None
        self.last_flags = 0
        self.spectrum_after_sweep: dict[str, Any] | None = None
        """Set when the sweep's own spectra were all too dim (see _spectrum_after_sweep)."""

    def _prep(self) -> PreparedSpectra | None:
        if self.prepared is None:
            spectra = self.spectra or self.ctx.last_spectra.get(self.sweep_pixel, [])
            if spectra:
                self.prepared = prepare_spectra(spectra, self.calibration, "voltage_v")
        return self.prepared

    sweep_pixel: int = 0

    def on_records(self, rec: np.ndarray, seq64: np.ndarray, rows: np.ndarray) -> None:
        rows["run_id"] = self.run_id
        rows["dark_a"] = self.dark_a
        prep = self._prep()
        if prep is not None:
            pts = compute_points(rec["voltage_v"], rec["current_a"], rec["photodiode_a"],
                                 self.calibration, prep, dark_a=self.dark_a)
            for c in ("current_density_ma_cm2", "luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w"):
                rows[c] = pts[c]
        else:
            area = self.calibration.pixel_area_m2
            rows["current_density_ma_cm2"] = rec["current_a"] * (MA_CM2_PER_A_M2 / area)
        self.n_points += len(rec)
        self.last_flags = int(rec["flags"][-1])
        if self.progress is not None:
            last = rows[-1]
            self.progress(self.n_points, self.n_expected, {
                "voltage_v": float(last["voltage_v"]),
                "current_density_ma_cm2": float(last["current_density_ma_cm2"]),
                "luminance_cd_m2": float(last["luminance_cd_m2"])})

    def on_spectrum(self, msg: SpectrumMsg, seq64: int) -> int | None:
        s = self.ctx.board_spectrum(msg)
        self.spectrum_seqs.append(seq64)
        if s is not None:
            self.spectra.append(s)
            self.prepared = None
        return self.run_id

    def inferred_end(self) -> str:
        return rules.sweep_end_inferred(self.n_points, self.n_expected, self.last_flags)

    def on_event(self, ev: object) -> None:
        if (isinstance(ev, Unsolicited) and isinstance(ev.message, SweepDone)
                and ev.message.sweep_id == self.sweep_id):
            self.done_msg = ev.message
            self.done.set()


def check_sweep_limits(ctx: StationContext, pixel: PixelConfig, params: SweepParams) -> float:
    """Returns the compliance current (A). Raises LimitError naming the limit."""
    lim = ctx.config.limits
    return rules.sweep_compliance_a(
        params.program(), listed=bool(params.voltages_v), area_m2=pixel.area_mm2 * 1e-6,
        compliance_ma_cm2=params.compliance_ma_cm2, max_voltage_v=lim.max_voltage_v,
        board_max_voltage_v=ctx.link.caps.max_voltage_v if ctx.link.caps is not None else None,
        max_current_density_ma_cm2=lim.max_current_density_ma_cm2)


MAX_SWEEP_SPECTRA = 16
"""Spectra one sweep_start can ask for (the message's spectrum_at_v holds 16)."""


def default_spectrum_voltages(program: list[float], turn_on_v: float | None) -> list[float]:
    """Where a sweep takes its spectra unless told: 16 voltages evenly from turn-on to the top
    of the sweep, so the efficiency maxima just above turn-on have spectra around them (each
    point's spectrum is interpolated between the two around it). Turn-on is the pixel's last
    measured V_on (less 0.1 V) if the store has one, else 30 % of the way up the sweep; spectra
    taken where the pixel does not emit yet are dropped. The board takes each at the forward
    point nearest its voltage."""
    lo, hi = min(program), max(program)
    start = lo + 0.3 * (hi - lo) if turn_on_v is None else min(max(turn_on_v - 0.1, lo), hi)
    return [float(v) for v in np.linspace(start, hi, MAX_SWEEP_SPECTRA)]


def last_turn_on_v(store: Store, pixel_no: int) -> float | None:
    """V_on of the pixel's latest completed sweep in this store, if any."""
    return store.last_turn_on_v(pixel_no)


def _create_run(ctx: StationContext, pixel_no: int, params: SweepParams,
                cal: Calibration, job_id: str | None) -> int:
    sub, pixel = ctx.pixel(pixel_no)
    board = ctx.link.board
    return ctx.store.create_run(
        kind="sweep", station=ctx.config.station.id, pixel=pixel_no, area_m2=cal.pixel_area_m2,
        substrate=sub.id if sub else None, label=pixel.label, device=pixel.device, job_id=job_id,
        params=asdict(params) | {"spectrometer": ctx.spectrometer_info()},
        calibration=cal.to_dict(), board_serial=board.serial_number if board else None)


class _SweepRun:
    """One sweep on the board: the plan :func:`run_sweep` runs under :func:`guarded`."""

    def __init__(self, ctx: StationContext, run_id: int, pixel_no: int, params: SweepParams,
                 compliance_a: float) -> None:
        self.ctx, self.run_id, self.pixel_no, self.params = ctx, run_id, pixel_no, params
        self.compliance_a = compliance_a
        self.sweep_id = ctx.next_sweep_id()
        self.col: SweepCollector | None = None
        self.reason = "error"

    async def measure(self, cal: Calibration, n_expected: int, spectrum_at_v: list[float],
                      progress: Callable[[int, int, dict[str, float]], None] | None) -> DarkReading:
        """Dark reading, the sweep program, every record in: returns the dark reading."""
        ctx, board, p, pixel_no = self.ctx, self.ctx.board, self.params, self.pixel_no
        await board.mux.select(pixel_no)
        dark = await ctx.dark_reading(pixel_no, p.dark_n, p.integration_ms, p.dark_max_age_s)
        col = self.col = SweepCollector(ctx, self.run_id, self.sweep_id, cal, dark.mean_a,
                                        n_expected, progress)
        col.sweep_pixel = pixel_no
        ctx.acq.sweeps[self.sweep_id] = col
        board.listen(col.on_event)
        await board.sweeper.start(
            sweep_id=self.sweep_id, pixel=pixel_no, start_v=p.start_v, stop_v=p.stop_v,
            step_v=p.step_v, voltages_v=p.voltages_v or (), dwell_ms=p.dwell_ms,
            integration_ms=p.integration_ms, compliance_a=self.compliance_a, reverse=p.reverse,
            stop_on_compliance=p.stop_on_compliance, autorange=p.autorange, pd_gain=p.pd_gain,
            spectrum_at_v=spectrum_at_v[:MAX_SWEEP_SPECTRA],
            spectrum_integration_ms=p.spectrum_integration_ms,
            breakdown_v_drop=p.breakdown_v_drop)
        status = await _wait_sweep_end(ctx, col)
        await board.sync(Stream.SWEEP, status.sweep_head_seq)
        await board.sync(Stream.SPECTRUM, status.spectrum_head_seq)
        end_reason = (SweepEnd(col.done_msg.reason).name.lower() if col.done_msg is not None
                      # sweep_done was lost with the link; the points tell how it ended
                      else col.inferred_end())
        if not col.spectra and not ctx.last_spectra.get(pixel_no):
            await _spectrum_after_sweep(ctx, col, pixel_no, self.compliance_a)
        self.reason = end_reason
        return dark

    async def ended(self, guard: Guard) -> None:
        """The sweep's records of its end, once its outputs are off."""
        ctx = self.ctx
        ctx.acq.sweeps.pop(self.sweep_id, None)
        if self.col is not None:
            ctx.board.unlisten(self.col.on_event)
        if not guard.completed:
            ctx.store.finish_run(self.run_id, *rules.failed_run_status(ctx.shutting_down,
                                                                      resumes=False))


async def run_sweep(ctx: StationContext, pixel_no: int, params: SweepParams, *,
                    job_id: str | None = None, progress: Callable[[int, int, dict[str, float]], None]
                    | None = None) -> SweepOutcome:
    """One J–V–L sweep of ``pixel_no``: a dark reading, the board's sweep program with its
    spectra, then every point recomputed with all the spectra and the sweep summarised."""
    store, board = ctx.store, ctx.board
    _sub, pixel = ctx.pixel(pixel_no)
    compliance_a = check_sweep_limits(ctx, pixel, params)
    prog = params.program()
    n_expected = len(prog) * (2 if params.reverse else 1)
    spec_v = params.spectrum_at_v
    if spec_v is None:
        spec_v = default_spectrum_voltages(prog, last_turn_on_v(store, pixel_no))
    cal = calibration_for(ctx.config, pixel.area_mm2 * 1e-6)
    async with ctx.instrument_lock:
        run = _SweepRun(ctx, _create_run(ctx, pixel_no, params, cal, job_id), pixel_no, params,
                        compliance_a)
        async with guarded(off=(board.smu, board.mux), off_unless_completed=(board.sweeper,),
                           after=run.ended):
            dark = await run.measure(cal, n_expected, spec_v, progress)
    col, reason = run.col, run.reason
    assert col is not None
    ctx.acq.flush()
    summary = finalize_sweep(ctx, run.run_id, col, dark_std_a=dark.std_a,
                             threshold=params.threshold_cd_m2,
                             adc_step_a=ctx.pd_adc_step_a(dark.gain_index))
    if col.spectrum_after_sweep is not None:
        summary["spectrum_after_sweep"] = col.spectrum_after_sweep
    summary["dark_age_s"] = dark.age_s
    summary["dark_pd_gain"] = dark.gain_index
    summary["end_reason"] = reason
    store.finish_run(run.run_id, "completed", reason, summary)
    if col.spectra:
        ctx.last_spectra[pixel_no] = col.spectra
    return SweepOutcome(run.run_id, summary, reason, col.n_points)


async def _spectrum_after_sweep(ctx: StationContext, col: SweepCollector, pixel_no: int,
                                compliance_a: float) -> bool | None:
    """A dim pixel: none of the sweep's spectra (taken at its fixed integration) stood above
    the noise. Take one with auto-exposure (up to the longest allowed integration) at the
    brightest point of the sweep, the SMU holding that voltage; the sweep's photometry uses it.
    Returns whether it is low signal (None: no point to take it at, or nothing usable)."""
    board = ctx.board
    ctx.acq.flush()
    d = ctx.store.fetch("sweep_points", col.run_id)
    ok = (d["direction"] == "forward") & ((d["flags"].astype(np.int64)
                                           & int(SampleFlags.COMPLIANCE)) == 0)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmax(d["photodiode_a"][ok])])
    v = float(d["voltage_set_v"][i])
    await board.mux.select(pixel_no)  # the sweep program ended with the mux open
    await board.smu.configure(SmuMode.SOURCE_V, compliance=compliance_a, integration_ms=20.0)
    async with guarded(off=(board.smu,)):
        await board.smu.source(v)
        res = await acquire_spectrum(ctx, pixel_no)
    if res.spectrum is None:
        log.warning("pixel %d: no usable spectrum even at %g ms and %g V", pixel_no,
                    res.msg.integration_ms, v)
        return None
    col.spectra.append(res.spectrum)
    col.prepared = None
    col.spectrum_after_sweep = {"voltage_v": v, "integration_ms": res.msg.integration_ms,
                                "low_signal": res.low_signal}
    return res.low_signal


async def _wait_sweep_end(ctx: StationContext, col: SweepCollector) -> Status:
    """Wait for sweep_done; if it was lost, notice the end in the board's status."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(col.done.wait(), 1.0)
        try:
            status = await ctx.board.status()
        except (LinkDown, RequestTimeout):
            continue
        if col.done.is_set() or not status.sweep_active:
            return status


def losses_summary(store: Store, t_us: np.ndarray, stream: str) -> dict[str, Any]:
    """Records of the run's stream the board lost during the run (``records_lost``; on the
    AGING stream, shared by every channel running then), for its summary."""
    t = t_us[np.isfinite(t_us)]
    rows = store.records_lost(int(t.min()), int(t.max()), stream) if len(t) else []
    return {"records_lost": sum(r["count"] for r in rows),
            "records_lost_spans_us": [[r["t_from_us"], r["t_to_us"]] for r in rows]}


def finalize_sweep(ctx: StationContext, run_id: int, col: SweepCollector, *, dark_std_a: float,
                   threshold: float, adc_step_a: float | None = None) -> dict[str, Any]:
    """Recompute every point with all the sweep's spectra (nearest in voltage) and summarise."""
    store = ctx.store
    data = store.fetch("sweep_points", run_id)
    spectra = col.spectra or ctx.last_spectra.get(col.sweep_pixel, [])
    summary: dict[str, Any]
    if not spectra or len(data["seq"]) == 0:
        summary = {"error": "no usable spectrum: luminance cannot be computed", "n_points": len(data["seq"]),
                   "dark_a": col.dark_a, "dark_std_a": dark_std_a}
        return summary
    prep = prepare_spectra(spectra, col.calibration, "voltage_v")
    pts = compute_points(data["voltage_v"], data["current_a"], data["photodiode_a"], col.calibration,
                         prep, dark_a=col.dark_a)
    store.revise("sweep_points", run_id, data["seq"].astype(np.int64).tolist(), {
        k: pts[k].tolist() for k in ("current_density_ma_cm2", "luminance_cd_m2", "eqe_pct",
                                     "ce_cd_a", "pe_lm_w")})
    forward = data["direction"] == "forward"
    floor = detection_limit_a(dark_std_a, adc_step_a) * luminance_per_photodiode_amp(
        col.calibration, prep, len(prep.key) - 1)
    summ = sweep_summary(pts[forward] if forward.any() else pts, prep, threshold_cd_m2=threshold,
                         noise_floor_cd_m2=floor)
    summary = summ.to_dict()
    summary["n_points"] = len(pts)
    summary.update(losses_summary(store, data["t_us"], "sweep"))
    summary["dark_a"] = col.dark_a
    summary["dark_std_a"] = dark_std_a
    summary["pd_adc_step_a"] = adc_step_a
    summary["spectra_used"] = len(spectra)
    return summary
