"""``station export``: write a stored run as CSV + JSON sidecar."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a stored run (CSV + JSON sidecar)",
                       description="Write run RUN of the store as points.csv (sweep) or "
                       "samples.csv (aging) plus run.json with the summary, the calibration and "
                       "the spectra used, so every figure can be recomputed "
                       "(station analyze DIR).")
    p.add_argument("run", type=int, metavar="RUN", help="run id (see --list)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--store", required=True, metavar="PATH", help="the station's SQLite store")
    p.set_defaults(func=main)
    q = sub.add_parser("runs", help="list the runs in a store",
                       description="List the runs in a station store.")
    q.add_argument("--store", required=True, metavar="PATH")
    q.set_defaults(func=list_runs)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from station.export import export_run
    from station.store import Store, StoreError

    if not Path(args.store).exists():
        print(f"station export: no store at {args.store}", file=sys.stderr)
        return 2
    st = Store(args.store)
    try:
        d = export_run(st, args.run, args.out)
    except StoreError as e:
        print(f"station export: {e}", file=sys.stderr)
        return 2
    finally:
        st.close()
    print(d)
    return 0


def list_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from station.store import Store

    if not Path(args.store).exists():
        print(f"station runs: no store at {args.store}", file=sys.stderr)
        return 2
    st = Store(args.store)
    for r in st.runs():
        print(f"{r['id']:>5}  {r['kind']:<6} pixel {r['pixel']:<3} {r['device'] or '':<8} "
              f"{r['status']:<10} {r['end_reason'] or ''}")
    st.close()
    return 0
