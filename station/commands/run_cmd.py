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


def register(sub: argparse._SubParsersAction) -> None:
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
    from station.jobs import JobError, job_dict, load_job_file
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
    import asyncio
    import contextlib
    import getpass
    import logging
    import socket

    from firmware_protocol.connection import Unsolicited
    from firmware_protocol.messages import Event
    from firmware_protocol.spec import EventCode
    from station.jobs import JobManager
    from station.link import LinkState
    from station.procedures import StationContext
    from station.session import open_station
    from station.sinks.cursor import publish_event
    from station.sinks.runner import health as sink_health
    from station.sinks.runner import notify, run_sinks

    log = logging.getLogger("station.daemon")
    holder: dict[str, JobManager] = {}
    web_box: dict[str, Any] = {}
    bound = None
    if cfg.web.enabled:
        # the port is taken (and the TLS files read) before the board is: a bad one stops here,
        # and the page is served while the board is still unreachable
        from station.web.server import WebError, WebServer, bind

        try:
            bound = bind(cfg.web)
        except WebError as e:
            print(f"station run: {e}", file=sys.stderr)
            return EX_CONFIG

    def publish(kind: str, payload: dict[str, Any]) -> None:
        jm = holder.get("jm")
        if jm is not None:
            publish_event(jm.ctx.store.db, kind, payload)
            notify()

    def prepare(ctx: StationContext) -> None:
        holder["jm"] = jm = JobManager(ctx, publish=publish)
        ctx.acq.on_commit = notify  # the sinks publish as soon as a batch is committed
        jm.prepare(ctx)
        if bound is not None:
            web_box["web"] = web = WebServer(cfg, jm, ctx, sink_health=sink_health, bound=bound)
            web.commands_open = False  # until the board is up and the jobs run

            def on_commit() -> None:
                notify()
                web.notify()

            ctx.acq.on_commit = on_commit

            async def start_web() -> None:
                print(f"web: serving {await web.start()}", flush=True)

            web_box["started"] = asyncio.ensure_future(start_web())

        def on_link(ev: object) -> None:
            if isinstance(ev, LinkState) and not ev.up:
                publish("alert/link_lost", {"reason": ev.reason})
            elif isinstance(ev, Unsolicited) and isinstance(ev.message, Event):
                code = ev.message.code
                if code == EventCode.INTERLOCK_OPEN:
                    publish("alert/interlock", {"state": "open", "t_us": ev.message.t_us})
                elif code == EventCode.INTERLOCK_CLOSED:
                    publish("alert/interlock", {"state": "closed", "t_us": ev.message.t_us})
                elif code in (EventCode.PIXEL_SHORT, EventCode.PIXEL_OPEN):
                    publish("alert/pixel_failure", {"pixel": ev.message.pixel,
                                                    "detail": ev.message.detail})
                elif code == EventCode.COMPLIANCE:
                    publish("alert/compliance", {"pixel": ev.message.pixel,
                                                 "detail": ev.message.detail})

        ctx.link.add_listener(on_link)

    backlogged: set[str] = set()  # sinks with an alert/sink_backlog raised and not cleared

    def check_backlog() -> None:
        """alert/sink_backlog once when a sink falls more than store.backlog_alert_rows rows
        behind, and once ("cleared") when it is back to half of that (no flapping). A burst
        that a connected sink is delivering (its last acknowledgement within 10 s, e.g. the
        revisions of a run that ended) is not an alert."""
        limit = cfg.store.backlog_alert_rows
        for name, h in sink_health().items():
            behind = int(h.get("rows_behind") or 0)
            ack_age = h.get("last_ack_age_s")
            stalled = not h.get("connected") or ack_age is None or ack_age > 10.0
            if name not in backlogged and behind > limit and stalled:
                state = "raised"
                backlogged.add(name)
            elif name in backlogged and behind <= limit // 2:
                state = "cleared"
                backlogged.discard(name)
            else:
                continue
            publish("alert/sink_backlog", {
                "sink": name, "state": state, "rows_behind": behind, "threshold_rows": limit,
                "seconds_behind": h.get("seconds_behind"), "connected": h.get("connected"),
                "last_error": h.get("last_error")})

    stop = asyncio.Event()
    background: list[asyncio.Task[Any]] = []
    # the control plane, the sinks and the job queue run whatever the board does: unplugged,
    # busy with another host or speaking another protocol, `station status` says so (and why)
    async with open_station(cfg, prepare=prepare, connect_timeout_s=None,
                            wait_for_board=False) as ctx:
        jm = holder["jm"]
        web = web_box.get("web")
        if web is not None:
            await web_box["started"]
        if cfg.mqtt.enabled or cfg.influxdb.enabled:
            background.append(asyncio.create_task(run_sinks(cfg, cfg.store.path, stop)))
        if cfg.mqtt.enabled:
            from station.control import ControlServer

            background.append(asyncio.create_task(ControlServer(cfg, jm).run(stop)))
        from .run_startup import announce_started

        announce_started(cfg, ctx, jm)
        jm.start()
        if web is not None:
            web.commands_open = True
        me = f"{getpass.getuser()}@{socket.gethostname()} (command line)"
        for job in jobs:
            info = await jm.submit(job, me)
            print(f"submitted {info['id']} ({info['name']})", flush=True)
        log.info("station %s running", cfg.station.id)
        try:
            while True:
                await asyncio.sleep(0.5)
                check_backlog()
                if exit_when_idle and not jm.tasks:
                    break
        finally:
            if web is not None:
                await web.stop()
            await jm.shutdown()
            ctx.acq.flush()
            stop.set()
            for t in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(t, 10.0)
    return 0
