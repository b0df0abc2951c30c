"""``station export``: write a stored run as CSV + JSON sidecar."""

from __future__ import annotations

import argparse
import sys

EXPORT_EPILOG = """examples:
  station runs --store /var/lib/led-station/station.db          # which runs are there
  station export 12 --store /var/lib/led-station/station.db --out run12
  station analyze run12 && station report run12                  # recompute, then an HTML report
"""

RUNS_EPILOG = """examples:
  station runs --store run1/station.db
  station runs --store /var/lib/led-station/station.db | grep aging

columns: run id, kind (sweep or aging), pixel, device, status (running, completed, interrupted,
cancelled, failed, paused) and why the run ended.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("export", help="export a stored run (CSV + JSON sidecar)",
                       description="Write run RUN of the store as points.csv (sweep) or "
                       "samples.csv (aging) plus run.json with the summary, the calibration and "
                       "the spectra used, so every figure can be recomputed "
                       "(station analyze DIR).", epilog=EXPORT_EPILOG, formatter_class=fmt)
    p.add_argument("run", type=int, metavar="RUN", help="run id (see `station runs --store PATH`)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory")
    p.add_argument("--store", required=True, metavar="PATH", help="the station's SQLite store")
    p.set_defaults(func=main)
    q = sub.add_parser("runs", help="list the runs in a store",
                       description="List the runs in a station store, one line each, under a "
                       "header.", epilog=RUNS_EPILOG, formatter_class=fmt)
    q.add_argument("--store", required=True, metavar="PATH", help="the station's SQLite store")
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
    try:
        runs = st.runs()
    finally:
        st.close()
    if not runs:
        print(f"no runs in {args.store}", file=sys.stderr)
        return 0
    dev = max(6, *(len(r["device"] or "") for r in runs))
    print(f"{'RUN':>5}  {'KIND':<6} {'PIXEL':>5}  {'DEVICE':<{dev}}  {'STATUS':<11} ENDED BY")
    for r in runs:
        print(f"{r['id']:>5}  {r['kind']:<6} {r['pixel']:>5}  {r['device'] or '':<{dev}}  "
              f"{r['status']:<11} {r['end_reason'] or ''}")
    return 0
