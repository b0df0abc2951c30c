"""What ``station run`` says when it starts: the configuration it read, the board that answered,
where its data go, and each unfinished job it takes up again. Printed on stderr (the journal,
under systemd), one ``station run: ...`` line each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from station.config import StationConfig
    from station.jobs import JobManager
    from station.link import BoardLink
    from station.procedures import StationContext


def _say(line: str) -> None:
    print(f"station run: {line}", file=sys.stderr, flush=True)


def announce_config(path: Path | None, how: str, cfg: StationConfig) -> None:
    where = f"{path} ({how})" if path is not None else how
    _say(f"configuration {where}; station id {cfg.station.id}")


def _board_line(link: BoardLink) -> str:
    b, caps = link.board, link.caps
    assert b is not None  # said only once a board answered
    line = (f"board URL {link.url}: board {b.serial_number} (firmware {b.firmware_version}, "
            f"boot id {b.boot_id})")
    if caps is not None:
        line += (f": {caps.n_substrates * caps.pixels_per_substrate} pixels, "
                 f"{caps.n_aging_channels} aging channels")
    return line


def announce_started(cfg: StationConfig, ctx: StationContext, jm: JobManager) -> None:
    link = ctx.link
    if link.is_up and link.board is not None:
        _say(_board_line(link))
    else:
        # the daemon runs without its board; say who answers when it does (once)
        _say(f"board URL {link.url}: connecting (no board has answered yet)")
        said = False

        def on_link(ev: Any) -> None:
            nonlocal said
            if not said and getattr(ev, "up", False) and link.board is not None:
                said = True
                _say(_board_line(link))

        link.add_listener(on_link)
    _say(f"MQTT broker {cfg.mqtt.url} (topics ledstation/{cfg.station.id}/...)"
         if cfg.mqtt.enabled else "MQTT off (mqtt.enabled = false): no remote control, no live data")
    i = cfg.influxdb
    _say(f"InfluxDB {i.url}, org {i.org}, bucket {i.bucket}" if i.enabled
         else "InfluxDB off (influxdb.enabled = false)")
    _say(f"store {Path(cfg.store.path).resolve()}")
    resumed = {job for job, _px in getattr(jm, "_resumed", {})}
    n = 0
    for job in jm.list():
        if job["state"] not in ("queued", "running", "paused"):
            continue
        n += 1
        runs = [f"aging run {r['id']} of pixel {r['pixel']}" for r in job["runs"]
                if r["kind"] == "aging" and r["status"] in ("running", "paused")]
        what = ("resuming " + ", ".join(runs)) if job["id"] in resumed and runs else job["state"]
        _say(f"job {job['id']} ({job['name']}, {job['kind']}): {what}")
    if not n:
        _say("no unfinished job; waiting for `station jobs submit`" if cfg.mqtt.enabled
             else "no unfinished job")
