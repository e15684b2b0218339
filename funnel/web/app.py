"""The ASGI app behind `funnel serve`: `create_app(config, engine, now)`.

Routes live beside it: `pages.py` (unsubscribe), `forms.py` (form intake),
`webhooks.py` (SendGrid's events and inbound replies, when present). Every
answer carries the same protective headers; HTML pages also get a strict
Content-Security-Policy (no scripts, no external anything, styles by hash).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from funnel.config import Config
from funnel.web import confirm_pages, forms, pages
from funnel.web.deps import get_engine

#: headers on every answer: no sniffing, no referrer leaks (tokens are in URLs), nothing cached
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

#: modules that add routers when they exist; each must define `router` (a FastAPI APIRouter)
OPTIONAL_ROUTERS = ("funnel.web.webhooks",)  # h7: SendGrid event webhook and inbound replies


def create_app(config: Config, engine: Engine, now: datetime | None = None) -> FastAPI:
    """The web app on one config and database; `now` fixes every request's clock (tests)."""
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

    @app.middleware("http")
    async def protective_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", pages.CSP)
        return response

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
        """200 when the database answers a query, 503 when it does not (for the proxy and monitoring)."""
        try:
            with get_engine(request).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return PlainTextResponse("database unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    app.include_router(pages.router)
    app.include_router(forms.router)
    app.include_router(confirm_pages.router)
    for module_name in OPTIONAL_ROUTERS:
        _include_if_present(app, module_name)
    return app


async def _sweep(queue: confirm_pages.SendQueue, fixed_now: datetime | None) -> None:
    """At start and every minute: confirmations a stopped serve stored but never sent go now."""
    while True:
        try:
            await asyncio.to_thread(queue.sweep, fixed_now or datetime.now(UTC).replace(microsecond=0))
        except Exception:  # noqa: BLE001  # the database away for a moment: the next sweep tries again
            pass
        await asyncio.sleep(60)


def _include_if_present(app: FastAPI, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but one of its imports is missing: a real error
        return
    app.include_router(module.router)
