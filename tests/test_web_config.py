"""The [web] section: off unless configured, STATION_WEB__LISTEN, keys, and no network listening
without authentication."""

from __future__ import annotations

import hashlib

import pytest

from station.config import ConfigError, is_loopback_host, load_config, split_listen

KEY = "k" * 24


def test_web_is_off_without_a_section_and_on_with_one(tmp_path, monkeypatch):
    monkeypatch.delenv("STATION_WEB__LISTEN", raising=False)
    assert load_config(None).web.enabled is False
    f = tmp_path / "s.toml"
    f.write_text("[web]\n")
    cfg = load_config(f)
    assert cfg.web.enabled is True and cfg.web.listen == "127.0.0.1:8080"
    f.write_text("[web]\nenabled = false\nlisten = '127.0.0.1:9'\n")
    assert load_config(f).web.enabled is False


def test_the_environment_sets_the_listen_address(monkeypatch):
    monkeypatch.setenv("STATION_WEB__LISTEN", "127.0.0.1:18080")
    cfg = load_config(None)
    assert cfg.web.enabled is True and cfg.web.listen == "127.0.0.1:18080"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.168.1.5:80", "[::]:8080", "lab-pc:8080"])
def test_a_network_address_without_keys_is_refused(monkeypatch, listen):
    monkeypatch.setenv("STATION_WEB__LISTEN", listen)
    with pytest.raises(ConfigError, match="requires authentication"):
        load_config(None)


def test_a_network_address_with_keys_is_accepted_and_keys_are_masked():
    digest = hashlib.sha256(b"another-long-key-123").hexdigest()
    cfg = load_config(None, web={"listen": "0.0.0.0:8443", "keys": [
        {"name": "alice", "role": "operator", "key": KEY},
        {"name": "wall", "role": "viewer", "key_sha256": digest}]})
    assert [k.digest() for k in cfg.web.keys] == [hashlib.sha256(KEY.encode()).hexdigest(), digest]
    assert KEY not in str(cfg.model_dump(mode="json"))


@pytest.mark.parametrize("web, needle", [
    ({"keys": [{"name": "a", "role": "operator", "key": "short"}]}, "at least 16"),
    ({"keys": [{"name": "a", "role": "operator"}]}, "exactly one of key"),
    ({"keys": [{"name": "a", "role": "admin", "key": KEY}]}, "role"),
    ({"keys": [{"name": "a", "role": "viewer", "key": KEY},
               {"name": "b", "role": "operator", "key": KEY}]}, "same key"),
    ({"tls_cert": "/x.pem"}, "go together"),
    ({"listen": "8080"}, "HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "out of range"),
    ({"open_viewing": "all"}, "open_viewing"),
])
def test_bad_web_settings_are_refused_with_the_reason(web, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, web=web)


def test_listen_parsing():
    assert split_listen("[::1]:8080") == ("::1", 8080)
    assert split_listen("localhost:0") == ("localhost", 0)
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.org")
