"""The web app: routes, the guard every request passes, and the streams.

Routes are thin: they parse parameters (views), run a read (reads, in the thread pool), and
render a template or a JSON document. Nothing here writes to the database; the actions run the
CLI in a subprocess (actions).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, quote, urlencode

import anyio
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steplog.api import Steplog
from steplog.errors import Rejected
from steplog.projections import manifest
from steplog.web import actions, live, security, views
from steplog.web.reads import NotFound, Reader
from steplog.web.views import BadParam

HERE = Path(__file__).parent
FORM_LIMIT = 64 * 1024


@dataclass
class Config:
    location: str  # the database: a SQLite path or a postgresql:// URL
    token: str | None = None  # every request must carry it (None: loopback Host only)
    secret: str = field(default_factory=security.new_secret)  # signs the CSRF tokens
    cwd: Path = field(default_factory=Path.cwd)  # where actions run the CLI (relative paths)
    stream_s: float = live.STREAM_S  # a stream ends after this long (the browser reconnects)
    keepalive_s: float = live.KEEPALIVE_S


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str).encode("utf-8")


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["money"] = views.money
    env.filters["secs"] = lambda value: views.seconds(value, "—")
    env.filters["js"] = lambda value: json.dumps(value)
    return env


class Guard:
    """Every request: the Host check (no token) or the token; a session cookie for the CSRF
    token; and for a state-changing request, the same-origin check (the route checks the
    form's CSRF token, which needs the body)."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        token = self.config.token
        api = scope["path"].startswith("/api/")
        set_cookies: list[str] = []
        if token is None:
            if not security.is_loopback(security.host_name(request.headers.get("host", ""))):
                await _refuse(scope, receive, send, 403, "this server answers on loopback only")
                return
        else:
            given = request.query_params.get("token")
            if security.token_matches(given, token) and not api and request.method == "GET":
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = scope["path"] + ("?" + urlencode(rest) if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(security.TOKEN_COOKIE, token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            carried = (
                given,
                request.cookies.get(security.TOKEN_COOKIE),
                security.bearer(request.headers.get("authorization")),
                request.headers.get("x-steplog-token"),
            )
            if not any(security.token_matches(t, token) for t in carried):
                await _refuse(scope, receive, send, 401, "this server needs its token")
                return
        session = request.cookies.get(security.SESSION_COOKIE) or ""
        if len(session) < 20:
            session = secrets.token_urlsafe(24)
            cookie: SimpleCookie = SimpleCookie()
            cookie[security.SESSION_COOKIE] = session
            cookie[security.SESSION_COOKIE].update({"path": "/", "httponly": True})
            cookie[security.SESSION_COOKIE]["samesite"] = "Strict"
            set_cookies.append(cookie.output(header="").strip())
        scope.setdefault("state", {})["session"] = session
        scope["state"]["csrf"] = security.csrf_token(self.config.secret, session)
        if request.method not in ("GET", "HEAD"):
            origin_ok = security.same_origin(
                request.headers.get("origin"),
                request.headers.get("referer"),
                scope.get("scheme", "http"),
                request.headers.get("host", ""),
            )
            if not origin_ok:
                await _refuse(scope, receive, send, 403, "cross-origin request refused")
                return

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and set_cookies:
                headers = list(message.get("headers", []))
                headers += [(b"set-cookie", c.encode("latin-1")) for c in set_cookies]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookies)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
    if scope["path"].startswith("/api/"):
        response: Response = JSONResponse({"error": text}, status_code=status)
    else:
        response = Response(text + "\n", status_code=status, media_type="text/plain")
    await response(scope, receive, send)


def create_app(config: Config, steplog: Steplog | None = None) -> Starlette:
    """The ASGI app over config.location (or over `steplog`, a facade already open on it:
    the app's only store, which it closes when it stops)."""
    reader = Reader(steplog if steplog is not None else Steplog(config.location))
    watcher = live.LogWatcher(reader.wait_for_events)
    env = _templates()

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            request=request,
            csrf=request.scope["state"]["csrf"],
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def error_page(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status_code=status, status=status, message=message)

    Handler = Callable[[Request], Awaitable[Response]]

    def handled(route: Handler) -> Handler:
        """BadParam → 400, NotFound → 404, anything else refused → 400, with its one line."""

        async def run(request: Request) -> Response:
            try:
                return await route(request)
            except BadParam as exc:
                return error_page(request, 400, str(exc))
            except NotFound as exc:
                return error_page(request, 404, str(exc))
            except Rejected as exc:
                return error_page(request, 400, str(exc))

        return run

    def param(request: Request, name: str) -> str | None:
        return views.text_param(request.query_params.get(name), name)

    def list_params(request: Request) -> tuple[str | None, str | None, int, int]:
        q = request.query_params
        status = views.choice_param(q.get("status"), "status", views.JOB_STATUSES)
        offset = views.int_param(q.get("offset"), "offset", 0)
        limit = views.int_param(q.get("limit"), "limit", views.PAGE_SIZE, 1, views.MAX_PAGE)
        return status, param(request, "pipeline"), offset, limit

    def event_params(request: Request) -> dict[str, Any]:
        q = request.query_params
        return {
            "after": views.int_param(q.get("after"), "after", 0),
            "limit": views.int_param(q.get("limit"), "limit", views.EVENTS_PAGE, 1, views.MAX_PAGE),
            "type_glob": param(request, "type"),
            "step": param(request, "step"),
            "level": views.choice_param(
                (q.get("level") or "").upper() or None, "level", views.LEVELS
            ),
        }

    # -- pages

    @handled
    async def jobs_page(request: Request) -> Response:
        status, pipeline, offset, limit = list_params(request)
        found = await run_in_threadpool(reader.jobs_page, status, pipeline, offset, limit)
        filters = {k: v for k, v in (("status", status), ("pipeline", pipeline)) if v}
        return page(
            request,
            "jobs.html",
            statuses=views.JOB_STATUSES,
            status=status,
            pipeline=pipeline,
            filters=filters,
            urlencode=urlencode,
            **found,
        )

    @handled
    async def job_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        until = param(request, "until")
        found = await run_in_threadpool(reader.job_page, job_id, until)
        state = found["state"]
        filters = event_params(request)
        until_version = state.version if until else None
        events, next_after = await run_in_threadpool(
            lambda: reader.events_page(state.job_id, until=until_version, **filters)
        )
        kept = {
            k: request.query_params[k]
            for k in ("until", "type", "step", "level", "limit")
            if request.query_params.get(k)
        }
        return page(
            request,
            "job.html",
            events=[views.event_row(ev) for ev in events],
            next_after=next_after,
            filters=filters,
            kept=kept,
            urlencode=urlencode,
            notice=param(request, "notice"),
            **found,
        )

    @handled
    async def step_page(request: Request) -> Response:
        found = await run_in_threadpool(
            reader.step_page, request.path_params["job_id"], request.path_params["step"]
        )
        return page(request, "step.html", **found)

    @handled
    async def compare_page(request: Request) -> Response:
        found = await run_in_threadpool(
            reader.compare, request.path_params["a"], request.path_params["b"]
        )
        return page(request, "compare.html", **found)

    # -- actions

    async def form_of(request: Request) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise BadParam("form too large")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise BadParam("the form is not URL-encoded UTF-8") from None
        form = {k: v[-1] for k, v in fields.items()}
        if not security.csrf_ok(
            config.secret, request.scope["state"]["session"], form.get(security.CSRF_FIELD)
        ):
            raise CsrfRefused
        return form

    def action(run: Callable[[Request, str, dict[str, str]], actions.Outcome]) -> Handler:
        @handled
        async def route(request: Request) -> Response:
            try:
                form = await form_of(request)
            except CsrfRefused:
                return error_page(request, 403, "missing or wrong CSRF token: reload the page")
            job = await run_in_threadpool(reader.job, request.path_params["job_id"])
            outcome = await run_in_threadpool(run, request, job, form)
            if not outcome.ok:
                return error_page(request, 409, outcome.message)
            target = f"/jobs/{quote(outcome.job_id or job, safe='')}"
            return RedirectResponse(
                target + "?" + urlencode({"notice": outcome.message}), status_code=303
            )

        return route

    def do_resume(request: Request, job: str, form: dict[str, str]) -> actions.Outcome:
        return actions.resume(reader, job, config.cwd)

    def do_fork(request: Request, job: str, form: dict[str, str]) -> actions.Outcome:
        until = views.text_param(form.get("until"), "until")
        if until is None:
            raise BadParam("fork needs the event to fork at (until)")
        new = views.text_param(form.get("new_job_id"), "new_job_id", 64)
        if new is None:
            new = f"{job[:40]}-fork-{secrets.token_hex(3)}"
        return actions.fork(reader, job, until, new, config.cwd)

    def do_cancel(request: Request, job: str, form: dict[str, str]) -> actions.Outcome:
        return actions.cancel(reader, job, config.cwd)

    # -- the JSON API

    @handled
    async def api_jobs(request: Request) -> Response:
        status, pipeline, offset, limit = list_params(request)
        found = await run_in_threadpool(reader.jobs_page, status, pipeline, offset, limit)
        p = found["page"]
        return JSONResponse(
            {"jobs": found["jobs"], "total": p.total, "offset": p.offset, "limit": p.limit}
        )

    @handled
    async def api_job(request: Request) -> Response:
        found = await run_in_threadpool(reader.status_document, request.path_params["job_id"])
        return JSONResponse(found)

    @handled
    async def api_events(request: Request) -> Response:
        filters = event_params(request)
        events, next_after = await run_in_threadpool(
            lambda: reader.events_page(request.path_params["job_id"], **filters)
        )
        return JSONResponse(
            {"events": [views.event_document(ev) for ev in events], "next_after": next_after}
        )

    @handled
    async def api_step(request: Request) -> Response:
        q = request.query_params
        attempt = views.int_param(q.get("attempt"), "attempt", 0, 1) if q.get("attempt") else None
        found = await run_in_threadpool(
            reader.step_attempt, request.path_params["job_id"], request.path_params["step"], attempt
        )
        return JSONResponse(found.model_dump(mode="json"))

    # -- the streams

    def last_event_id(request: Request) -> int:
        raw = request.headers.get("last-event-id") or request.query_params.get("after")
        return views.int_param(raw, "Last-Event-ID", 0)

    def stream(events: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @handled
    async def job_stream(request: Request) -> Response:
        seen = last_event_id(request)
        job = await run_in_threadpool(reader.job, request.path_params["job_id"])
        seq = await run_in_threadpool(reader.last_seq)

        async def events() -> AsyncIterator[bytes]:
            nonlocal seq
            state, _, _ = await run_in_threadpool(reader.fold, job)
            sent: dict[str, str] | None = None
            if seen < state.version:
                yield live.sse(views.live_state(state), event="state", id=state.version)
            sent = {n: s.status for n, s in state.steps.items()}
            deadline = anyio.current_time() + config.stream_s
            while anyio.current_time() < deadline:
                before = seq
                seq = await watcher.wait_beyond(seq, config.keepalive_s)
                if seq <= before:
                    yield live.KEEPALIVE
                    continue
                new = await run_in_threadpool(reader.new_events, job, state.version)
                if not new:
                    continue
                for ev in new:
                    manifest.apply(state, ev)
                update = views.live_state(state, sent)
                update["events"] = [views.event_row(ev) for ev in new[-50:]]
                yield live.sse(update, event="state", id=state.version)
                sent = {n: s.status for n, s in state.steps.items()}

        return stream(events())

    @handled
    async def jobs_stream(request: Request) -> Response:
        given = last_event_id(request)
        now = await run_in_threadpool(reader.last_seq)
        seq = given if given else now

        async def events() -> AsyncIterator[bytes]:
            nonlocal seq
            deadline = anyio.current_time() + config.stream_s
            while anyio.current_time() < deadline:
                if await watcher.wait_beyond(seq, config.keepalive_s) <= seq:
                    yield live.KEEPALIVE
                    continue
                last, changed = await run_in_threadpool(reader.jobs_changed, seq)
                rows = await run_in_threadpool(reader.job_rows_for, changed)
                seq = last
                yield live.sse({"jobs": rows}, event="jobs", id=last)

        return stream(events())

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(request, 404, f"no page at {request.url.path}")

    routes = [
        Route("/", jobs_page),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/steps/{step}", step_page),
        Route("/compare/{a}/{b}", compare_page),
        Route("/jobs/{job_id}/resume", action(do_resume), methods=["POST"]),
        Route("/jobs/{job_id}/fork", action(do_fork), methods=["POST"]),
        Route("/jobs/{job_id}/cancel", action(do_cancel), methods=["POST"]),
        Route("/api/jobs", api_jobs),
        Route("/api/stream", jobs_stream),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/jobs/{job_id}/events", api_events),
        Route("/api/jobs/{job_id}/steps/{step}", api_step),
        Route("/api/jobs/{job_id}/stream", job_stream),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found},
        lifespan=_lifespan(reader),
    )
    app.add_middleware(Guard, config=config)
    return app


class CsrfRefused(Exception):
    pass


def _lifespan(reader: Reader) -> Callable[[Starlette], Any]:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        reader.close()

    return lifespan
