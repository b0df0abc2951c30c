"""The board's protocol endpoint: framing, reply cache, retries, unknown message ids."""

from __future__ import annotations

from firmware_protocol.board import BoardEndpoint, Request, Resend
from firmware_protocol.codec import FrameError
from firmware_protocol.messages import (
    Error,
)
from firmware_protocol.spec import (
    MESSAGES_BY_ID,
    ErrorCode,
    FrameFlags,
)


class SimEndpoint(BoardEndpoint):
    """:class:`BoardEndpoint` plus what the firmware needs around it.

    - a request whose seq is still executing is ignored (its reply is on the way), so a retry
      of a long request never runs it twice;
    - a frame with an unknown message id gets an unsolicited ``error`` UNKNOWN_MESSAGE;
    - counts valid frames (the watchdog's notion of "the host spoke").
    """

    def __init__(self, cache_size: int = 64) -> None:
        super().__init__(cache_size)
        self.in_flight: set[int] = set()
        self.valid_frames = 0
        self.retries_ignored = 0

    def receive_data(self, data: bytes) -> list[Request | Resend | bytes]:
        out: list[Request | Resend | bytes] = []
        for ev in self.decoder.feed(data):
            if isinstance(ev, FrameError):
                self.frame_errors += 1
                if ev.reason == "unknown_id":
                    mid = ev.msg_id or 0
                    out.append(self.unsolicited(Error(
                        code=int(ErrorCode.UNKNOWN_MESSAGE), ref_msg_id=mid,
                        detail=f"unknown message id 0x{mid:02X}")))
                continue
            self.valid_frames += 1
            h, msg = ev.header, ev.message
            if MESSAGES_BY_ID[h.msg_id].direction != "host_to_board":
                if h.seq:
                    out.append(self.respond(h.seq, Error(
                        code=int(ErrorCode.UNKNOWN_MESSAGE), ref_msg_id=h.msg_id,
                        detail=f"{msg.NAME} is not a host-to-board message")))
                continue
            if h.seq and h.seq in self.in_flight:
                self.retries_ignored += 1
                continue
            if h.flags & FrameFlags.RETRY and h.seq in self._cache:
                out.append(Resend(self._cache[h.seq]))
                continue
            if h.seq:
                self.in_flight.add(h.seq)
            out.append(Request(h.seq, h.flags, msg))
        return out

    def reset(self) -> None:
        super().reset()
        self.in_flight.clear()

