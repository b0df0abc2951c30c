"""Shared helpers for the station tests: a simulator on a real socket or pty + a station."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from sim.server import SimServer
from station.config import StationConfig, load_config
from station.procedures import StationContext
from station.session import open_station


def station_config(tmp_path: Path, presets: list[str], **extra: Any) -> StationConfig:
    return load_config(None, station={"id": "test"}, store={"path": str(tmp_path / "station.db"),
                                                           "batch_ms": 20.0},
                       substrates=[{"id": "S1", "pixels": [
                           {"number": i + 1, "label": f"P{i + 1}", "area_mm2": 4.0, "device": p}
                           for i, p in enumerate(presets)]}], **extra)


@contextlib.asynccontextmanager
async def sim_station(tmp_path: Path, presets: list[str], *, listen: str = "tcp://127.0.0.1:0",
                      speed: float = 1e5, seed: int = 3, faults: str | None = None,
                      link_path: str | None = None, **sim_kw: Any
                      ) -> AsyncIterator[tuple[SimServer, StationContext]]:
    server = SimServer(presets, listen=listen, speed=speed, seed=seed, faults=faults,
                       link_path=link_path, **sim_kw)
    url = await server.start()
    cfg = station_config(tmp_path, presets)
    try:
        async with open_station(cfg, url=link_path or url) as ctx:
            yield server, ctx
    finally:
        await server.stop()


def stored_seqs(ctx: StationContext, table: str) -> np.ndarray:
    ctx.acq.flush()
    return np.array([r[0] for r in ctx.store.db.execute(f"SELECT seq FROM {table} ORDER BY seq")],
                    dtype=np.int64)


def assert_complete(seqs: np.ndarray, produced: int, first: int = 0) -> None:
    """Every record the board produced is stored exactly once (UNIQUE seq makes dups impossible
    in the table, so also check against the board's own count)."""
    assert len(seqs) == produced, f"stored {len(seqs)} records, board produced {produced}"
    assert len(np.unique(seqs)) == len(seqs)
    if produced:
        assert seqs[0] == first and seqs[-1] == first + produced - 1
