"""``station demo``: the main job — simulator, sweeps, aging, Table S1 beside the seed's."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import SEED_TABLE_S1, SWEEP_KEYS, AgingBar, SweepBar, clean, fmt

EPILOG = """It starts the board simulator in-process with one substrate of four pixels, two of each of
the seed's devices (presets dbsa and otac): it sweeps one pixel of each (J-V-L with EL spectra),
ages the other two in parallel at constant current for a few hundred virtual hours (the
simulator's clock runs fast; a fresh pixel is aged because a sweep to high current densities
ages a perovskite LED noticeably), prints the measured Table S1 next to the seed's and the
model's truth, and leaves the store, the exports, the plots and an HTML report per run in --out.
Nothing needs to be installed or running beyond this package.

examples:
  station demo                                   # about 20 s; everything in demo-out/
  station demo --out /tmp/demo --hours 100
"""

DEVICES = ("dbsa", "otac")
LAYOUT = ("dbsa", "dbsa", "otac", "otac")  # pixel 1, 3: sweeps; pixel 2, 4: aging
SWEEP_PIXEL = {"dbsa": 1, "otac": 3}
AGING_PIXEL = {"dbsa": 2, "otac": 4}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole station on the simulator (the main job)",
                       description="Demonstrate the station end to end on the simulator.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)")
    p.add_argument("--hours", type=float, default=300.0, help="virtual hours of aging (default 300)")
    p.add_argument("--current-density", type=float, default=0.2, metavar="MA_CM2",
                   help="aging current density (default 0.2 mA/cm²)")
    p.add_argument("--speed", type=float, default=1e5,
                   help="simulator clock speed, virtual s per wall s (default 1e5)")
    p.add_argument("--seed", type=int, default=1, help="simulator random seed (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from station.session import run_with_signals

    return run_with_signals(lambda: _run(args))


async def _run(args: argparse.Namespace) -> int:
    import asyncio

    from sim.presets import get_preset
    from sim.server import SimServer
    from sim.truth import lifetime_truth, sweep_truth
    from station.config import load_config
    from station.export import export_run
    from station.procedures import AgingParams, SweepParams, run_aging, run_sweep
    from station.session import open_station

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "station.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    t_start = time.monotonic()
    server = SimServer(list(LAYOUT), listen="tcp://127.0.0.1:0", speed=args.speed, seed=args.seed)
    url = await server.start()
    print(f"simulator: pixels {', '.join(f'{i + 1}={d}' for i, d in enumerate(LAYOUT))} at {url}, "
          f"clock x{args.speed:g}")
    cfg = load_config(None, station={"id": "demo"}, store={"path": str(db)},
                      substrates=[{"id": "S1", "pixels": [
                          {"number": i + 1, "label": f"S1-P{i + 1}", "area_mm2": 4.0, "device": d}
                          for i, d in enumerate(LAYOUT)]}])
    sweeps: dict[str, Any] = {}
    agings: dict[str, Any] = {}
    try:
        async with open_station(cfg, url=url) as ctx:
            for dev in DEVICES:
                bar = SweepBar(f"sweep {dev}", 1, disable=args.no_progress)
                try:
                    sweeps[dev] = await run_sweep(ctx, SWEEP_PIXEL[dev], SweepParams(
                        start_v=0.0, stop_v=7.0, step_v=0.05, reverse=True), progress=bar)
                finally:
                    bar.close()
            bars = {d: AgingBar(f"aging {d}", args.hours, disable=args.no_progress) for d in DEVICES}
            try:
                res = await asyncio.gather(*(
                    run_aging(ctx, AGING_PIXEL[d], AgingParams(
                        current_density_ma_cm2=args.current_density, until=f"{args.hours}h",
                        interval_s=60.0), progress=bars[d])
                    for d in DEVICES))
            finally:
                for b in bars.values():
                    b.close()
            agings = dict(zip(DEVICES, res, strict=True))
            exports = []
            for dev in DEVICES:
                for kind, r in (("sweep", sweeps[dev]), ("aging", agings[dev])):
                    exports.append(export_run(ctx.store, r.run_id, out / f"{kind}-{dev}"))
    finally:
        await server.stop()

    # the table
    print()
    print("Table S1, measured on the simulated board (seed values in brackets, model truth after /)")
    truth = {d: sweep_truth(get_preset(d)) for d in DEVICES}
    header = f"{'figure':<14}" + "".join(f"{d:>34}" for d in DEVICES)
    print(header)
    for k in SWEEP_KEYS:
        cells = []
        for d in DEVICES:
            m = clean(sweeps[d].summary).get(k)
            seed = SEED_TABLE_S1[d].get(k)
            cells.append(f"{fmt(m):>10} [{fmt(seed):>7}] / {fmt(float(truth[d][k])):>8}")
        print(f"{k:<14}" + "".join(f"{c:>34}" for c in cells))
    print()
    print(f"Lifetime at {args.current_density:g} mA/cm² over {args.hours:g} virtual h "
          "(measured / model truth; times from switch-on)")
    lt = {d: lifetime_truth(get_preset(d), args.current_density) for d in DEVICES}
    for k in ("l0_cd_m2", "l_peak_cd_m2", "t_peak_h", "t95_h", "t90_h", "t80_h", "t50_h",
              "t50_from_peak_h"):
        cells = []
        for d in DEVICES:
            m = clean(agings[d].summary).get(k)
            tv = lt[d].get(k)
            cells.append(f"{fmt(m):>12} / {fmt(None if tv is None else float(tv)):>10}")
        print(f"{k:<16}" + "".join(f"{c:>30}" for c in cells))

    # plots and reports
    from .report_cmd import _run as report

    for exp in exports:
        ns = argparse.Namespace(run_dir=str(exp), out=str(exp / "report.html"),
                                figures=str(exp / "figures"), threshold=1.0)
        report(ns)
    n_samples = sum(a.n_samples for a in agings.values())
    print(f"\n{len(exports)} runs, {n_samples} aging samples; store {db}; exports, figures and "
          f"reports in {out}/ ({time.monotonic() - t_start:.0f} s)")
    return 0
