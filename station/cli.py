"""``station``: the command-line interface.

Each subcommand lives in a module of :mod:`station.commands` that exposes
``register(subparsers)``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys

from . import __version__

# Subcommand modules, in the order --help lists them (each has ``register(subparsers)``).
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
        importlib.import_module(name).register(sub)
    return p


class _Terminated(BaseException):
    """SIGTERM outside an event loop (while importing, parsing, printing)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _quiet_stdout() -> None:
    """The reader of our stdout went away (``station runs ... | head -1``): send whatever is
    still buffered nowhere, so that the interpreter's final flush does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Ctrl-C exits 130 and SIGTERM 143, without a traceback (the measurement
    commands switch the outputs off first); a closed stdout pipe exits 141 quietly."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        rc: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("station: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("station: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    return rc


if __name__ == "__main__":
    sys.exit(main())
