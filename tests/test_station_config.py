"""Configuration: the example validates; bad files fail naming the field; env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from station.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_validates():
    cfg = load_config(ROOT / "examples" / "sim-station.toml")
    assert cfg.station.id == "sim-station-1"
    assert [p.number for _, p in cfg.all_pixels()] == list(range(1, 9))
    assert cfg.pixel(2)[1].device == "dbsa" and cfg.pixel(5)[1].device == "otac"


def test_environment_overrides_the_file(monkeypatch):
    monkeypatch.setenv("STATION_BOARD__URL", "socket://127.0.0.1:9999")
    monkeypatch.setenv("STATION_LIMITS__MAX_VOLTAGE_V", "7.5")
    cfg = load_config(ROOT / "examples" / "sim-station.toml")
    assert cfg.board.url == "socket://127.0.0.1:9999"
    assert cfg.limits.max_voltage_v == 7.5


@pytest.mark.parametrize("text, needle", [
    ("[limits]\nmax_voltage_v = -1\n", "limits.max_voltage_v"),
    ("[board]\nbaudrat = 9600\n", "board.baudrat"),
    ("[board]\nwatchdog_policy = 'explode'\n", "board.watchdog_policy"),
    ("[[substrates]]\nid = 'A'\npixels = [{number = 1}, ]\n[[substrates]]\nid = 'B'\n"
     "pixels = [{number = 1}]\n", "pixel 1"),
    ("[[substrates]]\nid = 'A'\npixels = [{number = 0}]\n", "substrates.0.pixels.0.number"),
    ("[station\nid = 1\n", "not valid TOML"),
])
def test_bad_config_names_the_field(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("STATION_BOARD__BAUDRATE", "fast")
    with pytest.raises(ConfigError, match=r"board\.baudrate"):
        load_config(None)


def test_a_pixel_missing_from_the_configured_substrates_is_an_error_naming_it():
    """Every figure scales with the pixel's area: a configuration that lists substrates but not
    the pixel asked for refuses it (naming it and the configured ones) instead of assuming
    4 mm²; a configuration without substrates (ad-hoc CLI use) still gets the default."""
    import pytest

    from station.config import ConfigError, load_config

    cfg = load_config(None, substrates=[{"id": "S1", "pixels": [
        {"number": 1, "area_mm2": 2.5}, {"number": 3, "area_mm2": 2.5}]}])
    assert cfg.pixel(3)[1].area_mm2 == 2.5
    with pytest.raises(ConfigError, match=r"pixel 2 is not in .*configured pixels: 1, 3"):
        cfg.pixel(2)
    assert load_config(None).pixel(2)[1].area_mm2 == 4.0
