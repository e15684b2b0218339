"""SendGrid transport: one `POST /v3/mail/send` per email through the official client.

The body is built by hand (`sendgrid_payload`): the `Mail` helper sends twice when
`to_emails` meets another personalization, and a dict compares exactly in tests.
`send` makes exactly one network call: SendGrid has no idempotency key, so a retry is
the caller's decision (`TransportError.retryable`, `.fatal`, `.retry_after` only
advise). The timeout is always set (the client has none), and error messages never
hold the recipient's address or the API key: they reach logs and the database.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import python_http_client.client
import python_http_client.exceptions as http_exceptions
import sendgrid

from funnel.domains import domain_of, is_reserved
from funnel.errors import TransportError, TransportSkipped
from funnel.transports.base import Address, OutgoingEmail, SendResult, Transport

__all__ = [
    "DEFAULT_HOST",
    "MAX_RETRY_AFTER",
    "SUPPRESSION_KINDS",
    "SendGridTransport",
    "fetch_suppressions",
    "retry_after_seconds",
    "sendgrid_payload",
]

DEFAULT_HOST = "https://api.sendgrid.com"

#: longest wait we accept from a rate-limit hint; a larger value is more likely
#: a clock problem than a real instruction, and the run must keep moving.
MAX_RETRY_AFTER = 300.0

#: SendGrid's documented limits that otherwise come back as an opaque 400.
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_CUSTOM_ARGS_BYTES = 10_000

#: how much of a non-JSON error body goes into a message
_RAW_BODY_LIMIT = 200

#: (URL segment under /v3/suppression/, our kind), in the order they are fetched
SUPPRESSION_KINDS: tuple[tuple[str, str], ...] = (
    ("unsubscribes", "unsubscribe"),
    ("bounces", "bounce"),
    ("spam_reports", "spamreport"),
    ("invalid_emails", "invalid"),
    ("blocks", "block"),
)

#: SendGrid caps `limit` on the suppression endpoints at 500
_MAX_PAGE_SIZE = 500


class _Headers(Protocol):
    """What we need from response headers (dict or `http.client.HTTPMessage`)."""

    def items(self) -> Any: ...


# --------------------------------------------------------------------------- payload


def _address(address: Address) -> dict[str, str]:
    """SendGrid's `{email, name?}`: an empty name is left out rather than sent as ""."""
    out = {"email": address.email}
    if address.name:
        out["name"] = address.name
    return out


def sendgrid_payload(email: OutgoingEmail, *, sandbox: bool) -> dict[str, Any]:
    """Build the v3 `mail/send` JSON body for one email (pure: no I/O, no clock).

    One personalization with one recipient: every contact gets their own
    request, so one bad address fails one email, never a batch. SendGrid's
    subscription tracking stays off because we send our own RFC 8058
    `List-Unsubscribe` headers, and having both would give two unsubscribe
    paths. Raises `ValueError` for input SendGrid would refuse with an opaque
    400 (too many or too long categories, oversized custom args).
    """
    if len(email.categories) > MAX_CATEGORIES:
        raise ValueError(f"SendGrid accepts at most {MAX_CATEGORIES} categories, got {len(email.categories)}")
    for category in email.categories:
        if len(category) > MAX_CATEGORY_LENGTH:
            raise ValueError(
                f"SendGrid categories are at most {MAX_CATEGORY_LENGTH} characters, got one of {len(category)}"
            )

    # SendGrid answers an int with an unexplained 400: make every value a string.
    custom_args = {str(key): str(value) for key, value in email.custom_args}
    if len(json.dumps(custom_args).encode("utf-8")) >= MAX_CUSTOM_ARGS_BYTES:
        raise ValueError(f"SendGrid custom_args must stay under {MAX_CUSTOM_ARGS_BYTES} bytes")

    content = [{"type": "text/plain", "value": email.text}]
    if email.html is not None:
        content.append({"type": "text/html", "value": email.html})

    payload: dict[str, Any] = {
        "personalizations": [{"to": [_address(email.to)]}],
        "from": _address(email.sender),
        # A line break in a subject is refused by SendGrid; it never means anything.
        "subject": " ".join(email.subject.splitlines()),
        "content": content,
    }
    if email.reply_to is not None:
        payload["reply_to"] = _address(email.reply_to)
    if email.headers:
        payload["headers"] = dict(email.headers)
    if custom_args:
        payload["custom_args"] = custom_args
    if email.categories:
        payload["categories"] = list(email.categories)
    if email.attachments:
        payload["attachments"] = [
            {
                "content": base64.b64encode(a.content).decode("ascii"),
                "type": a.content_type,
                "filename": a.filename,
                "disposition": "attachment",
            }
            for a in email.attachments
        ]
    payload["tracking_settings"] = {
        "click_tracking": {"enable": email.tracking_clicks, "enable_text": False},
        "open_tracking": {"enable": email.tracking_opens},
        "subscription_tracking": {"enable": False},
    }
    payload["mail_settings"] = {"sandbox_mode": {"enable": sandbox}}
    return payload


# --------------------------------------------------------------------------- errors


def _header_map(headers: _Headers | Mapping[str, str] | None) -> dict[str, str]:
    """Lower-cased header dict: the client hands us an `HTTPMessage`, tests a dict."""
    if headers is None:
        return {}
    return {str(key).lower(): str(value) for key, value in headers.items()}


def retry_after_seconds(headers: _Headers | Mapping[str, str] | None, now: float) -> float | None:
    """How long SendGrid asks us to wait, in seconds, or None when it did not say.

    `Retry-After` wins (delta-seconds or an HTTP date); otherwise
    `X-RateLimit-Reset` (a unix time) minus `now`. The result is clamped to
    [0, MAX_RETRY_AFTER] so a skewed clock or a silly value cannot stall a run;
    unparsable values count as "no hint" rather than an error, because the
    caller's own backoff is a fine fallback.
    """
    values = _header_map(headers)
    delay: float | None = None

    retry_after = values.get("retry-after", "").strip()
    if retry_after:
        try:
            delay = float(retry_after)
        except ValueError:
            try:
                when = parsedate_to_datetime(retry_after)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                delay = when.timestamp() - now
        if delay is not None and delay != delay:  # NaN
            delay = None

    if delay is None:
        reset = values.get("x-ratelimit-reset", "").strip()
        if reset:
            try:
                delay = float(reset) - now
            except ValueError:
                delay = None
            if delay is not None and delay != delay:
                delay = None

    if delay is None:
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Remove the API key and the recipient's address from text bound for logs."""
    lowered = text.lower()
    for secret in secrets:
        if not secret:
            continue
        needle = secret.lower()
        start = lowered.find(needle)
        while start != -1:
            text = text[:start] + "<redacted>" + text[start + len(secret) :]
            lowered = text.lower()
            start = lowered.find(needle, start + len("<redacted>"))
    return text


def _first_error_message(body: bytes | str | None) -> str:
    """SendGrid's `errors[0].message`, or the start of the raw body when it is not JSON."""
    if body is None:
        return ""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list):
            for error in errors:
                if isinstance(error, dict) and error.get("message"):
                    return " ".join(str(error["message"]).split())
    raw = " ".join(raw.split())
    if len(raw) > _RAW_BODY_LIMIT:
        raw = raw[:_RAW_BODY_LIMIT] + "..."
    return raw


def _translate(
    exc: BaseException,
    *,
    timeout: float,
    permission: str,
    secrets: tuple[str, ...],
    now: Callable[[], float] = time.time,
) -> TransportError:
    """Map whatever the client raised to one `TransportError` with the right flags.

    The classification is the whole contract with the caller's retry policy:
    429/5xx/network trouble may succeed later, 401/403 never will in this run,
    any other 4xx is about this one request.
    """
    if isinstance(exc, http_exceptions.HTTPError):
        status = int(exc.status_code)
        detail = _scrub(_first_error_message(getattr(exc, "body", None)), secrets)
        if status in (401, 403):
            return TransportError(
                f"SendGrid refused the API key ({status}): it is wrong, revoked, or lacks "
                f'the "{permission}" permission; check SENDGRID_API_KEY.',
                fatal=True,
                status=status,
            )
        if status == 429 or status >= 500:
            hint = retry_after_seconds(getattr(exc, "headers", None), now())
            label = "rate limit" if status == 429 else "server error"
            message = f"SendGrid {status} ({label})"
            if detail:
                message += f": {detail}"
            return TransportError(message, retryable=True, status=status, retry_after=hint)
        message = f"SendGrid {status}: {detail}" if detail else f"SendGrid {status}"
        return TransportError(message, status=status)

    if isinstance(exc, TimeoutError) or (
        isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError)
    ):
        return TransportError(f"SendGrid did not answer (timeout after {timeout:g} s)", retryable=True)
    if isinstance(exc, urllib.error.URLError):
        reason = _scrub(str(exc.reason), secrets)
        return TransportError(f"SendGrid did not answer (connection failed: {reason})", retryable=True)
    if isinstance(exc, http.client.RemoteDisconnected):
        return TransportError("SendGrid did not answer (connection closed without a response)", retryable=True)
    if isinstance(exc, OSError | http.client.HTTPException):
        kind = type(exc).__name__
        return TransportError(f"SendGrid did not answer (connection error: {kind})", retryable=True)
    raise TypeError(f"not a transport failure: {type(exc).__name__}")  # pragma: no cover


#: everything one HTTP call through python_http_client can raise for reasons
#: outside our code: HTTP statuses, and network trouble (URLError, TimeoutError
#: and ConnectionError are all OSError; IncompleteRead and BadStatusLine are
#: HTTPException).
_CALL_ERRORS: tuple[type[BaseException], ...] = (
    http_exceptions.HTTPError,
    OSError,
    http.client.HTTPException,
)


def _client(api_key: str, host: str, timeout: float) -> sendgrid.SendGridAPIClient:
    """A SendGrid client with a timeout (the library's default is none: wait forever).

    `python_http_client.Client.timeout` is copied into every child client that
    `client.mail.send` builds, and handed to `urlopen` as the socket timeout
    (connect and each read).
    """
    sg = sendgrid.SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
    sg.client.timeout = timeout
    return sg


# --------------------------------------------------------------------------- transport


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default TLS context (certificates verified, host name checked), made once per process.

    Without one, `http.client` makes a new default context for every HTTPS
    connection, loading the system's certificate bundle each time: several
    milliseconds of CPU per email against the real api.sendgrid.com. A
    context is safe to share between threads.
    """
    return ssl.create_default_context()


def _opener() -> urllib.request.OpenerDirector:
    """urllib's default opener, its HTTPS handler given the shared TLS context."""
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=_tls_context()))


class SendGridTransport(Transport):
    """Delivers each email with one `POST /v3/mail/send`; never retries by itself.

    Thread safety: each thread gets its own `SendGridAPIClient` (via
    `threading.local`). The library keeps one mutable `request_headers` dict
    shared by every child client it builds; it writes to it during a call
    (`setdefault("Content-Type")` on the first POST, and any per-call
    `request_headers`), while other threads iterate it to build their request,
    which can fail with "dictionary changed size during iteration" or leak a
    header into another thread's call. A client per thread shares nothing, and
    costs nothing to keep: the library opens a fresh connection for every call
    anyway (no keep-alive), so concurrency, not reuse, gives throughput.
    """

    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        *,
        host: str = DEFAULT_HOST,
        timeout: float = 30.0,
        concurrency: int = 8,
        sandbox: bool = False,
    ) -> None:
        if not api_key:
            raise ValueError("SendGridTransport needs an API key (SENDGRID_API_KEY)")
        if timeout <= 0:
            raise ValueError("SendGridTransport needs a positive timeout")
        if concurrency < 1:
            raise ValueError("SendGridTransport needs concurrency >= 1")
        self._api_key = api_key
        self.host = host.rstrip("/")
        self.timeout = float(timeout)
        self.concurrency = concurrency
        self.sandbox = sandbox
        self._local = threading.local()
        #: SendGrid's own API (any region): mail to reserved example domains is skipped there, since it
        #: would only bounce and spend the sender's reputation; a test host (the fake) still receives it
        self._real_host = (urlsplit(self.host).hostname or "").endswith(".sendgrid.com")

    def __repr__(self) -> str:
        # Never show the key, even in a debugger or a traceback.
        return f"SendGridTransport(host={self.host!r}, sandbox={self.sandbox})"

    def _thread_client(self) -> sendgrid.SendGridAPIClient:
        sg: sendgrid.SendGridAPIClient | None = getattr(self._local, "client", None)
        if sg is None:
            sg = _client(self._api_key, self.host, self.timeout)
            self._local.client = sg
        return sg

    def send(self, email: OutgoingEmail) -> SendResult:
        """Send `email` once; return SendGrid's message id or raise `TransportError`.

        Failures after which SendGrid may or may not have accepted the mail
        (timeouts, dropped connections) are reported as retryable: whether a
        possible duplicate is acceptable is the caller's decision, since it
        alone knows what it recorded before the call.
        """
        if self._real_host and is_reserved(email.to.email):
            raise TransportSkipped(
                f"not sent: {domain_of(email.to.email)} is a reserved example domain that receives no mail"
            )
        try:
            payload = sendgrid_payload(email, sandbox=self.sandbox)
        except ValueError as exc:
            raise TransportError(f"email not sendable through SendGrid: {exc}") from exc

        try:
            response = self._post_mail(payload)
        except _CALL_ERRORS as exc:
            raise _translate(
                exc,
                timeout=self.timeout,
                permission="Mail Send",
                secrets=(self._api_key, email.to.email),
            ) from exc

        message_id = _header_map(response.headers).get("x-message-id") or None
        return SendResult(message_id=message_id)

    def _post_mail(self, payload: dict[str, Any]) -> python_http_client.client.Response:
        """`client.mail.send.post(request_body=payload)`, with this thread's urllib opener kept.

        The official client builds a new urllib opener for every call, and
        `build_opener()` walks every handler's methods: measured here, about
        as much CPU as the rest of the request (send, read, parse). An opener
        holds no connection and no per-call state, so each sending thread
        keeps one, with one TLS context for the whole run (see `_opener`).
        Everything else is the library's own path: the same child
        client for /v3/mail/send (URL, headers, timeout), the same JSON body
        and Content-Type, and its `_make_request` (the seam the library keeps
        for exactly this) sends it and turns HTTP errors into its exception
        classes. A test checks the request matches the library's byte for byte.
        """
        local = self._local
        mail = getattr(local, "mail", None)
        if mail is None:
            mail = local.mail = self._thread_client().client.mail.send
            local.url = mail._build_url(None)
            local.headers = {**mail.request_headers, "Content-Type": "application/json"}
            local.opener = _opener()
        request = urllib.request.Request(
            local.url, data=json.dumps(payload).encode("utf-8"), headers=local.headers, method="POST"
        )
        return python_http_client.client.Response(mail._make_request(local.opener, request))

    def close(self) -> None:
        """Nothing to release: the client holds no connection between calls."""
        self._local = threading.local()


# --------------------------------------------------------------------------- suppressions


def fetch_suppressions(
    api_key: str,
    host: str = DEFAULT_HOST,
    timeout: float = 30.0,
    *,
    since: int | None = None,
    page_size: int = 500,
) -> list[tuple[str, str, int]]:
    """Every address SendGrid itself will not deliver to, as (email, kind, created_unix).

    Kinds: "unsubscribe", "bounce", "spamreport", "invalid", "block". Pages
    with `limit`/`offset` until a short page; `since` (unix seconds) limits
    to entries created from then on, for incremental syncs. Addresses come
    back as SendGrid stores them; normalising and de-duplicating is the
    caller's job. One failed request fails the whole fetch (a partial list
    would look like a complete one), with the same error translation as `send`.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    limit = min(page_size, _MAX_PAGE_SIZE)
    sg = _client(api_key, host, timeout)
    results: list[tuple[str, str, int]] = []
    for segment, kind in SUPPRESSION_KINDS:
        offset = 0
        while True:
            query: dict[str, int] = {"limit": limit, "offset": offset}
            if since is not None:
                query["start_time"] = int(since)
            try:
                response = sg.client.suppression._(segment).get(query_params=query)
                page = json.loads(response.body or b"[]")
            except _CALL_ERRORS as exc:
                raise _translate(
                    exc,
                    timeout=timeout,
                    permission="Suppressions",
                    secrets=(api_key,),
                ) from exc
            except ValueError as exc:  # JSON decoding
                raise TransportError(
                    f"SendGrid answered /v3/suppression/{segment} with something that is not JSON",
                    retryable=True,
                ) from exc
            if not isinstance(page, list):
                raise TransportError(
                    f"SendGrid answered /v3/suppression/{segment} with an unexpected shape",
                    retryable=True,
                )
            for item in page:
                if not isinstance(item, dict) or not item.get("email"):
                    continue
                try:
                    created = int(item.get("created") or 0)
                except (TypeError, ValueError):
                    created = 0
                results.append((str(item["email"]), kind, created))
            if len(page) < limit:
                break
            offset += limit
    return results
