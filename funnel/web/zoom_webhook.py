"""`POST /webhooks/zoom`: Zoom's webhook (spec section 11), on when ZOOM_WEBHOOK_SECRET is set.

Thin: the signature and timestamp are checked on the raw bytes
(`funnel.signups.zoom_api.check_post`), Zoom's URL validation is answered, and an
event is applied by `funnel.signups.zoom.receive_event` in the thread pool. A
registration's confirmation then goes out at once through `funnel.run.instant`, so
the next run never sends it again. A forged, stale or replayed post gets 401 and
changes nothing. Logs name the event kind and outcome, never a person or the secret.
"""

from __future__ import annotations

import json
import logging
import os

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from funnel.logsafe import safe_message
from funnel.signups.zoom import EventOutcome, receive_event, seen_signature
from funnel.signups.zoom_api import WebhookRefused, check_post, url_validation
from funnel.web.confirm_pages import send_queue, wait_briefly
from funnel.web.deps import get_config, get_engine, get_now, read_body

router = APIRouter()
log = logging.getLogger("funnel.web.zoom")

#: one Zoom event is a few kilobytes
MAX_BODY = 256 * 1024


@router.post("/webhooks/zoom", include_in_schema=False)
async def zoom_event(request: Request) -> Response:
    """Answer the URL validation; enroll a registrant and confirm at once; mark a participant's attendance."""
    secret = os.environ.get("ZOOM_WEBHOOK_SECRET", "").strip()
    if not secret:
        raise HTTPException(404, "Not Found")  # off: nothing to tell apart from any unknown path
    config, engine, now = get_config(request), get_engine(request), get_now(request)
    body = await read_body(request, MAX_BODY)
    try:
        signature = check_post(dict(request.headers), body, secret, now)
    except WebhookRefused as refused:
        log.warning("zoom webhook post refused (401): %s", refused)
        return JSONResponse({"error": str(refused)}, status_code=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(payload, dict):
        return JSONResponse({"error": "the body is not a JSON object"}, status_code=400)
    if payload.get("event") == "endpoint.url_validation":
        plain = str((payload.get("payload") or {}).get("plainToken") or "")
        if not plain:
            return JSONResponse({"error": "no plainToken"}, status_code=400)
        return JSONResponse(url_validation(secret, plain))

    def store() -> EventOutcome | None:
        with Session(engine, expire_on_commit=False) as session:
            if seen_signature(session, signature, now):
                return None
            try:
                outcome = receive_event(session, config, payload, now)
                session.commit()
            except OperationalError:
                raise  # the database is away: a 500, and Zoom posts the event again
            except Exception as exc:  # noqa: BLE001  # one bad event must not stop the others
                session.rollback()
                log.warning("zoom webhook: the event could not be applied (%s)", safe_message(exc))
                seen_signature(session, signature, now)
                session.commit()
                return EventOutcome("ignored", "the event could not be applied: the next run reads Zoom")
        return outcome

    outcome = await run_in_threadpool(store)
    if outcome is None:
        log.warning("zoom webhook post refused (401): a replayed post")
        return JSONResponse({"error": "this post was received before (a replay)"}, status_code=401)
    # the kind and outcome only: a reason may quote part of an address
    log.info("zoom webhook: %s %s", str(payload.get("event"))[:60], outcome.status)
    if outcome.enrollment_ids:
        await wait_briefly(send_queue(request).first_steps(tuple(outcome.enrollment_ids), now))
    return JSONResponse({"status": outcome.status, "reason": outcome.reason})
