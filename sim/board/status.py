"""What the board reports: faults, running channels, ``status`` and ``capabilities``."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.channels import channel_set_fields
from firmware_protocol.messages import (
    Capabilities,
    Status,
)
from firmware_protocol.spec import (
    Fault,
    SpectrumKind,
)
from sim.board.link import BoardLink
from sim.board.state import (
    MAX_AGING_INTERVAL_MS,
    MAX_DWELL_MS,
    MAX_PD_READS,
    MAX_SPECTRUM_INTEGRATION_MS,
    MAX_SWEEP_POINTS,
    MIN_AGING_INTERVAL_MS,
)
from sim.hardware import (
    SEQ_MASK,
)


class BoardStatus(BoardLink):
    """The status and capabilities messages."""

    def faults(self) -> int:
        f = self._latched
        if self.interlock_open:
            f |= Fault.INTERLOCK_OPEN
        if any(r.overflow for r in self.rings.values()):
            f |= Fault.RING_OVERFLOW
        return int(f)

    def aging_mask(self) -> int:
        """The running channels among 0..31 (``status.aging_active_mask``)."""
        return sum(1 << ch.index for ch in self.channels if ch is not None and ch.index < 32)

    def active_channels(self) -> list[int]:
        return [ch.index for ch in self.channels if ch is not None]

    def _substrate_power(self) -> NDArray[np.float64]:
        p = np.zeros(self.layout.n_substrates)
        for ch in self.channels:
            if ch is not None:
                p[ch.pixel.spec.substrate] += abs(ch.current_a * ch.fresh.voltage_v)
        return p  # SMU use (sweeps, spot measurements) is brief: its heating is not modelled

    def status(self) -> Status:
        temps = self.thermal.readings(self._substrate_power(), self._rng_temp)
        return Status(
            t_us=self.clock_us(), boot_id=self.boot_id, faults=self.faults(),
            interlock_closed=0 if self.interlock_open else 1,
            smu_output_on=int(self.smu.output_on), sweep_active=int(self.sweep is not None),
            **channel_set_fields(self.active_channels(), self.n_channels),
            temperatures_c=tuple(temps),
            aging_head_seq=self.aging_ring.head & SEQ_MASK,
            sweep_head_seq=self.sweep_ring.head & SEQ_MASK,
            spectrum_head_seq=self.spectrum_ring.head & SEQ_MASK,
            aging_oldest_seq=self.aging_ring.oldest & SEQ_MASK,
        )

    def emit_status(self) -> None:
        """The unsolicited once-per-second status (the server calls it on the wall clock)."""
        self._emit(self.status())

    def capabilities(self) -> Capabilities:
        c = self.cfg
        return Capabilities(
            n_substrates=self.layout.n_substrates,
            pixels_per_substrate=self.layout.pixels_per_substrate,
            n_aging_channels=self.n_channels,
            n_temperature_sensors=self.layout.n_substrates + 1,
            smu_voltage_ranges_v=c.smu_voltage_ranges_v,
            smu_current_ranges_a=c.smu_current_ranges_a,
            max_voltage_v=c.max_voltage_v, max_current_a=c.max_current_a,
            max_aging_current_a=c.max_aging_current_a, aging_compliance_v=c.aging_compliance_v,
            pd_gains_v_per_a=c.pd_gains_v_per_a, pd_full_scale_v=c.pd_full_scale_v,
            pd_adc_bits=c.pd_adc_bits, spectrometer_pixels=c.spectrometer_pixels,
            wavelength_cal=c.wavelength_cal, spectrum_kind=int(SpectrumKind.PHOTON_COUNTS),
            spectrometer_max_counts=c.spectrometer_max_counts, ring_depth=self.ring_depth,
            board_tick_us=c.board_tick_us,
            max_integration_ms=c.max_integration_ms,
            max_spectrum_integration_ms=MAX_SPECTRUM_INTEGRATION_MS, max_dwell_ms=MAX_DWELL_MS,
            min_aging_interval_ms=MIN_AGING_INTERVAL_MS, max_aging_interval_ms=MAX_AGING_INTERVAL_MS,
            max_sweep_points=MAX_SWEEP_POINTS, max_pd_reads=MAX_PD_READS,
        )
