"""Soak: 24 virtual hours of 32 pixels aging with periodic interim sweeps, in about a minute.

Memory and open file descriptors of the station must stay flat once it has warmed up; CPU time
per stored sample is measured and printed (not asserted: the machine is shared). The simulator
runs in its own process so that only the station is measured.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from station.procedures import AgingParams, SweepParams, run_aging
from station.session import open_station

from .stationkit import station_config

ROOT = Path(__file__).resolve().parent.parent
N_PIXELS = 32
PRESETS = ["dbsa", "otac"] * (N_PIXELS // 2)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.soak
async def test_24_virtual_hours_of_32_pixels_with_sweeps_stay_flat(tmp_path):
    sim = subprocess.Popen([sys.executable, "-m", "station", "sim", "--preset", ",".join(PRESETS),
                            "--speed", "1800", "--seed", "8"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = sim.stdout.readline().strip()  # type: ignore[union-attr]
        cfg = station_config(tmp_path, PRESETS)
        marks: list[tuple[float, float, int, int]] = []
        async with open_station(cfg, url=url) as ctx:
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            tasks = [asyncio.create_task(run_aging(ctx, px, AgingParams(
                current_density_ma_cm2=0.5 + 0.1 * (px % 4), until="24h", interval_s=60.0,
                interim_sweep_every_h=8.0 if px <= 4 else None,
                interim_sweep=SweepParams(start_v=2.0, stop_v=3.5, step_v=0.1))))
                for px in range(1, N_PIXELS + 1)]
            while not all(t.done() for t in tasks):
                await asyncio.sleep(2.0)
                n = ctx.store.count("aging_samples")
                marks.append((asyncio.get_running_loop().time(), rss_mb(), open_fds(), n))
            results = [t.result() for t in tasks]
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            n_samples = ctx.store.count("aging_samples")
        assert all(r.reason == "duration" for r in results)
        assert n_samples >= N_PIXELS * 24 * 60
        cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        print(f"\nsoak: {n_samples} samples, {cpu_s:.1f} s CPU, "
              f"{1e6 * cpu_s / n_samples:.0f} µs CPU per sample; RSS {marks[0][1]:.0f} -> "
              f"{marks[-1][1]:.0f} MB; fds {marks[0][2]} -> {marks[-1][2]}")
        # flat after warm-up: no growth from the second quarter to the end (a fall is fine: in a
        # full test run, resources of earlier tests may be collected meanwhile)
        warm = marks[len(marks) // 4]
        assert marks[-1][1] - warm[1] < 40.0, marks
        assert marks[-1][2] - warm[2] <= 4, marks
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(20)
