"""The documentation says what the code does (issue 14): the sweep ``direction`` values a
dashboard built from docs/mqtt.md, the InfluxDB sink's docstring or the Grafana dashboard would
filter on are the ones the station stores; docs/deploy.md names no command as missing that the
CLI has."""

from __future__ import annotations

import re
from pathlib import Path

from station.procedures import SweepParams, run_sweep
from tests.stationkit import sim_station

ROOT = Path(__file__).resolve().parent.parent


def documented_directions() -> dict[str, set[str]]:
    import station.sinks.influx as influx

    mqtt = (ROOT / "docs" / "mqtt.md").read_text()
    dash = (ROOT / "deploy" / "compose" / "grafana" / "dashboards" / "led-station.json").read_text()
    return {
        "docs/mqtt.md": set(re.findall(r'"direction": "(\w+)"', mqtt))
        | set(re.findall(r"direction=(\w+)", mqtt)),
        "station/sinks/influx.py": set(re.findall(r"direction=([\w|]+)", influx.__doc__ or "")
                                       [0].split("|")),
        "grafana dashboard": set(re.findall(r'r\.direction\s*==\s*\\?"(\w+)', dash)),
    }


async def test_documented_direction_values_are_the_stored_ones(tmp_path) -> None:
    async with sim_station(tmp_path, ["dbsa"]) as (_server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=2.0, stop_v=3.5, step_v=0.25, reverse=True))
        stored = set(ctx.store.fetch("sweep_points", res.run_id)["direction"].tolist())
    assert stored == {"forward", "reverse"}
    docs = documented_directions()
    assert docs["docs/mqtt.md"] and docs["station/sinks/influx.py"]
    for where, values in docs.items():
        assert values <= stored, (where, values - stored)


def test_deploy_doc_names_no_existing_command_as_missing() -> None:
    from station.cli import build_parser

    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "not in the CLI yet" not in text and "being built" not in text
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[union-attr]
    for name in set(re.findall(r"`station (\w+)", text)):
        assert name in commands, name
