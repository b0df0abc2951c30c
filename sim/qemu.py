"""The reference firmware on an emulated Cortex-M3: ``station sim --firmware qemu``.

Builds ``build/firmware/fw-mps2-an385.elf`` (``make firmware-arm``: the C core of firmware/ with
the HAL of firmware/arm/, which models one LED pixel in C) and runs it on
``qemu-system-arm -M mps2-an385`` with its UART0 on a TCP socket, where any pyserial host
(``socket://HOST:PORT``) talks to it as to a board on USB serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from pathlib import Path

__all__ = ["ELF", "QemuBoard", "QemuError", "build_elf"]

ROOT = Path(__file__).resolve().parent.parent
ELF = ROOT / "build" / "firmware" / "fw-mps2-an385.elf"


class QemuError(RuntimeError):
    """The emulated board cannot run (toolchain or QEMU missing, build failed): the message says."""


def build_elf() -> Path:
    """``make firmware-arm`` (does nothing when the image is up to date); returns the ELF."""
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
    if missing:
        raise QemuError(f"--firmware qemu needs {', '.join(missing)} "
                        "(scripts/bootstrap.sh --test installs gcc-arm-none-eabi and qemu-system-arm)")
    p = subprocess.run(["make", "-s", "firmware-arm"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise QemuError(f"building the ARM firmware failed:\n{p.stdout}{p.stderr}")
    return ELF


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class QemuBoard:
    """One emulated board: ``url = await board.start()``, ``await board.stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socket://{host}:{self.port}"

    async def start(self) -> str:
        elf = build_elf()
        if self.port == 0:
            self.port = _free_port(self.host)
        self.proc = await asyncio.create_subprocess_exec(
            "qemu-system-arm", "-M", "mps2-an385", "-nographic", "-monitor", "none",
            "-kernel", str(elf), "-serial", f"tcp:{self.host}:{self.port},server=on,wait=off",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):  # until QEMU listens
            if self.proc.returncode is not None:
                err = b"" if self.proc.stderr is None else await self.proc.stderr.read()
                raise QemuError(f"qemu-system-arm exited: {err.decode(errors='replace').strip()}")
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                return self.url
            await asyncio.sleep(0.05)
        await self.stop()
        raise QemuError(f"qemu-system-arm did not listen on {self.host}:{self.port}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
