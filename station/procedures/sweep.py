"""A J–V–L sweep: one on-board sweep program, its collector, limits and final analysis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from firmware_protocol.connection import Unsolicited
from firmware_protocol.messages import (
    GetStatus,
    MuxSelect,
    SmuConfigure,
    SmuOutput,
    Status,
    SweepAbort,
    SweepDone,
    SweepStart,
)
from firmware_protocol.messages import Spectrum as SpectrumMsg
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
from ..errors import LimitError
from ..link import BoardLink, LinkDown, RequestTimeout
from ..params import SweepParams
from ..store import Store
from .calibration import MA_CM2_PER_A_M2, calibration_for
from .context import StationContext
from .engine import _safe, sync_stream
from .spectra import acquire_spectrum

log = logging.getLogger(__name__)

# -- sweep -----------------------------------------------------------------------------------------


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
        if self.n_points >= self.n_expected:
            return "completed"
        if self.last_flags & int(SampleFlags.COMPLIANCE):
            return "compliance"
        return "ended early (sweep_done lost; see the points)"

    def on_event(self, ev: object) -> None:
        if (isinstance(ev, Unsolicited) and isinstance(ev.message, SweepDone)
                and ev.message.sweep_id == self.sweep_id):
            self.done_msg = ev.message
            self.done.set()


def check_sweep_limits(ctx: StationContext, pixel: PixelConfig, params: SweepParams) -> float:
    """Returns the compliance current (A). Raises LimitError naming the limit."""
    lim = ctx.config.limits
    prog = params.program()
    vmax = max(abs(v) for v in prog)
    if vmax > lim.max_voltage_v:
        raise LimitError(f"sweep reaches {vmax:g} V, above the station limit "
                         f"limits.max_voltage_v = {lim.max_voltage_v:g} V")
    if ctx.link.caps is not None and vmax > ctx.link.caps.max_voltage_v:
        raise LimitError(f"sweep reaches {vmax:g} V, above the board's {ctx.link.caps.max_voltage_v:g} V")
    if len(prog) > 200 and params.voltages_v:
        raise LimitError("a list sweep holds at most 200 voltages")
    area = pixel.area_mm2 * 1e-6
    j_limit = lim.max_current_density_ma_cm2
    j = params.compliance_ma_cm2 if params.compliance_ma_cm2 is not None else j_limit
    if j > j_limit:
        raise LimitError(f"compliance {j:g} mA/cm² is above limits.max_current_density_ma_cm2 = "
                         f"{j_limit:g} mA/cm²")
    return j / MA_CM2_PER_A_M2 * area


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
    row = store.db.execute(
        "SELECT summary FROM runs WHERE kind = 'sweep' AND pixel = ? AND status = 'completed' "
        "AND summary IS NOT NULL ORDER BY id DESC LIMIT 1", (pixel_no,)).fetchone()
    if row is None:
        return None
    try:
        v = json.loads(row[0]).get("von_v")
    except (ValueError, AttributeError):
        return None
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


async def run_sweep(ctx: StationContext, pixel_no: int, params: SweepParams, *,
                    job_id: str | None = None, progress: Callable[[int, int, dict[str, float]], None]
                    | None = None) -> SweepOutcome:
    link, store = ctx.link, ctx.store
    sub, pixel = ctx.pixel(pixel_no)
    compliance_a = check_sweep_limits(ctx, pixel, params)
    prog = params.program()
    n_expected = len(prog) * (2 if params.reverse else 1)
    spec_v = params.spectrum_at_v
    if spec_v is None:
        spec_v = default_spectrum_voltages(prog, last_turn_on_v(store, pixel_no))
    area = pixel.area_mm2 * 1e-6
    cal = calibration_for(ctx.config, area)
    async with ctx.instrument_lock:
        run_id = store.create_run(
            kind="sweep", station=ctx.config.station.id, pixel=pixel_no, area_m2=area,
            substrate=sub.id if sub else None, label=pixel.label, device=pixel.device, job_id=job_id,
            params=asdict(params) | {"spectrometer": ctx.spectrometer_info()},
            calibration=cal.to_dict(),
            board_serial=link.board.serial_number if link.board else None)
        sweep_id = ctx.next_sweep_id()
        col: SweepCollector | None = None
        reason = "error"
        try:
            await link.request(MuxSelect(pixel=pixel_no))
            dark = await ctx.dark_reading(pixel_no, params.dark_n, params.integration_ms,
                                          params.dark_max_age_s)
            col = SweepCollector(ctx, run_id, sweep_id, cal, dark.mean_a, n_expected, progress)
            col.sweep_pixel = pixel_no
            ctx.acq.sweeps[sweep_id] = col
            link.add_listener(col.on_event)
            options = ((1 if params.reverse else 0) | (2 if params.stop_on_compliance else 0)
                       | (4 if params.autorange else 0))
            await link.request(SweepStart(
                sweep_id=sweep_id, pixel=pixel_no, start_v=params.start_v, stop_v=params.stop_v,
                step_v=params.step_v, voltages_v=tuple(params.voltages_v or ()),
                dwell_ms=params.dwell_ms, integration_ms=params.integration_ms,
                compliance_a=compliance_a, options=options, pd_gain=params.pd_gain,
                spectrum_at_v=tuple(spec_v[:MAX_SWEEP_SPECTRA]),
                spectrum_integration_ms=params.spectrum_integration_ms,
                breakdown_v_drop=params.breakdown_v_drop))
            status = await _wait_sweep_end(link, col)
            await sync_stream(link, Stream.SWEEP, status.sweep_head_seq)
            await sync_stream(link, Stream.SPECTRUM, status.spectrum_head_seq)
            end_reason = (SweepEnd(col.done_msg.reason).name.lower() if col.done_msg is not None
                          # sweep_done was lost with the link; the points tell how it ended
                          else col.inferred_end())
            if not col.spectra and not ctx.last_spectra.get(pixel_no):
                await _spectrum_after_sweep(ctx, col, pixel_no, compliance_a)
            reason = end_reason
        finally:
            if reason == "error":
                await _safe(link, SweepAbort())
            await _safe(link, SmuOutput(enable=0, level=0.0), MuxSelect(pixel=0))
            ctx.acq.sweeps.pop(sweep_id, None)
            if col is not None:
                with contextlib.suppress(ValueError):
                    link._listeners.remove(col.on_event)
            if reason == "error" and ctx.shutting_down:
                store.finish_run(run_id, "interrupted", "station stopped; taken again at its next start")
            elif reason == "error":
                store.finish_run(run_id, "failed", "error")
    assert col is not None
    ctx.acq.flush()
    summary = finalize_sweep(ctx, run_id, col, dark_std_a=dark.std_a, threshold=params.threshold_cd_m2,
                             adc_step_a=ctx.pd_adc_step_a(dark.gain_index))
    if col.spectrum_after_sweep is not None:
        summary["spectrum_after_sweep"] = col.spectrum_after_sweep
    summary["dark_age_s"] = dark.age_s
    summary["dark_pd_gain"] = dark.gain_index
    summary["end_reason"] = reason
    store.finish_run(run_id, "completed", reason, summary)
    if col.spectra:
        ctx.last_spectra[pixel_no] = col.spectra
    return SweepOutcome(run_id, summary, reason, col.n_points)


async def _spectrum_after_sweep(ctx: StationContext, col: SweepCollector, pixel_no: int,
                                compliance_a: float) -> bool | None:
    """A dim pixel: none of the sweep's spectra (taken at its fixed integration) stood above
    the noise. Take one with auto-exposure (up to the longest allowed integration) at the
    brightest point of the sweep, the SMU holding that voltage; the sweep's photometry uses it.
    Returns whether it is low signal (None: no point to take it at, or nothing usable)."""
    link = ctx.link
    ctx.acq.flush()
    d = ctx.store.fetch("sweep_points", col.run_id)
    ok = (d["direction"] == "forward") & ((d["flags"].astype(np.int64)
                                           & int(SampleFlags.COMPLIANCE)) == 0)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmax(d["photodiode_a"][ok])])
    v = float(d["voltage_set_v"][i])
    await link.request(MuxSelect(pixel=pixel_no))  # the sweep program ended with the mux open
    await link.request(SmuConfigure(mode=int(SmuMode.SOURCE_V), range_index=0xFF,
                                    compliance=compliance_a, integration_ms=20.0))
    try:
        await link.request(SmuOutput(enable=1, level=v))
        res = await acquire_spectrum(ctx, pixel_no)
    finally:
        await _safe(link, SmuOutput(enable=0, level=0.0))
    if res.spectrum is None:
        log.warning("pixel %d: no usable spectrum even at %g ms and %g V", pixel_no,
                    res.msg.integration_ms, v)
        return None
    col.spectra.append(res.spectrum)
    col.prepared = None
    col.spectrum_after_sweep = {"voltage_v": v, "integration_ms": res.msg.integration_ms,
                                "low_signal": res.low_signal}
    return res.low_signal


async def _wait_sweep_end(link: BoardLink, col: SweepCollector) -> Status:
    """Wait for sweep_done; if it was lost, notice the end in the board's status."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(col.done.wait(), 1.0)
        try:
            status: Status = await link.request(GetStatus(), Status)
        except (LinkDown, RequestTimeout):
            continue
        if col.done.is_set() or not status.sweep_active:
            return status


def _losses(store: Store, t_us: np.ndarray, stream: str) -> dict[str, Any]:
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
    summary.update(_losses(store, data["t_us"], "sweep"))
    summary["dark_a"] = col.dark_a
    summary["dark_std_a"] = dark_std_a
    summary["pd_adc_step_a"] = adc_step_a
    summary["spectra_used"] = len(spectra)
    return summary
