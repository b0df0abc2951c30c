"""The board's side of the link: frames out (replies, events, stream data), the request queue
and the dispatch of each request to its handler (:class:`BoardLink`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.base import BaseMessage
from firmware_protocol.board import BoardEndpoint, Request, Resend
from firmware_protocol.codec import FrameError, StreamDecoder, encode_frame
from firmware_protocol.messages import (
    AgingSamples,
    Error,
    Event,
    Spectrum,
    SweepPoints,
)
from firmware_protocol.spec import (
    PROTOCOL_VERSION,
    ErrorCode,
    EventCode,
    FrameFlags,
    Stream,
)
from sim.board.state import AGING_PER_FRAME, NONE_CHANNEL, SWEEP_PER_FRAME, BoardState, CommandError


@dataclass
class Deferred:
    """A request whose reply comes after ``cost_us`` of board time; ``finish`` runs then."""

    cost_us: int
    finish: Callable[[], tuple[BaseMessage, list[BaseMessage]]]


HandlerResult = BaseMessage | tuple[BaseMessage, list[BaseMessage]] | Deferred | None


@dataclass
class RunningRequest:
    req: Request
    done_us: int
    finish: Callable[[], tuple[BaseMessage, list[BaseMessage]]]



class BoardLink(BoardState):
    """Frames in and out; requests one at a time, each after its cost."""

    _HANDLERS: ClassVar[dict[type[BaseMessage], str]] = {}
    """Request type → handler method name (filled by :class:`sim.board.handlers.Handlers`)."""

    def set_link(self, up: bool) -> None:
        """The transport tells the board whether a host is there to receive frames."""
        if up == self.link_up:
            return
        self.link_up = up
        if not up:
            self.discard_frames([f for f, _ in self._frames])
            self._frames.clear()

    def discard_frames(self, frames: Sequence[bytes]) -> None:
        """Count the stream records in frames thrown away unsent (``counters.unsent``)."""
        if not frames:
            return
        dec = StreamDecoder(PROTOCOL_VERSION)
        for ev in dec.feed(b"".join(frames)):
            if isinstance(ev, FrameError):
                continue
            m = ev.message
            if isinstance(m, AgingSamples):
                self.counters.unsent[Stream.AGING] += len(m.records)
            elif isinstance(m, SweepPoints):
                self.counters.unsent[Stream.SWEEP] += len(m.records)
            elif isinstance(m, Spectrum):
                self.counters.unsent[Stream.SPECTRUM] += 1

    def take_frames(self) -> list[tuple[bytes, bool]]:
        """Frames produced since the last call, as (bytes, is_stream_data) in order."""
        self._flush_sweep()
        out, self._frames = self._frames, []
        return out

    def receive(self, data: bytes, wall_s: float) -> None:
        """Bytes from the host (any chunking). Requests run in the next :meth:`advance`."""
        self._wall_now = wall_s
        before = self.endpoint.valid_frames
        errs = self.endpoint.frame_errors
        items = self.endpoint.receive_data(data)
        n_valid = self.endpoint.valid_frames - before
        self.counters.valid_frames_in += n_valid
        self.counters.frame_errors_in += self.endpoint.frame_errors - errs
        self.counters.retries_ignored = self.endpoint.retries_ignored
        if n_valid:
            self._last_heard_wall = wall_s
            self._wd_fired = False
        for it in items:
            if isinstance(it, Resend):
                self.counters.resends += 1
                self._out(it.data, False)
            elif isinstance(it, bytes):
                self.counters.errors[ErrorCode.UNKNOWN_MESSAGE.name] += 1
                self._out(it, False)
            else:
                self._queue.append((it, self.t_us))

    def _out(self, data: bytes, stream: bool) -> None:
        self._flush_sweep()
        if self.link_up:
            self._frames.append((data, stream))
            self.counters.frames_built += 1

    def _emit(self, msg: BaseMessage, stream: bool = False) -> None:
        """An unsolicited frame (seq 0): status, event, sweep_done, stream data."""
        self._flush_sweep()
        if self.link_up:
            self._out(BoardEndpoint.unsolicited(msg), stream)

    def _event(self, code: EventCode, channel: int = NONE_CHANNEL, pixel: int = 0,
               value: float = 0.0, detail: str = "") -> None:
        self.counters.events[code.name] += 1
        self._emit(Event(code=int(code), channel=channel, pixel=pixel, t_us=self.clock_us(),
                         value=float(np.float32(value)), detail=detail[:64]))

    def _flush_sweep(self) -> None:
        if not self._sweep_buf:
            return
        recs = np.concatenate(self._sweep_buf)
        self._sweep_buf = []
        if not self.link_up:
            return
        for i in range(0, len(recs), SWEEP_PER_FRAME):
            data = BoardEndpoint.unsolicited(SweepPoints(records=recs[i : i + SWEEP_PER_FRAME]))
            self._frames.append((data, True))
            self.counters.frames_built += 1

    def _send_aging(self, recs: NDArray[np.void]) -> None:
        if not self.link_up:
            return
        self._flush_sweep()
        for i in range(0, len(recs), AGING_PER_FRAME):
            data = encode_frame(AgingSamples(records=recs[i : i + AGING_PER_FRAME]), 0, FrameFlags.STREAM)
            self._frames.append((data, True))
            self.counters.frames_built += 1

    def _cmd_step(self) -> None:
        t = self.t_us
        if self._running is not None:
            run = self._running
            if run.done_us > t:
                return
            self._running = None
            self._busy_until = t
            reply, extras = run.finish()
            self._send_reply(run.req, reply, extras)
            return
        if not self._queue:
            return
        req, _arrival = self._queue.popleft()
        name = req.message.NAME
        self.counters.requests[name] += 1
        try:
            result = self._execute(req)
        except CommandError as e:
            self.counters.errors[e.code.name] += 1
            self._send_reply(req, Error(code=int(e.code), ref_msg_id=req.message.MSG_ID,
                                        detail=e.detail[:96]), [])
            return
        self.counters.executed[name] += 1
        if isinstance(result, Deferred):
            if result.cost_us <= 0:
                reply, extras = result.finish()
                self._send_reply(req, reply, extras)
            else:
                self._running = RunningRequest(req, t + result.cost_us, result.finish)
            return
        if result is None:
            self.endpoint.in_flight.discard(req.seq)
            return
        if isinstance(result, tuple):
            self._send_reply(req, result[0], result[1])
        else:
            self._send_reply(req, result, [])

    def _send_reply(self, req: Request, reply: BaseMessage, extras: Sequence[BaseMessage]) -> None:
        self.endpoint.in_flight.discard(req.seq)
        self._out(self.endpoint.respond(req.seq, reply), False)
        for m in extras:
            stream = isinstance(m, AgingSamples | SweepPoints | Spectrum)
            self._emit(m, stream=stream)

    def _execute(self, req: Request) -> HandlerResult:
        m = req.message
        name = self._HANDLERS.get(type(m))
        if name is None:
            raise CommandError(ErrorCode.UNKNOWN_MESSAGE, f"{m.NAME} is not handled by this board")
        handler: Callable[[BaseMessage], HandlerResult] = getattr(self, name)
        return handler(m)
