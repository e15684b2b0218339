"""The few HTML pages: unsubscribe (confirm, done, undone), the form's thank-you, errors.

`GET /u/{token}` only asks (mail scanners follow links); `POST /u/{token}`
unsubscribes from everything at once, from the page's button or from a mail
client's RFC 8058 one-click post (urlencoded `List-Unsubscribe=One-Click`,
no cookies, no redirect). `POST /u/{token}/resubscribe` undoes it. A valid
token gets the same pages whoever it names (also a forgotten person, or
nobody), so the pages cannot be used to find out who is on the list.

The pages are calm and small: the practice's name, a neutral title with no
word about the subject matter (inboxes and browsers are shared), readable on
a phone, plain buttons in a keyboard order, nothing loaded from anywhere,
and a Content-Security-Policy that allows only the one stylesheet, by hash.
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy.engine import Engine
from sqlmodel import Session

from funnel.config import Config
from funnel.contacts import resubscribe, unsubscribe
from funnel.models import Contact
from funnel.unsubscribe import Tokens, secret_key
from funnel.web.deps import get_config, get_engine, get_now, read_body

router = APIRouter()

#: the only stylesheet; allowed by its hash, so the policy needs no 'unsafe-inline' and no nonce
STYLE = """
body{font:1.05rem/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#2b2b2b;background:#faf8f5;margin:0}
main{max-width:32rem;margin:12vh auto;padding:0 1.25rem}
h1{font-size:1.35rem;font-weight:600;margin:0 0 1rem}
p{margin:0 0 1rem}
.practice{color:#6b6259;font-size:.95rem;margin-bottom:2rem}
button{font:inherit;padding:.7rem 1.3rem;border-radius:.5rem;border:1px solid #5b4e8c;background:#5b4e8c;
color:#fff;cursor:pointer;min-height:44px}
button.quiet{background:transparent;color:#5b4e8c}
button:focus-visible{outline:3px solid #e0a458;outline-offset:2px}
form{margin:1.5rem 0}
""".strip()

_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")

#: nothing loads from anywhere; forms post only back to us; no framing, no base tag tricks
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: the browser tab and history show only this (never the subject matter)
TITLE = "Email preferences"

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{ title }}</title>
<style>{{ style|safe }}</style>
</head>
<body>
<main>
<p class="practice">{{ practice }}</p>
{% block content %}{% endblock %}
</main>
</body>
</html>
"""

_TEMPLATES = {
    "layout.html": _LAYOUT,
    "confirm.html": """{% extends "layout.html" %}{% block content %}
<h1>Stop these emails?</h1>
<p>Press the button to stop all emails from {{ practice }} to this address.</p>
<form method="post" action="{{ unsubscribe_action }}">
<input type="hidden" name="confirm" value="yes">
<button type="submit">Unsubscribe</button>
</form>
<p>If you did not mean to open this page, you can simply close it. Nothing has changed.</p>
{% endblock %}""",
    "unsubscribed.html": """{% extends "layout.html" %}{% block content %}
<h1>You are unsubscribed</h1>
<p>No more emails from {{ practice }} will come to this address.</p>
<p>Was this a mistake?</p>
<form method="post" action="{{ resubscribe_action }}">
<button type="submit" class="quiet">Subscribe again</button>
</form>
{% endblock %}""",
    "resubscribed.html": """{% extends "layout.html" %}{% block content %}
<h1>You are subscribed again</h1>
<p>Emails from {{ practice }} can come to this address again.</p>
<form method="post" action="{{ unsubscribe_action }}">
<input type="hidden" name="confirm" value="yes">
<button type="submit" class="quiet">Unsubscribe</button>
</form>
{% endblock %}""",
    "thanks.html": """{% extends "layout.html" %}{% block content %}
<h1>Thank you</h1>
<p>Your message has reached {{ practice }}. We will be in touch soon.</p>
{% endblock %}""",
    "invalid.html": """{% extends "layout.html" %}{% block content %}
<h1>This link does not work</h1>
<p>It may have been cut short when it was copied. Please open the link from the email again,
or reply to the email and ask to be removed.</p>
{% endblock %}""",
}

_ENV = Environment(loader=DictLoader(_TEMPLATES), autoescape=select_autoescape(default=True))


def page(config: Config, name: str, status_code: int = 200, values: dict[str, str] | None = None) -> HTMLResponse:
    """One of the pages above, for this practice."""
    html = _ENV.get_template(name).render(title=TITLE, style=STYLE, practice=config.practice.name, **(values or {}))
    return HTMLResponse(html, status_code=status_code)


def _read_token(engine: Engine, token: str) -> tuple[int, int | None] | None:
    with Session(engine) as session:
        return Tokens(secret_key(session)).read(token)


def _actions(token: str, on_resubscribe_page: bool = False) -> dict[str, str]:
    # relative URLs, so the pages also work behind a proxy that serves funnel under a path prefix
    if on_resubscribe_page:  # the page is /u/{token}/resubscribe
        return {"unsubscribe_action": f"../{token}", "resubscribe_action": "resubscribe"}
    return {"unsubscribe_action": token, "resubscribe_action": f"{token}/resubscribe"}


@router.get("/u/{token}")
async def confirm(token: str, request: Request) -> HTMLResponse:
    """Ask first: link scanners and previews open links, and must change nothing."""
    config = get_config(request)
    if await run_in_threadpool(_read_token, get_engine(request), token) is None:
        return page(config, "invalid.html", 400)
    return page(config, "confirm.html", values=_actions(token))


@router.post("/u/{token}")
async def unsubscribe_now(token: str, request: Request) -> HTMLResponse:
    """Unsubscribe from everything (the button, or RFC 8058 one-click); posting twice is harmless."""
    config = get_config(request)
    body = await read_body(request, limit=4096)
    # RFC 8058 clients post `List-Unsubscribe=One-Click`; the page's button posts `confirm=yes`
    via = "link" if b"confirm=yes" in body else "one-click"
    ok = await run_in_threadpool(_change, get_engine(request), token, request, via, True)
    if not ok:
        return page(config, "invalid.html", 400)
    return page(config, "unsubscribed.html", values=_actions(token))


@router.post("/u/{token}/resubscribe")
async def resubscribe_now(token: str, request: Request) -> HTMLResponse:
    """Undo an unsubscribe made by mistake (bounces and spam reports stay in force)."""
    config = get_config(request)
    await read_body(request, limit=4096)
    ok = await run_in_threadpool(_change, get_engine(request), token, request, "", False)
    if not ok:
        return page(config, "invalid.html", 400)
    return page(config, "resubscribed.html", values=_actions(token, on_resubscribe_page=True))


def _change(engine: Engine, token: str, request: Request, via: str, stop: bool) -> bool:
    """Apply the change for a valid token; False for a forged or damaged one (nothing changed)."""
    now = get_now(request)
    with Session(engine) as session:
        read = Tokens(secret_key(session)).read(token)
        if read is None:
            return False
        contact_id, step_run_id = read
        contact = session.get(Contact, contact_id)
        if contact is None or contact.erased_at is not None:
            return True  # the same answer as for anyone: nothing to reveal, nothing to change
        if stop:
            unsubscribe(session, contact, now, via=via, step_run_id=step_run_id)
        else:
            resubscribe(session, contact, now)
        session.commit()
    return True
