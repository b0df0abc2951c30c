"""The daemon's web server: the page, the HTTP API (``/api/v1``) and the push channel, on aiohttp
in the daemon's own event loop.

Why aiohttp: one well-kept package gives the server (with TLS through the standard ``ssl``
module), streaming responses for Server-Sent Events, and a client the tests and the benchmark use;
it starts inside an already-running event loop with ``AppRunner``/``TCPSite`` and installs no
signal handlers of its own (the daemon's SIGTERM path stays the one in ``station.session``).

Access: a request carries an API key as ``X-Api-Key: KEY`` or ``Authorization: Bearer KEY``
(``[[web.keys]]``, role viewer or operator). Without a key a client may view when
``web.open_viewing`` allows it (by default: clients on the loopback interface). A wrong key is
refused (401) even where viewing is open. Submit, stop, pause and resume need an operator key
and go through :func:`station.control.execute_command`, the MQTT commands' path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import socket
import ssl
import tempfile
import time
import tomllib
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import StationConfig, WebSection, split_listen
from ..control import (
    E_BAD_REQUEST,
    E_INTERNAL,
    MAX_PAYLOAD_BYTES,
    CommandReply,
    ErrorInfo,
    Refusal,
    execute_command,
    parse_request,
    request_payload,
)
from ..sinks.cursor import clean_json
from . import data
from .live import Live, sse

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API = "/api/v1"

HTTP_OF_CODE = {"bad_json": 400, "bad_request": 400, "too_large": 413, "limit": 422,
                "not_found": 404, "conflict": 409, "unavailable": 503, "internal": 500,
                "unauthorized": 401, "forbidden": 403}


class WebError(Exception):
    """A web server that cannot start (address in use, TLS files unreadable)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # "operator" | "viewer" | "anonymous"

    @property
    def can_operate(self) -> bool:
        return self.role == "operator"


def _dumps(obj: Any) -> str:
    return json.dumps(clean_json(obj), allow_nan=False, separators=(",", ":"), default=str)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(obj), status=status, content_type="application/json")


def error_response(code: str, message: str, status: int | None = None) -> web.Response:
    return json_response({"ok": False, "error": {"code": code, "message": message}},
                         status or HTTP_OF_CODE.get(code, 400))


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class Bound:
    """A listening socket and the TLS context for it (:func:`bind`)."""

    sock: socket.socket
    ssl: ssl.SSLContext | None


def bind(web_cfg: WebSection) -> Bound:
    """Open the listening socket and load the TLS files now, before the daemon connects to the
    board, so that a port in use or an unreadable key stops ``station run`` at once (exit 78)
    and the page is served while the board is still unreachable. Raises :class:`WebError`."""
    host, port = split_listen(web_cfg.listen)
    ssl_ctx = None
    if web_cfg.tls_cert and web_cfg.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_ctx.load_cert_chain(web_cfg.tls_cert, web_cfg.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise WebError(f"web: cannot load web.tls_cert/web.tls_key: {e}") from None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
    except (OSError, socket.gaierror) as e:
        raise WebError(f"web: cannot listen on {web_cfg.listen}: {e}") from None
    sock.setblocking(False)
    return Bound(sock, ssl_ctx)


class WebServer:
    """``server = WebServer(cfg, jobs, ctx); url = await server.start(); ...; await
    server.stop()``. ``jobs`` is the daemon's :class:`station.jobs.JobManager` (any
    :class:`station.jobs_api.JobControl` with a ``status()``), ``ctx`` its StationContext;
    ``bound``: a socket from :func:`bind` (else :meth:`start` binds ``web.listen`` itself)."""

    def __init__(self, config: StationConfig, jobs: Any, ctx: Any, *,
                 sink_health: Callable[[], dict[str, Any]] | None = None,
                 bound: Bound | None = None) -> None:
        self.cfg = config
        self.web = config.web
        self.jobs = jobs
        self.ctx = ctx
        self.db = ctx.store.db
        self.sink_health = sink_health or (lambda: {})
        self._keys = [(k.digest(), Principal(k.name, k.role)) for k in self.web.keys]
        self.live = Live(self.db, self.status, status_interval_s=self.web.status_interval_s,
                         max_rows=self.web.live_max_rows)
        self.started_at = time.time()
        self.link_since = time.time()
        self._link_up: bool | None = None
        self._runner: web.AppRunner | None = None
        self._live_task: asyncio.Task[None] | None = None
        self.url: str | None = None
        self.bound = bound
        self.commands_open = True
        """False while the daemon is still connecting to its board: commands get 503."""
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> str:
        host, _ = split_listen(self.web.listen)
        bound = self.bound or bind(self.web)
        self.bound = None
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.SockSite(self._runner, bound.sock, ssl_context=bound.ssl)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise WebError(f"web: cannot serve on {self.web.listen}: {e}") from None
        real_port = bound.sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if bound.ssl else 'http'}://{shown}:{real_port}"
        self._live_task = asyncio.create_task(self.live.run(), name="web-live")
        if hasattr(self.ctx, "link") and hasattr(self.ctx.link, "add_listener"):
            self.ctx.link.add_listener(self._on_link)
        self._link_up = bool(getattr(self.ctx.link, "is_up", False))
        log.info("web: serving %s (open viewing: %s, %d keys%s)", self.url,
                 self.web.open_viewing, len(self._keys), ", TLS" if bound.ssl else "")
        if bound.ssl is None and not data_loopback(host):
            log.warning("web: serving plain HTTP on %s: API keys cross the network in clear; "
                        "set web.tls_cert and web.tls_key", self.web.listen)
        return self.url

    async def stop(self) -> None:
        self.live.close()
        if self._live_task is not None:
            self._live_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._live_task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def notify(self) -> None:
        """New rows are in the store (chain it to the acquisition's on_commit)."""
        self.live.notify()

    def _on_link(self, ev: object) -> None:
        up = getattr(ev, "up", None)
        if isinstance(up, bool) and up != self._link_up:
            self._link_up = up
            self.link_since = time.time()

    # -- auth -----------------------------------------------------------------------------------
    def principal(self, request: web.Request) -> Principal | None:
        """Who makes the request; None: nobody we let in (the caller answers 401)."""
        key = request.headers.get("X-Api-Key")
        auth = request.headers.get("Authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if key:
            import hashlib

            digest = hashlib.sha256(key.encode()).hexdigest()
            found = None
            for d, p in self._keys:
                if hmac.compare_digest(d, digest):
                    found = p
            return found
        ov = self.web.open_viewing
        if ov == "everyone" or (ov == "loopback" and _is_loopback(request.remote)):
            return Principal("anonymous", "anonymous")
        return None

    def who(self, request: web.Request, p: Principal) -> str:
        return f"{p.name} (web, {request.remote or '?'})"

    # -- app ------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES + 1024,
                              middlewares=[self._middleware])
        r = app.router
        r.add_get("/", self.index)
        r.add_static("/static/", STATIC, follow_symlinks=False)
        r.add_get(f"{API}/openapi.json", self.openapi)
        r.add_get(f"{API}/status", self.get_status)
        r.add_get(f"{API}/whoami", self.whoami)
        r.add_get(f"{API}/pixels", self.get_pixels)
        r.add_get(f"{API}/jobs", self.get_jobs)
        r.add_post(f"{API}/jobs", self.post_job)
        r.add_get(f"{API}/jobs/{{job_id}}", self.get_job)
        r.add_post(f"{API}/jobs/{{job_id}}/{{verb:stop|pause|resume}}", self.post_job_verb)
        r.add_get(f"{API}/runs", self.get_runs)
        r.add_get(f"{API}/runs/{{run_id:\\d+}}", self.get_run)
        r.add_get(f"{API}/runs/{{run_id:\\d+}}/data", self.get_run_data)
        r.add_get(f"{API}/runs/{{run_id:\\d+}}/export", self.get_run_export)
        r.add_get(f"{API}/runs/{{run_id:\\d+}}/report", self.get_run_report)
        r.add_get(f"{API}/live", self.get_live)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        path = request.path
        if path.startswith(API) and path != f"{API}/openapi.json":
            p = self.principal(request)
            if p is None:
                has_key = bool(request.headers.get("X-Api-Key")
                               or request.headers.get("Authorization"))
                msg = ("unknown API key" if has_key else
                       "this station needs an API key to view (X-Api-Key header or "
                       "Authorization: Bearer)")
                return error_response("unauthorized", msg)
            request["principal"] = p
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if path.startswith(API) and e.status >= 400:
                return error_response("not_found" if e.status == 404 else "bad_request",
                                      f"{e.reason}: {request.method} {path}", e.status)
            raise
        if path == "/" or path.startswith("/static/"):
            resp.headers.setdefault("Cache-Control", "no-cache")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    # -- page -----------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Content-Security-Policy":
                                         "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                         "img-src 'self' data: blob:; connect-src 'self'"})

    async def openapi(self, request: web.Request) -> web.Response:
        from .openapi import openapi_document

        return json_response(openapi_document(self.cfg.station.id))

    # -- reads ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.jobs.status()
        st["faults_names"] = data.fault_list(st.get("faults"))
        st["link_since"] = self.link_since
        st["sinks"] = self.sink_health()
        st["pixels"] = data.pixels(self.db, self.cfg)
        st["web"] = {"viewers": len(self.live.subscribers), "started": self.started_at,
                     "commands_open": self.commands_open}
        st["station_description"] = self.cfg.station.description
        st["ts"] = time.time()
        return st

    async def get_status(self, request: web.Request) -> web.Response:
        return json_response(self.status())

    async def whoami(self, request: web.Request) -> web.Response:
        p: Principal = request["principal"]
        return json_response({"name": p.name, "role": p.role, "can_operate": p.can_operate})

    async def get_pixels(self, request: web.Request) -> web.Response:
        return json_response({"pixels": data.pixels(self.db, self.cfg)})

    async def get_jobs(self, request: web.Request) -> web.Response:
        return json_response({"jobs": [data.job_progress(self.db, j) for j in self.jobs.list()]})

    async def get_job(self, request: web.Request) -> web.Response:
        from ..jobs_api import JobError

        try:
            info = self.jobs.get(request.match_info["job_id"])
        except JobError as e:
            return error_response(e.code, str(e))
        return json_response(data.job_progress(self.db, info))

    def _int_query(self, request: web.Request, name: str, default: int | None, lo: int,
                   hi: int) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise web.HTTPBadRequest(reason=f"{name} must be an integer, got {raw[:30]!r}"
                                     ) from None
        if not lo <= v <= hi:
            raise web.HTTPBadRequest(reason=f"{name} must be in {lo}..{hi}, got {v}")
        return v

    async def get_runs(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        if kind not in (None, "sweep", "aging"):
            return error_response("bad_request", f"kind must be sweep or aging, got {kind!r}")
        limit = self._int_query(request, "limit", 200, 1, 10000)
        pixel = self._int_query(request, "pixel", None, 0, 0xFFFF)
        assert limit is not None
        return json_response({"runs": data.runs(self.db, limit=limit, pixel=pixel, kind=kind,
                                                job_id=request.query.get("job"))})

    def _run(self, request: web.Request) -> dict[str, Any]:
        run_id = int(request.match_info["run_id"])
        run = data.run_info(self.db, run_id)
        if run is None:
            raise web.HTTPNotFound(reason=f"no run {run_id}")
        return run

    async def get_run(self, request: web.Request) -> web.Response:
        return json_response(self._run(request))

    async def get_run_data(self, request: web.Request) -> web.Response:
        run = self._run(request)
        if run["kind"] == "aging":
            mp = self._int_query(request, "max_points", 2000, 10, 1_000_000)
            assert mp is not None
            return json_response(data.aging_data(self.db, run, mp))
        return json_response(data.sweep_data(self.db, run))

    async def get_run_export(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request)
        body = await asyncio.to_thread(_export_zip, self.cfg.store.path, run["id"])
        name = f"{self.cfg.station.id}-run{run['id']}-{run['kind']}-px{run['pixel']}.zip"
        return web.Response(body=body, content_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def get_run_report(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request)
        try:
            page = await asyncio.to_thread(_report_html, self.cfg.store.path, run["id"])
        except Exception as e:
            log.exception("web: report of run %s failed", run["id"])
            return error_response(E_INTERNAL, f"cannot make the report: {type(e).__name__}: {e}",
                                  500)
        return web.Response(text=page, content_type="text/html")

    # -- push -----------------------------------------------------------------------------------
    async def get_live(self, request: web.Request) -> web.StreamResponse:
        if len(self.live.subscribers) >= self.web.max_viewers:
            return error_response("unavailable", f"{self.web.max_viewers} viewers are connected "
                                  "already (web.max_viewers)", 503)
        p: Principal = request["principal"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sub = self.live.subscribe(self.who(request, p))
        try:
            await resp.write(sse("hello", {"station": self.cfg.station.id, "ts": time.time(),
                                           "role": p.role}))
            await resp.write(sse("status", self.status()))
            while True:
                msg = await sub.queue.get()
                if msg is None:
                    break
                await resp.write(msg)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.live.unsubscribe(sub)
        return resp

    # -- commands -------------------------------------------------------------------------------
    def _operator(self, request: web.Request, what: str) -> Principal | web.Response:
        p: Principal = request["principal"]
        if not p.can_operate:
            log.info("web: refused %s from %s: %s", what, self.who(request, p),
                     "no key" if p.role == "anonymous" else "viewer key")
            if p.role == "anonymous":
                return error_response("unauthorized", f"{what} needs an operator API key "
                                      "(X-Api-Key header)", 401)
            return error_response("forbidden", f"{what} needs an operator key; "
                                  f"{p.name!r} is a viewer key", 403)
        return p

    async def _command(self, request: web.Request, verb: str, fields: dict[str, Any],
                       p: Principal) -> web.Response:
        client = self.who(request, p)
        if not self.commands_open:
            log.info("web: refused %s from %s: the station is not running jobs yet", verb, client)
            return error_response("unavailable", "the station is still connecting to its board: "
                                  "commands are taken once it is up", 503)
        rid = str(uuid.uuid4())
        try:
            payload = json.dumps(request_payload(rid, client, fields)).encode()
            req = parse_request(verb, payload)
        except Refusal as r:
            log.info("web: refused %s from %s: %s (%s)", verb, client, r.message, r.code)
            return self._reply(CommandReply(station=self.cfg.station.id, verb=verb,
                                            request_id=rid, ok=False,
                                            error=ErrorInfo(code=r.code, message=r.message),
                                            ts=time.time()))
        except (TypeError, ValueError) as e:
            return error_response(E_BAD_REQUEST, f"invalid {verb} request: {e}")
        log.info("web: %s request_id=%s from %s", verb, rid, client)
        reply = await execute_command(self.jobs, verb, req, client, station=self.cfg.station.id)
        self.live.notify()
        return self._reply(reply)

    def _reply(self, reply: CommandReply) -> web.Response:
        status = 200 if reply.ok else HTTP_OF_CODE.get(reply.error.code if reply.error else "", 400)
        if reply.ok and reply.verb == "submit":
            status = 201
        return json_response(reply.model_dump(by_alias=True), status)

    async def post_job(self, request: web.Request) -> web.Response:
        p = self._operator(request, "submit")
        if isinstance(p, web.Response):
            return p
        raw = await request.read()
        if len(raw) > MAX_PAYLOAD_BYTES:
            return error_response("too_large", f"job of {len(raw)} bytes is larger than "
                                  f"{MAX_PAYLOAD_BYTES} bytes")
        ctype = request.content_type
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return error_response("bad_request", "the job file is not UTF-8 text")
        job: Any
        if ctype == "application/json":
            try:
                job = json.loads(text)
            except json.JSONDecodeError as e:
                return error_response("bad_json", f"the job is not valid JSON: {e}")
            if isinstance(job, dict) and set(job) == {"job"}:
                job = job["job"]
        else:  # application/toml, text/plain, or none: a job file
            try:
                job = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                return error_response("bad_request", f"the job file is not valid TOML: {e}")
        if not isinstance(job, dict):
            return error_response("bad_request", "a job is a TOML table or a JSON object")
        return await self._command(request, "submit", {"job": job}, p)

    async def post_job_verb(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        p = self._operator(request, verb)
        if isinstance(p, web.Response):
            return p
        return await self._command(request, verb, {"job_id": request.match_info["job_id"]}, p)


def data_loopback(host: str) -> bool:
    from ..config import is_loopback_host

    return is_loopback_host(host)


def _export_dir(store_path: str, run_id: int, out: Path) -> Path:
    from ..export import export_run
    from ..store import Store

    store = Store(store_path)
    try:
        return export_run(store, run_id, out)
    finally:
        store.close()


def _export_zip(store_path: str, run_id: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="station-web-") as tmp:
        d = _export_dir(store_path, run_id, Path(tmp) / f"run{run_id}")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(d.rglob("*")):
                if f.is_file():
                    z.write(f, f"run{run_id}/{f.relative_to(d)}")
        return buf.getvalue()


def _report_html(store_path: str, run_id: int) -> str:
    """The run's ``station report`` page: the export, then the report command on it."""
    import argparse

    from ..commands.report_cmd import _run as report

    with tempfile.TemporaryDirectory(prefix="station-web-") as tmp:
        d = _export_dir(store_path, run_id, Path(tmp) / f"run{run_id}")
        out = Path(tmp) / "report.html"
        rc = report(argparse.Namespace(run_dir=str(d), out=str(out), figures=None,
                                       threshold=1.0))
        if rc != 0:
            raise RuntimeError(f"station report exited {rc}")
        return out.read_text(encoding="utf-8")
