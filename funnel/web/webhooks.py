"""SendGrid's two posts: the event webhook and Inbound Parse (replies).

Thin: each route reads the raw body, calls the pure checks in
`funnel.sendgrid.webhook` / `funnel.sendgrid.inbound`, and the storing services, then
answers. Database work runs in the thread pool so a slow write never holds
the event loop. Logs say what happened in counts and ids, never an address
or a word of a reply.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from funnel.logsafe import safe_message
from funnel.sendgrid import inbound
from funnel.sendgrid.events import store_each, store_events
from funnel.sendgrid.webhook import WebhookRefused, load_public_key, parse_events
from funnel.sendgrid.webhook import check_post as check_event_post
from funnel.transports import make_transport
from funnel.web.deps import get_config, get_engine, get_now, read_body, spool_body

router = APIRouter()
log = logging.getLogger("funnel.web.webhooks")

#: a batch of SendGrid events is well under a megabyte; leave room for bursts
EVENTS_MAX_BODY = 4 * 1024 * 1024


@functools.lru_cache(maxsize=4)
def _public_key(text: str) -> ec.EllipticCurvePublicKey:
    return load_public_key(text)


@router.post("/webhooks/sendgrid", include_in_schema=False)
async def sendgrid_events(request: Request) -> Response:
    """Store each event once (by sg_event_id); bounces, drops, spam reports and unsubscribes suppress at once."""
    config, engine, now = get_config(request), get_engine(request), get_now(request)
    body = await read_body(request, EVENTS_MAX_BODY)
    key_text = os.environ.get("FUNNEL_SENDGRID_WEBHOOK_KEY", "").strip()
    try:
        key = _public_key(key_text) if key_text else None
    except ValueError as exc:
        # our configuration is wrong, not SendGrid's post: 503 so SendGrid retries once it is fixed
        log.error("%s", exc)
        return JSONResponse({"error": str(exc)}, status_code=503)
    try:
        check_event_post(dict(request.headers), body, key, config.tracking.webhook_unsigned, now)
        events, skipped = parse_events(body)
    except WebhookRefused as refused:
        log.warning("event webhook post refused (%s): %s", refused.status, refused.reason)
        return JSONResponse({"error": refused.reason}, status_code=refused.status)

    def store() -> dict[str, object]:
        with Session(engine, expire_on_commit=False) as session:
            try:
                result = store_events(session, events, skipped, now)
                session.commit()
            except OperationalError:
                raise  # the database is gone or locked: a 500, and SendGrid posts the batch again later
            except Exception as exc:  # noqa: BLE001  # one bad event must not cost the others
                session.rollback()
                log.warning(
                    "event webhook: the database refused the batch of %d event(s) (%s); storing them one by one",
                    len(events),
                    safe_message(exc),
                )
                result = store_each(session, events, skipped, now)
        return result.as_dict()

    outcome = await run_in_threadpool(store)
    if skipped:
        log.warning("event webhook: %d event(s) skipped: %s", len(skipped), "; ".join(s.reason for s in skipped[:5]))
    return JSONResponse(outcome)


@router.post("/webhooks/inbound", include_in_schema=False)
async def inbound_reply(request: Request, key: str | None = None) -> Response:
    """A reply through Inbound Parse: store it, pause the sender's sequences, forward it to the therapist."""
    expected = os.environ.get("FUNNEL_INBOUND_KEY", "")
    if not expected:
        raise HTTPException(404, "Not Found")  # the endpoint is off: nothing to tell apart from any unknown path
    if not hmac.compare_digest((key or "").encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(403, "wrong or missing key")
    config, engine, now = get_config(request), get_engine(request), get_now(request)
    content_type = request.headers.get("content-type", "")
    body = await spool_body(request, inbound.MAX_BODY, inbound.SPOOL_IN_MEMORY)

    def read() -> inbound.Reply:
        return inbound.read_reply(inbound.parse_form(content_type, body))

    try:
        # up to 30 MB parsed: in the thread pool, so no other request waits for it
        reply = await run_in_threadpool(read)
    except inbound.InboundError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    finally:
        body.close()

    def store() -> inbound.Received:
        with Session(engine, expire_on_commit=False) as session:
            received = inbound.receive(session, config, reply, now)
            session.commit()
        return received

    received = await run_in_threadpool(store)
    status = received.status
    if status not in ("loop", "forwarded"):
        status = await run_in_threadpool(
            inbound.forward, engine, config, received.message_id, lambda: make_transport(config), now
        )
    log.info(
        "inbound reply #%d: %s%s, %d sequence(s) paused",
        received.message_id,
        status,
        "" if received.new else " (a retried post)",
        received.paused,
    )
    answer = {"id": received.message_id, "new": received.new, "paused": received.paused, "status": status}
    if status == "failed":
        # stored, but not forwarded: 503 makes SendGrid post it again later, and that retry forwards it
        return JSONResponse(answer, status_code=503)
    return JSONResponse(answer)
