"""``station``: the command-line interface.

Each subcommand lives in a module of :mod:`station.commands` that exposes
``register(subparsers)``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# Subcommand modules, in the order --help lists them. A module that is missing (a feature not
# yet built) is skipped rather than breaking the whole CLI.
COMMAND_MODULES = (
    "station.commands.demo",
    "station.commands.run_cmd",
    "station.commands.sweep_cmd",
    "station.commands.age_cmd",
    "station.commands.export_cmd",
    "station.commands.analyze",
    "station.commands.import_cmd",
    "station.commands.lifetime_cmd",
    "station.commands.report_cmd",
    "station.commands.sim_cmd",
    "station.commands.jobs_cmd",
    "station.commands.config_cmd",
    "station.commands.sinks_cmd",
    "station.commands.bench_cmd",
    "station.commands.protocol_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="station",
        description="LED test station: J-V-L sweeps, operational lifetime tests, telemetry, "
        "and a hardware simulator.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
