"""The daemon's alert policy on its own (station/alerts.py): which link events raise which
alert, and the sink-backlog alert raised once and cleared once, without flapping. End to end
(the daemon, a real broker and database) in tests/test_e2e_telemetry.py."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_protocol.connection import Unsolicited
from firmware_protocol.messages import Event, Ok
from firmware_protocol.spec import EventCode
from station.alerts import BacklogPolicy, link_alert
from station.link import LinkState


def test_the_link_going_down_raises_link_lost_with_its_reason_and_coming_up_nothing():
    assert link_alert(LinkState(False, "EOF from the board")) == (
        "alert/link_lost", {"reason": "EOF from the board"})
    assert link_alert(LinkState(True, "link up")) is None


@pytest.mark.parametrize(("code", "expected"), [
    (EventCode.INTERLOCK_OPEN, ("alert/interlock", {"state": "open", "t_us": 1234})),
    (EventCode.INTERLOCK_CLOSED, ("alert/interlock", {"state": "closed", "t_us": 1234})),
    (EventCode.PIXEL_SHORT, ("alert/pixel_failure", {"pixel": 3, "detail": "d"})),
    (EventCode.PIXEL_OPEN, ("alert/pixel_failure", {"pixel": 3, "detail": "d"})),
    (EventCode.COMPLIANCE, ("alert/compliance", {"pixel": 3, "detail": "d"})),
    (EventCode.CHANNEL_STOPPED, None),
    (EventCode.WATCHDOG_EXPIRED, None),
    (EventCode.OVER_TEMPERATURE, None),
])
def test_board_events_map_to_their_alert(code: EventCode, expected: Any):
    ev = Unsolicited(Event(code=int(code), pixel=3, t_us=1234, detail="d"))
    assert link_alert(ev) == expected


def test_other_link_events_raise_nothing():
    assert link_alert(Unsolicited(Ok())) is None
    assert link_alert(Event(code=int(EventCode.INTERLOCK_OPEN))) is None  # not as Unsolicited
    assert link_alert("anything") is None


def health(behind: int, *, connected: bool = False, ack_age_s: float | None = None) -> dict[str, Any]:
    return {"rows_behind": behind, "connected": connected, "last_ack_age_s": ack_age_s,
            "seconds_behind": 7.5, "last_error": None if connected else "refused"}


def test_a_stalled_sink_over_the_limit_raises_once_and_clears_once_at_half():
    p = BacklogPolicy(limit_rows=100)
    assert p.check({"mqtt": health(100)}) == []  # at the limit: not over it
    raised = p.check({"mqtt": health(101)})
    assert raised == [("alert/sink_backlog", {
        "sink": "mqtt", "state": "raised", "rows_behind": 101, "threshold_rows": 100,
        "seconds_behind": 7.5, "connected": False, "last_error": "refused"})]
    assert p.check({"mqtt": health(5000)}) == []  # raised once
    assert p.check({"mqtt": health(51, connected=True, ack_age_s=0.1)}) == []  # no flapping
    cleared = p.check({"mqtt": health(50, connected=True, ack_age_s=0.1)})
    assert [(k, d["state"], d["rows_behind"]) for k, d in cleared] == [
        ("alert/sink_backlog", "cleared", 50)]
    assert p.check({"mqtt": health(0, connected=True, ack_age_s=0.1)}) == []
    assert p.check({"mqtt": health(101)})[0][1]["state"] == "raised"  # and again later


def test_a_connected_sink_delivering_a_burst_is_not_an_alert_until_its_acks_stop():
    p = BacklogPolicy(limit_rows=10, busy_ack_age_s=10.0)
    assert p.check({"influx": health(1000, connected=True, ack_age_s=2.0)}) == []
    assert p.check({"influx": health(1000, connected=True, ack_age_s=None)})[0][1]["state"] == "raised"
    q = BacklogPolicy(limit_rows=10, busy_ack_age_s=10.0)
    assert q.check({"influx": health(1000, connected=True, ack_age_s=10.5)})[0][1]["state"] == "raised"


def test_each_sink_is_judged_on_its_own():
    p = BacklogPolicy(limit_rows=10)
    out = p.check({"mqtt": health(11), "influx": health(3)})
    assert [d["sink"] for _, d in out] == ["mqtt"]
    out = p.check({"mqtt": health(11), "influx": health(11)})
    assert [d["sink"] for _, d in out] == ["influx"]
    assert p.raised == {"mqtt", "influx"}
    assert p.check({"mqtt": {"rows_behind": None}}) == [  # a sink that reports no backlog: 0
        ("alert/sink_backlog", {"sink": "mqtt", "state": "cleared", "rows_behind": 0,
                                "threshold_rows": 10, "seconds_behind": None, "connected": None,
                                "last_error": None})]
