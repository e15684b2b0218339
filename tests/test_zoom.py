"""Signups straight from Zoom (spec section 11): the client, the source, the webhook, bad input.

Zoom is tests/fake_zoom.py, a real HTTP server on 127.0.0.1; `funnel run` is
the real command in-process; `POST /webhooks/zoom` goes to a real `funnel
serve`. Rate-limit waits go through `funnel.signups.zoom_api.SLEEP`, replaced here by a
list that records them, so no test waits for real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Project, project_db, without_shipped_sessions
from fake_zoom import WEBHOOK_SECRET, FakeZoom, sign

import funnel.signups.zoom_api
from funnel.signups.zoom_api import ZoomClient, ZoomError, ZoomSettings, check_post, url_validation

WEBINAR = "81234567890"
#: Thursday 2027-01-14 19:00 and 2027-02-11 19:00 in Denver
JAN = "2027-01-15T02:00:00Z"
FEB = "2027-02-12T02:00:00Z"
NOW = "2027-01-05T16:00:00Z"
SEQUENCE = "webinar-relationship-911"

ZOOM_SOURCE = """sources:
  zoom-live:
    format: zoom
    webinar_id: "81234567890"
    webinar: relationship-911
    tags: [webinar-registered]
    attended_tags: [webinar-attended]
    enroll: webinar-relationship-911
"""


@pytest.fixture
def zoom(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeZoom]:
    with FakeZoom() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    found: list[float] = []
    monkeypatch.setattr(funnel.signups.zoom_api, "SLEEP", found.append)
    return found


def add_source(project: Project, *, keep_sessions: bool = False) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text()
    if not keep_sessions:
        text = without_shipped_sessions(text)
    path.write_text(text.replace("sources:\n", ZOOM_SOURCE, 1))


def register(zoom: FakeZoom, email: str, **fields: Any) -> dict[str, Any]:
    """A registrant who signed up just before `NOW` (an old one would be late for her confirmation)."""
    return zoom.add_registrant(WEBINAR, email, **{"create_time": "2027-01-05T15:30:00Z", **fields})


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"event": kind, "event_ts": 1, "payload": {"account_id": "acct", "object": obj}}).encode()


def registration(email: str, first: str, tk: str, occurrences: list[tuple[str, str]], webinar: str = WEBINAR) -> bytes:
    return event(
        "webinar.registration_created",
        {
            "id": webinar,
            "uuid": "u-" + webinar,
            "topic": "Evening webinar",
            "type": 9,
            "start_time": occurrences[0][1],
            "duration": 60,
            "timezone": "America/Denver",
            "occurrences": [{"occurrence_id": o, "start_time": s, "duration": 60} for o, s in occurrences],
            "registrant": {
                "id": "r-" + tk,
                "email": email,
                "first_name": first,
                "last_name": "",
                "join_url": f"https://zoom.example.test/w/{webinar}?tk={tk}",
                "create_time": "2027-01-05T15:59:00Z",
            },
        },
    )


# --------------------------------------------------------------------------- the client


def test_the_client_keeps_its_token_renews_it_once_on_401_and_waits_as_retry_after_says(
    zoom: FakeZoom, waits: list[float]
) -> None:
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN)])
    for n in range(650):
        zoom.add_registrant(WEBINAR, f"p{n}@example.test")
    client = ZoomClient(ZoomSettings.from_env())
    assert client.get(f"/webinars/{WEBINAR}")["type"] == 9
    assert client.get(f"/webinars/{WEBINAR}")["occurrences"][0]["occurrence_id"] == "1"
    assert zoom.token_calls() == 1  # kept between calls
    zoom.expire_tokens()
    zoom.fail_next(1, status=429, retry_after="3")
    pages = list(client.pages(f"/webinars/{WEBINAR}/registrants", "registrants", {"status": "approved"}))
    assert [len(p["registrants"]) for p in pages] == [300, 300, 50]
    assert zoom.token_calls() == 2  # one new token after the 401
    assert waits == [3.0]
    zoom.fail_next(2, status=503)
    assert client.get(f"/webinars/{WEBINAR}")["id"] == int(WEBINAR)
    zoom.fail_next(1, status=429, retry_after="3600")
    with pytest.raises(ZoomError, match="rate limit asks to wait 3600 s"):
        client.get(f"/webinars/{WEBINAR}")
    with pytest.raises(ZoomError, match="knows no the webinar|404"):
        client.get("/webinars/999")


def test_refused_credentials_are_one_sentence_without_the_secret(
    zoom: FakeZoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOM_CLIENT_SECRET", "wrong-secret-value")
    with pytest.raises(ZoomError) as caught:
        ZoomClient(ZoomSettings.from_env()).get(f"/webinars/{WEBINAR}")
    assert "ZOOM_CLIENT_SECRET" in str(caught.value) and "wrong-secret-value" not in str(caught.value)
    monkeypatch.delenv("ZOOM_ACCOUNT_ID")
    with pytest.raises(ZoomError, match="ZOOM_ACCOUNT_ID not set"):
        ZoomSettings.from_env()


def test_webhook_checks_are_exact() -> None:
    body = b'{"event":"x"}'
    now = datetime(2027, 1, 5, 16, tzinfo=UTC)
    headers = sign(body, epoch(NOW))
    assert check_post(headers, body, WEBHOOK_SECRET, now) == headers["x-zm-signature"]
    for bad in (
        sign(body, epoch(NOW), secret="another"),
        sign(body, epoch(NOW) - 301),
        sign(body, epoch(NOW) + 301),
        {"x-zm-signature": headers["x-zm-signature"]},
    ):
        with pytest.raises(funnel.signups.zoom_api.WebhookRefused):
            check_post(bad, body, WEBHOOK_SECRET, now)
    with pytest.raises(funnel.signups.zoom_api.WebhookRefused):
        check_post(headers, body + b" ", WEBHOOK_SECRET, now)  # the raw bytes, never re-serialised
    answer = url_validation("abc", "qgg8vlvZRS6UYooatFL8Aw")
    expected = hmac.new(b"abc", b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert answer == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}


# --------------------------------------------------------------------------- a run


def test_a_run_reads_registrants_and_rejects_bad_ones_with_reasons(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    add_source(project)
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN), ("2", FEB)])
    register(zoom, "ana@example.test", first_name="Ana", occurrences=["1"])
    register(zoom, "", first_name="Nomail", occurrences=["1"])
    register(zoom, "bea@example.test", first_name="B\x1bea\x07", occurrences=["1"])
    register(zoom, "cy@example.test", first_name="Cy", occurrences=["2"], join_url="http://plain.test/j")
    register(zoom, "dee@example.test", first_name="Dee", occurrences=["1"], status="pending")
    zoom.fail_next(1, status=429, retry_after="2")
    result = funnel("run", "--now", NOW, "--json")
    summary = result.json()
    assert summary["sources"]["zoom-live"]["status"] == "read"
    assert summary["enrolled"] == 3 and summary["rejected"] == 1
    assert any("no email address" in p for p in summary["problems"])
    assert any("first_name held control characters" in w for w in summary["warnings"])
    assert any("not an https address" in w for w in summary["warnings"])
    assert waits == [2.0]
    sent = sorted((to, step) for to, _seq, step in project.sent())
    assert sent == [
        ("ana@example.test", "registered"),
        ("bea@example.test", "registered"),
        ("cy@example.test", "registered"),
    ]
    bea = funnel("contacts", "show", "bea@example.test", "--json").json()
    assert bea["first_name"] == "B ea"
    cy = [m for m in project.messages() if m["To"].addresses[0].addr_spec == "cy@example.test"][0]
    cy_text = cy.get_body(("plain",)).get_content()
    assert "http://plain.test/j" not in cy_text and "relationship-911/join" in cy_text  # the webinar's own link
    with project_db(project) as db:
        sessions = sorted(r[0] for r in db.execute("SELECT session FROM enrollments"))
    assert sessions == ["2027-01-14 19:00", "2027-01-14 19:00", "2027-02-11 19:00"]  # occurrences as sessions
    # nothing new: a handful of requests, nobody enrolled again
    zoom.reset_log()
    again = funnel("run", "--now", "2027-01-05T16:15:00Z", "--json").json()
    assert again["enrolled"] == 0
    assert len(zoom.api_calls()) == 3  # the webinar, and one page per occurrence


def test_a_zoom_registration_never_renames_someone_already_known(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    """Anyone may type her address into Zoom's public registration page: it names only new people."""
    add_source(project)
    requests = project.root / "signups" / "consultation-requests.jsonl"
    requests.parent.mkdir(exist_ok=True)
    requests.write_text(
        json.dumps({"email": "ana@example.test", "name": "Ana", "discreet": "yes"})
        + "\n"
        + json.dumps({"email": "fay@example.test", "name": ""})
        + "\n"
    )
    funnel("run", "--now", NOW)
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN)])
    register(zoom, "ana@example.test", first_name="Cheater", last_name="Liar", occurrences=["1"])
    register(zoom, "fay@example.test", first_name="Fay", occurrences=["1"])
    register(zoom, "gia@example.test", first_name="Gia", occurrences=["1"])
    funnel("run", "--now", "2027-01-05T16:15:00Z")
    shown = {who: funnel("contacts", "show", f"{who}@example.test", "--json").json() for who in ("ana", "fay", "gia")}
    assert (shown["ana"]["first_name"], shown["ana"]["last_name"]) == ("Ana", None)
    assert shown["ana"]["discreet"] is True  # nor does it switch her discretion off
    assert shown["fay"]["first_name"] is None  # not even a blank name is filled by a stranger
    assert shown["gia"]["first_name"] == "Gia"  # someone new is stored as she registered
    ana = [m for m in project.messages() if m["To"].addresses[0].addr_spec == "ana@example.test"]
    assert ana and all("Cheater" not in m.get_body(("plain",)).get_content() for m in ana)


def test_zoom_down_is_reported_and_the_rest_of_the_run_goes_on(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    add_source(project)
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\nfay@example.test,Fay,,2027-01-14 19:00,,\n",
    )
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN)])
    register(zoom, "ana@example.test", first_name="Ana", occurrences=["1"])
    zoom.fail_next(3, status=502)
    result = funnel("run", "--now", NOW, "--json")
    assert result.code == 1
    summary = result.json()
    assert summary["sources"]["zoom-live"]["status"] == "error"
    assert any("answered 502" in p and "next run" in p for p in summary["problems"])
    assert [to for to, *_ in project.sent()] == ["fay@example.test"]
    # the next run picks up where this one could not
    assert funnel("run", "--now", "2027-01-05T16:15:00Z").code == 0
    assert sorted(to for to, *_ in project.sent()) == ["ana@example.test", "fay@example.test"]


def test_a_read_that_fails_half_way_is_read_again_in_full_by_the_next_run(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    add_source(project)
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN)])
    for n in range(301):
        register(zoom, f"p{n}@example.test", occurrences=["1"])
    zoom.fail_next(3, status=500, after=2)  # the webinar and the first page answer; the second page fails
    summary = funnel("run", "--now", NOW, "--json").json()
    assert summary["sources"]["zoom-live"]["status"] == "error" and summary["enrolled"] == 0
    summary = funnel("run", "--now", "2027-01-05T16:15:00Z", "--json").json()
    assert summary["sources"]["zoom-live"]["status"] == "read" and summary["enrolled"] == 301


def test_participants_of_a_session_funnel_never_heard_of_change_nothing(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    add_source(project)
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN)])
    register(zoom, "ana@example.test", first_name="Ana", occurrences=["1"])
    funnel("run", "--now", NOW)
    # a session Zoom held that funnel had no occurrence for (a test run two days before)
    zoom.add_instance(
        WEBINAR,
        "rehearsal",
        "2027-01-13T02:00:00Z",
        [{"id": "p", "name": "Ana", "user_email": "ana@example.test", "join_time": "2027-01-13T02:00:00Z"}],
    )
    summary = funnel("run", "--now", "2027-01-15T04:00:00Z", "--json").json()
    assert summary["sources"]["zoom-live"]["attended"] == 0
    assert any("were not registered for it" in w for w in summary["warnings"])
    with project_db(project) as db:
        assert list(db.execute("SELECT tag FROM enrollment_tags")) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('    webinar_id: "81234567890"\n', ""), "webinar_id"),
        (('    webinar_id: "81234567890"\n', '    webinar_id: "812-ABC"\n'), "webinar's number in Zoom"),
        (("    format: zoom\n", "    format: zoom\n    path: signups/x.csv\n"), "has no `path:`"),
    ],
)
def test_a_zoom_source_is_checked(
    project: Project, funnel: Callable[..., Any], change: tuple[str, str], words: str
) -> None:
    add_source(project)
    path = project.root / "sequences.yaml"
    path.write_text(path.read_text().replace(*change, 1))
    result = funnel("check")
    assert result.code == 1
    assert words in result.err + result.out


def test_listed_sessions_match_occurrences_by_start_and_a_mismatch_names_both(
    project: Project, funnel: Callable[..., Any], zoom: FakeZoom, waits: list[float]
) -> None:
    add_source(project, keep_sessions=True)  # the shipped list: every second Thursday at 19:00
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN), ("2", "2027-02-19T02:00:00Z")])  # Feb 18: not the 2nd
    register(zoom, "ana@example.test", first_name="Ana", occurrences=["1"])
    summary = funnel("run", "--now", NOW, "--json").json()
    mismatch = [w for w in summary["warnings"] if "matches no session" in w]
    assert len(mismatch) == 1
    assert "2027-02-18 19:00" in mismatch[0] and "2027-02-11 19:00" in mismatch[0]
    with project_db(project) as db:
        assert [r[0] for r in db.execute("SELECT session FROM enrollments")] == ["2027-01-14 19:00"]


# --------------------------------------------------------------------------- the webhook


def test_the_webhook_handshake_and_refusals(
    project: Project, funnel_server: Callable[..., Any], zoom: FakeZoom
) -> None:
    add_source(project)
    server = funnel_server("--now", NOW, env=zoom.env())
    stamp = epoch(NOW)
    with server.client() as http:
        body = event("endpoint.url_validation", {}).replace(b'"object": {}', b'"plainToken": "qgg8vlvZRS6UYooatFL8Aw"')
        answer = http.post("/webhooks/zoom", content=body, headers=sign(body, stamp))
        assert answer.status_code == 200
        assert (
            answer.json()["encryptedToken"]
            == url_validation(WEBHOOK_SECRET, "qgg8vlvZRS6UYooatFL8Aw")["encryptedToken"]
        )
        post = registration("ana@example.test", "Ana", "tk-ana", [("1", JAN)])
        forged = http.post("/webhooks/zoom", content=post, headers=sign(post, stamp, secret="guess"))
        stale = http.post("/webhooks/zoom", content=post, headers=sign(post, stamp - 3600))
        assert (forged.status_code, stale.status_code) == (401, 401)
        assert project.sent() == []
        headers = sign(post, stamp)
        first = http.post("/webhooks/zoom", content=post, headers=headers)
        assert first.status_code == 200 and first.json()["status"] == "stored"
        assert http.post("/webhooks/zoom", content=post, headers=headers).status_code == 401  # replayed
        retried = http.post("/webhooks/zoom", content=post, headers=sign(post, stamp + 5))  # Zoom's own retry
        assert retried.json()["status"] == "duplicate"
        other = registration("zed@example.test", "Zed", "tk-zed", [("1", JAN)], webinar="99999999999")
        ignored = http.post("/webhooks/zoom", content=other, headers=sign(other, stamp)).json()
        assert ignored["status"] == "ignored" and "not a zoom source" in ignored["reason"]
        past = registration("old@example.test", "Old", "tk-old", [("0", "2027-01-01T02:00:00Z")])
        ignored = http.post("/webhooks/zoom", content=past, headers=sign(past, stamp)).json()
        assert ignored["status"] == "ignored" and "in the past" in ignored["reason"]
        nomail = registration("", "Nobody", "tk-x", [("1", JAN)])
        assert http.post("/webhooks/zoom", content=nomail, headers=sign(nomail, stamp)).json()["status"] == "ignored"
        stranger = event(
            "webinar.participant_joined",
            {"id": WEBINAR, "uuid": "x", "participant": {"email": "who@example.test", "join_time": JAN}},
        )
        joined = http.post("/webhooks/zoom", content=stranger, headers=sign(stranger, stamp)).json()
        assert joined["status"] == "ignored"
    assert project.sent() == [("ana@example.test", SEQUENCE, "registered")]


def test_without_the_secret_the_endpoint_is_off(project: Project, funnel_server: Callable[..., Any]) -> None:
    server = funnel_server("--now", NOW)
    with server.client() as http:
        body = event("endpoint.url_validation", {})
        assert http.post("/webhooks/zoom", content=body, headers=sign(body, epoch(NOW))).status_code == 404
