"""SendGrid's event webhook and Inbound Parse through real HTTP against a real `funnel serve`.

Emails are sent by the real `funnel run` into the outbox; the send ids the
webhook ties events to are read from those .eml files, as SendGrid would
echo them back in custom_args. Posts are signed with a P-256 key pair made
here. State is checked through the CLI (`contacts show`, `report`) and the
next run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Project, project_db
from webhook_signing import Signer, post_events, sent_ids, sg_event

NOW = "2026-12-08T16:00:00Z"
NOW_AT = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
PEOPLE = (
    "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n"
    "dana@example.test,Dana,Whitaker,2027-01-14 19:00,America/Chicago,\n"
    "erin@example.test,Erin,Cole,2027-01-14 19:00,America/Denver,\n"
)
#: when the "day-before" reminder is due for the Denver webinar (2027-01-13 19:00 MST)
DAY_BEFORE = "2027-01-14T02:10:00Z"


def test_signed_events_are_stored_once_and_suppress_at_once(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel("run", "--now", NOW).code == 0
    ids = sent_ids(project)
    assert set(ids) == {"ana@example.test", "dana@example.test", "erin@example.test"}
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    later = NOW_AT + timedelta(minutes=5)
    events = [
        sg_event("open", "ana@example.test", ids["ana@example.test"], "e2", at=later, ip="203.0.113.7"),
        sg_event("delivered", "ana@example.test", ids["ana@example.test"], "e1"),
        sg_event("open", "ana@example.test", ids["ana@example.test"], "e3", at=later + timedelta(minutes=1)),
        sg_event(
            "bounce",
            "dana@example.test",
            ids["dana@example.test"],
            "e4",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 mailbox unavailable",
        ),
        sg_event("unsubscribe", "erin@example.test", ids["erin@example.test"], "e5"),
        sg_event("dropped", "stranger@example.test", None, "e6", reason="Bounced Address"),
        sg_event("bounce", "Stranger@Example.test", None, "e7", type="bounce"),  # an address we never had, twice
        sg_event("delivered", "ana@example.test", ids["ana@example.test"], "e1"),  # repeated within the batch
    ]
    with server.client() as http:
        answer = post_events(http, signer, events)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"stored": 7, "duplicates": 1, "suppressed": 3, "skipped": []}
        # SendGrid retries for a day: the same post (or a replay within the window) changes nothing
        again = post_events(http, signer, events)
        assert again.status_code == 200
        assert again.json()["stored"] == 0 and again.json()["duplicates"] == 8

    dana = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert dana["suppressed"] is True and not dana["unsubscribed"]
    assert dana["suppressed_reason"] == "bounced: 5.1.1 550 5.1.1 mailbox unavailable"
    assert dana["events"] == [
        {
            "kind": "bounce",
            "at": "2026-12-08T16:00:00Z",
            "sequence": "webinar-relationship-911",
            "step": "registered",
            "reason": "5.1.1 550 5.1.1 mailbox unavailable",
        }
    ]
    erin = funnel("contacts", "show", "erin@example.test", "--json").json()
    assert erin["unsubscribed"] is True and erin["suppressed"] is True
    ana = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert [(e["kind"], e["at"]) for e in ana["events"]] == [
        ("delivered", "2026-12-08T16:00:00Z"),
        ("open", "2026-12-08T16:05:00Z"),
        ("open", "2026-12-08T16:06:00Z"),
    ]
    assert not ana["suppressed"]
    shown = funnel("contacts", "show", "ana@example.test")
    assert "SendGrid events" in shown.out and "Tue 8 Dec 2026 09:05 MST  open" in shown.out
    in_utc = funnel("contacts", "show", "ana@example.test", "--utc")
    assert "Tue 8 Dec 2026 16:05 UTC  open" in in_utc.out

    step = funnel("report", "--json").json()["sequences"][0]["steps"][0]
    assert step["id"] == "registered"
    assert (step["sent"], step["delivered"], step["opened"], step["bounced"], step["unsubscribed"]) == (3, 1, 1, 1, 1)

    # the next run: only Ana gets the reminder; the bounced and the unsubscribed leave the sequence
    result = funnel("run", "--now", DAY_BEFORE, "--json")
    assert result.code == 0, result.err
    day_before = [to for to, _seq, step_id in project.sent() if step_id == "day-before"]
    assert day_before == ["ana@example.test"]
    dana = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert dana["enrollments"][0]["status"] == "exited"

    # an address we never held is refused at import too: the drop kept its hash
    project.append("signups/webinar-registrations.csv", "stranger@example.test,S,,2027-01-14 19:00,America/Denver,\n")
    assert funnel("run", "--now", DAY_BEFORE, "--json").json()["enrolled"] == 0
    assert "stranger@example.test" not in [to for to, _s, _t in project.sent()]


def test_forged_stale_unsigned_and_garbage_posts_change_nothing(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    funnel("run", "--now", NOW)
    ids = sent_ids(project)
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    bounce = [sg_event("bounce", "ana@example.test", ids["ana@example.test"], "b1", type="bounce")]
    body = json.dumps(bounce).encode()
    with server.client() as http:
        forged = post_events(http, Signer(), bounce)
        assert forged.status_code == 403
        tampered_headers = {**signer.headers(body, NOW_AT), "content-type": "application/json"}
        other = json.dumps([sg_event("spamreport", "dana@example.test", None, "b2")]).encode()
        assert http.post("/webhooks/sendgrid", content=other, headers=tampered_headers).status_code == 403
        stale = post_events(http, signer, bounce, at=NOW_AT - timedelta(minutes=11))
        assert stale.status_code == 403 and "stale" in stale.json()["error"]
        unsigned = post_events(http, None, bounce)
        assert unsigned.status_code == 401
        for garbage in (b'{"event": "bounce"}', b"<html>", b"\x00\xff"):
            answer = post_events(http, signer, None, raw=garbage)
            assert answer.status_code == 400, garbage
        # one unreadable event in a batch is skipped with a reason; the others are kept
        mixed = [
            "nonsense",
            sg_event("delivered", "ana@example.test", ids["ana@example.test"], "ok1"),
            {"event": "teleported", "sg_event_id": "x"},
        ]
        answer = post_events(http, signer, mixed)
        assert answer.status_code == 200
        assert answer.json()["stored"] == 1
        assert answer.json()["skipped"] == [
            {"index": 0, "reason": "not a JSON object"},
            {"index": 2, "reason": "unknown event 'teleported'"},
        ]
        assert http.get("/healthz").status_code == 200
    ana = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert ana["suppressed"] is False and [e["kind"] for e in ana["events"]] == ["delivered"]
    dana = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert dana["suppressed"] is False and dana["events"] == []
    server.stop()  # all it wrote is read once it has stopped
    assert "ana@example.test" not in server.stderr  # refusals are logged without addresses


def test_unsigned_posts_are_taken_only_when_the_config_says_so(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    funnel("run", "--now", NOW)
    ids = sent_ids(project)
    config = project.root / "sequences.yaml"
    config.write_text(config.read_text().replace("  clicks: false\n", "  clicks: false\n  webhook_unsigned: true\n", 1))
    server = funnel_server("--now", NOW)
    with server.client() as http:
        answer = post_events(http, None, [sg_event("spamreport", "ana@example.test", ids["ana@example.test"], "s1")])
    assert answer.status_code == 200 and answer.json()["suppressed"] == 1
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["suppressed_reason"] == "marked as spam"


def test_forget_erases_the_personal_fields_of_a_persons_events(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    funnel("run", "--now", NOW)
    ids = sent_ids(project)
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    click = sg_event(
        "click",
        "ana@example.test",
        ids["ana@example.test"],
        "c1",
        ip="203.0.113.7",
        useragent="Mozilla/5.0 (iPhone)",
        url="https://healinglightcounseling.test/consultation?who=ana",
    )
    with server.client() as http:
        assert post_events(http, signer, [click]).status_code == 200
        assert funnel("contacts", "forget", "ana@example.test", "--now", NOW).code == 0
        # a late event about her (SendGrid retries for a day) keeps nothing personal either
        late = sg_event("open", "ana@example.test", ids["ana@example.test"], "c2", ip="203.0.113.7")
        assert post_events(http, signer, [late]).status_code == 200
    with project_db(project) as db:
        rows = db.execute("SELECT kind, raw, reason, email_hash FROM events ORDER BY id").fetchall()
    assert [row[0] for row in rows] == ["click", "open"]
    for _kind, raw, reason, digest in rows:
        assert "ana@" not in raw and "203.0.113.7" not in raw and "iPhone" not in raw and "who=ana" not in raw
        assert reason is None and digest is None
    step = funnel("report", "--json").json()["sequences"][0]["steps"][0]
    assert step["clicked"] == 1  # the figures stay


def test_a_key_that_is_not_a_key_is_a_503_naming_the_variable(
    project: Project, funnel_server: Callable[..., Any]
) -> None:
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": "paste-the-key-here"})
    signer = Signer()
    with server.client() as http:
        answer = post_events(http, signer, [sg_event("delivered", "ana@example.test", None, "k1")])
    # our configuration is wrong, not SendGrid's post: it retries for a day while the key is fixed
    assert answer.status_code == 503 and "FUNNEL_SENDGRID_WEBHOOK_KEY" in answer.json()["error"]
    server.stop()  # all it wrote is read once it has stopped
    assert "FUNNEL_SENDGRID_WEBHOOK_KEY" in server.stderr


def test_a_nul_in_a_servers_bounce_words_does_not_lose_the_batch_on_postgresql(
    project: Project, funnel_process: Callable[..., Any], funnel_server: Callable[..., Any], postgres_url: str
) -> None:
    """A receiving server's SMTP answer is words we do not control: a NUL in it made PostgreSQL
    refuse the whole post (500), so SendGrid retried the batch and every bounce in it was lost."""
    env = {"FUNNEL_DATABASE_URL": postgres_url}
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel_process("run", "--now", NOW, env=env).returncode == 0
    ids = sent_ids(project)
    signer = Signer()
    server = funnel_server("--now", NOW, env={**env, "FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    events = [
        sg_event("bounce", "dana@example.test", ids["dana@example.test"], "n1", reason="550 no such user\x00 here"),
        sg_event("bounce", "erin@example.test", ids["erin@example.test"], "n2\x00", reason="550 gone"),
        sg_event("open", "ana@example.test", ids["ana@example.test"], "n3", useragent="Mozilla\x00"),
    ]
    with server.client() as http:
        answer = post_events(http, signer, events)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 3 and answer.json()["suppressed"] == 2
    dana = json.loads(funnel_process("contacts", "show", "dana@example.test", "--json", env=env).stdout)
    assert dana["suppressed_reason"] == "bounced: 550 no such user here"
    erin = json.loads(funnel_process("contacts", "show", "erin@example.test", "--json", env=env).stdout)
    assert erin["suppressed"] is True
