"""``station bench``: the end-to-end benchmark (``bench/bench_e2e.py``) from the station CLI.

The benchmark lives in the repository's ``bench/`` directory (it is not part of the installed
package); this module loads it from there and runs its ``main``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCH_FILE = Path(__file__).resolve().parents[2] / "bench" / "bench_e2e.py"
WEB_BENCH_FILE = BENCH_FILE.with_name("bench_web.py")

EPILOG = """Measures, against the simulator over loopback sockets: (a) end-to-end stream throughput
(board -> decode -> photometry -> store -> InfluxDB batch) beside a raw decode baseline, (b) the
fraction of a 921600-baud wire delivered, (c) sweep overhead and speed-up over a per-point loop,
(d) sample-to-MQTT-subscriber latency, (e) daemon CPU and RSS under 256-channel x 10 Hz load.
Starts its own Mosquitto and VictoriaMetrics on loopback when installed. Reports; never fails on
a goal. See docs/benchmarks.md.

With --web instead: the daemon's web server with 20 push-channel viewers: commit-to-viewer
latency (p50, p99) and the daemon's added CPU (bench/bench_web.py, docs/web.md).

examples:
  station bench --quick          # under a minute
  station bench --web
  station bench --json > bench.json
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="end-to-end benchmark: throughput, wire, sweep, MQTT, CPU",
                       description="Run the end-to-end benchmark (bench/bench_e2e.py).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--web", action="store_true", help="measure the web server with 20 viewers "
                   "instead (latency, added CPU)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    path = WEB_BENCH_FILE if getattr(args, "web", False) else BENCH_FILE
    if not path.is_file():
        print(f"station bench: {path} not found (run from a source checkout)",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = [*(["--quick"] if args.quick else []), *(["--json"] if args.json else [])]
    rc: int = mod.main(argv)
    return rc
