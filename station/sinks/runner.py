"""Start the enabled sinks as tasks beside the measurement, and report their health.

The daemon (``station.daemon``) does::

    runner, stop = SinkRunner(config, config.store.path), asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    ...                       # measure; after each Store.flush(): runner.notify()
    stop.set(); await task    # on shutdown (the MQTT sink publishes status "offline")

Each sink reads the store through its own SQLite connection and never writes to the
measurement tables, so a slow or dead broker/database only makes it fall behind its cursor.
``runner.health()`` is a cheap snapshot for the daemon's status output; the MQTT sink also
publishes it (retained) on ``{prefix}/{station}/health``. There is no module-level runner:
whoever starts one holds it.

``python -m station.sinks.runner CONFIG.toml [--store PATH]`` runs the sinks on their own (a
separate process next to the daemon, or to drain a store after a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from station.config import ConfigError, StationConfig, load_config
from station.sinks.cursor import Sink, publish_event
from station.sinks.influx import InfluxSink
from station.sinks.mqtt import MqttSink
from station.store.sinks import open_connection

log = logging.getLogger(__name__)


class SinkRunner:
    """The enabled sinks of one station; ``await run(stop)`` drives them until ``stop``."""

    def __init__(self, config: StationConfig, store_path: str | Path) -> None:
        self.config = config
        self.store_path = Path(store_path)
        self.sinks: list[Sink] = []
        if config.mqtt.enabled:
            self.sinks.append(MqttSink(self.store_path, config.mqtt, config.station.id,
                                       health_source=self.health))
        if config.influxdb.enabled:
            self.sinks.append(InfluxSink(self.store_path, config.influxdb, config.station.id))

    def health(self) -> dict[str, Any]:
        """``{sink name: {state, connected, rows_behind, seconds_behind, tables, ...}}``."""
        return {s.name: s.health() for s in self.sinks}

    def notify(self) -> None:
        """New rows or events are in the store: wake every sink now instead of at its poll."""
        for s in self.sinks:
            s.notify()

    def publish_event(self, kind: str, payload: dict[str, Any]) -> int:
        """Persist an event/alert (see :func:`station.sinks.cursor.publish_event`) in the
        store and wake the sinks. Blocking (one small SQLite transaction)."""
        db = open_connection(self.store_path)
        try:
            eid = publish_event(db, kind, payload)
        finally:
            db.close()
        self.notify()
        return eid

    async def run(self, stop: asyncio.Event) -> None:
        if not self.sinks:
            await stop.wait()
            return
        tasks = [asyncio.create_task(s.run(stop), name=f"sink-{s.name}") for s in self.sinks]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_sinks(config: StationConfig, store_path: str | Path, stop_event: asyncio.Event,
                    *, runner: SinkRunner | None = None) -> None:
    """Run the sinks enabled in ``config`` on the store at ``store_path`` until ``stop_event``
    (or those of ``runner``: pass one to ask it for :meth:`SinkRunner.health` or to
    :meth:`SinkRunner.notify` it while it runs).

    Never raises for a broker or database failure (each sink retries with backoff); returns
    once every sink has stopped.
    """
    await (runner or SinkRunner(config, store_path)).run(stop_event)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m station.sinks.runner",
                                 description="Run the station's MQTT/InfluxDB sinks on a store.")
    ap.add_argument("config", nargs="?", help="station TOML (environment overrides apply)")
    ap.add_argument("--store", help="store path (default: store.path from the configuration)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_sinks(cfg, args.store or cfg.store.path, stop)

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
