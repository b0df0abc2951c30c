"""The contract between the station host and the LED test board firmware.

Pure: no asyncio, no serial, no clock. See ``docs/protocol.md`` (generated from
:mod:`firmware_protocol.spec`).
"""

from . import messages
from .board import BoardEndpoint, Request, Resend
from .codec import (
    DecodeError,
    EncodeError,
    FrameError,
    FrameReceived,
    ProtocolError,
    StreamDecoder,
    decode_payload,
    encode_frame,
    encode_payload,
)
from .connection import Connection, ConnState, SeqTracker
from .spec import MAX_PAYLOAD, PROTOCOL_VERSION, SPEC_HASH

__all__ = [
    "MAX_PAYLOAD", "PROTOCOL_VERSION", "SPEC_HASH", "BoardEndpoint", "ConnState", "Connection",
    "DecodeError", "EncodeError", "FrameError", "FrameReceived", "ProtocolError", "Request",
    "Resend", "SeqTracker", "StreamDecoder", "decode_payload", "encode_frame", "encode_payload",
    "messages",
]
