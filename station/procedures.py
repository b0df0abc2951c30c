"""Procedures: a J–V–L sweep and a constant-current aging run, each safe on every path out.

A sweep runs as one on-board sweep program (never a host round trip per point). An aging run
holds a pixel at constant current on its own driver, so pixels on separate drivers age in
parallel while the SMU and its multiplexer serve one sweep at a time through a FIFO lock (asyncio
locks wake waiters in order: a fair queue). Whatever happens — completion, an exception,
Ctrl-C, a cancelled task — the ``finally`` blocks switch the outputs they used off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from firmware_protocol.channels import aging_channel_count, channel_active
from firmware_protocol.connection import Unsolicited
from firmware_protocol.messages import (
    AgingSet,
    AgingStart,
    AgingStop,
    AllOff,
    GetStatus,
    MuxSelect,
    PdRead,
    PdReading,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
    SpectrumAcquire,
    Status,
    SweepAbort,
    SweepDone,
    SweepStart,
)
from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.spec import MAX_SPECTRUM_INTEGRATION_MS, SampleFlags, SmuMode, Stream, SweepEnd

from .acquisition import Acquisition, empty_rows
from .analysis.lifetime import (
    L0_FIT_END_REL,
    L0_MIN_SAMPLES,
    L0_WINDOW_S,
    analyze_lifetime,
    l0_of,
)
from .analysis.photometry import (
    Calibration,
    PointFactors,
    PreparedSpectra,
    Spectrum,
    compute_points,
    detection_limit_a,
    luminance_and_eqe,
    luminance_per_photodiode_amp,
    point_factors,
    prepare_spectra,
)
from .analysis.summary import sweep_summary
from .config import ConfigError, PixelConfig, StationConfig, SubstrateConfig
from .errors import LimitError
from .link import BoardError, BoardLink, LinkDown, RequestTimeout
from .params import AgingParams, SweepParams
from .store import AGING_COLUMNS, SWEEP_COLUMNS, Store

log = logging.getLogger(__name__)

SPECTRUM_SATURATED = 0x01
"""``spectrum.flags`` bit 0: some pixel reached the detector's full scale (docs/protocol.md)."""

DATA_DIR = Path(__file__).parent / "data"
MA_CM2_PER_A_M2 = 0.1


# -- calibration ---------------------------------------------------------------------------------


def load_responsivity(path: str | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A CSV of ``wavelength_nm,a_per_w`` ('#' comments and a header line allowed); default: the
    built-in typical Si photodiode table."""
    p = Path(path) if path else DATA_DIR / "si_photodiode_responsivity.csv"
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"responsivity file {p}: {e}") from None
    wl: list[float] = []
    r: list[float] = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or (not wl and not line[0].isdigit()):
            continue  # comment, blank or the header
        parts = line.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            wl.append(float(parts[0]))
            r.append(float(parts[1]))
        except ValueError:
            raise ValueError(f"responsivity file {p}, line {n}: expected 'wavelength_nm,a_per_w', "
                             f"got {line!r}") from None
    if len(wl) < 2:
        raise ValueError(f"responsivity file {p}: needs at least two rows")
    return tuple(wl), tuple(r)


def calibration_for(config: StationConfig, area_m2: float) -> Calibration:
    wl, r = load_responsivity(config.calibration.responsivity_file)
    c = config.calibration
    return Calibration(pixel_area_m2=area_m2, responsivity_wavelength_nm=wl,
                       responsivity_a_per_w=r, photodiode_radius_m=c.photodiode_radius_mm * 1e-3,
                       distance_m=c.photodiode_distance_mm * 1e-3, geometry_factor=c.geometry_factor)


# -- the station context ---------------------------------------------------------------------------


class DarkReading(NamedTuple):
    mean_a: float
    std_a: float
    age_s: float  # 0 when measured just now
    gain_index: int = 0  # the photodiode gain it was read at


class _TakenDark(NamedTuple):
    board: object  # the handshake it was taken under (a reconnect or reboot starts afresh)
    mono: float
    temps: tuple[float, ...] | None
    mean_a: float
    std_a: float
    gain_index: int


DARK_MAX_DELTA_T_C = 1.0
"""A dark reading is not reused once any board temperature sensor moved more than this."""


@dataclass
class StationContext:
    config: StationConfig
    link: BoardLink
    store: Store
    acq: Acquisition
    instrument_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sweep_id: int = 0
    _darks: dict[tuple[int, int, float], _TakenDark] = field(default_factory=dict)
    last_spectra: dict[int, list[Spectrum]] = field(default_factory=dict)
    shutting_down: bool = False
    """Set when the station stops (SIGTERM): runs cancelled now are interrupted, not ended."""

    async def dark_reading(self, pixel_no: int, n: int, integration_ms: float,
                           max_age_s: float) -> DarkReading:
        """The pixel's photodiode dark current (its LED off: the caller has selected the pixel
        with nothing driving it). A reading of the same pixel, ``n`` and integration time is
        reused when it was taken in this board session less than ``max_age_s`` ago and no
        temperature sensor has moved more than ``DARK_MAX_DELTA_T_C`` since (the board's
        periodic status): a photodiode's dark current follows temperature, which drifts over
        minutes — and a sweep to high current heats the substrate. Measuring it (16 × 20 ms)
        would otherwise be ~10 % of a 121-point sweep (docs/benchmarks.md (c))."""
        key = (pixel_no, n, float(integration_ms))
        now = time.monotonic()
        temps = self._temperatures()
        got = self._darks.get(key)
        if (got is not None and got.board is self.link.board and now - got.mono < max_age_s
                and temps is not None and got.temps is not None and len(temps) == len(got.temps)
                and all(abs(a - b) <= DARK_MAX_DELTA_T_C for a, b in zip(temps, got.temps,
                                                                         strict=True))):
            return DarkReading(got.mean_a, got.std_a, now - got.mono, got.gain_index)
        r = await self.link.request(PdRead(pixel=pixel_no, n=n, integration_ms=integration_ms),
                                    PdReading)
        self._darks[key] = _TakenDark(self.link.board, time.monotonic(), self._temperatures(),
                                      r.mean_a, r.std_a, r.gain_index)
        return DarkReading(r.mean_a, r.std_a, 0.0, r.gain_index)

    def pd_adc_step_a(self, gain_index: int) -> float | None:
        """One ADC step of the photodiode amplifier at ``gain_index``, in amperes of
        photocurrent: full scale / 2^bits / transimpedance, from the board's capabilities. No
        reading resolves less, so a detection limit is never below it."""
        caps = self.link.caps
        if caps is None or not 0 <= gain_index < len(caps.pd_gains_v_per_a):
            return None
        gain = float(caps.pd_gains_v_per_a[gain_index])
        if not gain > 0 or caps.pd_adc_bits <= 0:
            return None
        return float(caps.pd_full_scale_v) / float(2 ** caps.pd_adc_bits) / gain

    def _temperatures(self) -> tuple[float, ...] | None:
        st = self.link.last_status
        return None if st is None else tuple(float(t) for t in st.temperatures_c)

    def next_sweep_id(self) -> int:
        self._sweep_id = (self._sweep_id % 0xFFFE) + 1
        return self._sweep_id

    def pixel(self, number: int) -> tuple[SubstrateConfig | None, PixelConfig]:
        caps = self.link.caps
        if caps is not None:
            n = caps.n_substrates * caps.pixels_per_substrate
            if not 1 <= number <= n:
                raise LimitError(f"pixel {number} does not exist on this board (1..{n})")
        try:
            return self.config.pixel(number)
        except ConfigError as e:
            raise LimitError(str(e)) from None

    def board_spectrum(self, msg: SpectrumMsg, *, t_s: float | None = None) -> Spectrum | None:
        """A board spectrum as spectral density per nm; None if unusable (saturated or dark)."""
        caps = self.link.caps
        if caps is None:
            return None
        return board_spectrum(np.asarray(msg.counts, dtype=float), msg.dark_counts, msg.flags,
                              caps.wavelength_cal, caps.spectrum_kind,
                              voltage_v=None if t_s is not None else msg.voltage_v, t_s=t_s)

    def spectrometer_info(self) -> dict[str, Any]:
        caps = self.link.caps
        if caps is None:
            return {}
        return {"wavelength_cal": list(caps.wavelength_cal), "spectrum_kind": caps.spectrum_kind,
                "pixels": caps.spectrometer_pixels}


def board_spectrum(counts: np.ndarray, dark_counts: float, flags: int,
                   wavelength_cal: Any, spectrum_kind: int, *, voltage_v: float | None = None,
                   t_s: float | None = None) -> Spectrum | None:
    """Spectrometer counts per pixel -> spectral density per nm on the calibrated wavelength grid.

    lambda(p) = sum c_k p^k; density = (counts - dark) / |d lambda / dp|. Returns None for a
    saturated spectrum (clipped line shape) or one with too little light to trust its shape.
    """
    if len(counts) < 3 or flags & SPECTRUM_SATURATED:
        return None
    p = np.arange(len(counts), dtype=float)
    coeffs = np.asarray(wavelength_cal, dtype=float)[::-1]
    wl = np.polyval(coeffs, p)
    dwl_dp = np.abs(np.polyval(np.polyder(coeffs), p))
    net = np.asarray(counts, dtype=float) - dark_counts
    noise = math.sqrt(max(dark_counts, 1.0)) + 3.0
    if net.max() < 20 * noise:
        return None
    density = net / np.where(dwl_dp > 0, dwl_dp, 1.0)  # no clipping: noise must average out
    # Keep the emission band only: outside it there is nothing but noise, which the colour-matching
    # functions would weigh in. The band is where the smoothed signal exceeds 0.5 % of its peak,
    # widened by its own width on each side.
    smooth = np.convolve(density, np.ones(5) / 5, mode="same")
    ipk = int(np.argmax(smooth))
    above = smooth >= 0.005 * smooth[ipk]
    lo = ipk
    while lo > 0 and above[lo - 1]:
        lo -= 1
    hi = ipk
    while hi < len(above) - 1 and above[hi + 1]:
        hi += 1
    pad = hi - lo + 1
    density = density.copy()
    density[: max(lo - pad, 0)] = 0.0
    density[hi + pad + 1 :] = 0.0
    kind = "photon" if spectrum_kind == 0 else "energy"
    return Spectrum(wavelength_nm=wl, values=density, kind=kind,  # type: ignore[arg-type]
                    voltage_v=voltage_v, t_s=t_s)


AUTO_EXPOSURE_START_MS = 200.0
AUTO_EXPOSURE_MAX_MS = 10_000.0
"""The longest integration auto-exposure asks for while the spectrum shows its line: a pixel too
dim to fill 30 % of the detector's range in this time gets its spectrum at this integration,
flagged low signal; only a pixel with no line above the noise here goes on to the board's
``MAX_SPECTRUM_INTEGRATION_MS`` (docs/protocol.md, Timing)."""
AUTO_EXPOSURE_LOW = 0.3
AUTO_EXPOSURE_TARGET = 0.6


class SpectrumResult(NamedTuple):
    spectrum: Spectrum | None
    """Spectral density per nm; None when unusable (saturated, or no line above the noise)."""
    msg: SpectrumMsg
    low_signal: bool
    """The peak stayed below 30 % of the range at the longest allowed integration."""


async def acquire_spectrum(ctx: StationContext, pixel_no: int, *, t_s: float | None = None,
                           start_ms: float = AUTO_EXPOSURE_START_MS,
                           max_ms: float = AUTO_EXPOSURE_MAX_MS,
                           t0_us: int | None = None) -> SpectrumResult:
    """One spectrum of a pixel at its present operating point, with auto-exposure.

    The integration time is scaled until the peak uses 30-80 % of the detector's range, never
    beyond ``max_ms``; a saturated reading is retaken shorter. A dim pixel ends at ``max_ms``
    with ``low_signal`` set when its line stands above the noise there; one with no line at
    ``max_ms`` goes on up to the board's longest integration (its capabilities', within the
    spec's ``MAX_SPECTRUM_INTEGRATION_MS``), and is still low signal, or unusable. With
    ``t0_us`` the spectrum is tagged with its time since t0 (aging), else with ``t_s``. Each
    request's reply deadline follows from its integration (the link derives it), so a long
    exposure is waited for.
    """
    caps = ctx.link.caps
    full = float(caps.spectrometer_max_counts) if caps else 65535.0
    # the board's longest integration: its capabilities' (when it reports one), within the spec's
    board_max = float(getattr(caps, "max_spectrum_integration_ms", 0.0) or 0.0)
    hard_max = (min(board_max, MAX_SPECTRUM_INTEGRATION_MS) if board_max > 0
                else MAX_SPECTRUM_INTEGRATION_MS)
    max_ms = min(max_ms, hard_max)
    integ = min(start_ms, max_ms)
    msg: SpectrumMsg | None = None
    low = False
    taken: list[int] = []
    for _ in range(6):
        ok = await ctx.link.request(SpectrumAcquire(pixel=pixel_no, integration_ms=integ))
        fut = ctx.acq.wait_spectrum(ok.value)
        ctx.link.note_head(Stream.SPECTRUM, (ok.value + 1) & 0xFFFFFFFF)  # fetched if lost
        got, seq64 = await asyncio.wait_for(fut, 120.0)
        taken.append(seq64)
        msg = got
        peak = float(np.max(got.counts)) - got.dark_counts if got.counts else 0.0
        room = full - got.dark_counts
        if got.flags & SPECTRUM_SATURATED:
            integ = max(integ * 0.3, 1.0)
            continue
        low = peak < AUTO_EXPOSURE_LOW * room
        if not low or integ >= hard_max:
            break
        if integ >= max_ms and ctx.board_spectrum(got) is not None:
            break  # low signal, but its line stands above the noise: good enough
        # up to max_ms; beyond it (to the board's limit) only while there is no line at all
        cap = max_ms if integ < max_ms else hard_max
        integ = min(cap, integ * min(AUTO_EXPOSURE_TARGET * room / max(peak, 1.0), 50.0))
    assert msg is not None
    if len(taken) > 1:  # the exposure probes stay in the store, marked unused
        ctx.store.mark_probe_spectra(taken[:-1])
    if t0_us is not None:
        t_s = (msg.t_us - t0_us) / 1e6
    if low:
        log.info("pixel %d: spectrum at the longest integration (%g ms) is low signal",
                 pixel_no, msg.integration_ms)
    return SpectrumResult(ctx.board_spectrum(msg, t_s=t_s), msg, low)


async def all_outputs_off(link: BoardLink) -> None:
    """Best effort: everything off. Used on every path out."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(link.request(AllOff(), wait_up_s=2.0)), 5.0)


async def _safe(link: BoardLink, *msgs: Any) -> None:
    for m in msgs:
        with contextlib.suppress(BoardError, LinkDown, RequestTimeout, TimeoutError):
            await asyncio.wait_for(link.request(m, wait_up_s=5.0), 10.0)


async def sync_stream(link: BoardLink, stream: Stream, head32: int, timeout_s: float = 120.0) -> None:
    """Wait until every record of ``stream`` before the board's ``head32`` has arrived.

    A gap is only visible when a later record arrives; records lost at the very end of a burst
    are declared missing here, and the link's repair loop fetches them.
    """
    link.note_head(stream, head32)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while link.missing_before(stream, head32) > 0:
        if loop.time() > deadline:
            raise RequestTimeout(f"{link.missing_before(stream, head32)} {stream.name} records "
                                 f"before {head32} did not arrive within {timeout_s:g} s")
        await asyncio.sleep(0.02)


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


# -- aging -----------------------------------------------------------------------------------------


@dataclass
class AgingOutcome:
    run_id: int
    summary: dict[str, Any]
    reason: str
    n_samples: int


class AgingCollector:
    """Owns one aging run's samples: photometry, L0, l_rel and the stop conditions."""

    def __init__(self, ctx: StationContext, run_id: int, channel: int, calibration: Calibration,
                 dark_a: float, params: AgingParams,
                 progress: Callable[[float, dict[str, float]], None] | None) -> None:
        self.ctx, self.run_id, self.channel = ctx, run_id, channel
        self.pixel = 0
        self.calibration, self.dark_a, self.params = calibration, dark_a, params
        self.progress = progress
        self.spectra: list[Spectrum] = []
        self.prepared: PreparedSpectra | None = None
        self._factors: PointFactors | None = None
        self.t0_us: int | None = None
        self.l0: float | None = None
        self._l0_buf: list[tuple[float, float]] = []
        self._trace_t: list[np.ndarray] = []
        self._trace_l: list[np.ndarray] = []
        self._early: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._recheck_at = 0
        self._l0_settled = False
        self.v0: float | None = None
        self.n = 0
        self.last_t_s = 0.0
        self.last_l_rel = float("nan")
        self.below = 0
        self.stop_reason: str | None = None
        self.stop_t_s = math.inf
        self.stopped = asyncio.Event()
        self.paused_flag = False
        self.on_alert: Callable[[str, dict[str, Any]], None] | None = None
        self._alerted: set[float] = set()
        self.last_t_us: int | None = None
        """Board time of the newest sample."""
        self.last_mono: float | None = None
        """Host monotonic time the newest sample arrived (None: none in this process yet)."""

    def add_spectrum(self, s: Spectrum) -> None:
        self.spectra.append(s)
        self.prepared = prepare_spectra(self.spectra, self.calibration, "t_s")
        self._factors = point_factors(self.calibration, self.prepared)
        if self._early:
            # samples from before the first spectrum: their luminance now, as the final
            # analysis will compute it, so that L0 (first minute) and the stop rule see them
            early, self._early = self._early, []
            for t_s, pd, cur, ok in early:
                lum, _eqe = luminance_and_eqe(pd, cur, self._factors, self.prepared.nearest(t_s))
                ok = ok & np.isfinite(lum)
                self._trace_t.insert(0, t_s[ok])
                self._trace_l.insert(0, lum[ok])
                if self.l0 is None:
                    self._l0_buf.extend(zip(t_s[ok].tolist(), lum[ok].tolist(), strict=True))
            self._l0_buf.sort()

    def on_spectrum(self, msg: SpectrumMsg, seq64: int) -> int | None:
        return self.run_id

    def on_records(self, rec: np.ndarray, seq64: np.ndarray, rows: np.ndarray) -> None:
        rows["run_id"] = self.run_id
        rows["dark_a"] = self.dark_a
        if self.t0_us is None:
            self.t0_us = int(rec["t_us"][0])
            self.ctx.store.update_run(self.run_id, t0_us=self.t0_us)
        t_s = (rec["t_us"].astype(np.int64) - self.t0_us) / 1e6
        flags = rec["flags"]
        if self.prepared is None:
            self._early.append((t_s, rec["photodiode_a"] - self.dark_a, rec["current_a"],
                                (flags & int(SampleFlags.STOPPED)) == 0))
        if self.prepared is not None and self._factors is not None:
            # compute_points' luminance and EQE, from the factors of the spectra prepared once
            lum, eqe = luminance_and_eqe(rec["photodiode_a"] - self.dark_a, rec["current_a"],
                                         self._factors, self.prepared.nearest(t_s))
            rows["luminance_cd_m2"] = lum
            rows["eqe_pct"] = eqe
            live = (flags & int(SampleFlags.STOPPED)) == 0
            ok = live & np.isfinite(lum)
            self._trace_t.append(t_s[ok])
            self._trace_l.append(lum[ok])
            if self.l0 is None:
                self._l0_buf.extend(zip(t_s[ok].tolist(), lum[ok].tolist(), strict=True))
                # the final analysis' estimator (lifetime.l0_of), provisionally on the first
                # minute once it is complete, then once more (below) on the early trace it
                # fits in the end: the stop rule and the summary then share one L0
                buf = self._l0_buf
                if len(buf) >= L0_MIN_SAMPLES and (buf[-1][0] - buf[0][0] > L0_WINDOW_S
                                                   or len(buf) >= 200):
                    self.l0 = l0_of(np.array([x[0] for x in buf]), np.array([x[1] for x in buf]),
                                    L0_WINDOW_S, L0_MIN_SAMPLES)
            elif not self._l0_settled and ok.any() and float(np.min(lum[ok])) <= (
                    L0_FIT_END_REL * self.l0):
                # the trace has fallen to where the L0 fit ends: its final value from now on
                # (the rows before keep the provisional l_rel until the run's revision)
                self._l0_settled = True
                self.l0 = l0_of(np.concatenate(self._trace_t), np.concatenate(self._trace_l),
                                L0_WINDOW_S, L0_MIN_SAMPLES)
            if self.l0 is not None and self.l0 > 0:
                rows["l_rel"] = lum / self.l0
        if self.v0 is None and len(rec):
            self.v0 = float(rec["voltage_v"][0])
        self.n += len(rec)
        self.last_t_s = float(t_s[-1])
        self.last_t_us = int(rec["t_us"][-1])
        self.last_mono = time.monotonic()
        self._check_stop(rec, rows, t_s)
        if self.progress is not None:
            self.progress(self.last_t_s / 3600.0, {
                "l_rel": float(rows["l_rel"][-1]), "voltage_v": float(rec["voltage_v"][-1]),
                "luminance_cd_m2": float(rows["luminance_cd_m2"][-1])})

    def _check_stop(self, rec: np.ndarray, rows: np.ndarray, t_s: np.ndarray) -> None:
        """Stop conditions and alerts over one block. Runs for every block of every channel, so
        each condition is first tested with one reduction over the block; the sample where it
        is met is looked for only when it is."""
        if self.stop_reason is not None or not len(rec):
            return
        flags = rec["flags"].astype(np.int64)
        seen = int(np.bitwise_or.reduce(flags))

        def first(mask: np.ndarray) -> float:
            return float(t_s[int(np.argmax(mask))])

        for bit, reason in ((SampleFlags.SHORT, "failure_short"), (SampleFlags.OPEN, "failure_open"),
                            (SampleFlags.COMPLIANCE, "voltage_compliance")):
            if seen & int(bit):
                self._stop(reason, first((flags & int(bit)) != 0))
                return
        if self.v0 is not None:
            limit_v = self.v0 + self.params.voltage_runaway_v
            if float(rec["voltage_v"].max()) > limit_v:
                self._stop("voltage_runaway", first(rec["voltage_v"] > limit_v))
                return
        if seen & int(SampleFlags.STOPPED):
            self.paused_flag = True  # interlock or reboot: the monitor restarts the channel
        lr_all = rows["l_rel"]
        lr_min = float(np.fmin.reduce(lr_all))  # NaN (no L0 yet) is skipped, as <= would
        for lv, name in ((0.9, "t90"), (0.5, "t50")):
            if lv not in self._alerted and lr_min <= lv:
                self._alerted.add(lv)
                i = int(np.argmax(lr_all <= lv))
                self._alert(f"{name}_reached", {"t_h": float(t_s[i]) / 3600.0,
                                                "l_rel": float(lr_all[i])})
        level = self.params.stop_level()
        if level is not None and (lr_min <= level or self.below) and self.n >= self._recheck_at:
            for i, v in enumerate(lr_all.tolist()):
                self.below = self.below + 1 if (v == v and v <= level) else 0
                if self.below >= 3:
                    # the final analysis decides: stop once it measures the crossing (by
                    # interpolation, with samples past it), not on the live values alone
                    if self._final_analysis_reached(float(t_s[i])):
                        self._stop(f"reached_{self.params.until.lower()}", float(t_s[i]))
                        return
                    self.below = 0
                    self._recheck_at = self.n + max(3, self.n // 50)
                    break
        dur = self.params.duration_h()
        limit_h = min(dur if dur is not None else math.inf, self.params.max_duration_h)
        if float(t_s.max()) / 3600.0 >= limit_h:
            self._stop("duration" if dur is not None and limit_h == dur else "max_duration",
                       first(t_s / 3600.0 >= limit_h))

    def _final_analysis_reached(self, t_until_s: float) -> bool:
        """Does the run's final analysis (analyze_lifetime on the samples up to ``t_until_s``)
        measure the stop level's Tx?"""
        t = np.concatenate(self._trace_t) if self._trace_t else np.zeros(0)
        lum = np.concatenate(self._trace_l) if self._trace_l else np.zeros(0)
        keep = t <= t_until_s
        if np.count_nonzero(keep) < L0_MIN_SAMPLES + 3:
            return False
        try:
            res = analyze_lifetime(t[keep], lum[keep], fit=False)
        except Exception:  # the analysis cannot be made yet
            log.debug("lifetime analysis for the stop rule failed", exc_info=True)
            return False
        return res.tx_h.get(self.params.until.lower()) is not None

    def _stop(self, reason: str, t_stop_s: float) -> None:
        """Stop condition met at board time ``t_stop_s`` (since t0). The board goes on sampling
        until the host's aging_stop reaches it; those later samples are stored but not analysed."""
        self.stop_reason = reason
        self.stop_t_s = t_stop_s
        self.stopped.set()
        if reason.startswith(("failure", "voltage")):
            self._alert("pixel_failure" if reason.startswith("failure") else "compliance",
                        {"reason": reason, "t_h": t_stop_s / 3600.0})

    def _alert(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_alert is not None:
            try:
                self.on_alert(kind, {"pixel": self.pixel, "run_id": self.run_id, **data})
            except Exception:
                log.exception("alert callback failed")


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


async def find_current_for_luminance(ctx: StationContext, pixel_no: int, pixel: PixelConfig,
                                     target_cd_m2: float, cal: Calibration) -> tuple[float, float]:
    """A short secant search (log-log) with the SMU sourcing current. Returns (I, L)."""
    link = ctx.link
    lim = ctx.config.limits
    i_max = lim.max_aging_current_density_ma_cm2 / MA_CM2_PER_A_M2 * pixel.area_mm2 * 1e-6
    async with ctx.instrument_lock:
        try:
            await link.request(MuxSelect(pixel=pixel_no))
            dark = await link.request(PdRead(pixel=pixel_no, n=8, integration_ms=20.0), PdReading)
            await link.request(SmuConfigure(mode=int(SmuMode.SOURCE_I), range_index=0xFF,
                                            compliance=lim.max_voltage_v, integration_ms=20.0))
            i = min(10.0 / MA_CM2_PER_A_M2 * pixel.area_mm2 * 1e-6, i_max)  # 10 mA/cm²
            prep: PreparedSpectra | None = None
            hist: list[tuple[float, float]] = []
            for _ in range(10):
                await link.request(SmuOutput(enable=1, level=i))
                if prep is None:
                    s = (await acquire_spectrum(ctx, pixel_no, t_s=0.0)).spectrum
                    if s is not None:
                        prep = prepare_spectra([s], cal, "t_s")
                r: SmuReading = await link.request(SmuMeasure(), SmuReading)
                if prep is None:
                    lum = 0.0
                else:
                    pts = compute_points(r.voltage_v, r.current_a, r.photodiode_a, cal, prep,
                                         dark_a=dark.mean_a, t_s=0.0)
                    lum = float(pts["luminance_cd_m2"][0])
                hist.append((i, lum))
                if lum > 0 and abs(lum / target_cd_m2 - 1) < 0.02:
                    return i, lum
                if len(hist) >= 2 and hist[-1][1] > 0 and hist[-2][1] > 0 and hist[-1][0] != hist[-2][0]:
                    (i1, l1), (i2, l2) = hist[-2], hist[-1]
                    m = math.log(l2 / l1) / math.log(i2 / i1) if l2 != l1 else 1.0
                    m = min(max(m, 0.3), 3.0)
                    i_new = i2 * (target_cd_m2 / l2) ** (1 / m)
                else:
                    i_new = i * (target_cd_m2 / lum if lum > 0 else 4.0)
                i = float(min(max(i_new, i / 10), i * 10, i_max))
            raise LimitError(f"no current up to {i_max * 1e3:g} mA gives {target_cd_m2:g} cd/m² "
                             f"(last: {hist[-1][1]:.4g} cd/m² at {hist[-1][0] * 1e3:.4g} mA)")
        finally:
            await _safe(link, SmuOutput(enable=0, level=0.0), MuxSelect(pixel=0))


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


def rebuild_aging_collector(ctx: StationContext, run_id: int) -> tuple[AgingCollector, AgingParams]:
    """An aging run's collector as it was, from the store: for resuming after a restart."""
    store = ctx.store
    run = store.run(run_id)
    rp = dict(run["params"])
    fields = {f for f in AgingParams.__dataclass_fields__}
    interim = rp.get("interim_sweep")
    params = AgingParams(**{k: v for k, v in rp.items() if k in fields and k != "interim_sweep"})
    if interim:
        params.interim_sweep = SweepParams(**interim)
    cal = Calibration.from_dict(run["calibration"])
    col = AgingCollector(ctx, run_id, rp["channel"], cal, float(rp.get("dark_a", 0.0)), params, None)
    col.pixel = run["pixel"]
    col.t0_us = run["t0_us"]
    d = store.fetch("aging_samples", run_id)
    col.n = len(d["seq"])
    spec = rp.get("spectrometer") or {}
    if col.t0_us is not None and spec:
        for row in store.spectra_of(run_id):
            if row["probe"]:
                continue
            sp = board_spectrum(row["counts"], row["dark_counts"], row["flags"],
                                spec["wavelength_cal"], spec["spectrum_kind"],
                                t_s=(row["t_us"] - col.t0_us) / 1e6)
            if sp is not None:
                col.add_spectrum(sp)
    if col.n and col.t0_us is not None:
        t_s = (d["t_us"] - col.t0_us) / 1e6
        col.last_t_s = float(t_s[-1])
        col.last_t_us = int(d["t_us"][-1])
        col.v0 = float(d["voltage_v"][0])
        if col.prepared is not None:
            pts = compute_points(d["voltage_v"], d["current_a"], d["photodiode_a"], cal,
                                 col.prepared, dark_a=col.dark_a, t_s=t_s)
            ok = np.isfinite(pts["luminance_cd_m2"])
            if ok.sum() >= 3:
                col.l0 = l0_of(t_s[ok], pts["luminance_cd_m2"][ok])
                col._alerted = {lv for lv in (0.9, 0.5)
                                if np.any(pts["luminance_cd_m2"][ok] / col.l0 <= lv)}
    ctx.acq.aging[col.channel] = col
    return col, params


def finalize_aging(ctx: StationContext, run_id: int, col: AgingCollector) -> dict[str, Any]:
    """Recompute every sample with the run's spectra (nearest in time) and the final L0."""
    store = ctx.store
    d = store.fetch("aging_samples", run_id)
    if len(d["seq"]) < 2 or not col.spectra or col.t0_us is None:
        return {"error": "too few samples or no usable spectrum", "n_samples": len(d["seq"])}
    t_s = (d["t_us"] - col.t0_us) / 1e6
    prep = prepare_spectra(col.spectra, col.calibration, "t_s")
    pts = compute_points(d["voltage_v"], d["current_a"], d["photodiode_a"], col.calibration, prep,
                         dark_a=col.dark_a, t_s=t_s)
    bad = int(SampleFlags.STOPPED | SampleFlags.SHORT | SampleFlags.OPEN)
    live = (d["flags"].astype(np.int64) & bad) == 0
    lum = pts["luminance_cd_m2"]
    live &= t_s <= col.stop_t_s  # samples after the stop condition are not analysed
    res = analyze_lifetime(t_s[live], lum[live])
    l_rel = lum / res.l0_cd_m2
    store.revise("aging_samples", run_id, d["seq"].astype(np.int64).tolist(), {
        "luminance_cd_m2": lum.tolist(), "l_rel": l_rel.tolist(),
        "eqe_pct": pts["eqe_pct"].tolist()})
    summary = res.to_dict()
    summary["n_samples"] = len(d["seq"])
    summary["dark_a"] = col.dark_a
    summary["t0_us"] = col.t0_us
    # which samples the analysis used (station analyze applies the same to the export)
    summary["analysed_until_t_s"] = col.stop_t_s if math.isfinite(col.stop_t_s) else None
    summary["analysed_exclude_flags"] = bad
    summary.update(_losses(store, d["t_us"], "aging"))
    summary["spectra_used"] = len(col.spectra)
    return summary


__all__ = [
    "AGING_COLUMNS", "SWEEP_COLUMNS", "AgingOutcome", "AgingParams", "LimitError",
    "StationContext", "SweepOutcome", "SweepParams", "all_outputs_off", "empty_rows",
    "run_aging", "run_sweep",
]
