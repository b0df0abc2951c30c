"""Station configuration: one TOML file validated by pydantic, environment overrides on top.

Any key can be overridden from the environment as ``STATION_<SECTION>__<KEY>``, e.g.
``STATION_BOARD__URL=socket://127.0.0.1:7000`` or ``STATION_LIMITS__MAX_VOLTAGE_V=8``.
A bad file fails with :class:`ConfigError` naming the field and the reason, before anything is
driven.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StationSection(_Strict):
    id: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""


class BoardSection(_Strict):
    url: str = Field("socket://127.0.0.1:7000", description="pyserial URL or device path")
    baudrate: int = Field(921600, gt=0)
    request_timeout_s: float = Field(0.5, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)
    watchdog_s: float = Field(10.0, ge=0, description="host silence before the board acts; 0 off")
    watchdog_policy: Literal["keep_aging", "go_safe"] = "keep_aging"


class PixelConfig(_Strict):
    number: int = Field(..., ge=1, le=0xFFFF, description="board pixel number (1-based, u16 on the wire)")
    label: str = ""
    area_mm2: float = Field(4.0, gt=0, le=10000)
    device: str = Field("", description="device name or simulator preset")


class SubstrateConfig(_Strict):
    id: str = Field(..., min_length=1)
    pixels: list[PixelConfig] = Field(default_factory=list)


class CalibrationSection(_Strict):
    responsivity_file: str | None = Field(
        None, description="CSV wavelength_nm,a_per_w; default: the built-in Si photodiode table")
    photodiode_radius_mm: float = Field(5.64, gt=0)
    photodiode_distance_mm: float = Field(10.0, gt=0)
    geometry_factor: float | None = Field(
        None, gt=0, le=1, description="measured fraction of forward light on the photodiode; "
        "overrides the on-axis Lambertian r^2/(r^2+d^2)")


class LimitsSection(_Strict):
    max_current_density_ma_cm2: float = Field(1000.0, gt=0)
    max_voltage_v: float = Field(10.0, gt=0)
    max_aging_current_density_ma_cm2: float = Field(500.0, gt=0)


class StoreSection(_Strict):
    path: str = "station.db"
    batch_ms: float = Field(25.0, gt=0, description="longest a sample waits before commit")
    backlog_alert_rows: int = Field(
        10000, ge=1, description="the daemon raises alert/sink_backlog once when a telemetry "
        "sink falls more than this many rows behind the store, and clears it once when the "
        "backlog is back to half of it or less")


class MqttSection(_Strict):
    enabled: bool = False
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    control_username: str | None = Field(
        None, description="the command server's own broker user (default: username). A broker "
        "that ties client ids to users (use_username_as_clientid, deploy/mosquitto) allows one "
        "connection per user: give the command server its own, e.g. <station id>-control")
    control_password: str | None = Field(None, description="its password (default: password)")
    ca_file: str | None = None
    topic_prefix: str = "ledstation"
    aging_publish_hz: float = Field(1.0, gt=0)
    # -- telemetry sink (station/sinks/mqtt.py, docs/mqtt.md) ------------------------------------
    client_id: str | None = Field(None, description="default: ledstation-<station id>")
    tls: bool | None = Field(None, description="default: on for mqtts:// or when ca_file is set")
    client_cert: str | None = Field(None, description="PEM client certificate for mutual TLS")
    client_key: str | None = Field(None, description="PEM key of client_cert")
    keepalive_s: int = Field(30, ge=5, le=3600)
    window: int = Field(200, ge=1, le=10000, description="QoS 1 publishes awaiting PUBACK at once")
    batch_size: int = Field(1000, ge=1, le=100000, description="rows read from the store at once")
    health_interval_s: float = Field(10.0, gt=0, description="period of the retained health topic")
    poll_s: float = Field(0.2, gt=0, description="how often the sink looks for new rows")
    retry_min_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(5.0, gt=0, description="backoff cap: the sink and the command "
                               "server are back at most this long after the broker")
    timeout_s: float = Field(10.0, gt=0, description="connect and PUBACK timeout")
    # -- remote control (station/control.py, docs/mqtt.md "Remote control") ---------------------
    command_max_age_s: float = Field(
        60.0, gt=0, description="refuse a command whose sent_at is older than this (or as far "
        "in the future)")
    command_dedup_size: int = Field(
        1000, ge=1, le=1_000_000, description="request ids remembered with their replies")
    command_session_expiry_s: int = Field(
        600, ge=0, le=86400, description="how long the broker keeps the command subscription "
        "(and queues commands) while the station is away; 0: no persistent session")

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must be a non-empty MQTT topic without wildcards or "
                             "leading/trailing '/'")
        return v

    @model_validator(mode="after")
    def _sink_checks(self) -> MqttSection:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("mqtt.retry_max_s must be >= mqtt.retry_min_s")
        if (self.client_key is not None) and self.client_cert is None:
            raise ValueError("mqtt.client_key needs mqtt.client_cert")
        if not self.url.startswith(("mqtt://", "mqtts://", "tcp://", "ssl://")):
            raise ValueError("mqtt.url must look like mqtt://host:port or mqtts://host:port")
        return self


class InfluxSection(_Strict):
    enabled: bool = False
    url: str = "http://127.0.0.1:8086"
    token: str = ""
    org: str = "lab"
    bucket: str = "ledstation"
    batch_size: int = Field(5000, ge=1)
    # -- telemetry sink (station/sinks/influx.py) -------------------------------------------------
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one write")
    poll_s: float = Field(0.5, gt=0, description=(
        "how often the sink looks for new rows; a store commit wakes it sooner, but at most "
        "4 times a second"))
    retry_min_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(5.0, gt=0, description="backoff cap: the sink is back at most "
                               "this long after the database")
    verify_tls: bool = True
    ca_file: str | None = None
    revisions: Literal["overwrite", "live_fields"] = Field("overwrite", description=(
        "how derived values recomputed at the end of a run reach the database: 'overwrite' "
        "rewrites the same fields of the same points (InfluxDB keeps the last write); "
        "'live_fields' writes values computed live as live_<field> and the final values once "
        "under the field's own name (for databases that do not overwrite a point written "
        "twice, e.g. VictoriaMetrics)"))

    @model_validator(mode="after")
    def _sink_checks(self) -> InfluxSection:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("influxdb.retry_max_s must be >= influxdb.retry_min_s")
        return self


class WebKey(_Strict):
    """One API key of the web server (``[[web.keys]]``): give the key itself (``key``, at least
    16 characters) or only its SHA-256 in hex (``key_sha256``, so the file holds no secret)."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$",
                      description="who holds the key: recorded with every command it sends")
    role: Literal["viewer", "operator"] = Field(
        ..., description="viewer: read the status, jobs, runs and live data; operator: also "
        "submit, stop, pause and resume jobs")
    key: SecretStr | None = Field(None, description="the key (secret; masked by config show)")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                                   description="SHA-256 of the key, hex")

    @model_validator(mode="after")
    def _one_key(self) -> WebKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"web key {self.name!r}: give exactly one of key and key_sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError(f"web key {self.name!r}: a key needs at least 16 characters "
                             "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        return self

    def digest(self) -> str:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()
        assert self.key_sha256 is not None
        return self.key_sha256.lower()


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"localhost:8080"`` -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", listen)
    if m is None:
        raise ValueError(f"listen must be HOST:PORT or [IPV6]:PORT, got {listen!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port {port} is out of range 0..65535")
    return host, port


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network interface


class WebSection(_Strict):
    """The daemon's web page and HTTP API (station/web/, docs/web.md)."""

    enabled: bool | None = Field(
        None, description="default: on when the configuration has a [web] section (or a "
        "STATION_WEB__* variable), off otherwise")
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT to serve on; port 0 picks a "
                        "free one. Serving on a non-loopback address requires [[web.keys]]")
    open_viewing: Literal["loopback", "everyone", "nobody"] = Field(
        "loopback", description="who may view without a key: clients on the loopback "
        "interface (default), everyone who can reach the port, or nobody. Steering always "
        "needs an operator key")
    keys: list[WebKey] = Field(default_factory=list)
    tls_cert: str | None = Field(None, description="PEM certificate (chain): serve HTTPS")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")
    status_interval_s: float = Field(1.0, gt=0, le=60, description="period of the status push")
    live_max_rows: int = Field(
        500, ge=10, le=100000, description="most rows of one run in one push message (more are "
        "decimated evenly; the page re-reads the run's data when it needs all)")
    max_viewers: int = Field(100, ge=1, le=10000, description="open push channels at most")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_listen(v)
        return v

    @model_validator(mode="after")
    def _checks(self) -> WebSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("web.tls_cert and web.tls_key go together")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("web.keys: two keys have the same name")
        digests = [k.digest() for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("web.keys: the same key appears twice")
        host, _ = split_listen(self.listen)
        if self.enabled is not False and not is_loopback_host(host) and not self.keys:
            raise ValueError(
                f"web.listen = {self.listen!r} serves on a network interface, which requires "
                "authentication: add [[web.keys]] (name, role, key or key_sha256), or listen on "
                "127.0.0.1")
        return self


class StationConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STATION_", env_nested_delimiter="__",
                                      extra="forbid")

    station: StationSection = Field(default_factory=StationSection)
    board: BoardSection = Field(default_factory=BoardSection)
    substrates: list[SubstrateConfig] = Field(default_factory=list)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    store: StoreSection = Field(default_factory=StoreSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    influxdb: InfluxSection = Field(default_factory=InfluxSection)
    web: WebSection = Field(default_factory=WebSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file
        return env_settings, init_settings

    @field_validator("substrates")
    @classmethod
    def _unique_pixels(cls, subs: list[SubstrateConfig]) -> list[SubstrateConfig]:
        seen: dict[int, str] = {}
        ids: set[str] = set()
        for s in subs:
            if s.id in ids:
                raise ValueError(f"substrate id {s.id!r} appears twice")
            ids.add(s.id)
            for p in s.pixels:
                if p.number in seen:
                    raise ValueError(f"pixel {p.number} is in substrate {seen[p.number]!r} "
                                     f"and {s.id!r}")
                seen[p.number] = s.id
        return subs

    @model_validator(mode="after")
    def _backoff(self) -> StationConfig:
        if self.board.reconnect_max_s < self.board.reconnect_min_s:
            raise ValueError("board.reconnect_max_s must be >= board.reconnect_min_s")
        if self.web.enabled is None:
            # a [web] section (or a STATION_WEB__* variable) switches the web server on
            self.web.enabled = "web" in self.model_fields_set
        return self

    def pixel(self, number: int) -> tuple[SubstrateConfig | None, PixelConfig]:
        """The configured pixel. A configuration without substrates (ad-hoc use of the CLI)
        gives a default 4 mm² pixel; one that lists substrates but not this pixel is an error
        naming it (its area would otherwise be guessed, and every figure scales with it)."""
        for s in self.substrates:
            for p in s.pixels:
                if p.number == number:
                    return s, p
        if self.substrates:
            known = sorted(p.number for _s, p in self.all_pixels())
            raise ConfigError(f"pixel {number} is not in the configuration's [[substrates]] "
                              f"(configured pixels: {', '.join(map(str, known))}); add it with "
                              f"its area_mm2")
        return None, PixelConfig(number=number, label=f"px{number}")

    def all_pixels(self) -> list[tuple[SubstrateConfig, PixelConfig]]:
        return [(s, p) for s in self.substrates for p in s.pixels]


def _format_errors(e: ValidationError, where: str) -> str:
    lines = [f"invalid configuration {where}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see examples/sim-station.toml)"
        lines.append(f"  {loc}: {msg}" + (f" (got {json.dumps(err['input'], default=str)[:60]})"
                                          if err["type"] != "extra_forbidden"
                                          and not isinstance(err.get("input"), dict) else ""))
    return "\n".join(lines)


CONFIG_ENV = "STATION_CONFIG"
CONFIG_NAME = "station.toml"


def config_search_path() -> list[Path]:
    """Where a command looks for its configuration when none is given, in order:
    ``./station.toml``, the user's (``$XDG_CONFIG_HOME`` or ``~/.config``)
    ``led-station/station.toml``, the system's ``/etc/led-station/station.toml``."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path.cwd() / CONFIG_NAME, Path(xdg) / "led-station" / CONFIG_NAME,
            Path("/etc/led-station") / CONFIG_NAME]


def resolve_config_path(path: str | Path | None) -> tuple[Path | None, str]:
    """The configuration file a command uses, and how it was chosen: ``--config`` when given,
    else ``$STATION_CONFIG``, else the first of :func:`config_search_path` that exists, else
    none (the built-in defaults; ``STATION_<SECTION>__<KEY>`` variables still apply)."""
    if path is not None:
        return Path(path), "--config"
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env), f"${CONFIG_ENV}"
    for candidate in config_search_path():
        if candidate.is_file():
            return candidate, "found"
    return None, "built-in defaults (no --config, no $STATION_CONFIG, no " + ", ".join(
        str(c) for c in config_search_path()) + ")"


def load_config(path: str | Path | None = None, **overrides: Any) -> StationConfig:
    """Read and validate a TOML configuration; environment variables override it."""
    data: dict[str, Any] = {}
    where = "(defaults and environment)"
    if path is not None:
        p = Path(path)
        where = f"in {p}"
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"configuration file {p} is not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {p}: {e}") from None
    data.update(overrides)
    try:
        return StationConfig(**data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None
