"""The stream rings' requests: ``stream_ack`` frees records, ``stream_replay`` resends them."""

from __future__ import annotations

from firmware_protocol.base import BaseMessage
from firmware_protocol.messages import (
    AgingSamples,
    Ok,
    StreamAck,
    StreamReplay,
    SweepPoints,
)
from firmware_protocol.spec import (
    ErrorCode,
    Stream,
)
from sim.board.link import HandlerResult
from sim.board.safety import Safety
from sim.board.state import AGING_PER_FRAME, SWEEP_PER_FRAME, CommandError
from sim.hardware import (
    SEQ_MASK,
    MessageRing,
)


class StreamRings(Safety):
    """Acknowledgement and replay of the AGING, SWEEP and SPECTRUM streams."""

    def _stream_arg(self, stream: int) -> Stream:
        try:
            return Stream(stream)
        except ValueError:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"stream {stream} unknown (0 AGING, 1 SWEEP, "
                               "2 SPECTRUM)") from None

    def _h_stream_ack(self, m: StreamAck) -> HandlerResult:
        try:
            s = self._stream_arg(m.stream)
        except CommandError:
            return None
        self.rings[s].ack(m.seq)
        return None

    def _h_stream_replay(self, m: StreamReplay) -> HandlerResult:
        s = self._stream_arg(m.stream)
        ring = self.rings[s]
        first, last = ring.replay_range(m.from_seq, m.to_seq)
        value = first & SEQ_MASK
        msgs: list[BaseMessage] = []
        if first <= last:
            if isinstance(ring, MessageRing):
                msgs.extend(ring.get(first, last))
                self.counters.replayed[s] += len(msgs)
            else:
                recs = ring.get(first, last)
                self.counters.replayed[s] += len(recs)
                if s == Stream.AGING:
                    msgs.extend(AgingSamples(records=recs[i : i + AGING_PER_FRAME])
                                for i in range(0, len(recs), AGING_PER_FRAME))
                else:
                    msgs.extend(SweepPoints(records=recs[i : i + SWEEP_PER_FRAME])
                                for i in range(0, len(recs), SWEEP_PER_FRAME))
        return Ok(value=value), msgs

