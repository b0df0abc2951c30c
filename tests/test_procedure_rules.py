"""The procedures' stop and alert rules on their own: inputs → decision.

Every expected value is worked out by hand (in the comment beside it) from the rule as
documented, not taken from the code; the end-to-end behaviour is in test_station_procedures.py
and test_station_faults.py.
"""

from __future__ import annotations

import math

import pytest

from firmware_protocol.spec import SampleFlags
from station.errors import LimitError
from station.procedures import rules
from station.procedures.search import next_current, on_target

# -- sweep -----------------------------------------------------------------------------------------

PROGRAM_0_6 = [0.1 * i for i in range(61)]  # 0 .. 6 V


def compliance(program: list[float], **kw: object) -> float:
    args: dict[str, object] = dict(listed=False, area_m2=4e-6, compliance_ma_cm2=None,
                                   max_voltage_v=10.0, board_max_voltage_v=None,
                                   max_current_density_ma_cm2=1000.0)
    args.update(kw)
    return rules.sweep_compliance_a(program, **args)


def test_sweep_compliance_is_the_station_limit_unless_asked_lower():
    # 1000 mA/cm² = 1 A/cm² = 1e4 A/m²; × 4 mm² (4e-6 m²) = 40 mA
    assert compliance(PROGRAM_0_6) == pytest.approx(0.04, rel=1e-12)
    # 50 mA/cm² = 500 A/m²; × 4e-6 m² = 2 mA
    assert compliance(PROGRAM_0_6, compliance_ma_cm2=50.0) == pytest.approx(2e-3, rel=1e-12)


@pytest.mark.parametrize(("program", "kw", "match"), [
    ([0.0, 12.0], {}, r"12 V, above the station limit limits.max_voltage_v = 10 V"),
    ([0.0, -11.0], {}, r"11 V, above the station limit"),  # |V|: a reverse sweep too
    (PROGRAM_0_6, {"board_max_voltage_v": 5.0}, r"6 V, above the board's 5 V"),
    ([1.0] * 201, {"listed": True}, r"at most 200 voltages"),
    (PROGRAM_0_6, {"compliance_ma_cm2": 1500.0}, r"compliance 1500 mA/cm² is above"),
])
def test_sweep_limits_are_refused_naming_the_limit(program, kw, match):
    with pytest.raises(LimitError, match=match):
        compliance(program, **kw)


def test_sweep_limits_at_the_limit_are_allowed():
    assert compliance([0.0, 10.0]) > 0  # exactly the station's 10 V
    assert compliance([0.0, 5.0], board_max_voltage_v=5.0) > 0
    assert compliance([1.0] * 200, listed=True) > 0  # 200 listed voltages
    assert compliance([0.01 * i for i in range(300)]) > 0  # 300 points of a range sweep


@pytest.mark.parametrize(("n", "flags", "expected"), [
    (121, 0, "completed"),  # every point came
    (130, 0, "completed"),
    (50, int(SampleFlags.COMPLIANCE), "compliance"),  # stopped short, at compliance
    (50, 0, "ended early (sweep_done lost; see the points)"),
])
def test_a_sweep_whose_end_was_lost_ends_as_its_points_say(n, flags, expected):
    assert rules.sweep_end_inferred(n, 121, flags) == expected


def test_a_run_that_did_not_complete():
    assert rules.failed_run_status(True, resumes=False) == (
        "interrupted", "station stopped; taken again at its next start")
    assert rules.failed_run_status(True, resumes=True) == (
        "interrupted", "station stopped; resumes at its next start")
    assert rules.failed_run_status(False, resumes=False) == ("failed", "error")


# -- aging: the current ----------------------------------------------------------------------------


def test_aging_current_from_current_density():
    # 2 mA/cm² = 20 A/m²; × 4 mm² (4e-6 m²) = 80 µA
    i = rules.aging_current_a(2.0, 4.0, max_j_ma_cm2=100.0, driver_max_a=None)
    assert i == pytest.approx(8e-5, rel=1e-12)
    # 100 mA/cm² on 4 mm² = 4 mA: the driver's 4 mA is enough
    assert rules.aging_current_a(100.0, 4.0, max_j_ma_cm2=100.0, driver_max_a=4e-3 * (1 + 1e-12)) \
        == pytest.approx(4e-3, rel=1e-12)


@pytest.mark.parametrize(("j", "driver_max_a", "match"), [
    (0.0, None, "must be > 0"),
    (-1.0, None, "must be > 0"),
    (150.0, None, r"150 mA/cm² is above limits.max_aging_current_density_ma_cm2 = 100"),
    (50.0, 1e-3, r"2 mA is above the aging driver's 1 mA"),  # 50 mA/cm² × 4 mm² = 2 mA
])
def test_aging_current_refused_naming_the_limit(j, driver_max_a, match):
    with pytest.raises(LimitError, match=match):
        rules.aging_current_a(j, 4.0, max_j_ma_cm2=100.0, driver_max_a=driver_max_a)


# -- aging: stop conditions and alerts -------------------------------------------------------------


@pytest.mark.parametrize(("flags", "expected"), [
    (0, None),
    (SampleFlags.STOPPED, None),  # a pause, not a failure
    (SampleFlags.COMPLIANCE, (SampleFlags.COMPLIANCE, "voltage_compliance")),
    (SampleFlags.OPEN | SampleFlags.COMPLIANCE, (SampleFlags.OPEN, "failure_open")),
    (SampleFlags.SHORT | SampleFlags.OPEN | SampleFlags.COMPLIANCE,
     (SampleFlags.SHORT, "failure_short")),  # a short outranks the rest
])
def test_failure_flags_end_the_run_in_order_of_precedence(flags, expected):
    assert rules.failure_reason(int(flags)) == expected


def test_voltage_runaway_limit():
    assert rules.runaway_limit_v(4.5, 3.0) == 7.5  # the first sample's voltage + 3 V
    assert rules.runaway_limit_v(None, 3.0) == math.inf  # no sample yet: never


@pytest.mark.parametrize(("l_rel_min", "alerted", "expected"), [
    (0.95, [], []),
    (0.9, [], [(0.9, "t90")]),  # at the level counts
    (0.85, [], [(0.9, "t90")]),
    (0.4, [], [(0.9, "t90"), (0.5, "t50")]),  # both in one block
    (0.4, [0.9], [(0.5, "t50")]),  # each once
    (0.4, [0.9, 0.5], []),
    (math.nan, [], []),  # no L0 yet
])
def test_lifetime_alerts_once_each(l_rel_min, alerted, expected):
    assert rules.lifetime_alerts_due(l_rel_min, alerted) == expected


@pytest.mark.parametrize(("level", "l_rel_min", "below", "n", "recheck", "expected"), [
    (None, 0.1, 5, 100, 0, False),  # a duration run has no stop level
    (0.5, 0.6, 0, 100, 0, False),  # not reached, no run of samples under way
    (0.5, 0.5, 0, 100, 0, True),  # reached in this block
    (0.5, 0.6, 2, 100, 0, True),  # a run of samples below it from the last block
    (0.5, math.nan, 0, 100, 0, False),
    (0.5, 0.4, 0, 100, 101, False),  # the final analysis refused it: not before 101 samples
    (0.5, 0.4, 0, 101, 101, True),
])
def test_when_the_stop_level_is_looked_for(level, l_rel_min, below, n, recheck, expected):
    assert rules.level_check_due(level, l_rel_min, below, n, recheck) is expected


@pytest.mark.parametrize(("l_rel", "below", "expected"), [
    ([0.6, 0.5, 0.4, 0.3], 0, (3, 3)),  # 0, 1, 2, 3: the third in a row at index 3
    ([0.4, 0.6, 0.4, 0.4], 0, (None, 2)),  # 1, 0, 1, 2
    ([0.4, math.nan, 0.4, 0.4], 0, (None, 2)),  # NaN breaks the run
    ([0.4], 2, (0, 3)),  # two counted in the last block, the third now
    ([0.6], 2, (None, 0)),
    ([], 1, (None, 1)),
])
def test_three_samples_in_a_row_at_or_below_the_level(l_rel, below, expected):
    assert rules.count_below(l_rel, 0.5, below) == expected


@pytest.mark.parametrize(("n", "expected"), [
    (0, 3), (100, 103),  # 100 // 50 = 2 < 3
    (149, 152), (150, 153),  # 150 // 50 = 3
    (1000, 1020),  # 2 %
])
def test_recheck_after_a_refusal(n, expected):
    assert rules.recheck_at(n) == expected


@pytest.mark.parametrize(("duration_h", "max_h", "expected"), [
    (None, 10000.0, (10000.0, "max_duration")),
    (50.0, 10000.0, (50.0, "duration")),
    (20000.0, 10000.0, (10000.0, "max_duration")),  # never beyond the longest allowed
    (10000.0, 10000.0, (10000.0, "duration")),
])
def test_time_limit(duration_h, max_h, expected):
    assert rules.duration_limit(duration_h, max_h) == expected


@pytest.mark.parametrize(("reason", "alert", "lit"), [
    ("failure_short", "pixel_failure", False),
    ("failure_open", "pixel_failure", False),
    ("voltage_compliance", "compliance", False),
    ("voltage_runaway", "compliance", False),
    ("stalled", None, False),
    ("reached_t50", None, True),
    ("duration", None, True),
    (None, None, True),
])
def test_stop_alerts_and_whether_the_pixel_still_emits(reason, alert, lit):
    if reason is not None:
        assert rules.stop_alert(reason) == alert
    assert rules.still_lit(reason) is lit


@pytest.mark.parametrize(("usable", "has_spectra", "interval_s", "expected"), [
    (True, True, 60.0, 26.0),  # every 24 h
    (False, True, 60.0, 2.1),  # unusable: in 0.1 h
    (False, False, 60.0, 2.1),  # none yet: 10 intervals = 600 s = 0.167 h, so 0.1 h
    (False, False, 1.0, 2.0 + 10.0 / 3600.0),  # none yet: 10 intervals = 10 s
])
def test_next_spectrum(usable, has_spectra, interval_s, expected):
    got = rules.next_spectrum_h(2.0, usable=usable, has_spectra=has_spectra, every_h=24.0,
                                interval_s=interval_s)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("active", "interlock_closed", "stop_reason", "expected"), [
    (False, True, None, True),  # stopped by the board, interlock closed: on again
    (True, True, None, False),
    (False, False, None, False),  # the interlock is open: wait
    (False, True, "duration", False),  # the run is ending
])
def test_restart_of_a_channel_the_board_stopped(active, interlock_closed, stop_reason, expected):
    assert rules.restart_due(active, interlock_closed, stop_reason) is expected


@pytest.mark.parametrize(("completed", "cancelled", "shutting_down", "stop", "reason", "status"), [
    (True, False, False, "reached_t50", "reached_t50", None),
    (True, False, True, None, "stopped", None),
    (False, True, True, None, "interrupted",
     ("interrupted", "station stopped; resumes at its next start")),
    (False, True, False, None, "cancelled", ("cancelled", "cancelled")),
    (False, False, False, "duration", "error", ("failed", "error")),
])
def test_how_an_aging_run_ended(completed, cancelled, shutting_down, stop, reason, status):
    got = rules.aging_end_reason(completed=completed, cancelled=cancelled,
                                 shutting_down=shutting_down, stop_reason=stop)
    assert got == reason
    assert rules.unfinished_aging_status(got) == status


# -- aging: the watchdog ---------------------------------------------------------------------------


@pytest.mark.parametrize(("board_t_us", "host_age_s", "expected"), [
    (14_000_000, 6.0, True),  # 4 s of board time > 3 intervals of 1 s; 6 s > 5 s of host time
    (13_000_000, 6.0, False),  # exactly 3 intervals: not late
    (14_000_000, 5.0, False),  # exactly 5 s on the host: not yet
    (100_000_000, 1.0, False),  # a fast board clock alone is not a stall
])
def test_stalled(board_t_us, host_age_s, expected):
    assert rules.is_stalled(board_t_us, 10_000_000, 1_000_000, host_age_s) is expected


def test_stall_recovery():
    assert [rules.recoveries_spent(n) for n in (0, 1, 2, 3)] == [False, False, True, True]
    assert rules.recovery(0) == "rearm"  # nothing to fetch: the channel is re-armed
    assert rules.recovery(3) == "fetch"


@pytest.mark.parametrize(("silent_s", "alerted", "expected"), [
    (29.9, False, False), (30.0, False, True), (120.0, False, True), (120.0, True, False),
])
def test_board_not_answering_once_per_silence(silent_s, alerted, expected):
    assert rules.silent_alert_due(silent_s, alerted) is expected


# -- the luminance search --------------------------------------------------------------------------


@pytest.mark.parametrize(("hist", "i_max", "expected"), [
    ([(1e-3, 50.0)], 1.0, 2e-3),  # proportional: 1 mA × 100/50
    ([(1e-3, 0.0)], 1.0, 4e-3),  # no light yet: × 4
    ([(1e-3, 0.0)], 3e-3, 3e-3),  # never above i_max
    ([(1e-3, 1e6)], 1.0, 1e-4),  # never below ÷ 10
    ([(1e-3, 0.1)], 1.0, 1e-2),  # never above × 10
    # secant in log-log: slope log(40/10)/log(2) = 2, so 2 mA × (100/40)^(1/2) = 3.1623 mA
    ([(1e-3, 10.0), (2e-3, 40.0)], 1.0, 2e-3 * math.sqrt(2.5)),
    # slope log(100)/log(2) = 6.6 is clamped to 3: 2 mA × (100/1000)^(1/3) = 0.92832 mA
    ([(1e-3, 10.0), (2e-3, 1000.0)], 1.0, 2e-3 * 0.1 ** (1 / 3)),
    # equal luminances: slope 1, so 2 mA × 100/40 = 5 mA
    ([(1e-3, 40.0), (2e-3, 40.0)], 1.0, 5e-3),
])
def test_luminance_search_step(hist, i_max, expected):
    assert next_current(hist, 100.0, i_max) == pytest.approx(expected, rel=1e-9)


def test_luminance_search_ends_within_2_percent():
    assert on_target(101.9, 100.0) and on_target(98.1, 100.0)
    assert not on_target(102.1, 100.0) and not on_target(0.0, 100.0)
