"""Telemetry equal to the store: derived values recomputed when a run ends (every point with all
the sweep's spectra, every aging sample with the final L0) reach the sinks as revisions.

VictoriaMetrics does not overwrite a point written twice (of two samples with one timestamp
in different parts it keeps either), so the sink runs with ``revisions = "live_fields"``: values
computed live go to ``live_<field>``, the final ones once to the field itself.

The daemon (``station run``) sweeps two pixels with spectra only from 3.5 V (the issue's
``examples/jobs/sweep.toml``: the live values below the first spectrum are missing) and ages one,
with the MQTT sink and the InfluxDB sink writing to a real VictoriaMetrics. After the runs end
and the sinks catch up, the database holds, point by point, exactly the store's final luminance,
EQE, CE and PE (and luminance and L/L0 of every aging sample), and the newest revision of each
point an MQTT subscriber got equals the store's row.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sim.server import SimServer
from station.config import load_config
from station.daemon import run_daemon
from tests.services import (  # noqa: F401  (fixtures)
    STATION_PASSWORD,
    STATION_USER,
    Collector,
    mqtt_broker,
    mqtt_certs,
    victoria,
    wait_until,
)

SWEEP_JOB = {"name": "JVL of pixels 1 and 2", "kind": "sweep", "pixels": [1, 2],
             "sweep": {"start_v": 0.0, "stop_v": 7.0, "step_v": 0.05, "dwell_ms": 10,
                       "integration_ms": 20, "reverse": True, "compliance_ma_cm2": 500,
                       "spectrum_at_v": [3.5, 4.0, 5.0, 6.0], "threshold_cd_m2": 1.0}}
AGING_JOB = {"name": "aging", "kind": "aging", "pixels": [1],
             "aging": {"current_density_ma_cm2": 2.0, "until": "3h", "interval_s": 20}}
SWEEP_FIELDS = ("luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w")
AGING_FIELDS = ("luminance_cd_m2", "l_rel")


def q(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(str(path), timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def caught_up(path: Path, sink: str, tables: tuple[str, ...]) -> bool:
    for t in tables:
        head = q(path, f"SELECT coalesce(max(id), 0) FROM {t}")
        cur = q(path, "SELECT last_id FROM sink_cursors WHERE sink = ? AND table_name = ?", (sink, t))
        if not head or not cur or cur[0][0] < head[0][0]:
            return False
    return True


def same(a: float | None, b: float | None, rel: float = 0.0) -> bool:
    """Equal, or both missing; ``rel``: VictoriaMetrics keeps about 12 significant digits."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and (a == b or abs(a - b) <= rel * abs(a))


@pytest.mark.slow
async def test_database_and_mqtt_end_with_the_stores_final_values(tmp_path, mqtt_broker, victoria):
    station = f"rev-{os.getpid()}"
    prefix = "ledstation"
    server = SimServer(["dbsa", "otac"], speed=3e3, seed=21)
    url = await server.start()
    fast = dict(poll_s=0.05, retry_min_s=0.05, retry_max_s=0.3, timeout_s=5.0)
    cfg = load_config(
        None, station={"id": station}, board={"url": url},
        store={"path": str(tmp_path / "station.db"), "batch_ms": 50.0},
        substrates=[{"id": "S1", "pixels": [
            {"number": i + 1, "label": f"P{i + 1}", "area_mm2": 4.0, "device": p}
            for i, p in enumerate(["dbsa", "otac"])]}],
        mqtt={"enabled": True, "url": mqtt_broker.url, "username": STATION_USER,
              "password": STATION_PASSWORD, "topic_prefix": prefix, "keepalive_s": 5,
              "aging_publish_hz": 1000.0, **fast},
        influxdb={"enabled": True, "url": victoria.url, "token": "t", "org": "lab", "bucket": "b",
                  "batch_size": 500, "revisions": "live_fields", **fast})
    store = Path(cfg.store.path)
    daemon: asyncio.Task[int] | None = None
    try:
        async with Collector(mqtt_broker, f"{prefix}/{station}/#") as sub:
            await wait_until(lambda: sub.subscribed > 0, what="subscriber ready")
            daemon = asyncio.create_task(run_daemon(cfg, jobs=[SWEEP_JOB, AGING_JOB]))
            await wait_until(lambda: len(q(store, "SELECT id FROM jobs WHERE state = 'completed'")) == 2
                             or daemon.done(), what="both jobs completed", timeout_s=300)
            assert not daemon.done(), daemon.result()
            tables = ("sweep_points", "aging_samples")
            await wait_until(lambda: caught_up(store, "influx", tables)
                             and caught_up(store, "mqtt", tables), what="sinks caught up",
                             timeout_s=120)
            runs = q(store, "SELECT id, kind FROM runs ORDER BY id")
            assert sorted(k for _, k in runs) == ["aging", "sweep", "sweep"]
            # MQTT: the newest revision of every point a subscriber got
            await wait_until(lambda: {p["seq"] for p in sub.on("/sweep")}
                             >= {s for s, in q(store, "SELECT seq FROM sweep_points")},
                             what="every sweep point on MQTT", timeout_s=60)
            await asyncio.sleep(1.0)  # revisions published after the last first-publication
            mqtt_msgs = list(sub.messages)
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(daemon, 60)
    finally:
        if daemon is not None and not daemon.done():
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await daemon
        await server.stop()

    # the store: final values everywhere, and revisions were needed (the first spectrum at 3.5 V)
    sweep = {r[0]: r[1:] for r in q(store, f"SELECT seq, {', '.join(SWEEP_FIELDS)}, rev, t_us, run_id "
                                           "FROM sweep_points")}
    aging = {r[0]: r[1:] for r in q(store, f"SELECT seq, {', '.join(AGING_FIELDS)}, rev, t_us, run_id "
                                           "FROM aging_samples")}
    n_lum = sum(1 for v in sweep.values() if v[0] is not None)
    assert n_lum >= 0.9 * len(sweep)  # luminance on (nearly) every point, turn-on region included
    assert all(v[4] == 1 for v in sweep.values())  # one final revision of every point
    assert all(v[2] == 1 for v in aging.values())  # l_rel against the final L0 on every sample

    # VictoriaMetrics: one point per stored row, holding the store's final values
    def vm_by_seq(measurement: str, fields: tuple[str, ...]) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        seq_series = victoria.export(f'{{__name__="{measurement}_seq",station="{station}"}}')
        key = {}
        for s in seq_series:
            labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                key[(labels, ts)] = int(v)
                out[int(v)] = {}
        for f in fields:
            for s in victoria.export(f'{{__name__="{measurement}_{f}",station="{station}"}}'):
                labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
                for ts, v in zip(s["timestamps"], s["values"], strict=True):
                    out[key[(labels, ts)]][f] = v
        return out

    db_sweep = vm_by_seq("sweep_point", SWEEP_FIELDS)
    assert set(db_sweep) == set(sweep)
    for seq, row in sweep.items():
        for i, f in enumerate(SWEEP_FIELDS):
            assert same(row[i], db_sweep[seq].get(f), 1e-10), (seq, f, row[i], db_sweep[seq].get(f))
    db_aging = vm_by_seq("aging_sample", AGING_FIELDS)
    assert set(db_aging) == set(aging)
    for seq, row in aging.items():
        for i, f in enumerate(AGING_FIELDS):
            assert same(row[i], db_aging[seq].get(f), 1e-10), (seq, f, row[i], db_aging[seq].get(f))

    # MQTT: the newest revision of each point equals the store's row
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for m in mqtt_msgs:
        p = m.payload
        if p.get("type") in ("sweep_point", "aging_sample"):
            k = (p["type"], p["seq"])
            if k not in newest or p["rev"] >= newest[k]["rev"]:
                newest[k] = p
    for seq, row in sweep.items():
        p = newest[("sweep_point", seq)]
        assert p["rev"] == row[4] and all(same(row[i], p[f]) for i, f in enumerate(SWEEP_FIELDS))
    for seq, row in aging.items():
        p = newest[("aging_sample", seq)]
        assert p["rev"] == row[2] and all(same(row[i], p[f]) for i, f in enumerate(AGING_FIELDS))

    # ... and station analyze of each run's export gives the run's own summary: one run, one
    # truth in the store, the database, MQTT and the re-analysis
    import json
    import subprocess
    import sys

    from station.export import export_run
    from station.store import Store

    st = Store(store)
    try:
        for run_id, kind in q(store, "SELECT id, kind FROM runs ORDER BY id"):
            out = export_run(st, run_id, tmp_path / f"exp{run_id}")
            summary = st.run(run_id)["summary"]
            r = subprocess.run([sys.executable, "-m", "station", "analyze", str(out), "--json"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            again = json.loads(r.stdout)
            again = again.get("summary", again)
            keys = (("l0_cd_m2", "t95_h", "t90_h") if kind == "aging"
                    else ("von_v", "l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w"))
            for k in keys:
                assert same(summary[k], again[k], 1e-9), (run_id, k, summary[k], again[k])
    finally:
        st.close()
