"""Done when: a recurring webinar through the fake Zoom, end to end (issue 21).

Zoom (tests/fake_zoom.py) holds a webinar that repeats on the second
Thursday; sequences.yaml lists no sessions, so Zoom's occurrences are its
sessions. Ana registers through the webhook and is confirmed at once by a
real `funnel serve`; Zoom's API lists her too, and Bea, and Cy (registered
for every occurrence). Runs (the real command, in-process) read Zoom through
a rate limit and an expired token. After January's session, Zoom's
participants (Ana) and the webhook's join (Bea) decide thank-you or replay;
in February it is Cy who comes. Every letter is counted.
"""

from __future__ import annotations

import email.policy
from collections.abc import Callable, Iterator
from email import message_from_bytes
from typing import Any

import pytest
from conftest import Project
from fake_zoom import FakeZoom, sign
from test_zoom import FEB, JAN, NOW, SEQUENCE, WEBINAR, add_source, epoch, event, registration

from funnel.signups import zoom_api


@pytest.fixture
def zoom(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeZoom]:
    with FakeZoom() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


def letters(project: Project) -> list[tuple[str, str]]:
    return sorted((to, step) for to, sequence, step in project.sent() if sequence == SEQUENCE)


def text_to(project: Project, address: str, step: str) -> str:
    """The plain text of the letter `step` to `address` (the outbox names each file by its step)."""
    for path in sorted(project.outbox.glob(f"*_{step}_*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"].addresses[0].addr_spec == address:
            return str(message.get_body(("plain",)).get_content())
    raise AssertionError(f"no {step} letter to {address}")


def test_a_recurring_zoom_webinar_end_to_end(
    project: Project,
    funnel: Callable[..., Any],
    funnel_server: Callable[..., Any],
    zoom: FakeZoom,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(zoom_api, "SLEEP", waits.append)
    add_source(project)
    zoom.add_webinar(WEBINAR, occurrences=[("1", JAN), ("2", FEB)])
    recent = "2027-01-05T15:30:00Z"
    ana_link = "https://zoom.example.test/w/81234567890?tk=tk-ana"
    zoom.add_registrant(
        WEBINAR, "ana@example.test", first_name="Ana", occurrences=["1"], join_url=ana_link, create_time=recent
    )
    zoom.add_registrant(WEBINAR, "bea@example.test", first_name="Bea", occurrences=["1"], create_time=recent)
    zoom.add_registrant(WEBINAR, "cy@example.test", first_name="Cy", occurrences=["1", "2"], create_time=recent)

    # Ana registers: the webhook confirms her at once, from funnel serve
    server = funnel_server("--now", NOW, env=zoom.env())
    with server.client() as http:
        post = registration("ana@example.test", "Ana", "tk-ana", [("1", JAN)])
        answer = http.post("/webhooks/zoom", content=post, headers=sign(post, epoch(NOW)))
        assert answer.status_code == 200 and answer.json()["status"] == "stored"
        assert letters(project) == [("ana@example.test", "registered")]

        # the run reads Zoom through a rate limit: Bea and Cy are confirmed, Ana not again
        zoom.fail_next(1, status=429, retry_after="2")
        summary = funnel("run", "--now", "2027-01-05T16:10:00Z", "--json").json()
        assert summary["sources"]["zoom-live"]["status"] == "read"
        assert waits == [2.0]
        assert letters(project) == [
            ("ana@example.test", "registered"),
            ("bea@example.test", "registered"),
            ("cy@example.test", "registered"),
        ]
        assert ana_link in text_to(project, "ana@example.test", "registered")
        assert "tk=" in text_to(project, "bea@example.test", "registered")

        # during January's session Bea joins: the webhook marks her
        joined = event(
            "webinar.participant_joined",
            {
                "id": WEBINAR,
                "uuid": "jan-instance",
                "start_time": JAN,
                "participant": {"email": "bea@example.test", "user_name": "Bea", "join_time": "2027-01-15T02:04:00Z"},
            },
        )
        marked = http.post("/webhooks/zoom", content=joined, headers=sign(joined, epoch(NOW))).json()
        assert marked["status"] == "stored"

    # after it, Zoom's participants: Ana, a guest without an address, the host (not registered)
    zoom.add_instance(
        WEBINAR,
        "/jan//instance==",  # a UUID Zoom wants double-encoded
        "2027-01-15T02:01:00Z",
        [
            {"id": "p1", "name": "Ana", "user_email": "ana@example.test", "join_time": "2027-01-15T02:02:00Z"},
            {"id": "p2", "name": "Guest", "user_email": "", "join_time": "2027-01-15T02:03:00Z"},
            {"id": "p3", "name": "Host", "user_email": "host@example.test", "join_time": "2027-01-15T01:50:00Z"},
        ],
    )
    zoom.expire_tokens()  # the token this process holds no longer works: renewed once
    tokens_before = zoom.token_calls()
    summary = funnel("run", "--now", "2027-01-15T15:10:00Z", "--json").json()
    assert zoom.token_calls() == tokens_before + 1
    assert summary["sources"]["zoom-live"]["attended"] == 1  # Ana (Bea came by webhook)
    assert any("gave no email" in w for w in summary["warnings"])
    assert any("not registered" in w for w in summary["warnings"])
    after_jan = [x for x in letters(project) if x[1] in ("replay", "thank-you")]
    assert after_jan == [
        ("ana@example.test", "thank-you"),
        ("bea@example.test", "thank-you"),
        ("cy@example.test", "replay"),
    ]

    # February: Cy, registered for every occurrence, is confirmed for it, comes, and is thanked
    funnel("run", "--now", "2027-02-01T16:00:00Z")
    assert [step for to, step in letters(project) if to == "cy@example.test"].count("registered") == 2
    zoom.add_instance(
        WEBINAR,
        "feb-instance",
        "2027-02-12T02:00:00Z",
        [{"id": "p4", "name": "Cy", "user_email": "cy@example.test", "join_time": "2027-02-12T02:01:00Z"}],
    )
    funnel("run", "--now", "2027-02-12T15:10:00Z")
    cy = [step for to, step in letters(project) if to == "cy@example.test"]
    assert cy.count("registered") == 2
    assert "replay" in cy and "thank-you" in cy  # January's replay, February's thank-you
    assert [step for to, step in letters(project) if to == "ana@example.test"].count("registered") == 1
    # nothing new: a handful of requests
    zoom.reset_log()
    funnel("run", "--now", "2027-02-12T15:20:00Z")
    assert len(zoom.api_calls()) <= 4
