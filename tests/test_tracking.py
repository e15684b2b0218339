"""The event webhook's pure checks: real P-256 signatures made here, freshness, unsigned posts, odd events."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from webhook_signing import Signer

from funnel.sendgrid.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventKind,
    WebhookRefused,
    check_post,
    load_public_key,
    normalise,
    parse_events,
    scrubbed,
)

NOW = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "email": "ana@example.test",
        "timestamp": int(NOW.timestamp()),
        "event": "delivered",
        "sg_event_id": "ev-1",
        "sg_message_id": "abc.filter",
        "funnel_send_id": "send-1",
        "funnel_sequence": "webinar-relationship-911",
        "funnel_step": "registered",
    }
    base.update(fields)
    return base


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_a_post_signed_with_the_matching_key_is_accepted(signer: Signer) -> None:
    body = json.dumps([event()]).encode()
    key = load_public_key(signer.public_b64)
    assert check_post(signer.headers(body, NOW), body, key, False, NOW) == "signed"


def test_header_names_match_in_any_case(signer: Signer) -> None:
    body = b"[]"
    headers = {name.lower(): value for name, value in signer.headers(body, NOW).items()}
    assert check_post(headers, body, load_public_key(signer.public_b64), False, NOW) == "signed"


def test_a_changed_body_or_another_key_is_refused(signer: Signer) -> None:
    body = json.dumps([event()]).encode()
    key = load_public_key(signer.public_b64)
    headers = signer.headers(body, NOW)
    with pytest.raises(WebhookRefused) as tampered:
        check_post(headers, body.replace(b"delivered", b"bounce"), key, False, NOW)
    assert tampered.value.status == 403
    forger = Signer()
    with pytest.raises(WebhookRefused) as forged:
        check_post(forger.headers(body, NOW), body, key, False, NOW)
    assert forged.value.status == 403
    # the signature covers the timestamp too: moving it breaks the signature
    moved = {**headers, TIMESTAMP_HEADER: str(int(NOW.timestamp()) + 1)}
    with pytest.raises(WebhookRefused):
        check_post(moved, body, key, False, NOW)
    garbled = {**headers, SIGNATURE_HEADER: "not base64!"}
    with pytest.raises(WebhookRefused):
        check_post(garbled, body, key, False, NOW)


def test_the_raw_body_is_verified_not_a_reserialisation(signer: Signer) -> None:
    body = b'[ {"event":"open",  "sg_event_id":"x", "timestamp": 1796745600} ]'
    key = load_public_key(signer.public_b64)
    assert check_post(signer.headers(body, NOW), body, key, False, NOW) == "signed"
    same_json = json.dumps(json.loads(body)).encode()
    with pytest.raises(WebhookRefused):
        check_post(signer.headers(body, NOW), same_json, key, False, NOW)


@pytest.mark.parametrize("offset", [timedelta(minutes=-11), timedelta(minutes=11), timedelta(days=-1)])
def test_a_stale_or_future_timestamp_is_refused(signer: Signer, offset: timedelta) -> None:
    body = b"[]"
    with pytest.raises(WebhookRefused) as refused:
        check_post(signer.headers(body, NOW + offset), body, load_public_key(signer.public_b64), False, NOW)
    assert refused.value.status == 403 and "stale" in refused.value.reason


def test_a_timestamp_within_ten_minutes_is_fresh(signer: Signer) -> None:
    body = b"[]"
    key = load_public_key(signer.public_b64)
    for offset in (timedelta(minutes=-9, seconds=-59), timedelta(minutes=9)):
        assert check_post(signer.headers(body, NOW + offset), body, key, False, NOW) == "signed"


def test_unsigned_posts_are_refused_unless_the_config_allows_them_and_no_key_is_set(signer: Signer) -> None:
    key = load_public_key(signer.public_b64)
    with pytest.raises(WebhookRefused) as with_key:
        check_post({}, b"[]", key, False, NOW)
    assert with_key.value.status == 401
    with pytest.raises(WebhookRefused) as without_key:
        check_post({}, b"[]", None, False, NOW)
    assert without_key.value.status == 401 and "FUNNEL_SENDGRID_WEBHOOK_KEY" in without_key.value.reason
    assert check_post({}, b"[]", None, True, NOW) == "unsigned"
    # with a key set, every post must be signed, whatever webhook_unsigned says (issue 16, 3.7)
    with pytest.raises(WebhookRefused) as unsigned_with_key:
        check_post({}, b"[]", key, True, NOW)
    assert unsigned_with_key.value.status == 401
    assert check_post(signer.headers(b"[]", NOW), b"[]", key, True, NOW) == "signed"
    # a post that does carry a signature is still checked when a key is set
    with pytest.raises(WebhookRefused):
        check_post(Signer().headers(b"[]", NOW), b"[]", key, True, NOW)


def test_a_bad_key_is_a_sentence_naming_the_variable() -> None:
    for bad in ("not a key", base64.b64encode(b"garbage").decode()):
        with pytest.raises(ValueError, match="FUNNEL_SENDGRID_WEBHOOK_KEY"):
            load_public_key(bad)
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = other_curve.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="P-256"):
        load_public_key(base64.b64encode(der).decode())


def test_a_pem_key_is_accepted_too(signer: Signer) -> None:
    pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert load_public_key(pem.decode()).public_numbers() == load_public_key(signer.public_b64).public_numbers()


def test_events_are_normalised_to_our_kinds_with_the_send_they_belong_to() -> None:
    parsed = normalise(event())
    assert parsed.kind is EventKind.DELIVERED
    assert parsed.occurred_at == NOW
    assert (parsed.send_id, parsed.sequence, parsed.step) == ("send-1", "webinar-relationship-911", "registered")
    assert parsed.raw["sg_message_id"] == "abc.filter"  # the event is kept as it came
    for name in (
        "processed",
        "dropped",
        "deferred",
        "open",
        "click",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    ):
        assert normalise(event(event=name)).kind.value == name
    blocked = normalise(event(event="bounce", type="blocked", reason="554 reputation"))
    assert blocked.kind is EventKind.BLOCKED and not blocked.suppresses
    bounce = normalise(event(event="bounce", type="bounce", status="5.1.1", reason="550 no such user"))
    assert bounce.kind is EventKind.BOUNCE and bounce.suppresses
    assert bounce.reason == "5.1.1 550 no such user"
    for name in ("dropped", "spamreport", "unsubscribe", "group_unsubscribe"):
        assert normalise(event(event=name)).suppresses
    for name in ("delivered", "open", "click", "deferred", "processed", "group_resubscribe"):
        assert not normalise(event(event=name)).suppresses


def test_one_bad_event_is_skipped_with_a_reason_and_the_others_are_kept() -> None:
    body = json.dumps(
        [
            event(sg_event_id="a"),
            "a string",
            event(sg_event_id="b", event="exploded"),
            event(sg_event_id="c", timestamp="soon"),
            {"sg_event_id": "d"},
            event(sg_event_id="e", event="open"),
            event(sg_event_id=12),
        ]
    ).encode()
    events, skipped = parse_events(body)
    assert [e.sg_event_id for e in events] == ["a", "e"]
    assert [(s.index, s.reason) for s in skipped] == [
        (1, "not a JSON object"),
        (2, "unknown event 'exploded'"),
        (3, "`timestamp` is not a unix time"),
        (4, "no `event` name"),
        (6, "`sg_event_id` is not a short string"),
    ]


def test_a_body_that_is_not_a_json_list_is_refused_whole() -> None:
    for body in (b"{}", b'{"event": "open"}', b"not json", b"\xff\xfe", b""):
        with pytest.raises(WebhookRefused) as refused:
            parse_events(body)
        assert refused.value.status == 400


def test_an_event_without_an_id_gets_a_stable_digest() -> None:
    raw = event()
    del raw["sg_event_id"]
    first, second = normalise(raw), normalise(dict(raw))
    assert first.sg_event_id == second.sg_event_id and first.sg_event_id.startswith("sha256:")


def test_scrubbing_removes_what_identifies_a_person() -> None:
    raw = event(event="click", ip="203.0.113.9", useragent="Mail/1.0", url="https://x.test/?e=ana", reason="r")
    kept = scrubbed(raw)
    assert not {"email", "ip", "useragent", "url", "reason"} & set(kept)
    assert kept["event"] == "click" and kept["sg_event_id"] == "ev-1" and kept["funnel_step"] == "registered"
