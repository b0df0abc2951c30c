"""Helpers shared by the measurement subcommands (sweep, age, export, demo)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tqdm import tqdm

from station.config import ConfigError, StationConfig, load_config, resolve_config_path
from station.store import Store
from station.store.queries import runs_in_file

SEED_TABLE_S1: dict[str, dict[str, Any]] = {
    # Jin et al. 2023, Supporting Information, Table S1 (shared/seed/)
    "otac": {"von_v": 2.85, "l_max_cd_m2": 2339, "ce_max_cd_a": 9.1, "eqe_max_pct": 2.75,
             "pe_max_lm_w": 9.59, "el_peak_nm": 516, "cie_x": 0.0981, "cie_y": 0.7592},
    "dbsa": {"von_v": 2.8, "l_max_cd_m2": 4452, "ce_max_cd_a": 23.8, "eqe_max_pct": 8.95,
             "pe_max_lm_w": 22.7, "el_peak_nm": 508, "cie_x": 0.0669, "cie_y": 0.6765},
}

SWEEP_KEYS = ("von_v", "l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w", "el_peak_nm",
              "el_fwhm_nm", "cie_x", "cie_y")
LIFETIME_KEYS = ("l0_cd_m2", "l_peak_cd_m2", "t_peak_h", "t95_h", "t90_h", "t80_h", "t50_h",
                 "t50_from_peak_h")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="station TOML configuration (default: "
                   "$STATION_CONFIG, ./station.toml, ~/.config/led-station/station.toml, "
                   "/etc/led-station/station.toml, else built-in defaults; STATION_<SECTION>__<KEY> "
                   "variables override; `station config show` prints what is used)")
    p.add_argument("--store", metavar="PATH", help="SQLite store (default: config's store.path, "
                   "or OUT/station.db)")


def add_measure_args(p: argparse.ArgumentParser, what: str) -> None:
    """The arguments every one-shot measurement command shares."""
    p.add_argument("--out", required=True, metavar="DIR", help="export directory")
    p.add_argument("--json", action="store_true", help=f"print the {what} as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)


def measure_config(args: argparse.Namespace) -> StationConfig:
    """The configuration of a one-shot measurement: the store is --store, else the config's
    store.path when a --config is given, else OUT/station.db."""
    cfg = load(args)
    found = resolve_config_path(getattr(args, "config", None))[0] is not None
    store_path = args.store or (cfg.store.path if found else str(Path(args.out) / "station.db"))
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"path": store_path})})


def load(args: argparse.Namespace, **overrides: Any) -> StationConfig:
    try:
        return load_config(resolve_config_path(getattr(args, "config", None))[0], **overrides)
    except ConfigError as e:
        raise SystemExit(f"station: {e}") from None


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        return f"{v:.4g}"
    return str(v)


def print_table(rows: list[tuple[str, Any, Any]], headers: tuple[str, str, str], file: Any = None) -> None:
    file = file or sys.stdout
    w0 = max(len(headers[0]), *(len(r[0]) for r in rows))
    w1 = max(len(headers[1]), *(len(fmt(r[1])) for r in rows))
    print(f"{headers[0]:<{w0}}  {headers[1]:>{w1}}  {headers[2]}", file=file)
    for k, a, b in rows:
        print(f"{k:<{w0}}  {fmt(a):>{w1}}  {fmt(b) if b is not None else ''}", file=file)


def dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_default, allow_nan=False))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def clean(obj: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


class SweepBar:
    def __init__(self, desc: str, total: int, disable: bool = False) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="pt", file=sys.stderr, disable=disable,
                        leave=False)

    def __call__(self, n: int, total: int, last: dict[str, float]) -> None:
        self.bar.total = total
        self.bar.n = n
        self.bar.set_postfix(V=f"{last['voltage_v']:.2f}", L=f"{last['luminance_cd_m2']:.3g}",
                             refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class AgingBar:
    def __init__(self, desc: str, total_h: float | None, disable: bool = False) -> None:
        self.total_h = total_h
        self.bar = tqdm(total=total_h, desc=desc, unit="h", file=sys.stderr, disable=disable,
                        leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} h {postfix}"
                        if total_h else "{desc}: {n:.1f} h {postfix}")

    def __call__(self, t_h: float, last: dict[str, float]) -> None:
        # samples stored after the run's length (the last block before the stop, a replay) do not
        # carry the bar past its end
        self.bar.n = round(min(t_h, self.total_h) if self.total_h else t_h, 2)
        lr = last.get("l_rel", float("nan"))
        self.bar.set_postfix(L_L0=f"{lr:.3f}" if lr == lr else "…",
                             V=f"{last['voltage_v']:.2f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Stop:
    """Which signal (SIGINT, SIGTERM) interrupted a command, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def exit_status(self) -> int:
        """128 + the signal's number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name


def run_interruptible(main: Callable[[Stop], Coroutine[Any, Any, int]]) -> int:
    """Run a measurement command under asyncio. The first SIGINT or SIGTERM cancels it (its
    ``finally`` blocks switch the outputs off and it may catch the cancellation to save what it
    has); later ones only say that it is stopping, so nothing cuts the clean-up short. A command
    cancelled by a signal exits 128 + the signal's number, without a traceback."""
    stop = Stop()

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(sig: int) -> None:
            if stop.signum is None:
                stop.signum = sig
                print(f"station: {signal.Signals(sig).name}: stopping, switching the outputs off",
                      file=sys.stderr, flush=True)
                task.cancel()
            else:
                print("station: still stopping (switching the outputs off)", file=sys.stderr,
                      flush=True)

        sigs = (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            if stop.signum is None:
                raise
            return stop.exit_status
        finally:
            for sig in sigs:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def uncancel() -> None:
    """After catching the CancelledError of a signal: let the clean-up's awaits run normally."""
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()


def newest_run(store: Store, after: int) -> int | None:
    """The id of the newest run created after run ``after`` (this command's run), if any."""
    return store.newest_run_after(after)


def last_run_id(store: Store) -> int:
    return store.last_run_id()


def save_interrupted(store: Any, run_id: int, out: Path, stop: Stop) -> str:
    """End an interrupted run as ``interrupted``, with the summary of its data so far when it
    can be computed, and write its export. Returns a line for the user."""
    from station.commands.analyze import reanalyze
    from station.export import export_run
    from station.exportfmt import read_export

    store.finish_run(run_id, "interrupted", f"interrupted by {stop.name}")
    export_run(store, run_id, out)
    note = ""
    try:
        meta, table = read_export(out)
        summary = dict(reanalyze(meta, table, where=str(out)).meta["summary"])
    except Exception as e:
        summary = {"note": f"no summary of the data so far: {e}"}
        note = f" ({summary['note']})"
    summary["end_reason"] = "interrupted"
    store.update_run(run_id, summary=clean(summary))
    export_run(store, run_id, out)
    return f"interrupted by {stop.name}: run {run_id} ended as interrupted; data so far in {out}{note}"


def store_files(path: str | Path) -> list[Path]:
    p = Path(path)
    return [p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")]


class NewFiles:
    """What a measurement command may create: its store and directories. Taken before it
    starts, so that a refused command can leave nothing behind (:meth:`discard`)."""

    def __init__(self, store_path: str | Path, *dirs: Path) -> None:
        self.store = Path(store_path)
        self.store_existed = self.store.exists()
        self.new_dirs = [d for d in dict.fromkeys((*dirs, self.store.parent)) if not d.exists()]

    def discard(self) -> None:
        discard_new_store(self.store, self.store_existed, self.new_dirs)


def discard_new_store(path: str | Path, existed: bool, new_dirs: list[Path]) -> None:
    """A refused command changes nothing: remove the store it created if it holds no run, and
    the directories it created if they are empty."""
    p = Path(path)
    if existed or not p.exists():
        return
    if runs_in_file(p):
        return
    for f in store_files(p):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    for d in new_dirs:
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty
