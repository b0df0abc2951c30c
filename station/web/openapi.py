"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from ..control import CommandReply

VERSION = "1.0.0"


def _ok(desc: str, schema: dict[str, Any] | None = None, ctype: str = "application/json"
        ) -> dict[str, Any]:
    return {"description": desc, "content": {ctype: {"schema": schema or {"type": "object"}}}}


def _err(desc: str) -> dict[str, Any]:
    return _ok(desc, {"$ref": "#/components/schemas/Error"})


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}
AUTH_ERRORS = {"401": _err("no key where one is needed, or an unknown key")}
CMD_ERRORS = {
    **AUTH_ERRORS,
    "400": _ok("bad request (invalid job, bad TOML/JSON)", {"$ref": "#/components/schemas/Reply"}),
    "403": _err("a viewer key: commands need an operator key"),
    "404": _ok("no such job", {"$ref": "#/components/schemas/Reply"}),
    "409": _ok("conflict (e.g. the job has already ended)", {"$ref": "#/components/schemas/Reply"}),
    "413": _err("the job is larger than 256 KiB"),
    "422": _ok("refused by the station's safety limits", {"$ref": "#/components/schemas/Reply"}),
}


def _verb(verb: str, what: str) -> dict[str, Any]:
    return {"post": {
        "summary": what, "operationId": f"{verb}Job", "tags": ["jobs"],
        "security": [{"apiKey": []}, {"bearer": []}], "parameters": [JOB_ID],
        "responses": {"200": _ok("the job's info in a reply", {"$ref": "#/components/schemas/Reply"}),
                      **CMD_ERRORS}}}


def openapi_document(station: str) -> dict[str, Any]:
    reply = CommandReply.model_json_schema(by_alias=True)
    defs = reply.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": f"LED test station {station}", "version": VERSION,
                 "description": "The station daemon's HTTP API (docs/web.md). Viewing needs a "
                 "viewer or operator key unless web.open_viewing allows it; commands need an "
                 "operator key and take the same path (validation, refusals, audit) as the MQTT "
                 "commands of docs/mqtt.md, with the same reply object."},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Reply": reply, **defs,
                "Error": {"type": "object", "required": ["ok", "error"], "properties": {
                    "ok": {"const": False},
                    "error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}}}},
            }},
        "paths": {
            "/status": {"get": {
                "summary": "the station: link (up, since), board, interlock, temperatures, "
                "faults by name, job counts, sink health, every pixel's state",
                "operationId": "getStatus", "tags": ["station"],
                "responses": {"200": _ok("the status"), **AUTH_ERRORS}}},
            "/whoami": {"get": {"summary": "the caller's key name and role", "tags": ["station"],
                                "operationId": "whoami",
                                "responses": {"200": _ok("name, role, can_operate")}}},
            "/pixels": {"get": {"summary": "every pixel: state, active run, latest sweep and "
                                "aging runs, latest L/L0 and V", "operationId": "getPixels",
                                "tags": ["station"], "responses": {"200": _ok("{pixels: [...]}")}}},
            "/jobs": {
                "get": {"summary": "every job, newest first, with progress (fraction, words)",
                        "operationId": "listJobs", "tags": ["jobs"],
                        "responses": {"200": _ok("{jobs: [...]}"), **AUTH_ERRORS}},
                "post": {"summary": "submit a job file (TOML, as examples/jobs/) or its JSON object",
                         "operationId": "submitJob", "tags": ["jobs"],
                         "security": [{"apiKey": []}, {"bearer": []}],
                         "requestBody": {"required": True, "content": {
                             "application/toml": {"schema": {"type": "string"}},
                             "application/json": {"schema": {"type": "object"}}}},
                         "responses": {"201": _ok("queued: the job's info in a reply",
                                                  {"$ref": "#/components/schemas/Reply"}),
                                       **CMD_ERRORS}}},
            "/jobs/{job_id}": {"get": {"summary": "one job", "operationId": "getJob",
                                       "tags": ["jobs"], "parameters": [JOB_ID],
                                       "responses": {"200": _ok("the job"),
                                                     "404": _err("no such job")}}},
            "/jobs/{job_id}/stop": _verb("stop", "stop a job (outputs off; data kept)"),
            "/jobs/{job_id}/pause": _verb("pause", "pause a job (outputs off)"),
            "/jobs/{job_id}/resume": _verb("resume", "resume a paused job"),
            "/runs": {"get": {
                "summary": "runs, newest first", "operationId": "listRuns", "tags": ["runs"],
                "parameters": [
                    {"name": "kind", "in": "query", "schema": {"enum": ["sweep", "aging"]}},
                    {"name": "pixel", "in": "query", "schema": {"type": "integer"}},
                    {"name": "job", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "default": 200, "maximum": 10000}}],
                "responses": {"200": _ok("{runs: [...]}")}}},
            "/runs/{run_id}": {"get": {
                "summary": "one run: parameters, calibration, summary, the seed's Table S1 row "
                "for its device preset", "operationId": "getRun", "tags": ["runs"],
                "parameters": [RUN_ID],
                "responses": {"200": _ok("the run"), "404": _err("no such run")}}},
            "/runs/{run_id}/data": {"get": {
                "summary": "a sweep's points and spectra, or an aging run's trace (decimated "
                "evenly to max_points) with its lifetimes so far (T95, T90, T80, T50)",
                "operationId": "getRunData", "tags": ["runs"],
                "parameters": [RUN_ID, {"name": "max_points", "in": "query",
                                        "schema": {"type": "integer", "default": 2000}}],
                "responses": {"200": _ok("columns"), "404": _err("no such run")}}},
            "/runs/{run_id}/export": {"get": {
                "summary": "the run's export (station export: CSV + run.json) as a zip",
                "operationId": "getRunExport", "tags": ["runs"], "parameters": [RUN_ID],
                "responses": {"200": _ok("zip", {"type": "string", "format": "binary"},
                                         "application/zip")}}},
            "/runs/{run_id}/report": {"get": {
                "summary": "the run's station report (self-contained HTML)",
                "operationId": "getRunReport", "tags": ["runs"], "parameters": [RUN_ID],
                "responses": {"200": _ok("HTML", {"type": "string"}, "text/html")}}},
            "/live": {"get": {
                "summary": "push channel (Server-Sent Events): hello, status (every "
                "web.status_interval_s), aging (new samples by run), sweep (new points by run), "
                "event (job lifecycle and alerts)", "operationId": "live", "tags": ["live"],
                "responses": {"200": _ok("event stream", {"type": "string"},
                                         "text/event-stream"),
                              "503": _err("web.max_viewers reached")}}},
            "/openapi.json": {"get": {"summary": "this document", "operationId": "openapi",
                                      "security": [], "responses": {"200": _ok("OpenAPI 3.1")}}},
        },
        "security": [{}, {"apiKey": []}, {"bearer": []}],
    }
