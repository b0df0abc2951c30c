"""The aging scheduler: constant-current channels, their samples in bulk, their self-stops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from firmware_protocol.messages import (
    AGING_SAMPLE_DTYPE,
)
from firmware_protocol.spec import (
    EventCode,
    SampleFlags,
    Stream,
)
from sim.board.status import BoardStatus
from sim.hardware import (
    US_PER_HOUR,
    FreshPoint,
    Pixel,
    aging_arrays_of,
)
from sim.physics import FailureMode


@dataclass
class AgingChannel:
    index: int
    pixel: Pixel
    current_a: float
    interval_us: int
    compliance_v: float
    gain: int
    fresh: FreshPoint
    accel: float
    next_t: int
    anchor_t: int
    anchor_dose: float
    rng: np.random.Generator
    stop_t: float = math.inf
    stop_cause: str = ""

    def dose_at(self, t: NDArray[np.int64] | int) -> NDArray[np.float64]:
        dt_h = (np.asarray(t, dtype=np.float64) - self.anchor_t) / US_PER_HOUR
        return np.asarray(self.anchor_dose + dt_h / self.accel, dtype=np.float64)

    def sync(self, t: int) -> None:
        """Re-anchor at ``t`` and write the pixel's equivalent age back."""
        self.anchor_dose = float(self.dose_at(t))
        self.anchor_t = t
        self.pixel.dose_ref_h = self.anchor_dose


class AgingScheduler(BoardStatus):
    """Aging channels: schedule, samples (vectorised over channels), predicted stops."""

    def _channel_of_pixel(self, pixel: int) -> AgingChannel | None:
        for ch in self.channels:
            if ch is not None and ch.pixel.number == pixel:
                return ch
        return None

    def _predict_stop(self, ch: AgingChannel) -> None:
        px = ch.pixel
        t0, d0 = ch.anchor_t, ch.anchor_dose
        ch.stop_t, ch.stop_cause = math.inf, ""
        code = px.failure(d0)
        if code != FailureMode.NONE:
            ch.stop_t, ch.stop_cause = t0, "short" if code == FailureMode.SHORT else "open"
            return
        us_per_dose = ch.accel * US_PER_HOUR
        d_fail = px.preset_failure_dose()
        if math.isfinite(d_fail):
            t = t0 + max(0.0, d_fail - d0) * us_per_dose
            if t < ch.stop_t:
                ch.stop_t = math.ceil(t)
                ch.stop_cause = "short" if px.preset.failure.mode == FailureMode.SHORT else "open"
        ag = px.preset.aging
        headroom = ch.compliance_v - ch.fresh.voltage_v
        dv0 = float(px.aging_arrays(np.asarray(d0))[1])
        if headroom <= dv0:
            ch.stop_t, ch.stop_cause = t0, "compliance"
        elif ag.delta_voltage_max_v > headroom:
            x = headroom / ag.delta_voltage_max_v
            d_c = ag.tau_ref_h * (-math.log1p(-x)) ** (1.0 / ag.beta)
            t = t0 + max(0.0, d_c - d0) * us_per_dose
            if t < ch.stop_t:
                ch.stop_t, ch.stop_cause = math.ceil(t), "compliance"

    def _aging_samples(self, due: Sequence[tuple[AgingChannel, NDArray[np.int64]]]) -> NDArray[np.void]:
        """The records of each channel in ``due`` at its times, channel after channel.

        Vectorised over every sample of every channel (a 2 ms step of many channels is one or
        two samples each: per-call overhead, not arithmetic, is the cost). Per-channel values
        are spread over the samples (``[owner]``); the arithmetic on each sample is the same as
        for one channel at a time. What stays per channel: the noise, drawn from the channel's
        own stream as before; the dark current (scalar, like a single channel's); and the
        photodiode autorange when it steps (:meth:`Photodiodes.read_blocks`).
        """
        chans = [ch for ch, _ in due]
        counts = np.array([len(t) for _, t in due], dtype=np.intp)
        owner = np.repeat(np.arange(len(due)), counts)

        def per_sample(values: Sequence[float]) -> NDArray[np.float64]:
            return np.array(values, dtype=np.float64)[owner]

        times = np.concatenate([t for _, t in due])
        dt_h = (times.astype(np.float64) - per_sample([ch.anchor_t for ch in chans])) / US_PER_HOUR
        dose = per_sample([ch.anchor_dose for ch in chans]) + dt_h / per_sample([ch.accel for ch in chans])
        ratio, dv, code = aging_arrays_of([ch.pixel for ch in chans], owner, dose)
        i_set = per_sample([ch.current_a for ch in chans])
        comp = per_sample([ch.compliance_v for ch in chans])
        short = code == FailureMode.SHORT
        opened = code == FailureMode.OPEN
        r_short = per_sample([ch.pixel.preset.failure.short_resistance_ohm for ch in chans])
        v_true = np.where(short, i_set * r_short, per_sample([ch.fresh.voltage_v for ch in chans]) + dv)
        v_true = np.where(opened, comp, v_true)
        v_true = np.minimum(v_true, comp)
        i_true = np.where(opened, 0.0, i_set)
        substrate_c = self.thermal.substrate_c(self._substrate_power())
        temps = [float(substrate_c[ch.pixel.spec.substrate]) for ch in chans]
        dark = [self.photodiodes.background_a(ch.pixel.number, temp)
                for ch, temp in zip(chans, temps, strict=True)]
        pd_true = per_sample([ch.fresh.pd_signal_a for ch in chans]) * ratio + per_sample(dark)
        z = np.concatenate([ch.rng.standard_normal((len(t), 4)) for ch, t in due])
        cfg = self.cfg
        rec = np.zeros(len(times), dtype=AGING_SAMPLE_DTYPE)
        rec["t_us"] = times - self.clock_base_us
        rec["channel"] = np.array([ch.index for ch in chans])[owner]
        rec["pixel"] = np.array([ch.pixel.number for ch in chans])[owner]
        rec["current_a"] = i_true * (1.0 + cfg.smu_noise_rel * z[:, 0]) + 1e-9 * z[:, 0]
        rec["voltage_v"] = v_true * (1.0 + cfg.smu_noise_rel * z[:, 1]) + 1e-5 * z[:, 1]
        pd, gains, flags, last_gain = self.photodiodes.read_blocks(
            pd_true, counts, np.array([ch.gain for ch in chans]), z[:, 2], cfg.aging_pd_integration_ms)
        for ch, g in zip(chans, last_gain, strict=True):
            ch.gain = int(g)
        rec["photodiode_a"] = pd
        rec["pd_gain"] = gains
        flags = flags | np.where(short, np.uint8(SampleFlags.SHORT), np.uint8(0))
        flags = flags | np.where(opened, np.uint8(SampleFlags.OPEN), np.uint8(0))
        at_comp = (v_true >= comp) & ~opened
        flags = flags | np.where(at_comp, np.uint8(SampleFlags.COMPLIANCE), np.uint8(0))
        rec["flags"] = flags
        rec["temperature_c"] = per_sample(temps) + cfg.temperature_noise_c * z[:, 3]
        return rec

    def _run_aging(self, t_end: int, inclusive: bool) -> None:
        last = t_end if inclusive else t_end - 1
        due = []
        for ch in self.channels:
            if ch is None or ch.next_t > last:
                continue
            n = (last - ch.next_t) // ch.interval_us + 1
            due.append((ch, ch.next_t + ch.interval_us * np.arange(n, dtype=np.int64)))
            ch.next_t += ch.interval_us * n
        if not due:
            return
        recs = self._aging_samples(due)
        if len(due) > 1:
            recs = recs[np.lexsort((recs["channel"], recs["t_us"]))]
        self._push_aging(recs)

    def _push_aging(self, recs: NDArray[np.void]) -> None:
        self.aging_ring.push(recs)
        self.counters.produced[Stream.AGING] += len(recs)
        self._send_aging(recs)

    def _stop_channel(self, ch: AgingChannel, cause: str) -> None:
        t = self.t_us
        rec = self._aging_samples([(ch, np.array([t], dtype=np.int64))])
        extra = {"short": SampleFlags.SHORT, "open": SampleFlags.OPEN,
                 "compliance": SampleFlags.COMPLIANCE}.get(cause, SampleFlags.NONE)
        rec["flags"] |= np.uint8(SampleFlags.STOPPED | extra)
        self._push_aging(rec)
        ch.sync(t)
        self.channels[ch.index] = None
        px = ch.pixel.number
        if cause == "short":
            self._event(EventCode.PIXEL_SHORT, ch.index, px, float(rec["voltage_v"][0]),
                        f"pixel {px} shorted; channel {ch.index} stopped")
        elif cause == "open":
            self._event(EventCode.PIXEL_OPEN, ch.index, px, ch.compliance_v,
                        f"pixel {px} open; channel {ch.index} stopped")
        elif cause == "compliance":
            self._event(EventCode.COMPLIANCE, ch.index, px, ch.compliance_v,
                        f"pixel {px} reached {ch.compliance_v:g} V; channel {ch.index} stopped")
        elif cause in ("interlock", "watchdog"):
            self._event(EventCode.CHANNEL_STOPPED, ch.index, px, 0.0, cause)
