"""Board-side endpoint, sans-I/O: what firmware (or the simulator) runs on its end of the link.

Feed bytes with :meth:`BoardEndpoint.receive_data`; it returns :class:`Request` items to
execute and, for retransmitted requests it has already answered, the cached reply bytes to
send again (so a repeated command is never executed twice).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .base import BaseMessage
from .codec import FrameError, StreamDecoder, encode_frame
from .messages import Error
from .spec import MESSAGES_BY_ID, ErrorCode, FrameFlags


@dataclass(frozen=True)
class Request:
    seq: int
    flags: int
    message: BaseMessage


@dataclass(frozen=True)
class Resend:
    """A retried request already answered: send these bytes again."""

    data: bytes


class BoardEndpoint:
    def __init__(self, cache_size: int = 64) -> None:
        self.decoder = StreamDecoder()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache_size
        self.frame_errors = 0

    def receive_data(self, data: bytes) -> list[Request | Resend | bytes]:
        """Returns requests to run, cached replies to resend, and ready-made error frames."""
        out: list[Request | Resend | bytes] = []
        for ev in self.decoder.feed(data):
            if isinstance(ev, FrameError):
                self.frame_errors += 1
                continue
            h, msg = ev.header, ev.message
            spec = MESSAGES_BY_ID[h.msg_id]
            if spec.direction != "host_to_board":
                if h.seq:
                    out.append(self.respond(h.seq, Error(
                        code=ErrorCode.UNKNOWN_MESSAGE, ref_msg_id=h.msg_id,
                        detail=f"{msg.NAME} is not a host-to-board message")))
                continue
            if h.flags & FrameFlags.RETRY and h.seq in self._cache:
                out.append(Resend(self._cache[h.seq]))
                continue
            out.append(Request(h.seq, h.flags, msg))
        return out

    def respond(self, seq: int, msg: BaseMessage) -> bytes:
        data = encode_frame(msg, seq, FrameFlags.RESPONSE)
        if seq:
            self._cache[seq] = data
            self._cache.move_to_end(seq)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data

    def error(self, req: Request, code: ErrorCode, detail: str) -> bytes:
        return self.respond(req.seq, Error(code=int(code), ref_msg_id=req.message.MSG_ID,
                                           detail=detail[:96]))

    @staticmethod
    def unsolicited(msg: BaseMessage) -> bytes:
        return encode_frame(msg, 0, FrameFlags.STREAM)

    def reset(self) -> None:
        """Forget the reply cache (a reboot)."""
        self._cache.clear()
        self.decoder = StreamDecoder()
