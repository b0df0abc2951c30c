"""``station age``: a constant-current operational-lifetime test of one pixel."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from station.params import AgingParams

from .common import (
    LIFETIME_KEYS,
    AgingBar,
    NewFiles,
    Stop,
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
  station age --port tcp://127.0.0.1:7000 --pixel 1 --current-density 10 --out age1
  station age --port /dev/ttyACM0 --pixel 2 --initial-luminance 1000 --until t90 --out age2
  station age --port tcp://127.0.0.1:7000 --pixel 1 --current-density 5 --until 300h \\
      --interval 30 --interim-sweep-every 24 --out age3 --json

--until takes t95, t90, t80, t70 or t50 (relative to L0, default t50) or a duration such as 300h,
2d or 90m. The run also ends on a pixel failure (short, open) or a voltage runaway. Times are
board times: with the simulator's virtual clock, 1,000 hours pass in seconds.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("age", help="constant-current lifetime test of one pixel",
                       description="Hold a pixel at constant current on an aging driver, sample it "
                       "every --interval seconds, and report L0, the peak of any initial "
                       "brightening, T95/T90/T80/T50 (from L0 and from the peak) and the "
                       "stretched-exponential extrapolation.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", metavar="URL", help="board: device path, tcp://HOST:PORT (the simulator) "
                   "or another pyserial URL; default: the config's board.url")
    p.add_argument("--pixel", type=int, required=True, help="pixel number (1-based)")
    add_params_args(p, AgingParams, "aging parameters (a job's [aging] takes the same, "
                    "by their names in docs/jobs.md)")
    add_measure_args(p, "result")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    return run_interruptible(lambda stop: _run(args, stop))


async def _run(args: argparse.Namespace, stop: Stop) -> int:
    from station.export import export_run
    from station.link import BoardError, LinkError
    from station.procedures import LimitError, run_aging
    from station.session import open_station

    out = Path(args.out)
    cfg = measure_config(args)
    try:
        params = params_from_args(AgingParams, args)
        total = params.duration_h() if params.stop_level() is None else None
    except LimitError as e:
        print(f"station age: {e}", file=sys.stderr)
        return 2
    files = NewFiles(cfg.store.path, out)
    try:
        async with open_station(cfg, url=args.port) as ctx:
            before = last_run_id(ctx.store)
            bar = AgingBar(f"pixel {args.pixel}", total, disable=args.no_progress or args.json)
            try:
                res = await run_aging(ctx, args.pixel, params, progress=bar)
            except asyncio.CancelledError:
                if stop.signum is None:
                    raise
                uncancel()
                bar.close()
                run_id = newest_run(ctx.store, before)
                if run_id is not None:
                    print(f"station age: {save_interrupted(ctx.store, run_id, out, stop)}",
                          file=sys.stderr)
                return stop.exit_status
            finally:
                bar.close()
            export_run(ctx.store, res.run_id, out)
    except (LimitError, BoardError, LinkError) as e:
        print(f"station age: {e}", file=sys.stderr)
        files.discard()
        return 2
    s = clean(res.summary)
    if args.json:
        dump_json(s)
    else:
        ex = s.get("extrapolated") or {}
        rows = [(k, s.get(k), f"(fit: {ex[k]:.4g} ± {ex.get(k + '_err') or 0:.2g} h)"
                 if k.endswith("_h") and s.get(k) is None and ex.get(k) else None)
                for k in LIFETIME_KEYS]
        print_table(rows, ("figure", "value", ""))
        print(f"end: {res.reason}; {res.n_samples} samples; export in {out}")
    return 0
