"""The parameter sets of the station's procedures (a J–V–L sweep, an aging run)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import LimitError


@dataclass
class SweepParams:
    start_v: float = 0.0
    stop_v: float = 6.0
    step_v: float = 0.1
    voltages_v: list[float] | None = None
    dwell_ms: float = 10.0
    integration_ms: float = 20.0
    compliance_ma_cm2: float | None = None
    reverse: bool = False
    stop_on_compliance: bool = True
    autorange: bool = True
    pd_gain: int = 2
    spectrum_at_v: list[float] | None = None
    spectrum_integration_ms: float = 400.0
    breakdown_v_drop: float = 0.0
    dark_n: int = 16
    dark_max_age_s: float = 300.0
    """Reuse this pixel's photodiode dark reading (same n and integration time, same board
    session, temperatures within ``DARK_MAX_DELTA_T_C``) when it is younger than this; 0
    measures it before every sweep. The age used is in the summary (``dark_age_s``)."""
    threshold_cd_m2: float = 1.0

    def program(self) -> list[float]:
        if self.voltages_v:
            return list(self.voltages_v)
        if self.step_v == 0 or (self.stop_v - self.start_v) * self.step_v < 0:
            raise LimitError("sweep: step_v must be non-zero and point from start_v to stop_v")
        n = math.floor((self.stop_v - self.start_v) / self.step_v + 1e-9) + 1
        return [self.start_v + i * self.step_v for i in range(n)]


@dataclass
class AgingParams:
    current_density_ma_cm2: float | None = None
    initial_luminance_cd_m2: float | None = None
    interval_s: float = 60.0
    until: str = "t50"  # t95, t90, t80, t50 or a duration like "300h"
    max_duration_h: float = 10000.0
    voltage_runaway_v: float = 3.0
    compliance_v: float | None = None
    interim_sweep_every_h: float | None = None
    interim_sweep: SweepParams | None = None
    spectrum_every_h: float = 24.0
    channel: int | None = None
    pd_gain: int = 2

    def stop_level(self) -> float | None:
        levels = {"t95": 0.95, "t90": 0.90, "t80": 0.80, "t70": 0.70, "t50": 0.50}
        return levels.get(self.until.lower())

    def duration_h(self) -> float | None:
        if self.stop_level() is not None:
            return None
        return parse_duration_h(self.until)


def parse_duration_h(text: str) -> float:
    t = text.strip().lower()
    units = {"s": 1 / 3600, "m": 1 / 60, "min": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            try:
                v = float(t[: -len(u)])
            except ValueError:
                break
            if v <= 0:
                break
            return v * units[u]
    raise LimitError(f"cannot read duration {text!r}: use t95/t90/t80/t50 or a number with "
                     f"s, m, h, d or w (e.g. 300h)")
