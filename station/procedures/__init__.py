"""Procedures: a J–V–L sweep and a constant-current aging run, each safe on every path out.

A sweep runs as one on-board sweep program (never a host round trip per point). An aging run
holds a pixel at constant current on its own driver, so pixels on separate drivers age in
parallel while the SMU and its multiplexer serve one sweep at a time through a FIFO lock (asyncio
locks wake waiters in order: a fair queue). Whatever happens — completion, an exception,
Ctrl-C, a cancelled task — the outputs a procedure used are switched off (:mod:`.engine`).

The modules: ``calibration`` (the responsivity table, a pixel's Calibration), ``context``
(StationContext and its dark-reading cache), ``spectra`` (counts → spectral density,
auto-exposure), ``sweep``, ``aging`` (the live collector, rebuild, final analysis),
``aging_run`` (the run and its monitor), ``watchdog``, ``search`` (the current for a
luminance), ``rules`` (the stop and alert rules, pure functions) and ``engine`` (outputs off
on every path). They talk to the board through :mod:`station.devices`.
"""

from __future__ import annotations

from ..acquisition import empty_rows
from ..errors import LimitError
from ..params import AgingParams, SweepParams
from ..store import AGING_COLUMNS, SWEEP_COLUMNS
from .aging import AgingCollector, AgingOutcome, finalize_aging, rebuild_aging_collector
from .aging_run import aging_current_a, run_aging
from .calibration import calibration_for, load_responsivity
from .context import DARK_MAX_DELTA_T_C, DarkReading, StationContext
from .engine import all_outputs_off, guarded, sync_stream
from .rules import MA_CM2_PER_A_M2
from .search import find_current_for_luminance
from .spectra import (
    AUTO_EXPOSURE_LOW,
    AUTO_EXPOSURE_MAX_MS,
    AUTO_EXPOSURE_START_MS,
    AUTO_EXPOSURE_TARGET,
    SPECTRUM_SATURATED,
    SpectrumResult,
    acquire_spectrum,
    board_spectrum,
)
from .sweep import (
    MAX_SWEEP_SPECTRA,
    SweepCollector,
    SweepOutcome,
    check_sweep_limits,
    default_spectrum_voltages,
    finalize_sweep,
    last_turn_on_v,
    run_sweep,
)
from .watchdog import (
    BOARD_SILENT_ALERT_S,
    WATCHDOG_INTERVALS,
    WATCHDOG_MIN_S,
    WATCHDOG_RECOVERIES,
    AgingWatchdog,
)

__all__ = [
    "AGING_COLUMNS", "AUTO_EXPOSURE_LOW", "AUTO_EXPOSURE_MAX_MS", "AUTO_EXPOSURE_START_MS",
    "AUTO_EXPOSURE_TARGET", "BOARD_SILENT_ALERT_S", "DARK_MAX_DELTA_T_C", "MAX_SWEEP_SPECTRA",
    "MA_CM2_PER_A_M2", "SPECTRUM_SATURATED", "SWEEP_COLUMNS", "WATCHDOG_INTERVALS",
    "WATCHDOG_MIN_S", "WATCHDOG_RECOVERIES", "AgingCollector", "AgingOutcome", "AgingParams",
    "AgingWatchdog", "DarkReading", "LimitError", "SpectrumResult", "StationContext",
    "SweepCollector", "SweepOutcome", "SweepParams", "acquire_spectrum", "aging_current_a",
    "all_outputs_off", "board_spectrum", "calibration_for", "check_sweep_limits",
    "default_spectrum_voltages", "empty_rows", "finalize_aging", "finalize_sweep",
    "find_current_for_luminance", "guarded", "last_turn_on_v", "load_responsivity", "rebuild_aging_collector",
    "run_aging", "run_sweep", "sync_stream",
]
