"""End to end: the real `funnel` command over simulated weeks, reading the .eml files it writes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import pytest
from conftest import Project, database_rows, without_shipped_sessions

from funnel.config import load_config

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
WEBINAR_A = "2027-01-14 19:00"  # Thursday
DENVER = ZoneInfo("America/Denver")


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    times = []
    current = start
    while current <= end:
        times.append(current)
        current += step
    return times


def test_first_run_sends_what_is_due_and_a_second_run_at_the_same_time_sends_nothing(
    example_project: Project, funnel
) -> None:
    first = funnel("run", "--now", "2026-12-01T16:00:00Z", "--json")
    assert first.code == 0, first.err
    summary = first.json()
    assert summary["rejected"] == 1  # the row with `not-an-email`
    # 7 registration confirmations (beth too: she also asked for a consultation, and a goal
    # keeps the confirmation of what she signed up for) + 3 consultation receipts
    # + 3 confirmations from Zoom's report (Elena registered 9 days ago: hers is too late, skipped)
    assert summary["sent"] == 13
    assert summary["skipped"] == 1
    assert summary["failed"] == 0
    for key in ("imported", "rejected", "enrolled", "sent", "skipped", "failed"):
        assert key in summary
    files = sorted(example_project.outbox.glob("*.eml"))
    assert len(files) == 13
    again = funnel("run", "--now", "2026-12-01T16:00:00Z", "--json")
    assert again.code == 0
    assert again.json()["sent"] == 0
    assert again.json()["imported"] == 0
    assert len(list(example_project.outbox.glob("*.eml"))) == 13


def test_same_address_in_any_case_is_one_contact(example_project: Project, funnel) -> None:
    funnel("run", "--now", "2026-12-01T16:00:00Z")
    ana = [to for to, seq, step in example_project.sent() if to == "ana.reyes@example.test"]
    assert ana == ["ana.reyes@example.test"]
    shown = funnel("contacts", "show", "ANA.REYES@example.test", "--json")
    assert shown.code == 0
    assert shown.json()["email"] == "ana.reyes@example.test"


@pytest.mark.long_running
def test_weeks_of_cron_runs_follow_every_rule(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv",
        HEADER
        + f"ana@example.test,Ana,Reyes,{WEBINAR_A},America/Denver,no\n"
        + f"dana@example.test,Dana,Whitaker,{WEBINAR_A},America/Chicago,\n"
        + f"carla@example.test,Carla,Mendes,{WEBINAR_A},America/Los_Angeles,yes\n"
        + "grace@example.test,Grace,Okafor,2027-01-21 19:00,America/New_York,\n",
    )
    project.write("signups/webinar-attendance.csv", "Email,Attended\n")
    start = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    # cron as the practice would run it, thinned out where nothing is due
    times = clock(start, datetime(2027, 1, 13, 4, tzinfo=UTC), timedelta(hours=12))
    # hourly around each webinar (reminders, Lia's late registration, Grace's new date), every
    # three hours in between (follow-ups only need a run inside the reader's send window)
    times += clock(datetime(2027, 1, 13, 16, tzinfo=UTC), datetime(2027, 1, 16, tzinfo=UTC), timedelta(hours=1))
    times += clock(datetime(2027, 1, 16, tzinfo=UTC), datetime(2027, 1, 27, 12, tzinfo=UTC), timedelta(hours=3))
    times += clock(datetime(2027, 1, 27, 12, tzinfo=UTC), datetime(2027, 1, 30, tzinfo=UTC), timedelta(hours=1))
    times += clock(datetime(2027, 1, 30, 16, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=UTC), timedelta(hours=12))
    # a run between Lia's late registration and the start: seen only at the start, she
    # would get no confirmation at all (nothing about a webinar that has begun, issue 6)
    times = sorted({*times, datetime(2027, 1, 15, 1, 30, tzinfo=UTC)})
    events = {
        # Grace moves to a later webinar before her first one: rescheduled, not re-enrolled
        datetime(2027, 1, 10, 0, tzinfo=UTC): lambda: project.append(
            "signups/webinar-registrations.csv", "grace@example.test,Grace,Okafor,2027-01-28 19:00,America/New_York,\n"
        ),
        # Lia registers in the hour before the webinar: no day-before, no hour-before
        datetime(2027, 1, 15, 1, 30, tzinfo=UTC): lambda: project.append(
            "signups/webinar-registrations.csv", f"lia@example.test,Lia,,{WEBINAR_A},America/Denver,\n"
        ),
        # the attendance export arrives an hour after the webinar ends
        datetime(2027, 1, 15, 4, 0, tzinfo=UTC): lambda: project.write(
            "signups/webinar-attendance.csv",
            "Email,Attended\nana@example.test,Yes\ndana@example.test,No\ncarla@example.test,yes\n",
        ),
    }
    unsubscribed_at = None
    pending_events = sorted(events.items())
    for now in times:
        while pending_events and pending_events[0][0] <= now:
            pending_events.pop(0)[1]()
        result = funnel("run", "--now", iso(now), "--json")
        assert result.code == 0, result.err
        if unsubscribed_at is None and ("dana@example.test", "webinar-relationship-911", "replay") in project.sent():
            unsubscribed_at = now
            assert funnel("contacts", "unsubscribe", "dana@example.test", "--now", iso(now)).code == 0
            # an old CSV row, read again, never resubscribes anyone
            project.append(
                "signups/webinar-registrations.csv", f"dana@example.test,Dana,Whitaker,{WEBINAR_A},America/Chicago,\n"
            )

    sent = project.sent()
    counts = Counter(sent)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]

    def steps(address: str, sequence: str) -> list[str]:
        return [step for to, seq, step in sent if to == address and seq == sequence]

    recovery = [
        "what-you-feel",
        "steadier-ground",
        "anger",
        "your-lines",
        "hard-conversations",
        "closeness",
        "womens-group",
        "ways-to-work",
        "door-open",
    ]
    assert steps("ana@example.test", "webinar-relationship-911") == [
        "registered",
        "day-before",
        "hour-before",
        "thank-you",
        "consultation-invite",
    ]
    assert steps("ana@example.test", "betrayal-recovery") == recovery
    assert steps("carla@example.test", "webinar-relationship-911") == [
        "registered",
        "day-before",
        "hour-before",
        "thank-you",
        "consultation-invite",
    ]
    # Lia registered at the last moment: the reminders' times had passed
    assert steps("lia@example.test", "webinar-relationship-911") == ["registered", "replay", "consultation-invite"]
    # Dana missed it, got the replay, then unsubscribed: nothing more from any sequence
    assert steps("dana@example.test", "webinar-relationship-911") == [
        "registered",
        "day-before",
        "hour-before",
        "replay",
    ]
    assert steps("dana@example.test", "betrayal-recovery") == []
    # Grace's reminders follow her new webinar date
    assert steps("grace@example.test", "webinar-relationship-911")[:3] == ["registered", "day-before", "hour-before"]

    by_key = {}
    for message in project.messages():
        to = message["To"].addresses[0].addr_spec
        by_key.setdefault(to, []).append(message)
    for message in by_key["grace@example.test"]:
        if message["Subject"].startswith("Tomorrow"):
            sent_at = parsedate_to_datetime(message["Date"])
            # the webinar is 19:00 in Denver (the webinar's zone), 21:00 in New York:
            # 2027-01-27 21:00 in New York, the day before her *new* webinar
            assert sent_at == datetime(2027, 1, 28, 2, 0, tzinfo=UTC)

    # non-transactional mail only goes out inside 08:00-20:00 in the reader's timezone
    zones = {
        "ana@example.test": "America/Denver",
        "dana@example.test": "America/Chicago",
        "carla@example.test": "America/Los_Angeles",
        "grace@example.test": "America/New_York",
        "lia@example.test": "America/Denver",
    }
    transactional = {"registered", "day-before", "hour-before"}
    for path in sorted(project.outbox.glob("*.eml")):
        _stamp, _sequence, step, _id = path.stem.split("_")
        if step in transactional:
            continue
        text = path.read_text()
        to = next(line for line in text.splitlines() if line.startswith("To:"))
        address = to.split("<")[-1].rstrip(">").strip()
        date_line = next(line for line in text.splitlines() if line.startswith("Date:"))
        local = parsedate_to_datetime(date_line[5:].strip()).astimezone(ZoneInfo(zones[address]))
        assert 8 <= local.hour < 20, (path.name, local)

    # the discreet contact gets plain text from the discreet sender name
    for message in by_key["carla@example.test"]:
        # text only (the confirmation adds its calendar invitation as an attachment)
        assert message.get_body(("html",)) is None
        assert message.get_content_type() in ("text/plain", "multipart/mixed")
        assert [p.get_content_type() for p in message.walk() if not p.is_multipart()][0] == "text/plain"
        assert "M. Ellis" in str(message["From"])

    shown = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert shown["unsubscribed"] is True and shown["suppressed"] is True
    webinar = next(e for e in shown["enrollments"] if e["sequence"] == "webinar-relationship-911")
    assert webinar["status"] == "exited"
    invite = next(s for s in webinar["steps"] if s["id"] == "consultation-invite")
    assert invite["status"] == "skipped" and invite["reason"] == "unsubscribed"
    lia = funnel("contacts", "show", "lia@example.test", "--json").json()
    lia_steps = {s["id"]: s for s in lia["enrollments"][0]["steps"]}
    assert lia_steps["day-before"] == {**lia_steps["day-before"], "status": "skipped", "reason": "before enrollment"}
    assert lia_steps["thank-you"]["reason"] == "without tag webinar-attended"


def test_an_outage_skips_stale_mail_instead_of_flooding(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\n")
    assert funnel("run", "--now", "2027-01-10T16:00:00Z").code == 0
    # the machine is down from Jan 10 until Jan 20: the webinar came and went
    result = funnel("run", "--now", "2027-01-20T16:00:00Z", "--json")
    assert result.code == 0
    assert result.json()["sent"] == 0
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    steps = {s["id"]: s for s in shown["enrollments"][0]["steps"]}
    assert steps["day-before"]["status"] == "skipped"
    assert steps["day-before"]["reason"].startswith("late by ")
    assert steps["day-before"]["reason"] == "late by 6 days"  # due Jan 14 02:00Z, reached Jan 20 16:00Z
    assert [s for _, _, s in project.sent()] == ["registered"]


def test_reaching_the_goal_keeps_the_reminders_and_the_recording_and_ends_the_letters(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\n")
    funnel("run", "--now", "2027-01-10T16:00:00Z")
    project.write(
        "signups/consultation-requests.jsonl", '{"email": "ANA@example.test", "name": "Ana", "message": "hi"}\n'
    )
    funnel("run", "--now", "2027-01-11T16:00:00Z")
    goal = "goal reached: tag consultation-requested"

    # contacts show says so: the reminders still go, the letters will not
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    webinar = next(e for e in shown["enrollments"] if e["sequence"] == "webinar-relationship-911")
    assert webinar["status"] == "active" and webinar["goal"] == goal
    steps = {s["id"]: s for s in webinar["steps"]}
    assert steps["day-before"]["status"] == "pending" and "reason" not in steps["day-before"]
    assert steps["hour-before"]["status"] == "pending" and "reason" not in steps["hour-before"]
    # what she signed up for still goes: the recording (or the thank-you with it)
    assert steps["replay"]["status"] == "pending" and "reason" not in steps["replay"]
    assert steps["thank-you"]["status"] == "pending" and "reason" not in steps["thank-you"]
    assert steps["consultation-invite"]["reason"] == f"{goal}: will not be sent"
    text = funnel("contacts", "show", "ana@example.test").out
    assert f"{goal}: no more letters; confirmations, reminders and the recording still go" in text
    assert f"consultation-invite      pending  Sun 17 Jan 2027 09:00 MST - {goal}: will not be sent" in text

    # plan lists the reminders, and says why the letters do not go
    plan = funnel("plan", "--now", "2027-01-11T16:00:00Z", "--days", "14")
    assert plan.code == 0, plan.err
    lines = [line for line in plan.out.splitlines() if "webinar-relationship-911" in line]
    assert [line.split()[8] for line in lines] == [
        "day-before",
        "hour-before",
        "replay",
        "consultation-invite",
    ]
    assert lines[-1].rstrip().endswith(f"not sent: {goal}")
    assert not any("not sent" in line for line in lines[:-1])
    planned = funnel("plan", "--now", "2027-01-11T16:00:00Z", "--days", "14", "--json").json()
    assert [i["step"] for i in planned if i["sequence"] == "webinar-relationship-911"] == [
        "day-before",
        "hour-before",
        "replay",
    ]

    for now in ("2027-01-14T02:00:00Z", "2027-01-15T01:00:00Z", "2027-01-15T15:00:00Z", "2027-01-20T16:00:00Z"):
        assert funnel("run", "--now", now).code == 0
    sent = [(seq, step) for to, seq, step in project.sent() if to == "ana@example.test"]
    assert [step for seq, step in sent if seq == "webinar-relationship-911"] == [
        "registered",
        "day-before",
        "hour-before",
        "replay",
    ]
    assert ("consultation", "received") in sent
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    by_sequence = {e["sequence"]: e for e in shown["enrollments"]}
    assert by_sequence["webinar-relationship-911"]["status"] == "exited"
    assert by_sequence["webinar-relationship-911"]["reason"] == goal
    steps = {s["id"]: s for s in by_sequence["webinar-relationship-911"]["steps"]}
    assert {k: (v["status"], v.get("reason")) for k, v in steps.items()} == {
        "registered": ("sent", None),
        "day-before": ("sent", None),
        "hour-before": ("sent", None),
        "replay": ("sent", None),
        "thank-you": ("skipped", "without tag webinar-attended"),
        "consultation-invite": ("skipped", goal),
    }
    assert "betrayal-recovery" not in by_sequence  # the goal also ends the `next:` chain


def test_beth_registers_and_asks_for_a_consultation_and_still_gets_her_confirmation(
    example_project: Project, funnel
) -> None:
    assert funnel("run", "--now", "2026-12-01T16:00:00Z").code == 0
    beth = [(seq, step) for to, seq, step in example_project.sent() if to == "beth.nguyen@example.test"]
    assert sorted(beth) == [("consultation", "received"), ("webinar-relationship-911", "registered")]


def test_plan_changes_says_when_a_reached_goal_means_no_change(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\n")
    project.write("signups/consultation-requests.jsonl", '{"email": "ana@example.test", "name": "Ana"}\n')
    funnel("run", "--now", "2027-01-10T16:00:00Z")
    config = (project.root / "sequences.yaml").read_text()
    config = config.replace("        webinar: -1h\n", "        webinar: -2h\n")
    config = config.replace(
        "      - id: replay\n",
        "      - id: extra-letter\n        webinar: +1d\n"
        '        subject: "More"\n        template: webinar/replay.md\n      - id: replay\n',
    )
    (project.root / "sequences.yaml").write_text(config)
    result = funnel("plan", "--changes", "--now", "2027-01-10T17:00:00Z", "--json")
    assert result.code == 0, result.err
    changes = {(c["step"], c["change"]): c["people"] for c in result.json()["steps"]}
    # the reminder is transactional: it still goes, at its new time
    assert changes[("hour-before", "retimed")] == [
        {"email": "ana@example.test", "effect": "moves from 2027-01-15T01:00:00Z to 2027-01-15T00:00:00Z"}
    ]
    assert changes[("extra-letter", "added")] == [
        {"email": "ana@example.test", "effect": "would not get it: goal reached: tag consultation-requested"}
    ]
    text = funnel("plan", "--changes", "--now", "2027-01-10T17:00:00Z").out
    assert "ana@example.test: would not get it: goal reached: tag consultation-requested" in text


def test_dry_run_writes_nothing(example_project: Project, funnel) -> None:
    result = funnel("run", "--now", "2026-12-01T16:00:00Z", "--dry-run", "--json")
    assert result.code == 0
    assert result.json()["sent"] == 13
    assert not example_project.outbox.exists()
    real = funnel("run", "--now", "2026-12-01T16:00:00Z", "--json")
    assert real.json()["sent"] == 13
    assert real.json()["imported"] == 20


def test_plan_lists_coming_sends_and_writes_nothing(example_project: Project, funnel) -> None:
    funnel("run", "--now", "2026-12-01T16:00:00Z")
    before = database_rows(example_project.database_url)
    result = funnel("plan", "--now", "2026-12-01T16:00:00Z", "--days", "3", "--json")
    assert result.code == 0
    assert database_rows(example_project.database_url) == before
    items = result.json()
    assert {"email", "sequence", "step", "at"} <= set(items[0])
    assert {(i["email"], i["step"]) for i in items} >= {
        ("irene.castillo@example.test", "what-to-expect"),
    }
    assert all(i["at"].endswith("Z") for i in items)
    # what plan promised is what runs do
    funnel("run", "--now", items[0]["at"])
    assert (items[0]["email"], items[0]["sequence"], items[0]["step"]) in example_project.sent()


def test_plan_changes_shows_who_gains_loses_or_moves(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\n")
    funnel("run", "--now", "2027-01-10T16:00:00Z")
    config = (project.root / "sequences.yaml").read_text()
    config = config.replace("        webinar: -1h\n", "        webinar: -2h\n")
    config = config.replace(
        "      - id: replay\n",
        "      - id: two-days-before\n        webinar: -2d\n        transactional: true\n"
        '        subject: "Soon"\n        template: webinar/day-before.md\n      - id: replay\n',
    )
    (project.root / "sequences.yaml").write_text(config)
    result = funnel("plan", "--changes", "--now", "2027-01-10T17:00:00Z", "--json")
    assert result.code == 0, result.err
    changes = {(c["step"], c["change"]): c for c in result.json()["steps"]}
    assert ("hour-before", "retimed") in changes
    moved = changes[("hour-before", "retimed")]["people"][0]
    assert moved["email"] == "ana@example.test"
    assert "2027-01-15T01:00:00Z" in moved["effect"] and "2027-01-15T00:00:00Z" in moved["effect"]
    added = changes[("two-days-before", "added")]["people"][0]
    assert added["effect"] == "would get it at 2027-01-13T02:00:00Z"


def test_editing_steps_by_id_never_resends_and_new_steps_reach_only_those_not_past_them(
    project: Project, funnel
) -> None:
    requests = "signups/consultation-requests.jsonl"
    project.write(requests, '{"email": "early@example.test", "name": "Early"}\n')
    start = datetime(2027, 1, 1, 16, tzinfo=UTC)
    for day in range(4):
        assert funnel("run", "--now", iso(start + timedelta(days=day))).code == 0
    assert [s for to, _, s in project.sent()] == ["received", "what-to-expect"]
    # mid-sequence, the therapist adds a note due with what-to-expect (already past for
    # Early) and rewords an existing subject; follow-up keeps its id and its time
    config = project.root / "sequences.yaml"
    text = config.read_text()
    text = text.replace(
        "        template: consultation/what-to-expect.md\n",
        "        template: consultation/what-to-expect.md\n"
        '      - id: gentle-note\n        wait: 0m\n        subject: "A gentle note"\n'
        "        template: consultation/follow-up.md\n",
        1,
    )
    text = text.replace('subject: "What our first conversation is like"', 'subject: "What a first talk is like"')
    config.write_text(text)
    project.append(requests, '{"email": "late@example.test", "name": "Late"}\n')
    later = start + timedelta(days=4)
    for day in range(12):
        assert funnel("run", "--now", iso(later + timedelta(days=day))).code == 0
    sent = project.sent()
    assert all(n == 1 for n in Counter(sent).values())
    assert [s for to, _, s in sent if to == "early@example.test"] == ["received", "what-to-expect", "follow-up"]
    assert [s for to, _, s in sent if to == "late@example.test"] == [
        "received",
        "what-to-expect",
        "gentle-note",
        "follow-up",
    ]
    early = funnel("contacts", "show", "early@example.test", "--json").json()
    steps = {s["id"]: s for s in early["enrollments"][0]["steps"]}
    assert steps["gentle-note"] == {**steps["gentle-note"], "status": "skipped", "reason": "added after its time"}


def test_a_removed_step_is_never_sent(project: Project, funnel) -> None:
    project.write("signups/consultation-requests.jsonl", '{"email": "ana@example.test", "name": "Ana"}\n')
    start = datetime(2027, 1, 1, 16, tzinfo=UTC)
    funnel("run", "--now", iso(start))
    config = project.root / "sequences.yaml"
    text = config.read_text()
    cut_from = text.index("      - id: follow-up\n")
    cut_to = text.index("template: consultation/follow-up.md\n", cut_from) + len(
        "template: consultation/follow-up.md\n"
    )
    config.write_text(text[:cut_from] + text[cut_to:])
    for day in range(1, 12):
        assert funnel("run", "--now", iso(start + timedelta(days=day))).code == 0
    assert [s for _, _, s in project.sent()] == ["received", "what-to-expect"]
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert shown["enrollments"][0]["status"] == "finished"


def test_import_before_the_first_run_does_not_make_the_first_steps_late_additions(project: Project, funnel) -> None:
    """`funnel import` on a new database, then `funnel run`: the welcomes go out."""
    download = project.write(
        "downloads/registrants.csv",
        HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\nbea@example.test,Bea,,{WEBINAR_A},,\n",
    )
    start = datetime(2027, 1, 10, 16, tzinfo=UTC)
    imported = funnel("import", "webinar-registrations", str(download), "--now", iso(start), "--json")
    assert imported.code == 0, imported.err
    assert imported.json()["enrolled"] == 2
    result = funnel("run", "--now", iso(start + timedelta(minutes=15)), "--json")
    assert result.code == 0, result.err
    assert result.json()["sent"] == 2 and result.json()["skipped"] == 0
    assert sorted(to for to, _, step in project.sent() if step == "registered") == [
        "ana@example.test",
        "bea@example.test",
    ]


def test_a_step_added_after_an_import_is_still_a_late_addition_for_those_imported(project: Project, funnel) -> None:
    """Steps known when someone was enrolled by `import` count from then; one added later does not reach back."""
    download = project.write("downloads/requests.jsonl", '{"email": "ana@example.test", "name": "Ana"}\n')
    start = datetime(2027, 1, 1, 16, tzinfo=UTC)
    assert funnel("import", "consultation-requests", str(download), "--now", iso(start)).code == 0
    config = project.root / "sequences.yaml"
    config.write_text(
        config.read_text().replace(
            "        template: consultation/what-to-expect.md\n",
            "        template: consultation/what-to-expect.md\n"
            '      - id: gentle-note\n        wait: 0m\n        subject: "A gentle note"\n'
            "        template: consultation/follow-up.md\n",
            1,
        )
    )
    for day in range(12):
        assert funnel("run", "--now", iso(start + timedelta(days=3 + day))).code == 0
    steps = {
        s["id"]: s for s in funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"][0]["steps"]
    }
    assert steps["received"]["status"] == "skipped"  # late by 3 days: the first run came too late for it
    assert steps["gentle-note"] == {**steps["gentle-note"], "status": "skipped", "reason": "added after its time"}


def test_a_live_webinar_is_one_moment_each_reader_sees_it_in_her_own_zone(example_project: Project, funnel) -> None:
    """hana (Los Angeles) and grace (New York) register for 2027-01-21 19:00 Denver time (grace's row has an offset)."""
    assert funnel("run", "--now", "2026-12-01T16:00:00Z").code == 0
    assert funnel("run", "--now", "2027-01-21T02:00:00Z").code == 0  # the day before, 19:00 Denver
    # an hour before 19:00 MST (02:00Z): 5:00 PM in Los Angeles, 8:00 PM in New York
    result = funnel("run", "--now", "2027-01-22T01:00:00Z", "--json")
    assert result.code == 0, result.err
    hour_before = {
        str(m["To"].addresses[0].addr_spec): m
        for m in example_project.messages()
        if parsedate_to_datetime(m["Date"]) == datetime(2027, 1, 22, 1, 0, tzinfo=UTC)
    }
    assert set(hour_before) == {"hana.sato@example.test", "grace.okafor@example.test"}
    assert "at 6:00 PM PST." in hour_before["hana.sato@example.test"].get_body(("plain",)).get_content()
    assert "at 9:00 PM EST." in hour_before["grace.okafor@example.test"].get_body(("plain",)).get_content()
    shown = funnel("contacts", "show", "hana.sato@example.test", "--json").json()
    assert shown["enrollments"][0]["webinar_start"] == "2027-01-22T02:00:00Z"


def test_clients_and_held_consultations_stop_the_consultation_letters(project: Project, funnel) -> None:
    requests = "signups/consultation-requests.jsonl"
    project.write(
        requests,
        '{"email": "irene@example.test", "name": "Irene"}\n'
        '{"email": "jess@example.test", "name": "Jess"}\n'
        '{"email": "kim@example.test", "name": "Kim"}\n',
    )
    # no clients.csv nor consultations-held.csv yet: quiet and harmless
    first = funnel("run", "--now", "2027-01-04T16:00:00Z", "--json")
    assert first.code == 0, first.err
    summary = first.json()
    assert summary["problems"] == [] and summary["warnings"] == [] and summary["failed"] == 0
    assert summary["sources"]["clients"]["status"] == "missing"
    quiet = funnel("run", "--now", "2027-01-04T16:05:00Z")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    # Irene became a client (the practice's list, which also names someone never seen);
    # Jess had her call (tagged by hand); Kim neither
    project.write("signups/clients.csv", "Email\nIRENE@example.test\nstranger@example.test\n")
    assert funnel("contacts", "tag", "jess@example.test", "consultation-held").code == 0
    read = funnel("run", "--now", "2027-01-04T16:10:00Z", "--json").json()
    assert read["sources"]["clients"]["imported"] == 1 and read["sources"]["clients"]["not_contacts"] == 1
    for day in range(5, 14):
        assert funnel("run", "--now", f"2027-01-{day:02d}T16:00:00Z").code == 0
    sent = project.sent()
    assert [s for to, _, s in sent if to == "kim@example.test"] == ["received", "what-to-expect", "follow-up"]
    assert [s for to, _, s in sent if to == "irene@example.test"] == ["received"]
    assert [s for to, _, s in sent if to == "jess@example.test"] == ["received"]
    assert funnel("contacts", "show", "stranger@example.test").code == 1  # create: false
    jess = funnel("contacts", "show", "jess@example.test", "--json").json()["enrollments"][0]
    assert jess["status"] == "exited" and jess["reason"] == "goal reached: tag consultation-held"
    irene = funnel("contacts", "show", "irene@example.test", "--json").json()["enrollments"][0]
    assert {s["id"]: s.get("reason") for s in irene["steps"]}["follow-up"] == "goal reached: tag client"


def test_the_confirmation_eml_has_the_calendar_invitation(example_project: Project, funnel) -> None:
    from icalendar import Calendar

    _, registered = load_config(example_project.root / "sequences.yaml").find_step(
        "webinar-relationship-911", "registered"
    )
    assert registered.discreet_preheader

    assert funnel("run", "--now", "2026-12-01T16:00:00Z").code == 0
    confirmations = {
        str(m["To"].addresses[0].addr_spec): m
        for m in example_project.messages()
        if m["Subject"] in ("Your confirmation",) or m["Subject"].startswith("Your place is saved")
    }
    # 7 from the plain registration export, 3 from Zoom's report (the fourth registered too long ago)
    assert len(confirmations) == 10
    uids = set()
    for address, message in confirmations.items():
        assert message.get_content_type() == "multipart/mixed"
        (part,) = [p for p in message.iter_attachments() if p.get_content_type() == "text/calendar"]
        assert part.get_filename() == "invite.ics"
        assert part.get_param("method") == "PUBLISH"
        assert message.get_body(("plain",)) is not None  # the letter itself is still there
        (event,) = Calendar.from_ical(part.get_content()).walk("VEVENT")
        uids.add(str(event["UID"]))
        assert address not in part.get_content()
        if address.startswith("gwen."):  # from Zoom's report: her own join link, in the event too
            assert str(event["URL"]).endswith("?tk=gO2v-Mw9Bn5")
        if address.startswith("farah."):  # from Zoom's report, but discreet: no link in her calendar
            assert "URL" not in event and "tk=" not in part.get_content()
        if address in ("carla.mendes@example.test", "farah.haddad@example.test"):  # discreet: text only, neutral
            assert message.get_body(("html",)) is None
            assert str(event["SUMMARY"]) == "Appointment"
            text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
            assert text.startswith(f"{registered.discreet_preheader}\n")  # the inbox preview
            assert "M. Ellis" in str(message["From"]) and "M. Ellis" in text  # signed as the From
            for revealing in ("Healing Light Counseling", "Relationship 911", "Dr. Maya Ellis"):
                assert revealing not in text
        else:
            assert message.get_body(("html",)) is not None
            # the quiet event_title on lock screens; the full title only inside the event
            assert str(event["SUMMARY"]) == "Evening webinar with Maya Ellis"
            assert "Relationship 911" in str(event["DESCRIPTION"])
    assert len(uids) == 10  # one per person
    # only `calendar: true` steps carry it: not the consultation receipts
    receipts = sorted(example_project.outbox.glob("*_consultation_received_*.eml"))
    assert len(receipts) == 3
    for path in receipts:
        assert b"text/calendar" not in path.read_bytes()


def test_without_a_webinar_date_the_confirmation_goes_without_the_calendar(project: Project, funnel) -> None:
    """A confirmation that does not need the date (the shipped one does, and is skipped: "no webinar date")."""
    # a webinar without sessions: a row without a start has no date (with the shipped ones, the next session)
    config = project.root / "sequences.yaml"
    config.write_text(without_shipped_sessions(config.read_text()))
    project.write("email_templates/webinar/registered.md", "Hi {{ contact.first_name or 'friend' }}, you are in.\n")
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,,America/Denver,\n")
    result = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert result.code == 0, result.err
    assert result.json()["sent"] == 1
    assert result.json()["warnings"] == [
        "webinar-relationship-911/registered: sent without its calendar invitation (no webinar date)"
    ]
    (message,) = project.messages()
    assert message.get_content_type() == "multipart/alternative"


def test_rows_with_the_same_problem_make_one_line_counting_the_others(project: Project, funnel) -> None:
    """50,000 registrations with one misspelt zone, or one doubtful webinar start, are not 50,000 lines."""
    rows = "".join(f"p{n}@example.test,P{n},,2027-01-14 19:00,Mars/Base,\n" for n in range(8))
    rows += "bad-address,Bad,,,,\nalso-bad,Bad,,,,\nlast@example.test,L,,2027-01-14 19:00,Venus/Base,\n"
    project.write("signups/webinar-registrations.csv", HEADER + rows)
    result = funnel("run", "--now", "2027-01-10T03:00:00Z", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    path = "signups/webinar-registrations.csv"
    mars, venus = summary["warnings"]
    assert mars.startswith(f"{path}:2: ") and "Mars/Base" in mars
    assert mars.endswith("(the same on 7 more row(s): line 3, 4, 5, 6, 7 and 2 more)")
    assert venus.startswith(f"{path}:12: ") and "Venus/Base" in venus and "the same on" not in venus
    assert [p.split(": ")[0] for p in summary["problems"]] == [f"{path}:10", f"{path}:11"]  # each its own address
    assert summary["sources"]["webinar-registrations"]["rejected"] == 2
    assert summary["imported"] == 9
