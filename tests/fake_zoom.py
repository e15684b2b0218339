"""A real HTTP server that plays Zoom for tests: OAuth tokens, webinars, registrants, participants.

Like tests/fake_sendgrid.py, a server on 127.0.0.1 (OS-chosen port, a
background thread), so funnel's client is tested on the wire. Point funnel
at it with `fake.env()` (FUNNEL_ZOOM_OAUTH_URL, FUNNEL_ZOOM_API_BASE and the
app's credentials).

    with FakeZoom() as zoom:
        zoom.add_webinar("81234567890", occurrences=[("1700", "2027-01-14T02:00:00Z")])
        zoom.add_registrant("81234567890", "ana@example.test", occurrences=["1700"])
        zoom.fail_next(1, status=429, retry_after="2")
        zoom.expire_tokens()        # the next call with an old token gets 401 (code 124)

Shapes follow Zoom's API reference: `GET /v2/webinars/{id}` (type 5 one-off,
9 recurring with `occurrences`), `GET /v2/webinars/{id}/registrants`
(`status`, `occurrence_id`, `page_size`, `next_page_token`, `total_records`),
`GET /v2/past_webinars/{id}/instances` (`webinars`: `uuid`, `start_time`) and
`GET /v2/past_webinars/{uuid}/participants` (`participants`: `id`, `name`,
`user_email`, `join_time`, `leave_time`, `duration`). `sign()` makes the
headers of a webhook post as Zoom signs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ACCOUNT_ID = "acct-test"
CLIENT_ID = "client-test"
CLIENT_SECRET = "secret-test"
WEBHOOK_SECRET = "zoom-webhook-secret-test"


@dataclass
class _Fault:
    status: int
    headers: dict[str, str]


@dataclass
class _Webinar:
    id: str
    topic: str
    type: int
    start_time: str
    duration: int
    timezone: str
    occurrences: list[dict[str, Any]]
    registrants: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)


def sign(body: bytes, timestamp: int | str, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """The headers Zoom puts on a webhook post: x-zm-request-timestamp and x-zm-signature."""
    stamp = str(timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"x-zm-request-timestamp": stamp, "x-zm-signature": f"v0={digest}", "content-type": "application/json"}


class FakeZoom:
    """The fake; thread-safe. `requests` keeps (method, path, query, status) of every call."""

    def __init__(self, token_lifetime: int = 3599) -> None:
        self.token_lifetime = token_lifetime
        self.webinars: dict[str, _Webinar] = {}
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str], int]] = []
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeZoom:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self) -> dict[str, str]:
        return {
            "FUNNEL_ZOOM_OAUTH_URL": self.url,
            "FUNNEL_ZOOM_API_BASE": f"{self.url}/v2",
            "ZOOM_ACCOUNT_ID": ACCOUNT_ID,
            "ZOOM_CLIENT_ID": CLIENT_ID,
            "ZOOM_CLIENT_SECRET": CLIENT_SECRET,
            "ZOOM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }

    # ----------------------------------------------------------------- programming it

    def add_webinar(
        self,
        webinar_id: str,
        *,
        topic: str = "Evening webinar",
        start_time: str = "",
        duration: int = 60,
        timezone: str = "America/Denver",
        occurrences: list[tuple[str, str]] | None = None,
    ) -> None:
        with self._lock:
            self.webinars[webinar_id] = _Webinar(
                webinar_id,
                topic,
                9 if occurrences else 5,
                start_time or (occurrences[0][1] if occurrences else ""),
                duration,
                timezone,
                [
                    {"occurrence_id": oid, "start_time": start, "duration": duration, "status": "available"}
                    for oid, start in (occurrences or [])
                ],
            )

    def add_registrant(
        self,
        webinar_id: str,
        email: str,
        *,
        first_name: str = "",
        last_name: str = "",
        occurrences: list[str] | None = None,
        join_url: str | None = None,
        create_time: str = "2027-01-01T12:00:00Z",
        status: str = "approved",
    ) -> dict[str, Any]:
        with self._lock:
            registrant_id = secrets.token_urlsafe(9)
            registrant = {
                "id": registrant_id,
                "email": email,
                "first_name": first_name,
                "last_name": last_name,
                "status": status,
                "create_time": create_time,
                "join_url": join_url
                if join_url is not None
                else f"https://zoom.example.test/w/{webinar_id}?tk={registrant_id}",
                "_occurrences": list(occurrences or []),
            }
            self.webinars[webinar_id].registrants.append(registrant)
            return {k: v for k, v in registrant.items() if not k.startswith("_")}

    def add_instance(self, webinar_id: str, uuid: str, start_time: str, participants: list[dict[str, Any]]) -> None:
        with self._lock:
            self.webinars[webinar_id].instances.append(
                {"uuid": uuid, "start_time": start_time, "participants": participants}
            )

    def fail_next(self, count: int = 1, *, status: int = 500, retry_after: str | None = None, after: int = 0) -> None:
        """The next `count` API calls (not token requests) answer `status`, once `after` calls were answered."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._faults.extend(_Fault(0, {}) for _ in range(after))  # status 0: answered as usual
            self._faults.extend(_Fault(status, headers) for _ in range(count))

    def expire_tokens(self) -> None:
        """Every token handed out so far stops working (Zoom answers 401, code 124)."""
        with self._lock:
            self.tokens.clear()

    def api_calls(self) -> list[tuple[str, str, dict[str, str], int]]:
        with self._lock:
            return [r for r in self.requests if not r[1].startswith("/oauth")]

    def token_calls(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r[1].startswith("/oauth"))

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ----------------------------------------------------------------- the server

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                status, body, headers = fake._token(self.path, self.headers.get("authorization", ""))
                self._answer(status, body, headers)

            def do_GET(self) -> None:  # noqa: N802
                status, body, headers = fake._api(self.path, self.headers.get("authorization", ""))
                self._answer(status, body, headers)

            def _answer(self, status: int, body: Any, headers: dict[str, str]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

        return Handler

    def _log(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append((method, path, query, status))

    def _token(self, target: str, authorization: str) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if parts.path != "/oauth/token" or query.get("grant_type") != "account_credentials":
            self._log("POST", parts.path, query, 400)
            return 400, {"reason": "unsupported grant type", "error": "unsupported_grant_type"}, {}
        if authorization != expected or query.get("account_id") != ACCOUNT_ID:
            self._log("POST", parts.path, query, 400)
            return 400, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}, {}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens.add(token)
        self._log("POST", parts.path, query, 200)
        return (
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_lifetime,
                "scope": "webinar:read:admin report:read:admin",
            },
            {},
        )

    def _api(self, target: str, authorization: str) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        token = authorization.removeprefix("Bearer ").strip()
        with self._lock:
            known = token in self.tokens
            fault = self._faults.popleft() if known and self._faults else None
        if not known:
            self._log("GET", path, query, 401)
            return 401, {"code": 124, "message": "Invalid access token."}, {}
        if fault is not None and fault.status:
            self._log("GET", path, query, fault.status)
            message = "You have reached the maximum per-second rate limit" if fault.status == 429 else "error"
            return fault.status, {"code": fault.status, "message": message}, fault.headers
        status, body = self._route(path, query)
        self._log("GET", path, query, status)
        return status, body, {}

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        pieces = [unquote(p) for p in path.split("/") if p]
        with self._lock:
            if pieces[:2] == ["v2", "webinars"] and len(pieces) == 3:
                webinar = self.webinars.get(pieces[2])
                if webinar is None:
                    return 404, {"code": 3001, "message": "Webinar does not exist."}
                body: dict[str, Any] = {
                    "id": int(webinar.id),
                    "uuid": base64.b64encode(webinar.id.encode()).decode(),
                    "topic": webinar.topic,
                    "type": webinar.type,
                    "start_time": webinar.start_time,
                    "duration": webinar.duration,
                    "timezone": webinar.timezone,
                    "join_url": f"https://zoom.example.test/j/{webinar.id}",
                }
                if webinar.occurrences:
                    body["occurrences"] = [dict(o) for o in webinar.occurrences]
                return 200, body
            if pieces[:2] == ["v2", "webinars"] and len(pieces) == 4 and pieces[3] == "registrants":
                webinar = self.webinars.get(pieces[2])
                if webinar is None:
                    return 404, {"code": 3001, "message": "Webinar does not exist."}
                wanted = query.get("status", "approved")
                occurrence = query.get("occurrence_id")
                rows = [
                    {k: v for k, v in r.items() if not k.startswith("_")}
                    for r in webinar.registrants
                    if r["status"] == wanted
                    and (not occurrence or not r["_occurrences"] or occurrence in r["_occurrences"])
                ]
                return 200, self._page(rows, "registrants", query)
            if pieces[:2] == ["v2", "past_webinars"] and len(pieces) == 4 and pieces[3] == "instances":
                webinar = self.webinars.get(pieces[2])
                if webinar is None:
                    return 404, {"code": 3001, "message": "Webinar does not exist."}
                return 200, {
                    "webinars": [{"uuid": i["uuid"], "start_time": i["start_time"]} for i in webinar.instances]
                }
            if pieces[:2] == ["v2", "past_webinars"] and len(pieces) == 4 and pieces[3] == "participants":
                uuid = unquote(pieces[2])  # a double-encoded UUID is decoded twice
                for webinar in self.webinars.values():
                    for instance in webinar.instances:
                        if instance["uuid"] == uuid:
                            return 200, self._page(list(instance["participants"]), "participants", query)
                return 404, {"code": 3001, "message": "This webinar instance does not exist."}
        return 404, {"code": 404, "message": "no such endpoint in the fake"}

    @staticmethod
    def _page(rows: list[dict[str, Any]], key: str, query: dict[str, str]) -> dict[str, Any]:
        size = min(int(query.get("page_size") or 30), 300)
        token = query.get("next_page_token") or ""
        offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        chunk = rows[offset : offset + size]
        more = offset + size < len(rows)
        return {
            "page_size": size,
            "total_records": len(rows),
            "next_page_token": base64.urlsafe_b64encode(str(offset + size).encode()).decode() if more else "",
            key: chunk,
        }


def now_stamp() -> int:
    return int(time.time())
