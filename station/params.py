"""The parameter sets of the station's procedures (a J–V–L sweep, an aging run), defined once.

Each is a pydantic dataclass: a field's name (with its unit), type, default, bounds and
description are written here and nowhere else. From them are derived

- the options of ``station sweep`` and ``station age`` (:mod:`station.commands.params_args`;
  a field's :class:`Cli` metadata keeps an older flag name where there is one),
- the ``[sweep]`` and ``[aging]`` sections of a job (:class:`SweepSpec`, :class:`AgingSpec`,
  used by :mod:`station.jobs`),
- the parameter tables of ``docs/jobs.md`` (:func:`params_table`; ``python -m station.params
  --write`` regenerates them, ``tests/test_params.py`` fails when they differ).

Bounds that are the board's come from the protocol spec's ranges (``firmware_protocol.spec``);
a board may accept less, which :func:`station.jobs.check_board_ranges` checks against its
``capabilities`` when a job is submitted. The station's safety limits (voltages, current
densities: ``[limits]`` of the configuration) are checked by the procedures, not here.
Being dataclasses, ``dataclasses.asdict`` and ``__dataclass_fields__`` work on them as before.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Annotated, Any

import annotated_types as at
from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from firmware_protocol.channels import MAX_AGING_CHANNELS
from firmware_protocol.spec import MESSAGES_BY_NAME, Range, field_range

from .errors import LimitError

CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
"""Unknown keys and NaN/infinite values are refused."""


@plain_dataclass(frozen=True)
class Cli:
    """How a parameter appears on the command line. ``flag``: its option (default
    ``--field-name``; a boolean that defaults to true: ``--no-field-name``; "" for none);
    ``metavar``; ``required`` on the command line even though a job has a default; ``group``:
    a required choice of one among the fields that share it."""

    flag: str | None = None
    metavar: str | None = None
    required: bool = False
    group: str | None = None


NO_CLI = Cli(flag="")


def spec_bounds(message: str, field: str, per: float = 1.0) -> FieldInfo:
    """The protocol spec's range of ``message.field`` as pydantic bounds (divided by ``per``,
    e.g. 1000 for a field in ms that the station keeps in seconds)."""
    r = field_range(message, field)
    if r is None:
        raise AssertionError(f"{message}.{field} has no range in the protocol spec")
    lo, hi = r.lo / per, r.hi / per
    bounds: FieldInfo = Field(gt=lo, le=hi) if r.lo_open else Field(ge=lo, le=hi)
    return bounds


def _max_len(message: str, field: str) -> int:
    return next(f.max_len for f in MESSAGES_BY_NAME[message].fields if f.name == field)


MAX_PD_GAIN = _max_len("capabilities", "pd_gains_v_per_a") - 1
"""Highest photodiode gain index of any board (a board has as many as its capabilities list)."""

STOP_LEVELS = {"t95": 0.95, "t90": 0.90, "t80": 0.80, "t70": 0.70, "t50": 0.50}


@dataclass(config=CONFIG)
class SweepParams:
    """One J–V–L sweep of one pixel (``station sweep``; a job's ``[sweep]``)."""

    start_v: Annotated[float, Cli("--start", "V"), Field(
        description="first voltage of the linear program")] = 0.0
    stop_v: Annotated[float, Cli("--stop", "V", required=True), Field(
        description="last voltage of the linear program, its last point even when not a whole "
                    "number of steps from start_v (within limits.max_voltage_v)")] = 6.0
    step_v: Annotated[float, Cli("--step", "V"), Field(
        description="voltage step: non-zero, pointing from start_v to stop_v")] = 0.05
    voltages_v: Annotated[list[float] | None, Cli("--voltages", "V,V,..."), Field(
        max_length=_max_len("sweep_start", "voltages_v"),
        description="a list program instead of start_v/stop_v/step_v")] = None
    dwell_ms: Annotated[float, spec_bounds("sweep_start", "dwell_ms"), Field(
        description="settling time at each voltage before it is read")] = 10.0
    integration_ms: Annotated[float, spec_bounds("sweep_start", "integration_ms"), Field(
        description="integration of each point's current and photodiode readings")] = 20.0
    compliance_ma_cm2: Annotated[float | None, Cli("--compliance", "MA_CM2"), Field(
        gt=0, description="current-density compliance, set on the board (default: "
                          "limits.max_current_density_ma_cm2)")] = None
    reverse: Annotated[bool, Field(description="also scan back down (hysteresis)")] = False
    stop_on_compliance: Annotated[bool, Field(
        description="end the sweep when compliance is hit (else keep sweeping, "
                    "current-limited)")] = True
    autorange: Annotated[bool, Field(
        description="let the board autorange the photodiode gain")] = True
    pd_gain: Annotated[int, Field(
        ge=0, le=MAX_PD_GAIN, description="initial photodiode gain index (below the number "
                                          "of gains in the board's capabilities)")] = 2
    spectrum_at_v: Annotated[list[float] | None, Cli("--spectrum-at", "V,V,..."), Field(
        max_length=_max_len("sweep_start", "spectrum_at_v"),
        description="take EL spectra at these voltages (default: 16 from the pixel's last "
                    "turn-on voltage, else 30 % of the way up, to the top of the sweep)")] = None
    spectrum_integration_ms: Annotated[float, spec_bounds(
        "sweep_start", "spectrum_integration_ms"), Field(
        description="integration of each spectrum")] = 400.0
    breakdown_v_drop: Annotated[float, Cli(metavar="V"), Field(
        ge=0, description="end the sweep when the measured voltage falls this far below the "
                          "set voltage (a breakdown); 0: off")] = 0.0
    dark_n: Annotated[int, spec_bounds("pd_read", "n"), Cli(metavar="N"), Field(
        description="photodiode dark readings averaged before the sweep")] = 16
    dark_max_age_s: Annotated[float, Cli(metavar="S"), Field(
        ge=0, le=86400, description="reuse the pixel's dark reading (same n and integration, "
                                    "same board session, temperatures within 2 °C) when "
                                    "younger than this; 0: measure it before every sweep")] = 300.0
    threshold_cd_m2: Annotated[float, Cli("--threshold", "CD_M2"), Field(
        gt=0, description="luminance defining the turn-on voltage V_on")] = 1.0

    @model_validator(mode="after")
    def _direction(self) -> SweepParams:
        if not self.voltages_v and (self.step_v == 0
                                    or (self.stop_v - self.start_v) * self.step_v < 0):
            raise ValueError(f"step_v = {self.step_v:g} must be non-zero and point from "
                             f"start_v = {self.start_v:g} to stop_v = {self.stop_v:g}")
        return self

    def program(self) -> list[float]:
        if self.voltages_v:
            return list(self.voltages_v)
        if self.step_v == 0 or (self.stop_v - self.start_v) * self.step_v < 0:
            raise LimitError("sweep: step_v must be non-zero and point from start_v to stop_v")
        n = math.floor((self.stop_v - self.start_v) / self.step_v + 1e-9) + 1
        return [self.start_v + i * self.step_v for i in range(n)]


@dataclass(config=CONFIG)
class AgingSettings:
    """What every pixel of an aging run shares; :class:`AgingParams` adds one pixel's drive
    (and its channel), a job's :class:`AgingSpec` a drive for each of its pixels."""

    until: Annotated[str, Field(
        description="end at t95, t90, t80, t70 or t50 (relative to L0) or after a duration "
                    "such as 300h, 2d or 90m")] = "t50"
    interval_s: Annotated[float, spec_bounds("aging_start", "interval_ms", 1000),
                          Cli("--interval", "S"), Field(
        description="sample interval, board seconds")] = 60.0
    max_duration_h: Annotated[float, Cli("--max-duration", "H"), Field(
        gt=0, description="end after this many hours whatever happens")] = 10000.0
    voltage_runaway_v: Annotated[float, Cli("--voltage-runaway", "V"), Field(
        gt=0, description="end when the voltage rises this much above its start")] = 3.0
    compliance_v: Annotated[float | None, Cli(metavar="V"), Field(
        gt=0, description="the aging driver's voltage compliance (default: the board's; at "
                          "most limits.max_voltage_v)")] = None
    interim_sweep_every_h: Annotated[float | None, Cli("--interim-sweep-every", "H"), Field(
        gt=0, description="interrupt the aging for a J-V-L sweep every this many hours")] = None
    interim_sweep: Annotated[SweepParams | None, NO_CLI, Field(
        description="that sweep's parameters, as [sweep] (default: [sweep]'s defaults)")] = None
    spectrum_every_h: Annotated[float, Cli(metavar="H"), Field(
        gt=0, description="take an EL spectrum every this many hours")] = 24.0
    pd_gain: Annotated[int, Field(
        ge=0, le=MAX_PD_GAIN, description="initial photodiode gain index (autoranged on the "
                                          "board)")] = 2

    @field_validator("until")
    @classmethod
    def _until(cls, v: str) -> str:
        if v.lower() not in STOP_LEVELS:
            try:
                parse_duration_h(v)
            except LimitError as e:
                raise ValueError(str(e)) from None
        return v

    def stop_level(self) -> float | None:
        return STOP_LEVELS.get(self.until.lower())

    def duration_h(self) -> float | None:
        if self.stop_level() is not None:
            return None
        return parse_duration_h(self.until)


CURRENT_DENSITY = "constant current density (within limits.max_aging_current_density_ma_cm2)"
INITIAL_LUMINANCE = "find the current that gives this initial luminance (a short search)"


@dataclass(config=CONFIG)
class AgingParams(AgingSettings):
    """One pixel's constant-current aging run (``station age``)."""

    current_density_ma_cm2: Annotated[float | None, Cli("--current-density", "MA_CM2",
                                                        group="drive"),
                                      Field(gt=0, description=CURRENT_DENSITY)] = None
    initial_luminance_cd_m2: Annotated[float | None, Cli("--initial-luminance", "CD_M2",
                                                         group="drive"),
                                       Field(gt=0, description=INITIAL_LUMINANCE)] = None
    channel: Annotated[int | None, Field(
        ge=0, le=MAX_AGING_CHANNELS - 1, description="aging driver (default: pixel - 1)")] = None


PER_PIXEL = "; one value for every pixel, or a list of one per pixel"
PositiveFloat = Annotated[float, at.Gt(0)]


@dataclass(config=CONFIG)
class AgingSpec(AgingSettings):
    """A job's ``[aging]``: :class:`AgingSettings` and a drive for each of its pixels (each
    pixel ages on its own driver, pixel - 1)."""

    current_density_ma_cm2: Annotated[PositiveFloat | list[PositiveFloat] | None, Field(
        description=CURRENT_DENSITY + PER_PIXEL)] = None
    initial_luminance_cd_m2: Annotated[PositiveFloat | list[PositiveFloat] | None, Field(
        description=INITIAL_LUMINANCE + PER_PIXEL)] = None

    @model_validator(mode="after")
    def _one_drive(self) -> AgingSpec:
        if (self.current_density_ma_cm2 is None) == (self.initial_luminance_cd_m2 is None):
            raise ValueError("give exactly one of current_density_ma_cm2 and "
                             "initial_luminance_cd_m2")
        return self

    def for_pixel(self, i: int) -> AgingParams:
        """The parameters of the job's ``i``-th pixel."""

        def pick(v: float | list[float] | None) -> float | None:
            return v[i] if isinstance(v, list) else v

        shared = {k: getattr(self, k) for k in AgingSettings.__dataclass_fields__}
        return AgingParams(**shared, current_density_ma_cm2=pick(self.current_density_ma_cm2),
                           initial_luminance_cd_m2=pick(self.initial_luminance_cd_m2))


@dataclass(config=CONFIG)
class SweepSpec(SweepParams):
    """A job's ``[sweep]``: the sweep's parameters as they are."""

    def params(self) -> SweepParams:
        return self


def parse_duration_h(text: str) -> float:
    t = text.strip().lower()
    units = {"s": 1 / 3600, "m": 1 / 60, "min": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            try:
                v = float(t[: -len(u)])
            except ValueError:
                break
            if v <= 0:
                break
            return v * units[u]
    raise LimitError(f"cannot read duration {text!r}: use t95/t90/t80/t50 or a number with "
                     f"s, m, h, d or w (e.g. 300h)")


UNITS = {"_ma_cm2": "mA/cm²", "_cd_m2": "cd/m²", "_ms": "ms", "_s": "s", "_h": "h", "_v": "V"}
BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def error_message(err: Any) -> str:
    """A pydantic error of a parameter in words: its message, with the field's unit after a
    bound (``Input should be less than or equal to 10000 ms``)."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][-1]) if err["loc"] else ""
    unit = next((u for suffix, u in UNITS.items() if name.endswith(suffix)), "")
    return f"{msg} {unit}" if unit and err["type"] in BOUND_ERRORS else msg


# -- derived: the parameter tables of docs/jobs.md ----------------------------------------------

def model_fields(model: type[Any]) -> dict[str, FieldInfo]:
    """A parameter set's fields, in order, with their pydantic metadata."""
    fields: dict[str, FieldInfo] = model.__pydantic_fields__
    return fields


def cli_of(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def cli_flag(name: str, info: FieldInfo) -> str | None:
    """The command-line option of a field (None: not on the command line)."""
    flag = cli_of(info).flag
    if flag == "" or _nested(info):
        return None
    if flag is not None:
        return flag
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if info.default is True else f"--{dashed}"


def _nested(info: FieldInfo) -> bool:
    return any(isinstance(a, type) and hasattr(a, "__pydantic_fields__")
               for a in (info.annotation, *getattr(info.annotation, "__args__", ())))


def allowed(info: FieldInfo) -> str:
    """The values a field takes, in words: its bounds as an interval, its list length."""
    lo: float | None = None
    hi: float | None = None
    lo_open = False
    n = None
    for m in info.metadata:
        if isinstance(m, at.Gt):
            lo, lo_open = float(m.gt), True  # type: ignore[arg-type]
        elif isinstance(m, at.Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, at.Le):
            hi = float(m.le)  # type: ignore[arg-type]
        elif isinstance(m, at.MaxLen):
            n = m.max_length
    parts = []
    if lo is not None and hi is not None:
        parts.append(str(Range(lo, hi, lo_open)))
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {lo:g}")
    if n is not None:
        parts.append(f"at most {n} values")
    return ", ".join(parts)


def _default(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def params_table(job_model: type[Any], cli_model: type[Any]) -> str:
    """The markdown table of one procedure's parameters: its job key (a field of
    ``job_model``), its option of ``station ...`` (a field of ``cli_model``), default, allowed
    values and description."""
    job, cli = model_fields(job_model), model_fields(cli_model)
    rows = ["| job key | command-line option | default | allowed | description |",
            "|---|---|---|---|---|"]
    for name in [*job, *(n for n in cli if n not in job)]:
        info = job.get(name) or cli[name]
        flag = cli_flag(name, cli[name]) if name in cli else None
        option = f"`{flag}`" if flag else "—"
        if flag and cli_of(cli[name]).required:
            option += " (required)"
        bounds = allowed(info) or (allowed(cli[name]) if name in cli else "")
        rows.append(f"| {f'`{name}`' if name in job else '— (not in jobs)'} | {option} "
                    f"| {_default(info.default)} | {bounds or '—'} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


DOCS = Path(__file__).resolve().parent.parent / "docs" / "jobs.md"
TABLES = {"sweep": (SweepSpec, SweepParams), "aging": (AgingSpec, AgingParams)}


def render_docs(text: str) -> str:
    """``text`` (docs/jobs.md) with each generated table replaced by the models' own."""
    for name, (job_model, cli_model) in TABLES.items():
        begin, end = f"<!-- params:{name} begin -->", f"<!-- params:{name} end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise LimitError(f"docs/jobs.md lacks the {begin} ... {end} markers")
        replacement = f"{begin}\n{params_table(job_model, cli_model)}{end}"
        text = pattern.sub(lambda _m: replacement, text)  # noqa: B023 (used at once)
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m station.params [--write]``: check (or rewrite) docs/jobs.md's tables."""
    args = sys.argv[1:] if argv is None else argv
    text = DOCS.read_text()
    new = render_docs(text)
    if new == text:
        return 0
    if "--write" in args:
        DOCS.write_text(new)
        print(f"rewrote the parameter tables of {DOCS}")
        return 0
    print(f"{DOCS}: parameter tables differ from station/params.py; run "
          f"python -m station.params --write", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
