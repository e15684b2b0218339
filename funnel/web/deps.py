"""What every route needs: the config, the engine, the request's clock, a capped body.

Kept apart from `app.py` so that route modules (pages, forms, webhooks) can
import them without importing the app factory.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import IO

from fastapi import HTTPException, Request
from sqlalchemy.engine import Engine

from funnel.config import Config

#: the largest request body any route reads (forms, webhooks batch up to a few hundred events)
MAX_BODY = 64 * 1024


def get_config(request: Request) -> Config:
    return request.app.state.config  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_now(request: Request) -> datetime:
    """The request's time: `funnel serve --now` fixes it (tests), else the real clock in UTC."""
    fixed: datetime | None = request.app.state.fixed_now
    return fixed if fixed is not None else datetime.now(UTC).replace(microsecond=0)


def refuse_declared_oversize(request: Request, limit: int) -> None:
    """400 for a Content-Length that is not a number, 413 for one over `limit`: before reading a byte."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "the Content-Length header is not a number") from None
        if size > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes without reading it all.

    Content-Length is checked first; a chunked or lying body is cut off while
    streaming, so a huge post never sits in memory.
    """
    refuse_declared_oversize(request, limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def spool_body(request: Request, limit: int, in_memory: int = 1024 * 1024) -> IO[bytes]:
    """The raw body in a temporary file (in memory up to `in_memory` bytes, on disk beyond), at its start.

    For the one route that takes large posts (Inbound Parse, up to 30 MB):
    reading it into a file keeps memory bounded and leaves the parsing to the
    thread pool, so the event loop (every other request) never waits on it.
    The same 413 rules as `read_body`. The caller closes the file.
    """
    refuse_declared_oversize(request, limit)
    spool = tempfile.SpooledTemporaryFile(max_size=in_memory)
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"the body is larger than {limit} bytes")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool  # type: ignore[return-value]  # a SpooledTemporaryFile is a binary file
