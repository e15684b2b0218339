"""Zoom's API and webhooks: the client, its token, and the checks on a post (spec section 11).

The client speaks Server-to-Server OAuth: the token is kept per process until shortly
before it expires, and a 401 takes a new one once. 429 waits as `Retry-After` says
(through `SLEEP`, replaceable in tests) up to `MAX_WAIT` in all; 5xx and dropped
connections are tried twice more; anything else is a `ZoomError` in words. Nothing
here logs a secret, a token or a person's data. The webhook checks are pure
functions of (headers, raw body, secret, now).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from funnel.errors import FunnelError

DEFAULT_OAUTH_URL = "https://zoom.us"
DEFAULT_API_BASE = "https://api.zoom.us/v2"
#: the most seconds one client waits for rate limits in all (a run must end; the next picks up)
MAX_WAIT = 60.0
#: a single Retry-After longer than this is not waited for at all
MAX_ONE_WAIT = 30.0
#: seconds before a token's expiry at which a new one is taken
TOKEN_MARGIN = 60.0
#: a webhook post whose timestamp is further than this from now is refused (stale or from the future)
FRESH_SECONDS = 300
TIMEOUT = 20.0
PAGE_SIZE = 300

#: how waits happen: `time.sleep`, replaced in tests by one that records and returns at once
SLEEP: Callable[[float], None] = time.sleep


class ZoomError(FunnelError):
    """Zoom could not be read: the sentence says why and what to do."""

    exit_code = 1


@dataclass(frozen=True)
class ZoomSettings:
    """The app's credentials and where Zoom is (environment or .env; never in sequences.yaml)."""

    account_id: str
    client_id: str
    client_secret: str
    oauth_url: str = DEFAULT_OAUTH_URL
    api_base: str = DEFAULT_API_BASE

    @classmethod
    def from_env(cls) -> ZoomSettings:
        missing = [n for n in ("ZOOM_ACCOUNT_ID", "ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET") if not os.environ.get(n)]
        if missing:
            raise ZoomError(
                f"{', '.join(missing)} not set: put the Server-to-Server OAuth app's account id, client id "
                "and client secret in .env (see docs/zoom.md)"
            )
        return cls(
            os.environ["ZOOM_ACCOUNT_ID"].strip(),
            os.environ["ZOOM_CLIENT_ID"].strip(),
            os.environ["ZOOM_CLIENT_SECRET"].strip(),
            os.environ.get("FUNNEL_ZOOM_OAUTH_URL", "").strip().rstrip("/") or DEFAULT_OAUTH_URL,
            os.environ.get("FUNNEL_ZOOM_API_BASE", "").strip().rstrip("/") or DEFAULT_API_BASE,
        )


#: tokens by (oauth url, account, client id): (token, monotonic expiry); shared by a serve's threads
_TOKENS: dict[tuple[str, str, str], tuple[str, float]] = {}
_TOKENS_LOCK = threading.Lock()


@dataclass
class ZoomClient:
    """GET requests to Zoom's API with a bearer token; counts what it asked (`requests`)."""

    settings: ZoomSettings
    requests: int = 0
    waited: float = 0.0
    waits: list[float] = field(default_factory=list)

    # ----------------------------------------------------------------- token

    def _key(self) -> tuple[str, str, str]:
        return (self.settings.oauth_url, self.settings.account_id, self.settings.client_id)

    def token(self, *, fresh: bool = False) -> str:
        with _TOKENS_LOCK:
            held = _TOKENS.get(self._key())
            if held is not None and not fresh and held[1] > time.monotonic():
                return held[0]
        query = urllib.parse.urlencode({"grant_type": "account_credentials", "account_id": self.settings.account_id})
        basic = base64.b64encode(f"{self.settings.client_id}:{self.settings.client_secret}".encode()).decode()
        status, _headers, body = self._request(
            "POST", f"{self.settings.oauth_url}/oauth/token?{query}", {"Authorization": f"Basic {basic}"}
        )
        if status in (400, 401, 403):
            raise ZoomError(
                f"Zoom refused the app's credentials ({status}: {_reason(body)}): check ZOOM_ACCOUNT_ID, "
                "ZOOM_CLIENT_ID and ZOOM_CLIENT_SECRET in .env, and that the app is activated"
            )
        if status != 200 or not isinstance(body, dict) or not body.get("access_token"):
            raise ZoomError(f"Zoom's token endpoint answered {status} ({_reason(body)}): the next run tries again")
        token = str(body["access_token"])
        lifetime = float(body.get("expires_in") or 3600)
        with _TOKENS_LOCK:
            _TOKENS[self._key()] = (token, time.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0))
        return token

    def forget_token(self) -> None:
        with _TOKENS_LOCK:
            _TOKENS.pop(self._key(), None)

    # ----------------------------------------------------------------- requests

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call's JSON; 401 takes a new token once, 429 waits, 5xx is tried twice more."""
        url = f"{self.settings.api_base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})
        renewed = False
        failures = 0
        while True:
            token = self.token()
            status, headers, body = self._request("GET", url, {"Authorization": f"Bearer {token}"})
            if status == 200 and isinstance(body, dict):
                return body
            if status == 401 and not renewed:
                renewed = True
                self.forget_token()
                continue
            if status == 401:
                raise ZoomError(
                    f"Zoom refused a new token too ({_reason(body)}): check the app's scopes in Zoom's "
                    "marketplace (see docs/zoom.md)"
                )
            if status == 429:
                self._wait(headers.get("retry-after"), path)
                continue
            if status is None or status >= 500:
                failures += 1
                if failures > 2:
                    what = "did not answer" if status is None else f"answered {status}"
                    raise ZoomError(f"Zoom {what} for {_shape(path)} three times: the next run tries again")
                self._pause(0.5 * failures)
                continue
            if status == 404:
                raise ZoomError(f"Zoom knows no {_shape(path)} (404: {_reason(body)}): check webinar_id")
            raise ZoomError(f"Zoom answered {status} for {_shape(path)} ({_reason(body)})")

    def pages(self, path: str, key: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a listing, following `next_page_token` until it is empty."""
        query = {"page_size": PAGE_SIZE, **(params or {})}
        token = ""
        while True:
            page = self.get(path, {**query, "next_page_token": token})
            yield page
            token = str(page.get("next_page_token") or "")
            if not token or not page.get(key):
                return

    def _wait(self, retry_after: str | None, path: str) -> None:
        try:
            seconds = max(float(retry_after or 1), 0.0)
        except ValueError:
            seconds = 1.0
        if seconds > MAX_ONE_WAIT or self.waited + seconds > MAX_WAIT:
            raise ZoomError(
                f"Zoom's rate limit asks to wait {seconds:.0f} s for {_shape(path)}: the rest is read by the next run"
            )
        self._pause(seconds)

    def _pause(self, seconds: float) -> None:
        self.waited += seconds
        self.waits.append(seconds)
        SLEEP(seconds)

    def _request(self, method: str, url: str, headers: dict[str, str]) -> tuple[int | None, dict[str, str], Any]:
        self.requests += 1
        request = urllib.request.Request(url, method=method, headers={**headers, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310  # http(s) only: our URLs
                return answer.status, _lower(answer.headers), _json(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _lower(exc.headers), _json(exc.read())
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
            return None, {}, None


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers.items() if headers else [])}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        text = body.get("message") or body.get("reason") or body.get("error") or ""
        return str(text)[:200] or "no reason given"
    return "no reason given"


def _shape(path: str) -> str:
    """The kind of call, without ids (they are not secret, but a UUID says nothing to a person)."""
    if "/participants" in path:
        return "a session's participants"
    if "/instances" in path:
        return "the webinar's past sessions"
    if "/registrants" in path:
        return "the webinar's registrants"
    return "the webinar"


def quote_uuid(uuid: str) -> str:
    """A webinar instance's UUID in a path: double-encoded when it begins with / or holds // (Zoom's rule)."""
    once = urllib.parse.quote(uuid, safe="")
    if uuid.startswith("/") or "//" in uuid:
        return urllib.parse.quote(once, safe="")
    return once


# --------------------------------------------------------------------------- webhooks


class WebhookRefused(Exception):
    """A post that is not Zoom's (forged, stale, replayed): 401, nothing changes."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`v0=` + hex HMAC-SHA256(secret, `v0:{timestamp}:{raw body}`)."""
    message = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_post(headers: dict[str, str], body: bytes, secret: str, now: datetime) -> str:
    """Refuse a post not signed with `secret`, or whose timestamp is not fresh; the signature when good."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stamp = lowered.get("x-zm-request-timestamp", "").strip()
    given = lowered.get("x-zm-signature", "").strip()
    if not stamp or not given:
        raise WebhookRefused("the post carries no x-zm-signature or x-zm-request-timestamp")
    expected = signature(secret, stamp, body)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebhookRefused("the signature does not match ZOOM_WEBHOOK_SECRET")
    try:
        seconds = float(stamp)
    except ValueError:
        raise WebhookRefused("the timestamp is not a number") from None
    if seconds > 1e11:  # milliseconds
        seconds /= 1000
    if abs(now.timestamp() - seconds) > FRESH_SECONDS:
        raise WebhookRefused("the timestamp is stale (or from the future): a replayed post")
    return given


def url_validation(secret: str, plain_token: str) -> dict[str, str]:
    """The answer to `endpoint.url_validation`: the token and its hex HMAC-SHA256 with the secret."""
    encrypted = hmac.new(secret.encode(), plain_token.encode(), hashlib.sha256).hexdigest()
    return {"plainToken": plain_token, "encryptedToken": encrypted}
