"""``station sweep``: one J–V–L sweep of one pixel, its Table S1 summary and its export."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from station.params import SweepParams

from .common import (
    SWEEP_KEYS,
    NewFiles,
    Stop,
    SweepBar,
    add_measure_args,
    clean,
    dump_json,
    last_run_id,
    measure_config,
    newest_run,
    print_table,
    run_interruptible,
    save_interrupted,
    uncancel,
)
from .params_args import add_params_args, params_from_args

EPILOG = """examples:
  station sweep --port tcp://127.0.0.1:7000 --pixel 1 --start 0 --stop 6 --step 0.05 --out run1
  station sweep --port /dev/serial/by-id/usb-LEDboard-if00 --pixel 3 --start 2 --stop 5 \\
      --step 0.1 --reverse --spectrum-at 3,4,5 --out run2 --json
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sweep", help="J-V-L sweep of one pixel; prints its Table S1 summary",
                       description="Run one on-board J-V-L sweep on a pixel, compute J, L, EQE, "
                       "CE and PE for every point as it arrives, print the pixel's Table S1 "
                       "summary and write the export (CSV + JSON sidecar) to --out.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", metavar="URL", help="board: device path, tcp://HOST:PORT (the simulator) "
                   "or another pyserial URL; default: the config's board.url")
    p.add_argument("--pixel", type=int, required=True, help="pixel number (1-based)")
    add_params_args(p, SweepParams, "sweep parameters (a job's [sweep] takes the same, "
                    "by their names in docs/jobs.md)")
    add_measure_args(p, "summary")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    return run_interruptible(lambda stop: _run(args, stop))


async def _run(args: argparse.Namespace, stop: Stop) -> int:
    from station.export import export_run
    from station.link import BoardError, LinkError
    from station.procedures import LimitError, run_sweep
    from station.session import open_station

    out = Path(args.out)
    cfg = measure_config(args)
    try:
        params = params_from_args(SweepParams, args)
        n = len(params.program()) * (2 if params.reverse else 1)
    except LimitError as e:
        print(f"station sweep: {e}", file=sys.stderr)
        return 2
    files = NewFiles(cfg.store.path, out)
    try:
        async with open_station(cfg, url=args.port) as ctx:
            before = last_run_id(ctx.store)
            bar = SweepBar(f"pixel {args.pixel}", n, disable=args.no_progress or args.json)
            try:
                res = await run_sweep(ctx, args.pixel, params, progress=bar)
            except asyncio.CancelledError:
                if stop.signum is None:
                    raise
                uncancel()
                bar.close()
                run_id = newest_run(ctx.store, before)
                if run_id is not None:
                    print(f"station sweep: {save_interrupted(ctx.store, run_id, out, stop)}",
                          file=sys.stderr)
                return stop.exit_status
            finally:
                bar.close()
            export_run(ctx.store, res.run_id, out)
    except (LimitError, BoardError, LinkError) as e:
        print(f"station sweep: {e}", file=sys.stderr)
        files.discard()
        return 2
    s = clean(res.summary)
    if args.json:
        dump_json(s)
    else:
        rows = [(k, s.get(k), None) for k in SWEEP_KEYS]
        for k in ("ce_max", "eqe_max", "pe_max", "l_max"):
            at = s.get(f"{k}_at") or {}
            if at:
                rows.append((f"  {k} at", f"J={at.get('j_ma_cm2', 0):.3g} mA/cm², "
                             f"V={at.get('v', 0):.3g} V, L={at.get('l_cd_m2', 0):.4g} cd/m²", None))
        print_table(rows, ("figure", "value", ""))
        print(f"end: {res.reason}; {res.n_points} points; export in {out}")
    return 0
