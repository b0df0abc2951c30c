"""``python -m sim`` / ``station sim``: run the simulated board, or print a preset's physics truth.

Serving: the FIRST line on stdout is the URL or device path to connect to (flushed at once),
then the board serves until SIGINT or SIGTERM (exit status 0). Errors in the arguments (unknown
preset, bad --faults spec, bad layout file, bad --listen) print a clear message and exit 2.

``--truth``: print the model's ground truth for one preset (:func:`sim.truth.sweep_truth`, plus
:func:`sim.truth.lifetime_truth` with ``--current-density``) as a table or, with ``--json``, as
one JSON object (non-finite values as null) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sim.presets import PRESETS

if TYPE_CHECKING:
    from sim.server import SimServer

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main", "run"]

DESCRIPTION = (
    "Run the simulated LED test board (firmware, SMU, photodiodes, spectrometer, aging drivers, "
    "faults) on a pseudo-terminal or a TCP socket, as a USB serial board would be, on a virtual "
    "clock that may run faster than real time. Prints the URL or device path to connect to as "
    "its first line, then serves until SIGINT/SIGTERM. With --truth, prints the device model's "
    "exact figures instead (what a perfect station would measure)."
)

EPILOG = f"""presets: {', '.join(PRESETS)}

examples:
  station sim --preset dbsa --listen tcp://127.0.0.1:0
      serve one DBSA pixel on a free TCP port; first line e.g. socket://127.0.0.1:40123
  station sim --preset 'dbsa*4,otac*2' --listen pty --link /tmp/ledboard --speed 1000
      six pixels on a pty reachable at /tmp/ledboard, 1000x faster than real time
  station sim --layout board.toml --listen pty --speed 1e6 --seed 7 \\
      --faults 'ber=1e-5,disconnect=2h+10m,short=px5@50h,interlock=300s+10s'
      1,000 virtual hours in a few wall seconds, with bit errors, a cable pull, a shorted
      pixel and an interlock trip (times are virtual)
  station sim --preset dbsa --listen tcp://127.0.0.1:7000 --baud 115200 --usb-latency-ms 1
      a slow serial link with USB frame latency
  station sim --preset 'dbsa*256' --listen tcp://127.0.0.1:0
      a 256-channel board: 256 DBSA pixels, each on its own aging channel
  station sim --preset dbsa --truth --json --current-density 10
      the model's Table S1 figures and lifetime at 10 mA/cm^2, as JSON

fault spec (--faults, comma-separated; times are virtual, with s, m or h):
  ber=P  drop=P  disconnect=T+D  reboot=T  saturate=pdN  short=pxN@T  open=pxN@T  interlock=T+D
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", metavar="NAME[,NAME...]",
                     help="device presets of pixels 1..N on one substrate, in order; NAME*K repeats "
                          f"(default: dbsa). Known: {', '.join(PRESETS)}")
    src.add_argument("--layout", metavar="FILE.toml",
                     help="board layout file: substrates, pixels, preset/area/photodiode per pixel")
    p.add_argument("--listen", default="tcp://127.0.0.1:0", metavar="tcp://HOST:PORT|pty",
                   help="where to serve (default tcp://127.0.0.1:0, a free port)")
    p.add_argument("--link", metavar="PATH",
                   help="with --listen pty: keep a symlink to the current pty here (like "
                        "/dev/serial/by-id); it disappears while the link is down")
    p.add_argument("--speed", type=float, default=1.0,
                   help="virtual seconds per wall second (default 1; 1e6 runs 1,000 h in ~4 s)")
    p.add_argument("--seed", type=int, default=0, help="random seed: noise and faults reproduce")
    p.add_argument("--faults", metavar="SPEC", default="",
                   help="fault injection, e.g. 'ber=1e-4,disconnect=120s+30s,short=px5@50h'")
    p.add_argument("--baud", type=int, metavar="N", help="pace both directions at N/10 bytes/s")
    p.add_argument("--usb-latency-ms", type=float, default=0.0, metavar="X",
                   help="deliver data in X ms frames, both directions (USB full speed: 1)")
    p.add_argument("--ring-depth", type=int, default=200_000, metavar="N",
                   help="aging samples the board buffers (default 200000)")
    p.add_argument("--aging-channels", type=int, metavar="N",
                   help="aging channels on the board, 1..1024 (default: one per pixel; channel k "
                        "drives pixel k+1 by default)")
    p.add_argument("--reboot-loses-ring", action="store_true",
                   help="a reboot also empties the ring buffers and restarts seqs at 0")
    p.add_argument("--firmware", choices=("python", "c", "qemu"), default="python",
                   help="the board's firmware: the Python model (default); c: the C core of "
                        "firmware/ with the simulator's physics as its HAL (built with gcc on first "
                        "use); qemu: the C core cross-compiled for a Cortex-M3 with a one-pixel LED "
                        "model, on qemu-system-arm (--listen tcp only)")
    p.add_argument("--truth", action="store_true",
                   help="print the model's truth for --preset (one preset) and exit")
    p.add_argument("--json", action="store_true", help="with --truth: print JSON")
    p.add_argument("--current-density", type=float, metavar="MA_CM2",
                   help="with --truth: add lifetime figures at this current density (mA/cm^2)")


def _fail(msg: str) -> int:
    print(f"station sim: error: {msg}", file=sys.stderr)
    return 2


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _truth(args: argparse.Namespace) -> int:
    from sim.layout import DEFAULT_AREA_MM2, LayoutError, layout_from_presets
    from sim.physics import A_M2_PER_MM2
    from sim.truth import LIFETIME_KEYS, SWEEP_KEYS, lifetime_truth, sweep_truth

    if args.layout:
        return _fail("--truth takes one --preset, not --layout")
    try:
        layout = layout_from_presets(args.preset or "dbsa")
    except LayoutError as e:
        return _fail(str(e))
    if layout.n_pixels != 1:
        return _fail("--truth takes exactly one preset")
    if args.current_density is not None and not (
            math.isfinite(args.current_density) and args.current_density > 0):
        return _fail("--current-density must be a positive number (mA/cm^2)")
    px = layout.pixels[0]
    area = DEFAULT_AREA_MM2 * A_M2_PER_MM2
    truth: dict[str, float] = dict(sweep_truth(px.preset, area_m2=area))
    keys: list[str] = list(SWEEP_KEYS)
    if args.current_density is not None:
        truth.update(lifetime_truth(px.preset, args.current_density, area_m2=area))
        keys += list(LIFETIME_KEYS)
    if args.json:
        json.dump({k: _finite_or_none(truth[k]) for k in keys}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"preset {px.preset.name}: {px.preset.description}")
    print(f"pixel area {DEFAULT_AREA_MM2:g} mm^2"
          + (f", aging at {args.current_density:g} mA/cm^2" if args.current_density else ""))
    width = max(len(k) for k in keys)
    for k in keys:
        v = truth[k]
        print(f"  {k:<{width}}  {v:.6g}" if math.isfinite(v) else f"  {k:<{width}}  {v}")
    return 0


async def _serve(server: SimServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await server.start()
    except OSError as e:
        return _fail(f"cannot listen ({server.kind}): {e}")
    print(url, flush=True)
    b = server.board
    print(f"sim: {b.layout.n_pixels} pixel(s) [{b.layout.describe()}], {b.n_channels} aging "
          f"channel(s), speed {server.speed:g}x, "
          f"seed {server.seed}, boot_id 0x{b.boot_id:08X}"
          + (f", faults {server.plan.spec}" if server.plan.spec else ""), file=sys.stderr, flush=True)
    stopper = asyncio.create_task(stop.wait())
    runner = asyncio.create_task(server.serve_forever())
    await asyncio.wait({stopper, runner}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await server.stop()  # asks the board loop to finish; runner then completes by itself
    await asyncio.wait({runner})
    runner.result()  # the board loop crashed: let the traceback out
    return 0


async def _serve_qemu(host: str, port: int) -> int:
    from sim.qemu import QemuBoard, QemuError

    board = QemuBoard(host, port)
    try:
        url = await board.start()
    except (QemuError, OSError) as e:
        return _fail(str(e))
    print(url, flush=True)
    print("sim: one LED pixel on an emulated Cortex-M3 (qemu-system-arm -M mps2-an385), "
          "firmware build/firmware/fw-mps2-an385.elf", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    assert board.proc is not None
    exited = asyncio.create_task(board.proc.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    failed = exited.done()
    await board.stop()
    return _fail("qemu-system-arm exited") if failed else 0


def _run_qemu(args: argparse.Namespace) -> int:
    from sim.server import parse_listen

    try:
        kind, host, port = parse_listen(args.listen)
    except ValueError as e:
        return _fail(str(e))
    unsupported = [name for name, used in (
        ("--listen pty", kind == "pty"), ("--layout", bool(args.layout)), ("--preset", bool(args.preset)),
        ("--faults", bool(args.faults)), ("--speed", args.speed != 1.0), ("--baud", args.baud is not None),
        ("--usb-latency-ms", bool(args.usb_latency_ms)), ("--link", bool(args.link)),
        ("--aging-channels", args.aging_channels is not None),
        ("--reboot-loses-ring", args.reboot_loses_ring)) if used]
    if unsupported:
        return _fail(f"--firmware qemu runs one LED pixel in real time on an emulated MCU: "
                     f"{', '.join(unsupported)} not supported")
    return asyncio.run(_serve_qemu(host, port))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``station sim`` and ``python -m sim`` (returns the exit status)."""
    if args.truth:
        return _truth(args)
    if args.json or args.current_density is not None:
        return _fail("--json and --current-density go with --truth")
    if args.firmware == "qemu":
        return _run_qemu(args)
    from sim.faults import FaultSpecError, parse_faults
    from sim.layout import LayoutError, layout_from_presets, load_layout
    from sim.server import SimServer

    try:
        layout = load_layout(args.layout) if args.layout else layout_from_presets(args.preset or "dbsa")
        plan = parse_faults(args.faults)
        plan.check_pixels(layout.n_pixels)
        if args.ring_depth < 1:
            raise ValueError("--ring-depth must be >= 1")
        server = SimServer(layout, listen=args.listen, speed=args.speed, seed=args.seed, faults=plan,
                           baud=args.baud, usb_latency_ms=args.usb_latency_ms, link_path=args.link,
                           ring_depth=args.ring_depth, reboot_loses_ring=args.reboot_loses_ring,
                           n_aging_channels=args.aging_channels, firmware=args.firmware)
    except (LayoutError, FaultSpecError, ValueError, RuntimeError) as e:
        return _fail(str(e))
    return asyncio.run(_serve(server))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
