"""The board link: serial transport + the sans-I/O connection + reconnect and replay.

:class:`BoardLink` opens any pyserial URL (a device path, ``socket://host:port``, a pty) with
pyserial-asyncio-fast, handshakes (version and spec-hash check), turns requests into awaitables
with timeouts and retries, and hands every new stream record to a consumer callback. When the
device disappears it reconnects with exponential backoff, handshakes again and asks the board to
replay every stream from the first record the host has not got: nothing is lost, and the
connection's sequence tracker drops anything delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

import numpy as np
import serial
import serial_asyncio_fast

from firmware_protocol.base import BaseMessage
from firmware_protocol.connection import (
    BoardRebooted,
    Connection,
    ConnState,
    EpochStarted,
    Event,
    FrameDropped,
    GapDetected,
    Handshaked,
    HandshakeFailed,
    RecordsLost,
    RequestFailed,
    RequestTimedOut,
    Response,
    SpectrumReceived,
    StreamRecords,
    Unsolicited,
)
from firmware_protocol.messages import (
    Capabilities,
    GetCapabilities,
    GetStatus,
    HelloReply,
    Ok,
    SetWatchdog,
    Status,
    StreamAck,
    StreamReplay,
)
from firmware_protocol.spec import ErrorCode, Stream, WatchdogPolicy

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseMessage)


class LinkError(Exception):
    """The link cannot be used (e.g. the board speaks another protocol). Not retried."""


class LinkDown(Exception):
    """The link went away while a request was outstanding; it is being re-established."""


class HandshakeRefused(Exception):
    """The board answered ``hello`` with an error other than a version mismatch (e.g. BUSY:
    another host holds it). Retried with backoff."""


class BoardError(Exception):
    """The board refused a request."""

    def __init__(self, request: str, code: int, detail: str) -> None:
        self.request, self.code, self.detail = request, code, detail
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"board refused {request}: {name}: {detail}")


class RequestTimeout(Exception):
    pass


# pyserial's URL handlers (serial.protocol_handler_packages), plus tcp:// as the simulator and
# most people write a TCP port
_SERIAL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep", "cp2110")


def serial_url(url: str) -> str:
    """The pyserial URL for a board URL: ``tcp://HOST:PORT`` is ``socket://HOST:PORT``; a device
    path or another pyserial URL is used as it is. :class:`LinkError` for an unknown scheme or a
    TCP URL without host or port."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if not url:
            raise LinkError("no board URL (give --port or the config's board.url)")
        return url  # a device path
    scheme = scheme.lower()
    if scheme in ("tcp", "socket"):
        host, _, port = rest.partition("/")[0].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LinkError(f"board URL {url!r}: expected {scheme}://HOST:PORT")
        return "socket://" + rest
    if scheme not in _SERIAL_SCHEMES:
        raise LinkError(f"board URL {url!r}: unknown scheme {scheme!r} (expected a device path, "
                        "tcp://HOST:PORT, socket://HOST:PORT or rfc2217://HOST:PORT)")
    return url


def _refusal(url: str, e: BaseException) -> str | None:
    """Why opening ``url`` failed, when retrying cannot help a one-shot command: nothing listens
    at a TCP port, no such device, no permission. None for anything else."""
    errno_ = getattr(e, "errno", None)
    text = str(e)
    if isinstance(e, ConnectionRefusedError) or errno_ == 111 or "Connection refused" in text:
        return f"connection refused by {url}: nothing listens there (is the simulator running?)"
    if isinstance(e, FileNotFoundError) or errno_ == 2 or "No such file or directory" in text:
        return f"no such device: {url} (is the board plugged in? see /dev/serial/by-id/)"
    if isinstance(e, PermissionError) or errno_ == 13 or "Permission denied" in text:
        return f"permission denied opening {url} (add the user to the dialout group)"
    if isinstance(e, OSError) and errno_ in (-2, -3, -5):  # socket.gaierror: unknown host
        return f"cannot resolve the host of {url}: {e}"
    return None


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    replays_requested: int = 0
    gaps: int = 0
    reboots: int = 0
    records_lost: int = 0


class _Proto(asyncio.Protocol):
    def __init__(self, link: BoardLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._on_lost(exc)


StreamConsumer = Callable[[Event], None]
EventListener = Callable[[Event], None]


class BoardLink:
    def __init__(self, url: str, *, baudrate: int = 921600, timeout_s: float = 0.5,
                 max_attempts: int = 4, reconnect_min_s: float = 0.2, reconnect_max_s: float = 5.0,
                 watchdog_s: float = 10.0, watchdog_policy: str = "keep_aging",
                 exclusive: bool = True) -> None:
        self.url = url
        self.serial_url = serial_url(url)
        self.baudrate = baudrate
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.watchdog_s = watchdog_s
        self.watchdog_policy = (WatchdogPolicy.GO_SAFE if watchdog_policy == "go_safe"
                                else WatchdogPolicy.KEEP_AGING)
        self.exclusive = exclusive
        self.conn = Connection(timeout_s=timeout_s, max_attempts=max_attempts)
        self.stats = LinkStats()
        self.board: HelloReply | None = None
        self.caps: Capabilities | None = None
        self.last_status: Status | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._futures: dict[int, tuple[asyncio.Future[BaseMessage], str]] = {}
        self._stream_consumers: list[StreamConsumer] = []
        self._listeners: list[EventListener] = []
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._repairer: asyncio.Task[None] | None = None
        self._chunk: dict[Stream, int] = dict.fromkeys(Stream, 64)
        self._fatal: Exception | None = None
        self._handshake_fut: asyncio.Future[HelloReply] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fail_fast = False
        self._last_error: str | None = None
        # what the control plane reports (station status): connecting | up | down | failed,
        # since when (Unix time) and why; ``failures``: attempts failed since the last success
        self.state = "connecting"
        self.state_since = time.time()
        self.reason: str | None = None
        self.failures = 0
        self._lost_reason: str | None = None

    # -- consumers --------------------------------------------------------------------------
    def add_stream_consumer(self, fn: StreamConsumer) -> None:
        """``fn`` gets every StreamRecords and SpectrumReceived event, in order, once."""
        self._stream_consumers.append(fn)

    def add_listener(self, fn: EventListener) -> None:
        """``fn`` gets unsolicited messages (status, event, sweep_done) and link events."""
        self._listeners.append(fn)

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def describe(self) -> dict[str, Any]:
        """The link for ``station status``: ``state`` (connecting, up, down, or failed: a
        protocol mismatch, not retried), ``since`` (Unix time of the last change), ``reason``
        (why it is not up), ``url`` and ``failures`` (connection attempts failed in a row)."""
        return {"state": self.state, "since": self.state_since, "reason": self.reason,
                "url": self.url, "failures": self.failures}

    def _set_state(self, state: str, reason: str | None) -> None:
        if state != self.state:
            self.state, self.state_since = state, time.time()
        self.reason = reason

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float | None = 10.0, *, wait: bool = True,
                    fail_fast: bool = False) -> None:
        """Connect (retrying with backoff) and keep the link up in the background. With
        ``wait=False`` return at once: the link comes up whenever the board answers (see
        :meth:`describe` and :meth:`wait_up`).

        ``fail_fast``: a first attempt that cannot succeed by retrying (connection refused, no
        such device, permission denied) raises :class:`LinkError` at once instead of retrying
        until ``connect_timeout_s``; a one-shot command wants that, a daemon does not."""
        self._fail_fast = fail_fast
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="board-link")
        self._poller = asyncio.create_task(self._poll_loop(), name="board-link-timers")
        self._repairer = asyncio.create_task(self._repair_loop(), name="board-link-repair")
        if not wait:
            return
        try:
            await self.wait_up(connect_timeout_s)
        except BaseException:
            await self.close()
            raise

    async def wait_up(self, timeout_s: float | None = None) -> None:
        waiter = asyncio.create_task(self._up.wait())
        sup = self._supervisor
        try:
            await asyncio.wait(
                {waiter, *([sup] if sup else [])}, timeout=timeout_s,
                return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._fatal is not None:
            raise self._fatal
        if sup is not None and sup.done() and not sup.cancelled() and sup.exception() is not None:
            raise LinkError(f"board link to {self.url}: {sup.exception()}")
        if not self._up.is_set():
            if self._last_error is not None:
                raise LinkError(f"no board at {self.url} after {timeout_s:g} s: {self._last_error}")
            raise LinkError(f"could not connect to the board at {self.url} within {timeout_s} s "
                            f"(is it plugged in / is the simulator running?)")

    async def wait_until_up(self) -> None:
        """Wait, however long it takes, for the link to be up (a job waiting for its board; a
        failed link, e.g. a protocol mismatch, keeps it waiting until the daemon restarts)."""
        await self._up.wait()

    async def close(self) -> None:
        self._closing = True
        if self._handshake_fut is not None:
            self._handshake_fut.cancel()
        for t in (self._supervisor, self._poller, self._repairer):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._fail_all(LinkDown("link closed"))

    async def __aenter__(self) -> BoardLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- supervisor -------------------------------------------------------------------------
    async def _supervise(self) -> None:
        delay = self.reconnect_min_s
        while not self._closing:
            try:
                await self._connect_once()
                delay = self.reconnect_min_s
                await self._lost.wait()
                reason = self._lost_reason or "link lost"
            except LinkError as e:
                self._fatal = e
                self._set_state("failed", str(e))
                log.error("%s", e)
                self._notify(_LinkState(False, str(e)))
                return
            except (OSError, serial.SerialException, RequestTimeout, LinkDown, BoardError,
                    HandshakeRefused) as e:
                why = _refusal(self.url, e) if not self.stats.connects else None
                if why is not None and self._fail_fast:
                    self._fatal = LinkError(why)
                    self._set_state("failed", why)
                    return
                reason = why or str(e) or type(e).__name__
                self._last_error = reason
                self.failures += 1
                # an unplugged board: said once, then quietly retried until something changes
                repeat = self.state == "down" and self.reason == reason
                log.log(logging.DEBUG if repeat else logging.WARNING,
                        "board link to %s: %s; retrying in %.1f s", self.url, reason, delay)
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            if self._up.is_set():
                self._up.clear()
            # one link_lost per outage (and one if the board is absent from the start), not one
            # per failed attempt; the reason follows the latest attempt
            changed = self.state != "down"
            self._set_state("down", reason)
            if changed:
                self._notify(_LinkState(False, reason))
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost.clear()
        kwargs: dict[str, Any] = {"baudrate": self.baudrate}
        if self.exclusive and "://" not in self.serial_url:
            kwargs["exclusive"] = True
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: _Proto(self), self.serial_url, **kwargs)
        self._transport = transport
        self._handshake_fut = loop.create_future()
        self._write(self.conn.start_handshake(time.monotonic()))
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._handshake_fut),
                                           self.conn.timeout_s * 8)
        except TimeoutError:
            self._handshake_fut.cancel()
            raise RequestTimeout(f"the connection was accepted but the board did not "
                                 f"answer (no reply to hello within {self.conn.timeout_s * 8:g} s:"
                                 " a LED station board with this firmware?)") from None
        self.board = reply
        self.stats.connects += 1
        self.caps = await self._request_raw(GetCapabilities(), Capabilities)
        await self._request_raw(SetWatchdog(timeout_ms=int(self.watchdog_s * 1000),
                                            policy=int(self.watchdog_policy)))
        self.last_status = await self._request_raw(GetStatus(), Status)
        # Replay whatever the host has not got yet, on every stream; the connection decides
        # whether the board's counters continued or restarted (a reset that lost its rings)
        for stream, first in self.conn.reconcile_heads(self.last_status):
            self._dispatch()
            await self._replay(stream, first)
        self._dispatch()
        self._up.set()
        self.failures = 0
        self._set_state("up", None)
        log.info("board %s (%s, boot %d) up at %s", reply.serial_number, reply.firmware_version,
                 reply.boot_id, self.url)
        self._notify(_LinkState(True, "link up"))

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if self._transport is None:
                continue
            out = self.conn.poll(time.monotonic())
            if out:
                self._write(out)
            self._dispatch()

    async def _repair_loop(self) -> None:
        """Fetch missing records again and again until they arrive.

        The first hole of each stream is asked for in a range whose size adapts to the line:
        halved when a replay did not fill it (on a noisy line a long frame rarely survives, a
        short one does), doubled when it did.
        """
        while True:
            await asyncio.sleep(0.1)
            if not self._up.is_set():
                continue
            for stream in Stream:
                tr = self.conn.trackers[stream]
                if not tr.missing:
                    continue
                lo, hi = tr.missing[0]
                size = self._chunk[stream]
                try:
                    await self._replay(stream, lo, min(hi, lo + size - 1))
                except (LinkDown, RequestTimeout, BoardError) as e:
                    log.debug("repair of %s from %d: %s", stream.name, lo, e)
                    continue
                await asyncio.sleep(0.05)
                filled = not tr.missing or tr.missing[0][0] > lo
                self._chunk[stream] = min(size * 2, 256) if filled else max(size // 2, 1)

    def note_head(self, stream: Stream, head32: int) -> None:
        """The board's next seq on ``stream`` (from a status): anything before it that the host
        has not received is now known to be missing and will be fetched."""
        tr = self.conn.trackers[stream]
        if tr.expected is None:
            return
        head64 = int(tr.unwrap(np.array([head32], dtype=np.uint32))[0])
        for lo, hi in tr.note_head(head64):
            self.stats.gaps += 1
            log.debug("%s records %d..%d not received yet", stream.name, lo, hi)

    def missing_before(self, stream: Stream, head32: int) -> int:
        """How many records before the board's ``head32`` the host still lacks."""
        tr = self.conn.trackers[stream]
        if tr.expected is None:
            return 0
        head64 = int(tr.unwrap(np.array([head32], dtype=np.uint32))[0])
        n = sum(min(hi, head64 - 1) - lo + 1 for lo, hi in tr.missing if lo < head64)
        return n + max(0, head64 - tr.expected)

    # -- I/O --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        t.write(data)  # type: ignore[attr-defined]

    def _on_data(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._dispatch()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self.stats.disconnects += 1
        self._transport = None
        self._up.clear()
        self._lost_reason = f"connection lost: {exc or 'closed by the board'}"
        self._lost.set()
        self._fail_all(LinkDown(f"link to {self.url} lost: {exc or 'closed'}"))
        if self._handshake_fut is not None and not self._handshake_fut.done():
            self._handshake_fut.set_exception(LinkDown("link lost during handshake"))

    def _fail_all(self, exc: Exception) -> None:
        for seq, (fut, _name) in list(self._futures.items()):
            if not fut.done():
                fut.set_exception(exc)
            self.conn.cancel(seq)
        self._futures.clear()

    def _dispatch(self) -> None:
        while (ev := self.conn.next_event()) is not None:
            handler = next((h for c in type(ev).__mro__ if (h := self._handlers.get(c))), None)
            if handler is not None:
                handler(self, ev)

    def _on_reply(self, ev: Response | RequestFailed | RequestTimedOut) -> None:
        entry = self._futures.pop(ev.seq, None)
        if entry is None:
            if isinstance(ev, RequestTimedOut) and ev.request == "hello":
                self._fail_handshake(RequestTimeout(
                    "the connection was accepted but the board did not answer "
                    f"(no reply to hello after {ev.attempts} attempts: a LED station "
                    "board with this firmware?)"))
            return
        fut, name = entry
        if fut.done():
            return
        if isinstance(ev, Response):
            fut.set_result(ev.message)
        elif isinstance(ev, RequestFailed):
            fut.set_exception(BoardError(name, ev.code, ev.detail))
        else:
            fut.set_exception(RequestTimeout(f"no answer to {name} after {ev.attempts} attempts"))

    def _on_handshaked(self, ev: Handshaked) -> None:
        if self._handshake_fut is not None and not self._handshake_fut.done():
            self._handshake_fut.set_result(ev.reply)

    def _on_handshake_failed(self, ev: HandshakeFailed) -> None:
        self._fail_handshake(HandshakeRefused(ev.reason) if ev.retryable else LinkError(ev.reason))

    def _on_stream(self, ev: StreamRecords | SpectrumReceived) -> None:
        for fn in self._stream_consumers:
            fn(ev)

    def _on_gap(self, ev: GapDetected) -> None:
        self.stats.gaps += 1
        if self._loop is not None:
            self._loop.create_task(self._safe_replay(ev.stream, ev.from_seq, ev.to_seq))

    def _on_rebooted(self, ev: BoardRebooted) -> None:
        self.stats.reboots += 1
        log.warning("board rebooted (boot id %d -> %d)", ev.old_boot_id, ev.new_boot_id)
        self._notify(ev)
        if self._up.is_set() and self._loop is not None:
            # a reset the link survived: the connection holds stream data until the
            # heads are reconciled (a reset that dropped the link does it on reconnect)
            self._loop.create_task(self._reconcile_live())

    def _on_records_lost(self, ev: RecordsLost) -> None:
        self.stats.records_lost += ev.count
        log.error("board lost %d %s records (host seqs %d..%d, %s, epoch %d): they will "
                  "never arrive", ev.count, ev.stream.name, ev.from_seq, ev.to_seq,
                  ev.reason.replace("_", " "), ev.epoch)
        for fn in self._stream_consumers:
            fn(ev)
        self._notify(ev)

    def _on_epoch(self, ev: EpochStarted) -> None:
        log.warning("board counters and clock restarted: epoch %d (boot %d), host seqs "
                    "from %s, host time from %d us", ev.epoch, ev.boot_id,
                    {s.name: b for s, b in ev.base.items()}, ev.t_offset_us)
        for fn in self._stream_consumers:
            fn(ev)
        self._notify(ev)

    def _on_unsolicited(self, ev: Unsolicited) -> None:
        if isinstance(ev.message, Status):
            self.last_status = ev.message
        self._notify(ev)

    def _on_frame_dropped(self, ev: FrameDropped) -> None:
        log.debug("frame dropped: %s %s", ev.reason, ev.detail)

    _handlers: ClassVar[dict[type, Callable[[BoardLink, Any], None]]] = {
        Response: _on_reply, RequestFailed: _on_reply, RequestTimedOut: _on_reply,
        Handshaked: _on_handshaked, HandshakeFailed: _on_handshake_failed,
        StreamRecords: _on_stream, SpectrumReceived: _on_stream, GapDetected: _on_gap,
        BoardRebooted: _on_rebooted, RecordsLost: _on_records_lost, EpochStarted: _on_epoch,
        Unsolicited: _on_unsolicited, FrameDropped: _on_frame_dropped,
    }
    """One handler per connection event type (a subclass of an event finds its base's)."""

    def _fail_handshake(self, exc: Exception) -> None:
        if self._handshake_fut is not None and not self._handshake_fut.done():
            self._handshake_fut.set_exception(exc)

    def _notify(self, ev: object) -> None:
        for fn in self._listeners:
            try:
                fn(ev)  # type: ignore[arg-type]
            except Exception:  # a listener never breaks the link
                log.exception("link listener failed")

    # -- requests ---------------------------------------------------------------------------
    @overload
    async def request(self, msg: BaseMessage, expect: type[M],
                      wait_up_s: float | None = 30.0) -> M: ...

    @overload
    async def request(self, msg: BaseMessage, expect: None = None,
                      wait_up_s: float | None = 30.0) -> Ok: ...

    async def request(self, msg: BaseMessage, expect: type[M] | None = None,
                      wait_up_s: float | None = 30.0) -> BaseMessage:
        """Send an acknowledged request and await its reply (retried safely on timeouts).

        The first retry waits for what the request costs the board — a spectrum's integration,
        a photodiode average, the requests queued ahead of it — plus ``timeout_s``, the link's
        margin (:meth:`firmware_protocol.connection.Connection.expected_done`); the board never
        executes a retried request twice.

        If the link is down, waits up to ``wait_up_s`` for it to come back first. Raises
        :class:`BoardError` when the board refuses, :class:`LinkDown` when the link drops
        while waiting, :class:`RequestTimeout` when the board never answers.
        """
        if not self._up.is_set():
            await self.wait_up(wait_up_s)
        return await self._request_raw(msg, expect)

    @overload
    async def _request_raw(self, msg: BaseMessage, expect: type[M]) -> M: ...

    @overload
    async def _request_raw(self, msg: BaseMessage, expect: None = None) -> Ok: ...

    async def _request_raw(self, msg: BaseMessage, expect: type[M] | None = None) -> BaseMessage:
        if self.conn.state is not ConnState.READY:
            raise LinkDown("link not ready")
        loop = asyncio.get_running_loop()
        seq, data = self.conn.send_request(msg, time.monotonic())
        fut: asyncio.Future[BaseMessage] = loop.create_future()
        self._futures[seq] = (fut, msg.NAME)
        self._write(data)
        reply = await fut
        if not isinstance(reply, expect or Ok):  # the reply type the call is typed with
            raise BoardError(msg.NAME, -1, f"unexpected reply {reply.NAME}")
        return reply

    def ack(self, stream: Stream, seq64: int) -> None:
        """Tell the board every record of ``stream`` up to host seq ``seq64`` is safely stored
        (nothing is sent for a record of an earlier board epoch)."""
        tr = self.conn.trackers[stream]
        if (self.conn.state is ConnState.READY and self._transport is not None
                and seq64 >= tr.base and not self.conn.holding):
            self._write(self.conn.send_unacked(StreamAck(stream=int(stream),
                                                         seq=tr.to_board(seq64))))

    async def _replay(self, stream: Stream, from_seq64: int, to_seq64: int | None = None) -> None:
        """Ask the board to resend host seqs ``from_seq64``..``to_seq64`` (None: to its head);
        what it no longer holds is declared lost by the connection, once."""
        self.stats.replays_requested += 1
        tr = self.conn.trackers[stream]
        to32 = 0xFFFFFFFF if to_seq64 is None else tr.to_board(to_seq64)
        ok = await self._request_raw(StreamReplay(stream=int(stream),
                                                  from_seq=tr.to_board(from_seq64), to_seq=to32))
        if self.conn.trackers[stream] is tr:  # not a new epoch meanwhile
            self.conn.replay_answered(stream, from_seq64, int(getattr(ok, "value", 0)))
            self._dispatch()

    async def _reconcile_live(self) -> None:
        try:
            st: Status = await self._request_raw(GetStatus(), Status)
            self.last_status = st
            for stream, first in self.conn.reconcile_heads(st):
                self._dispatch()
                await self._replay(stream, first)
            self._dispatch()
        except (LinkDown, RequestTimeout, BoardError) as e:
            log.info("reconciling after a board reset deferred to the reconnect: %s", e)

    async def _safe_replay(self, stream: Stream, lo: int, hi: int) -> None:
        try:
            await self._replay(stream, lo, hi)
        except (LinkDown, RequestTimeout, BoardError) as e:
            # the reconnect path replays everything from the tracker's position anyway
            log.info("replay of %s %d..%d deferred: %s", stream.name, lo, hi, e)

    def resume_stream(self, stream: Stream, next_seq64: int, base: int = 0) -> None:
        """Start tracking ``stream`` at ``next_seq64`` (e.g. one past the last stored record),
        with board seq 0 of the current epoch at host seq ``base``."""
        self.conn.resume_stream(stream, next_seq64, base)

    async def replay_from(self, stream: Stream, from_seq64: int) -> None:
        await self._replay(stream, from_seq64)


@dataclass(frozen=True)
class _LinkState:
    up: bool
    reason: str


LinkState = _LinkState

__all__ = ["BoardError", "BoardLink", "HandshakeRefused", "LinkDown", "LinkError", "LinkState",
           "RequestTimeout", "serial_url"]
