"""The few HTML pages: unsubscribe (confirm, done, undone), the form's thank-you, errors;
and `GET /j/{token}`, a discreet reader's neutral link (a 303 to its target, `funnel.mail.jump`).

`GET /u/{token}` only asks (mail scanners follow links); `POST /u/{token}` unsubscribes
at once, from the button or a mail client's RFC 8058 one-click. Every button answers
303 to a page that only reads, so Back and Reload never post again. The pages are calm
and small: a neutral title (inboxes and browsers are shared), no practice name for a
discreet contact, nothing loaded from anywhere, and a strict Content-Security-Policy.
Each route, and what it says to whom: docs/architecture.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.contacts import undo_from_link, unsubscribe
from funnel.mail.jump import TOKEN_LENGTH, jump_links
from funnel.mail.unsubscribe import Named, find, previous_keys, reading_tokens, stored_key
from funnel.preferences import (
    end_pause,
    is_paused_for_a_month,
    letters_stopped,
    pause_for_a_month,
    restart_letters,
    stop_letters,
)
from funnel.store.models import Contact, Enrollment
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
{% if practice %}<p class="practice">{{ practice }}</p>
{% endif %}{% block content %}{% endblock %}
</main>
</body>
</html>
"""

# `practice` is None on a discreet page: each sentence reads whole without it
_TEMPLATES = {
    "layout.html": _LAYOUT,
    "confirm.html": """{% extends "layout.html" %}{% block content %}
<h1>Your email choices</h1>
<p>You can stop all emails {% if practice %}from {{ practice }} {% endif %}to this address, or choose fewer.</p>
<form method="post" action="{{ unsubscribe_action }}">
<input type="hidden" name="confirm" value="yes">
<button type="submit">Stop everything</button>
</form>
<p>Or, if you would rather:</p>
<form method="post" action="{{ letters_action }}">
<button type="submit" class="quiet">{{ just_label }}</button>
</form>
<p>The letters stop; the reminders and the recording of what you signed up for still come.</p>
<form method="post" action="{{ pause_action }}">
<button type="submit" class="quiet">Pause for a month</button>
</form>
<p>Nothing comes for 30 days, then the emails start again.</p>
<p>If you did not mean to open this page, you can simply close it. Nothing has changed.</p>
{% endblock %}""",
    "letters_stopped.html": """{% extends "layout.html" %}{% block content %}
<h1>{{ just_label }}</h1>
<p>The letters have stopped. Only the reminders and the recording of what you signed up for will still come.</p>
<p>Was this a mistake?</p>
<form method="post" action="{{ letters_undo_action }}">
<button type="submit" class="quiet">Start the letters again</button>
</form>
{% endblock %}""",
    "letters_restarted.html": """{% extends "layout.html" %}{% block content %}
<h1>The letters will come again</h1>
<p>Letters that were due while they were stopped will not be sent late.</p>
<form method="post" action="{{ letters_action }}">
<button type="submit" class="quiet">{{ just_label }}</button>
</form>
{% endblock %}""",
    "paused.html": """{% extends "layout.html" %}{% block content %}
<h1>Paused for a month</h1>
<p>Nothing will come to this address for 30 days. After that, the emails start again.</p>
<p>Was this a mistake?</p>
<form method="post" action="{{ pause_undo_action }}">
<button type="submit" class="quiet">End the pause now</button>
</form>
{% endblock %}""",
    "pause_ended.html": """{% extends "layout.html" %}{% block content %}
<h1>The pause has ended</h1>
<p>The emails can come again. Any that were due during the pause and are now long past will not be sent.</p>
<form method="post" action="{{ pause_action }}">
<button type="submit" class="quiet">Pause for a month</button>
</form>
{% endblock %}""",
    "unsubscribed.html": """{% extends "layout.html" %}{% block content %}
<h1>You are unsubscribed</h1>
<p>No more emails {% if practice %}from {{ practice }} {% endif %}will come to this address.</p>
<p>Was this a mistake?</p>
<form method="post" action="{{ resubscribe_action }}">
<button type="submit" class="quiet">Subscribe again</button>
</form>
{% endblock %}""",
    "resubscribed.html": """{% extends "layout.html" %}{% block content %}
<h1>You are subscribed again</h1>
<p>Emails {% if practice %}from {{ practice }} {% endif %}can come to this address again.</p>
<form method="post" action="{{ unsubscribe_action }}">
<input type="hidden" name="confirm" value="yes">
<button type="submit" class="quiet">Unsubscribe</button>
</form>
{% endblock %}""",
    "not_undone.html": """{% extends "layout.html" %}{% block content %}
<h1>This cannot be undone here</h1>
<p>This page can only undo an unsubscribe made with this same email's link, within 30 days.
Nothing has changed.</p>
<p>If you would like these emails again, reply to one of them and ask.</p>
{% endblock %}""",
    "thanks.html": """{% extends "layout.html" %}{% block content %}
<h1>Thank you</h1>
<p>Your message has reached {{ practice }}. I'll be in touch{% if response_time %} {{ response_time }}{% endif %}.</p>
{% endblock %}""",
    "link_invalid.html": """{% extends "layout.html" %}{% block content %}
<h1>This link does not work</h1>
<p>It may have been cut short when it was copied, or it is no longer in use. Please open it from
the email again, or reply to the email and ask for it.</p>
{% endblock %}""",
    "invalid.html": """{% extends "layout.html" %}{% block content %}
<h1>This link does not work</h1>
<p>It may have been cut short when it was copied. Please open the link from the email again,
or reply to the email and ask to be removed.</p>
{% endblock %}""",
}

_ENV = Environment(loader=DictLoader(_TEMPLATES), autoescape=select_autoescape(default=True))


def page(
    config: Config,
    name: str,
    status_code: int = 200,
    values: dict[str, str] | None = None,
    *,
    discreet: bool = False,
) -> HTMLResponse:
    """One of the pages above, for this practice.

    `discreet=True` leaves the practice's name out of the whole page (the
    layout's line and every sentence): for a discreet contact, and for any
    page where we cannot tell who is asking (a bad link, a forgotten
    person), since whoever opens her link may be the person she keeps these
    emails from. The title and wording never name the subject matter anyway.
    """
    practice = None if discreet else config.practice.name
    # "webinar" names the subject matter to whoever opens a discreet reader's page
    just = "Just the reminders" if discreet else "Just the webinar emails"
    html = _ENV.get_template(name).render(
        title=TITLE,
        style=STYLE,
        practice=practice,
        just_label=just,
        response_time=config.practice.response_time,
        **(values or {}),
    )
    return HTMLResponse(html, status_code=status_code)


#: the choices besides "stop everything" (`funnel.preferences`), each a POST to /u/{token}/{name}
_CHOICES = ("letters", "letters-undo", "pause", "pause-undo")


def _actions(token: str, on_resubscribe_page: bool = False) -> dict[str, str]:
    # relative URLs, so the pages also work behind a proxy that serves funnel under a path prefix
    if on_resubscribe_page:  # the page is /u/{token}/<something>
        actions = {"unsubscribe_action": f"../{token}", "resubscribe_action": "resubscribe"}
        prefix = ""
    else:
        actions = {"unsubscribe_action": token, "resubscribe_action": f"{token}/resubscribe"}
        prefix = f"{token}/"
    for choice in _CHOICES:
        actions[f"{choice.replace('-', '_')}_action"] = prefix + choice
    return actions


@dataclass(frozen=True)
class _Outcome:
    """What a token request came to: which page, and whether it may name the practice."""

    template: str
    discreet: bool = True
    status_code: int = 200


#: a token that is bad, forged, or names nobody in this database (a restored backup)
_BAD_LINK = _Outcome("invalid.html", discreet=True, status_code=400)


@router.get("/j/{token}")
async def jump(token: str, request: Request) -> Response:
    """A discreet reader's neutral link: 303 to the target it was made for (`funnel.mail.jump`).

    Reads only (no key yet: no token can be good); a forged, damaged or
    unknown token gets the bad-link page with 400, naming nobody.
    """
    config = get_config(request)
    target = await run_in_threadpool(_jump_target, get_engine(request), config, token)
    if target is None:
        return page(config, "link_invalid.html", 400, discreet=True)
    return RedirectResponse(target, status_code=303)


def _jump_target(engine: Engine, config: Config, token: str) -> str | None:
    if len(token) != TOKEN_LENGTH:  # before the database: most garbled links end here
        return None
    with Session(engine) as session:
        stored = stored_key(session)
    from_env = os.environ.get("FUNNEL_SECRET_KEY")
    if from_env:
        jumps = jump_links(config, from_env, previous_keys() + ([stored] if stored else []))
    elif stored is not None:
        jumps = jump_links(config, stored, [])
    else:
        return None
    return jumps.target(token)


@router.get("/u/{token}")
async def confirm(token: str, request: Request) -> HTMLResponse:
    """Ask first: link scanners and previews open links, and must change nothing (nor write anything)."""
    outcome = await run_in_threadpool(_look, get_engine(request), token)
    return _answer(request, outcome, _actions(token))


#: what the page's own "Stop everything" button posts; RFC 8058 clients post `List-Unsubscribe=One-Click`
_FROM_PAGE, _ONE_CLICK = b"confirm=yes", b"List-Unsubscribe=One-Click"


@router.post("/u/{token}", response_model=None)
async def unsubscribe_now(token: str, request: Request) -> Response:
    """Unsubscribe from everything (the button, or RFC 8058 one-click); posting twice is harmless.

    A mail client's one-click post gets its answer at once (200, no
    redirect, as RFC 8058 expects); the page's button gets a 303 to the
    result page, so that the browser's Back and Reload never post again.
    """
    body = await read_body(request, limit=4096)
    from_page = _FROM_PAGE in body and _ONE_CLICK not in body
    via = "link" if from_page else "one-click"
    outcome = await run_in_threadpool(_stop, get_engine(request), token, get_now(request), via)
    if from_page:
        return _see_result(request, outcome, f"./{token}/done", _actions(token))
    return _answer(request, outcome, _actions(token))


@router.post("/u/{token}/resubscribe", response_model=None)
async def resubscribe_now(token: str, request: Request) -> Response:
    """Undo an unsubscribe made by mistake from this very email, within 30 days (`contacts.undo_from_link`)."""
    await read_body(request, limit=4096)
    outcome = await run_in_threadpool(_undo, get_engine(request), token, get_now(request))
    return _see_result(request, outcome, "./done", _actions(token, on_resubscribe_page=True))


@router.get("/u/{token}/done")
async def result(token: str, request: Request, r: str = "") -> HTMLResponse:
    """The page a button's post sees after its 303: what she chose, while it is still true (reads only).

    Reloading it, or coming back to it with Back, writes nothing. When the
    result no longer holds (she chose otherwise since, or the therapist
    changed it by hand) or `r` is not one of ours, it shows her state now.
    """
    outcome = await run_in_threadpool(_result, get_engine(request), token, r)
    return _answer(request, outcome, _actions(token, on_resubscribe_page=True))


@router.post("/u/{token}/{choice}", response_model=None)
async def choose(token: str, choice: str, request: Request) -> Response:
    """Just the webinar emails, pause for a month, and their undoing (`funnel.preferences`)."""
    await read_body(request, limit=4096)
    if choice not in _CHOICES:
        return page(get_config(request), "invalid.html", 404, discreet=True)
    outcome = await run_in_threadpool(_choose, get_engine(request), token, choice, get_now(request))
    return _see_result(request, outcome, "./done", _actions(token, on_resubscribe_page=True))


def _answer(request: Request, outcome: _Outcome, actions: dict[str, str]) -> HTMLResponse:
    return page(get_config(request), outcome.template, outcome.status_code, actions, discreet=outcome.discreet)


def _see_result(request: Request, outcome: _Outcome, done: str, actions: dict[str, str]) -> Response:
    """303 See Other to the result page (a relative address: it also works behind a path prefix).

    A bad link is answered at once with its 400 page: nothing changed, so
    there is nothing to show again.
    """
    if outcome.status_code != 200:
        return _answer(request, outcome, actions)
    return RedirectResponse(f"{done}?r={_RESULT_OF[outcome.template]}", status_code=303)


def _named(session: Session, token: str) -> Named | None:
    """Who a token names here, reading only (no key yet: no token can be good)."""
    tokens = reading_tokens(session)
    ref = tokens.read(token) if tokens is not None else None
    return find(session, ref) if ref is not None else None


def _discreet(contact: Contact) -> bool:
    # a forgotten person's discretion was erased with her: assume she wanted it
    return contact.discreet or contact.erased_at is not None


def _look(engine: Engine, token: str) -> _Outcome:
    with Session(engine) as session:
        named = _named(session, token)
        if named is None:
            return _BAD_LINK
        return _Outcome("confirm.html", discreet=_discreet(named.contact))


def _stop(engine: Engine, token: str, now: datetime, via: str) -> _Outcome:
    """Unsubscribe whoever the token names; a forgotten person gets the same page, and nothing changes."""
    with Session(engine) as session:
        named = _named(session, token)
        if named is None:
            return _BAD_LINK
        contact = named.contact
        if contact.erased_at is None:
            unsubscribe(session, contact, now, via=via, step_run_id=named.step_run_id)
            session.commit()
        return _Outcome("unsubscribed.html", discreet=_discreet(contact))


def _undo(engine: Engine, token: str, now: datetime) -> _Outcome:
    """Subscribe again, only where `undo_from_link` allows; otherwise a calm page that says why in general terms."""
    with Session(engine) as session:
        named = _named(session, token)
        if named is None:
            return _BAD_LINK
        contact = named.contact
        if not undo_from_link(session, contact, named.step_run_id, now):
            return _Outcome("not_undone.html", discreet=_discreet(contact))
        session.commit()
        return _Outcome("resubscribed.html", discreet=_discreet(contact))


#: the result page's `r` for each page a button's post ends on, and back
_RESULT_PAGES = {
    "unsubscribed": "unsubscribed.html",
    "resubscribed": "resubscribed.html",
    "not-undone": "not_undone.html",
    "letters": "letters_stopped.html",
    "letters-undo": "letters_restarted.html",
    "pause": "paused.html",
    "pause-undo": "pause_ended.html",
}
_RESULT_OF = {template: name for name, template in _RESULT_PAGES.items()}


def _result(engine: Engine, token: str, r: str) -> _Outcome:
    """The page for `GET /u/{token}/done?r=...`: the result named by `r` while it holds, her state now otherwise.

    A forgotten person gets the page named, as the post gave her: nothing
    about her is left to compare with, and nothing tells that she was forgotten.
    """
    with Session(engine) as session:
        named = _named(session, token)
        if named is None:
            return _BAD_LINK
        contact = named.contact
        template = _RESULT_PAGES.get(r)
        if template is None or (contact.erased_at is None and not _still_true(session, contact, r)):
            template = "unsubscribed.html" if contact.unsubscribed_at is not None else "confirm.html"
        return _Outcome(template, discreet=_discreet(contact))


def _still_true(session: Session, contact: Contact, r: str) -> bool:
    """Whether the result `r` still describes her: no page says mail may come to someone unsubscribed."""
    if r == "unsubscribed":
        return contact.unsubscribed_at is not None
    if contact.unsubscribed_at is not None:
        return r == "not-undone"  # "nothing has changed" stays true
    if r == "letters":
        return letters_stopped(session, contact)
    if r == "letters-undo":
        return not letters_stopped(session, contact)
    if r == "pause":  # nothing of hers runs (a pause with nothing running reads the same to her)
        mine = col(Enrollment.contact_id) == contact.id
        active = select(Enrollment).where(mine, col(Enrollment.status) == "active")
        return session.scalars(active).first() is None
    if r == "pause-undo":
        return not is_paused_for_a_month(session, contact)
    return True  # resubscribed, not-undone


#: the page each choice answers with
_CHOSEN = {
    "letters": "letters_stopped.html",
    "letters-undo": "letters_restarted.html",
    "pause": "paused.html",
    "pause-undo": "pause_ended.html",
}


def _choose(engine: Engine, token: str, choice: str, now: datetime) -> _Outcome:
    """Apply one choice for whoever the token names; a forgotten person gets the same page, and nothing changes.

    Each is idempotent (posting twice is harmless), and each is undone by the
    page it answers with.
    """
    with Session(engine) as session:
        named = _named(session, token)
        if named is None:
            return _BAD_LINK
        contact = named.contact
        if contact.erased_at is None:
            if choice == "letters":
                stop_letters(session, contact, now)
            elif choice == "letters-undo":
                restart_letters(session, contact, now)
            elif choice == "pause":
                pause_for_a_month(session, contact, now)
            else:
                end_pause(session, contact, now)
            session.commit()
        return _Outcome(_CHOSEN[choice], discreet=_discreet(contact))
