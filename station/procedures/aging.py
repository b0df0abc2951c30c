"""An aging run's live collector (photometry, L0, l_rel, stop conditions), its rebuild and final analysis."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_protocol.messages import Spectrum as SpectrumMsg
from firmware_protocol.spec import SampleFlags

from ..analysis.lifetime import (
    L0_FIT_END_REL,
    L0_MIN_SAMPLES,
    L0_WINDOW_S,
    analyze_lifetime,
    l0_of,
)
from ..analysis.photometry import (
    Calibration,
    PointFactors,
    PreparedSpectra,
    Spectrum,
    compute_points,
    luminance_and_eqe,
    point_factors,
    prepare_spectra,
)
from ..params import AgingParams, SweepParams
from . import rules
from .context import StationContext
from .spectra import board_spectrum
from .sweep import losses_summary

log = logging.getLogger(__name__)


@dataclass
class AgingOutcome:
    run_id: int
    summary: dict[str, Any]
    reason: str
    n_samples: int


class AgingCollector:
    """Owns one aging run's samples: photometry, L0, l_rel and the stop conditions."""

    def __init__(self, ctx: StationContext, run_id: int, channel: int, calibration: Calibration,
                 dark_a: float, params: AgingParams,
                 progress: Callable[[float, dict[str, float]], None] | None) -> None:
        self.ctx, self.run_id, self.channel = ctx, run_id, channel
        self.pixel = 0
        self.calibration, self.dark_a, self.params = calibration, dark_a, params
        self.progress = progress
        self.spectra: list[Spectrum] = []
        self.prepared: PreparedSpectra | None = None
        self._factors: PointFactors | None = None
        self.t0_us: int | None = None
        self.l0: float | None = None
        self._l0_buf: list[tuple[float, float]] = []
        self._trace_t: list[np.ndarray] = []
        self._trace_l: list[np.ndarray] = []
        self._early: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._recheck_at = 0
        self._l0_settled = False
        self.v0: float | None = None
        self.n = 0
        self.last_t_s = 0.0
        self.last_l_rel = float("nan")
        self.below = 0
        self.stop_reason: str | None = None
        self.stop_t_s = math.inf
        self.stopped = asyncio.Event()
        self.paused_flag = False
        self.on_alert: Callable[[str, dict[str, Any]], None] | None = None
        self._alerted: set[float] = set()
        self.last_t_us: int | None = None
        """Board time of the newest sample."""
        self.last_mono: float | None = None
        """Host monotonic time the newest sample arrived (None: none in this process yet)."""

    def add_spectrum(self, s: Spectrum) -> None:
        self.spectra.append(s)
        self.prepared = prepare_spectra(self.spectra, self.calibration, "t_s")
        self._factors = point_factors(self.calibration, self.prepared)
        if self._early:
            # samples from before the first spectrum: their luminance now, as the final
            # analysis will compute it, so that L0 (first minute) and the stop rule see them
            early, self._early = self._early, []
            for t_s, pd, cur, ok in early:
                lum, _eqe = luminance_and_eqe(pd, cur, self._factors, self.prepared.nearest(t_s))
                ok = ok & np.isfinite(lum)
                self._trace_t.insert(0, t_s[ok])
                self._trace_l.insert(0, lum[ok])
                if self.l0 is None:
                    self._l0_buf.extend(zip(t_s[ok].tolist(), lum[ok].tolist(), strict=True))
            self._l0_buf.sort()

    def on_spectrum(self, msg: SpectrumMsg, seq64: int) -> int | None:
        return self.run_id

    def on_records(self, rec: np.ndarray, seq64: np.ndarray, rows: np.ndarray) -> None:
        rows["run_id"] = self.run_id
        rows["dark_a"] = self.dark_a
        if self.t0_us is None:
            self.t0_us = int(rec["t_us"][0])
            self.ctx.store.update_run(self.run_id, t0_us=self.t0_us)
        t_s = (rec["t_us"].astype(np.int64) - self.t0_us) / 1e6
        flags = rec["flags"]
        if self.prepared is None:
            self._early.append((t_s, rec["photodiode_a"] - self.dark_a, rec["current_a"],
                                (flags & int(SampleFlags.STOPPED)) == 0))
        if self.prepared is not None and self._factors is not None:
            # compute_points' luminance and EQE, from the factors of the spectra prepared once
            lum, eqe = luminance_and_eqe(rec["photodiode_a"] - self.dark_a, rec["current_a"],
                                         self._factors, self.prepared.nearest(t_s))
            rows["luminance_cd_m2"] = lum
            rows["eqe_pct"] = eqe
            live = (flags & int(SampleFlags.STOPPED)) == 0
            ok = live & np.isfinite(lum)
            self._trace_t.append(t_s[ok])
            self._trace_l.append(lum[ok])
            if self.l0 is None:
                self._l0_buf.extend(zip(t_s[ok].tolist(), lum[ok].tolist(), strict=True))
                # the final analysis' estimator (lifetime.l0_of), provisionally on the first
                # minute once it is complete, then once more (below) on the early trace it
                # fits in the end: the stop rule and the summary then share one L0
                buf = self._l0_buf
                if len(buf) >= L0_MIN_SAMPLES and (buf[-1][0] - buf[0][0] > L0_WINDOW_S
                                                   or len(buf) >= 200):
                    self.l0 = l0_of(np.array([x[0] for x in buf]), np.array([x[1] for x in buf]),
                                    L0_WINDOW_S, L0_MIN_SAMPLES)
            elif not self._l0_settled and ok.any() and float(np.min(lum[ok])) <= (
                    L0_FIT_END_REL * self.l0):
                # the trace has fallen to where the L0 fit ends: its final value from now on
                # (the rows before keep the provisional l_rel until the run's revision)
                self._l0_settled = True
                self.l0 = l0_of(np.concatenate(self._trace_t), np.concatenate(self._trace_l),
                                L0_WINDOW_S, L0_MIN_SAMPLES)
            if self.l0 is not None and self.l0 > 0:
                rows["l_rel"] = lum / self.l0
        if self.v0 is None and len(rec):
            self.v0 = float(rec["voltage_v"][0])
        self.n += len(rec)
        self.last_t_s = float(t_s[-1])
        self.last_t_us = int(rec["t_us"][-1])
        self.last_mono = time.monotonic()
        self._check_stop(rec, rows, t_s)
        if self.progress is not None:
            self.progress(self.last_t_s / 3600.0, {
                "l_rel": float(rows["l_rel"][-1]), "voltage_v": float(rec["voltage_v"][-1]),
                "luminance_cd_m2": float(rows["luminance_cd_m2"][-1])})

    def _check_stop(self, rec: np.ndarray, rows: np.ndarray, t_s: np.ndarray) -> None:
        """Stop conditions and alerts over one block. Runs for every block of every channel, so
        each condition is first tested with one reduction over the block; the sample where it
        is met is looked for only when it is."""
        if self.stop_reason is not None or not len(rec):
            return
        flags = rec["flags"].astype(np.int64)
        seen = int(np.bitwise_or.reduce(flags))

        def first(mask: np.ndarray) -> float:
            return float(t_s[int(np.argmax(mask))])

        failure = rules.failure_reason(seen)
        if failure is not None:
            bit, reason = failure
            self.stop(reason, first((flags & int(bit)) != 0))
            return
        limit_v = rules.runaway_limit_v(self.v0, self.params.voltage_runaway_v)
        if float(rec["voltage_v"].max()) > limit_v:
            self.stop("voltage_runaway", first(rec["voltage_v"] > limit_v))
            return
        if seen & int(SampleFlags.STOPPED):
            self.paused_flag = True  # interlock or reboot: the monitor restarts the channel
        lr_all = rows["l_rel"]
        lr_min = float(np.fmin.reduce(lr_all))  # NaN (no L0 yet) is skipped, as <= would
        self._lifetime_alerts(lr_all, lr_min, t_s)
        if self._level_confirmed(lr_all, lr_min, t_s):
            return
        limit_h, why = rules.duration_limit(self.params.duration_h(), self.params.max_duration_h)
        if float(t_s.max()) / 3600.0 >= limit_h:
            self.stop(why, first(t_s / 3600.0 >= limit_h))

    def _lifetime_alerts(self, lr_all: np.ndarray, lr_min: float, t_s: np.ndarray) -> None:
        for lv, name in rules.lifetime_alerts_due(lr_min, self._alerted):
            self._alerted.add(lv)
            i = int(np.argmax(lr_all <= lv))
            self.alert(f"{name}_reached", {"t_h": float(t_s[i]) / 3600.0,
                                            "l_rel": float(lr_all[i])})

    def _level_confirmed(self, lr_all: np.ndarray, lr_min: float, t_s: np.ndarray) -> bool:
        """The stop level (t50, ...): once three samples in a row are at or below it, the final
        analysis decides — the run stops once it measures the crossing (by interpolation, with
        samples past it), not on the live values alone. True when the run stopped."""
        level = self.params.stop_level()
        if level is None or not rules.level_check_due(level, lr_min, self.below, self.n,
                                                      self._recheck_at):
            return False
        i, self.below = rules.count_below(lr_all.tolist(), level, self.below)
        if i is None:
            return False
        if self._final_analysis_reached(float(t_s[i])):
            self.stop(f"reached_{self.params.until.lower()}", float(t_s[i]))
            return True
        self.below = 0
        self._recheck_at = rules.recheck_at(self.n)
        return False

    def _final_analysis_reached(self, t_until_s: float) -> bool:
        """Does the run's final analysis (analyze_lifetime on the samples up to ``t_until_s``)
        measure the stop level's Tx?"""
        t = np.concatenate(self._trace_t) if self._trace_t else np.zeros(0)
        lum = np.concatenate(self._trace_l) if self._trace_l else np.zeros(0)
        keep = t <= t_until_s
        if np.count_nonzero(keep) < L0_MIN_SAMPLES + 3:
            return False
        try:
            res = analyze_lifetime(t[keep], lum[keep], fit=False)
        except Exception:  # the analysis cannot be made yet
            log.debug("lifetime analysis for the stop rule failed", exc_info=True)
            return False
        return res.tx_h.get(self.params.until.lower()) is not None

    def stop(self, reason: str, t_stop_s: float) -> None:
        """Stop condition met at board time ``t_stop_s`` (since t0). The board goes on sampling
        until the host's aging_stop reaches it; those later samples are stored but not analysed."""
        self.stop_reason = reason
        self.stop_t_s = t_stop_s
        self.stopped.set()
        alert = rules.stop_alert(reason)
        if alert is not None:
            self.alert(alert, {"reason": reason, "t_h": t_stop_s / 3600.0})

    def alert(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_alert is not None:
            try:
                self.on_alert(kind, {"pixel": self.pixel, "run_id": self.run_id, **data})
            except Exception:
                log.exception("alert callback failed")



def rebuild_aging_collector(ctx: StationContext, run_id: int) -> tuple[AgingCollector, AgingParams]:
    """An aging run's collector as it was, from the store: for resuming after a restart."""
    store = ctx.store
    run = store.run(run_id)
    rp = dict(run["params"])
    fields = {f for f in AgingParams.__dataclass_fields__}
    interim = rp.get("interim_sweep")
    params = AgingParams(**{k: v for k, v in rp.items() if k in fields and k != "interim_sweep"})
    if interim:
        params.interim_sweep = SweepParams(**interim)
    cal = Calibration.from_dict(run["calibration"])
    col = AgingCollector(ctx, run_id, rp["channel"], cal, float(rp.get("dark_a", 0.0)), params, None)
    col.pixel = run["pixel"]
    col.t0_us = run["t0_us"]
    d = store.fetch("aging_samples", run_id)
    col.n = len(d["seq"])
    spec = rp.get("spectrometer") or {}
    if col.t0_us is not None and spec:
        for row in store.spectra_of(run_id):
            if row["probe"]:
                continue
            sp = board_spectrum(row["counts"], row["dark_counts"], row["flags"],
                                spec["wavelength_cal"], spec["spectrum_kind"],
                                t_s=(row["t_us"] - col.t0_us) / 1e6)
            if sp is not None:
                col.add_spectrum(sp)
    if col.n and col.t0_us is not None:
        t_s = (d["t_us"] - col.t0_us) / 1e6
        col.last_t_s = float(t_s[-1])
        col.last_t_us = int(d["t_us"][-1])
        col.v0 = float(d["voltage_v"][0])
        if col.prepared is not None:
            pts = compute_points(d["voltage_v"], d["current_a"], d["photodiode_a"], cal,
                                 col.prepared, dark_a=col.dark_a, t_s=t_s)
            ok = np.isfinite(pts["luminance_cd_m2"])
            if ok.sum() >= 3:
                col.l0 = l0_of(t_s[ok], pts["luminance_cd_m2"][ok])
                col._alerted = {lv for lv in (0.9, 0.5)
                                if np.any(pts["luminance_cd_m2"][ok] / col.l0 <= lv)}
    ctx.acq.aging[col.channel] = col
    return col, params


def finalize_aging(ctx: StationContext, run_id: int, col: AgingCollector) -> dict[str, Any]:
    """Recompute every sample with the run's spectra (nearest in time) and the final L0."""
    store = ctx.store
    d = store.fetch("aging_samples", run_id)
    if len(d["seq"]) < 2 or not col.spectra or col.t0_us is None:
        return {"error": "too few samples or no usable spectrum", "n_samples": len(d["seq"])}
    t_s = (d["t_us"] - col.t0_us) / 1e6
    prep = prepare_spectra(col.spectra, col.calibration, "t_s")
    pts = compute_points(d["voltage_v"], d["current_a"], d["photodiode_a"], col.calibration, prep,
                         dark_a=col.dark_a, t_s=t_s)
    bad = int(SampleFlags.STOPPED | SampleFlags.SHORT | SampleFlags.OPEN)
    live = (d["flags"].astype(np.int64) & bad) == 0
    lum = pts["luminance_cd_m2"]
    live &= t_s <= col.stop_t_s  # samples after the stop condition are not analysed
    res = analyze_lifetime(t_s[live], lum[live])
    l_rel = lum / res.l0_cd_m2
    store.revise("aging_samples", run_id, d["seq"].astype(np.int64).tolist(), {
        "luminance_cd_m2": lum.tolist(), "l_rel": l_rel.tolist(),
        "eqe_pct": pts["eqe_pct"].tolist()})
    summary = res.to_dict()
    summary["n_samples"] = len(d["seq"])
    summary["dark_a"] = col.dark_a
    summary["t0_us"] = col.t0_us
    # which samples the analysis used (station analyze applies the same to the export)
    summary["analysed_until_t_s"] = col.stop_t_s if math.isfinite(col.stop_t_s) else None
    summary["analysed_exclude_flags"] = bad
    summary.update(losses_summary(store, d["t_us"], "aging"))
    summary["spectra_used"] = len(col.spectra)
    return summary
