"""The station daemon: the board link, acquisition and store (``open_station``), the job queue,
the sinks, the MQTT command server, the web page and the alert policy, wired together.

Startable from a library call, without the CLI (``station run`` is a thin layer over this)::

    async with Daemon(config) as d:          # everything runs; unfinished jobs resume
        info = await d.jobs.submit(job, "me")
        await d.jobs.wait(info["id"])
    # out of the block: jobs stopped (resumable), outputs off, sinks stopped, store closed

    await run_daemon(config, stop_event)     # until stop_event is set (or cancelled)

Leaving the block (normally, by an exception or by cancellation: SIGTERM, Ctrl-C) stops the
web page and the jobs (their runs end 'interrupted' and resume at the next start), flushes
the store, stops the sinks and the command server, then switches every output off and
closes the link and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from station.alerts import BacklogPolicy, link_alert
from station.config import StationConfig
from station.jobs import JobManager
from station.procedures import StationContext
from station.session import open_station
from station.sinks.cursor import publish_event
from station.sinks.runner import SinkRunner

if TYPE_CHECKING:
    from station.web.server import Bound, WebServer

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""How long the daemon waits for each of the sinks and the command server to stop."""


class DaemonConfigError(Exception):
    """The daemon cannot start with this configuration (e.g. the web port is taken)."""


class Daemon:
    """One station's daemon; see the module docstring.

    ``on_web(url)`` is called as soon as the web page is served (before the board is up, and
    while commands still answer 503); ``on_ready(daemon)`` once the sinks, the command server
    and the web page run, just before the unfinished jobs start (the CLI prints what it
    started there).
    """

    def __init__(self, config: StationConfig, *, url: str | None = None,
                 on_web: Callable[[str], None] | None = None,
                 on_ready: Callable[[Daemon], None] | None = None, poll_s: float = 0.5) -> None:
        self.config = config
        self.url = url
        self.on_web = on_web
        self.on_ready = on_ready
        self.poll_s = poll_s
        self.backlog = BacklogPolicy(config.store.backlog_alert_rows)
        self.sinks: SinkRunner | None = None
        self.web: WebServer | None = None
        self.web_url: str | None = None
        self._ctx: StationContext | None = None
        self._jobs: JobManager | None = None
        self._bound: Bound | None = None
        self._web_started: asyncio.Future[str] | None = None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._stack: contextlib.AsyncExitStack | None = None

    # -- what a caller uses -----------------------------------------------------------------------
    @property
    def ctx(self) -> StationContext:
        if self._ctx is None:
            raise RuntimeError("the daemon is not running (use `async with Daemon(config)`)")
        return self._ctx

    @property
    def jobs(self) -> JobManager:
        if self._jobs is None:
            raise RuntimeError("the daemon is not running (use `async with Daemon(config)`)")
        return self._jobs

    def sink_health(self) -> dict[str, Any]:
        """The sinks' health (``SinkRunner.health()``), ``{}`` when none runs."""
        return self.sinks.health() if self.sinks is not None else {}

    def notify(self) -> None:
        """New rows or events are in the store: wake the sinks now instead of at their poll."""
        if self.sinks is not None:
            self.sinks.notify()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Record an event or alert in the store (the MQTT sink delivers it) and wake the
        sinks."""
        if self._jobs is not None:
            publish_event(self._jobs.ctx.store.db, kind, payload)
            self.notify()

    def check_backlog(self) -> None:
        """Raise or clear ``alert/sink_backlog`` (:class:`station.alerts.BacklogPolicy`)."""
        for kind, payload in self.backlog.check(self.sink_health()):
            self.publish(kind, payload)

    async def serve(self, stop_event: asyncio.Event | None = None, *,
                    exit_when_idle: bool = False) -> None:
        """Run until ``stop_event`` is set (forever without one), or with ``exit_when_idle``
        until no job is left to run; check the sinks' backlog every ``poll_s``."""
        while True:
            if stop_event is None:
                await asyncio.sleep(self.poll_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), self.poll_s)
            self.check_backlog()
            if stop_event is not None and stop_event.is_set():
                return
            if exit_when_idle and not self.jobs.tasks:
                return

    # -- start and stop ---------------------------------------------------------------------------
    async def __aenter__(self) -> Daemon:
        cfg = self.config
        if cfg.web.enabled:
            # the port is taken (and the TLS files read) before the board is: a bad one stops
            # here, and the page is served while the board is still unreachable
            from station.web.server import WebError, bind

            try:
                self._bound = bind(cfg.web)
            except WebError as e:
                raise DaemonConfigError(str(e)) from e
        stack = contextlib.AsyncExitStack()
        try:
            # the control plane, the sinks and the job queue run whatever the board does:
            # unplugged, busy with another host or speaking another protocol, `station status`
            # says so (and why)
            await stack.enter_async_context(open_station(
                cfg, url=self.url, prepare=self._prepare, connect_timeout_s=None,
                wait_for_board=False))
            stack.push_async_callback(self._shutdown)  # runs before open_station's cleanup
            await self._start()
        except BaseException:
            await stack.aclose()
            await self._stop_web_if_started()
            raise
        self._stack = stack
        log.info("station %s running", cfg.station.id)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    def _prepare(self, ctx: StationContext) -> None:
        """Before the link starts (``open_station``'s ``prepare``): the job queue takes up its
        unfinished runs, so that records the board replays at once find their owner."""
        self._ctx = ctx
        self._jobs = jm = JobManager(ctx, publish=self.publish)
        ctx.acq.on_commit = self._on_commit  # the sinks publish as soon as a batch is committed
        jm.prepare(ctx)
        if self._bound is not None:
            from station.web.server import WebServer

            self.web = web = WebServer(self.config, jm, ctx, sink_health=self.sink_health,
                                       bound=self._bound)
            web.commands_open = False  # until the board is up and the jobs run
            self._web_started = asyncio.ensure_future(self._start_web(web))
        ctx.link.add_listener(self._on_link)

    async def _start_web(self, web: WebServer) -> str:
        self.web_url = url = await web.start()
        log.info("web: serving %s", url)
        if self.on_web is not None:
            self.on_web(url)
        return url

    async def _start(self) -> None:
        cfg, jm = self.config, self.jobs
        if self._web_started is not None:
            await self._web_started
        if cfg.mqtt.enabled or cfg.influxdb.enabled:
            self.sinks = SinkRunner(cfg, cfg.store.path)
            self._background.append(asyncio.create_task(self.sinks.run(self._stop),
                                                        name="sinks"))
        if cfg.mqtt.enabled:
            from station.control import ControlServer

            self._background.append(asyncio.create_task(ControlServer(cfg, jm).run(self._stop),
                                                        name="control"))
        if self.on_ready is not None:
            self.on_ready(self)
        jm.start()
        if self.web is not None:
            self.web.commands_open = True

    async def _shutdown(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self._jobs is not None:
            await self._jobs.shutdown()
        if self._ctx is not None:
            self._ctx.acq.flush()
        self._stop.set()
        for t in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, STOP_GRACE_S)

    async def _stop_web_if_started(self) -> None:
        """After a failed start: the page (or its bound socket) does not outlive the daemon."""
        if self._web_started is not None and not self._web_started.done():
            self._web_started.cancel()
        if self._web_started is not None:
            with contextlib.suppress(BaseException):
                await self._web_started
        if self.web is not None:
            with contextlib.suppress(Exception):
                await self.web.stop()
        if self._bound is not None:
            with contextlib.suppress(Exception):
                self._bound.sock.close()

    def _on_commit(self) -> None:
        self.notify()
        if self.web is not None:
            self.web.notify()

    def _on_link(self, ev: object) -> None:
        alert = link_alert(ev)
        if alert is not None:
            self.publish(*alert)


async def run_daemon(config: StationConfig, stop_event: asyncio.Event | None = None, *,
                     jobs: Iterable[dict[str, Any]] = (), client: str = "library",
                     exit_when_idle: bool = False, url: str | None = None) -> int:
    """Run the daemon until ``stop_event`` is set (or, with ``exit_when_idle``, until no job is
    left), submitting ``jobs`` first (as ``client``). Returns 0; cancelling it is a clean stop
    too (outputs off, the unfinished jobs resume at the next start)."""
    async with Daemon(config, url=url) as d:
        for job in jobs:
            await d.jobs.submit(job, client)
        await d.serve(stop_event, exit_when_idle=exit_when_idle)
    return 0
