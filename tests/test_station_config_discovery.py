"""Every command finds the same configuration: --config, else $STATION_CONFIG, else
./station.toml, else ~/.config/led-station/station.toml, else /etc/led-station/station.toml
(issue 14: `station jobs` and `status` without --config looked for station-1 while the daemon ran
as sim-station-1). `station config show` says which file and which station id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STATION = [sys.executable, "-m", "station"]


def show(cwd: Path, env: dict[str, str], *extra: str) -> dict[str, object]:
    out = subprocess.run([*STATION, "config", "show", "--json", *extra], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def write(path: Path, station_id: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[station]\nid = "{station_id}"\n[mqtt]\npassword = "hunter2"\n')
    return path


def test_the_search_order_and_what_config_show_reports(tmp_path: Path, clean_env: dict[str, str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    doc = show(work, clean_env)
    assert doc["config_file"] is None and doc["station_id"] == "station-1"
    user = write(tmp_path / "xdg" / "led-station" / "station.toml", "from-user-dir")
    doc = show(work, clean_env)
    assert doc["config_file"] == str(user) and doc["station_id"] == "from-user-dir"
    here = write(work / "station.toml", "from-cwd")
    doc = show(work, clean_env)
    assert doc["config_file"] == str(here) and doc["station_id"] == "from-cwd"
    env_file = write(tmp_path / "env.toml", "from-env")
    doc = show(work, clean_env | {"STATION_CONFIG": str(env_file)})
    assert doc["station_id"] == "from-env" and doc["chosen_by"] == "$STATION_CONFIG"
    given = write(tmp_path / "given.toml", "from-option")
    doc = show(work, clean_env | {"STATION_CONFIG": str(env_file)}, "--config", str(given))
    assert doc["station_id"] == "from-option" and doc["chosen_by"] == "--config"
    # an override variable still applies on top of the file; secrets are not printed
    doc = show(work, clean_env | {"STATION_STATION__ID": "overridden"})
    assert doc["station_id"] == "overridden"
    cfg = doc["config"]
    assert isinstance(cfg, dict) and cfg["mqtt"]["password"] == "***"


def test_status_uses_the_discovered_configuration(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """`station status` without --config uses ./station.toml: it reaches for that file's broker
    (a closed port here, so it says it cannot connect to exactly that URL)."""
    work = tmp_path / "work"
    write(work / "station.toml", "lab-7")
    with (work / "station.toml").open("a") as f:
        f.write('url = "mqtt://127.0.0.1:9"\n')  # [mqtt] section: a closed port
    out = subprocess.run([*STATION, "status", "--timeout", "2"], cwd=work, env=clean_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "mqtt://127.0.0.1:9" in out.stderr
