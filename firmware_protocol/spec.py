"""The one declarative specification of the host <-> board protocol.

Everything else in this package — the Python message classes (``messages.py``), the codec,
the C header (``python -m firmware_protocol c-header``) and ``docs/protocol.md``
(``python -m firmware_protocol docs``) — is derived from the data in this file.

Wire conventions: little-endian, packed, no padding. ``str`` is a u8 length followed by UTF-8
bytes; ``T[]`` is a u16 element count followed by the elements; ``records`` is a u16 count
followed by packed records of the named record type.

Changing anything on the wire here (a message, a field's name, type, unit or length, an enum
value) changes :data:`SPEC_HASH`, which the handshake compares, and the per-message CRC seeds,
so a board built from another spec is refused instead of misparsed. Documentation is not on
the wire: rewording it changes neither. The two handshake messages (``hello``,
``hello_reply``) are frozen: never change them (their seeds are pinned).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Literal

PROTOCOL_VERSION = 2
"""Framing/header version carried in every frame header. 2: pixel and channel numbers are u16
(boards of more than 255 pixels or 256 channels); 1: they were u8."""

FROZEN_HEADER_VERSION = 1
"""Header version of the frozen handshake's frames (``hello``, ``hello_reply``) whatever
:data:`PROTOCOL_VERSION` is: a peer of any version decodes them, so two peers of different
versions still handshake and say they differ (a decoder accepts a frozen message at this header
version or its own)."""

MAX_PAYLOAD = 1024
"""Largest payload in bytes; a frame announcing more is rejected."""

HEADER_SIZE = 7  # version u8, msg_id u8, flags u8, seq u16, payload_len u16
CRC_SIZE = 4

Direction = Literal["host_to_board", "board_to_host"]

SCALAR_TYPES: dict[str, tuple[str, int, str]] = {
    # wire type: (struct code, size in bytes, C type)
    "u8": ("B", 1, "uint8_t"),
    "u16": ("H", 2, "uint16_t"),
    "u32": ("I", 4, "uint32_t"),
    "u64": ("Q", 8, "uint64_t"),
    "i8": ("b", 1, "int8_t"),
    "i16": ("h", 2, "int16_t"),
    "i32": ("i", 4, "int32_t"),
    "f32": ("f", 4, "float"),
    "f64": ("d", 8, "double"),
}


@dataclass(frozen=True)
class Range:
    """The values a request field may take on any board built from this spec (inclusive, or
    above ``lo`` when ``lo_open``). A board may accept less; it says how much in its
    ``capabilities``. Generated into the C header (``FP_<MSG>_<FIELD>_MIN``/``_MAX``) and the
    docs; not on the wire, so not in the CRC seeds nor the spec hash."""

    lo: float
    hi: float
    lo_open: bool = False

    def __contains__(self, v: float) -> bool:
        return (self.lo < v if self.lo_open else self.lo <= v) and v <= self.hi

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # a scalar type, "str", "<scalar>[]" or "records"
    unit: str = ""
    doc: str = ""
    max_len: int = 0  # for str / arrays / records: maximum element count
    record: str = ""  # for "records": the record type name
    range: Range | None = None  # request fields: the values any board accepts
    extension: bool = False
    """An extension field (MAVLink v2's): added to a message after its first release, always
    after every other field. Peers built before it ignore it (trailing bytes are skipped); peers
    built after it read its default (0, "", empty) from a payload that ends before it. It is
    not in the message's CRC seed nor in the spec hash, so old and new peers keep talking."""

    @property
    def is_scalar(self) -> bool:
        return self.type in SCALAR_TYPES

    @property
    def is_array(self) -> bool:
        return self.type.endswith("[]")

    @property
    def elem_type(self) -> str:
        return self.type[:-2]


@dataclass(frozen=True)
class Record:
    """A fixed-size packed record carried many to a frame (sample streams)."""

    name: str
    doc: str
    fields: tuple[Field, ...]

    @property
    def size(self) -> int:
        return sum(SCALAR_TYPES[f.type][1] for f in self.fields)


@dataclass(frozen=True)
class Message:
    name: str
    id: int
    direction: Direction
    doc: str
    fields: tuple[Field, ...] = ()
    acked: bool = False  # a request the board answers (ok / error / a named reply)
    reply: str = ""  # the reply message for acked requests ("ok" when empty)
    stream: str = ""  # for stream data: the stream it belongs to
    frozen: bool = False  # handshake messages: never change


class ErrorCode(IntEnum):
    """Codes carried by the ``error`` message."""

    COMPLIANCE = 1
    INTERLOCK = 2
    BUSY = 3
    BAD_ARGUMENT = 4
    UNKNOWN_MESSAGE = 5
    VERSION_MISMATCH = 6
    NOT_AVAILABLE = 7
    LIMIT = 8
    INTERNAL = 9
    NOT_READY = 10


class FrameFlags(IntFlag):
    NONE = 0
    RESPONSE = 0x01  # the frame answers the request with the same seq
    RETRY = 0x02  # a retransmission of a request already sent with this seq
    STREAM = 0x04  # unsolicited stream data


class Stream(IntEnum):
    """Sample streams: each has its own 32-bit sequence and ring buffer on the board."""

    AGING = 0
    SWEEP = 1
    SPECTRUM = 2


class SmuMode(IntEnum):
    SOURCE_V = 0
    SOURCE_I = 1


class SweepEnd(IntEnum):
    COMPLETED = 0
    COMPLIANCE = 1
    ABORTED = 2
    INTERLOCK = 3
    BREAKDOWN = 4
    REBOOT = 5


class SampleFlags(IntFlag):
    NONE = 0
    COMPLIANCE = 0x01  # the source hit its compliance
    PD_SATURATED = 0x02  # the photodiode saturated even at the lowest gain
    REVERSE = 0x04  # sweep point on the return (reverse) scan
    SHORT = 0x08  # the pixel is shorted (voltage collapsed)
    OPEN = 0x10  # the pixel is open (current cannot be sourced)
    STOPPED = 0x20  # the channel stopped after this sample (failure / interlock / command)
    AUTORANGED = 0x40  # the photodiode gain changed for this reading


class WatchdogPolicy(IntEnum):
    KEEP_AGING = 0  # on host silence: SMU off, aging channels keep running and buffering
    GO_SAFE = 1  # on host silence: all outputs off


class Fault(IntFlag):
    NONE = 0
    INTERLOCK_OPEN = 0x01
    OVER_TEMPERATURE = 0x02
    WATCHDOG_EXPIRED = 0x04
    SPECTROMETER = 0x08
    RING_OVERFLOW = 0x10  # samples were overwritten before the host acknowledged them


class EventCode(IntEnum):
    INTERLOCK_OPEN = 1
    INTERLOCK_CLOSED = 2
    CHANNEL_STOPPED = 3
    PIXEL_SHORT = 4
    PIXEL_OPEN = 5
    COMPLIANCE = 6
    WATCHDOG_EXPIRED = 7
    OVER_TEMPERATURE = 8


class SpectrumKind(IntEnum):
    PHOTON_COUNTS = 0
    ENERGY = 1


F = Field

# ranges of request fields (docs/protocol.md, FP_*_MIN/_MAX in the C header)
INTEGRATION_MS = Range(0.0, 10_000.0, lo_open=True)
SPECTRUM_INTEGRATION_MS = Range(0.0, 60_000.0, lo_open=True)
DWELL_MS = Range(0.0, 60_000.0)
AGING_INTERVAL_MS = Range(10.0, 86_400_000.0)
PD_READS = Range(1.0, 1000.0)
MAX_SWEEP_POINTS = 2000
"""Points of a forward sweep program (the reverse scan may double it)."""

RECORDS: tuple[Record, ...] = (
    Record(
        "aging_sample",
        "One constant-current aging sample of one channel.",
        (
            F("seq", "u32", doc="sample sequence number of the AGING stream"),
            F("t_us", "u64", "us", "board time since its epoch"),
            F("channel", "u16", doc="aging channel (0-based)"),
            F("pixel", "u16", doc="pixel driven by the channel (1-based)"),
            F("flags", "u8", doc="SampleFlags"),
            F("pd_gain", "u8", doc="photodiode gain index used"),
            F("current_a", "f32", "A", "measured drive current"),
            F("voltage_v", "f32", "V", "measured pixel voltage"),
            F("photodiode_a", "f32", "A", "photodiode current (not dark-subtracted)"),
            F("temperature_c", "f32", "degC", "substrate temperature"),
        ),
    ),
    Record(
        "sweep_point",
        "One point of an on-board J-V-L sweep program.",
        (
            F("seq", "u32", doc="sample sequence number of the SWEEP stream"),
            F("t_us", "u64", "us", "board time at the end of the point's integration"),
            F("sweep_id", "u16", doc="the id the host gave the sweep"),
            F("index", "u16", doc="point index in the program (0-based, forward then reverse)"),
            F("pixel", "u16", doc="pixel (1-based)"),
            F("flags", "u8", doc="SampleFlags"),
            F("pd_gain", "u8", doc="photodiode gain index used"),
            F("voltage_set_v", "f32", "V", "programmed voltage"),
            F("voltage_v", "f32", "V", "measured voltage"),
            F("current_a", "f32", "A", "measured current"),
            F("photodiode_a", "f32", "A", "photodiode current (not dark-subtracted)"),
        ),
    ),
)

MESSAGES: tuple[Message, ...] = (
    # --- handshake (frozen) -----------------------------------------------------------------
    Message(
        "hello", 0x01, "host_to_board",
        "First message of a session. The board answers hello_reply whatever its spec.",
        (F("protocol_version", "u16"), F("spec_hash", "u32", doc="host's SPEC_HASH")),
        acked=True, reply="hello_reply", frozen=True,
    ),
    Message(
        "hello_reply", 0x02, "board_to_host",
        "The board's identity; the host refuses a board whose spec_hash differs from its own.",
        (
            F("protocol_version", "u16"),
            F("spec_hash", "u32", doc="SPEC_HASH the firmware was built from"),
            F("boot_id", "u32", doc="changes at every board reset"),
            F("firmware_version", "str", max_len=32),
            F("serial_number", "str", max_len=32),
        ),
        frozen=True,
    ),
    # --- generic replies --------------------------------------------------------------------
    Message(
        "ok", 0x03, "board_to_host",
        "Success reply to an acknowledged request with no data of its own.",
        (F("value", "u32", doc="request-specific value (e.g. first sequence number replayed)"),),
    ),
    Message(
        "error", 0x04, "board_to_host",
        "Failure reply to a request (or unsolicited with seq 0 for an unknown frame).",
        (
            F("code", "u8", doc="ErrorCode"),
            F("ref_msg_id", "u8", doc="message id of the request that failed"),
            F("detail", "str", max_len=96, doc="human-readable reason"),
        ),
    ),
    Message(
        "get_capabilities", 0x05, "host_to_board", "Ask for the board's capabilities.",
        acked=True, reply="capabilities",
    ),
    Message(
        "capabilities", 0x06, "board_to_host", "What the board has and its limits.",
        (
            F("n_substrates", "u8"),
            F("pixels_per_substrate", "u16"),
            F("n_aging_channels", "u16"),
            F("n_temperature_sensors", "u8"),
            F("smu_voltage_ranges_v", "f32[]", "V", max_len=8),
            F("smu_current_ranges_a", "f32[]", "A", max_len=8),
            F("max_voltage_v", "f32", "V", "largest voltage the SMU can source"),
            F("max_current_a", "f32", "A", "largest current the SMU can source"),
            F("max_aging_current_a", "f32", "A", "largest current of an aging driver"),
            F("aging_compliance_v", "f32", "V", "aging drivers' voltage compliance"),
            F("pd_gains_v_per_a", "f32[]", "V/A", "transimpedance of each photodiode gain", 8),
            F("pd_full_scale_v", "f32", "V", "ADC full scale of the photodiode amplifier"),
            F("pd_adc_bits", "u8"),
            F("spectrometer_pixels", "u16"),
            F("wavelength_cal", "f64[]", "nm", "lambda(p) = sum c_k p^k, p = pixel index", 6),
            F("spectrum_kind", "u8", doc="SpectrumKind: photon counts or energy"),
            F("spectrometer_max_counts", "u32"),
            F("ring_depth", "u32", doc="aging samples the board buffers"),
            F("board_tick_us", "u32", "us", "period of the board's control loop"),
            # the board's own ranges (within the spec's; 0: not reported, the spec's apply)
            F("max_integration_ms", "f32", "ms", "longest SMU, sweep and pd_read integration",
              extension=True),
            F("max_spectrum_integration_ms", "f32", "ms", "longest spectrum integration",
              extension=True),
            F("max_dwell_ms", "f32", "ms", "longest sweep dwell", extension=True),
            F("min_aging_interval_ms", "u32", "ms", "shortest aging sample interval",
              extension=True),
            F("max_aging_interval_ms", "u32", "ms", "longest aging sample interval",
              extension=True),
            F("max_sweep_points", "u16", doc="points of a forward sweep program",
              extension=True),
            F("max_pd_reads", "u16", doc="largest pd_read n", extension=True),
        ),
    ),
    Message(
        "ping", 0x07, "host_to_board", "Liveness check; also feeds the watchdog.",
        (F("nonce", "u32"),), acked=True, reply="pong",
    ),
    Message(
        "pong", 0x08, "board_to_host", "Reply to ping.",
        (F("nonce", "u32"), F("t_us", "u64", "us", "board time")),
    ),
    # --- status / safety --------------------------------------------------------------------
    Message(
        "get_status", 0x09, "host_to_board", "Ask for a status message.",
        acked=True, reply="status",
    ),
    Message(
        "status", 0x0A, "board_to_host",
        "Board state; sent in reply to get_status and unsolicited once a second (seq 0).",
        (
            F("t_us", "u64", "us", "board time"),
            F("boot_id", "u32"),
            F("faults", "u32", doc="Fault bits"),
            F("interlock_closed", "u8", doc="1 when the interlock permits outputs"),
            F("smu_output_on", "u8"),
            F("sweep_active", "u8"),
            F("aging_active_mask", "u32", doc="bit k set when aging channel k runs"),
            F("temperatures_c", "f32[]", "degC", max_len=8),
            F("aging_head_seq", "u32", doc="next seq the AGING stream will use"),
            F("sweep_head_seq", "u32", doc="next seq the SWEEP stream will use"),
            F("spectrum_head_seq", "u32", doc="next seq the SPECTRUM stream will use"),
            F("aging_oldest_seq", "u32", doc="oldest AGING seq still in the ring buffer"),
            F("aging_active", "u8[]", doc="the running aging channels of a board with any "
              "number of them: bit k%8 of byte k/8 is channel k (empty: aging_active_mask "
              "says)", max_len=128, extension=True),
        ),
    ),
    Message(
        "all_off", 0x0B, "host_to_board",
        "Every output off: SMU, sweep, all aging channels. Always accepted.", acked=True,
    ),
    Message(
        "set_watchdog", 0x0C, "host_to_board",
        "What the board does when the host is silent for timeout_ms (0 disables).",
        (F("timeout_ms", "u32", "ms"), F("policy", "u8", doc="WatchdogPolicy")),
        acked=True,
    ),
    Message(
        "event", 0x0D, "board_to_host",
        "Unsolicited notification (interlock, failure, compliance, watchdog).",
        (
            F("code", "u8", doc="EventCode"),
            F("channel", "u16", doc="aging channel or 0xFFFF"),
            F("pixel", "u16", doc="pixel or 0"),
            F("t_us", "u64", "us"),
            F("value", "f32", doc="code-specific value"),
            F("detail", "str", max_len=64),
        ),
    ),
    # --- SMU and multiplexer ----------------------------------------------------------------
    Message(
        "mux_select", 0x10, "host_to_board",
        "Connect the SMU to one pixel (1-based) or to none (0).", (F("pixel", "u16"),), acked=True,
    ),
    Message(
        "smu_configure", 0x11, "host_to_board", "Source mode, range, compliance, integration.",
        (
            F("mode", "u8", doc="SmuMode"),
            F("range_index", "u8", doc="index into the board's ranges, 0xFF = autorange"),
            F("compliance", "f32", "A or V", "current limit (source V) or voltage limit"),
            F("integration_ms", "f32", "ms", range=INTEGRATION_MS),
        ),
        acked=True,
    ),
    Message(
        "smu_output", 0x12, "host_to_board", "Set the source level and switch the output.",
        (F("enable", "u8"), F("level", "f32", "V or A")), acked=True,
    ),
    Message(
        "smu_measure", 0x13, "host_to_board", "One measurement of the selected pixel.",
        acked=True, reply="smu_reading",
    ),
    Message(
        "smu_reading", 0x14, "board_to_host", "Reply to smu_measure.",
        (
            F("t_us", "u64", "us"),
            F("voltage_v", "f32", "V"),
            F("current_a", "f32", "A"),
            F("photodiode_a", "f32", "A", "photodiode of the selected pixel"),
            F("pd_gain", "u8"),
            F("flags", "u8", doc="SampleFlags"),
        ),
    ),
    # --- on-board sweep program -------------------------------------------------------------
    Message(
        "sweep_start", 0x15, "host_to_board",
        "Run a voltage sweep on one pixel on the board; points stream as sweep_point records, "
        "spectra as spectrum messages, and sweep_done ends it.",
        (
            F("sweep_id", "u16", doc="host-chosen id, echoed in every point"),
            F("pixel", "u16"),
            F("start_v", "f32", "V", "linear program (ignored when voltages_v is given)"),
            F("stop_v", "f32", "V"),
            F("step_v", "f32", "V"),
            F("voltages_v", "f32[]", "V", "list program (empty for linear)", 200),
            F("dwell_ms", "f32", "ms", "settling time before each reading", range=DWELL_MS),
            F("integration_ms", "f32", "ms", range=INTEGRATION_MS),
            F("compliance_a", "f32", "A"),
            F("options", "u8", doc="bit0 reverse scan too, bit1 stop on compliance, "
                                   "bit2 photodiode autorange"),
            F("pd_gain", "u8", doc="initial photodiode gain index"),
            F("spectrum_at_v", "f32[]", "V", "take a spectrum at these set voltages", 16),
            F("spectrum_integration_ms", "f32", "ms", range=SPECTRUM_INTEGRATION_MS),
            F("breakdown_v_drop", "f32", "V",
              "end when the measured voltage falls this far below the set voltage (0: off)"),
        ),
        acked=True,
    ),
    Message(
        "sweep_abort", 0x16, "host_to_board", "Stop the running sweep; output off.", acked=True,
    ),
    Message(
        "sweep_done", 0x17, "board_to_host", "End of a sweep program.",
        (
            F("sweep_id", "u16"),
            F("n_points", "u16"),
            F("reason", "u8", doc="SweepEnd"),
            F("last_seq", "u32", doc="SWEEP seq of its last point (0xFFFFFFFF when none)"),
        ),
    ),
    # --- constant-current aging -------------------------------------------------------------
    Message(
        "aging_start", 0x18, "host_to_board",
        "Drive a pixel at constant current on an aging channel, sampling every interval.",
        (
            F("channel", "u16"),
            F("pixel", "u16"),
            F("current_a", "f32", "A"),
            F("interval_ms", "u32", "ms", range=AGING_INTERVAL_MS),
            F("compliance_v", "f32", "V"),
            F("pd_gain", "u8", doc="initial photodiode gain (autoranged on the board)"),
        ),
        acked=True,
    ),
    Message(
        "aging_set", 0x19, "host_to_board", "Change a running channel's current or interval.",
        (F("channel", "u16"), F("current_a", "f32", "A"), F("interval_ms", "u32", "ms")),
        acked=True,
    ),
    Message(
        "aging_stop", 0x1A, "host_to_board", "Stop an aging channel (output off).",
        (F("channel", "u16"),), acked=True,
    ),
    # --- photodiodes and spectrometer -------------------------------------------------------
    Message(
        "pd_configure", 0x1B, "host_to_board", "Photodiode gain and autorange (pixel 0 = all).",
        (F("pixel", "u16"), F("gain_index", "u8"), F("autorange", "u8")), acked=True,
    ),
    Message(
        "pd_read", 0x1C, "host_to_board", "Average n readings of a pixel's photodiode.",
        (F("pixel", "u16"), F("n", "u16", range=PD_READS),
         F("integration_ms", "f32", "ms", range=INTEGRATION_MS)),
        acked=True, reply="pd_reading",
    ),
    Message(
        "pd_reading", 0x1D, "board_to_host", "Reply to pd_read.",
        (
            F("pixel", "u16"),
            F("gain_index", "u8"),
            F("flags", "u8", doc="SampleFlags"),
            F("mean_a", "f32", "A"),
            F("std_a", "f32", "A", "standard deviation of the n readings"),
        ),
    ),
    Message(
        "spectrum_acquire", 0x1E, "host_to_board",
        "Take one spectrum of a pixel (the SMU's present operating point); answered by a "
        "spectrum message on the SPECTRUM stream, whose seq the ok carries.",
        (F("pixel", "u16"), F("integration_ms", "f32", "ms", range=SPECTRUM_INTEGRATION_MS)),
        acked=True,
    ),
    Message(
        "spectrum", 0x1F, "board_to_host",
        "One spectrum (dark counts not subtracted; see the dark fields).", (
            F("seq", "u32", doc="sample sequence number of the SPECTRUM stream"),
            F("t_us", "u64", "us"),
            F("sweep_id", "u16", doc="0xFFFF when not part of a sweep"),
            F("index", "u16", doc="sweep point index it was taken at"),
            F("pixel", "u16"),
            F("flags", "u8", doc="bit0 saturated"),
            F("voltage_v", "f32", "V"),
            F("current_a", "f32", "A"),
            F("integration_ms", "f32", "ms"),
            F("dark_counts", "f32", doc="mean dark level per pixel at this integration"),
            F("counts", "u16[]", max_len=300),
        ),
        stream="SPECTRUM",
    ),
    # --- sample streams ---------------------------------------------------------------------
    Message(
        "aging_samples", 0x20, "board_to_host", "A block of AGING stream records.",
        (F("records", "records", record="aging_sample", max_len=30),), stream="AGING",
    ),
    Message(
        "sweep_points", 0x21, "board_to_host", "A block of SWEEP stream records.",
        (F("records", "records", record="sweep_point", max_len=28),), stream="SWEEP",
    ),
    Message(
        "stream_ack", 0x22, "host_to_board",
        "The host has stored every record of a stream up to and including seq; the board may "
        "free them. Not acknowledged (sent again with the next ack).",
        (F("stream", "u8", doc="Stream"), F("seq", "u32")),
    ),
    Message(
        "stream_replay", 0x23, "host_to_board",
        "Send again the records of a stream from from_seq to to_seq inclusive "
        "(0xFFFFFFFF: to the head). ok.value is the first seq the board still holds.",
        (F("stream", "u8", doc="Stream"), F("from_seq", "u32"), F("to_seq", "u32")),
        acked=True,
    ),
)

# --- timing: what a host may assume of the board's time (not on the wire) -------------------
# These do not change a frame's layout, so they are not part of SPEC_HASH; the generated
# docs/protocol.md states them, and the host's request deadlines are computed from them.

MAX_INTEGRATION_MS = INTEGRATION_MS.hi
"""Longest SMU, sweep and photodiode integration any board accepts (ms)."""
MAX_SPECTRUM_INTEGRATION_MS = SPECTRUM_INTEGRATION_MS.hi
"""Longest spectrometer integration any board accepts (ms)."""
MAX_DWELL_MS = DWELL_MS.hi
"""Longest sweep dwell any board accepts (ms)."""
MAX_PD_READS = int(PD_READS.hi)
"""Largest ``n`` of a ``pd_read``."""

REQUEST_COSTS: dict[str, str] = {
    "smu_measure": "the SMU integration_ms last set by smu_configure",
    "pd_read": "n × integration_ms",
    "spectrum_acquire": "integration_ms",
}
"""Requests whose execution takes time, and how long (board time). The board runs requests one
at a time in arrival order; every other request is answered as soon as it is its turn. A
request's reply therefore comes after the costs of the requests queued ahead of it plus its own,
plus the link's round trip. ``sweep_start`` is answered at once: its program runs on the board
and ends with ``sweep_done``."""


def request_cost_ms(msg: object, smu_integration_ms: float | None = None) -> float:
    """The board time (ms) ``msg`` takes to execute, as :data:`REQUEST_COSTS` declares it.

    ``smu_integration_ms`` is the SMU integration the board is set to (the last
    ``smu_configure``); unknown (None) counts as :data:`MAX_INTEGRATION_MS`. Values outside the
    board's ranges are clipped to them (the board refuses such a request at once anyway).
    """
    name = getattr(msg, "NAME", "")
    if name == "spectrum_acquire":
        return _clip(getattr(msg, "integration_ms", 0.0), MAX_SPECTRUM_INTEGRATION_MS)
    if name == "pd_read":
        n = min(max(int(getattr(msg, "n", 1)), 0), MAX_PD_READS)
        return n * _clip(getattr(msg, "integration_ms", 0.0), MAX_INTEGRATION_MS)
    if name == "smu_measure":
        return _clip(MAX_INTEGRATION_MS if smu_integration_ms is None else smu_integration_ms,
                     MAX_INTEGRATION_MS)
    return 0.0


def _clip(v: float, hi: float) -> float:
    v = float(v)
    if v != v:  # NaN: refused by the board at once
        return 0.0
    return min(max(v, 0.0), hi)


MESSAGES_BY_NAME: dict[str, Message] = {m.name: m for m in MESSAGES}
MESSAGES_BY_ID: dict[int, Message] = {m.id: m for m in MESSAGES}
RECORDS_BY_NAME: dict[str, Record] = {r.name: r for r in RECORDS}

ENUMS: tuple[type[IntEnum] | type[IntFlag], ...] = (
    ErrorCode, FrameFlags, Stream, SmuMode, SweepEnd, SampleFlags, WatchdogPolicy, Fault,
    EventCode, SpectrumKind,
)

FROZEN_HANDSHAKE = ("hello", "hello_reply")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# The handshake's CRC seeds, as every firmware so far was built with them: pinned, so that a
# board of any spec and this host can always exchange hello/hello_reply and the host can say
# "protocol mismatch" (with both versions) instead of timing out on frames that fail their CRC.
# tests/test_protocol_generated.py pins them and the frozen messages' wire layout.
FROZEN_CRC_SEEDS: dict[int, int] = {0x01: 0xE14F7EE7, 0x02: 0x24E8EA61}


def _wire_fields(fields: tuple[Field, ...]) -> list[dict[str, object]]:
    """What of a field list is on the wire: names, types, units, lengths, record types — and
    nothing of the documentation, so rewording a doc string changes no seed and no hash."""
    return [{"name": f.name, "type": f.type, "unit": f.unit, "max_len": f.max_len,
             "record": f.record} for f in fields if not f.extension]


def message_crc_seed(msg: Message, records: dict[str, Record] | None = None) -> int:
    """The per-message CRC seed (MAVLink's CRC_EXTRA, 32 bits wide).

    The CRC-32 of a frame starts from this value, so a frame whose message layout differs
    between two specs fails its CRC rather than decoding into wrong numbers. It covers what is
    on the wire (the message's name and id, its fields' names, types, units and lengths, the
    layout of the records it carries) and none of the documentation. The frozen handshake
    messages keep their pinned seeds (:data:`FROZEN_CRC_SEEDS`).
    """
    if msg.frozen and msg.id in FROZEN_CRC_SEEDS:
        return FROZEN_CRC_SEEDS[msg.id]
    recs = RECORDS_BY_NAME if records is None else records
    desc: dict[str, object] = {"name": msg.name, "id": msg.id, "fields": _wire_fields(msg.fields)}
    for f in msg.fields:
        if f.type == "records":
            desc["record:" + f.record] = _wire_fields(recs[f.record].fields)
    return zlib.crc32(_canonical(desc))


def spec_hash(messages: tuple[Message, ...], records: tuple[Record, ...]) -> int:
    """The hash the handshake compares: protocol version, payload limit, every message's id,
    direction, acknowledgement, reply, stream and wire fields, every record's wire fields and
    every enum's values — no documentation."""
    desc = {
        "protocol_version": PROTOCOL_VERSION,
        "max_payload": MAX_PAYLOAD,
        "messages": [{"name": m.name, "id": m.id, "direction": m.direction, "acked": m.acked,
                      "reply": m.reply, "stream": m.stream, "frozen": m.frozen,
                      "fields": _wire_fields(m.fields)} for m in messages],
        "records": [{"name": r.name, "fields": _wire_fields(r.fields)} for r in records],
        "enums": {e.__name__: {k: int(v) for k, v in e.__members__.items()} for e in ENUMS},
    }
    return int.from_bytes(hashlib.sha256(_canonical(desc)).digest()[:4], "little")


SPEC_HASH: int = spec_hash(MESSAGES, RECORDS)
CRC_SEEDS: dict[int, int] = {m.id: message_crc_seed(m) for m in MESSAGES}
FROZEN_IDS: frozenset[int] = frozenset(m.id for m in MESSAGES if m.frozen)
"""Ids of the frozen handshake messages (their frames carry :data:`FROZEN_HEADER_VERSION`)."""


def field_range(message: str, field: str) -> Range | None:
    """The spec's range of ``message.field`` (None when it has none)."""
    return next((f.range for f in MESSAGES_BY_NAME[message].fields if f.name == field), None)


def _validate_field(m: Message, f: Field) -> None:
    if f.range is not None and (not f.is_scalar or m.direction != "host_to_board"):
        raise AssertionError(f"{m.name}.{f.name}: ranges are for scalar request fields")
    if f.extension and f.type == "records":
        raise AssertionError(f"{m.name}.{f.name}: records cannot be an extension field")
    if f.type == "records":
        if f.record not in RECORDS_BY_NAME:
            raise AssertionError(f"{m.name}.{f.name}: unknown record {f.record}")
    elif f.type == "str":
        if not 0 < f.max_len < 256:
            raise AssertionError(f"{m.name}.{f.name}: str needs max_len < 256")
    elif f.is_array:
        if f.elem_type not in SCALAR_TYPES or f.max_len <= 0:
            raise AssertionError(f"{m.name}.{f.name}: bad array")
    elif f.type not in SCALAR_TYPES:
        raise AssertionError(f"{m.name}.{f.name}: unknown type {f.type}")


def _validate_message(m: Message) -> None:
    if not 0 < m.id < 256:
        raise AssertionError(f"{m.name}: id out of range")
    if m.acked and m.direction != "host_to_board":
        raise AssertionError(f"{m.name}: only requests are acknowledged")
    if m.reply and m.reply not in MESSAGES_BY_NAME:
        raise AssertionError(f"{m.name}: unknown reply {m.reply}")
    ext = [f.extension for f in m.fields]
    if any(ext) and ext != sorted(ext):
        raise AssertionError(f"{m.name}: extension fields must come after every other field")
    if any(ext) and (m.frozen or m.stream):
        raise AssertionError(f"{m.name}: frozen and stream messages take no extension fields")
    for f in m.fields:
        _validate_field(m, f)
    size = max_payload_size(m)
    if size > MAX_PAYLOAD:
        raise AssertionError(f"{m.name}: can exceed MAX_PAYLOAD ({size} bytes)")


def _validate(messages: tuple[Message, ...] = MESSAGES) -> None:
    for r in RECORDS:
        if any(f.extension for f in r.fields):
            raise AssertionError(f"record {r.name}: records are fixed-size, no extension fields")
    ids = [m.id for m in messages]
    if len(set(ids)) != len(ids):
        raise AssertionError("duplicate message id in spec")
    for m in messages:
        _validate_message(m)


def max_payload_size(m: Message) -> int:
    n = 0
    for f in m.fields:
        if f.is_scalar:
            n += SCALAR_TYPES[f.type][1]
        elif f.type == "str":
            n += 1 + f.max_len
        elif f.type == "records":
            n += 2 + f.max_len * RECORDS_BY_NAME[f.record].size
        else:
            n += 2 + f.max_len * SCALAR_TYPES[f.elem_type][1]
    return n


_validate()

__all__ = [
    "CRC_SEEDS", "FROZEN_HEADER_VERSION", "FROZEN_IDS",
    "HEADER_SIZE", "MAX_DWELL_MS", "MAX_INTEGRATION_MS", "MAX_PAYLOAD", "MAX_PD_READS",
    "MAX_SPECTRUM_INTEGRATION_MS", "MESSAGES", "MESSAGES_BY_ID", "MESSAGES_BY_NAME",
    "PROTOCOL_VERSION", "RECORDS", "RECORDS_BY_NAME", "REQUEST_COSTS", "SPEC_HASH", "Field",
    "Message", "Range", "Record", "field_range", "request_cost_ms",
]
