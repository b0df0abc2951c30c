"""``station jobs ...`` and ``station status``: remote control of a running station over MQTT.

The broker and the station come from ``--config FILE`` (the station's TOML) and/or the
environment (``STATION_MQTT__URL``, ``STATION_MQTT__USERNAME``, ``STATION_MQTT__PASSWORD``,
``STATION_STATION__ID``, ...). Exit status: 0 done, 1 refused by the station (or by the
broker's ACL), 2 bad input, 3 no answer (station not running, broker unreachable).
The protocol is in ``docs/mqtt.md`` ("Remote control"); the client is :mod:`station.remote`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from station.config import StationConfig
    from station.remote import RemoteStation

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_NO_ANSWER = 0, 1, 2, 3

CONNECTION_HELP = """connection:
  The broker, credentials and station id come from --config FILE (the station's TOML:
  [mqtt] url, username, password, ca_file, topic_prefix; [station] id) and from the
  environment, which overrides the file:
    STATION_MQTT__URL=mqtts://labserver:8883  STATION_MQTT__CA_FILE=/etc/led-station/ca.crt
    STATION_MQTT__USERNAME=operator  STATION_MQTT__PASSWORD=...  STATION_STATION__ID=lab-a
  --station ID talks to another station through the same broker.

exit status:
  0 done, 1 refused by the station (or the broker's ACL), 2 bad input,
  3 no answer (the station is not running or not connected, or the broker is unreachable)
"""

JOBS_EPILOG = """examples:
  station jobs submit aging-S1.toml --config /etc/led-station/lab-a.toml
  station jobs submit sweep.toml --wait              # follow it until it ends
  station jobs list
  station jobs show job-42 --json
  station jobs pause job-42
  station jobs resume job-42
  station jobs stop job-42                           # outputs off; its data is kept

""" + CONNECTION_HELP

SUBMIT_EPILOG = """The job file is read and parsed here (a TOML syntax error is reported with its line,
exit 2); the station validates it fully, including its safety limits, and refuses it with the
reason (exit 1) or queues it. With --wait the command follows the job's lifecycle events
(event/job/... on MQTT) until it ends: exit 0 if it finished, 1 if it failed, was aborted or
stopped. With --json the job info is printed as JSON (with --wait: one JSON object per line,
the submit result first, then each event).

examples:
  station jobs submit aging-S1.toml
  STATION_STATION__ID=lab-b station jobs submit sweep.toml --wait --json
  station jobs submit sweep.toml --config lab-a.toml --timeout 30

""" + CONNECTION_HELP

STATUS_EPILOG = """examples:
  station status --config /etc/led-station/lab-a.toml
  STATION_MQTT__URL=mqtt://labserver:1883 STATION_STATION__ID=lab-a station status --json

""" + CONNECTION_HELP


# -- arguments ------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    g = p.add_argument_group("connection and output")
    g.add_argument("--config", metavar="FILE", help="station TOML with [mqtt] and [station] "
                   "(default: $STATION_CONFIG, ./station.toml, ~/.config/led-station/station.toml, "
                   "/etc/led-station/station.toml, else built-in defaults; STATION_<SECTION>__<KEY> "
                   "variables override)")
    g.add_argument("--station", metavar="ID", help="station id (default: the config's "
                   "station.id)")
    g.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="how long to wait for the station's answer (default 10 s)")
    if json_flag:
        g.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    jobs = sub.add_parser(
        "jobs", help="submit, list, show, stop, pause and resume jobs on a running station",
        description="Control the job queue of a running station (`station run`) over MQTT.",
        epilog=JOBS_EPILOG, formatter_class=fmt)
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    p = jsub.add_parser("submit", help="send a job file to the station's queue",
                        description="Send a job file (TOML) to the station, which validates it "
                        "and queues it.", epilog=SUBMIT_EPILOG, formatter_class=fmt)
    p.add_argument("file", metavar="FILE", help="job file (TOML)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--poll", type=float, default=5.0, metavar="S",
                   help="with --wait: ask for the job's state after S s without an event "
                   "(default 5)")
    _common(p)
    p.set_defaults(func=cmd_submit)

    p = jsub.add_parser("list", help="every job the station knows, newest first",
                        description="List the station's jobs, newest first.",
                        epilog="examples:\n  station jobs list\n  station jobs list --json\n\n"
                        + CONNECTION_HELP, formatter_class=fmt)
    _common(p)
    p.set_defaults(func=cmd_list)

    p = jsub.add_parser("show", help="one job's details",
                        description="Show everything the station knows about one job.",
                        epilog="examples:\n  station jobs show job-42\n"
                        "  station jobs show job-42 --json\n\n" + CONNECTION_HELP,
                        formatter_class=fmt)
    p.add_argument("job_id", metavar="ID", help="job id (from submit or list)")
    _common(p)
    p.set_defaults(func=cmd_show)

    for verb, helptext, desc in (
        ("stop", "stop a job (outputs off; its data so far is kept)",
         "Stop a job: the station turns the outputs of its pixels off and keeps its data."),
        ("pause", "pause a job", "Pause a running job (resume continues it)."),
        ("resume", "resume a paused job", "Resume a paused job."),
    ):
        p = jsub.add_parser(verb, help=helptext, description=desc,
                            epilog=f"examples:\n  station jobs {verb} job-42\n"
                            f"  station jobs {verb} job-42 --station lab-b --json\n\n"
                            + CONNECTION_HELP, formatter_class=fmt)
        p.add_argument("job_id", metavar="ID", help="job id (from submit or list)")
        _common(p)
        p.set_defaults(func=cmd_job_action, verb=verb)

    p = sub.add_parser("status", help="a running station's state: board, interlock, jobs, sinks",
                       description="Ask a running station (`station run`) for its status over "
                       "MQTT.", epilog=STATUS_EPILOG, formatter_class=fmt)
    _common(p)
    p.set_defaults(func=cmd_status)


# -- plumbing -------------------------------------------------------------------------------------
def _err(msg: str) -> None:
    print(f"station: {msg}", file=sys.stderr)


def _config(args: argparse.Namespace) -> StationConfig:
    from station.config import ConfigError, load_config, resolve_config_path
    try:
        return load_config(resolve_config_path(args.config)[0])
    except ConfigError as e:
        _err(str(e))
        raise SystemExit(EXIT_BAD_INPUT) from None


def _remote(args: argparse.Namespace, cfg: StationConfig) -> RemoteStation:
    from station.remote import RemoteStation
    return RemoteStation(cfg, station_id=args.station)


def _run(args: argparse.Namespace, body: Callable[[RemoteStation], Awaitable[int]]) -> int:
    """Load the config, connect, run ``body``; map remote errors to exit codes."""
    from station.remote import RemoteError
    if args.timeout <= 0 or not math.isfinite(args.timeout):
        _err("--timeout must be a positive number of seconds")
        return EXIT_BAD_INPUT
    cfg = _config(args)

    async def go() -> int:
        async with _remote(args, cfg) as remote:
            return await body(remote)

    try:
        return asyncio.run(go())
    except RemoteError as e:
        _err(str(e))
        return e.exit_code


def _print_json(obj: Any, *, compact: bool = False) -> None:
    if compact:
        print(json.dumps(obj, separators=(",", ":"), default=str), flush=True)
    else:
        print(json.dumps(obj, indent=2, default=str), flush=True)


def _cell(v: Any, key: str = "") -> str:
    if v is None or v == [] or v == "":
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and not math.isfinite(v):
        return "—"
    if isinstance(v, int | float) and key in ("created", "started", "ended", "ts", "updated",
                                              "created_at", "started_at", "ended_at",
                                              "updated_at", "since") and v > 1e8:
        return dt.datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M:%S")
    if key == "faults" and isinstance(v, int) and not isinstance(v, bool):
        return fault_names(v)
    if key == "progress" and isinstance(v, dict):
        return progress_words(v)
    if key == "records_lost" and isinstance(v, dict) and "records" in v:
        return lost_words(v)
    if isinstance(v, float) and key == "progress" and 0 <= v <= 1:
        return f"{100 * v:.0f} %"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
            return ", ".join(_cell(x) for x in v)
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def lost_words(v: dict[str, Any]) -> str:
    """The status's records_lost summary in words."""
    if not v.get("records"):
        return "none"
    last = v.get("last") or {}
    when = (dt.datetime.fromtimestamp(last["ts"]).strftime("%Y-%m-%d %H:%M:%S")
            if last.get("ts") else "?")
    return (f"{v['records']} records in {v['losses']} loss(es); last: {last.get('count')} "
            f"{last.get('stream')} records ({str(last.get('reason', '')).replace('_', ' ')}) "
            f"at {when}")


def fault_names(bits: int) -> str:
    """The board's fault bits by name (``interlock_open, over_temperature``), ``none`` for 0;
    bits this host does not know are shown in hex."""
    from firmware_protocol.spec import Fault

    if bits == 0:
        return "none"
    names = [f.name.lower() for f in Fault if f.value and bits & f.value and f.name]
    unknown = bits & ~sum(f.value for f in Fault)
    return ", ".join(names + ([f"0x{unknown:x}"] if unknown else []))


def progress_words(progress: dict[str, Any], steps: int | None = None) -> str:
    """A job's progress record in words: the step it is on and the runs done so far."""
    step = progress.get("step")
    raw_done = progress.get("done")
    done: list[Any] = raw_done if isinstance(raw_done, list) else []
    parts = []
    if isinstance(step, int):
        n = steps if isinstance(steps, int) and steps > 0 else progress.get("steps")
        if isinstance(n, int) and n > 0:
            parts.append(f"all {n} steps done" if step >= n else f"step {step + 1} of {n}")
        else:
            parts.append(f"step {step + 1}")
    runs = [d for d in done if isinstance(d, dict)]
    parts.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''} done")
    bad = [d for d in runs if d.get("reason") not in (None, "completed", "duration", "reached_t50",
                                                       "reached_t80", "reached_t90", "reached_t95")]
    if bad:
        parts.append(f"{len(bad)} ended early ({', '.join(sorted({str(d.get('reason')) for d in bad}))})")
    return ", ".join(parts)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "progress":
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def print_kv(d: dict[str, Any]) -> None:
    rows = _flatten(d)
    if not rows:
        print("(nothing)")
        return
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {_cell(v, k.rsplit('.', 1)[-1])}")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _jsonable(v: Any) -> Any:
    """TOML values as JSON: dates and times become ISO 8601 strings."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    return v


def read_job_file(path: str) -> dict[str, Any] | None:
    """The parsed job file, or None after printing what is wrong with it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        _err(f"job file {p} does not exist")
        return None
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read job file {p}: {e}")
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        _err(f"job file {p} is not valid TOML: {e}")
        return None
    if not data:
        _err(f"job file {p} is empty")
        return None
    out: dict[str, Any] = _jsonable(data)
    return out


def _job_line(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info)
    parts = [f"job {info.get('id', '?')}"]
    if info.get("name"):
        parts.append(f"({info['name']})")
    if info.get("state"):
        parts.append(f"state {info['state']}")
    return " ".join(parts)


def _event_line(ev: dict[str, Any]) -> str:
    ts = ev.get("ts")
    when = (dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if isinstance(ts, int | float)
            else dt.datetime.now().strftime("%H:%M:%S"))
    raw = ev.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    extra = " ".join(f"{k}={_cell(v, k)}" for k, v in data.items()
                     if k not in ("job", "job_id", "id"))
    return f"{when}  {ev.get('kind', '?'):<14} {extra}".rstrip()


# -- commands -------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    job = read_job_file(args.file)
    if job is None:
        return EXIT_BAD_INPUT
    if args.poll <= 0:
        _err("--poll must be a positive number of seconds")
        return EXIT_BAD_INPUT

    async def body(remote: RemoteStation) -> int:
        from station.remote import SUCCESS_STATES
        if args.wait:
            await remote.subscribe_job_events()  # before submitting: events are not retained
        info = await remote.call("submit", {"job": job}, args.timeout)
        if args.json:
            _print_json(info, compact=args.wait)
        else:
            print(f"{_job_line(info)} on station {remote.station}", flush=True)
        if not args.wait:
            return EXIT_OK
        job_id = str(info.get("id")) if isinstance(info, dict) else str(info)
        last = ""
        async for ev in remote.watch_job(job_id, poll_s=args.poll, timeout_s=args.timeout):
            if args.json:
                _print_json(ev, compact=True)
            else:
                print(_event_line(ev), flush=True)
            last = str(ev.get("kind", "")).removeprefix("job/")
        if last in SUCCESS_STATES:
            return EXIT_OK
        if not args.json:
            print(f"job {job_id} ended: {last}", file=sys.stderr)
        return EXIT_REFUSED

    return _run(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    async def body(remote: RemoteStation) -> int:
        result = await remote.call("list", None, args.timeout)
        jobs = result.get("jobs", []) if isinstance(result, dict) else []
        if args.json:
            _print_json(jobs)
        elif not jobs:
            print(f"no jobs on station {remote.station}")
        else:
            cols = ["id", "name", "kind", "state", "created", "progress"]
            cols += [k for k in jobs[0] if k not in cols and not isinstance(jobs[0][k], dict | list)
                     and k in ("client", "pixels")]
            print_table(jobs, cols)
        return EXIT_OK

    return _run(args, body)


def cmd_show(args: argparse.Namespace) -> int:
    async def body(remote: RemoteStation) -> int:
        info = await remote.call("get", {"job_id": args.job_id}, args.timeout)
        if args.json:
            _print_json(info)
        elif isinstance(info, dict):
            if isinstance(info.get("progress"), dict):
                info = info | {"progress": progress_words(info["progress"], info.get("steps"))}
            print_kv(info)
        else:
            print(info)
        return EXIT_OK

    return _run(args, body)


def cmd_job_action(args: argparse.Namespace) -> int:
    async def body(remote: RemoteStation) -> int:
        info = await remote.call(args.verb, {"job_id": args.job_id}, args.timeout)
        if args.json:
            _print_json(info)
        else:
            print(f"{args.verb}: {_job_line(info)}")
        return EXIT_OK

    return _run(args, body)


def cmd_status(args: argparse.Namespace) -> int:
    async def body(remote: RemoteStation) -> int:
        st = await remote.call("status", None, args.timeout)
        if args.json:
            _print_json(st)
        elif isinstance(st, dict):
            print_kv(st)
        else:
            print(st)
        return EXIT_OK

    return _run(args, body)


def main(argv: list[str] | None = None) -> int:
    """``python -m station.commands.jobs_cmd jobs ...|status ...``: these commands without the
    rest of the CLI."""
    parser = argparse.ArgumentParser(prog="station")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
