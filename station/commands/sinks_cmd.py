"""``station sinks resend``: deliver a range of the store to a telemetry database again."""

from __future__ import annotations

import argparse
import sys
import time

EPILOG = """Writes the selected samples to the InfluxDB of the configuration again: the same
points (measurement, tags, timestamp, values), so it is idempotent. Use it when a database was
restored from a backup, or lost the last seconds it had acknowledged in a crash. It reads the
store through its own connection and never moves the running daemon's cursor, so it can run
while the daemon does.

--since counts back from now in point time (board time mapped to Unix time, as written);
samples never delivered so far are left to the daemon's normal delivery.

examples:
  station sinks resend influx --since 2h --config /etc/led-station/lab-a.toml
  station sinks resend influx --run 12 --run 13 --store /var/lib/led-station/lab-a.db
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sinks", help="telemetry sinks: re-deliver stored samples",
                       description="Telemetry sinks.")
    ss = p.add_subparsers(dest="sinks_command", metavar="ACTION", required=True)
    r = ss.add_parser("resend", help="write a range of the store to the database again",
                      description="Write stored samples to a sink again (idempotent).",
                      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("sink", choices=["influx"], help="the sink (only the database: MQTT "
                   "subscribers get a run's data again from its retained summary and export)")
    sel = r.add_mutually_exclusive_group(required=True)
    sel.add_argument("--since", metavar="DURATION", help="points of the last DURATION, e.g. "
                     "90s, 2h, 3d")
    sel.add_argument("--run", type=int, action="append", metavar="ID", help="every point of "
                     "run ID (repeatable)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    from station.commands.common import add_config_args
    add_config_args(r)
    r.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from tqdm import tqdm

    from station.commands.common import load
    from station.params import parse_duration_h
    from station.sinks.influx import InfluxSink

    cfg = load(args)
    store = Path(args.store or cfg.store.path)
    if not store.exists():
        print(f"station sinks resend: no store at {store} (give --store or --config)",
              file=sys.stderr)
        return 2
    if not cfg.influxdb.enabled:
        print("station sinks resend: [influxdb] is not enabled in the configuration "
              "(station config show prints the one in use)", file=sys.stderr)
        return 2
    since_us = None
    if args.since is not None:
        try:
            hours = parse_duration_h(args.since)
        except ValueError as e:  # LimitError
            print(f"station sinks resend: --since: {e}", file=sys.stderr)
            return 2
        since_us = int((time.time() - hours * 3600.0) * 1e6)
    sink = InfluxSink(store, cfg.influxdb, cfg.station.id)
    bar = tqdm(total=0, unit="pt", disable=args.no_progress, desc="resend")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        n = asyncio.run(sink.resend(since_unix_us=since_us, runs=args.run, progress=progress))
    except Exception as e:  # the database: unreachable, refused
        bar.close()
        print(f"station sinks resend: {cfg.influxdb.url}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    finally:
        if sink._db is not None:
            sink._db.close()
    bar.close()
    print(f"{n} points written again to {cfg.influxdb.url} (bucket {cfg.influxdb.bucket})")
    return 0
