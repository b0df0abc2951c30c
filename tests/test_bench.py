"""``station bench --quick --json`` runs and reports every figure as a finite number.

Only the shape is checked, never the values against the goals (the machine is shared and
noisy; the benchmark reports, docs/benchmarks.md records what was measured).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("stream_samples_per_s", "stream_vs_raw_ratio", "wire_fraction", "sweep_overhead_pct",
        "sweep_speedup_vs_per_point", "mqtt_latency_p50_ms", "mqtt_latency_p99_ms",
        "cpu_pct_256ch_10hz", "rss_mb_256ch_10hz")


@pytest.mark.slow
def test_bench_quick_json() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    res = json.loads(lines[0])
    assert res["quick"] is True
    assert isinstance(res["machine"], dict) and res["machine"]["nproc"]
    has_mosquitto = bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
    for k in KEYS:
        assert k in res, k
        v = res[k]
        if v is None and k.startswith("mqtt_") and not has_mosquitto:
            continue  # reported null, with the reason in "notes"
        assert isinstance(v, int | float) and math.isfinite(v), (k, v)
    # (e) is measured at full width: 256 pixels on the 256 channels of the board, 10 Hz each
    d = res["detail_daemon"]
    assert (d["channels"], d["board_channels"], d["interval_s"]) == (256, 256, 0.1)


def test_bench_command_registers() -> None:
    import argparse

    from station.commands import bench_cmd

    p = argparse.ArgumentParser()
    bench_cmd.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["bench", "--quick", "--json"])
    assert args.quick and args.json and args.func is bench_cmd.main
    assert bench_cmd.BENCH_FILE.is_file()
