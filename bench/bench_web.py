"""Web viewers' cost: sample-to-viewer latency and the daemon's added CPU with N push-channel
viewers (``station bench --web``; docs/web.md).

Starts ``station sim`` and ``station run`` with a [web] section (subprocesses, loopback), runs an
aging job on every pixel, then measures the daemon's CPU (``/proc/PID/stat``) over a window with no
viewer and over one with N viewers connected to ``/api/v1/live`` (aiohttp clients in this process
that parse every message as the page does). Latency is from the store commit that made the samples
visible (``commit_ts`` in each ``aging`` message; host clock) to the viewer's receipt of the
message; add at most ``store.batch_ms`` for a sample's wait before its commit. Reports; never fails
on a goal (p99 <= 1 s, added CPU <= 5 % of a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _viewer(url: str, lat: list[float], counts: dict[str, int], stop: asyncio.Event) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                now = time.time()
                msg = json.loads(line[6:])
                counts[event] = counts.get(event, 0) + 1
                if event == "aging" and msg.get("commit_ts"):
                    lat.append(now - msg["commit_ts"])
            if stop.is_set():
                break


async def _measure(base: str, pid: int, viewers: int, window_s: float) -> dict[str, Any]:
    lat: list[float] = []
    counts: dict[str, int] = {}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_viewer(base + "/api/v1/live", lat, counts, stop))
             for _ in range(viewers)]
    await asyncio.sleep(2.0)  # connected, first status sent
    lat.clear()
    c0, t0 = _cpu_s(pid), time.monotonic()
    await asyncio.sleep(window_s)
    c1, t1 = _cpu_s(pid), time.monotonic()
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out: dict[str, Any] = {"viewers": viewers, "window_s": round(t1 - t0, 2),
                           "daemon_cpu_pct_of_core": round(100 * (c1 - c0) / (t1 - t0), 2),
                           "aging_messages": len(lat), "messages": counts}
    if lat:
        a = np.array(lat)
        out["latency_ms"] = {"p50": round(1e3 * float(np.percentile(a, 50)), 1),
                             "p99": round(1e3 * float(np.percentile(a, 99)), 1),
                             "max": round(1e3 * float(np.max(a)), 1)}
    return out


def run(viewers: int, window_s: float, speed: float, pixels: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        d = Path(tmp)
        sim = subprocess.Popen([sys.executable, "-m", "station", "sim", "--preset",
                                f"dbsa*{pixels}", "--speed", str(speed), "--seed", "1"],
                               cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        daemon = None
        try:
            assert sim.stdout is not None
            board = sim.stdout.readline().decode().strip()
            port = _free_port()
            px = ", ".join(f"{{ number = {i + 1}, device = \"dbsa\" }}" for i in range(pixels))
            (d / "station.toml").write_text(
                f'[station]\nid = "bench-web"\n[board]\nurl = "{board}"\n[store]\n'
                f'path = "{d / "station.db"}"\n[[substrates]]\nid = "S1"\npixels = [{px}]\n'
                f'[web]\nlisten = "127.0.0.1:{port}"\n')
            job = (f'kind = "aging"\npixels = [{", ".join(str(i + 1) for i in range(pixels))}]\n'
                   '[aging]\ncurrent_density_ma_cm2 = 0.5\nuntil = "20000h"\ninterval_s = 60\n')
            (d / "job.toml").write_text(job)
            daemon = subprocess.Popen([sys.executable, "-m", "station", "run", "--config",
                                       str(d / "station.toml"), "--job", str(d / "job.toml")],
                                      cwd=d, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
            assert daemon.stdout is not None
            base = daemon.stdout.readline().decode().split("web: serving ", 1)[1].strip()
            time.sleep(10.0)  # the job started (dark readings, first spectra) and steady
            rate = pixels * speed / 60.0
            idle1 = asyncio.run(_measure(base, daemon.pid, 0, window_s))
            busy = asyncio.run(_measure(base, daemon.pid, viewers, window_s))
            idle2 = asyncio.run(_measure(base, daemon.pid, 0, window_s))
            idle_cpu = (idle1["daemon_cpu_pct_of_core"] + idle2["daemon_cpu_pct_of_core"]) / 2
            return {"samples_per_s": rate, "pixels": pixels, "sim_speed": speed,
                    "no_viewer": [idle1, idle2], "with_viewers": busy,
                    "added_cpu_pct_of_core": round(busy["daemon_cpu_pct_of_core"] - idle_cpu, 2)}
        finally:
            for p in (daemon, sim):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per measurement window")
    ap.add_argument("--speed", type=float, default=60.0,
                    help="simulator speed: with interval_s = 60, speed/60 samples/s per pixel")
    ap.add_argument("--pixels", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="8 s windows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args.viewers, 8.0 if args.quick else args.window, args.speed, args.pixels)
    if args.json:
        print(json.dumps(res))
        return 0
    b, i = res["with_viewers"], res["no_viewer"]
    print(f"web viewers: {res['pixels']} pixels aging, {res['samples_per_s']:.0f} samples/s")
    print(f"  daemon CPU, no viewer:      {i[0]['daemon_cpu_pct_of_core']:.1f} % / "
          f"{i[1]['daemon_cpu_pct_of_core']:.1f} % of a core (before / after)")
    print(f"  daemon CPU, {b['viewers']} viewers:     {b['daemon_cpu_pct_of_core']:.1f} % of a core "
          f"(added {res['added_cpu_pct_of_core']:.1f} %; goal <= 5 %)")
    lat = b.get("latency_ms")
    if lat:
        print(f"  commit-to-viewer latency:   p50 {lat['p50']} ms, p99 {lat['p99']} ms, max "
              f"{lat['max']} ms over {b['aging_messages']} messages (goal p99 <= 1000 ms)")
    else:
        print("  commit-to-viewer latency:   no aging message received")
    return 0


if __name__ == "__main__":
    sys.exit(main())
