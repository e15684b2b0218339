"""End to end: the real `funnel` command over simulated weeks, reading the .eml files it writes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

from conftest import Project, database_rows

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
    assert summary["sent"] == 9  # 6 registration confirmations + 3 consultation receipts
    assert summary["failed"] == 0
    for key in ("imported", "rejected", "enrolled", "sent", "skipped", "failed"):
        assert key in summary
    files = sorted(example_project.outbox.glob("*.eml"))
    assert len(files) == 9
    again = funnel("run", "--now", "2026-12-01T16:00:00Z", "--json")
    assert again.code == 0
    assert again.json()["sent"] == 0
    assert again.json()["imported"] == 0
    assert len(list(example_project.outbox.glob("*.eml"))) == 9


def test_same_address_in_any_case_is_one_contact(example_project: Project, funnel) -> None:
    funnel("run", "--now", "2026-12-01T16:00:00Z")
    ana = [to for to, seq, step in example_project.sent() if to == "ana.reyes@example.test"]
    assert ana == ["ana.reyes@example.test"]
    shown = funnel("contacts", "show", "ANA.REYES@example.test", "--json")
    assert shown.code == 0
    assert shown.json()["email"] == "ana.reyes@example.test"


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
    times += clock(datetime(2027, 1, 13, 16, tzinfo=UTC), datetime(2027, 1, 30, tzinfo=UTC), timedelta(hours=1))
    times += clock(datetime(2027, 1, 30, 16, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=UTC), timedelta(hours=12))
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
        "your-lines",
        "hard-conversations",
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
            # 2027-01-27 19:00 in New York, the day before her *new* webinar
            assert sent_at == datetime(2027, 1, 28, 0, 0, tzinfo=UTC)

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
        assert message.get_content_type() == "text/plain"
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


def test_goal_reached_leaves_the_sequence(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,{WEBINAR_A},America/Denver,\n")
    funnel("run", "--now", "2027-01-10T16:00:00Z")
    project.write(
        "signups/consultation-requests.jsonl", '{"email": "ANA@example.test", "name": "Ana", "message": "hi"}\n'
    )
    funnel("run", "--now", "2027-01-11T16:00:00Z")
    funnel("run", "--now", "2027-01-14T02:00:00Z")
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    by_sequence = {e["sequence"]: e for e in shown["enrollments"]}
    assert by_sequence["webinar-relationship-911"]["status"] == "exited"
    assert by_sequence["webinar-relationship-911"]["reason"] == "tag consultation-requested"
    assert "consultation-requested" in shown["tags"]
    assert ("ana@example.test", "webinar-relationship-911", "day-before") not in project.sent()
    assert ("ana@example.test", "consultation", "received") in project.sent()


def test_dry_run_writes_nothing(example_project: Project, funnel) -> None:
    result = funnel("run", "--now", "2026-12-01T16:00:00Z", "--dry-run", "--json")
    assert result.code == 0
    assert result.json()["sent"] == 9
    assert not example_project.outbox.exists()
    real = funnel("run", "--now", "2026-12-01T16:00:00Z", "--json")
    assert real.json()["sent"] == 9
    assert real.json()["imported"] == 13


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
