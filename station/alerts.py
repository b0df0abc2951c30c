"""The daemon's alert policy: which board and sink conditions become an ``alert/...`` event.

Pure: these functions and classes decide, they do not publish. The daemon
(:mod:`station.daemon`) hands what they return to ``publish_event`` (the store), from which
the MQTT sink delivers them as ``{prefix}/{station}/event/alert/...`` (``docs/mqtt.md``).

- :func:`link_alert`: a link event (the link went down, the board reported an interlock, a
  failed pixel or compliance) → the alert it raises, if any;
- :class:`BacklogPolicy`: ``alert/sink_backlog`` once when a sink falls behind and stalls,
  once ("cleared") when it has caught up, without flapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from firmware_protocol.connection import Unsolicited
from firmware_protocol.messages import Event
from firmware_protocol.spec import EventCode
from station.link import LinkState

Alert = tuple[str, dict[str, Any]]
"""An alert to publish: ``(kind, payload)``, e.g. ``("alert/link_lost", {"reason": ...})``."""

_INTERLOCK_STATES: dict[int, str] = {EventCode.INTERLOCK_OPEN: "open", EventCode.INTERLOCK_CLOSED: "closed"}
_PIXEL_ALERTS: dict[int, str] = {EventCode.PIXEL_SHORT: "alert/pixel_failure",
                                  EventCode.PIXEL_OPEN: "alert/pixel_failure",
                                  EventCode.COMPLIANCE: "alert/compliance"}


def link_alert(ev: object) -> Alert | None:
    """The alert a link listener's event raises (None for every other event):

    - the link going down: ``alert/link_lost`` ``{reason}``;
    - the board's interlock events: ``alert/interlock`` ``{state: open|closed, t_us}``;
    - a shorted or open pixel: ``alert/pixel_failure`` ``{pixel, detail}``;
    - compliance reached: ``alert/compliance`` ``{pixel, detail}``.
    """
    if isinstance(ev, LinkState):
        return None if ev.up else ("alert/link_lost", {"reason": ev.reason})
    if not (isinstance(ev, Unsolicited) and isinstance(ev.message, Event)):
        return None
    msg = ev.message
    state = _INTERLOCK_STATES.get(msg.code)
    if state is not None:
        return "alert/interlock", {"state": state, "t_us": msg.t_us}
    kind = _PIXEL_ALERTS.get(msg.code)
    if kind is not None:
        return kind, {"pixel": msg.pixel, "detail": msg.detail}
    return None


@dataclass
class BacklogPolicy:
    """``alert/sink_backlog`` for the sinks' health (``SinkRunner.health()``).

    Raised once when a sink is more than ``limit_rows`` rows behind *and* stalled
    (disconnected, or its last acknowledgement older than ``busy_ack_age_s``: a connected sink
    delivering a burst, e.g. the revisions of a run that ended, is not an alert); cleared once
    when it is back to ``limit_rows // 2`` rows or fewer (no flapping in between)."""

    limit_rows: int
    busy_ack_age_s: float = 10.0
    raised: set[str] = field(default_factory=set)

    def _stalled(self, h: Mapping[str, Any]) -> bool:
        ack_age = h.get("last_ack_age_s")
        return not h.get("connected") or ack_age is None or ack_age > self.busy_ack_age_s

    def check(self, health: Mapping[str, Mapping[str, Any]]) -> list[Alert]:
        """The alerts (usually none) that this health snapshot raises or clears."""
        out: list[Alert] = []
        limit = self.limit_rows
        for name, h in health.items():
            behind = int(h.get("rows_behind") or 0)
            if name not in self.raised and behind > limit and self._stalled(h):
                state = "raised"
                self.raised.add(name)
            elif name in self.raised and behind <= limit // 2:
                state = "cleared"
                self.raised.discard(name)
            else:
                continue
            out.append(("alert/sink_backlog", {
                "sink": name, "state": state, "rows_behind": behind, "threshold_rows": limit,
                "seconds_behind": h.get("seconds_behind"), "connected": h.get("connected"),
                "last_error": h.get("last_error")}))
        return out
