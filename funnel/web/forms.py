"""`POST /forms/{source}`: the website's form, taken in live for `format: form` sources.

The route only parses and answers. A `confirm: true` source (the default) stores the
post as pending and sends one confirmation email from the sender threads
(`funnel.signups.consent`); a `confirm: false` source stores it at once
(`funnel.signups.live.accept_form`). Either way the answer never waits for mail and is
the same whatever the address, so it reveals nothing about who is listed. Every odd
input gets a 4xx with one sentence, never a 500; the answers, origins and rate limits
are listed in docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from funnel.config import Config, Source
from funnel.signups.consent import request_confirmation
from funnel.signups.live import accept_form
from funnel.signups.sources import SignupRow, signup_from_values
from funnel.text import normalize_email, title_key
from funnel.timeutil import zone
from funnel.web.client import client_ip, rate_key
from funnel.web.confirm_pages import confirm_page, evidence_of, send_queue
from funnel.web.deps import MAX_BODY, get_config, get_engine, get_now, read_body
from funnel.web.form_problem import problem_page
from funnel.web.pages import page

router = APIRouter()

#: the hidden field real people leave empty (hide it with CSS on the website)
HONEYPOT = "website"
#: more fields than any real form has: a sign of junk, refused before any work
MAX_FIELDS = 50
#: funnel's own one-line fields; anything else (a message) may keep its line breaks
_ONE_LINE = ("email", "first_name", "last_name", "timezone", "webinar_start", "discreet")
_MAX_NAME = 200
#: visitors the rate limiter remembers at most (about 150 bytes each)
MAX_BUCKETS = 10_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_KEEP_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class BadInput(Exception):
    """A post we refuse: HTTP status, one sentence, and the form field it is about (if any)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class RateLimiter:
    """A token bucket per visitor, in memory: `burst` posts at once, `per_minute` more after.

    Visitors are counted by `client.rate_key` (an IPv4 address, an IPv6 /64).
    In memory is enough for one `funnel serve` process (a restart forgives
    everyone). The table is bounded: an OrderedDict in least-recently-posted
    order, so each post costs O(1) on the event loop however many visitors
    came before, and past `max_buckets` the visitor idle the longest is
    forgotten (her bucket would be full again soon, or the server is under a
    flood where forgetting the oldest is the only bounded choice).
    """

    def __init__(
        self,
        burst: int,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.burst, self.rate, self.clock = float(burst), per_minute / 60.0, clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, ip: str) -> float:
        """0 when a post from `ip` is allowed now (and counted); else the seconds until one is."""
        key = rate_key(ip)
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)  # now the most recent
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return 0.0 if allowed else (1 - tokens) / self.rate


# --------------------------------------------------------------------------- parsing (pure)


def clean_line(value: str) -> str:
    """One line of text: control characters (CR, LF, NUL, ...) become spaces, runs of space one."""
    return " ".join(_CONTROL.sub(" ", value).split())


def clean_block(value: str) -> str:
    """Free text (a message): line breaks kept as \\n, every other control character dropped."""
    return _CONTROL_KEEP_LINES.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()


def parse_body(body: bytes, content_type: str) -> dict[str, str]:
    """The posted fields (names lower-cased and trimmed), from urlencoded or JSON; BadInput otherwise."""
    kind, _, params = content_type.partition(";")
    kind = kind.strip().lower()
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset and charset not in ("utf-8", "utf8"):
        raise BadInput(415, f"the form is sent as {charset}: send it as UTF-8")
    if kind == "application/json" or kind.endswith("+json"):
        return _json_fields(body)
    if kind == "application/x-www-form-urlencoded":
        return _urlencoded_fields(body)
    raise BadInput(
        415, "send the form as application/x-www-form-urlencoded (an HTML form's default) or as application/json"
    )


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise BadInput(400, 'the form is not UTF-8 text: add accept-charset="UTF-8" to the <form>') from None
    except ValueError:
        raise BadInput(400, f"the form has more than {MAX_FIELDS} fields") from None
    return {title_key(name): value for name, value in pairs}


def _json_fields(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, not UTF-8, a number too long to read, absurd nesting
        raise BadInput(400, 'the body is not valid JSON: send one object like {"email": "..."}') from None
    if not isinstance(data, dict):
        raise BadInput(400, 'the JSON is not an object: send one object like {"email": "..."}')
    if len(data) > MAX_FIELDS:
        raise BadInput(400, f"the form has more than {MAX_FIELDS} fields")
    fields: dict[str, str] = {}
    for name, value in data.items():
        if _SURROGATE.search(name) or (isinstance(value, str) and _SURROGATE.search(value)):
            shown = _escaped(name)
            raise BadInput(
                422,
                f"the field {shown!r} holds text that is not Unicode (a lone surrogate such as \\ud800): "
                "send the text as the person typed it",
                shown,
            )
        key = title_key(name)
        if value is None:
            fields[key] = ""
        elif isinstance(value, bool):
            fields[key] = "yes" if value else "no"
        elif isinstance(value, str | int | float):
            fields[key] = str(value)
        else:
            raise BadInput(422, f"the field {name!r} must be text, not a list or an object", name)
    return fields


#: half of a UTF-16 pair on its own: JSON's "\\ud800" decodes to it; no database and no UTF-8 output takes it
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(text: str) -> str:
    """`text` with each lone surrogate written as its escape (\\ud800), so the answer itself can be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def map_fields(source: Source, fields: dict[str, str]) -> dict[str, str]:
    """funnel's fields from the posted ones through `columns` (matched as file headers are: `title_key`), cleaned."""
    values: dict[str, str] = {}
    for field, header in source.columns.items():
        raw = fields.get(title_key(header), "")
        values[field] = clean_line(raw) if field in _ONE_LINE else clean_block(raw)
    return values


def signup(config: Config, source: Source, fields: dict[str, str]) -> SignupRow:
    """The row a post makes, or BadInput naming the form field to fix."""
    values = map_fields(source, fields)
    header = source.columns["email"]
    if not values.get("email"):
        raise BadInput(422, f"the field {header!r} (the email address) is missing: fill it in", header)
    try:
        normalize_email(values["email"])
    except ValueError as exc:
        raise BadInput(422, f"the field {header!r} is not a valid email address ({exc})", header) from None
    for name in ("first_name", "last_name"):
        if len(values.get(name, "")) > _MAX_NAME:
            column = source.columns[name]
            raise BadInput(422, f"the field {column!r} is longer than {_MAX_NAME} characters", column)
    try:
        row, _warnings = signup_from_values(
            values, zone(config.practice.timezone), webinar_tz=config.start_zone(source)
        )
    except ValueError as exc:
        raise BadInput(422, str(exc)) from None
    return row


# --------------------------------------------------------------------------- the routes


def _wants_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accept = request.headers.get("accept", "").lower()
    return "json" in content_type or ("application/json" in accept and "text/html" not in accept)


def _cors(config: Config, request: Request) -> dict[str, str]:
    origin = request.headers.get("origin", "").rstrip("/").lower()
    if origin and origin in config.serve.cors_origins:
        return {"Access-Control-Allow-Origin": request.headers["origin"], "Vary": "Origin"}
    return {"Vary": "Origin"}


def _form_source(config: Config, name: str) -> Source | None:
    source = config.sources.get(name)
    return source if source is not None and source.format == "form" else None


def _refuse(problem: BadInput, as_json: bool, headers: dict[str, str], request: Request) -> Response:
    """JSON for a script; for a person's browser, a calm page with a way back (`form_problem`)."""
    if as_json:
        body: dict[str, Any] = {"ok": False, "error": problem.message}
        if problem.field:
            body["field"] = problem.field
        return JSONResponse(body, status_code=problem.status, headers=headers)
    return problem_page(request, problem.status, problem.message, headers)


def _thank(config: Config, source: Source, as_json: bool, headers: dict[str, str]) -> Response:
    if as_json:
        return JSONResponse({"ok": True, "thank_you_url": source.thank_you_url}, headers=headers)
    if source.thank_you_url:
        return RedirectResponse(source.thank_you_url, status_code=303, headers=headers)
    if source.confirm:
        response: Response = confirm_page(config, "check_email.html", discreet=True)
    else:
        response = page(config, "thanks.html")
    response.headers.update(headers)
    return response


def _origin_of(request: Request) -> str | None:
    """The site a browser says the post came from: Origin, else the Referer's scheme://host[:port]; None: neither."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.strip().rstrip("/").lower()
    referer = request.headers.get("referer")
    if referer is None:
        return None
    scheme, _, rest = referer.strip().partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower() if rest else referer.strip().lower()


def _from_elsewhere(source: Source, request: Request) -> bool:
    """True for a browser post from a site `allowed_origins` does not list (an empty list allows any)."""
    if not source.allowed_origins:
        return False
    origin = _origin_of(request)
    return origin is not None and origin not in source.allowed_origins


@router.options("/forms/{source_name}")
async def preflight(source_name: str, request: Request) -> Response:
    """CORS preflight: allowed only for `serve.cors_origins`."""
    config = get_config(request)
    if _form_source(config, source_name) is None:
        return PlainTextResponse(f"no form named {source_name!r}\n", status_code=404)
    headers = _cors(config, request)
    if "Access-Control-Allow-Origin" not in headers:
        return PlainTextResponse("this origin may not post here\n", status_code=403, headers=headers)
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        }
    )
    return Response(status_code=204, headers=headers)


@router.post("/forms/{source_name}")
async def form_post(source_name: str, request: Request) -> Response:
    """Take one form post: 303 to the thank-you URL (or a page), JSON for JSON posts."""
    config = get_config(request)
    as_json = _wants_json(request)
    headers = _cors(config, request)
    source = _form_source(config, source_name)
    if source is None:
        return _refuse(BadInput(404, f"no form named {source_name!r}"), as_json, headers, request)
    if _from_elsewhere(source, request):
        return _refuse(BadInput(403, "this form may not be posted from another website"), as_json, headers, request)
    ip = client_ip(request, config)  # the same address for the rate limit and the consent evidence
    limiter: RateLimiter = request.app.state.form_limiter
    wait = limiter.take(ip)
    if wait:
        headers["Retry-After"] = str(math.ceil(wait))
        too_many = BadInput(429, "too many posts from this address: try again in a minute")
        return _refuse(too_many, as_json, headers, request)
    try:
        body = await read_body(request, MAX_BODY)
    except HTTPException as exc:  # 413 (too big) or 400 (a Content-Length that is not a number)
        return _refuse(BadInput(exc.status_code, str(exc.detail)), as_json, headers, request)
    try:
        fields = parse_body(body, request.headers.get("content-type", ""))
        if fields.get(HONEYPOT, "").strip():
            return _thank(config, source, as_json, headers)  # a bot: the same answer, nothing stored
        row = signup(config, source, fields)
    except BadInput as problem:
        return _refuse(problem, as_json, headers, request)
    evidence = evidence_of(request)
    now = get_now(request)
    if not source.confirm:
        await run_in_threadpool(accept_form, config, get_engine(request), source_name, row, now, evidence)
        return _thank(config, source, as_json, headers)
    job = await run_in_threadpool(request_confirmation, config, get_engine(request), source_name, row, now, evidence)
    if job is not None:
        # handed to the sender threads, never waited for: how long SendGrid takes would otherwise
        # tell a stranger whether this address is asked at all (erased, bounced, unsubscribed by hand)
        send_queue(request).confirmation(job, now)
    return _thank(config, source, as_json, headers)
