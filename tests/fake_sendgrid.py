"""A real HTTP server that plays SendGrid's v3 API for tests.

Why a server rather than a mock: the transport's contract is about what the
official client does on the wire (timeouts, dropped sockets, status codes,
headers), and only a real socket exercises that. The server listens on
127.0.0.1 with an OS-chosen port and runs in a background thread.

    with FakeSendGrid(api_key="SG.test") as fake:
        transport = SendGridTransport("SG.test", host=fake.url)
        fake.fail_next(1, status=429, retry_after="7")
        ...

Faults are programmable and thread-safe. Every request is kept in
`requests` (with the status it got, None when the socket was dropped); the
ones answered 2xx are also in `accepted`.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

AUTH_ERROR = "The provided authorization grant is invalid, expired, or revoked"

#: URL segment under /v3/suppression/ -> the names tests may also use
SUPPRESSION_ENDPOINTS = ("unsubscribes", "bounces", "spam_reports", "invalid_emails", "blocks")
_KIND_ALIASES = {
    "unsubscribe": "unsubscribes",
    "bounce": "bounces",
    "spamreport": "spam_reports",
    "invalid": "invalid_emails",
    "block": "blocks",
}

_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: AUTH_ERROR,
    403: "access forbidden",
    404: "not found",
    413: "Payload Too Large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
}

_UNSET: Any = object()


@dataclass
class _Fault:
    """One programmed answer: a status with headers, or a dropped connection."""

    status: int | None  # None: close the socket without answering
    headers: dict[str, str]
    message: str
    body: bytes | None = None  # raw body instead of the JSON error envelope


def _error_body(message: str, field: str | None = None) -> bytes:
    """SendGrid's error envelope."""
    return json.dumps({"errors": [{"message": message, "field": field, "help": None}]}).encode()


def _recipients(body: Any) -> list[str]:
    """Every `to` address of a mail/send body, lower-cased (empty for junk)."""
    found: list[str] = []
    if not isinstance(body, dict):
        return found
    for personalization in body.get("personalizations") or []:
        if not isinstance(personalization, dict):
            continue
        for to in personalization.get("to") or []:
            if isinstance(to, dict) and isinstance(to.get("email"), str):
                found.append(to["email"].lower())
    return found


class _Server(ThreadingHTTPServer):
    """Waits for handler threads on close, so no socket outlives `stop()`."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # 20+ concurrent connects must not hit the backlog
    fake: FakeSendGrid

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout test) makes our late write fail: expected.
        return


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is for test failures."""

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:
        self.server.fake._handle(self)


class FakeSendGrid:
    """SendGrid's mail/send, suppression lists and the account settings `funnel doctor` reads, with faults."""

    def __init__(self, api_key: str = "SG.test-key") -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: deque[_Fault] = deque()
        self._rejects: dict[str, tuple[int, str]] = {}
        self._status_for_all: int | None = None
        self._delay = 0.0
        self._on_mail: Callable[[dict[str, Any]], None] | None = None
        self._requests: list[dict[str, Any]] = []
        self._suppressions: dict[str, list[dict[str, Any]]] = {name: [] for name in SUPPRESSION_ENDPOINTS}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: what the account endpoints `funnel doctor` reads answer (GET path -> JSON); see `set_account`
        self._account: dict[str, Any] = {
            "/v3/scopes": {"scopes": ["mail.send", "suppression.read"]},
            "/v3/whitelabel/domains": [],
            "/v3/user/webhooks/event/settings": {"enabled": False, "url": ""},
            "/v3/user/webhooks/parse/settings": {"result": []},
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeSendGrid:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-sendgrid",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut any programmed delay short, close every socket."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()  # joins handler threads (block_on_close)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to hand to the client as `host`, e.g. http://127.0.0.1:41234."""
        if self._server is None:
            raise RuntimeError("FakeSendGrid is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ programming

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: str | None = _UNSET,
        *,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next `n` requests with `status` and SendGrid's error body.

        A 429 carries `Retry-After: 1` unless `retry_after` says otherwise (None:
        no header); other statuses carry it only when given. `headers` adds
        more, e.g. `{"X-RateLimit-Reset": "..."}`; `body` replaces the JSON error
        envelope with raw bytes (a proxy's HTML page, say).
        """
        extra = dict(headers or {})
        if retry_after is _UNSET:
            retry_after = "1" if status == 429 else None
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        text = message or _DEFAULT_MESSAGES.get(status, "error")
        with self._lock:
            self._faults.extend(_Fault(status, extra, text, body) for _ in range(n))

    def drop_next(self, n: int = 1) -> None:
        """Read the next `n` requests, then close the socket without a response."""
        with self._lock:
            self._faults.extend(_Fault(None, {}, "") for _ in range(n))

    def reject_address(self, addr: str, status: int = 400, message: str = "Does not contain a valid address.") -> None:
        """Refuse every mail/send to `addr` (any case) with `status`, every time."""
        with self._lock:
            self._rejects[addr.lower()] = (status, message)

    def set_status_for_all(self, status: int | None) -> None:
        """Answer every request with `status` (401: wrong key); None goes back to normal."""
        with self._lock:
            self._status_for_all = status

    def on_mail(self, hook: Callable[[dict[str, Any]], None] | None) -> None:
        """Call `hook(record)` for each mail/send request before answering it (on the server thread)."""
        with self._lock:
            self._on_mail = hook

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each request from now on (0: no delay)."""
        with self._lock:
            self._delay = max(0.0, float(seconds))

    def set_account(self, path: str, answer: Any) -> None:
        """What GET `path` answers from now on: `/v3/scopes`, `/v3/whitelabel/domains`,
        `/v3/user/webhooks/event/settings` or `/v3/user/webhooks/parse/settings` (SendGrid's shapes)."""
        if path not in self._account:
            raise ValueError(f"not an account endpoint of the fake: {path}")
        with self._lock:
            self._account[path] = answer

    def authenticate_domain(self, domain: str, *, valid: bool = True, selector: str = "s1") -> None:
        """An authenticated domain as SendGrid lists it (automated security: three CNAMEs)."""
        dns = {
            "mail_cname": {"valid": valid, "type": "cname", "host": f"em123.{domain}", "data": "u123.wl.sendgrid.net"},
            "dkim1": {
                "valid": valid,
                "type": "cname",
                "host": f"{selector}._domainkey.{domain}",
                "data": f"{selector}.domainkey.u123.wl.sendgrid.net",
            },
            "dkim2": {
                "valid": valid,
                "type": "cname",
                "host": f"s2._domainkey.{domain}",
                "data": "s2.domainkey.u123.wl.sendgrid.net",
            },
        }
        entry = {"id": 1, "domain": domain, "subdomain": "em123", "valid": valid, "default": True, "dns": dns}
        with self._lock:
            self._account["/v3/whitelabel/domains"] = [entry]

    def add_suppression(self, kind: str, email: str, created: int, reason: str = "", status: str = "") -> None:
        """Put `email` on a suppression list (`bounces` or our kind name `bounce`, ...)."""
        name = _KIND_ALIASES.get(kind, kind)
        if name not in self._suppressions:
            raise ValueError(f"unknown suppression kind {kind!r}")
        item: dict[str, Any] = {"created": int(created), "email": email}
        if name in ("bounces", "blocks", "invalid_emails"):
            item["reason"] = reason or "550 5.1.1 unknown user"
        if name in ("bounces", "blocks"):
            item["status"] = status or "5.1.1"
        if name == "spam_reports":
            item["ip"] = "192.0.2.1"
        with self._lock:
            self._suppressions[name].append(item)

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: method, path, query, headers, body, time, status."""
        with self._lock:
            return list(self._requests)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The mail/send requests answered 2xx (what SendGrid would deliver)."""
        with self._lock:
            return [
                r
                for r in self._requests
                if r["path"] == "/v3/mail/send" and r["status"] is not None and r["status"] < 300
            ]

    def sent_to(self, addr: str) -> int:
        """How many accepted mail/send requests had `addr` (any case) as a recipient."""
        needle = addr.lower()
        return sum(_recipients(r["body"]).count(needle) for r in self.accepted)

    # ------------------------------------------------------------------ serving

    def _handle(self, handler: _Handler) -> None:
        """Answer one request; runs on a server worker thread."""
        arrived = time.time()  # before the body is read: when the request reached the fake
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record: dict[str, Any] = {
            "method": handler.command,
            "path": parts.path,
            "query": {k: v[-1] for k, v in parse_qs(parts.query).items()},
            "headers": dict(handler.headers.items()),
            "body": body,
            "time": arrived,
            "status": None,
        }

        with self._lock:
            delay = self._delay
            fault = self._faults.popleft() if self._faults else None
            status_for_all = self._status_for_all
            rejects = dict(self._rejects)
            on_mail = self._on_mail if parts.path == "/v3/mail/send" else None
        if on_mail is not None:
            on_mail(record)
        if delay:
            self._stopping.wait(delay)

        status, headers, payload = self._answer(handler, parts.path, record, body, fault, status_for_all, rejects)
        record["status"] = status
        with self._lock:
            self._requests.append(record)
        if status is None:  # dropped: say nothing, close
            handler.close_connection = True
            return
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)
        handler.close_connection = True

    def _answer(
        self,
        handler: _Handler,
        path: str,
        record: dict[str, Any],
        body: Any,
        fault: _Fault | None,
        status_for_all: int | None,
        rejects: dict[str, tuple[int, str]],
    ) -> tuple[int | None, dict[str, str], bytes]:
        """Decide status, headers and body for one request."""
        json_headers = {"Content-Type": "application/json"}
        if fault is not None:
            if fault.status is None:
                return None, {}, b""
            if fault.body is not None:
                return fault.status, {"Content-Type": "text/html", **fault.headers}, fault.body
            return fault.status, {**json_headers, **fault.headers}, _error_body(fault.message)
        if status_for_all is not None:
            message = _DEFAULT_MESSAGES.get(status_for_all, "error")
            return status_for_all, json_headers, _error_body(message)
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, json_headers, _error_body(AUTH_ERROR)

        if path == "/v3/mail/send" and handler.command == "POST":
            if not isinstance(body, dict):
                return 400, json_headers, _error_body("Bad Request", "body")
            for index, attachment in enumerate(body.get("attachments") or []):
                # like SendGrid: content (base64, no line breaks) and filename are required
                try:
                    base64.b64decode(str(attachment.get("content", "")), validate=True)
                except ValueError:
                    return 400, json_headers, _error_body("content must be base64", f"attachments.{index}.content")
                if not attachment.get("content") or not attachment.get("filename"):
                    return 400, json_headers, _error_body("content and filename are required", f"attachments.{index}")
            for index, addr in enumerate(_recipients(body)):
                if addr in rejects:
                    status, message = rejects[addr]
                    field = f"personalizations.0.to.{index}.email"
                    return status, json_headers, _error_body(message, field)
            message_id = secrets.token_urlsafe(16)
            record["message_id"] = message_id
            sandbox = bool(((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"))
            return (200 if sandbox else 202), {"X-Message-Id": message_id}, b""

        if path in self._account and handler.command == "GET":
            with self._lock:
                answer = self._account[path]
            return 200, json_headers, json.dumps(answer).encode()

        prefix = "/v3/suppression/"
        if path.startswith(prefix) and handler.command == "GET":
            name = path[len(prefix) :]
            if name in self._suppressions:
                return 200, json_headers, self._suppression_page(name, record["query"])
        return 404, json_headers, _error_body("not found")

    def _suppression_page(self, name: str, query: dict[str, str]) -> bytes:
        """One page of a suppression list, honouring limit/offset/start_time/end_time."""
        limit = int(query.get("limit", 500))
        offset = int(query.get("offset", 0))
        start = int(query["start_time"]) if "start_time" in query else None
        end = int(query["end_time"]) if "end_time" in query else None
        with self._lock:
            items = [
                item
                for item in self._suppressions[name]
                if (start is None or item["created"] >= start) and (end is None or item["created"] <= end)
            ]
        return json.dumps(items[offset : offset + limit]).encode()


def main() -> None:
    """Serve a fake SendGrid from its own process (for benchmarks): prints the URL, stops on EOF.

    Usage: python tests/fake_sendgrid.py [DELAY_SECONDS]; writing anything to
    stdin prints the count of accepted requests; closing stdin stops it.
    """
    import sys

    fake = FakeSendGrid(api_key="SG.bench-key")
    fake.delay(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    fake.start()
    print(fake.url, flush=True)
    for _line in sys.stdin:
        print(len(fake.accepted), flush=True)
    fake.stop()


if __name__ == "__main__":
    main()
