"""``direction`` of a sweep point: one enum, serialised as the text it always was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from firmware_protocol.spec import SampleFlags
from station.direction import SweepDirection
from station.sinks.mqtt import SweepPointMessage


def test_the_values_are_the_text_stored_exported_and_published():
    assert [d.value for d in SweepDirection] == ["forward", "reverse"]
    assert SweepDirection.FORWARD == "forward" and f"{SweepDirection.REVERSE}" == "reverse"
    assert json.dumps({"direction": SweepDirection.REVERSE}) == '{"direction": "reverse"}'


def test_the_board_flag_gives_the_direction_as_plain_text():
    flags = np.array([0, int(SampleFlags.REVERSE), int(SampleFlags.REVERSE) | 1, 1], np.uint16)
    got = SweepDirection.of_flags(flags)
    assert got.tolist() == ["forward", "reverse", "reverse", "forward"]
    assert all(type(x) is str for x in got.tolist())


def test_a_bad_direction_is_refused_naming_the_allowed_values():
    assert SweepDirection.parse("reverse") is SweepDirection.REVERSE
    with pytest.raises(ValueError, match="direction must be 'forward' or 'reverse', got 'up'"):
        SweepDirection.parse("up")


def test_the_mqtt_schema_accepts_the_two_values_and_refuses_others():
    base = {"schema": 1, "station": "s", "seq": 1, "epoch": 0, "rev": 0, "t_us": 1, "time_us": 2,
            "run_id": 1, "job": None, "substrate": None, "device": None, "label": None, "pixel": 1,
            "flags": 0, "voltage_v": 1.0, "current_a": 0.0, "photodiode_a": 0.0,
            "luminance_cd_m2": 0.0, "eqe_pct": 0.0, "sweep_id": 1, "idx": 0,
            "voltage_set_v": 1.0, "current_density_ma_cm2": 0.0, "ce_cd_a": 0.0, "pe_lm_w": 0.0}
    m = SweepPointMessage.model_validate(dict(base, direction="reverse"))
    assert m.direction is SweepDirection.REVERSE
    assert json.loads(m.model_dump_json(by_alias=True))["direction"] == "reverse"
    with pytest.raises(ValueError):
        SweepPointMessage.model_validate(dict(base, direction="sideways"))
