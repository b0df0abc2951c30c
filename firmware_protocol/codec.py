"""Sans-I/O codec: payloads, frames (COBS + header + CRC-32) and a streaming decoder.

Frame on the wire::

    COBS( version u8 | msg_id u8 | flags u8 | seq u16 | payload_len u16 | payload | crc32 u32 ) 0x00

The CRC-32 (IEEE 802.3, zlib's) covers header and payload and starts from the message's
CRC seed (see :func:`firmware_protocol.spec.message_crc_seed`), so a frame from a board built
from another spec fails its CRC instead of being misread. Everything is little-endian.

No I/O, no clock: :class:`StreamDecoder` is fed bytes and hands back events.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from cobs import cobs

from .base import BaseMessage
from .messages import MESSAGE_CLASSES, MESSAGE_CLASSES_BY_NAME, RECORD_DTYPES
from .spec import (
    CRC_SEEDS,
    CRC_SIZE,
    FROZEN_HEADER_VERSION,
    FROZEN_IDS,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MESSAGES_BY_ID,
    PROTOCOL_VERSION,
    SCALAR_TYPES,
    Field,
)

_HEADER = struct.Struct("<BBBHH")
_CRC = struct.Struct("<I")
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2  # COBS overhead + delimiter


class ProtocolError(Exception):
    """The protocol's one error type: bad frames, bad payloads, bad messages."""


class DecodeError(ProtocolError):
    pass


class EncodeError(ProtocolError):
    pass


# --- payload codec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How to (de)serialise one message's fields: runs of scalars become one struct each;
    every extension field is a step of its own, from step ``n_base`` on."""

    steps: tuple[tuple[str, Any, tuple[Field, ...]], ...]
    n_base: int


def make_plan(fields: tuple[Field, ...]) -> Plan:
    """The plan of a field list (of this spec's messages, or of another version of one)."""
    steps: list[tuple[str, Any, tuple[Field, ...]]] = []
    run: list[Field] = []
    n_base: int | None = None

    def flush() -> None:
        if run:
            fmt = "<" + "".join(SCALAR_TYPES[f.type][0] for f in run)
            steps.append(("scalars", struct.Struct(fmt), tuple(run)))
            run.clear()

    for f in fields:
        if f.extension and n_base is None:
            flush()
            n_base = len(steps)
        if f.is_scalar:
            run.append(f)
            if f.extension:
                flush()
            continue
        flush()
        if f.type == "str":
            steps.append(("str", None, (f,)))
        elif f.type == "records":
            steps.append(("records", RECORD_DTYPES[f.record], (f,)))
        else:
            steps.append(("array", np.dtype("<" + SCALAR_TYPES[f.elem_type][0]), (f,)))
    flush()
    return Plan(tuple(steps), len(steps) if n_base is None else n_base)


_PLANS: dict[int, Plan] = {mid: make_plan(m.fields) for mid, m in MESSAGES_BY_ID.items()}
_U16 = struct.Struct("<H")


def encode_payload(msg: BaseMessage) -> bytes:
    """Serialise a message's fields. Raises :class:`EncodeError` on out-of-range values."""
    return encode_fields(_PLANS[msg.MSG_ID], msg, msg.NAME)


def encode_fields(plan: Plan, msg: Any, name: str) -> bytes:
    """Serialise the fields of ``plan`` taken from the attributes of ``msg`` (every field,
    extensions included: a peer that does not know them skips them)."""
    parts: list[bytes] = []
    for kind, codec, fields in plan.steps:
        try:
            if kind == "scalars":
                parts.append(codec.pack(*(getattr(msg, f.name) for f in fields)))
                continue
            f = fields[0]
            value = getattr(msg, f.name)
            if kind == "str":
                raw = value.encode("utf-8")
                if b"\x00" in raw:
                    raise EncodeError(f"{name}.{f.name}: strings may not contain NUL")
                if len(raw) > f.max_len:
                    raise EncodeError(f"{name}.{f.name}: {len(raw)} bytes > max {f.max_len}")
                parts.append(bytes([len(raw)]) + raw)
            elif kind == "records":
                arr = np.asarray(value)
                if arr.dtype != codec:
                    arr = _coerce_records(arr, codec, f"{name}.{f.name}")
                if arr.ndim != 1 or len(arr) > f.max_len:
                    raise EncodeError(f"{name}.{f.name}: {len(arr)} records > max {f.max_len}")
                parts.append(_U16.pack(len(arr)) + arr.tobytes())
            else:
                arr = np.asarray(value, dtype=codec)
                if arr.ndim != 1 or len(arr) > f.max_len:
                    raise EncodeError(f"{name}.{f.name}: {len(arr)} items > max {f.max_len}")
                if codec.kind in "iu" and len(value) and any(int(v) != v for v in value):
                    raise EncodeError(f"{name}.{f.name}: integers required")
                parts.append(_U16.pack(len(arr)) + arr.tobytes())
        except (struct.error, OverflowError, ValueError, TypeError, AttributeError) as e:
            raise EncodeError(f"{name}: cannot encode: {e}") from e
    return b"".join(parts)


def _coerce_records(arr: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    if arr.dtype.names is None or set(arr.dtype.names) != set(dtype.names or ()):
        raise EncodeError(f"{where}: records must have fields {dtype.names}")
    out = np.zeros(arr.shape, dtype=dtype)
    for n in dtype.names or ():
        out[n] = arr[n]
    return out


def decode_payload(msg_id: int, payload: bytes | memoryview) -> BaseMessage:
    """Parse a payload into its message. Raises :class:`DecodeError` on any inconsistency."""
    cls = MESSAGE_CLASSES.get(msg_id)
    if cls is None:
        raise DecodeError(f"unknown message id 0x{msg_id:02X}")
    return cls(**decode_fields(_PLANS[msg_id], payload, cls.NAME))


def _decode_str(buf: memoryview, off: int, f: Field, name: str) -> tuple[str, int]:
    """A ``str`` field at ``off``: its value and the offset after it."""
    if off + 1 > len(buf):
        raise DecodeError(f"{name}.{f.name}: payload truncated")
    n = buf[off]
    off += 1
    if n > f.max_len or off + n > len(buf):
        raise DecodeError(f"{name}.{f.name}: bad string length {n}")
    raw = bytes(buf[off : off + n])
    if b"\x00" in raw:
        raise DecodeError(f"{name}.{f.name}: NUL inside a string")
    try:
        return raw.decode("utf-8"), off + n
    except UnicodeDecodeError as e:
        raise DecodeError(f"{name}.{f.name}: invalid UTF-8") from e


def _decode_array(buf: memoryview, off: int, kind: str, codec: Any, f: Field,
                  name: str) -> tuple[Any, int]:
    """A counted array (``records``: a structured array; else a tuple) at ``off``."""
    if off + 2 > len(buf):
        raise DecodeError(f"{name}.{f.name}: payload truncated")
    (n,) = _U16.unpack_from(buf, off)
    off += 2
    size = n * codec.itemsize
    if n > f.max_len or off + size > len(buf):
        raise DecodeError(f"{name}.{f.name}: bad element count {n}")
    arr = np.frombuffer(buf, dtype=codec, count=n, offset=off)
    off += size
    if kind == "records":
        return arr, off
    return tuple(arr.tolist()), off


def decode_fields(plan: Plan, payload: bytes | memoryview, name: str) -> dict[str, Any]:
    """The fields of ``plan`` read from ``payload``. Extension fields the payload ends before
    are left out (the message class gives their defaults); bytes after the last known field
    are ignored (a newer peer's extension fields)."""
    buf = memoryview(payload)
    off = 0
    values: dict[str, Any] = {}
    n_total = len(buf)
    for i, (kind, codec, fields) in enumerate(plan.steps):
        if i >= plan.n_base and off >= n_total:
            break  # an older peer: the extension fields from here on take their defaults
        if kind == "scalars":
            if off + codec.size > n_total:
                raise DecodeError(f"{name}: payload truncated")
            vals = codec.unpack_from(buf, off)
            off += codec.size
            for f, v in zip(fields, vals, strict=True):
                values[f.name] = v
            continue
        f = fields[0]
        if kind == "str":
            values[f.name], off = _decode_str(buf, off, f, name)
        else:
            values[f.name], off = _decode_array(buf, off, kind, codec, f, name)
    return values


# --- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    version: int
    msg_id: int
    flags: int
    seq: int
    payload_len: int


def encode_frame(msg: BaseMessage, seq: int = 0, flags: int = 0) -> bytes:
    """A complete wire frame, COBS-encoded and 0x00-terminated."""
    payload = encode_payload(msg)
    version = FROZEN_HEADER_VERSION if msg.MSG_ID in FROZEN_IDS else PROTOCOL_VERSION
    return frame_bytes(msg.MSG_ID, payload, seq, flags, version)


def frame_bytes(msg_id: int, payload: bytes, seq: int = 0, flags: int = 0,
                version: int = PROTOCOL_VERSION) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise EncodeError(f"payload of {len(payload)} bytes > MAX_PAYLOAD {MAX_PAYLOAD}")
    if not 0 <= seq <= 0xFFFF or not 0 <= flags <= 0xFF:
        raise EncodeError("seq must fit u16 and flags u8")
    raw = _HEADER.pack(version, msg_id, flags, seq, len(payload)) + payload
    crc = zlib.crc32(raw, CRC_SEEDS.get(msg_id, 0))
    encoded: bytes = cobs.encode(raw + _CRC.pack(crc))
    return encoded + b"\x00"


def encode_message_json(obj: dict[str, Any], seq: int = 0, flags: int = 0) -> bytes:
    """``{"type": "snake_name", ...fields}`` -> framed bytes (the ``encode`` CLI)."""
    msg = message_from_dict(obj)
    return encode_frame(msg, seq, flags)


def message_from_dict(obj: dict[str, Any]) -> BaseMessage:
    if not isinstance(obj, dict) or "type" not in obj:
        raise EncodeError('expected a JSON object with a "type" key')
    cls = MESSAGE_CLASSES_BY_NAME.get(obj["type"])
    if cls is None:
        raise EncodeError(f"unknown message type {obj['type']!r}; known: "
                          + ", ".join(sorted(MESSAGE_CLASSES_BY_NAME)))
    kwargs = {k: v for k, v in obj.items() if k != "type"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in kwargs:
        if k not in fields:
            raise EncodeError(f"{cls.NAME}: unknown field {k!r}; fields: {', '.join(fields)}")
    spec_fields = {f.name: f for f in MESSAGES_BY_ID[cls.MSG_ID].fields}
    for k, v in list(kwargs.items()):
        sf = spec_fields[k]
        if sf.type == "records":
            dtype = RECORD_DTYPES[sf.record]
            arr = np.zeros(len(v), dtype=dtype)
            for i, rec in enumerate(v):
                for name, x in rec.items():
                    if name not in (dtype.names or ()):
                        raise EncodeError(f"{cls.NAME}.{k}: unknown record field {name!r}")
                    arr[i][name] = x
            kwargs[k] = arr
        elif sf.is_array:
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise EncodeError(str(e)) from e


# --- streaming decoder ------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameReceived:
    """A good frame and its decoded message."""

    header: Header
    message: BaseMessage


@dataclass(frozen=True)
class FrameError:
    """A frame dropped; ``reason`` is one of the keys of :attr:`StreamDecoder.errors`."""

    reason: str
    detail: str
    nbytes: int
    msg_id: int | None = None
    """The frame's message id when its header could be read (``unknown_id``, ``crc``, ``version``,
    ``payload``), else None."""


ERROR_REASONS = ("oversize", "cobs", "short", "crc", "version", "length", "unknown_id", "payload")


class StreamDecoder:
    """Feed raw bytes, get :class:`FrameReceived` / :class:`FrameError` events.

    Resynchronises at the next 0x00 after garbage, truncation or bit flips; bounded memory
    (an over-long run without a delimiter is discarded up to the next delimiter). Any input is
    accepted: nothing here raises on bad bytes.
    """

    def __init__(self, protocol_version: int = PROTOCOL_VERSION) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.version = protocol_version
        self.errors: dict[str, int] = dict.fromkeys(ERROR_REASONS, 0)
        self.frames_ok = 0
        self.bytes_in = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[FrameReceived | FrameError]:
        self.bytes_in += len(data)
        events: list[FrameReceived | FrameError] = []
        data = bytes(data)
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                chunk = data[start:]
                if self._discarding:
                    return events
                if len(self._buf) + len(chunk) > MAX_ENCODED:
                    n = len(self._buf) + len(chunk)
                    self._buf.clear()
                    self._discarding = True
                    events.append(self._error("oversize", f"no delimiter within {n} bytes", n))
                else:
                    self._buf += chunk
                return events
            chunk = data[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if self._buf:
                self._buf += chunk
                encoded = bytes(self._buf)
                self._buf.clear()
            else:
                encoded = chunk
            if not encoded:
                continue  # idle delimiter (also used to flush a line)
            if len(encoded) > MAX_ENCODED:
                events.append(self._error("oversize", f"{len(encoded)} bytes", len(encoded)))
                continue
            events.append(self._decode_frame(encoded))

    def _error(self, reason: str, detail: str, nbytes: int, msg_id: int | None = None) -> FrameError:
        self.errors[reason] += 1
        return FrameError(reason, detail, nbytes, msg_id)

    def _decode_frame(self, encoded: bytes) -> FrameReceived | FrameError:
        try:
            raw = cobs.decode(encoded)
        except cobs.DecodeError as e:
            return self._error("cobs", str(e), len(encoded))
        if len(raw) < HEADER_SIZE + CRC_SIZE:
            return self._error("short", f"{len(raw)} bytes", len(encoded))
        version, msg_id, flags, seq, plen = _HEADER.unpack_from(raw, 0)
        if plen != len(raw) - HEADER_SIZE - CRC_SIZE or plen > MAX_PAYLOAD:
            return self._error("length", f"header says {plen}, frame holds "
                               f"{len(raw) - HEADER_SIZE - CRC_SIZE}", len(encoded))
        (crc,) = _CRC.unpack_from(raw, len(raw) - CRC_SIZE)
        seed = CRC_SEEDS.get(msg_id)
        if seed is None:
            # Unknown ids cannot be CRC-checked against a seed; check with 0 so that a
            # clean frame of a newer spec is reported as unknown, noise as CRC.
            if zlib.crc32(memoryview(raw)[: len(raw) - CRC_SIZE], 0) == crc:
                return self._error("unknown_id", f"message id 0x{msg_id:02X}", len(encoded), msg_id)
            return self._error("crc", f"id 0x{msg_id:02X}", len(encoded), msg_id)
        if zlib.crc32(memoryview(raw)[: len(raw) - CRC_SIZE], seed) != crc:
            return self._error("crc", f"id 0x{msg_id:02X}", len(encoded), msg_id)
        if version != self.version and not (msg_id in FROZEN_IDS and version == FROZEN_HEADER_VERSION):
            return self._error("version", f"frame version {version}, expected {self.version}",
                               len(encoded), msg_id)
        try:
            msg = decode_payload(msg_id, memoryview(raw)[HEADER_SIZE : len(raw) - CRC_SIZE])
        except DecodeError as e:
            return self._error("payload", str(e), len(encoded), msg_id)
        self.frames_ok += 1
        return FrameReceived(Header(version, msg_id, flags, seq, plen), msg)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def decode_all(data: bytes) -> list[FrameReceived | FrameError]:
    """Decode a complete byte string (convenience for tests and the CLI)."""
    return StreamDecoder().feed(data)
