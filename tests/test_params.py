"""A procedure's parameters are defined once (issue 13): the options of ``station sweep`` and
``station age``, the sections of a job file and the tables of docs/jobs.md all come from
``station/params.py``, so they cannot drift apart again — the same names, the same defaults,
the same bounds (the board's from the protocol spec), and a clear refusal naming the field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_protocol.spec import field_range
from station.cli import build_parser
from station.commands.params_args import params_from_args
from station.errors import LimitError
from station.jobs import JobError, load_job_file, parse_job
from station.params import (
    DOCS,
    AgingParams,
    AgingSpec,
    SweepParams,
    SweepSpec,
    cli_flag,
    model_fields,
    render_docs,
)

ROOT = Path(__file__).resolve().parent.parent


def cli_args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_the_sweep_defaults_of_the_command_line_a_job_and_the_model_are_one() -> None:
    args = cli_args("sweep", "--pixel", "1", "--stop", "6", "--out", "x")
    cli = params_from_args(SweepParams, args)
    job = parse_job({"kind": "sweep", "pixels": [1]}).steps[0].sweep
    assert dataclasses.asdict(cli) == dataclasses.asdict(SweepParams()) == dataclasses.asdict(job)
    assert cli.step_v == 0.05  # what the README's `station sweep --stop 7` and the examples use
    for name, info in model_fields(SweepParams).items():  # argparse's own defaults too
        assert getattr(args, name) == info.default, name


def test_the_aging_defaults_of_the_command_line_a_job_and_the_model_are_one() -> None:
    args = cli_args("age", "--pixel", "1", "--current-density", "2", "--out", "x")
    cli = params_from_args(AgingParams, args)
    job = parse_job({"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": 2}})
    assert job.steps[0].aging is not None
    per_pixel = job.steps[0].aging.for_pixel(0)
    model = AgingParams(current_density_ma_cm2=2.0)
    assert dataclasses.asdict(cli) == dataclasses.asdict(model) == dataclasses.asdict(per_pixel)
    for name, info in model_fields(AgingParams).items():
        if hasattr(args, name) and name != "current_density_ma_cm2":
            assert getattr(args, name) == info.default, name


def test_every_field_has_a_description_and_the_job_sections_are_the_procedures_fields() -> None:
    for model in (SweepParams, AgingParams, SweepSpec, AgingSpec):
        for name, info in model_fields(model).items():
            assert info.description, (model.__name__, name)
    assert list(model_fields(SweepSpec)) == list(model_fields(SweepParams))
    # a job's aging section: every field of the procedure except the driver, chosen per pixel
    assert set(model_fields(AgingParams)) - set(model_fields(AgingSpec)) == {"channel"}
    assert set(model_fields(AgingSpec)) <= set(model_fields(AgingParams))


def test_existing_flag_names_are_kept_and_every_flag_sets_its_field() -> None:
    flags = {n: cli_flag(n, i) for n, i in model_fields(SweepParams).items()}
    assert {flags[n] for n in ("start_v", "stop_v", "step_v", "dwell_ms", "integration_ms",
                               "compliance_ma_cm2", "reverse", "stop_on_compliance",
                               "spectrum_at_v", "threshold_cd_m2")} == {
        "--start", "--stop", "--step", "--dwell-ms", "--integration-ms", "--compliance",
        "--reverse", "--no-stop-on-compliance", "--spectrum-at", "--threshold"}
    args = cli_args("sweep", "--pixel", "1", "--start", "2", "--stop", "4", "--step", "0.1",
                    "--dwell-ms", "5", "--integration-ms", "30", "--compliance", "100",
                    "--reverse", "--no-stop-on-compliance", "--no-autorange", "--pd-gain", "3",
                    "--spectrum-at", "3,3.5", "--spectrum-integration-ms", "200",
                    "--breakdown-v-drop", "0.5", "--dark-n", "8", "--dark-max-age-s", "0",
                    "--threshold", "10", "--out", "x")
    assert params_from_args(SweepParams, args) == SweepParams(
        start_v=2, stop_v=4, step_v=0.1, dwell_ms=5, integration_ms=30, compliance_ma_cm2=100,
        reverse=True, stop_on_compliance=False, autorange=False, pd_gain=3,
        spectrum_at_v=[3, 3.5], spectrum_integration_ms=200, breakdown_v_drop=0.5, dark_n=8,
        dark_max_age_s=0, threshold_cd_m2=10)
    args = cli_args("age", "--pixel", "1", "--initial-luminance", "100", "--until", "300h",
                    "--interval", "30", "--max-duration", "500", "--voltage-runaway", "2",
                    "--interim-sweep-every", "24", "--channel", "3", "--out", "x")
    assert params_from_args(AgingParams, args) == AgingParams(
        initial_luminance_cd_m2=100, until="300h", interval_s=30, max_duration_h=500,
        voltage_runaway_v=2, interim_sweep_every_h=24, channel=3)


def test_pd_gain_and_breakdown_v_drop_are_accepted_in_jobs() -> None:
    job = parse_job({"kind": "schedule", "steps": [
        {"kind": "sweep", "pixels": [1], "sweep": {"pd_gain": 4, "breakdown_v_drop": 0.5}},
        {"kind": "aging", "pixels": [2], "aging": {
            "current_density_ma_cm2": 1, "pd_gain": 1,
            "interim_sweep": {"breakdown_v_drop": 1.0, "pd_gain": 0}}}]})
    sweep, aging = job.steps[0].sweep, job.steps[1].aging
    assert sweep is not None and aging is not None
    assert (sweep.params().pd_gain, sweep.params().breakdown_v_drop) == (4, 0.5)
    p = aging.for_pixel(0)
    assert p.pd_gain == 1 and p.interim_sweep is not None
    assert (p.interim_sweep.breakdown_v_drop, p.interim_sweep.pd_gain) == (1.0, 0)


@pytest.mark.parametrize("where", ["sweep", "interim"])
def test_integration_above_the_protocols_maximum_is_refused_naming_the_key(where: str) -> None:
    hi = field_range("sweep_start", "integration_ms")
    assert hi is not None and hi.hi == 10_000
    sweep = {"integration_ms": 10_000.5}
    job = ({"kind": "sweep", "pixels": [1], "sweep": sweep} if where == "sweep" else
           {"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": 1,
                                                      "interim_sweep": sweep}})
    with pytest.raises(JobError) as e:
        parse_job(job)
    key = "sweep.integration_ms" if where == "sweep" else "aging.interim_sweep.integration_ms"
    assert f"{key}: Input should be less than or equal to 10000 ms" in str(e.value)
    assert parse_job({"kind": "sweep", "pixels": [1], "sweep": {"integration_ms": 10_000}})


def test_bad_command_line_values_are_refused_naming_the_option() -> None:
    cases = [
        (("sweep", "--stop", "6", "--integration-ms", "20000"),
         "--integration-ms (integration_ms): Input should be less than or equal to 10000 ms"),
        (("sweep", "--stop", "6", "--pd-gain", "9"), "--pd-gain (pd_gain): Input should be"),
        (("sweep", "--start", "6", "--stop", "0"), "step_v = 0.05 must be non-zero and point"),
        (("sweep", "--stop", "6", "--dwell-ms", "nan"), "--dwell-ms (dwell_ms): Input should "
                                                        "be a finite number"),
        (("age", "--current-density", "1", "--until", "soon"),
         "--until (until): cannot read duration 'soon'"),
        (("age", "--current-density", "1", "--interval", "0.001"),
         "--interval (interval_s): Input should be greater than or equal to 0.01 s"),
    ]
    for argv, says in cases:
        model = SweepParams if argv[0] == "sweep" else AgingParams
        args = cli_args(argv[0], "--pixel", "1", *argv[1:], "--out", "x")
        with pytest.raises(LimitError) as e:
            params_from_args(model, args)
        assert says in str(e.value), (argv, str(e.value))


def test_the_example_jobs_load() -> None:
    for path in sorted((ROOT / "examples" / "jobs").glob("*.toml")):
        assert load_job_file(path).steps, path


def test_docs_parameter_tables_are_the_models() -> None:
    text = DOCS.read_text()
    assert render_docs(text) == text, "python -m station.params --write"
    for model in (SweepParams, AgingParams):
        for name, info in model_fields(model).items():
            flag = cli_flag(name, info)
            assert f"`{name}`" in text or f"`{flag}`" in text, name
    r = subprocess.run([sys.executable, "-m", "station.params"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_docs_check_catches_a_drifted_default() -> None:
    text = DOCS.read_text()
    row = "| `step_v` | `--step` | 0.05 |"
    assert row in text
    drifted = text.replace(row, "| `step_v` | `--step` | 0.1 |")
    assert render_docs(drifted) == text != drifted
