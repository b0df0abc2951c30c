"""``station config show``: which configuration file every command would use, the station id,
and the configuration in effect (the file with the environment's overrides applied)."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  station config show                         # what `station status`, `jobs`, `run`... would use
  station config show --config examples/sim-station.toml --json
  STATION_STATION__ID=lab-2 station config show

The configuration is looked for in this order: --config FILE, $STATION_CONFIG, ./station.toml,
~/.config/led-station/station.toml ($XDG_CONFIG_HOME), /etc/led-station/station.toml; without
any, the built-in defaults. STATION_<SECTION>__<KEY> variables override any of it.
"""


SECRET_KEYS = ("password", "token")


def _masked(cfg_dump: dict[str, object]) -> dict[str, object]:
    """The configuration with secrets (MQTT password, InfluxDB token) shown as set or not."""
    out: dict[str, object] = {}
    for section, values in cfg_dump.items():
        if isinstance(values, dict):
            out[section] = {k: ("***" if v else v) if k in SECRET_KEYS else v for k, v in values.items()}
        else:
            out[section] = values
    return out


def _show(args: argparse.Namespace) -> int:
    from station.config import ConfigError, load_config, resolve_config_path

    path, how = resolve_config_path(args.config)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"station config: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"config_file": str(path) if path else None, "chosen_by": how,
                          "station_id": cfg.station.id,
                          "config": _masked(cfg.model_dump(mode="json"))},
                         indent=2))
        return 0
    print(f"config file: {path if path else '(none)'}  [{how}]")
    print(f"station id:  {cfg.station.id}")
    for section, values in _masked(cfg.model_dump(mode="json")).items():
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"{section}.{key} = {json.dumps(value)}")
        else:
            print(f"{section} = {json.dumps(values)}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("config", help="show the configuration and station id in use",
                              description="Show which configuration file the station's commands use, "
                              "the station id, and every setting in effect.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the configuration in effect", epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("--config", metavar="FILE", help="this file instead of the search order below")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)
