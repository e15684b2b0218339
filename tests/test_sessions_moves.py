"""Moving (`was:`) and cancelling (`cancelled: true`) a webinar session, with the real `funnel run`."""

from __future__ import annotations

import email.policy
from email import message_from_bytes
from pathlib import Path

import icalendar
from conftest import Project, without_shipped_sessions

SEQUENCE = "webinar-relationship-911"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
BEFORE = """    sessions:
      - 2027-03-18 18:30
      - 2027-04-15 18:30
      - 2027-05-20 18:30
"""
AFTER = """    sessions:
      - start: 2027-03-11 18:30   # a week earlier
        was: 2027-03-18 18:30
      - start: 2027-04-15 18:30
        cancelled: true
      - start: 2027-05-27 18:30   # a week later
        was: 2027-05-20 18:30
"""


def set_sessions(project: Project, sessions: str) -> None:
    path = project.root / "sequences.yaml"
    text = without_shipped_sessions(path.read_text())
    marker = "    duration: 60m"
    head, _, tail = text.partition(marker)
    head = head.split("    sessions:\n")[0]
    path.write_text(head + sessions + marker + tail)


def events(project: Project, to: str, step: str) -> list[icalendar.Event]:
    """The calendar event of every `step` email to `to`."""
    out = []
    for path in sorted(project.outbox.glob(f"*_{SEQUENCE}_{step}_*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[arg-type]
        if message["To"].addresses[0].addr_spec != to:
            continue
        for part in message.walk():
            if part.get_filename() == "invite.ics":
                calendar = icalendar.Calendar.from_ical(part.get_payload(decode=True))
                out.extend(calendar.walk("VEVENT"))
    return out


def sent_at(project: Project, to: str, step: str) -> list[tuple[str, str]]:
    """(file stamp, plain text) of every `step` email to `to`."""
    out = []
    for path in sorted(project.outbox.glob(f"*_{SEQUENCE}_{step}_*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[arg-type]
        if message["To"].addresses[0].addr_spec == to:
            part = message.get_body(preferencelist=("plain",))
            assert part is not None
            out.append((Path(path).stem.split("_")[0], part.get_content()))
    return out


def test_a_session_moved_earlier_or_later_re_times_its_letters_and_a_cancelled_one_stops(
    project: Project, funnel
) -> None:
    set_sessions(project, BEFORE)
    project.write(
        "signups/webinar-registrations.csv",
        HEADER
        + "ana@example.test,Ana,,2027-03-18 18:30,America/Denver,\n"
        + "bea@example.test,Bea,,2027-04-15 18:30,America/Denver,\n"
        + "dana@example.test,Dana,,2027-05-20 18:30,America/Denver,\n",
    )

    def run(now: str) -> dict[str, object]:
        done = funnel("run", "--now", now, "--json")
        assert done.code == 0, done.err
        summary = done.json()
        assert isinstance(summary, dict)
        return summary

    run("2027-03-01T16:00:00Z")
    assert sorted(to for to, _, step in project.sent() if step == "registered") == [
        "ana@example.test",
        "bea@example.test",
        "dana@example.test",
    ]
    set_sessions(project, AFTER)
    assert funnel("check", "--now", "2027-03-02T16:00:00Z").code == 0
    # before the run, plan --changes says who moves (old -> new) and who is told
    changes = funnel("plan", "--changes", "--now", "2027-03-02T15:00:00Z", "--json").json()
    assert isinstance(changes, dict)
    assert [(c["email"], c["change"], c["from"], c["to"], c["told"]) for c in changes["sessions"]] == [
        ("ana@example.test", "moves", "2027-03-19T00:30:00Z", "2027-03-12T01:30:00Z", "new-date"),
        ("bea@example.test", "cancelled", "2027-04-16T00:30:00Z", None, "cancelled"),
        ("dana@example.test", "moves", "2027-05-21T00:30:00Z", "2027-05-28T00:30:00Z", "new-date"),
    ]
    shown = funnel("plan", "--changes", "--now", "2027-03-02T15:00:00Z").out
    assert "ana@example.test: Thu 18 Mar 2027 18:30 MDT -> Thu 11 Mar 2027 18:30 MST; told: new-date" in shown
    assert "bea@example.test: Thu 15 Apr 2027 18:30 MDT: cancelled; told: cancelled" in shown
    summary = run("2027-03-02T16:00:00Z")
    assert (summary["moved"], summary["cancelled"]) == (2, 1)
    # each is told, once: the new date (with the old one) or the cancellation, with the event again
    (told,) = sent_at(project, "ana@example.test", "new-date")
    assert "March 11" in told[1] and "instead of" in told[1] and "March 18" in told[1]
    (event,) = events(project, "ana@example.test", "new-date")
    assert (int(event["sequence"]), str(event["status"])) == (1, "CONFIRMED")
    assert event.decoded("dtstart").isoformat() == "2027-03-12T01:30:00+00:00"
    (first,) = events(project, "ana@example.test", "registered")
    assert str(first["uid"]) == str(event["uid"])
    (called_off,) = sent_at(project, "bea@example.test", "cancelled")
    assert "will not take place" in called_off[1]
    (event,) = events(project, "bea@example.test", "cancelled")
    assert (int(event["sequence"]), str(event["status"])) == (1, "CANCELLED")
    assert len(sent_at(project, "dana@example.test", "new-date")) == 1
    run("2027-03-02T20:00:00Z")  # once per move: a later run sends nothing again
    assert len([x for x in project.sent() if x[2] in ("new-date", "cancelled")]) == 3
    # earlier: the day before is now March 10 (18:30 MST = 01:30Z on the 11th)
    run("2027-03-11T02:00:00Z")
    (day_before,) = sent_at(project, "ana@example.test", "day-before")
    assert "6:30" in day_before[1]
    run("2027-03-12T00:45:00Z")
    assert len(sent_at(project, "ana@example.test", "hour-before")) == 1
    # the old dates bring nothing
    run("2027-03-18T02:00:00Z")
    run("2027-03-19T00:45:00Z")
    assert len(sent_at(project, "ana@example.test", "day-before")) == 1
    assert len(sent_at(project, "ana@example.test", "hour-before")) == 1
    # cancelled: nothing more for Bea, and she is not taken on to the next sequence
    run("2027-04-15T01:00:00Z")
    run("2027-04-16T00:00:00Z")
    run("2027-04-16T16:00:00Z")
    assert [step for to, _, step in project.sent() if to == "bea@example.test"] == ["registered", "cancelled"]
    shown = funnel("contacts", "show", "bea@example.test", "--json").json()
    assert isinstance(shown, dict)
    (bea,) = shown["enrollments"]
    assert (bea["status"], bea["reason"]) == ("exited", "session cancelled")
    # later: nothing on the old day before (May 19, MDT), everything on the new one (May 26)
    run("2027-05-20T01:00:00Z")
    assert sent_at(project, "dana@example.test", "day-before") == []
    run("2027-05-27T01:00:00Z")
    assert len(sent_at(project, "dana@example.test", "day-before")) == 1
    run("2027-05-28T00:00:00Z")
    assert len(sent_at(project, "dana@example.test", "hour-before")) == 1
    shown = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert isinstance(shown, dict)
    assert shown["enrollments"][0]["session"] == "2027-05-20 18:30"  # the date as first written
    assert shown["enrollments"][0]["webinar_start"] == "2027-05-28T00:30:00Z"
    sent = project.sent()
    assert len(sent) == len(set(sent))


def test_a_session_taken_out_while_people_are_registered_is_refused_with_both_ways_out(
    project: Project, funnel
) -> None:
    set_sessions(project, BEFORE)
    project.write(
        "signups/webinar-registrations.csv",
        HEADER
        + "ana@example.test,Ana,,2027-04-15 18:30,America/Denver,\n"
        + "bea@example.test,Bea,,2027-04-15 18:30,America/Denver,\n",
    )
    assert funnel("run", "--now", "2027-03-01T16:00:00Z").code == 0
    set_sessions(project, "    sessions:\n      - 2027-03-18 18:30\n      - 2027-05-20 18:30\n")
    refused = funnel("run", "--now", "2027-03-02T16:00:00Z")
    assert refused.code == 2
    line = next(
        n
        for n, text in enumerate((project.root / "sequences.yaml").read_text().splitlines(), 1)
        if text == "    sessions:"
    )
    assert refused.err.startswith(f"funnel: sequences.yaml:{line}: webinars.relationship-911.sessions: ")
    assert "2027-04-15 18:30" in refused.err and "2 people are registered" in refused.err
    assert "was: 2027-04-15 18:30" in refused.err and "cancelled: true" in refused.err
    # `funnel check` says the same, from the database (read only), exit 1
    checked = funnel("check", "--now", "2027-03-02T16:00:00Z")
    assert checked.code == 1
    assert f"sequences.yaml:{line}: webinars.relationship-911.sessions: " in checked.err
    assert "2 people are registered" in checked.err and "was: 2027-04-15 18:30" in checked.err
    # nothing was done: saying what happened lets the run go on
    set_sessions(
        project,
        "    sessions:\n      - 2027-03-18 18:30\n      - start: 2027-04-15 18:30\n        cancelled: true\n"
        "      - 2027-05-20 18:30\n",
    )
    done = funnel("run", "--now", "2027-03-02T16:00:00Z", "--json")
    assert done.code == 0, done.err
    summary = done.json()
    assert isinstance(summary, dict) and summary["cancelled"] == 2
