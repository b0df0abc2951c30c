"""The station context: config, link, store, acquisition, the instrument lock and the dark-reading cache."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from firmware_protocol.messages import Spectrum as SpectrumMsg

from ..acquisition import Acquisition
from ..analysis.photometry import Spectrum
from ..config import ConfigError, PixelConfig, StationConfig, SubstrateConfig
from ..devices import Board
from ..errors import LimitError
from ..link import BoardLink
from ..store import Store
from .spectra import board_spectrum


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

    @property
    def board(self) -> Board:
        """The board's devices (SMU, photodiode, spectrometer, ...) over this context's link."""
        return Board(self.link, self.acq)

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
        r = await self.board.pd.read(pixel_no, n=n, integration_ms=integration_ms)
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
