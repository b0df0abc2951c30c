"""What ``station run`` says when it starts: the configuration it read, the board that answered,
where its data go, and each unfinished job it takes up again. Printed on stderr (the journal,
under systemd), one ``station run: ...`` line each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _say(line: str) -> None:
    print(f"station run: {line}", file=sys.stderr, flush=True)


def announce_config(path: Path | None, how: str, cfg: Any) -> None:
    where = f"{path} ({how})" if path is not None else how
    _say(f"configuration {where}; station id {cfg.station.id}")


def announce_started(cfg: Any, ctx: Any, jm: Any) -> None:
    link = ctx.link
    b, caps = link.board, link.caps
    board = (f"board {b.serial_number} (firmware {b.firmware_version}, boot id {b.boot_id})"
             if b is not None else "no board answered yet")
    if caps is not None:
        board += (f": {caps.n_substrates * caps.pixels_per_substrate} pixels, "
                  f"{caps.n_aging_channels} aging channels")
    _say(f"board URL {link.url}: {board}")
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
