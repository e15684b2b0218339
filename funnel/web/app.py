"""The ASGI app behind `funnel serve`: `create_app(config, engine, now)`.

Routes live beside it: `pages.py` (unsubscribe), `forms.py` (form intake),
`webhooks.py` (SendGrid's events and inbound replies, when present). Every
answer, a 404 or a 500 included, carries the same protective headers and a
strict Content-Security-Policy (no scripts, no external anything, styles by
hash, no framing): see `Protected`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from funnel.config import Config
from funnel.logsafe import safe_traceback
from funnel.mail.unsubscribe import signing_key
from funnel.ops.envfile import key_fingerprint
from funnel.web import confirm_pages, forms, pages, webhooks, zoom_webhook
from funnel.web.deps import get_engine

#: headers on every answer: no sniffing, no referrer leaks (tokens are in URLs), nothing cached
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

log = logging.getLogger("funnel.web")


def create_app(config: Config, engine: Engine, now: datetime | None = None, *, debug: bool = False) -> FastAPI:
    """The web app on one config and database; `now` fixes every request's clock (tests).

    `debug` (`funnel serve --debug`) logs whole tracebacks, values and all;
    otherwise a failure is logged by `logsafe.safe_traceback`.
    """
    queue = confirm_pages.SendQueue(config, engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep(queue, now))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(queue.close)  # sends under way finish and are recorded

    app = FastAPI(title="funnel", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.send_queue = queue
    app.state.config = config
    app.state.engine = engine
    app.state.fixed_now = now
    app.state.form_limiter = forms.RateLimiter(config.serve.form_burst, config.serve.form_per_minute)

    app.add_middleware(Protected, debug=debug)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # plain sentences for people and scripts alike; JSON for JSON clients
        if "json" in request.headers.get("accept", "") or "json" in request.headers.get("content-type", ""):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> Response:
        return PlainTextResponse("the request could not be read\n", status_code=400)

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> Response:
        """200 when the database answers a query, 503 when it does not (for the proxy and monitoring).

        The answer names the fingerprint of the key this server checks links
        with (`envfile.key_fingerprint`: 12 hex digits, not the key), so that
        `funnel doctor` can tell whether `funnel run` signs with the same one.
        JSON for a client that asks for it, two lines of text otherwise.
        """
        try:
            with Session(get_engine(request)) as session:
                session.execute(text("SELECT 1"))
                fingerprint = key_fingerprint(signing_key(session))
        except Exception:
            return PlainTextResponse("database unavailable\n", status_code=503)
        if "json" in request.headers.get("accept", ""):
            return JSONResponse({"status": "ok", "key_fingerprint": fingerprint})
        return PlainTextResponse(f"ok\nkey fingerprint: {fingerprint}\n")

    app.include_router(pages.router)
    app.include_router(forms.router)
    app.include_router(confirm_pages.router)
    app.include_router(webhooks.router)  # SendGrid's event webhook and inbound replies
    app.include_router(zoom_webhook.router)  # Zoom's registrations and attendance (404 without its secret)
    return app


class Protected:
    """Every answer with the protective headers, a failure included: the outermost layer of the app.

    A plain ASGI middleware (not `@app.middleware`, which never sees the
    answer to an exception): it adds `SECURITY_HEADERS` and the strict CSP to
    every response start that passes, and turns any exception that escapes
    the routes into a 500 of one sentence, itself with those headers. The
    failure is logged here, by `logsafe.safe_traceback` (frames and the
    database's own words, never the values of a post), and not raised
    further: uvicorn would log it again with the whole error text, which for
    a database error holds the values (an address, a name, a message).
    """

    def __init__(self, app: ASGIApp, debug: bool = False) -> None:
        self.app, self.debug = app, debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_protected(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in {**SECURITY_HEADERS, "Content-Security-Policy": pages.CSP}.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_protected)
        except Exception as exc:
            self._log(scope, exc)
            if started:
                return  # part of an answer is out: nothing can be added; the connection closes
            await _failure_answer(scope)(scope, receive, send_protected)

    def _log(self, scope: Scope, exc: Exception) -> None:
        route = getattr(scope.get("route"), "path", None) or "an unknown path"
        where = f"{scope.get('method', 'a request')} {route}"
        if self.debug:
            log.error("%s failed (500)", where, exc_info=exc)
        else:
            log.error("%s failed (500):\n%s", where, safe_traceback(exc))


def _failure_answer(scope: Scope) -> Response:
    """One sentence, as JSON for JSON clients; nothing about what failed (that is in the log)."""
    text = "the server could not answer this request: please try again later"
    request = Request(scope)
    if "json" in request.headers.get("accept", "") or "json" in request.headers.get("content-type", ""):
        return JSONResponse({"error": text}, status_code=500)
    return PlainTextResponse(f"{text}\n", status_code=500)


async def _sweep(queue: confirm_pages.SendQueue, fixed_now: datetime | None) -> None:
    """At start and every minute: confirmations a stopped serve stored but never sent go now."""
    while True:
        try:
            await asyncio.to_thread(queue.sweep, fixed_now or datetime.now(UTC).replace(microsecond=0))
        except Exception:  # noqa: BLE001  # the database away for a moment: the next sweep tries again
            pass
        await asyncio.sleep(60)
