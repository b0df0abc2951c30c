"""Message classes of the board protocol. GENERATED from spec.py: do not edit.

Regenerate with ``python -m firmware_protocol python > firmware_protocol/messages.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .base import BaseMessage

SPEC_HASH = 0x68A4D624

AGING_SAMPLE_DTYPE = np.dtype(
    [
        ("seq", "<u4"),  # -: sample sequence number of the AGING stream
        ("t_us", "<u8"),  # us: board time since its epoch
        ("channel", "<u2"),  # -: aging channel (0-based)
        ("pixel", "<u2"),  # -: pixel driven by the channel (1-based)
        ("flags", "u1"),  # -: SampleFlags
        ("pd_gain", "u1"),  # -: photodiode gain index used
        ("current_a", "<f4"),  # A: measured drive current
        ("voltage_v", "<f4"),  # V: measured pixel voltage
        ("photodiode_a", "<f4"),  # A: photodiode current (not dark-subtracted)
        ("temperature_c", "<f4"),  # degC: substrate temperature
    ]
)
"""One constant-current aging sample of one channel. 34 bytes, packed little-endian."""

SWEEP_POINT_DTYPE = np.dtype(
    [
        ("seq", "<u4"),  # -: sample sequence number of the SWEEP stream
        ("t_us", "<u8"),  # us: board time at the end of the point's integration
        ("sweep_id", "<u2"),  # -: the id the host gave the sweep
        ("index", "<u2"),  # -: point index in the program (0-based, forward then reverse)
        ("pixel", "<u2"),  # -: pixel (1-based)
        ("flags", "u1"),  # -: SampleFlags
        ("pd_gain", "u1"),  # -: photodiode gain index used
        ("voltage_set_v", "<f4"),  # V: programmed voltage
        ("voltage_v", "<f4"),  # V: measured voltage
        ("current_a", "<f4"),  # A: measured current
        ("photodiode_a", "<f4"),  # A: photodiode current (not dark-subtracted)
    ]
)
"""One point of an on-board J-V-L sweep program. 36 bytes, packed little-endian."""

RECORD_DTYPES: dict[str, np.dtype] = {
    "aging_sample": AGING_SAMPLE_DTYPE,
    "sweep_point": SWEEP_POINT_DTYPE,
}


@dataclass(frozen=True, eq=False)
class Hello(BaseMessage):
    """First message of a session. The board answers hello_reply whatever its spec."""

    MSG_ID: ClassVar[int] = 0x01
    NAME: ClassVar[str] = "hello"
    protocol_version: int = 0
    spec_hash: int = 0


@dataclass(frozen=True, eq=False)
class HelloReply(BaseMessage):
    """The board's identity; the host refuses a board whose spec_hash differs from its own."""

    MSG_ID: ClassVar[int] = 0x02
    NAME: ClassVar[str] = "hello_reply"
    protocol_version: int = 0
    spec_hash: int = 0
    boot_id: int = 0
    firmware_version: str = ""
    serial_number: str = ""


@dataclass(frozen=True, eq=False)
class Ok(BaseMessage):
    """Success reply to an acknowledged request with no data of its own."""

    MSG_ID: ClassVar[int] = 0x03
    NAME: ClassVar[str] = "ok"
    value: int = 0


@dataclass(frozen=True, eq=False)
class Error(BaseMessage):
    """Failure reply to a request (or unsolicited with seq 0 for an unknown frame)."""

    MSG_ID: ClassVar[int] = 0x04
    NAME: ClassVar[str] = "error"
    code: int = 0
    ref_msg_id: int = 0
    detail: str = ""


@dataclass(frozen=True, eq=False)
class GetCapabilities(BaseMessage):
    """Ask for the board's capabilities."""

    MSG_ID: ClassVar[int] = 0x05
    NAME: ClassVar[str] = "get_capabilities"


@dataclass(frozen=True, eq=False)
class Capabilities(BaseMessage):
    """What the board has and its limits."""

    MSG_ID: ClassVar[int] = 0x06
    NAME: ClassVar[str] = "capabilities"
    n_substrates: int = 0
    pixels_per_substrate: int = 0
    n_aging_channels: int = 0
    n_temperature_sensors: int = 0
    smu_voltage_ranges_v: tuple[float, ...] = ()  # V
    smu_current_ranges_a: tuple[float, ...] = ()  # A
    max_voltage_v: float = 0.0  # V
    max_current_a: float = 0.0  # A
    max_aging_current_a: float = 0.0  # A
    aging_compliance_v: float = 0.0  # V
    pd_gains_v_per_a: tuple[float, ...] = ()  # V/A
    pd_full_scale_v: float = 0.0  # V
    pd_adc_bits: int = 0
    spectrometer_pixels: int = 0
    wavelength_cal: tuple[float, ...] = ()  # nm
    spectrum_kind: int = 0
    spectrometer_max_counts: int = 0
    ring_depth: int = 0
    board_tick_us: int = 0  # us
    max_integration_ms: float = 0.0  # extension field: ms
    max_spectrum_integration_ms: float = 0.0  # extension field: ms
    max_dwell_ms: float = 0.0  # extension field: ms
    min_aging_interval_ms: int = 0  # extension field: ms
    max_aging_interval_ms: int = 0  # extension field: ms
    max_sweep_points: int = 0  # extension field
    max_pd_reads: int = 0  # extension field


@dataclass(frozen=True, eq=False)
class Ping(BaseMessage):
    """Liveness check; also feeds the watchdog."""

    MSG_ID: ClassVar[int] = 0x07
    NAME: ClassVar[str] = "ping"
    nonce: int = 0


@dataclass(frozen=True, eq=False)
class Pong(BaseMessage):
    """Reply to ping."""

    MSG_ID: ClassVar[int] = 0x08
    NAME: ClassVar[str] = "pong"
    nonce: int = 0
    t_us: int = 0  # us


@dataclass(frozen=True, eq=False)
class GetStatus(BaseMessage):
    """Ask for a status message."""

    MSG_ID: ClassVar[int] = 0x09
    NAME: ClassVar[str] = "get_status"


@dataclass(frozen=True, eq=False)
class Status(BaseMessage):
    """Board state; sent in reply to get_status and unsolicited once a second (seq 0)."""

    MSG_ID: ClassVar[int] = 0x0A
    NAME: ClassVar[str] = "status"
    t_us: int = 0  # us
    boot_id: int = 0
    faults: int = 0
    interlock_closed: int = 0
    smu_output_on: int = 0
    sweep_active: int = 0
    aging_active_mask: int = 0
    temperatures_c: tuple[float, ...] = ()  # degC
    aging_head_seq: int = 0
    sweep_head_seq: int = 0
    spectrum_head_seq: int = 0
    aging_oldest_seq: int = 0
    aging_active: tuple[int, ...] = ()  # extension field


@dataclass(frozen=True, eq=False)
class AllOff(BaseMessage):
    """Every output off: SMU, sweep, all aging channels. Always accepted."""

    MSG_ID: ClassVar[int] = 0x0B
    NAME: ClassVar[str] = "all_off"


@dataclass(frozen=True, eq=False)
class SetWatchdog(BaseMessage):
    """What the board does when the host is silent for timeout_ms (0 disables)."""

    MSG_ID: ClassVar[int] = 0x0C
    NAME: ClassVar[str] = "set_watchdog"
    timeout_ms: int = 0  # ms
    policy: int = 0


@dataclass(frozen=True, eq=False)
class Event(BaseMessage):
    """Unsolicited notification (interlock, failure, compliance, watchdog)."""

    MSG_ID: ClassVar[int] = 0x0D
    NAME: ClassVar[str] = "event"
    code: int = 0
    channel: int = 0
    pixel: int = 0
    t_us: int = 0  # us
    value: float = 0.0
    detail: str = ""


@dataclass(frozen=True, eq=False)
class MuxSelect(BaseMessage):
    """Connect the SMU to one pixel (1-based) or to none (0)."""

    MSG_ID: ClassVar[int] = 0x10
    NAME: ClassVar[str] = "mux_select"
    pixel: int = 0


@dataclass(frozen=True, eq=False)
class SmuConfigure(BaseMessage):
    """Source mode, range, compliance, integration."""

    MSG_ID: ClassVar[int] = 0x11
    NAME: ClassVar[str] = "smu_configure"
    mode: int = 0
    range_index: int = 0
    compliance: float = 0.0  # A or V
    integration_ms: float = 0.0  # ms


@dataclass(frozen=True, eq=False)
class SmuOutput(BaseMessage):
    """Set the source level and switch the output."""

    MSG_ID: ClassVar[int] = 0x12
    NAME: ClassVar[str] = "smu_output"
    enable: int = 0
    level: float = 0.0  # V or A


@dataclass(frozen=True, eq=False)
class SmuMeasure(BaseMessage):
    """One measurement of the selected pixel."""

    MSG_ID: ClassVar[int] = 0x13
    NAME: ClassVar[str] = "smu_measure"


@dataclass(frozen=True, eq=False)
class SmuReading(BaseMessage):
    """Reply to smu_measure."""

    MSG_ID: ClassVar[int] = 0x14
    NAME: ClassVar[str] = "smu_reading"
    t_us: int = 0  # us
    voltage_v: float = 0.0  # V
    current_a: float = 0.0  # A
    photodiode_a: float = 0.0  # A
    pd_gain: int = 0
    flags: int = 0


@dataclass(frozen=True, eq=False)
class SweepStart(BaseMessage):
    """Run a voltage sweep on one pixel on the board; points stream as sweep_point records, spectra as spectrum messages, and sweep_done ends it."""

    MSG_ID: ClassVar[int] = 0x15
    NAME: ClassVar[str] = "sweep_start"
    sweep_id: int = 0
    pixel: int = 0
    start_v: float = 0.0  # V
    stop_v: float = 0.0  # V
    step_v: float = 0.0  # V
    voltages_v: tuple[float, ...] = ()  # V
    dwell_ms: float = 0.0  # ms
    integration_ms: float = 0.0  # ms
    compliance_a: float = 0.0  # A
    options: int = 0
    pd_gain: int = 0
    spectrum_at_v: tuple[float, ...] = ()  # V
    spectrum_integration_ms: float = 0.0  # ms
    breakdown_v_drop: float = 0.0  # V


@dataclass(frozen=True, eq=False)
class SweepAbort(BaseMessage):
    """Stop the running sweep; output off."""

    MSG_ID: ClassVar[int] = 0x16
    NAME: ClassVar[str] = "sweep_abort"


@dataclass(frozen=True, eq=False)
class SweepDone(BaseMessage):
    """End of a sweep program."""

    MSG_ID: ClassVar[int] = 0x17
    NAME: ClassVar[str] = "sweep_done"
    sweep_id: int = 0
    n_points: int = 0
    reason: int = 0
    last_seq: int = 0


@dataclass(frozen=True, eq=False)
class AgingStart(BaseMessage):
    """Drive a pixel at constant current on an aging channel, sampling every interval."""

    MSG_ID: ClassVar[int] = 0x18
    NAME: ClassVar[str] = "aging_start"
    channel: int = 0
    pixel: int = 0
    current_a: float = 0.0  # A
    interval_ms: int = 0  # ms
    compliance_v: float = 0.0  # V
    pd_gain: int = 0


@dataclass(frozen=True, eq=False)
class AgingSet(BaseMessage):
    """Change a running channel's current or interval."""

    MSG_ID: ClassVar[int] = 0x19
    NAME: ClassVar[str] = "aging_set"
    channel: int = 0
    current_a: float = 0.0  # A
    interval_ms: int = 0  # ms


@dataclass(frozen=True, eq=False)
class AgingStop(BaseMessage):
    """Stop an aging channel (output off)."""

    MSG_ID: ClassVar[int] = 0x1A
    NAME: ClassVar[str] = "aging_stop"
    channel: int = 0


@dataclass(frozen=True, eq=False)
class PdConfigure(BaseMessage):
    """Photodiode gain and autorange (pixel 0 = all)."""

    MSG_ID: ClassVar[int] = 0x1B
    NAME: ClassVar[str] = "pd_configure"
    pixel: int = 0
    gain_index: int = 0
    autorange: int = 0


@dataclass(frozen=True, eq=False)
class PdRead(BaseMessage):
    """Average n readings of a pixel's photodiode."""

    MSG_ID: ClassVar[int] = 0x1C
    NAME: ClassVar[str] = "pd_read"
    pixel: int = 0
    n: int = 0
    integration_ms: float = 0.0  # ms


@dataclass(frozen=True, eq=False)
class PdReading(BaseMessage):
    """Reply to pd_read."""

    MSG_ID: ClassVar[int] = 0x1D
    NAME: ClassVar[str] = "pd_reading"
    pixel: int = 0
    gain_index: int = 0
    flags: int = 0
    mean_a: float = 0.0  # A
    std_a: float = 0.0  # A


@dataclass(frozen=True, eq=False)
class SpectrumAcquire(BaseMessage):
    """Take one spectrum of a pixel (the SMU's present operating point); answered by a spectrum message on the SPECTRUM stream, whose seq the ok carries."""

    MSG_ID: ClassVar[int] = 0x1E
    NAME: ClassVar[str] = "spectrum_acquire"
    pixel: int = 0
    integration_ms: float = 0.0  # ms


@dataclass(frozen=True, eq=False)
class Spectrum(BaseMessage):
    """One spectrum (dark counts not subtracted; see the dark fields)."""

    MSG_ID: ClassVar[int] = 0x1F
    NAME: ClassVar[str] = "spectrum"
    seq: int = 0
    t_us: int = 0  # us
    sweep_id: int = 0
    index: int = 0
    pixel: int = 0
    flags: int = 0
    voltage_v: float = 0.0  # V
    current_a: float = 0.0  # A
    integration_ms: float = 0.0  # ms
    dark_counts: float = 0.0
    counts: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class AgingSamples(BaseMessage):
    """A block of AGING stream records."""

    MSG_ID: ClassVar[int] = 0x20
    NAME: ClassVar[str] = "aging_samples"
    records: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=AGING_SAMPLE_DTYPE))


@dataclass(frozen=True, eq=False)
class SweepPoints(BaseMessage):
    """A block of SWEEP stream records."""

    MSG_ID: ClassVar[int] = 0x21
    NAME: ClassVar[str] = "sweep_points"
    records: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=SWEEP_POINT_DTYPE))


@dataclass(frozen=True, eq=False)
class StreamAck(BaseMessage):
    """The host has stored every record of a stream up to and including seq; the board may free them. Not acknowledged (sent again with the next ack)."""

    MSG_ID: ClassVar[int] = 0x22
    NAME: ClassVar[str] = "stream_ack"
    stream: int = 0
    seq: int = 0


@dataclass(frozen=True, eq=False)
class StreamReplay(BaseMessage):
    """Send again the records of a stream from from_seq to to_seq inclusive (0xFFFFFFFF: to the head). ok.value is the first seq the board still holds."""

    MSG_ID: ClassVar[int] = 0x23
    NAME: ClassVar[str] = "stream_replay"
    stream: int = 0
    from_seq: int = 0
    to_seq: int = 0


MESSAGE_CLASSES: dict[int, type[BaseMessage]] = {
    0x01: Hello,
    0x02: HelloReply,
    0x03: Ok,
    0x04: Error,
    0x05: GetCapabilities,
    0x06: Capabilities,
    0x07: Ping,
    0x08: Pong,
    0x09: GetStatus,
    0x0A: Status,
    0x0B: AllOff,
    0x0C: SetWatchdog,
    0x0D: Event,
    0x10: MuxSelect,
    0x11: SmuConfigure,
    0x12: SmuOutput,
    0x13: SmuMeasure,
    0x14: SmuReading,
    0x15: SweepStart,
    0x16: SweepAbort,
    0x17: SweepDone,
    0x18: AgingStart,
    0x19: AgingSet,
    0x1A: AgingStop,
    0x1B: PdConfigure,
    0x1C: PdRead,
    0x1D: PdReading,
    0x1E: SpectrumAcquire,
    0x1F: Spectrum,
    0x20: AgingSamples,
    0x21: SweepPoints,
    0x22: StreamAck,
    0x23: StreamReplay,
}
MESSAGE_CLASSES_BY_NAME: dict[str, type[BaseMessage]] = {c.NAME: c for c in MESSAGE_CLASSES.values()}
