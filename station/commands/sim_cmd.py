"""``station sim``: run the board simulator on a pty or TCP socket, or print a preset's truth.

The options and behaviour live in :mod:`sim.__main__` (``python -m sim`` is the same command);
this module only registers them with the station CLI.
"""

from __future__ import annotations

import argparse

from sim.__main__ import DESCRIPTION, EPILOG, add_arguments, run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="run the board simulator (pty or TCP), or print a preset's truth",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    return run(args)
