"""The luminance search: the current that gives a pixel a target luminance."""

from __future__ import annotations

import math

from firmware_protocol.spec import SmuMode

from ..analysis.photometry import Calibration, PreparedSpectra, compute_points, prepare_spectra
from ..config import PixelConfig
from ..errors import LimitError
from .context import StationContext
from .engine import guarded
from .rules import MA_CM2_PER_A_M2
from .spectra import acquire_spectrum

SEARCH_STEPS = 10
SEARCH_TOLERANCE = 0.02
"""The search ends at a luminance within 2 % of the target."""
SEARCH_START_MA_CM2 = 10.0
SEARCH_INTEGRATION_MS = 20.0
SEARCH_DARK_N = 8


def next_current(hist: list[tuple[float, float]], target_cd_m2: float, i_max: float) -> float:
    """The search's next current after the (current, luminance) pairs in ``hist``: a secant
    step in log-log (slope clamped to 0.3–3) through the last two lit points, else a
    proportional step (×4 while there is no light); never more than ×10 or ÷10, nor above
    ``i_max``."""
    i, lum = hist[-1]
    if len(hist) >= 2 and hist[-1][1] > 0 and hist[-2][1] > 0 and hist[-1][0] != hist[-2][0]:
        (i1, l1), (i2, l2) = hist[-2], hist[-1]
        m = math.log(l2 / l1) / math.log(i2 / i1) if l2 != l1 else 1.0
        m = min(max(m, 0.3), 3.0)
        i_new = i2 * (target_cd_m2 / l2) ** (1 / m)
    else:
        i_new = i * (target_cd_m2 / lum if lum > 0 else 4.0)
    return float(min(max(i_new, i / 10), i * 10, i_max))


def on_target(lum: float, target_cd_m2: float) -> bool:
    return lum > 0 and abs(lum / target_cd_m2 - 1) < SEARCH_TOLERANCE


async def find_current_for_luminance(ctx: StationContext, pixel_no: int, pixel: PixelConfig,
                                     target_cd_m2: float, cal: Calibration) -> tuple[float, float]:
    """A short secant search (log-log) with the SMU sourcing current. Returns (I, L)."""
    board = ctx.board
    lim = ctx.config.limits
    i_max = lim.max_aging_current_density_ma_cm2 / MA_CM2_PER_A_M2 * pixel.area_mm2 * 1e-6
    async with ctx.instrument_lock, guarded(off=(board.smu, board.mux)):
        await board.mux.select(pixel_no)
        dark = await board.pd.read(pixel_no, n=SEARCH_DARK_N, integration_ms=SEARCH_INTEGRATION_MS)
        await board.smu.configure(SmuMode.SOURCE_I, compliance=lim.max_voltage_v,
                                  integration_ms=SEARCH_INTEGRATION_MS)
        i = min(SEARCH_START_MA_CM2 / MA_CM2_PER_A_M2 * pixel.area_mm2 * 1e-6, i_max)
        prep: PreparedSpectra | None = None
        hist: list[tuple[float, float]] = []
        for _ in range(SEARCH_STEPS):
            await board.smu.source(i)
            if prep is None:  # the spectrum at the first current that gives a usable one
                s = (await acquire_spectrum(ctx, pixel_no, t_s=0.0)).spectrum
                if s is not None:
                    prep = prepare_spectra([s], cal, "t_s")
            r = await board.smu.measure()
            lum = 0.0
            if prep is not None:
                lum = float(compute_points(r.voltage_v, r.current_a, r.photodiode_a, cal, prep,
                                           dark_a=dark.mean_a, t_s=0.0)["luminance_cd_m2"][0])
            hist.append((i, lum))
            if on_target(lum, target_cd_m2):
                return i, lum
            i = next_current(hist, target_cd_m2, i_max)
        raise LimitError(f"no current up to {i_max * 1e3:g} mA gives {target_cd_m2:g} cd/m² "
                         f"(last: {hist[-1][1]:.4g} cd/m² at {hist[-1][0] * 1e3:.4g} mA)")
