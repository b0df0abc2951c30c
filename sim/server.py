"""Serve the simulated board over a pseudo-terminal or a TCP socket, as a USB serial board would be.

Usage, in-process (the station's demo and the tests)::

    server = SimServer(layout_from_presets("dbsa*4"), listen="pty", speed=1000, seed=1)
    url = await server.start()        # "/dev/pts/7" (or link_path), or "socket://127.0.0.1:PORT"
    ser = serial.serial_for_url(url)  # any pyserial client
    ...
    server.board.counters.produced    # what the board produced, per stream
    await server.stop()

Transports
----------
``listen="tcp://HOST:PORT"`` (PORT 0 picks a free port): one client at a time — a second
connection while one is open is accepted and closed at once (counted in ``stats.refused``).
``start()`` returns ``socket://HOST:PORT`` for :func:`serial.serial_for_url`.

``listen="pty"``: :func:`os.openpty` with the slave in raw mode (:func:`tty.setraw`: no echo, no
CR/LF translation, 0x00 passes); ``start()`` returns the slave's path, or ``link_path`` when
given: a symlink (like ``/dev/serial/by-id/...``) to the current device. The board learns that a
host is there when the host opens the device (reading the master stops failing with EIO); while
no host has it open, frames are not sent (the rings keep filling) and stale bytes are flushed.

Link faults
-----------
A disconnect or reboot (see :mod:`sim.faults`) really takes the link away: the TCP client
socket is closed and the listening socket closed too (connections are refused), or the pty is
destroyed (the host's reads fail) and ``link_path`` removed. It comes back after the fault's
virtual duration but never before 0.3 s of wall time (USB re-enumeration): the same TCP port,
or a NEW pty device with ``link_path`` re-pointed to it (without ``link_path`` the new path is
in :attr:`SimServer.url`). Bit errors and byte drops apply to both directions.

Pacing
------
``baud``: each direction carries at most baud/10 bytes per second. ``usb_latency_ms``: data
written in either direction is delivered at the next multiple of this interval (USB full-speed
frames are 1 ms), in chunks. Stream frames (samples, spectra) that would queue more than
``tx_buffer_bytes`` are dropped by the board as a full TX buffer would (the host gets them back
by replay); replies and events are never dropped there.

The loop runs every ~2 ms of wall time: read the host's bytes, advance the board to the virtual
now (:mod:`sim.clock`), check the wall-clock watchdog, emit the once-per-wall-second status,
write the board's frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import socket
import termios
import tty
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.board import DEFAULT_RING_DEPTH, Board, LinkAction
from sim.clock import VirtualClock
from sim.faults import LINK_MIN_DOWN_WALL_S, FaultPlan, LinkNoise, parse_faults
from sim.layout import Layout, coerce_layout

__all__ = ["DEFAULT_FIRMWARE", "FIRMWARES", "LOOP_PERIOD_S", "LinkStats", "SimServer", "parse_listen"]

log = logging.getLogger("sim.server")

LOOP_PERIOD_S = 0.002
FIRMWARES = ("python", "c")
DEFAULT_FIRMWARE = "python"
"""The firmware a server runs when none is named: ``python`` (sim/board.py) or ``c`` (the C core
of firmware/ in the loop, sim/cfirmware.py)."""
DEFAULT_TX_BUFFER_BYTES = 16 * 1024 * 1024


def parse_listen(listen: str) -> tuple[str, str, int]:
    """``"pty"`` → ("pty", "", 0); ``"tcp://HOST:PORT"`` → ("tcp", HOST, PORT). ValueError otherwise."""
    if listen == "pty":
        return "pty", "", 0
    if listen.startswith("tcp://"):
        hostport = listen[len("tcp://"):]
        host, sep, port_s = hostport.rpartition(":")
        if sep and host and port_s.isdigit() and int(port_s) <= 65535:
            return "tcp", host.strip("[]"), int(port_s)
    raise ValueError(f"--listen {listen!r}: expected 'pty' or 'tcp://HOST:PORT' "
                     "(e.g. tcp://127.0.0.1:0 for any free port)")


@dataclass
class LinkStats:
    connections: int = 0
    """Host sessions (TCP clients accepted, or pty opens seen)."""
    refused: int = 0
    """TCP connections refused because one client was already connected."""
    link_drops: int = 0
    bytes_from_host: int = 0
    bytes_to_host: int = 0
    tx_frames_dropped: int = 0
    """Stream frames dropped because the TX buffer (host not reading fast enough) was full."""


# ---------------------------------------------------------------------------------------------
# transports
# ---------------------------------------------------------------------------------------------


class _Transport(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def has_peer(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def poll(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def backlog(self) -> int: ...


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, owner: _TcpTransport) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.active = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.owner.peer is not None:
            self.owner.stats.refused += 1
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.active = True
        self.owner.peer = transport
        self.owner.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.active and self.owner.peer is self.transport:
            self.owner.inbuf += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active and self.owner.peer is self.transport:
            self.owner.peer = None
        self.active = False


class _TcpTransport:
    def __init__(self, host: str, port: int, stats: LinkStats) -> None:
        self.host = host
        self.port = port
        self.stats = stats
        self.peer: asyncio.Transport | None = None
        self.inbuf = bytearray()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socket://{host}:{self.port}"

    @property
    def has_peer(self) -> bool:
        return self.peer is not None and not self.peer.is_closing()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TcpProtocol(self), self.host, self.port,
                                                reuse_address=True)
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.peer is not None:
            self.peer.abort()
            self.peer = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        self.inbuf.clear()

    def poll(self) -> bytes:
        if not self.inbuf:
            return b""
        data = bytes(self.inbuf)
        self.inbuf.clear()
        return data

    def write(self, data: bytes) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.write(data)

    def backlog(self) -> int:
        return self.peer.get_write_buffer_size() if self.peer is not None else 0


class _PtyTransport:
    def __init__(self, link_path: str | None, stats: LinkStats) -> None:
        self.link_path = link_path
        self.stats = stats
        self.device = ""
        self._master: int | None = None
        self._peer = False
        self._pending = bytearray()

    @property
    def url(self) -> str:
        return self.link_path or self.device

    @property
    def has_peer(self) -> bool:
        return self._peer

    async def open(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            self.device = os.ttyname(slave)
        finally:
            os.close(slave)  # the host opens it by path; with no slave open the master reads EIO
        os.set_blocking(master, False)
        self._master = master
        self._peer = False
        if self.link_path:
            tmp = f"{self.link_path}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.device, tmp)
            os.replace(tmp, self.link_path)

    async def close(self) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        self._peer = False
        self._pending.clear()
        if self.link_path:
            with contextlib.suppress(OSError):
                if os.path.islink(self.link_path) and os.readlink(self.link_path) == self.device:
                    os.unlink(self.link_path)

    def _set_peer(self, present: bool) -> None:
        if present == self._peer:
            return
        self._peer = present
        if present:
            self.stats.connections += 1
            return
        self._pending.clear()
        # the host closed the device: throw away what it left unread, so the next host does not
        # start with stale bytes
        with contextlib.suppress(OSError):
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIOFLUSH)
            finally:
                os.close(fd)

    def poll(self) -> bytes:
        if self._master is None:
            return b""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self._master, 65536)
            except BlockingIOError:
                self._set_peer(True)
                break
            except OSError as e:
                if e.errno == errno.EIO:
                    self._set_peer(False)
                    break
                raise
            if not data:
                break
            self._set_peer(True)
            chunks.append(data)
        self._drain()
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        if self._master is None or not self._peer:
            return
        self._pending += data
        self._drain()

    def _drain(self) -> None:
        while self._pending and self._master is not None:
            try:
                n = os.write(self._master, self._pending[:65536])
            except BlockingIOError:
                return
            except OSError:
                self._pending.clear()
                return
            del self._pending[:n]

    def backlog(self) -> int:
        return len(self._pending)


# ---------------------------------------------------------------------------------------------
# one direction of the link: pacing, USB latency, noise
# ---------------------------------------------------------------------------------------------


class _Pipe:
    def __init__(self, bytes_per_s: float | None, latency_s: float, noise: LinkNoise) -> None:
        self.rate = bytes_per_s
        self.latency = latency_s
        self.noise = noise
        self._q: deque[tuple[float, bytes]] = deque()
        self._size = 0
        self._tokens = 0.0
        self._last = -1.0
        self._starved = False
        self._burst = max(bytes_per_s * 0.004, 16.0) if bytes_per_s is not None else 0.0

    def push(self, data: bytes, wall: float) -> None:
        if not data:
            return
        release = math.ceil(wall / self.latency) * self.latency if self.latency > 0 else wall
        self._q.append((release, data))
        self._size += len(data)

    def pending(self) -> int:
        return self._size

    def clear(self) -> None:
        self._q.clear()
        self._size = 0

    def queued(self) -> list[bytes]:
        return [d for _, d in self._q]

    def pop(self, wall: float) -> bytes:
        if self.rate is not None:
            if self._last < 0:
                self._last = wall
            earned = (wall - self._last) * self.rate
            # A UART shifts bytes out back to back while its buffer holds any: when the last
            # pop left data waiting for credit, the wire was busy all along and every byte time
            # since counts, however late this loop iteration runs. An idle wire earns at most
            # a short burst.
            self._tokens = (self._tokens + earned if self._starved
                            else min(self._tokens + earned, self._burst))
            self._last = wall
        out: list[bytes] = []
        self._starved = False
        while self._q and self._q[0][0] <= wall:
            release, data = self._q[0]
            if self.rate is not None:
                n = int(self._tokens)
                if n < len(data):
                    self._starved = True
                    if n <= 0:
                        break
                    out.append(data[:n])
                    self._q[0] = (release, data[n:])
                    self._size -= n
                    self._tokens -= n
                    break
                self._tokens -= len(data)
            self._q.popleft()
            self._size -= len(data)
            out.append(data)
        if not self._starved:
            self._tokens = min(self._tokens, self._burst)
        raw = b"".join(out)
        return self.noise.apply(raw) if raw else raw


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


class SimServer:
    """The simulated board on a pty or TCP socket (see the module docstring).

    ``layout`` is a :class:`sim.layout.Layout` or a preset list (``"dbsa,otac"``); ``faults`` a
    spec string or a parsed :class:`sim.faults.FaultPlan`. ``board`` (the firmware, with its
    ``counters``) exists from construction; ``clock`` from :meth:`start`.
    """

    def __init__(self, layout: Layout | str | Sequence[str], listen: str = "tcp://127.0.0.1:0",
                 speed: float = 1.0, seed: int = 0, faults: str | FaultPlan | None = None,
                 baud: int | None = None, usb_latency_ms: float = 0.0, link_path: str | None = None,
                 ring_depth: int = DEFAULT_RING_DEPTH, reboot_loses_ring: bool = False, *,
                 n_aging_channels: int | None = None, first_seq: int = 0,
                 tx_buffer_bytes: int = DEFAULT_TX_BUFFER_BYTES, firmware: str | None = None) -> None:
        self.layout = coerce_layout(layout)
        self.kind, host, port = parse_listen(listen)
        if link_path and self.kind != "pty":
            raise ValueError("link_path (--link) only applies to --listen pty")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be positive, got {baud!r}")
        if not (math.isfinite(usb_latency_ms) and usb_latency_ms >= 0):
            raise ValueError(f"usb_latency_ms must be >= 0, got {usb_latency_ms!r}")
        self.plan = faults if isinstance(faults, FaultPlan) else parse_faults(faults)
        self.speed = float(speed)
        self.seed = int(seed)
        self.firmware = DEFAULT_FIRMWARE if firmware is None else firmware
        if self.firmware not in FIRMWARES:
            raise ValueError(f"firmware {self.firmware!r}: expected one of {', '.join(FIRMWARES)}")
        board_cls: type[Board] = Board
        if self.firmware == "c":
            from sim.cfirmware import CFirmwareBoard
            board_cls = CFirmwareBoard
        self.board = board_cls(self.layout, seed=seed, faults=self.plan, ring_depth=ring_depth,
                               reboot_loses_ring=reboot_loses_ring, n_aging_channels=n_aging_channels,
                               first_seq=first_seq)
        self.stats = LinkStats()
        self.tx_buffer_bytes = int(tx_buffer_bytes)
        self._transport: _Transport = (_PtyTransport(link_path, self.stats) if self.kind == "pty"
                                       else _TcpTransport(host, port, self.stats))
        rate = baud / 10.0 if baud else None
        s_up, s_down = np.random.SeedSequence([self.seed, 0x11A7]).spawn(2)
        lat = usb_latency_ms / 1000.0
        self.noise_to_board = LinkNoise(self.plan.ber, self.plan.drop, s_up)
        self.noise_to_host = LinkNoise(self.plan.ber, self.plan.drop, s_down)
        self._in = _Pipe(rate, lat, self.noise_to_board)
        self._out = _Pipe(rate, lat, self.noise_to_host)
        self.clock: VirtualClock | None = None
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._down_until_wall = 0.0
        self._down_until_us = 0
        self._url = ""
        self._stopping = False
        self.link_up_event = asyncio.Event()

    # -- public -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where a host connects now (changes after a pty comes back without link_path)."""
        return self._transport.url if not self._down else self._url

    @property
    def link_is_down(self) -> bool:
        return self._down

    async def start(self) -> str:
        """Open the transport, start the board; returns the pyserial URL or device path."""
        if self._task is not None:
            raise RuntimeError("SimServer already started")
        self._stopping = False
        self.board.warm_up()
        await self._transport.open()
        self._url = self._transport.url
        self.clock = VirtualClock(self.speed)
        self._task = asyncio.create_task(self._run(), name="sim-board")
        self.link_up_event.set()
        return self._url

    async def stop(self) -> None:
        """Stop the board and remove the transport (and the link symlink).

        The loop is asked to finish (it checks every iteration) rather than cancelled: a
        cancellation racing with ``asyncio.wait_for`` inside it can be lost on Python 3.11.
        """
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("simulator loop failed")
        await self._transport.close()
        self.board.set_link(False)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until :meth:`stop` (raises if the board loop fails)."""
        if self._task is None:
            await self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    # -- loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        clock = self.clock
        assert clock is not None
        next_status = clock.wall() + 1.0
        board = self.board
        while not self._stopping:
            wall = clock.wall()
            if self._down and wall >= self._down_until_wall and clock.now_us() >= self._down_until_us:
                await self._bring_up()
            now = clock.now_us()
            if not self._down:
                self._receive(wall)
            reached = board.advance(now)
            if reached < now and not board.link_actions:
                clock.slip_to(reached)
            board.check_watchdog(wall)
            if wall >= next_status:
                next_status = max(next_status + 1.0, wall + 0.5)
                if board.link_up:
                    board.emit_status()
            self._send(wall)
            if board.link_actions:
                actions, board.link_actions = board.link_actions, []
                for act in actions:
                    await self._drop_link(act, wall)
            await asyncio.sleep(LOOP_PERIOD_S)

    def _receive(self, wall: float) -> None:
        """The host's bytes (through the link's delay and noise) into the board; the peer's state."""
        board, tr = self.board, self._transport
        data = tr.poll()
        peer = tr.has_peer
        if peer != board.link_up:
            self._in.clear()
            self._out.clear()
            board.set_link(peer)
        if data:
            self.stats.bytes_from_host += len(data)
            self._in.push(data, wall)
        inbound = self._in.pop(wall)
        if inbound:
            board.receive(inbound, wall)

    def _send(self, wall: float) -> None:
        """The board's frames into the outbound link (stream data dropped when the TX buffer is
        full), and what is due out of it to the host."""
        board, tr = self.board, self._transport
        for data, is_stream in board.take_frames():
            if is_stream and self._out.pending() + tr.backlog() > self.tx_buffer_bytes:
                self.stats.tx_frames_dropped += 1
                board.discard_frames([data])
                continue
            self._out.push(data, wall)
        if not self._down:
            out = self._out.pop(wall)
            if out:
                self.stats.bytes_to_host += len(out)
                tr.write(out)

    async def _drop_link(self, act: LinkAction, wall: float) -> None:
        assert self.clock is not None
        log.info("link down (%s) at t=%d us", act.kind, self.board.t_us)
        self.stats.link_drops += 1
        until_wall = wall + max(act.min_wall_s, LINK_MIN_DOWN_WALL_S)
        until_us = self.board.t_us + act.virtual_us
        if self._down:
            self._down_until_wall = max(self._down_until_wall, until_wall)
            self._down_until_us = max(self._down_until_us, until_us)
        else:
            self._down_until_wall, self._down_until_us = until_wall, until_us
        self._down = True  # before any await: whoever sees the link gone also sees it down
        self.link_up_event.clear()
        self.board.set_link(False)
        self._in.clear()
        self.board.discard_frames(self._out.queued())
        self._out.clear()
        await self._transport.close()

    async def _bring_up(self) -> None:
        try:
            await self._transport.open()
        except OSError as e:  # e.g. the TCP port is briefly unavailable: try again shortly
            log.warning("cannot bring the link back yet: %s", e)
            self._down_until_wall += 0.1
            return
        self._down = False
        self._url = self._transport.url
        log.info("link up at %s", self._url)
        self.link_up_event.set()
