"""SendGrid transport: the payload as a pure function, and the wire behaviour
against a real local HTTP server through the official client."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from fake_sendgrid import AUTH_ERROR, FakeSendGrid

from funnel.errors import TransportError
from funnel.sendgrid.send import (
    MAX_RETRY_AFTER,
    SendGridTransport,
    fetch_suppressions,
    retry_after_seconds,
    sendgrid_payload,
)
from funnel.transports.base import Address, Attachment, OutgoingEmail

KEY = "SG.test-key-0123456789"
RECIPIENT = "ada.lovelace@example.org"
UNSUB_HEADERS = (
    ("List-Unsubscribe", "<https://praxis.example/u/tok123>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
)


def make_email(**overrides: Any) -> OutgoingEmail:
    """A realistic rendered email; tests override only what they look at."""
    fields: dict[str, Any] = {
        "send_id": "s-1",
        "sender": Address("praxis@example.com", "Praxis Dr. Kim"),
        "to": Address(RECIPIENT, "Ada Lovelace"),
        "subject": "Your webinar starts tomorrow",
        "text": "Hello Ada\n\nUnsubscribe: https://praxis.example/u/tok123",
        "html": "<p>Hello Ada</p>",
        "headers": UNSUB_HEADERS,
        "reply_to": Address("reply@example.com"),
        "custom_args": (("sequence", "webinar"), ("step", "reminder-1"), ("send_id", "s-1")),
        "categories": ("webinar",),
        "tracking_opens": True,
        "tracking_clicks": True,
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)


# --------------------------------------------------------------------------- payload


def test_payload_normal_email_exact() -> None:
    assert sendgrid_payload(make_email(), sandbox=False) == {
        "personalizations": [{"to": [{"email": RECIPIENT, "name": "Ada Lovelace"}]}],
        "from": {"email": "praxis@example.com", "name": "Praxis Dr. Kim"},
        "reply_to": {"email": "reply@example.com"},
        "subject": "Your webinar starts tomorrow",
        "content": [
            {
                "type": "text/plain",
                "value": "Hello Ada\n\nUnsubscribe: https://praxis.example/u/tok123",
            },
            {"type": "text/html", "value": "<p>Hello Ada</p>"},
        ],
        "headers": {
            "List-Unsubscribe": "<https://praxis.example/u/tok123>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "custom_args": {"sequence": "webinar", "step": "reminder-1", "send_id": "s-1"},
        "categories": ["webinar"],
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True},
            "subscription_tracking": {"enable": False},
        },
        "mail_settings": {"sandbox_mode": {"enable": False}},
    }


def test_payload_text_only_discreet_email_exact() -> None:
    email = make_email(
        html=None,
        to=Address(RECIPIENT),
        sender=Address("praxis@example.com"),
        reply_to=None,
        categories=(),
        custom_args=(("send_id", "s-2"),),
        tracking_opens=False,
        tracking_clicks=False,
    )
    assert sendgrid_payload(email, sandbox=False) == {
        "personalizations": [{"to": [{"email": RECIPIENT}]}],
        "from": {"email": "praxis@example.com"},
        "subject": "Your webinar starts tomorrow",
        "content": [{"type": "text/plain", "value": email.text}],
        "headers": dict(UNSUB_HEADERS),
        "custom_args": {"send_id": "s-2"},
        "tracking_settings": {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
            "subscription_tracking": {"enable": False},
        },
        "mail_settings": {"sandbox_mode": {"enable": False}},
    }


def test_payload_carries_attachments_base64() -> None:
    ics = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n"
    email = make_email(attachments=(Attachment("invite.ics", ics, "text/calendar", (("method", "PUBLISH"),)),))
    payload = sendgrid_payload(email, sandbox=False)
    assert payload["attachments"] == [
        {
            "content": base64.b64encode(ics).decode("ascii"),
            "type": "text/calendar",
            "filename": "invite.ics",
            "disposition": "attachment",
        }
    ]
    assert "attachments" not in sendgrid_payload(make_email(), sandbox=False)


@pytest.mark.parametrize(("opens", "clicks"), [(False, False), (True, False), (False, True)])
def test_payload_tracking_follows_the_email(opens: bool, clicks: bool) -> None:
    payload = sendgrid_payload(make_email(tracking_opens=opens, tracking_clicks=clicks), sandbox=False)
    assert payload["tracking_settings"] == {
        "click_tracking": {"enable": clicks, "enable_text": False},
        "open_tracking": {"enable": opens},
        # ours are the one-click path; SendGrid's own would add a second one
        "subscription_tracking": {"enable": False},
    }


def test_payload_sandbox_on() -> None:
    payload = sendgrid_payload(make_email(), sandbox=True)
    assert payload["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert (
        sendgrid_payload(make_email(), sandbox=False) | {"mail_settings": {"sandbox_mode": {"enable": True}}} == payload
    )


def test_custom_args_values_are_strings() -> None:
    email = make_email(custom_args=(("step_index", 3), ("send_id", "s-1"), ("flag", True)))
    custom_args = sendgrid_payload(email, sandbox=False)["custom_args"]
    assert custom_args == {"step_index": "3", "send_id": "s-1", "flag": "True"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in custom_args.items())


def test_subject_line_breaks_are_flattened() -> None:
    payload = sendgrid_payload(make_email(subject="Hello\r\nworld"), sandbox=False)
    assert payload["subject"] == "Hello world"


@pytest.mark.parametrize(
    "overrides",
    [
        {"categories": tuple(f"c{i}" for i in range(11))},
        {"categories": ("x" * 256,)},
        {"custom_args": (("big", "x" * 10_000),)},
    ],
)
def test_payload_refuses_what_sendgrid_would_400(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sendgrid_payload(make_email(**overrides), sandbox=False)


# --------------------------------------------------------------------------- retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": "0"}, 0.0),
        (
            {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 42, UTC), usegmt=True)},
            42.0,
        ),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 42, UTC), usegmt=True)}, 0.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 30)}, 30.0),
        ({"X-RateLimit-Reset": str(int(NOW) - 30)}, 0.0),
        ({"Retry-After": "5", "X-RateLimit-Reset": str(int(NOW) + 30)}, 5.0),
        ({"Retry-After": "99999"}, MAX_RETRY_AFTER),
        ({"X-RateLimit-Reset": str(int(NOW) + 3600)}, MAX_RETRY_AFTER),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "soon", "X-RateLimit-Reset": str(int(NOW) + 10)}, 10.0),
        ({"Retry-After": "nan"}, None),
        ({"X-RateLimit-Reset": "tomorrow"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == expected


# --------------------------------------------------------------------------- against the fake


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSendGrid]:
    """A running fake SendGrid; proxies must not intercept 127.0.0.1."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with FakeSendGrid(api_key=KEY) as server:
        yield server


def transport_for(fake: FakeSendGrid, **kwargs: Any) -> SendGridTransport:
    kwargs.setdefault("timeout", 5.0)
    return SendGridTransport(KEY, host=fake.url, **kwargs)


def assert_clean(message: str) -> None:
    """Messages go to logs and the database: no recipient, no key."""
    assert RECIPIENT.lower() not in message.lower()
    assert KEY not in message


def test_send_202_returns_message_id(fake: FakeSendGrid) -> None:
    transport = transport_for(fake)
    result = transport.send(make_email())
    transport.close()

    assert len(fake.accepted) == 1
    accepted = fake.accepted[0]
    assert accepted["status"] == 202
    assert result.message_id == accepted["message_id"]
    assert accepted["body"] == sendgrid_payload(make_email(), sandbox=False)
    assert accepted["headers"]["Authorization"] == f"Bearer {KEY}"
    assert accepted["headers"]["Content-Type"] == "application/json"
    assert fake.sent_to(RECIPIENT.upper()) == 1


def test_send_makes_the_official_clients_own_request(fake: FakeSendGrid) -> None:
    """The transport keeps one urllib opener per thread instead of the client building one per
    call; what goes on the wire stays exactly what `client.mail.send.post` sends."""
    import sendgrid

    email = make_email()
    official = sendgrid.SendGridAPIClient(api_key=KEY, host=fake.url)
    official.client.mail.send.post(request_body=sendgrid_payload(email, sandbox=False))
    transport = transport_for(fake)
    transport.send(email)
    transport.send(email)  # the kept opener, a second time
    transport.close()

    theirs, *ours = fake.requests
    for mine in ours:
        assert (mine["method"], mine["path"], mine["query"]) == (theirs["method"], theirs["path"], theirs["query"])
        assert mine["body"] == theirs["body"]
        assert mine["headers"] == theirs["headers"]


def test_https_uses_one_verifying_tls_context() -> None:
    """Each sending thread's opener makes HTTPS connections with one shared default context: the
    certificate bundle is loaded once, not for every email, and verification stays as strict."""
    import ssl
    import urllib.request

    from funnel.sendgrid.send import _opener

    contexts = []
    for opener in (_opener(), _opener()):
        (https,) = [h for h in opener.handlers if isinstance(h, urllib.request.HTTPSHandler)]
        contexts.append(https._context)  # the context urllib hands to http.client for each connection
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname


def test_send_sandbox_200(fake: FakeSendGrid) -> None:
    result = transport_for(fake, sandbox=True).send(make_email())
    assert fake.accepted[0]["status"] == 200
    assert fake.accepted[0]["body"]["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert result.message_id == fake.accepted[0]["message_id"]


def test_429_is_retryable_with_retry_after(fake: FakeSendGrid) -> None:
    transport = transport_for(fake)
    fake.fail_next(1, status=429, retry_after="7")
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    err = info.value
    assert (err.retryable, err.fatal, err.status, err.retry_after) == (True, False, 429, 7.0)
    assert_clean(str(err))
    # exactly one call, and the next one goes through: no hidden retry
    assert len(fake.requests) == 1
    assert transport.send(make_email()).message_id
    assert fake.sent_to(RECIPIENT) == 1


def test_429_with_ratelimit_reset(fake: FakeSendGrid) -> None:
    reset = int(datetime.now(UTC).timestamp()) + 120
    fake.fail_next(1, status=429, retry_after=None, headers={"X-RateLimit-Reset": str(reset)})
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(make_email())
    assert info.value.retryable
    assert info.value.retry_after is not None
    assert 100 <= info.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(fake: FakeSendGrid, status: int) -> None:
    fake.fail_next(1, status=status)
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(make_email())
    err = info.value
    assert (err.retryable, err.fatal, err.status, err.retry_after) == (True, False, status, None)
    assert_clean(str(err))


def test_400_for_one_address_fails_that_email_only(fake: FakeSendGrid) -> None:
    fake.reject_address(RECIPIENT, message="Does not contain a valid address.")
    transport = transport_for(fake)
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    err = info.value
    assert (err.retryable, err.fatal, err.status) == (False, False, 400)
    assert str(err) == "SendGrid 400: Does not contain a valid address."
    assert_clean(str(err))
    # every time, and others still go through
    with pytest.raises(TransportError):
        transport.send(make_email())
    assert transport.send(make_email(to=Address("bob@example.net"))).message_id
    assert fake.sent_to(RECIPIENT) == 0
    assert fake.sent_to("bob@example.net") == 1


def test_error_message_never_echoes_the_address(fake: FakeSendGrid) -> None:
    fake.reject_address(RECIPIENT, message=f"The address {RECIPIENT.upper()} is not valid.")
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(make_email())
    assert str(info.value) == "SendGrid 400: The address <redacted> is not valid."


def test_non_json_error_body_is_truncated(fake: FakeSendGrid) -> None:
    fake.fail_next(1, status=413, body=b"<html>\n<h1>Too large</h1>" + b"y" * 1000)
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(make_email())
    message = str(info.value)
    assert message.startswith("SendGrid 413: <html> <h1>Too large</h1>yyy")
    assert message.endswith("...")
    assert len(message) < 250
    assert (info.value.retryable, info.value.status) == (False, 413)


def test_wrong_key_401_is_fatal(fake: FakeSendGrid) -> None:
    transport = SendGridTransport("SG.wrong-key", host=fake.url, timeout=5)
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    err = info.value
    assert (err.fatal, err.retryable, err.status) == (True, False, 401)
    assert "SENDGRID_API_KEY" in str(err)
    assert '"Mail Send" permission' in str(err)
    assert "SG.wrong-key" not in str(err)
    assert fake.requests[0]["status"] == 401
    assert fake.accepted == []


def test_403_everywhere_is_fatal(fake: FakeSendGrid) -> None:
    fake.set_status_for_all(403)
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(make_email())
    assert (info.value.fatal, info.value.status) == (True, 403)
    assert_clean(str(info.value))


def test_slow_answer_is_a_retryable_timeout(fake: FakeSendGrid) -> None:
    fake.delay(2.0)
    transport = transport_for(fake, timeout=0.5)
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    err = info.value
    assert err.retryable and not err.fatal
    assert err.status is None
    assert str(err) == "SendGrid did not answer (timeout after 0.5 s)"


def test_dropped_connection_is_retryable(fake: FakeSendGrid) -> None:
    fake.drop_next(1)
    transport = transport_for(fake)
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    assert info.value.retryable and not info.value.fatal
    assert "did not answer" in str(info.value)
    assert fake.requests[0]["status"] is None
    assert fake.accepted == []
    assert transport.send(make_email()).message_id


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = SendGridTransport(KEY, host=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(TransportError) as info:
        transport.send(make_email())
    assert info.value.retryable
    assert str(info.value).startswith("SendGrid did not answer (connection failed:")
    assert_clean(str(info.value))


def test_unsendable_email_is_not_retryable(fake: FakeSendGrid) -> None:
    email = make_email(categories=tuple(f"c{i}" for i in range(11)))
    with pytest.raises(TransportError) as info:
        transport_for(fake).send(email)
    assert not info.value.retryable and not info.value.fatal
    assert fake.requests == []


def test_concurrent_sends_through_one_transport(fake: FakeSendGrid) -> None:
    transport = transport_for(fake, concurrency=8)
    addresses = [f"person{i}@example.org" for i in range(20)]
    results: dict[str, str | None] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(addresses))

    def worker(addr: str) -> None:
        try:
            barrier.wait(timeout=5)
            email = make_email(to=Address(addr), custom_args=(("send_id", addr),))
            results[addr] = transport.send(email).message_id
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a,)) for a in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    transport.close()

    assert errors == []
    assert len(fake.accepted) == 20
    assert all(fake.sent_to(addr) == 1 for addr in addresses)
    # each request carried its own body and got its own id
    for record in fake.accepted:
        to = record["body"]["personalizations"][0]["to"][0]["email"]
        assert record["body"]["custom_args"] == {"send_id": to}
        assert results[to] == record["message_id"]
    assert len(set(results.values())) == 20


# --------------------------------------------------------------------------- suppressions


def test_fetch_suppressions_pages_through_every_list(fake: FakeSendGrid) -> None:
    for i in range(5):
        fake.add_suppression("bounces", f"bounce{i}@example.org", 1_700_000_000 + i)
    for i in range(3):
        fake.add_suppression("unsubscribe", f"unsub{i}@example.org", 1_700_000_100 + i)
    fake.add_suppression("spam_reports", "spam@example.org", 1_700_000_200)
    fake.add_suppression("invalid_emails", "not-an-address@example", 1_700_000_300)
    fake.add_suppression("blocks", "blocked@example.org", 1_700_000_400)

    rows = fetch_suppressions(KEY, fake.url, 5.0, page_size=2)

    assert sorted(rows) == sorted(
        [(f"bounce{i}@example.org", "bounce", 1_700_000_000 + i) for i in range(5)]
        + [(f"unsub{i}@example.org", "unsubscribe", 1_700_000_100 + i) for i in range(3)]
        + [
            ("spam@example.org", "spamreport", 1_700_000_200),
            ("not-an-address@example", "invalid", 1_700_000_300),
            ("blocked@example.org", "block", 1_700_000_400),
        ]
    )
    bounce_pages = [r["query"] for r in fake.requests if r["path"].endswith("/bounces")]
    assert bounce_pages == [
        {"limit": "2", "offset": "0"},
        {"limit": "2", "offset": "2"},
        {"limit": "2", "offset": "4"},
    ]
    unsub_pages = [r["query"] for r in fake.requests if r["path"].endswith("/unsubscribes")]
    assert [q["offset"] for q in unsub_pages] == ["0", "2"]
    assert all(r["method"] == "GET" for r in fake.requests)


def test_fetch_suppressions_since(fake: FakeSendGrid) -> None:
    fake.add_suppression("bounce", "old@example.org", 1_600_000_000)
    fake.add_suppression("bounce", "new@example.org", 1_700_000_000)
    rows = fetch_suppressions(KEY, fake.url, 5.0, since=1_650_000_000)
    assert rows == [("new@example.org", "bounce", 1_700_000_000)]
    assert all(r["query"]["start_time"] == "1650000000" for r in fake.requests)


def test_fetch_suppressions_wrong_key_is_fatal(fake: FakeSendGrid) -> None:
    with pytest.raises(TransportError) as info:
        fetch_suppressions("SG.nope", fake.url, 5.0)
    assert info.value.fatal and info.value.status == 401
    assert "SG.nope" not in str(info.value)
    assert AUTH_ERROR not in str(info.value)


def test_fetch_suppressions_server_error_is_retryable(fake: FakeSendGrid) -> None:
    fake.add_suppression("bounce", "a@example.org", 1)
    fake.fail_next(1, status=503, retry_after="3")
    with pytest.raises(TransportError) as info:
        fetch_suppressions(KEY, fake.url, 5.0)
    assert (info.value.retryable, info.value.status, info.value.retry_after) == (True, 503, 3.0)
