"""Webinar sessions (spec section 7): the config, and which session a registrant joins (pure tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from funnel.config import Webinar, load_config
from funnel.webinar.sessions import latest_started, pick_session, session_warnings, sessions_between
from tests.test_config import BASE_YAML, line_of, problems_of, write_project

DENVER = ZoneInfo("America/Denver")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def webinar(**extra: object) -> Webinar:
    return Webinar.model_validate({"title": "Intro", **extra})


MONTHLY = webinar(
    sessions=[
        "2027-01-14 18:30",
        "2027-02-18 18:30",
        {"start": "2027-03-25 18:30", "was": "2027-03-18 18:30"},
        {"start": "2027-04-15 18:30", "cancelled": True},
    ],
    repeat="FREQ=MONTHLY;BYDAY=3TH",
    repeat_at="18:30",
)


def test_the_rule_adds_third_thursdays_beyond_the_list_and_the_list_wins() -> None:
    found = sessions_between(MONTHLY, DENVER, utc("2027-01-01 00:00"), utc("2027-07-01 00:00"))
    assert [(s.id, s.start, s.cancelled) for s in found] == [
        ("2027-01-14 18:30", utc("2027-01-15 01:30"), False),  # listed, not a third Thursday
        ("2027-01-21 18:30", utc("2027-01-22 01:30"), False),  # the rule's January date
        ("2027-02-18 18:30", utc("2027-02-19 01:30"), False),  # listed and the rule's: once
        # moved: its id is the date as first written, its start the new one (MDT from March 14)
        ("2027-03-18 18:30", utc("2027-03-26 00:30"), False),
        ("2027-04-15 18:30", utc("2027-04-16 00:30"), True),
        ("2027-05-20 18:30", utc("2027-05-21 00:30"), False),
        ("2027-06-17 18:30", utc("2027-06-18 00:30"), False),
    ]
    moved = found[3]
    assert moved.previous_start == utc("2027-03-19 00:30")


@pytest.mark.parametrize(
    ("row_start", "signed_up", "expected_id", "configured"),
    [
        # no start in the row: the next session after she signed up
        (None, "2027-01-02 12:00", "2027-01-14 18:30", True),
        (None, "2027-01-15 01:29", "2027-01-14 18:30", True),
        (None, "2027-01-15 01:30", "2027-01-21 18:30", True),  # started: the next one
        # the next is cancelled (April 15): the one after
        (None, "2027-04-01 00:00", "2027-05-20 18:30", True),
        # across the DST change (March 14): 18:30 MDT is 00:30 UTC the next day
        (None, "2027-03-10 00:00", "2027-03-18 18:30", True),
        # the row names a session: that one, whenever she signed up
        ("2027-02-19 01:30", "2027-01-02 12:00", "2027-02-18 18:30", True),
        # the row names a moved session's old time (an old export): the moved session
        ("2027-03-19 00:30", "2027-01-02 12:00", "2027-03-18 18:30", True),
        # a time no session has: taken as given, its id its local text
        ("2027-02-20 17:00", "2027-01-02 12:00", "2027-02-20 10:00", False),
    ],
)
def test_which_session_a_registrant_joins(
    row_start: str | None, signed_up: str, expected_id: str, configured: bool
) -> None:
    found = pick_session(MONTHLY, DENVER, utc(row_start) if row_start else None, utc(signed_up))
    assert found is not None
    assert (found.id, found.configured) == (expected_id, configured)


def test_no_session_ahead_is_none_and_a_plain_list_ends() -> None:
    listed = webinar(sessions=["2027-01-14 18:30"])
    assert pick_session(listed, DENVER, None, utc("2027-02-01 00:00")) is None
    assert pick_session(webinar(), DENVER, None, utc("2027-02-01 00:00")) is None


def test_a_session_in_a_dst_gap_moves_forward_by_the_jump() -> None:
    gap = webinar(sessions=["2027-03-14 02:30"])
    (only,) = sessions_between(gap, DENVER, utc("2027-03-01 00:00"), utc("2027-04-01 00:00"))
    assert only.start == utc("2027-03-14 09:30")  # 03:30 MDT
    assert only.id == "2027-03-14 02:30"


def test_a_daily_rule_with_no_end_is_bounded() -> None:
    daily = webinar(repeat="FREQ=DAILY", repeat_at="12:00")
    found = sessions_between(daily, DENVER, utc("2027-01-01 00:00"), utc("2030-01-01 00:00"))
    assert 1000 < len(found) <= 2000
    nxt = pick_session(daily, DENVER, None, utc("2040-05-05 20:00"))
    assert nxt is not None and nxt.id == "2040-05-06 12:00"


def test_a_rule_may_carry_its_own_dtstart_for_its_interval() -> None:
    every_other = webinar(repeat="DTSTART:20270107T000000\nRRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=TH", repeat_at="09:00")
    found = sessions_between(every_other, DENVER, utc("2027-01-01 00:00"), utc("2027-02-10 00:00"))
    assert [s.id for s in found] == ["2027-01-07 09:00", "2027-01-21 09:00", "2027-02-04 09:00"]


def test_attendance_without_a_join_time_belongs_to_the_latest_started_session() -> None:
    found = latest_started(MONTHLY, DENVER, utc("2027-02-19 03:00"))
    assert found is not None and found.id == "2027-02-18 18:30"
    # April is cancelled: a file read on April 20 belongs to March's (moved) session
    found = latest_started(MONTHLY, DENVER, utc("2027-04-20 00:00"))
    assert found is not None and found.id == "2027-03-18 18:30"
    assert latest_started(webinar(sessions=["2027-01-14 18:30"]), DENVER, utc("2027-01-01 00:00")) is None


SESSIONS_YAML = BASE_YAML.replace(
    "    join_url: https://practice.test/join\n",
    "    join_url: https://practice.test/join\n"
    "    timezone: America/Denver\n"
    "    sessions:\n"
    "      - 2027-01-14 18:30\n"
    "      - start: 2027-02-25 18:30\n"
    "        was: 2027-02-18 18:30\n"
    "    repeat: FREQ=MONTHLY;BYDAY=3TH\n"
    '    repeat_at: "18:30"\n',
).replace("columns: {email: Email, first_name: First Name, webinar_start: Start}", "columns: {email: Email}")


def test_sessions_load_and_a_source_needs_no_start_column(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, SESSIONS_YAML))
    found = config.webinars["intro"]
    assert [s.start for s in found.sessions] == [datetime(2027, 1, 14, 18, 30), datetime(2027, 2, 25, 18, 30)]
    assert found.sessions[1].was == datetime(2027, 2, 18, 18, 30)


def test_without_sessions_a_start_column_is_still_needed(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"webinar_start: Start": "last_name: Start"})
    (problem,) = problems_of(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'columns:')}: ")
    assert "maps no `webinar_start` column" in problem and "sessions" in problem


@pytest.mark.parametrize(
    ("old", "new", "needle", "words"),
    [
        ("FREQ=MONTHLY;BYDAY=3TH", "FREQ=MONTHLY;BYDAY=3XX", "repeat:", "not an RFC 5545 rule"),
        ("FREQ=MONTHLY;BYDAY=3TH", "FREQ=HOURLY", "repeat:", "at most daily"),
        ('    repeat_at: "18:30"\n', "", "repeat:", "needs `repeat_at`"),
        ("      - 2027-01-14 18:30\n", "      - 2027-01-14\n", "- 2027-01-14", "has no time of day"),
        ("      - 2027-01-14 18:30\n", "      - Jan 14\n", "- Jan 14", "YYYY-MM-DD HH:MM"),
        (
            "      - 2027-01-14 18:30\n",
            "      - 2027-01-14 18:30\n      - 2027-01-14 18:30\n",
            "- 2027-01-14 18:30",
            "two sessions start at 2027-01-14 18:30",
        ),
        (
            "        was: 2027-02-18 18:30\n",
            "        was: 2027-01-14 18:30\n",
            "- start: 2027-02-25",
            "also listed as a session of its own",
        ),
    ],
)
def test_session_mistakes_name_the_line_and_the_fix(
    tmp_path: Path, old: str, new: str, needle: str, words: str
) -> None:
    path = write_project(tmp_path, SESSIONS_YAML.replace(old, new))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    line = line_of(path, needle, 2 if words.startswith("two sessions") else 1)
    assert problems[0].startswith(f"sequences.yaml:{line}: "), problems
    assert words in problems[0]


def test_a_was_naming_no_session_is_a_plain_move(tmp_path: Path) -> None:
    load_config(write_project(tmp_path, SESSIONS_YAML.replace("was: 2027-02-18", "was: 2027-02-11")))


def test_a_listed_session_in_the_past_is_a_warning(tmp_path: Path) -> None:
    path = write_project(tmp_path, SESSIONS_YAML)
    config = load_config(path)
    (warning,) = session_warnings(config, utc("2027-02-01 00:00"))
    assert warning.startswith(f"sequences.yaml:{line_of(path, '- 2027-01-14 18:30')}: warning: ")
    assert "2027-01-14 18:30 is over" in warning
    assert session_warnings(config, utc("2027-01-01 00:00")) == []
    assert len(session_warnings(config, utc("2027-03-01 00:00") + timedelta(days=1))) == 2
