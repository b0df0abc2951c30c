"""The procedures' stop and alert rules, as pure functions: inputs → decision.

Every decision a sweep, an aging run or its watchdog takes on the numbers it sees is made here,
so that each can be tested on its own (tests/test_procedure_rules.py) and the procedures read as
the measurement they perform. Nothing here touches the board, the store or the clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from firmware_protocol.spec import SampleFlags

from ..errors import LimitError

MA_CM2_PER_A_M2 = 0.1
"""1 A/m² is 0.1 mA/cm²."""

# -- sweep -----------------------------------------------------------------------------------------

MAX_LIST_SWEEP_V = 200
"""Voltages a list sweep holds at most."""


def sweep_compliance_a(program_v: Sequence[float], *, listed: bool, area_m2: float,
                       compliance_ma_cm2: float | None, max_voltage_v: float,
                       board_max_voltage_v: float | None,
                       max_current_density_ma_cm2: float) -> float:
    """The compliance current (A) of a sweep of ``program_v`` on a pixel of ``area_m2``; raises
    LimitError naming the limit the sweep would break."""
    vmax = max(abs(v) for v in program_v)
    if vmax > max_voltage_v:
        raise LimitError(f"sweep reaches {vmax:g} V, above the station limit "
                         f"limits.max_voltage_v = {max_voltage_v:g} V")
    if board_max_voltage_v is not None and vmax > board_max_voltage_v:
        raise LimitError(f"sweep reaches {vmax:g} V, above the board's {board_max_voltage_v:g} V")
    if len(program_v) > MAX_LIST_SWEEP_V and listed:
        raise LimitError("a list sweep holds at most 200 voltages")
    j = compliance_ma_cm2 if compliance_ma_cm2 is not None else max_current_density_ma_cm2
    if j > max_current_density_ma_cm2:
        raise LimitError(f"compliance {j:g} mA/cm² is above limits.max_current_density_ma_cm2 = "
                         f"{max_current_density_ma_cm2:g} mA/cm²")
    return j / MA_CM2_PER_A_M2 * area_m2


def sweep_end_inferred(n_points: int, n_expected: int, last_flags: int) -> str:
    """How a sweep ended when its sweep_done was lost: from its points."""
    if n_points >= n_expected:
        return "completed"
    if last_flags & int(SampleFlags.COMPLIANCE):
        return "compliance"
    return "ended early (sweep_done lost; see the points)"


def failed_run_status(shutting_down: bool, *, resumes: bool) -> tuple[str, str]:
    """(status, end reason) of a run that did not complete: interrupted when the station stops
    (taken again, or resumed, at its next start), else failed."""
    if shutting_down:
        what = "resumes" if resumes else "taken again"
        return "interrupted", f"station stopped; {what} at its next start"
    return "failed", "error"


# -- aging: the current ----------------------------------------------------------------------------


def aging_current_a(j_ma_cm2: float, area_mm2: float, *, max_j_ma_cm2: float,
                    driver_max_a: float | None) -> float:
    """The current (A) for ``j_ma_cm2`` on a pixel of ``area_mm2``; raises LimitError naming the
    limit it would break."""
    if j_ma_cm2 <= 0:
        raise LimitError("current density must be > 0")
    if j_ma_cm2 > max_j_ma_cm2:
        raise LimitError(f"{j_ma_cm2:g} mA/cm² is above limits.max_aging_current_density_ma_cm2 = "
                         f"{max_j_ma_cm2:g}")
    i = j_ma_cm2 / MA_CM2_PER_A_M2 * area_mm2 * 1e-6
    if driver_max_a is not None and i > driver_max_a:
        raise LimitError(f"{i * 1e3:g} mA is above the aging driver's {driver_max_a * 1e3:g} mA")
    return i


# -- aging: stop conditions and alerts -------------------------------------------------------------

FAILURE_FLAGS = ((SampleFlags.SHORT, "failure_short"), (SampleFlags.OPEN, "failure_open"),
                 (SampleFlags.COMPLIANCE, "voltage_compliance"))
"""Sample flags that end a run, in order of precedence, with the run's end reason."""
LIFETIME_ALERTS = ((0.9, "t90"), (0.5, "t50"))
"""l_rel levels whose first crossing raises ``alert/<name>_reached``."""
CONFIRM_SAMPLES = 3
"""Consecutive samples at or below the stop level before the final analysis is asked."""


def failure_reason(flags_seen: int) -> tuple[SampleFlags, str] | None:
    """(the flag, the end reason) for a block whose samples' flags OR to ``flags_seen``, if one
    of them ends the run."""
    for bit, reason in FAILURE_FLAGS:
        if flags_seen & int(bit):
            return bit, reason
    return None


def runaway_limit_v(v0: float | None, runaway_v: float) -> float:
    """The voltage above which a run has run away: its first sample's + ``runaway_v``."""
    return math.inf if v0 is None else v0 + runaway_v


def lifetime_alerts_due(l_rel_min: float, alerted: Iterable[float]) -> list[tuple[float, str]]:
    """The (level, name) of each lifetime alert first due now (a NaN minimum crosses none)."""
    done = set(alerted)
    return [(lv, name) for lv, name in LIFETIME_ALERTS if lv not in done and l_rel_min <= lv]


def level_check_due(level: float | None, l_rel_min: float, below: int, n: int,
                    recheck_at: int) -> bool:
    """Is the stop level worth looking for in this block? (It is reached or a run of samples
    below it is under way, and the last look that the final analysis refused is far enough
    back.)"""
    return level is not None and (l_rel_min <= level or below > 0) and n >= recheck_at


def count_below(l_rel: Sequence[float], level: float, below: int,
                needed: int = CONFIRM_SAMPLES) -> tuple[int | None, int]:
    """Count consecutive samples at or below ``level`` (NaN breaks a run), from ``below`` already
    counted. Returns (index where the count reaches ``needed`` or None, the count there or at
    the end)."""
    for i, v in enumerate(l_rel):
        below = below + 1 if (v == v and v <= level) else 0
        if below >= needed:
            return i, below
    return None, below


def recheck_at(n: int) -> int:
    """The sample count from which the stop level is looked for again after the final analysis
    did not confirm it: 2 % of the samples later, at least 3."""
    return n + max(3, n // 50)


def duration_limit(duration_h: float | None, max_duration_h: float) -> tuple[float, str]:
    """(hours, end reason) of the run's time limit: its own duration, or the longest allowed."""
    limit_h = min(duration_h if duration_h is not None else math.inf, max_duration_h)
    return limit_h, ("duration" if duration_h is not None and limit_h == duration_h
                     else "max_duration")


def stop_alert(reason: str) -> str | None:
    """The alert a stop raises: a failed pixel or a voltage stop (compliance, runaway)."""
    if reason.startswith("failure"):
        return "pixel_failure"
    if reason.startswith("voltage"):
        return "compliance"
    return None


def still_lit(stop_reason: str | None) -> bool:
    """Is the pixel still emitting when the run stops (a spectrum can still be taken)?"""
    return not (stop_reason or "").startswith(("failure", "voltage", "stalled"))


def next_spectrum_h(t_h: float, *, usable: bool, has_spectra: bool, every_h: float,
                    interval_s: float) -> float:
    """When (run hours) the next spectrum is due after one was taken at ``t_h``: after
    ``every_h`` if it was usable; else soon again while the run has none, or in 0.1 h."""
    if usable:
        return t_h + every_h
    return t_h + (0.1 if has_spectra else min(0.1, 10 * interval_s / 3600.0))


def restart_due(active: bool, interlock_closed: bool, stop_reason: str | None) -> bool:
    """The board stopped a channel the run still wants (interlock, reboot, restart): restart it
    once the interlock is closed."""
    return not active and interlock_closed and stop_reason is None


def aging_end_reason(*, completed: bool, cancelled: bool, shutting_down: bool,
                     stop_reason: str | None) -> str:
    """Why an aging run ended: its stop condition ("stopped" without one), interrupted by the
    station stopping (resumed at its next start), cancelled, or an error."""
    if completed:
        return stop_reason or "stopped"
    if cancelled:
        return "interrupted" if shutting_down else "cancelled"
    return "error"


def unfinished_aging_status(reason: str) -> tuple[str, str] | None:
    """(status, end reason) to store at once for a run that did not complete (None: the final
    analysis completes it)."""
    if reason == "interrupted":
        return "interrupted", "station stopped; resumes at its next start"
    if reason in ("error", "cancelled"):
        return ("failed" if reason == "error" else "cancelled"), reason
    return None


# -- aging: the watchdog ---------------------------------------------------------------------------

WATCHDOG_INTERVALS = 3.0
"""An aging run is stalled when no sample came for this many intervals of board time..."""
WATCHDOG_MIN_S = 5.0
"""... and for at least this long on the host's clock (samples reach the host in batches, and a
fast simulator's board time races ahead of the host's)."""
WATCHDOG_RECOVERIES = 2
"""Recoveries (replay, re-arm) tried on a stalled run before it is ended with reason 'stalled'."""
BOARD_SILENT_ALERT_S = 30.0
"""The board not answering a run's status requests for this long raises board_not_answering."""


def is_stalled(board_t_us: float, last_sample_t_us: float, interval_us: float,
               host_age_s: float) -> bool:
    """No sample for WATCHDOG_INTERVALS intervals of board time and WATCHDOG_MIN_S of host time."""
    late = board_t_us - last_sample_t_us > WATCHDOG_INTERVALS * interval_us
    return late and host_age_s > WATCHDOG_MIN_S


def recoveries_spent(recoveries: int) -> bool:
    """A stalled run that was recovered this often without a sample in between ends."""
    return recoveries >= WATCHDOG_RECOVERIES


def recovery(missing: int) -> Literal["fetch", "rearm"]:
    """How a stalled run is recovered: fetch the records the board holds and the host lacks,
    or re-arm the channel when there are none."""
    return "fetch" if missing > 0 else "rearm"


def silent_alert_due(silent_s: float, already_alerted: bool) -> bool:
    """Once per silence, when the board has not answered for BOARD_SILENT_ALERT_S."""
    return not already_alerted and silent_s >= BOARD_SILENT_ALERT_S
