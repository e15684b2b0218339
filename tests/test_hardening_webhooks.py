"""Hostile webhook payloads (issue 9 item 7): a clear 4xx or a clean accept, never a 5xx or a traceback.

Written against funnel.sendgrid.webhook,
funnel/web/webhooks.py and tests/webhook_signing.py.

- `funnel.sendgrid.webhook.parse_events` on arbitrary bytes: events and skipped reasons, or
  WebhookRefused(400); never another exception.
- `POST /webhooks/sendgrid` on a real `funnel serve` (one per module): signed posts of
  arbitrary event lists are answered 200 with every item accounted for (stored +
  duplicates + skipped == items), the same post again stores nothing; unsigned,
  badly signed or stale posts get 4xx; no answer is ever 5xx.

Watch on PostgreSQL: a NUL character (\\u0000) in an event's text or raw JSON is
refused by PostgreSQL's text and jsonb types; the `nul` examples below make sure that
is a clean accept (the NUL dropped) rather than a 500.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import REPO, SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_signing import Signer

from funnel.sendgrid.webhook import WebhookRefused, parse_events

NOW = "2026-12-08T16:00:00Z"
NOW_AT = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = [
    "processed",
    "delivered",
    "open",
    "click",
    "bounce",
    "dropped",
    "deferred",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "group_resubscribe",
    "blocked",
    "Bounce",
    " open ",
    "",
    "nonsense",
]
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u2028",
    "\ufeff",
    "x" * 5000,
    "ana@example.test",
    "ANA@EXAMPLE.TEST",
    "<script>",
    "'; DROP TABLE contacts; --",
    "🙂",
]
texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=30))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": draw(st.one_of(st.sampled_from(KINDS), anything)),
        "timestamp": draw(
            st.one_of(
                st.just(int(NOW_AT.timestamp())),
                st.integers(-(10**15), 10**15),
                st.floats(),
                st.text(max_size=12),
                st.none(),
            )
        ),
        "email": draw(st.one_of(texts, anything)),
    }
    if draw(st.booleans()):
        event["sg_event_id"] = draw(st.one_of(st.builds(lambda n: f"e{n}", st.integers(0, 20)), anything))
    for name in ("funnel_send_id", "funnel_sequence", "funnel_step", "reason", "status", "type", "response"):
        if draw(st.integers(0, 2)) == 0:
            event[name] = draw(anything)
    event.update(draw(st.dictionaries(texts, anything, max_size=2)))
    return event


bodies = st.one_of(
    st.lists(events(), max_size=8).map(lambda items: json.dumps(items).encode()),
    st.lists(anything, max_size=4).map(lambda items: json.dumps(items).encode()),
    anything.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
)


@SETTINGS
@given(body=bodies)
def test_parse_events_accepts_or_refuses_with_400(body: bytes) -> None:
    try:
        parsed, skipped = parse_events(body)
    except WebhookRefused as refused:
        assert refused.status == 400 and refused.reason
        return
    items = json.loads(body)
    assert len(parsed) + len(skipped) == len(items)


@pytest.fixture(scope="module")
def webhook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Signer]]:
    from web_server import FunnelServer

    root = tmp_path_factory.mktemp("webhooks")
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "signups").mkdir()
    signer = Signer()
    env = {"FUNNEL_SECRET_KEY": SECRET, "FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64}
    server = FunnelServer(root, ("--now", NOW), env).start()
    try:
        yield server, signer
    finally:
        server.stop()


@SETTINGS
@given(items=st.lists(events(), max_size=8))
def test_any_signed_batch_is_accounted_for_and_stored_once(webhook_server: tuple[Any, Signer], items: list) -> None:
    server, signer = webhook_server
    body = json.dumps(items).encode()
    headers = {"content-type": "application/json", **signer.headers(body, NOW_AT)}
    with server.client() as http:
        first = http.post("/webhooks/sendgrid", content=body, headers=headers)
        assert first.status_code == 200, (first.status_code, first.text[:300])
        outcome = first.json()
        assert outcome["stored"] + outcome["duplicates"] + len(outcome["skipped"]) == len(items), outcome
        again = http.post("/webhooks/sendgrid", content=body, headers=headers).json()
        assert again["stored"] == 0, again


@SETTINGS
@given(
    body=bodies,
    signing=st.sampled_from(["none", "good", "other key", "stale", "future", "garbage"]),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
)
def test_any_webhook_post_is_answered_without_a_server_error(
    webhook_server: tuple[Any, Signer], body: bytes, signing: str, content_type: str
) -> None:
    server, signer = webhook_server
    headers: dict[str, str] = {"content-type": content_type} if content_type else {}
    if signing == "good":
        headers.update(signer.headers(body, NOW_AT))
    elif signing == "other key":
        headers.update(Signer().headers(body, NOW_AT))
    elif signing == "stale":
        headers.update(signer.headers(body, NOW_AT - timedelta(hours=2)))
    elif signing == "future":
        headers.update(signer.headers(body, NOW_AT + timedelta(hours=2)))
    elif signing == "garbage":
        headers.update({k: "not base64 !!" for k in signer.headers(body, NOW_AT)})
    with server.client() as http:
        answer = http.post("/webhooks/sendgrid", content=body, headers=headers)
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    if signing != "good":
        assert 400 <= answer.status_code < 500, (signing, answer.status_code)


def test_text_with_nul_characters_is_stored_cleanly(webhook_server: tuple[Any, Signer]) -> None:
    """PostgreSQL refuses NUL in text and jsonb: an event carrying one must still be a clean 200."""
    server, signer = webhook_server
    items = [
        {
            "event": "bounce",
            "timestamp": int(NOW_AT.timestamp()),
            "email": "a\x00@example.test",
            "sg_event_id": "nul-1",
            "reason": "550\x00 no",
            "extra\x00": "v\x00",
        },
    ]
    body = json.dumps(items).encode()
    with server.client() as http:
        answer = http.post(
            "/webhooks/sendgrid",
            content=body,
            headers={"content-type": "application/json", **signer.headers(body, NOW_AT)},
        )
    assert answer.status_code == 200, answer.text[:300]
