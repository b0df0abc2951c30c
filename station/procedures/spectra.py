"""Spectrometer signal processing (counts -> spectral density) and auto-exposure."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.spec import MAX_SPECTRUM_INTEGRATION_MS

from ..analysis.photometry import Spectrum

if TYPE_CHECKING:
    from .context import StationContext

log = logging.getLogger(__name__)


SPECTRUM_SATURATED = 0x01
"""``spectrum.flags`` bit 0: some pixel reached the detector's full scale (docs/protocol.md)."""


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
        got, seq64 = await ctx.board.spectrometer.acquire(pixel_no, integ)  # fetched if lost
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
