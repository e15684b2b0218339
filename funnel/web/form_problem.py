"""The page a person sees when her form post is refused: calm words, what to do, and a way back.

A browser post that cannot be taken (an address missing or mistyped, too many posts,
a message too long, a form set up wrongly) used to get one line of plain text meant for
the form's builder. She gets this page instead, in the unsubscribe page's style: what
happened, that nothing was saved, and a link back (her Referer, http or https only).
The exact reason stays on the page, small, for whoever looks after the website. JSON
posts keep their JSON answers. The page never names the practice.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import DictLoader, Environment, select_autoescape
from markupsafe import Markup

from funnel.web import pages
from funnel.web.confirm_pages import _LAYOUT

#: what she reads, by HTTP status; anything else gets the general sentence
_SAYS = {
    422: "Something in the form needs another look.",
    413: "The message is too long to send here. Please shorten it and send it again.",
    429: "Several messages came from your connection just now. Please wait a minute, then send it again.",
}
_GENERAL = "The form could not be sent from this page. Please try again later, or get in touch another way."

_TEMPLATE = """{% extends "layout.html" %}{% block content %}
<h1>Your message was not sent</h1>
<p>{{ says }}</p>
{% if detail %}<p>{{ detail }}</p>
{% endif %}<p>Nothing was saved.</p>
{% if back %}<p><a href="{{ back }}">Go back to the form</a></p>
{% else %}<p>Use your browser's Back button to return to the form: what you wrote should still be there.</p>
{% endif %}{% if technical %}<p><small>For whoever looks after the website: {{ technical }}</small></p>
{% endif %}{% endblock %}"""

_ENV = Environment(
    loader=DictLoader({"layout.html": _LAYOUT, "problem.html": _TEMPLATE}), autoescape=select_autoescape(default=True)
)


def way_back(request: Request) -> str | None:
    """The page the post came from (its Referer), if it is an ordinary web address; None otherwise."""
    referer = request.headers.get("referer", "").strip()
    if not referer or len(referer) > 2000:
        return None
    parts = urlsplit(referer)
    return referer if parts.scheme in ("http", "https") and parts.netloc else None


def problem_page(request: Request, status: int, message: str, headers: dict[str, str]) -> HTMLResponse:
    """The calm page for a refused browser post; `message`, the exact reason, is hers to fix for a 422."""
    # the reason reads as a sentence with its quotes ('email'): escaped for HTML, quotes left as typed
    said = Markup(html.escape(_capital(message), quote=False))
    detail, technical = (said, None) if status == 422 else (None, said)
    body = _ENV.get_template("problem.html").render(
        title=pages.TITLE,
        style=pages.STYLE,
        practice="",
        says=_SAYS.get(status, _GENERAL),
        detail=detail,
        technical=technical,
        back=way_back(request),
    )
    response = HTMLResponse(body, status_code=status)
    response.headers.update(headers)
    return response


def _capital(sentence: str) -> str:
    text = sentence.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
