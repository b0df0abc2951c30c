"""The daemon's HTTP API, curl-style, against `station run` on `station sim`: status as JSON,
commands refused without an operator key and changing nothing, submit/stop with one through the
same path as the MQTT commands (validation, refusals, audit), the push channel, the OpenAPI
document, run data, exports and reports."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator

import pytest

from .services import free_port
from .webkit import (
    AGING_JOB,
    OPERATOR_KEY,
    ROOT,
    SWEEP_JOB,
    VIEWER_KEY,
    Station,
    config_text,
    http,
    running_station,
    wait_for,
)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    with running_station(tmp_path_factory.mktemp("web")) as st:
        yield st


def _jobs(st: Station) -> list[dict]:
    code, body, _ = http("GET", st.url("/api/v1/jobs"))
    assert code == 200
    return body["jobs"]


def test_status_is_the_stations_status_as_json(station):
    code, st, headers = http("GET", station.url("/api/v1/status"))
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    assert st["station"] == "webtest" and st["link_up"] is True
    assert st["board"]["serial"].startswith("SIM-")
    assert st["interlock_closed"] is True and isinstance(st["faults_names"], list)
    assert len(st["temperatures_c"]) >= 1 and st["link_since"] > 0
    assert [p["pixel"] for p in st["pixels"]] == [1, 2, 3, 4]
    assert {p["device"] for p in st["pixels"]} == {"dbsa", "otac", "oled"}


def test_commands_without_an_operator_key_are_refused_and_change_nothing(station):
    before = _jobs(station)
    code, body, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, content_type="application/toml")
    assert code == 401 and body["error"]["code"] == "unauthorized"
    code, body, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key=VIEWER_KEY)
    assert code == 403 and "viewer" in body["error"]["message"]
    code, body, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key="not-a-key-at-all-000")
    assert code == 401 and body["error"]["message"] == "unknown API key"
    code, body, _ = http("POST", station.url("/api/v1/jobs/j1/stop"))
    assert code == 401
    assert _jobs(station) == before


def test_bad_jobs_are_refused_with_the_reason_like_over_mqtt(station):
    before = _jobs(station)
    code, body, _ = http("POST", station.url("/api/v1/jobs"),
                         'kind = "sweep"\npixels = [1]\n[sweep]\nstop_v = 50\n', key=OPERATOR_KEY)
    assert code == 422 and body["ok"] is False and body["error"]["code"] == "limit"
    assert "max_voltage_v" in body["error"]["message"] and body["verb"] == "submit"
    code, body, _ = http("POST", station.url("/api/v1/jobs"), "kind = [", key=OPERATOR_KEY)
    assert code == 400 and "not valid TOML" in body["error"]["message"]
    code, body, _ = http("POST", station.url("/api/v1/jobs"), '{"kind": "party", "pixels": [1]}',
                         key=OPERATOR_KEY, content_type="application/json")
    assert code == 400 and body["error"]["code"] == "bad_request" and "kind" in body["error"]["message"]
    code, body, _ = http("POST", station.url("/api/v1/jobs/no-such-job/pause"), key=OPERATOR_KEY)
    assert code == 404 and body["error"]["code"] == "not_found"
    assert _jobs(station) == before


def test_an_operator_submits_and_stops_a_job_and_the_audit_trail_names_them(station):
    code, reply, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key=OPERATOR_KEY,
                          content_type="application/toml")
    assert code == 201 and reply["ok"] is True and reply["type"] == "reply"
    job = reply["result"]
    assert job["client"].startswith("alice (web, 127.0.0.1")
    wait_for(lambda: http("GET", station.url("/api/v1/status"))[1]["aging_channels_active"],
             "the aging channels to switch on")
    wait_for(lambda: all(p["state"] == "aging" for p in
                         http("GET", station.url("/api/v1/pixels"))[1]["pixels"][2:]),
             "pixels 3 and 4 aging")
    code, reply, _ = http("POST", station.url(f"/api/v1/jobs/{job['id']}/stop"), key=OPERATOR_KEY)
    assert code == 200 and reply["ok"] is True and reply["result"]["state"] == "stopped"
    wait_for(lambda: http("GET", station.url("/api/v1/status"))[1]["aging_channels_active"] in (0, []),
             "the outputs off")
    code, reply, _ = http("POST", station.url(f"/api/v1/jobs/{job['id']}/stop"), key=OPERATOR_KEY)
    assert code == 409 and reply["error"]["code"] == "conflict"
    # the audit trail: the job manager's events in the store name the client, and the log
    con = sqlite3.connect(station.db)
    events = [(k, json.loads(p)) for k, p in con.execute("SELECT kind, payload FROM events")]
    mine = [(k, p) for k, p in events if p.get("job") == job["id"]]
    assert ("job/submitted", "alice") in [(k, p.get("client", "").split(" ")[0]) for k, p in mine]
    assert ("job/stopped", "alice") in [(k, p.get("client", "").split(" ")[0]) for k, p in mine]
    log = station.log.read_text()
    assert "control: stop request_id=" in log and "from alice (web, 127.0.0.1" in log
    assert "web: refused submit from anonymous (web, 127.0.0.1" in log


def test_the_push_channel_streams_new_samples(station):
    code, reply, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key=OPERATOR_KEY)
    assert code == 201
    job = reply["result"]
    req = urllib.request.Request(station.url("/api/v1/live"), headers={"X-Api-Key": VIEWER_KEY})
    seen: dict[str, int] = {}
    samples = 0
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        event = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                msg = json.loads(line[6:])
                seen[event] = seen.get(event, 0) + 1
                if event == "aging":
                    for run in msg["runs"].values():
                        assert len(run["seq"]) == len(run["t_s"]) == len(run["l_rel"])
                        assert run["pixel"] in (3, 4)
                        samples += len(run["seq"])
                if samples >= 20 and seen.get("status", 0) >= 2:
                    break
    assert seen["hello"] == 1 and seen["aging"] >= 1
    http("POST", station.url(f"/api/v1/jobs/{job['id']}/stop"), key=OPERATOR_KEY)


def test_run_data_export_and_report_of_a_sweep(station):
    code, reply, _ = http("POST", station.url("/api/v1/jobs"), SWEEP_JOB, key=OPERATOR_KEY)
    assert code == 201
    job_id = reply["result"]["id"]
    wait_for(lambda: http("GET", station.url(f"/api/v1/jobs/{job_id}"))[1]["state"] == "completed",
             "the sweep to complete")
    code, body, _ = http("GET", station.url(f"/api/v1/runs?job={job_id}"))
    (run,) = body["runs"]
    code, data, _ = http("GET", station.url(f"/api/v1/runs/{run['id']}/data"))
    assert code == 200 and data["kind"] == "sweep" and data["n"] == 51
    assert data["summary"]["von_v"] == run["summary"]["von_v"]
    assert data["table_s1_seed"]["device"] == "DBSA-PeNCs"
    assert data["spectra"] and len(data["spectra"][0]["wavelength_nm"]) > 100
    code, raw, headers = http("GET", station.url(f"/api/v1/runs/{run['id']}/export"))
    assert code == 200 and headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert sorted(n.split("/")[-1] for n in names) == ["points.csv", "run.json"]
    code, raw, headers = http("GET", station.url(f"/api/v1/runs/{run['id']}/report"))
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"Table S1" in raw or b"DBSA-PeNCs" in raw
    code, body, _ = http("GET", station.url("/api/v1/runs/999999"))
    assert code == 404 and body["error"]["code"] == "not_found"


def test_the_openapi_document_lists_every_route(station):
    code, doc, _ = http("GET", station.url("/api/v1/openapi.json"))
    assert code == 200 and doc["openapi"].startswith("3.1")
    for path in ("/status", "/jobs", "/jobs/{job_id}/stop", "/jobs/{job_id}/pause",
                 "/jobs/{job_id}/resume", "/runs", "/runs/{run_id}", "/runs/{run_id}/data",
                 "/runs/{run_id}/export", "/live"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-Api-Key"


def test_the_page_and_its_scripts_are_served(station):
    code, page, _ = http("GET", station.url("/"))
    assert code == 200 and b"<title>LED test station</title>" in page
    for asset in ("/static/app.js", "/static/style.css", "/static/vendor/uPlot.iife.min.js",
                  "/static/cie1931_locus.json"):
        assert http("GET", station.url(asset))[0] == 200, asset


def test_https_with_viewing_only_by_key(tmp_path):
    import ssl
    import urllib.error

    from .services import make_certs

    certs = make_certs(tmp_path / "certs")
    extra = (f'tls_cert = "{certs.server_cert}"\ntls_key = "{certs.server_key}"\n'
             'open_viewing = "nobody"\n')
    with running_station(tmp_path, extra_web=extra) as st:
        assert st.base.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        code, body, _ = http("GET", st.url("/api/v1/status"), context=ctx)
        assert code == 401 and "needs an API key to view" in body["error"]["message"]
        code, body, _ = http("GET", st.url("/api/v1/status"), key=VIEWER_KEY, context=ctx)
        assert code == 200 and body["station"] == "webtest"
        code, body, _ = http("GET", st.url("/api/v1/whoami"), key=VIEWER_KEY, context=ctx)
        assert body == {"name": "wall", "role": "viewer", "can_operate": False}
        assert http("GET", st.url("/"), context=ctx)[0] == 200  # the page itself holds no data
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            http("GET", st.url("/api/v1/status"), key=VIEWER_KEY)  # not trusted without the CA


def test_the_page_is_served_while_the_board_is_unreachable_and_commands_wait(tmp_path):
    port = free_port()
    cfg = tmp_path / "station.toml"
    cfg.write_text(config_text(f"socket://127.0.0.1:{free_port()}", tmp_path / "s.db", port))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "station", "run", "--config", str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        assert line.startswith("web: serving http://127.0.0.1:")
        base = line.split("web: serving ", 1)[1].strip()
        code, st, _ = http("GET", base + "/api/v1/status")
        assert code == 200 and st["link_up"] is False and st["board"] is None
        assert len(st["pixels"]) == 4
        code, body, _ = http("POST", base + "/api/v1/jobs", AGING_JOB, key=OPERATOR_KEY)
        assert code == 503 and body["error"]["code"] == "unavailable"
        assert http("GET", base + "/api/v1/jobs")[1]["jobs"] == []
    finally:
        p.terminate()
        p.wait(60)


def test_a_port_in_use_stops_the_daemon_before_anything_runs(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "station.toml"
        cfg.write_text(config_text("socket://127.0.0.1:9", tmp_path / "s.db", port))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.run([sys.executable, "-m", "station", "run", "--config", str(cfg)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 78 and f"cannot listen on 127.0.0.1:{port}" in p.stderr
    assert not (tmp_path / "s.db").exists()


def test_listening_on_a_network_address_without_keys_is_refused(tmp_path):
    cfg = tmp_path / "station.toml"
    cfg.write_text(config_text("socket://127.0.0.1:9", tmp_path / "s.db", free_port())
                   .split("[[web.keys]]")[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATION_WEB__LISTEN": f"0.0.0.0:{free_port()}"}
    p = subprocess.run([sys.executable, "-m", "station", "run", "--config", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 78, p.stderr
    assert "requires authentication" in p.stderr and "web.keys" in p.stderr
    assert not (tmp_path / "s.db").exists()  # nothing was started


def test_a_job_submitted_over_mqtt_is_stopped_from_the_web_on_the_same_path(tmp_path):
    """Both control planes in one daemon: the MQTT command server and the web API execute through
    control.execute_command, so the job and its events name each plane's client; the page's
    status shows the MQTT sink's health."""
    import asyncio
    import tomllib

    from station.config import load_config
    from station.remote import RemoteStation

    from .test_control import AnonymousMosquitto

    broker = AnonymousMosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        mqtt = f'\n[mqtt]\nenabled = true\nurl = "{broker.url}"\ntopic_prefix = "webtest"\n'
        with running_station(tmp_path, extra_toml=mqtt) as st:
            wait_for(lambda: (http("GET", st.url("/api/v1/status"))[1]["sinks"].get("mqtt") or {})
                     .get("connected"), "the MQTT sink's health on the status")
            cfg = load_config(st.config)

            async def over_mqtt(verb: str, fields: dict) -> dict:
                async with RemoteStation(cfg, client_name="bob@bench") as r:
                    return await r.call(verb, fields, timeout_s=30)

            job = asyncio.run(over_mqtt("submit", {"job": tomllib.loads(AGING_JOB)}))
            assert job["client"] == "bob@bench"
            code, reply, _ = http("POST", st.url(f"/api/v1/jobs/{job['id']}/stop"), key=OPERATOR_KEY)
            assert code == 200 and reply["result"]["state"] == "stopped"
            again = asyncio.run(over_mqtt("get", {"job_id": job["id"]}))
            assert again["state"] == "stopped" and again["client"] == "bob@bench"
            con = sqlite3.connect(st.db)
            who = {k: json.loads(p).get("client") for k, p in con.execute(
                "SELECT kind, payload FROM events WHERE kind IN ('job/submitted', 'job/stopped')")}
            assert who["job/submitted"] == "bob@bench"
            assert who["job/stopped"].startswith("alice (web, 127.0.0.1")
            log = st.log.read_text()
            assert "control: submit request_id=" in log and "from bob@bench done" in log
            assert "control: stop request_id=" in log and "from alice (web, 127.0.0.1) done" in log
    finally:
        broker.stop()
