"""`funnel plan`: following people into their `next:` sequence, and times as the practice reads them.

Through the real CLI on the shipped sequences.yaml, whose webinar sequence goes on to
`betrayal-recovery` (nine letters, one a week or so): in-process (`funnel_cli`), and as cron
starts the real `funnel` program in the test of a run minutes after the last letter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from subprocess import CompletedProcess
from zoneinfo import ZoneInfo

import pytest
from conftest import Project, Result

from funnel.config import Delivery, Sequence, Step
from funnel.schedule import ContactState, EnrollmentState, Follow, project
from funnel.timeutil import readable

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
DENVER = ZoneInfo("America/Denver")
WEBINAR = "webinar-relationship-911"
AFTER = "betrayal-recovery"
#: a Thursday webinar whose letters afterwards run across the spring-forward night (2027-03-14)
START = "2027-02-25 19:00"
NOW = "2027-02-20T16:00:00Z"

Funnel = Callable[..., CompletedProcess[str]]


@pytest.fixture
def funnel_cli(funnel: Callable[..., Result]) -> Funnel:
    """The real CLI in-process (conftest's `funnel`), answering as `funnel_process` does."""

    def call(*args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
        result = funnel(*args, env=env)
        return CompletedProcess(["funnel", *args], result.code, result.out, result.err)

    return call


def register(project: Project, funnel_process: Funnel, *rows: str) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + "".join(rows))
    result = funnel_process("run", "--now", NOW)
    assert result.returncode == 0, result.stderr


def plan_json(funnel_process: Funnel, *args: str) -> list[dict[str, str]]:
    result = funnel_process("plan", "--now", NOW, "--days", "30", "--json", *args)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, str]] = json.loads(result.stdout)
    return items


def test_plan_follows_a_registrant_into_the_letters_after_the_webinar(project: Project, funnel_cli: Funnel) -> None:
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    items = plan_json(funnel_cli)
    assert [(i["sequence"], i["step"], i["at"], i.get("via")) for i in items] == [
        (WEBINAR, "day-before", "2027-02-25T02:00:00Z", None),
        (WEBINAR, "hour-before", "2027-02-26T01:00:00Z", None),
        # 3 h after the webinar is 22:00, after the send window: 08:00 the next morning
        (WEBINAR, "replay", "2027-02-26T15:00:00Z", None),
        (WEBINAR, "consultation-invite", "2027-02-28T16:00:00Z", None),
        # enrolled when the last webinar letter goes (09:00 MST on the 28th), as a run enrolls her
        (AFTER, "what-you-feel", "2027-03-03T16:00:00Z", WEBINAR),
        (AFTER, "steadier-ground", "2027-03-08T16:00:00Z", WEBINAR),
        # after the clocks go forward: still 09:00 on her wall clock, an hour earlier in UTC
        (AFTER, "anger", "2027-03-15T15:00:00Z", WEBINAR),
        (AFTER, "your-lines", "2027-03-22T15:00:00Z", WEBINAR),
    ]
    # JSON keeps the spec's shape, in UTC; `via` only on the rows of a sequence she is not in yet
    for item in items:
        assert set(item) == (
            {"email", "sequence", "step", "at", "via"}
            if item["sequence"] == AFTER
            else {"email", "sequence", "step", "at"}
        )
        assert item["email"] == "ana@example.test"
        assert item["at"].endswith("Z")

    text = funnel_cli("plan", "--now", NOW, "--days", "30")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "times in America/Denver (the practice's time zone; --utc for UTC)"
    rows = {line.split()[8]: line.strip() for line in lines if "ana@example.test" in line}
    assert rows["day-before"].startswith("Wed 24 Feb 2027 19:00 MST ")
    assert rows["replay"].startswith("Fri 26 Feb 2027 08:00 MST ")
    assert rows["steadier-ground"].startswith("Mon 8 Mar 2027 09:00 MST ")
    assert rows["anger"].startswith("Mon 15 Mar 2027 09:00 MDT ")
    assert rows["anger"].rstrip().endswith(f"(after {WEBINAR})")
    assert not rows["replay"].rstrip().endswith(")")
    assert len(rows) == 8

    utc = funnel_cli("plan", "--now", NOW, "--days", "30", "--utc")
    assert utc.returncode == 0, utc.stderr
    lines = utc.stdout.splitlines()
    assert lines[0] == "times in UTC"
    rows = {line.split()[8]: line.strip() for line in lines if "ana@example.test" in line}
    assert rows["day-before"].startswith("Thu 25 Feb 2027 02:00 UTC ")
    assert rows["anger"].startswith("Mon 15 Mar 2027 15:00 UTC ")


def test_plan_sees_as_far_as_the_window_and_no_further(project: Project, funnel_cli: Funnel) -> None:
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    result = funnel_cli("plan", "--now", NOW, "--days", "9", "--json")
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    # the webinar letters end on the 28th; the first letter after it (March 3rd) is outside
    assert [i["step"] for i in items][-1] == "consultation-invite"
    assert all(i["sequence"] == WEBINAR for i in items)


def test_someone_who_reached_the_goal_is_not_followed_into_next(project: Project, funnel_cli: Funnel) -> None:
    register(
        project,
        funnel_cli,
        f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n",
        f"bea@example.test,Bea,Lund,{START},America/Denver,no\n",
    )
    tagged = funnel_cli("contacts", "tag", "bea@example.test", "consultation-requested", "--now", NOW)
    assert tagged.returncode == 0, tagged.stderr
    items = plan_json(funnel_cli)
    bea = [(i["sequence"], i["step"]) for i in items if i["email"] == "bea@example.test"]
    # her reminders still go (transactional) and the recording (after_goal); the letters, and the
    # sequence after, do not
    assert bea == [(WEBINAR, "day-before"), (WEBINAR, "hour-before"), (WEBINAR, "replay")]
    assert [i["step"] for i in items if i["email"] == "ana@example.test" and i["sequence"] == AFTER] == [
        "what-you-feel",
        "steadier-ground",
        "anger",
        "your-lines",
    ]
    text = funnel_cli("plan", "--now", NOW, "--days", "30").stdout
    bea_lines = [line for line in text.splitlines() if "bea@example.test" in line]
    assert bea_lines and not any(AFTER in line for line in bea_lines)


def test_an_unsubscribed_person_is_not_followed_either(project: Project, funnel_cli: Funnel) -> None:
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    assert funnel_cli("contacts", "unsubscribe", "ana@example.test", "--now", NOW).returncode == 0
    assert plan_json(funnel_cli) == []


def test_someone_already_in_the_next_sequence_is_not_shown_twice(project: Project, funnel_cli: Funnel) -> None:
    # a second source puts people straight into the letters (e.g. a list from an older webinar)
    config = (project.root / "sequences.yaml").read_text()
    config = config.replace(
        "sources:\n",
        "sources:\n  earlier-list:\n    format: csv\n    path: signups/earlier.csv\n"
        "    columns: {email: Email}\n    enroll: betrayal-recovery\n",
        1,
    )
    (project.root / "sequences.yaml").write_text(config)
    project.write("signups/earlier.csv", "Email\nana@example.test\n")
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    items = plan_json(funnel_cli)
    after = [(i["step"], i.get("via")) for i in items if i["sequence"] == AFTER]
    # the letters of her own enrollment (from Feb 20th), each once, none "after the webinar"
    assert [step for step, _via in after] == [
        "what-you-feel",
        "steadier-ground",
        "anger",
        "your-lines",
        "hard-conversations",
    ]
    assert all(via is None for _step, via in after)


def test_plan_after_the_last_letter_was_sent_follows_at_once(project: Project, funnel_cli: Funnel) -> None:
    """A run that sends the last webinar letter enrolls her in the letters: plan then shows them plainly."""
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    for now in ("2027-02-25T02:00:00Z", "2027-02-26T01:00:00Z", "2027-02-26T15:00:00Z", "2027-02-28T16:00:00Z"):
        assert funnel_cli("run", "--now", now).returncode == 0
    result = funnel_cli("plan", "--now", "2027-02-28T16:00:00Z", "--days", "10", "--json")
    items = json.loads(result.stdout)
    assert [(i["sequence"], i["step"], i.get("via")) for i in items] == [
        (AFTER, "what-you-feel", None),
        (AFTER, "steadier-ground", None),
    ]
    # what plan showed before the run is what the run did: the same times
    assert [i["at"] for i in items] == ["2027-03-03T16:00:00Z", "2027-03-08T16:00:00Z"]


# ======================================== the pure projection


def test_project_follows_next_from_the_moment_the_last_step_goes() -> None:
    first = Sequence(steps=(step("a"), step("b", "1d")), next="second")
    second = Sequence(steps=(step("c", "2d"), step("d", "1d")))
    enrolled = local(2027, 3, 1, 10)
    follow = Follow({"first": first, "second": second})
    plan = project(
        {"first": (first, EnrollmentState(enrolled))},
        ContactState(DENVER),
        enrolled,
        enrolled + timedelta(days=30),
        free(),
        follow=follow,
    )
    assert [(p.sequence, p.step, p.at, p.via) for p in plan] == [
        ("first", "a", enrolled, None),
        ("first", "b", local(2027, 3, 2, 10), None),
        ("second", "c", local(2027, 3, 4, 10), "first"),
        ("second", "d", local(2027, 3, 5, 10), "first"),
    ]
    # without `follow` (or when she has been in `second` before) nothing of it is shown
    for kwargs in ({}, {"follow": Follow({"first": first, "second": second}, frozenset({"second"}))}):
        plan = project(
            {"first": (first, EnrollmentState(enrolled))},
            ContactState(DENVER),
            enrolled,
            enrolled + timedelta(days=30),
            free(),
            **kwargs,  # type: ignore[arg-type]
        )
        assert [p.sequence for p in plan] == ["first", "first"]


def test_project_does_not_follow_a_goal_or_a_cycle() -> None:
    first = Sequence(steps=(step("a"),), next="second", exit_on_tags=("client",))
    second = Sequence(steps=(step("c", "1d"),), next="first")
    enrolled = local(2027, 3, 1, 10)
    follow = Follow({"first": first, "second": second}, frozenset({"first"}))
    start = {"first": (first, EnrollmentState(enrolled))}
    until = enrolled + timedelta(days=30)
    client = ContactState(DENVER, frozenset({"client"}))
    assert project(start, client, enrolled, until, free(), follow=follow) == []
    plan = project(start, ContactState(DENVER), enrolled, until, free(), follow=follow)
    # `second` goes back to `first`, which she was in: a run would not enroll her again
    assert [(p.sequence, p.step) for p in plan] == [("first", "a"), ("second", "c")]


def local(y: int, mo: int, d: int, h: int) -> datetime:
    return datetime(y, mo, d, h, tzinfo=DENVER).astimezone(UTC)


def step(id: str, wait: str = "0m") -> Step:
    return Step(id=id, subject=f"subject {id}", template=f"{id}.md", wait=wait)


def free() -> Delivery:
    """A day's window around the steps' 10:00 and a gap they keep: the times are the due times."""
    return Delivery(send_window="08:00-20:00", min_gap="20h", max_late="2d")


def test_readable_names_the_zone_on_both_sides_of_a_dst_change() -> None:
    assert readable(datetime(2027, 3, 8, 16, tzinfo=UTC), DENVER) == "Mon 8 Mar 2027 09:00 MST"
    assert readable(datetime(2027, 3, 15, 15, tzinfo=UTC), DENVER) == "Mon 15 Mar 2027 09:00 MDT"
    # the hour that happens twice in November is told apart by its name
    assert readable(datetime(2027, 11, 7, 7, 30, tzinfo=UTC), DENVER) == "Sun 7 Nov 2027 01:30 MDT"
    assert readable(datetime(2027, 11, 7, 8, 30, tzinfo=UTC), DENVER) == "Sun 7 Nov 2027 01:30 MST"
    assert readable(datetime(2027, 1, 14, 2, tzinfo=UTC), ZoneInfo("UTC")) == "Thu 14 Jan 2027 02:00 UTC"


def test_contacts_show_reads_in_the_practice_zone_and_utc_on_request(project: Project, funnel_cli: Funnel) -> None:
    register(project, funnel_cli, f"ana@example.test,Ana,Reyes,{START},America/Chicago,no\n")
    shown = funnel_cli("contacts", "show", "ana@example.test")
    assert shown.returncode == 0, shown.stderr
    lines = [line.rstrip() for line in shown.stdout.splitlines()]
    # her own zone is Chicago; the therapist reads the practice's, named on every time
    assert "times in America/Denver (the practice's time zone; --utc for UTC)" in lines
    assert f"{WEBINAR}: active, enrolled Sat 20 Feb 2027 09:00 MST" in lines
    assert "  registered               sent     Sat 20 Feb 2027 09:00 MST" in lines
    assert "  day-before               pending  Wed 24 Feb 2027 19:00 MST" in lines
    in_utc = funnel_cli("contacts", "show", "ana@example.test", "--utc").stdout.splitlines()
    assert "times in UTC" in in_utc
    assert "  day-before               pending  Thu 25 Feb 2027 02:00 UTC" in [line.rstrip() for line in in_utc]
    as_json = json.loads(funnel_cli("contacts", "show", "ana@example.test", "--json").stdout)
    assert as_json["enrollments"][0]["steps"][1]["due_at"] == "2027-02-25T02:00:00Z"


def test_a_cron_run_minutes_after_the_last_letter_starts_next_as_plan_said(
    project: Project, funnel_process: Funnel
) -> None:
    """The last webinar letter is due 09:00; a run at 09:10 sends it: the next letters keep their 09:00 days."""
    register(project, funnel_process, f"ana@example.test,Ana,Reyes,{START},America/Denver,no\n")
    before = plan_json(funnel_process)
    (planned,) = [i["at"] for i in before if i["step"] == "what-you-feel"]
    for now in ("2027-02-25T02:10:00Z", "2027-02-26T01:10:00Z", "2027-02-26T15:10:00Z", "2027-02-28T16:10:00Z"):
        assert funnel_process("run", "--now", now).returncode == 0
    result = funnel_process("plan", "--now", "2027-02-28T16:10:00Z", "--days", "10", "--json")
    items = json.loads(result.stdout)
    assert [(i["step"], i["at"]) for i in items][:1] == [("what-you-feel", planned)]
    assert planned == "2027-03-03T16:00:00Z"
