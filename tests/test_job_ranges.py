"""Jobs are checked against the board's ranges when submitted (issue 15): a value the board
would refuse halfway through a schedule is refused at submit, naming the range and whose it is
— the board's own (its capabilities) once it has answered, the protocol spec's before."""

from __future__ import annotations

import dataclasses

import pytest

from firmware_protocol.messages import Capabilities
from firmware_protocol.spec import field_range
from sim.server import SimServer
from station.jobs import JobError, JobManager, board_ranges
from station.session import open_station
from tests.services import free_port

from .stationkit import station_config

REFUSED = [
    ({"kind": "sweep", "pixels": [1], "sweep": {"integration_ms": 8000}},
     "sweep.integration_ms = 8000 ms is outside the board's (its capabilities) range (0, 5000] ms"),
    ({"kind": "sweep", "pixels": [1], "sweep": {"integration_ms": 9000.5}}, "range (0, 5000] ms"),
    ({"kind": "sweep", "pixels": [1], "sweep": {"pd_gain": 6}},
     "sweep.pd_gain = 6 is outside the board's (its capabilities) range [0, 4]"),
    ({"kind": "sweep", "pixels": [1], "sweep": {"start_v": 0, "stop_v": 5, "step_v": 0.001}},
     "5001 points, more than the board's (its capabilities) maximum of 2000"),
    ({"kind": "schedule", "steps": [
        {"kind": "sweep", "pixels": [1]},
        {"kind": "aging", "pixels": [1], "aging": {
            "current_density_ma_cm2": 1, "interim_sweep_every_h": 1,
            "interim_sweep": {"spectrum_at_v": [3.0], "integration_ms": 7000}}}]},
     "steps.1: aging.interim_sweep.integration_ms = 7000 ms is outside"),
]
# outside the protocol's own range: refused by the job's schema (station/params.py), naming the key
OUT_OF_SPEC = [
    ({"kind": "sweep", "pixels": [1], "sweep": {"integration_ms": 20000}},
     "sweep.integration_ms: Input should be less than or equal to 10000 ms"),
    ({"kind": "aging", "pixels": [1], "aging": {"current_density_ma_cm2": 1, "interval_s": 0.005}},
     "aging.interval_s: Input should be greater than or equal to 0.01 s"),
]


async def test_a_job_out_of_the_boards_ranges_is_refused_at_submit_and_changes_nothing(tmp_path):
    server = SimServer(["dbsa", "otac"], speed=1e4, seed=2)
    server.board.cfg = dataclasses.replace(server.board.cfg, max_integration_ms=5000.0)
    url = await server.start()
    try:
        async with open_station(station_config(tmp_path, ["dbsa", "otac"]), url=url) as ctx:
            assert ctx.link.caps is not None and ctx.link.caps.max_integration_ms == 5000.0
            jm = JobManager(ctx)
            for job, says in REFUSED:
                with pytest.raises(JobError) as e:
                    await jm.submit(job, "tester")
                assert e.value.code == "limit" and says in str(e.value), (job, str(e.value))
            for job, says in OUT_OF_SPEC:
                with pytest.raises(JobError) as e:
                    await jm.submit(job, "tester")
                assert e.value.code == "bad_request" and says in str(e.value), (job, str(e.value))
            assert jm.list() == []
            assert server.board.counters.requests["sweep_start"] == 0
            ok = await jm.submit({"kind": "sweep", "pixels": [1], "sweep": {
                "start_v": 2.0, "stop_v": 2.5, "step_v": 0.25, "integration_ms": 5000}}, "t")
            assert (await jm.wait(ok["id"]))["state"] == "completed"  # the board took it
    finally:
        await server.stop()


async def test_before_any_board_answers_jobs_are_checked_against_the_protocols_ranges(tmp_path):
    cfg = station_config(tmp_path, ["dbsa"])
    async with open_station(cfg, url=f"socket://127.0.0.1:{free_port()}",
                            wait_for_board=False) as ctx:
        jm = JobManager(ctx)
        with pytest.raises(JobError) as e:
            await jm.submit({"kind": "sweep", "pixels": [1], "sweep": {
                "start_v": 0, "stop_v": 5, "step_v": 0.001}}, "t")
        assert "5001 points, more than the protocol's (no board has answered yet) maximum of " \
               "2000" in str(e.value)
        # above the protocol's range: refused by the job's schema, naming the key and its bound
        with pytest.raises(JobError) as e:
            await jm.submit({"kind": "sweep", "pixels": [1], "sweep": {"integration_ms": 20000}},
                            "t")
        assert e.value.code == "bad_request"
        assert "sweep.integration_ms: Input should be less than or equal to 10000 ms" in str(e.value)
        info = await jm.submit({"kind": "sweep", "pixels": [1],
                                "sweep": {"integration_ms": 9000}}, "t")
        assert info["state"] == "queued"  # waits for its board
        await jm.shutdown()


def test_an_older_board_without_the_range_fields_gets_the_specs_ranges():
    r = board_ranges(Capabilities(n_aging_channels=8))  # extension fields absent: 0
    assert r.integration_ms == field_range("sweep_start", "integration_ms")
    assert r.aging_interval_ms == field_range("aging_start", "interval_ms")
    assert r.aging_channels == 8 and r.sweep_points == 2000
