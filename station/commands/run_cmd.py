"""``station run``: the long-running daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

EPILOG = """The daemon connects to the board, resumes every unfinished job (after a crash, a power
cut or a reboot the aging runs continue and the samples the board buffered meanwhile are
replayed: no gap, no duplicate), runs the jobs it is given — by `station jobs submit` over MQTT
or with --job here — and forwards every stored sample to MQTT and InfluxDB when enabled in the
configuration. A sink that falls more than store.backlog_alert_rows rows behind (broker or
database unreachable) raises the event alert/sink_backlog, and clears it once it has caught up.
SIGTERM or Ctrl-C switches every output off and exits; unfinished jobs resume at the next start.

examples:
  station run --config /etc/led-station/lab-a.toml
  station run --config examples/sim-station.toml --job examples/jobs/schedule.toml

exit codes: 0 stopped by a signal, 2 bad job file, 78 unusable configuration (systemd does not
restart on these), 1 anything else.
"""

EX_CONFIG = 78


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="the station daemon: jobs, resume after a crash, telemetry",
                       description="Run the station daemon.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="station TOML configuration (default: "
                   "$STATION_CONFIG, ./station.toml, ~/.config/led-station/station.toml, "
                   "/etc/led-station/station.toml)")
    p.add_argument("--job", action="append", default=[], metavar="JOB.toml",
                   help="submit this job file at start (repeatable)")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="exit once no job is left to run (batch use, tests)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from station.config import ConfigError, load_config, resolve_config_path
    from station.jobs import job_dict, load_job_file
    from station.jobs_api import JobError
    from station.session import run_with_signals

    path, how = resolve_config_path(args.config)
    if path is None:
        print(f"station run: no configuration: give --config FILE (looked at {how})", file=sys.stderr)
        return EX_CONFIG
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"station run: {e}", file=sys.stderr)
        return EX_CONFIG
    from .run_startup import announce_config

    announce_config(path, how, cfg)
    try:
        jobs = [load_job_file(j) for j in args.job]
    except JobError as e:
        print(f"station run: {e}", file=sys.stderr)
        return 2
    try:
        return run_with_signals(lambda: _daemon(cfg, [job_dict(j) for j in jobs],
                                                args.exit_when_idle))
    except asyncio.CancelledError:
        # SIGTERM / Ctrl-C: the daemon was cancelled and its cleanup has run (outputs off, store
        # closed, the runs cut 'interrupted' and resumed at the next start): a clean stop
        return 0
    except JobError as e:
        print(f"station run: {e}", file=sys.stderr)
        return 2


async def _daemon(cfg: Any, jobs: list[dict[str, Any]], exit_when_idle: bool) -> int:
    """The CLI over :class:`station.daemon.Daemon`: says what it started, submits ``jobs``
    (printing their ids) and runs until cancelled (a signal) or, with ``exit_when_idle``, until
    no job is left."""
    import getpass
    import socket

    from station.daemon import Daemon, DaemonConfigError

    from .run_startup import announce_started

    def on_web(url: str) -> None:
        print(f"web: serving {url}", flush=True)

    def on_ready(d: Daemon) -> None:
        announce_started(cfg, d.ctx, d.jobs)

    try:
        async with Daemon(cfg, on_web=on_web, on_ready=on_ready) as d:
            me = f"{getpass.getuser()}@{socket.gethostname()} (command line)"
            for job in jobs:
                info = await d.jobs.submit(job, me)
                print(f"submitted {info['id']} ({info['name']})", flush=True)
            await d.serve(exit_when_idle=exit_when_idle)
    except DaemonConfigError as e:
        print(f"station run: {e}", file=sys.stderr)
        return EX_CONFIG
    return 0
