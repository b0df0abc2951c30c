"""The luminance search: the current that gives a pixel a target luminance."""

from __future__ import annotations

import math

from firmware_protocol.messages import (
    MuxSelect,
    PdRead,
    PdReading,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
)
from firmware_protocol.spec import SmuMode

from ..analysis.photometry import (
    Calibration,
    PreparedSpectra,
    compute_points,
    prepare_spectra,
)
from ..config import PixelConfig
from ..errors import LimitError
from .calibration import MA_CM2_PER_A_M2
from .context import StationContext
from .engine import _safe
from .spectra import acquire_spectrum


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
