"""`GET /c/{token}` asks, `POST /c/{token}` confirms a form post (double opt-in, `funnel.signups.consent`).

`/c/{token}/stop` is the confirmation email's List-Unsubscribe: GET asks, POST declines
for good. GET changes nothing (mail scanners open links). The POST applies the post,
hands the due transactional step to the serve's sender threads (`funnel.run.instant`)
and answers once it has gone or after `WAIT_FOR_SEND` seconds. The pages never name the
practice to a discreet or unconfirmed request, and never say whether an address is
known. `SendQueue` sends on a small thread pool of its own; SIGTERM lets sends under
way finish and be recorded.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy.engine import Engine

from funnel.config import Config
from funnel.errors import ConfigError
from funnel.run.instant import ServeSender
from funnel.signups.consent import (
    Evidence,
    ToSend,
    confirm,
    decline,
    drop_expired,
    look_up,
    send_confirmation,
    stale_confirmations,
)
from funnel.web import pages
from funnel.web.client import client_ip
from funnel.web.deps import get_config, get_engine, get_now, read_body

log = logging.getLogger("funnel.web.confirm")
router = APIRouter()

#: how long a post or a click waits for its email to be handed over before answering anyway
WAIT_FOR_SEND = 2.0
#: a confirmation stored but not claimed this long is sent by the sweep (the serve stopped in between)
STALE_AFTER = timedelta(minutes=1)

_LAYOUT = pages._LAYOUT.replace(
    '<p class="practice">{{ practice }}</p>', '{% if practice %}<p class="practice">{{ practice }}</p>{% endif %}'
)
_TEMPLATES = {
    "layout.html": _LAYOUT,
    "ask.html": """{% extends "layout.html" %}{% block content %}
<h1>Confirm your request</h1>
<p>Press the button to confirm that you would like to receive emails
{%- if practice %} from {{ practice }}{% endif %} at this address.</p>
<form method="post" action="{{ action }}">
<input type="hidden" name="confirm" value="yes">
{% if keep %}<p><label><input type="checkbox" name="keep_discreet" value="yes" checked>
Keep my emails plain and discreet</label></p>
{% endif %}<button type="submit">Confirm</button>
</form>
<p>If you did not ask, close this page. Nothing has changed.</p>
{% endblock %}""",
    "confirmed.html": """{% extends "layout.html" %}{% block content %}
<h1>Thank you, you have confirmed</h1>
<p>Your request is confirmed. An email is on its way to you.</p>
{% endblock %}""",
    "expired.html": """{% extends "layout.html" %}{% block content %}
<h1>This link has expired</h1>
<p>Confirmation links work for 7 days. If you still want to, please send the form again:
a new link will come by email.</p>
{% endblock %}""",
    "invalid.html": """{% extends "layout.html" %}{% block content %}
<h1>This link does not work</h1>
<p>It may have been cut short when it was copied. Please open the link from the email again.</p>
{% endblock %}""",
    "decline.html": """{% extends "layout.html" %}{% block content %}
<h1>Not you?</h1>
<p>Press the button and this address will not be asked again, nor receive any email from us.</p>
<form method="post" action="{{ action }}">
<input type="hidden" name="confirm" value="yes">
<button type="submit">Do not ask me again</button>
</form>
<p>If you did not mean to open this page, you can simply close it. Nothing has changed.</p>
{% endblock %}""",
    "declined.html": """{% extends "layout.html" %}{% block content %}
<h1>Done</h1>
<p>This address will not be asked again, and nothing more will be sent to it.</p>
{% endblock %}""",
    "check_email.html": """{% extends "layout.html" %}{% block content %}
<h1>Thank you</h1>
<p>Please check your email: we have sent you a link to confirm your request.
Nothing happens until you press it.</p>
{% endblock %}""",
}
_ENV = Environment(loader=DictLoader(_TEMPLATES), autoescape=select_autoescape(default=True))


def confirm_page(config: Config, name: str, *, discreet: bool, status_code: int = 200, **values: str) -> HTMLResponse:
    """One of the pages above; the practice is named only when the request is not discreet."""
    html = _ENV.get_template(name).render(
        title=pages.TITLE, style=pages.STYLE, practice="" if discreet else config.practice.name, **values
    )
    return HTMLResponse(html, status_code=status_code)


def evidence_of(request: Request) -> Evidence:
    """The visitor's address (through `serve.trusted_proxies`) and browser, kept as consent evidence."""
    return Evidence(ip=client_ip(request, get_config(request)), user_agent=request.headers.get("user-agent"))


# --------------------------------------------------------------------------- sending from serve


class SendQueue:
    """The serve's sender threads: confirmation emails and first steps, off the event loop."""

    def __init__(self, config: Config, engine: Engine, workers: int = 4) -> None:
        self.config, self.engine = config, engine
        self.sender = ServeSender(config, engine)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serve-send")

    def confirmation(self, job: ToSend, now: datetime) -> Future[Any]:
        return _logged(self._pool.submit(self._confirmation, job, now))

    def _confirmation(self, job: ToSend, now: datetime) -> str:
        try:
            transport = self.sender.transport()
        except ConfigError as exc:
            log.warning("funnel serve cannot send the confirmation email (%s)", str(exc).splitlines()[0])
            return "skipped"
        return send_confirmation(self.config, self.engine, transport, job, now)

    def first_steps(self, enrollment_ids: tuple[int, ...], now: datetime) -> Future[Any]:
        return _logged(self._pool.submit(self.sender.send_due_transactional, enrollment_ids, now))

    def sweep(self, now: datetime) -> None:
        """Drop expired pending posts; send the confirmations a stopped serve left stored but unclaimed."""
        drop_expired(self.engine, now)
        for job in stale_confirmations(self.engine, now, STALE_AFTER):
            self.confirmation(job, now)

    def close(self) -> None:
        """Let requests under way finish and be recorded, then release the serve's run identity."""
        self._pool.shutdown(wait=True)
        self.sender.close()


def _logged(future: Future[Any]) -> Future[Any]:
    """`future`, whose failure is logged when it ends (nobody may be waiting for it: a form post does not)."""
    future.add_done_callback(_log_failure)
    return future


def _log_failure(future: Future[Any]) -> None:
    if future.cancelled() or future.exception() is None:
        return
    error = future.exception()
    log.warning("sending from funnel serve failed unexpectedly (%s)", error.__class__.__name__)


def send_queue(request: Request) -> SendQueue:
    return request.app.state.send_queue  # type: ignore[no-any-return]


async def wait_briefly(future: Future[Any]) -> None:
    """Wait for a send until it is handed over, or `WAIT_FOR_SEND` seconds; it goes on either way."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), WAIT_FOR_SEND)
    except TimeoutError:
        return
    except Exception:  # noqa: BLE001  # logged by `_log_failure`; the visitor's answer does not depend on it
        return


# --------------------------------------------------------------------------- routes


@router.get("/c/{token}")
async def ask(token: str, request: Request) -> HTMLResponse:
    """One button; nothing changes (link scanners open links)."""
    config = get_config(request)
    found = await run_in_threadpool(look_up, get_engine(request), token, get_now(request))
    if found.state == "invalid":
        return confirm_page(config, "invalid.html", discreet=True, status_code=400)
    if found.state == "expired":  # never confirmed: as discreet as the email (see `ask.html` below)
        return confirm_page(config, "expired.html", discreet=True, status_code=410)
    if found.state == "confirmed":
        return confirm_page(config, "confirmed.html", discreet=found.discreet)
    # Until she confirms, nobody knows that she asked: the email names nobody for that reason, and
    # the page one click further, opened by whoever shares her inbox, must not either.
    # (relative action: works behind a proxy that serves funnel under a path prefix)
    # She is discreet now: the box to keep it so is ticked, so a stranger's earlier "no" in the post is
    # never applied by a click that looks like her own; unticking it is her own choice (spec 9).
    return confirm_page(config, "ask.html", discreet=True, action=token, keep="yes" if found.discreet else "")


@router.post("/c/{token}")
async def confirm_now(token: str, request: Request) -> HTMLResponse:
    """Confirm: apply the post, record both halves of the consent, send the first step at once."""
    config = get_config(request)
    body = await read_body(request, limit=4096)
    keep = ("keep_discreet", "yes") in parse_qsl(body.decode("utf-8", "replace"))
    now = get_now(request)
    done = await run_in_threadpool(
        confirm, config, get_engine(request), token, now, evidence_of(request), keep_discreet=keep
    )
    if done.state == "invalid":
        return confirm_page(config, "invalid.html", discreet=True, status_code=400)
    if done.state == "expired":
        return confirm_page(config, "expired.html", discreet=True, status_code=410)
    if done.enrollment_ids:
        await wait_briefly(send_queue(request).first_steps(done.enrollment_ids, now))
    return confirm_page(config, "confirmed.html", discreet=done.discreet)


@router.get("/c/{token}/stop")
async def ask_decline(token: str, request: Request) -> HTMLResponse:
    """The confirmation's List-Unsubscribe page: one button; nothing changes."""
    config = get_config(request)
    found = await run_in_threadpool(look_up, get_engine(request), token, get_now(request))
    if found.state == "invalid":
        return confirm_page(config, "invalid.html", discreet=True, status_code=400)
    return confirm_page(config, "decline.html", discreet=True, action="stop")


@router.post("/c/{token}/stop")
async def decline_now(token: str, request: Request) -> HTMLResponse:
    """ "Not me, do not ask again" (the page's button, or a mail client's RFC 8058 one-click post)."""
    config = get_config(request)
    await read_body(request, limit=4096)
    if not await run_in_threadpool(decline, get_engine(request), token, get_now(request)):
        return confirm_page(config, "invalid.html", discreet=True, status_code=400)
    return confirm_page(config, "declined.html", discreet=True)
