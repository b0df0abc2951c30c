"""Jobs: sweeps, aging runs and schedules, kept in the store and resumed after a crash.

A job file (TOML) is one of::

    kind = "sweep"     pixels = [1, 2]     [sweep] start_v = 0 ...
    kind = "aging"     pixels = [1, 2]     [aging] current_density_ma_cm2 = [5, 10] ...
    kind = "schedule"  [[steps]] kind = "sweep" ...  [[steps]] kind = "aging" ...

(see ``examples/jobs/``). A job is validated in full — schema and the station's safety limits —
before it is queued; a bad one is refused with the reason and changes nothing. Jobs run
concurrently: aging pixels on their own drivers in parallel, sweeps one at a time through the
instrument lock (a FIFO: fair between jobs). Job definitions and progress live in the store, so
after a kill -9, a power cut or a reboot :meth:`JobManager.prepare` and :meth:`JobManager.start`
pick up every unfinished job: aging runs continue the same run (the board kept aging and
buffering, and its samples are replayed), interrupted sweeps are run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firmware_protocol.channels import MAX_AGING_CHANNELS, active_channels, aging_channel_count
from firmware_protocol.messages import Capabilities
from firmware_protocol.spec import MAX_SWEEP_POINTS as SPEC_MAX_SWEEP_POINTS
from firmware_protocol.spec import Range, field_range

from .errors import LimitError
from .jobs_api import JobError
from .link import LinkDown, RequestTimeout
from .params import AgingParams, AgingSpec, SweepParams, SweepSpec, error_message
from .procedures import (
    AgingCollector,
    StationContext,
    aging_current_a,
    check_sweep_limits,
    rebuild_aging_collector,
    run_aging,
    run_sweep,
)

log = logging.getLogger(__name__)

UNFINISHED = ("queued", "running", "paused")
SWEEP_ATTEMPTS = 3  # a sweep cut by a board reboot is taken again, at most this many times
FINISHED = ("completed", "failed", "stopped")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepSpec(_Strict):
    kind: Literal["sweep", "aging"]
    pixels: list[int] = Field(..., min_length=1, max_length=MAX_AGING_CHANNELS)  # a board's all
    sweep: SweepSpec | None = None
    aging: AgingSpec | None = None

    @model_validator(mode="after")
    def _sections(self) -> StepSpec:
        if len(set(self.pixels)) != len(self.pixels):
            raise ValueError("a pixel appears twice in pixels")
        if self.kind == "sweep":
            if self.aging is not None:
                raise ValueError("a sweep step takes a [sweep] section, not [aging]")
            if self.sweep is None:
                self.sweep = SweepSpec()
        else:
            if self.aging is None:
                raise ValueError("an aging step needs an [aging] section")
            if self.sweep is not None:
                raise ValueError("an aging step takes an [aging] section, not [sweep]")
            for name in ("current_density_ma_cm2", "initial_luminance_cd_m2"):
                v = getattr(self.aging, name)
                if isinstance(v, list) and len(v) != len(self.pixels):
                    raise ValueError(f"aging.{name} has {len(v)} values for {len(self.pixels)} "
                                     f"pixels (give one value, or one per pixel)")
        return self


class JobSpec(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(1, alias="schema", ge=1, le=1)
    name: str = Field("", max_length=200)
    kind: Literal["sweep", "aging", "schedule"]
    pixels: list[int] = Field(default_factory=list)
    sweep: SweepSpec | None = None
    aging: AgingSpec | None = None
    steps: list[StepSpec] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _shape(self) -> JobSpec:
        if self.kind == "schedule":
            if not self.steps:
                raise ValueError("a schedule needs at least one [[steps]] entry")
            if self.pixels or self.sweep or self.aging:
                raise ValueError("a schedule takes its pixels and settings in [[steps]]")
        else:
            if self.steps:
                raise ValueError(f"a {self.kind} job takes no [[steps]] (use kind = 'schedule')")
            if not self.pixels:
                raise ValueError("pixels: give at least one pixel")
            self.steps = [StepSpec(kind=self.kind, pixels=self.pixels, sweep=self.sweep,
                                   aging=self.aging)]
        return self


@dataclass(frozen=True)
class BoardRanges:
    """What the board accepts: the protocol spec's ranges, narrowed by the board's
    ``capabilities`` once it has reported them (``source`` says which)."""

    integration_ms: Range
    spectrum_integration_ms: Range
    dwell_ms: Range
    aging_interval_ms: Range
    pd_reads: Range
    sweep_points: int
    aging_channels: int | None
    source: str
    pd_gains: int | None = None  # how many photodiode gains the board has (None: not known)


def board_ranges(caps: Capabilities | None) -> BoardRanges:
    def narrowed(r: Range, hi: float | None, lo: float | None = None) -> Range:
        # a board reports what it accepts within the spec's range; 0 (an older board): the spec's
        return Range(max(lo, r.lo) if lo else r.lo, min(hi, r.hi) if hi else r.hi,
                     r.lo_open and not lo)

    sr = {n: field_range(m, f) for n, (m, f) in {
        "integration_ms": ("sweep_start", "integration_ms"),
        "spectrum_integration_ms": ("sweep_start", "spectrum_integration_ms"),
        "dwell_ms": ("sweep_start", "dwell_ms"), "aging_interval_ms": ("aging_start", "interval_ms"),
        "pd_reads": ("pd_read", "n")}.items()}
    r = {k: v for k, v in sr.items() if v is not None}
    if caps is None:
        return BoardRanges(**r, sweep_points=SPEC_MAX_SWEEP_POINTS, aging_channels=None,
                           source="the protocol's (no board has answered yet)",
                           pd_gains=None)
    return BoardRanges(
        integration_ms=narrowed(r["integration_ms"], caps.max_integration_ms),
        spectrum_integration_ms=narrowed(r["spectrum_integration_ms"],
                                         caps.max_spectrum_integration_ms),
        dwell_ms=narrowed(r["dwell_ms"], caps.max_dwell_ms),
        aging_interval_ms=narrowed(r["aging_interval_ms"], caps.max_aging_interval_ms,
                                   caps.min_aging_interval_ms),
        pd_reads=narrowed(r["pd_reads"], caps.max_pd_reads),
        sweep_points=min(caps.max_sweep_points or SPEC_MAX_SWEEP_POINTS, SPEC_MAX_SWEEP_POINTS),
        aging_channels=aging_channel_count(caps), source="the board's (its capabilities)",
        pd_gains=len(caps.pd_gains_v_per_a) or None)


def _sweep_points(sw: SweepParams) -> int:
    if sw.voltages_v:
        return len(sw.voltages_v)
    step = abs(sw.step_v)
    n = math.floor(abs(sw.stop_v - sw.start_v) / step + 1e-9) + 1
    return n + (1 if abs(sw.start_v + (n - 1) * step * (1 if sw.stop_v >= sw.start_v else -1)
                         - sw.stop_v) > 1e-6 * step else 0)


def check_board_ranges(step: StepSpec, r: BoardRanges) -> None:
    """Refuse (LimitError) a step the board would refuse halfway: every value it will send is
    checked against the board's ranges before the job is queued."""

    def within(name: str, value: float, rng: Range, unit: str = "") -> None:
        if value not in rng:
            u = f" {unit}" if unit else ""
            raise LimitError(f"{name} = {value:g}{u} is outside {r.source} range {rng}{u}")

    def gain(where: str, pd_gain: int) -> None:
        if r.pd_gains is not None and pd_gain >= r.pd_gains:
            raise LimitError(f"{where}.pd_gain = {pd_gain} is outside {r.source} range "
                             f"[0, {r.pd_gains - 1}]")

    def sweep(sw: SweepParams, where: str) -> None:
        within(f"{where}.integration_ms", sw.integration_ms, r.integration_ms, "ms")
        gain(where, sw.pd_gain)
        within(f"{where}.dwell_ms", sw.dwell_ms, r.dwell_ms, "ms")
        if sw.spectrum_at_v:
            within(f"{where}.spectrum_integration_ms", sw.spectrum_integration_ms,
                   r.spectrum_integration_ms, "ms")
        within(f"{where}.dark_n", sw.dark_n, r.pd_reads)
        n = _sweep_points(sw)
        if n > r.sweep_points:
            raise LimitError(f"{where} has {n} points, more than {r.source} maximum of "
                             f"{r.sweep_points} (take a larger step_v)")

    if step.sweep is not None:
        sweep(step.sweep, "sweep")
    if step.aging is not None:
        gain("aging", step.aging.pd_gain)
        within("aging.interval_s", step.aging.interval_s,
               Range(r.aging_interval_ms.lo / 1000, r.aging_interval_ms.hi / 1000,
                     r.aging_interval_ms.lo_open), "s")
        if r.aging_channels is not None and len(step.pixels) > r.aging_channels:
            raise LimitError(f"{len(step.pixels)} pixels to age at once, but the board has "
                             f"{r.aging_channels} aging channels")
        if step.aging.interim_sweep is not None:
            sweep(step.aging.interim_sweep, "aging.interim_sweep")


def job_dict(spec: JobSpec) -> dict[str, Any]:
    """The job as a plain object that :func:`parse_job` accepts again (round trip)."""
    return spec.model_dump(mode="json", by_alias=True,
                           exclude={"steps"} if spec.kind != "schedule" else None)


def _format(e: ValidationError, where: str) -> str:
    lines = [f"invalid job {where}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = error_message(err)
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key (see examples/jobs/)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_job(obj: Any, where: str = "") -> JobSpec:
    if not isinstance(obj, dict):
        raise JobError(f"invalid job {where}: expected a table/object, got {type(obj).__name__}")
    try:
        return JobSpec.model_validate(obj)
    except ValidationError as e:
        raise JobError(_format(e, where)) from None


def load_job_file(path: str | Path) -> JobSpec:
    p = Path(path)
    try:
        obj = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise JobError(f"job file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"job file {p} is not valid TOML: {e}") from None
    return parse_job(obj, f"in {p}")


class JobManager:
    """Runs jobs against one station; implements :class:`station.jobs_api.JobControl`."""

    def __init__(self, ctx: StationContext, *,
                 publish: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.ctx = ctx
        self.table = ctx.store.jobs  # the jobs table (station.store.jobs)
        self.table.ensure()
        self.publish = publish
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running: dict[str, asyncio.Event] = {}
        self._resumed: dict[tuple[str, int], tuple[AgingCollector, AgingParams]] = {}

    # -- store ------------------------------------------------------------------------------
    def _row(self, job_id: str) -> dict[str, Any]:
        d = self.table.row(job_id)
        if d is None:
            raise JobError(f"no job {job_id!r} (station jobs list shows the jobs)", "not_found")
        return d

    def _update(self, job_id: str, **fields: Any) -> None:
        self.table.update(job_id, **fields)

    def _event(self, kind: str, job_id: str, **data: Any) -> None:
        info = self.get(job_id)
        payload = {"job": job_id, "name": info["name"], "state": info["state"], **data}
        log.info("job %s: %s %s", job_id, kind, data or "")
        if self.publish is not None:
            try:
                self.publish(kind, payload)
            except Exception:
                log.exception("could not record event %s", kind)

    # -- validation -------------------------------------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        """Every check that can be made before anything is driven; raises JobError."""
        busy = self._busy_pixels()
        ranges = board_ranges(self.ctx.link.caps)
        for n, step in enumerate(spec.steps):
            try:
                check_board_ranges(step, ranges)
            except LimitError as e:
                raise JobError(f"steps.{n}: {e}", "limit") from None
            for i, px in enumerate(step.pixels):
                try:
                    _, pcfg = self.ctx.pixel(px)
                    if step.kind == "sweep":
                        assert step.sweep is not None
                        check_sweep_limits(self.ctx, pcfg, step.sweep.params())
                    else:
                        assert step.aging is not None
                        ap = step.aging.for_pixel(i)
                        if ap.current_density_ma_cm2 is not None:
                            aging_current_a(self.ctx, pcfg, ap.current_density_ma_cm2)
                        if ap.interim_sweep is not None:
                            check_sweep_limits(self.ctx, pcfg, ap.interim_sweep)
                        if px in busy:
                            raise LimitError(f"pixel {px} is aging in job {busy[px]}")
                except LimitError as e:
                    raise JobError(f"steps.{n} pixel {px}: {e}", "limit") from None

    def _busy_pixels(self) -> dict[int, str]:
        return self.table.busy_aging_pixels()

    # -- JobControl -------------------------------------------------------------------------
    async def submit(self, job: dict[str, Any], client: str) -> dict[str, Any]:
        spec = parse_job(job)
        self.validate(spec)
        job_id = f"j{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self.table.insert(job_id, name=spec.name or f"{spec.kind} job", kind=spec.kind,
                          spec=job_dict(spec), state="queued", client=client,
                          created_at=time.time(), progress={"step": 0, "done": []})
        self._event("job/submitted", job_id, client=client)
        self._spawn(job_id)
        return self.get(job_id)

    async def stop(self, job_id: str, client: str) -> dict[str, Any]:
        info = self.get(job_id)
        if info["state"] in FINISHED:
            raise JobError(f"job {job_id} is already {info['state']}", "conflict")
        task = self.tasks.get(job_id)
        self._update(job_id, state="stopping")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._update(job_id, state="stopped", ended_at=time.time())
        self._event("job/stopped", job_id, client=client)
        return self.get(job_id)

    async def pause(self, job_id: str, client: str) -> dict[str, Any]:
        info = self.get(job_id)
        if info["state"] not in ("running", "queued"):
            raise JobError(f"job {job_id} is {info['state']}: only a running job can pause",
                           "conflict")
        self.running.setdefault(job_id, asyncio.Event()).clear()
        self._update(job_id, state="paused")
        self._event("job/paused", job_id, client=client)
        return self.get(job_id)

    async def resume(self, job_id: str, client: str) -> dict[str, Any]:
        info = self.get(job_id)
        if info["state"] != "paused":
            raise JobError(f"job {job_id} is {info['state']}, not paused", "conflict")
        self.running.setdefault(job_id, asyncio.Event()).set()
        self._update(job_id, state="running")
        self._event("job/resumed", job_id, client=client)
        return self.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        return [self.get(i) for i in self.table.ids_newest_first()]

    def get(self, job_id: str) -> dict[str, Any]:
        r = self._row(job_id)
        runs = self.table.runs_of(job_id)
        return {"id": r["id"], "name": r["name"], "kind": r["kind"], "state": r["state"],
                "client": r["client"], "created": r["created_at"], "started": r["started_at"],
                "ended": r["ended_at"], "progress": r["progress"], "error": r["error"],
                "runs": runs, "steps": len(r["spec"].get("steps", []))}

    def status(self) -> dict[str, Any]:
        link = self.ctx.link
        st = link.last_status
        board = link.board
        return {
            "station": self.ctx.config.station.id,
            "link_up": link.is_up,
            "link": link.describe(),
            "board": None if board is None else {"serial": board.serial_number,
                                                 "firmware": board.firmware_version,
                                                 "boot_id": board.boot_id},
            "interlock_closed": None if st is None else bool(st.interlock_closed),
            "faults": None if st is None else st.faults,
            "temperatures_c": None if st is None else list(st.temperatures_c),
            "aging_channels_active": None if st is None else sorted(active_channels(st)),
            "jobs": self.table.count_by_state(),
            "running_jobs": self.table.active_ids(),
            "link_stats": asdict(link.stats),
            "board_epoch": link.conn.epoch,
            "records_lost": records_lost_summary(self.ctx.store),
            "aging_runs": self._aging_runs(),
        }

    def _aging_runs(self) -> dict[str, dict[str, Any]]:
        """Each aging run this station is collecting: its pixel, samples and the age of its
        newest sample (seconds on this host since it arrived; None before the first one of this
        session) — a run that stopped producing shows here, and raises alert/aging_stalled."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for ch, col in sorted(self.ctx.acq.aging.items()):
            last = getattr(col, "last_mono", None)
            run_id = getattr(col, "run_id", None)
            out[f"run {run_id}"] = {
                "pixel": getattr(col, "pixel", None), "channel": ch,
                "samples": getattr(col, "n", None),
                "last_sample_age_s": None if last is None else round(now - last, 2)}
        return out

    async def wait(self, job_id: str) -> dict[str, Any]:
        task = self.tasks.get(job_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return self.get(job_id)

    # -- running ----------------------------------------------------------------------------
    def prepare(self, ctx: StationContext) -> None:
        """Before the link starts: rebuild the aging runs of unfinished jobs, so the samples the
        board buffered while the station was down reach them."""
        self.table.ensure()
        for job_id in self.table.ids_in_states(UNFINISHED):
            for run_id, pixel in self.table.resumable_aging_runs(job_id):
                self._resumed[(job_id, pixel)] = rebuild_aging_collector(ctx, run_id)
                log.info("job %s: will resume aging run %d of pixel %d", job_id, run_id, pixel)
            # sweeps cut by the crash are run again
            self.table.interrupt_running_sweeps(job_id)

    def start(self) -> None:
        """Start (or resume) every unfinished job."""
        for job_id, state in self.table.in_states_oldest_first(UNFINISHED):
            ev = self.running.setdefault(job_id, asyncio.Event())
            if state != "paused":
                ev.set()
            self._spawn(job_id)

    async def shutdown(self) -> None:
        """Stop the tasks (outputs off via their cleanup) but keep the jobs unfinished, so the
        next start resumes them."""
        self.ctx.shutting_down = True  # the runs cut now end 'interrupted', resumable
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _spawn(self, job_id: str) -> None:
        ev = self.running.setdefault(job_id, asyncio.Event())
        if self._row(job_id)["state"] != "paused":
            ev.set()
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self.tasks[job_id] = task

        def forget(t: asyncio.Task[None]) -> None:
            if self.tasks.get(job_id) is t:
                del self.tasks[job_id]

        task.add_done_callback(forget)

    async def _run(self, job_id: str) -> None:
        row = self._row(job_id)
        progress = row["progress"]
        link = self.ctx.link
        if not link.is_up:  # the daemon runs without its board: jobs wait for it
            log.info("job %s waits for the board (link %s: %s)", job_id, link.state, link.reason)
            await link.wait_until_up()
            row = self._row(job_id)
        if row["state"] == "queued":
            self._update(job_id, state="running", started_at=time.time())
            self._event("job/started", job_id)
        running = self.running[job_id]
        try:
            spec = JobSpec.model_validate(row["spec"])
            for n in range(int(progress.get("step", 0)), len(spec.steps)):
                step = spec.steps[n]
                done = {int(d["pixel"]) for d in progress["done"] if d["step"] == n}
                todo = [(i, p) for i, p in enumerate(step.pixels) if p not in done]
                if step.kind == "sweep":
                    assert step.sweep is not None
                    for _i, px in todo:
                        await running.wait()
                        for attempt in range(1, SWEEP_ATTEMPTS + 1):
                            res = await run_sweep(self.ctx, px, step.sweep.params(), job_id=job_id)
                            if res.reason != "reboot" or attempt == SWEEP_ATTEMPTS:
                                break
                            # the board reset under the sweep: its run keeps what was measured
                            # (end reason "reboot") and the sweep is taken again
                            self._event("alert/sweep_retried", job_id, pixel=px,
                                        run_id=res.run_id, reason=res.reason, attempt=attempt)
                        self._done(job_id, progress, n, px, res.run_id, res.reason)
                else:
                    assert step.aging is not None
                    await running.wait()
                    await asyncio.gather(*(self._age(job_id, progress, n, i, px, step.aging, running)
                                           for i, px in todo))
                progress["step"] = n + 1
                self._update(job_id, progress=progress)
            self._update(job_id, state="completed", ended_at=time.time())
            self._event("job/completed", job_id)
        except asyncio.CancelledError:
            raise
        except (LinkDown, RequestTimeout, LimitError, Exception) as e:
            log.exception("job %s failed", job_id)
            self._update(job_id, state="failed", ended_at=time.time(), error=str(e))
            self._event("job/failed", job_id, error=str(e))

    async def _age(self, job_id: str, progress: dict[str, Any], n: int, i: int, px: int,
                   aging: AgingSpec, running: asyncio.Event) -> None:
        resumed = self._resumed.pop((job_id, px), None)

        def alert(kind: str, data: dict[str, Any]) -> None:
            self._event(f"alert/{kind}", job_id, **data)

        if resumed is not None:
            col, params = resumed
            res = await run_aging(self.ctx, px, params, job_id=job_id, resume=col, running=running,
                                  on_alert=alert)
        else:
            res = await run_aging(self.ctx, px, aging.for_pixel(i), job_id=job_id, running=running,
                                  on_alert=alert)
        self._done(job_id, progress, n, px, res.run_id, res.reason)

    def _done(self, job_id: str, progress: dict[str, Any], n: int, px: int, run_id: int,
              reason: str) -> None:
        progress["done"].append({"step": n, "pixel": px, "run_id": run_id, "reason": reason})
        self._update(job_id, progress=progress)
        self._event("job/progress", job_id, step=n, pixel=px, run_id=run_id, reason=reason)


def records_lost_summary(store: Any) -> dict[str, Any]:
    """What the board lost before the store got it: total records, losses, the latest one."""
    rows = store.records_lost()
    last = rows[-1] if rows else None
    return {"records": sum(r["count"] for r in rows), "losses": len(rows),
            "last": None if last is None else {k: last[k] for k in (
                "stream", "count", "from_seq", "to_seq", "epoch", "reason", "ts")}}
