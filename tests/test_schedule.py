"""The pure schedule (funnel.schedule, funnel.timeutil): table-driven cases and properties.

Every datetime here is fixed and aware; expected instants are written in UTC
by hand (not computed with the code under test), so a wrong offset shows.

Dates used: US DST starts 2026-03-08 and ends 2026-11-01 (2:00 local); the
EU (London) starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC;
Sydney and Auckland end DST 2026-04-05 and start it 2026-10-04 / 2026-09-27.
2026-03-06 and 2026-10-30 are Fridays, 2026-03-09 a Monday.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.config import DAY_NAMES, Delivery, Sequence, Step
from funnel.schedule import (
    ContactState,
    EnrollmentState,
    Evaluation,
    Recorded,
    due_times,
    evaluate,
    first_look,
    in_window,
    next_opening,
    project,
    snap_to_clock,
)
from funnel.timeutil import add_duration, describe_delay, parse_duration

DENVER = ZoneInfo("America/Denver")
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
KOLKATA = ZoneInfo("Asia/Kolkata")
SYDNEY = ZoneInfo("Australia/Sydney")
AUCKLAND = ZoneInfo("Pacific/Auckland")
ZONES = (DENVER, NEW_YORK, LONDON, KOLKATA, SYDNEY, AUCKLAND)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def Z(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """An instant written in UTC."""
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def L(tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A local wall time (first occurrence when ambiguous), as an aware UTC instant."""
    return datetime(y, mo, d, h, mi, tzinfo=tz).astimezone(UTC)


def at(tz: ZoneInfo, text: str) -> datetime:
    """`MM-DD HH:MM` in 2026: local wall time in `tz`, or UTC with a trailing `Z`."""
    naive = datetime.strptime("2026-" + text.removesuffix("Z"), "%Y-%m-%d %H:%M")
    return naive.replace(tzinfo=UTC if text.endswith("Z") else tz).astimezone(UTC)


def step(id: str = "a", **kw: object) -> Step:
    if "wait" not in kw and "webinar" not in kw:
        kw["wait"] = "0m"
    return Step(id=id, subject=f"subject {id}", template=f"{id}.md", **kw)


def seq(*steps: Step, exit_on_tags: tuple[str, ...] = ()) -> Sequence:
    return Sequence(steps=steps, exit_on_tags=exit_on_tags)


def delivery(**kw: object) -> Delivery:
    values: dict[str, object] = {"send_window": "08:00-20:00", "min_gap": "20h", "max_late": "2d"}
    values.update(kw)
    return Delivery(**values)


def run(
    sequence: Sequence,
    enrolled_at: datetime,
    now: datetime,
    tz: ZoneInfo = DENVER,
    *,
    webinar_start: datetime | None = None,
    recorded: dict[str, Recorded] | None = None,
    tags: frozenset[str] = frozenset(),
    suppressed: str | None = None,
    last_marketing_at: datetime | None = None,
    dl: Delivery | None = None,
) -> Evaluation:
    return evaluate(
        sequence,
        EnrollmentState(enrolled_at, webinar_start, recorded or {}),
        ContactState(tz, tags, suppressed, last_marketing_at),
        now,
        dl or delivery(),
    )


def outcome(evaluation: Evaluation, step_id: str = "a") -> str:
    """`send`, `skip: <reason>` or `wait` for one step."""
    if any(s.step.id == step_id for s in evaluation.sends):
        return "send"
    for skip in evaluation.skips:
        if skip.step.id == step_id:
            return f"skip: {skip.reason}"
    return "wait"


def wall_in_window(instant: datetime, dl: Delivery, tz: ZoneInfo) -> bool:
    """An independent reading of the window: the local wall clock and weekday of `instant`."""
    local = instant.astimezone(tz)
    if DAY_NAMES[local.weekday()] not in dl.send_days:
        return False
    clock = local.time().replace(tzinfo=None)
    start, end = dl.send_window.start, dl.send_window.end
    return start <= clock < end if start < end else (clock >= start or clock < end)


# The practice's webinar sequence from the spec (§3.1).
WEBINAR = seq(
    step("registered", wait="0m", transactional=True),
    step("day-before", webinar="-1d", transactional=True),
    step("replay", webinar="+3h", unless_tags=("webinar-attended",)),
    step("thank-you", webinar="+3h", if_tags=("webinar-attended",)),
    step("offer", wait="2d", at="09:00"),
    exit_on_tags=("consultation-requested", "client"),
)


# ======================================== due times


DENVER_FALL = "11-01 07:45Z"  # 01:45 MDT, the first of the two
EARLY = "01-01 00:00"
BEFORE_1D = {"webinar": "-1d"}

DUE_CASES = [
    # id, zone, enrolled (local), webinar start (local), step timing, expected due (UTC)
    # `d`/`w` keep the wall clock across DST, `m`/`h` are elapsed time
    ("denver-1d-spring", DENVER, "03-07 12:00", None, {"wait": "1d"}, "03-08 18:00"),
    ("denver-24h-spring", DENVER, "03-07 12:00", None, {"wait": "24h"}, "03-08 19:00"),
    ("denver-30m-over-gap", DENVER, "03-08 01:45", None, {"wait": "30m"}, "03-08 09:15"),
    ("ny-1d-fall", NEW_YORK, "10-31 12:00", None, {"wait": "1d"}, "11-01 17:00"),
    ("ny-24h-fall", NEW_YORK, "10-31 12:00", None, {"wait": "24h"}, "11-01 16:00"),
    ("london-1d-spring", LONDON, "03-28 12:00", None, {"wait": "1d"}, "03-29 11:00"),
    ("london-1w-spring", LONDON, "03-28 12:00", None, {"wait": "1w"}, "04-04 11:00"),
    ("london-1d-fall", LONDON, "10-24 12:00", None, {"wait": "1d"}, "10-25 12:00"),
    ("sydney-1d-dst-end", SYDNEY, "04-04 12:00", None, {"wait": "1d"}, "04-05 02:00"),
    ("auckland-1d-dst-start", AUCKLAND, "09-26 12:00", None, {"wait": "1d"}, "09-26 23:00"),
    ("kolkata-1d", KOLKATA, "03-07 12:00", None, {"wait": "1d"}, "03-08 06:30"),
    # webinar offsets count from the webinar start (enrolled long before)
    ("denver-1d-before-spring", DENVER, EARLY, "03-08 19:00", BEFORE_1D, "03-08 02:00"),
    ("denver-1d-before-fall", DENVER, EARLY, "11-01 19:00", BEFORE_1D, "11-01 01:00"),
    ("denver-1h-before-gap", DENVER, EARLY, "03-08 03:30", {"webinar": "-1h"}, "03-08 08:30"),
    ("london-1d-before", LONDON, EARLY, "03-29 19:00", BEFORE_1D, "03-28 19:00"),
    ("ny-3h-after-fall", NEW_YORK, EARLY, "11-01 00:30", {"webinar": "+3h"}, "11-01 07:30"),
    ("auckland-1d-before", AUCKLAND, EARLY, "04-05 19:00", BEFORE_1D, "04-04 06:00"),
    ("kolkata-at-start", KOLKATA, EARLY, "03-08 19:00", {"webinar": "+0m"}, "03-08 13:30"),
    # at: snaps to the next such local time at or after; 02:30 on a spring-forward
    # night does not exist and becomes 03:30; an ambiguous one is the first, unless
    # that has passed and the second has not
    ("denver-0230-spring-forward", DENVER, "03-07 22:00", None, {"at": "02:30"}, "03-08 09:30"),
    ("ny-0230-spring-forward", NEW_YORK, "03-07 22:00", None, {"at": "02:30"}, "03-08 07:30"),
    ("london-0130-spring-forward", LONDON, "03-28 22:00", None, {"at": "01:30"}, "03-29 01:30"),
    ("auckland-0230-spring-forward", AUCKLAND, "09-26 22:00", None, {"at": "02:30"}, "09-26 14:30"),
    ("sydney-0230-ambiguous", SYDNEY, "04-04 22:00", None, {"at": "02:30"}, "04-04 15:30"),
    ("denver-0130-comes-again", DENVER, DENVER_FALL, None, {"at": "01:30"}, "11-01 08:30"),
    ("at-exactly-now", DENVER, "03-10 09:00", None, {"at": "09:00"}, "03-10 15:00"),
    ("at-just-missed", DENVER, "03-10 09:01", None, {"at": "09:00"}, "03-11 15:00"),
    ("wait-2d-then-at", DENVER, "03-06 10:00", None, {"wait": "2d", "at": "09:00"}, "03-09 15:00"),
    ("kolkata-at", KOLKATA, "03-08 21:00", None, {"at": "09:00"}, "03-09 03:30"),
]


@pytest.mark.parametrize(
    ("tz", "enrolled", "webinar", "kw", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in DUE_CASES],
)
def test_due_time(tz: ZoneInfo, enrolled: str, webinar: str | None, kw: dict[str, str], expected: str) -> None:
    webinar_start = at(tz, webinar) if webinar else None
    dues = due_times(seq(step("a", **kw)), at(tz, enrolled), webinar_start, tz)
    assert dues == {"a": at(tz, expected + "Z")}


def test_wait_counts_from_previous_due_time_and_webinar_step_without_date() -> None:
    sequence = seq(
        step("first", at="09:00"),
        step("second", wait="1d"),
        step("webinar-step", webinar="-1d"),
        step("third", wait="2h"),
    )
    enrolled = L(DENVER, 2026, 3, 6, 22)  # Friday night
    assert due_times(sequence, enrolled, None, DENVER) == {
        "first": Z(2026, 3, 7, 16),  # Sat 09:00 MST
        "second": Z(2026, 3, 8, 15),  # Sun 09:00 MDT: a calendar day later
        "webinar-step": None,
        "third": Z(2026, 3, 8, 17),  # counts from `second`, the last step with a due time
    }
    with_webinar = due_times(sequence, enrolled, L(DENVER, 2026, 3, 12, 19), DENVER)
    assert with_webinar["webinar-step"] == Z(2026, 3, 12, 1)  # Wed 19:00 MDT
    assert with_webinar["third"] == Z(2026, 3, 12, 3)
    evaluation = run(sequence, enrolled, enrolled)
    assert outcome(evaluation, "webinar-step") == "skip: no webinar date"


def _wall_exists(day: date, clock: time, tz: ZoneInfo) -> bool:
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC).astimezone(tz).time() == clock


def _check_snap(instant: datetime, clock: time, tz: ZoneInfo) -> None:
    """snap_to_clock against a brute-force search over both days and both folds."""
    snapped = snap_to_clock(instant, clock, tz)
    assert instant <= snapped < instant + timedelta(hours=26)
    local = instant.astimezone(tz)
    if not _wall_exists(local.date(), clock, tz):
        return  # a DST gap today: moved forward by the jump (the table covers it)
    found = [
        candidate
        for day in (local.date(), local.date() + timedelta(days=1))
        for fold in (0, 1)
        if _wall_exists(day, clock, tz)
        and (candidate := datetime.combine(day, clock, tzinfo=tz).replace(fold=fold).astimezone(UTC)) >= instant
    ]
    if found:
        assert snapped == min(found), (instant, clock, tz)


@pytest.mark.parametrize(
    ("tz", "night"),
    [
        (DENVER, "03-08"),
        (DENVER, "11-01"),
        (NEW_YORK, "11-01"),
        (LONDON, "03-29"),
        (LONDON, "10-25"),
        (SYDNEY, "04-05"),
        (AUCKLAND, "04-05"),
        (AUCKLAND, "09-27"),
    ],
    ids=lambda v: v.key if isinstance(v, ZoneInfo) else v,
)
def test_snap_to_clock_over_dst_nights(tz: ZoneInfo, night: str) -> None:
    start = at(tz, f"{night} 00:00") - timedelta(hours=12)
    for quarter in range(0, 4 * 36):
        instant = start + timedelta(minutes=15 * quarter)
        for clock in (time(0, 30), time(1, 30), time(2, 30), time(9)):
            _check_snap(instant, clock, tz)


def test_snap_to_clock_is_at_or_after() -> None:
    instant = L(DENVER, 2026, 3, 10, 9)
    assert snap_to_clock(instant, time(9), DENVER) == instant
    assert snap_to_clock(instant + timedelta(seconds=1), time(9), DENVER) == Z(2026, 3, 11, 15)


@pytest.mark.parametrize(
    ("text", "days", "minutes"),
    [("30m", 0, 30), ("2h", 0, 120), ("3d", 3, 0), ("1w", 7, 0), ("0m", 0, 0)],
)
def test_parse_duration(text: str, days: int, minutes: int) -> None:
    span = parse_duration(text)
    assert (span.days, span.minutes) == (days, minutes)


@pytest.mark.parametrize("text", ["500000w", "261w", "1827d", "43825h", "-1827d", "9999999999999w", "1" * 40 + "m"])
def test_durations_longer_than_five_years_are_refused(text: str) -> None:
    """Issue 6 item 4: `wait: 500000w` used to pass check and crash every run."""
    with pytest.raises(ValueError, match="5 years|not a duration"):
        parse_duration(text, signed=True)
    assert parse_duration("260w").days == 1820 and parse_duration("-1826d", signed=True).days == -1826


def test_signed_offsets_only_for_webinar() -> None:
    assert parse_duration("-1d", signed=True).days == -1
    assert parse_duration("+3h", signed=True).minutes == 180
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration("-1d")
    with pytest.raises(ValueError, match="30m, 2h, 3d or 1w"):
        parse_duration("3 days")


def test_add_duration_days_are_wall_clock_minutes_are_elapsed() -> None:
    start = L(LONDON, 2026, 10, 24, 19)
    assert add_duration(start, parse_duration("1d"), LONDON) - start == timedelta(hours=25)
    assert add_duration(start, parse_duration("24h"), LONDON) - start == timedelta(hours=24)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=5), "5 days"),
        (timedelta(days=4, hours=23), "4 days"),
        (timedelta(days=2, minutes=1), "2 days"),
        (timedelta(days=1, hours=12), "1 day"),
        (timedelta(hours=3, minutes=59), "3 hours"),
        (timedelta(hours=1, minutes=30), "1 hour"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(minutes=59), "59 minutes"),
        (timedelta(seconds=30), "0 minutes"),
    ],
)
def test_describe_delay(delta: timedelta, text: str) -> None:
    assert describe_delay(delta) == text


# ======================================== windows


WRAP = {"send_window": "20:00-08:00"}
EVENINGS = {"send_window": "18:00-00:00"}
WORKDAYS = {"send_days": WEEKDAYS}
WRAP_MONDAYS = {"send_window": "20:00-08:00", "send_days": ["mon"]}

OPENING_CASES = [
    # id, zone, delivery, instant (local, or UTC with Z), expected opening (UTC)
    ("before-window", DENVER, {}, "03-10 07:00", "03-10 14:00"),
    ("inside", DENVER, {}, "03-10 12:00", "03-10 18:00"),
    ("end-is-exclusive", DENVER, {}, "03-10 20:00", "03-11 14:00"),
    ("denver-spring-forward", DENVER, {}, "03-07 21:00", "03-08 14:00"),
    ("denver-fall-back", DENVER, {}, "10-31 21:00", "11-01 15:00"),
    ("ny-spring-forward", NEW_YORK, {}, "03-07 21:00", "03-08 12:00"),
    ("london-spring-forward", LONDON, {}, "03-28 21:00", "03-29 07:00"),
    ("london-fall-back", LONDON, {}, "10-24 21:00", "10-25 08:00"),
    ("sydney-dst-end", SYDNEY, {}, "04-04 21:00", "04-04 22:00"),
    ("auckland-dst-start", AUCKLAND, {}, "09-26 21:00", "09-26 19:00"),
    ("kolkata-half-hour-offset", KOLKATA, {}, "03-07 07:00", "03-07 02:30"),
    # a window that wraps midnight
    ("wrap-midday", DENVER, WRAP, "03-10 12:00", "03-11 02:00"),
    ("wrap-late-evening", DENVER, WRAP, "03-10 23:00", "03-11 05:00"),
    ("wrap-early-morning", DENVER, WRAP, "03-10 03:00", "03-10 09:00"),
    ("wrap-end-exclusive", DENVER, WRAP, "03-10 08:00", "03-11 02:00"),
    ("wrap-spring-night", DENVER, WRAP, "03-08 01:59", "03-08 08:59"),
    ("wrap-after-spring-night", DENVER, WRAP, "03-08 08:00", "03-09 02:00"),
    ("wrap-fall-night-second-0130", DENVER, WRAP, "11-01 08:30Z", "11-01 08:30"),
    ("until-midnight", DENVER, EVENINGS, "03-10 10:00", "03-11 00:00"),
    ("midnight-is-outside", DENVER, EVENINGS, "03-11 00:00", "03-12 00:00"),
    # restricted send days
    ("friday-night-to-monday-over-dst", DENVER, WORKDAYS, "03-06 20:30", "03-09 14:00"),
    ("saturday-to-monday", DENVER, WORKDAYS, "03-07 12:00", "03-09 14:00"),
    ("london-weekend-over-dst", LONDON, WORKDAYS, "03-28 12:00", "03-30 07:00"),
    ("sydney-saturday", SYDNEY, WORKDAYS, "03-07 09:00", "03-08 21:00"),
    ("weekend-only", NEW_YORK, {"send_days": ["sat", "sun"]}, "10-30 12:00", "10-31 12:00"),
    ("auckland-sunday-only", AUCKLAND, {"send_days": ["sun"]}, "09-26 09:00", "09-26 19:00"),
    ("one-day-a-week", DENVER, {"send_days": ["mon"]}, "03-09 20:00", "03-16 14:00"),
    # the night part of a wrapping window belongs to the calendar day it falls on
    ("wrap-tuesday-morning-is-tuesday", DENVER, WRAP_MONDAYS, "03-10 02:00", "03-16 06:00"),
    ("wrap-monday-evening", DENVER, WRAP_MONDAYS, "03-09 12:00", "03-10 02:00"),
]


@pytest.mark.parametrize(
    ("tz", "kw", "instant", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in OPENING_CASES],
)
def test_next_opening(tz: ZoneInfo, kw: dict[str, object], instant: str, expected: str) -> None:
    dl = delivery(**kw)
    start, opening = at(tz, instant), at(tz, expected + "Z")
    assert next_opening(start, dl, tz) == opening
    assert in_window(opening, dl, tz)
    assert in_window(start, dl, tz) == (start == opening)


@pytest.mark.parametrize(
    ("tz", "kw", "instant", "expected"),
    [
        (DENVER, {}, "03-10 08:00", True),
        (DENVER, {}, "03-10 07:59", False),
        (DENVER, {}, "03-10 19:59", True),
        (DENVER, {}, "03-10 20:00", False),
        (DENVER, {}, "03-10 19:00Z", True),  # 13:00 local
        (KOLKATA, {}, "03-10 02:29Z", False),
        (KOLKATA, {}, "03-10 02:30Z", True),
        (SYDNEY, WORKDAYS, "03-06 22:00Z", False),  # Saturday 09:00 in Sydney
        (SYDNEY, WORKDAYS, "03-08 22:00Z", True),  # Monday 09:00 in Sydney
        (DENVER, WRAP, "11-01 01:30", True),
        (DENVER, WRAP, "11-01 08:30Z", True),  # the second 01:30
        (DENVER, WRAP, "11-01 12:00", False),
    ],
)
def test_in_window(tz: ZoneInfo, kw: dict[str, object], instant: str, expected: bool) -> None:
    assert in_window(at(tz, instant), delivery(**kw), tz) is expected


# ======================================== evaluate: lateness


TX, MK = True, False  # transactional, marketing

LATE_CASES = [
    # id, zone, transactional, delivery, due (= enrolled, local), now (local), skip reason
    # a 5-day outage: skipped, never sent late
    ("outage-marketing", DENVER, MK, {}, "03-09 10:00", "03-14 10:00", "late by 5 days"),
    ("outage-transactional", DENVER, TX, {}, "03-09 10:00", "03-14 10:00", "late by 5 days"),
    ("outage-over-eu-dst", LONDON, MK, {}, "03-26 10:00", "03-31 10:00", "late by 4 days"),
    ("outage-auckland", AUCKLAND, MK, {}, "09-24 10:00", "09-29 10:00", "late by 4 days"),
    ("exactly-max-late", DENVER, MK, {}, "03-10 10:00", "03-12 10:00", None),
    ("a-minute-over", DENVER, MK, {}, "03-10 10:00", "03-12 10:01", "late by 2 days"),
    ("hours", DENVER, TX, {"max_late": "1h"}, "03-10 10:00", "03-10 13:00", "late by 3 hours"),
    ("one-hour", DENVER, TX, {"max_late": "30m"}, "03-10 10:00", "03-10 11:30", "late by 1 hour"),
    ("minutes", DENVER, TX, {"max_late": "0m"}, "03-10 10:00", "03-10 10:05", "late by 5 minutes"),
    # lateness counts from the opening: a weekend without send days is not late
    ("weekend-not-late", DENVER, MK, WORKDAYS, "03-06 21:00", "03-09 10:00", None),
    ("weekend-sendable-is-late", DENVER, MK, {}, "03-06 21:00", "03-09 10:00", "late by 2 days"),
    ("weekend-transactional", DENVER, TX, WORKDAYS, "03-06 21:00", "03-09 10:00", "late by 2 days"),
    ("weekend-then-2d", DENVER, MK, WORKDAYS, "03-06 21:00", "03-11 08:30", "late by 2 days"),
    ("sydney-easter-weekend", SYDNEY, MK, WORKDAYS, "04-03 20:30", "04-06 09:00", None),
    ("evening-due-from-morning", DENVER, MK, {}, "03-10 22:00", "03-12 09:00", None),
    ("evening-due-too-late", DENVER, MK, {}, "03-10 22:00", "03-13 09:00", "late by 2 days"),
]


@pytest.mark.parametrize(
    ("tz", "transactional", "kw", "due", "now", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in LATE_CASES],
)
def test_lateness(
    tz: ZoneInfo, transactional: bool, kw: dict[str, object], due: str, now: str, reason: str | None
) -> None:
    sequence = seq(step(transactional=transactional))
    evaluation = run(sequence, at(tz, due), at(tz, now), tz, dl=delivery(**kw))
    assert outcome(evaluation) == (f"skip: {reason}" if reason else "send")
    assert evaluation.finished
    assert evaluation.wake_at is None


# ======================================== evaluate: window, gap, transactional


@pytest.mark.parametrize("tz", ZONES, ids=lambda z: z.key)
def test_transactional_ignores_window_and_gap(tz: ZoneInfo) -> None:
    enrolled = L(tz, 2026, 3, 10, 3)  # 03:00 local, outside the window
    last = enrolled - timedelta(hours=1)
    sequence = seq(step("confirm", transactional=True), step("welcome"))
    evaluation = run(sequence, enrolled, enrolled, tz, last_marketing_at=last)
    assert outcome(evaluation, "confirm") == "send"
    assert outcome(evaluation, "welcome") == "wait"
    # the welcome waits for the gap (20 h after 02:00 = 22:00, outside), then the window
    assert evaluation.wake_at == L(tz, 2026, 3, 11, 8)
    assert evaluation.contact is not None
    assert evaluation.contact.last_marketing_at == last  # transactional mail leaves it alone
    assert not evaluation.finished


@pytest.mark.parametrize(
    ("tz", "enrolled", "wake"),
    [
        (DENVER, L(DENVER, 2026, 3, 7, 23), Z(2026, 3, 8, 14)),
        (NEW_YORK, L(NEW_YORK, 2026, 10, 31, 22), Z(2026, 11, 1, 13)),
        (LONDON, L(LONDON, 2026, 3, 28, 23), Z(2026, 3, 29, 7)),
        (KOLKATA, L(KOLKATA, 2026, 3, 28, 23), Z(2026, 3, 29, 2, 30)),
        (SYDNEY, L(SYDNEY, 2026, 10, 3, 23), Z(2026, 10, 3, 21)),
        (AUCKLAND, L(AUCKLAND, 2026, 4, 4, 23), Z(2026, 4, 4, 20)),
    ],
    ids=lambda v: v.key if isinstance(v, ZoneInfo) else "-",
)
def test_marketing_waits_for_window_across_dst(tz: ZoneInfo, enrolled: datetime, wake: datetime) -> None:
    sequence = seq(step("welcome"))
    evaluation = run(sequence, enrolled, enrolled, tz)
    assert outcome(evaluation, "welcome") == "wait"
    assert evaluation.wake_at == wake
    assert run(sequence, enrolled, wake - timedelta(minutes=1), tz).sends == ()
    later = run(sequence, enrolled, wake, tz)
    assert outcome(later, "welcome") == "send"
    assert later.contact is not None and later.contact.last_marketing_at == wake
    assert later.finished and later.wake_at is None


def test_min_gap_between_steps_of_one_evaluation() -> None:
    now = L(DENVER, 2026, 3, 10, 10)
    sequence = seq(step("a"), step("b"), step("c", transactional=True))
    evaluation = run(sequence, now, now)
    assert [s.step.id for s in evaluation.sends] == ["a", "c"]
    assert outcome(evaluation, "b") == "wait"
    assert evaluation.contact is not None
    assert evaluation.contact.last_marketing_at == now
    # 20 h later is 06:00, outside the window: the next opening is 08:00
    assert evaluation.wake_at == L(DENVER, 2026, 3, 11, 8)
    assert not evaluation.finished

    recorded = {"a": Recorded("sent"), "c": Recorded("sent")}
    wake = evaluation.wake_at
    early = run(sequence, now, wake - timedelta(minutes=1), recorded=recorded, last_marketing_at=now)
    assert early.sends == () and early.skips == ()
    later = run(sequence, now, wake, recorded=recorded, last_marketing_at=now)
    assert outcome(later, "b") == "send"  # not "late": the gap moved its opening
    assert later.finished


def test_min_gap_holds_across_sequences() -> None:
    now = L(LONDON, 2026, 3, 27, 10)
    first = run(seq(step("hello")), now, now, LONDON)
    assert first.contact is not None and first.contact.last_marketing_at == now
    second = evaluate(seq(step("other")), EnrollmentState(now), first.contact, now, delivery())
    assert second.sends == ()
    # 20 h after Fri 10:00 GMT is Sat 06:00 GMT; the window opens 08:00 GMT
    assert second.wake_at == Z(2026, 3, 28, 8)


def test_min_gap_in_days_is_elapsed_time() -> None:
    last = L(DENVER, 2026, 3, 7, 12)  # Saturday noon MST
    evaluation = run(seq(step()), last, last, dl=delivery(min_gap="1d"), last_marketing_at=last)
    assert evaluation.wake_at == last + timedelta(hours=24)  # 13:00 MDT on Sunday


def test_zero_min_gap_sends_everything_due() -> None:
    now = L(DENVER, 2026, 3, 10, 10)
    evaluation = run(seq(step("a"), step("b")), now, now, dl=delivery(min_gap="0m"), last_marketing_at=now)
    assert [s.step.id for s in evaluation.sends] == ["a", "b"]


# ======================================== evaluate: webinar signups


def test_webinar_sequence_registered_days_ahead() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = L(DENVER, 2026, 3, 9, 15)
    evaluation = run(WEBINAR, enrolled, enrolled, webinar_start=webinar)
    assert [s.step.id for s in evaluation.sends] == ["registered"]
    assert evaluation.skips == ()
    assert evaluation.wake_at == L(DENVER, 2026, 3, 11, 19)  # day-before, transactional: no window


def test_late_signup_two_hours_before_the_webinar() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = webinar - timedelta(hours=2)
    evaluation = run(WEBINAR, enrolled, enrolled, webinar_start=webinar)
    assert [s.step.id for s in evaluation.sends] == ["registered"]
    assert outcome(evaluation, "day-before") == "skip: before enrollment"
    # replay and thank-you are due at 22:00, outside the window: they wait for 08:00
    assert evaluation.wake_at == L(DENVER, 2026, 3, 13, 8)

    recorded = {"registered": Recorded("sent"), "day-before": Recorded("skipped")}
    at_ten = run(WEBINAR, enrolled, L(DENVER, 2026, 3, 12, 22), webinar_start=webinar, recorded=recorded)
    assert at_ten.sends == () and at_ten.skips == ()
    morning = run(WEBINAR, enrolled, L(DENVER, 2026, 3, 13, 8), webinar_start=webinar, recorded=recorded)
    assert outcome(morning, "replay") == "send"
    # thank-you's tag condition is read when its window opens, before the gap the
    # replay just took: a step that does not apply is settled at its own time
    assert outcome(morning, "thank-you") == "skip: without tag webinar-attended"
    # offer: 2 days after thank-you's due time (Thu 22:00), at 09:00 -> Sun 09:00
    assert morning.wake_at == L(DENVER, 2026, 3, 15, 9)


def test_attendance_tag_is_read_at_send_time() -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    now = webinar + timedelta(hours=3)
    evaluation = run(
        WEBINAR,
        enrolled,
        now,
        webinar_start=webinar,
        recorded=recorded,
        tags=frozenset({"webinar-attended"}),
    )
    assert outcome(evaluation, "replay") == "skip: tag webinar-attended"
    assert outcome(evaluation, "thank-you") == "send"


@pytest.mark.parametrize(
    ("minutes_before", "day_before", "hour_before"),
    [
        (25 * 60 + 1, "send", "send"),
        (25 * 60, "send", "send"),  # due exactly at enrollment applies
        (24 * 60 + 30, "skip: before enrollment", "send"),  # -1d is 25 h here: clocks went back
        (2 * 60, "skip: before enrollment", "send"),
        (60, "skip: before enrollment", "send"),
        (30, "skip: before enrollment", "skip: before enrollment"),
    ],
)
def test_before_enrollment(minutes_before: int, day_before: str, hour_before: str) -> None:
    webinar = L(NEW_YORK, 2026, 11, 1, 19)  # EST; the day before at 19:00 is EDT
    sequence = seq(
        step("day-before", webinar="-1d", transactional=True),
        step("hour-before", webinar="-1h", transactional=True),
    )
    enrolled = webinar - timedelta(minutes=minutes_before)
    first = run(
        sequence,
        enrolled,
        max(enrolled, L(NEW_YORK, 2026, 10, 31, 19)),
        NEW_YORK,
        webinar_start=webinar,
    )
    assert outcome(first, "day-before") == day_before
    recorded = {"day-before": Recorded("sent")}
    second = run(
        sequence,
        enrolled,
        max(enrolled, webinar - timedelta(hours=1)),
        NEW_YORK,
        webinar_start=webinar,
        recorded=recorded,
    )
    assert outcome(second, "hour-before") == hour_before


def test_signup_after_the_webinar_started() -> None:
    """Issue 6 item 7: no confirmation for a webinar that has already begun; the replay still comes."""
    webinar = L(KOLKATA, 2026, 3, 12, 19)
    enrolled = webinar + timedelta(minutes=10)
    evaluation = run(WEBINAR, enrolled, enrolled, KOLKATA, webinar_start=webinar)
    assert evaluation.sends == ()
    assert outcome(evaluation, "registered") == "skip: the webinar had already begun"
    assert outcome(evaluation, "day-before") == "skip: before enrollment"
    assert outcome(evaluation, "replay") == "wait"


# The shipped webinar sequence's shape: a confirmation, two reminders, then after it.
REMINDERS = seq(
    step("registered", wait="0m", transactional=True),
    step("day-before", webinar="-1d", transactional=True),
    step("hour-before", webinar="-1h", transactional=True),
    step("between", wait="30m", transactional=True),  # due 30 minutes before the start
    step("replay", webinar="+3h", unless_tags=("webinar-attended",)),
    step("thank-you", webinar="+3h", if_tags=("webinar-attended",)),
    step("offer", wait="2d", at="09:00"),
)
BEGUN = "skip: the webinar had already begun"


@pytest.mark.parametrize(
    ("enrolled_before", "now_after", "recorded", "expected"),
    [
        # cron down from before the day-before reminder until after the start
        ("3d", "+0m", ("registered",), {"day-before": BEGUN, "hour-before": BEGUN, "between": BEGUN}),
        ("3d", "+30m", ("registered",), {"day-before": BEGUN, "hour-before": BEGUN, "between": BEGUN}),
        # down until just before the start: the reminders still make sense and go
        ("3d", "-10m", ("registered",), {"day-before": "send", "hour-before": "send", "between": "send"}),
        # the run is reached by nothing before the webinar: not even the confirmation
        ("1d", "+10m", (), {"registered": BEGUN, "day-before": BEGUN, "hour-before": BEGUN}),
        # later than max_late (2d) too: that reason comes first, as for any long outage
        ("3d", "+10m", (), {"registered": "skip: late by 3 days", "hour-before": BEGUN}),
        # after the webinar, its own steps are not touched
        ("1d", "+3h", (), {"registered": BEGUN, "replay": "send", "thank-you": "skip: without tag webinar-attended"}),
    ],
)
def test_nothing_about_a_coming_webinar_after_it_began(
    enrolled_before: str, now_after: str, recorded: tuple[str, ...], expected: dict[str, str]
) -> None:
    """Issue 6 item 7: a step timed before the webinar is never sent at or after its start."""
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = webinar - parse_duration(enrolled_before).approx
    now = webinar + parse_duration(now_after, signed=True).approx
    evaluation = run(REMINDERS, enrolled, now, webinar_start=webinar, recorded={r: Recorded("sent") for r in recorded})
    assert {step_id: outcome(evaluation, step_id) for step_id in expected} == expected


def test_a_reminder_waiting_for_the_window_past_the_start_is_skipped() -> None:
    """A marketing reminder due before the start whose window opens after it never goes."""
    webinar = L(DENVER, 2026, 3, 12, 8, 30)
    sequence = seq(step("early", webinar="-2h"))  # due 06:30, window opens 08:00
    first = run(sequence, webinar - timedelta(days=3), webinar - timedelta(hours=2), webinar_start=webinar)
    assert outcome(first, "early") == "wait" and first.wake_at == L(DENVER, 2026, 3, 12, 8)
    at_eight = run(sequence, webinar - timedelta(days=3), L(DENVER, 2026, 3, 12, 8), webinar_start=webinar)
    assert outcome(at_eight, "early") == "send"
    after = run(sequence, webinar - timedelta(days=3), webinar, webinar_start=webinar)
    assert outcome(after, "early") == BEGUN


def test_a_sequence_without_webinar_steps_is_not_held_to_the_webinar() -> None:
    """`next:` carries the webinar over; the follow-up sequence's steps are not about it."""
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = webinar + timedelta(days=3)
    evaluation = run(seq(step("a", transactional=True)), enrolled, enrolled, webinar_start=webinar)
    assert outcome(evaluation, "a") == "send"


@pytest.mark.parametrize("start_year", [9999, 8999])
def test_a_due_time_out_of_range_is_skipped_not_a_crash(start_year: int) -> None:
    """Issue 6 item 4: date arithmetic near year 9999 never stops the run."""
    webinar = datetime(start_year, 12, 30, 10, tzinfo=UTC)
    enrolled = Z(2026, 3, 1, 12)
    sequence = seq(
        step("registered", transactional=True),
        step("day-before", webinar="-1d", transactional=True),
        step("replay", webinar="+260w"),
    )
    evaluation = run(sequence, enrolled, enrolled, AUCKLAND, webinar_start=webinar)
    assert outcome(evaluation, "registered") == "send"
    assert outcome(evaluation, "replay") == "skip: due time out of range"
    expected = "skip: due time out of range" if start_year == 9999 else "wait"
    assert outcome(evaluation, "day-before") == expected
    plan = project(
        {"w": (sequence, EnrollmentState(enrolled, webinar))},
        ContactState(AUCKLAND),
        enrolled,
        enrolled + timedelta(days=30),
        delivery(),
    )
    assert [p.step for p in plan] == ["registered"]


# ======================================== evaluate: tags, exit, suppression


@pytest.mark.parametrize(
    ("if_tags", "unless_tags", "tags", "expected"),
    [
        (("vip",), (), set(), "skip: without tag vip"),
        (("a", "b"), (), set(), "skip: without tag a or b"),
        (("a", "b"), (), {"b"}, "send"),
        ((), ("attended",), {"attended"}, "skip: tag attended"),
        ((), ("attended",), {"other"}, "send"),
        ((), ("y", "x"), {"x", "y"}, "skip: tag x"),
        (("a",), ("b",), {"a", "b"}, "skip: tag b"),
        (("a",), ("b",), {"a"}, "send"),
    ],
)
@pytest.mark.parametrize("transactional", [False, True])
def test_tag_conditions(
    if_tags: tuple[str, ...],
    unless_tags: tuple[str, ...],
    tags: set[str],
    expected: str,
    transactional: bool,
) -> None:
    sequence = seq(step(if_tags=if_tags, unless_tags=unless_tags, transactional=transactional))
    now = L(AUCKLAND, 2026, 4, 5, 10)
    evaluation = run(sequence, now, now, AUCKLAND, tags=frozenset(tags))
    assert outcome(evaluation) == expected
    assert evaluation.exit_reason is None and evaluation.finished


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"client"}, "goal reached: tag client"),
        ({"consultation-requested", "client"}, "goal reached: tag client"),
        ({"consultation-requested"}, "goal reached: tag consultation-requested"),
    ],
)
def test_a_reached_goal_ends_the_marketing_steps_once_the_reminders_are_done(tags: set[str], reason: str) -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    evaluation = run(
        WEBINAR,
        enrolled,
        webinar + timedelta(hours=3),
        webinar_start=webinar,
        recorded=recorded,
        tags=frozenset(tags),
    )
    # not an exit of the whole enrollment: it finishes, without going on to `next`
    assert evaluation.exit_reason is None
    assert evaluation.finished and evaluation.goal == reason and evaluation.wake_at is None
    assert evaluation.sends == ()
    assert [(s.step.id, s.reason) for s in evaluation.skips] == [
        ("replay", reason),
        ("thank-you", reason),
        ("offer", reason),
    ]


GOAL = frozenset({"consultation-requested"})
MARKETING_FIRST = seq(
    step("tip", wait="0m"),
    step("reminder", webinar="-1h", transactional=True),
    exit_on_tags=("consultation-requested",),
)
CONFIRM_THEN_TIP = seq(
    step("confirm", wait="0m", transactional=True),
    step("tip", wait="0m"),
    exit_on_tags=("consultation-requested",),
)
TIP_THEN_CONFIRM = seq(
    step("tip", wait="0m"),
    step("confirm", wait="1d", transactional=True),
    exit_on_tags=("consultation-requested",),
)
G_WEBINAR = L(DENVER, 2026, 3, 12, 19)
G_ENROLLED = L(DENVER, 2026, 3, 9, 10)  # a Monday, inside the window


@pytest.mark.parametrize(
    ("sequence", "now", "recorded", "tags", "expected", "finished", "goal"),
    [
        # she registered and asked for a consultation at once: the confirmation still goes
        (WEBINAR, G_ENROLLED, {}, GOAL, {"registered": "send", "replay": "wait", "offer": "wait"}, False, None),
        # the day-before reminder still goes
        (
            WEBINAR,
            L(DENVER, 2026, 3, 11, 19),
            {"registered": Recorded("sent")},
            GOAL,
            {"day-before": "send", "replay": "wait"},
            False,
            None,
        ),
        # a marketing step whose time comes while a reminder is ahead: skipped, the reminder waits
        (
            MARKETING_FIRST,
            G_ENROLLED,
            {},
            GOAL,
            {"tip": "skip: goal reached: tag consultation-requested", "reminder": "wait"},
            False,
            None,
        ),
        # ... and the reminder goes at its time; the sequence then ends without `next`
        (
            MARKETING_FIRST,
            L(DENVER, 2026, 3, 12, 18),
            {"tip": Recorded("skipped")},
            GOAL,
            {"reminder": "send"},
            True,
            "goal reached: tag consultation-requested",
        ),
        # a send decided in the same pass is kept when the goal ends the rest
        (
            CONFIRM_THEN_TIP,
            G_ENROLLED,
            {},
            GOAL,
            {"confirm": "send", "tip": "skip: goal reached: tag consultation-requested"},
            True,
            "goal reached: tag consultation-requested",
        ),
        # a marketing step first, the transactional one a day later: it still goes
        (
            TIP_THEN_CONFIRM,
            G_ENROLLED,
            {},
            GOAL,
            {"tip": "skip: goal reached: tag consultation-requested", "confirm": "wait"},
            False,
            None,
        ),
        # without the goal nothing changes, and finishing leads on to `next`
        (CONFIRM_THEN_TIP, G_ENROLLED, {}, frozenset(), {"confirm": "send", "tip": "send"}, True, None),
        (
            CONFIRM_THEN_TIP,
            G_ENROLLED,
            {"confirm": Recorded("sent")},
            frozenset({"other"}),
            {"tip": "send"},
            True,
            None,
        ),
    ],
)
def test_goal_rule_table(
    sequence: Sequence,
    now: datetime,
    recorded: dict[str, Recorded],
    tags: frozenset[str],
    expected: dict[str, str],
    finished: bool,
    goal: str | None,
) -> None:
    evaluation = run(sequence, G_ENROLLED, now, webinar_start=G_WEBINAR, recorded=recorded, tags=tags)
    assert {step_id: outcome(evaluation, step_id) for step_id in expected} == expected
    assert evaluation.exit_reason is None
    assert (evaluation.finished, evaluation.goal) == (finished, goal)


def test_untagged_before_its_time_the_marketing_step_goes_after_all() -> None:
    """The goal is looked at when a step's time comes, not when the tag was set."""
    first = run(TIP_THEN_CONFIRM, G_ENROLLED, G_ENROLLED - timedelta(hours=1), tags=GOAL)
    assert outcome(first, "tip") == "wait"
    later = run(TIP_THEN_CONFIRM, G_ENROLLED, G_ENROLLED, tags=frozenset())
    assert outcome(later, "tip") == "send"


@pytest.mark.parametrize("suppressed", ["unsubscribed", "bounced", "erased"])
@pytest.mark.parametrize("transactional", [False, True])
def test_suppressed_contact_leaves(suppressed: str, transactional: bool) -> None:
    now = L(SYDNEY, 2026, 10, 4, 10)
    evaluation = run(seq(step(transactional=transactional), step("b")), now, now, SYDNEY, suppressed=suppressed)
    assert evaluation.exit_reason == suppressed
    assert evaluation.sends == ()
    assert outcome(evaluation) == f"skip: {suppressed}"
    assert outcome(evaluation, "b") == "wait"  # not recorded: the whole enrollment ends


# ======================================== evaluate: recorded steps


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (Recorded("sent"), "wait"),
        (Recorded("skipped"), "wait"),
        (Recorded("unknown"), "wait"),
        (Recorded("sending"), "wait"),
        (Recorded("failed", retryable=False), "wait"),
        (Recorded("failed", retryable=True, reason="HTTP 503"), "send"),
    ],
)
def test_recorded_steps(recorded: Recorded, expected: str) -> None:
    now = L(NEW_YORK, 2026, 3, 10, 10)
    evaluation = run(
        seq(step(transactional=True)),
        now,
        now + timedelta(hours=1),
        NEW_YORK,
        recorded={"a": recorded},
    )
    assert outcome(evaluation) == expected
    assert evaluation.finished and evaluation.wake_at is None


def test_retryable_failure_is_still_subject_to_lateness() -> None:
    enrolled = L(NEW_YORK, 2026, 3, 9, 10)
    evaluation = run(
        seq(step()),
        enrolled,
        L(NEW_YORK, 2026, 3, 14, 10),
        NEW_YORK,
        recorded={"a": Recorded("failed", retryable=True)},
    )
    assert outcome(evaluation) == "skip: late by 5 days"


def test_nothing_left() -> None:
    now = L(DENVER, 2026, 3, 10, 10)
    evaluation = run(
        seq(step("a"), step("b", wait="1d")),
        now,
        now,
        recorded={"a": Recorded("sent"), "b": Recorded("skipped")},
    )
    assert evaluation == Evaluation(finished=True, contact=ContactState(DENVER))


# ======================================== project


def test_project_webinar_plan() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = L(DENVER, 2026, 3, 9, 15)
    state = EnrollmentState(enrolled, webinar)
    plan = project(
        {"w": (WEBINAR, state)},
        ContactState(DENVER),
        enrolled,
        enrolled + timedelta(days=30),
        delivery(),
    )
    assert [(p.step, p.at) for p in plan] == [
        ("registered", enrolled),
        ("day-before", L(DENVER, 2026, 3, 11, 19)),
        ("replay", L(DENVER, 2026, 3, 13, 8)),
        ("offer", L(DENVER, 2026, 3, 15, 9)),
    ]
    attended = ContactState(DENVER, frozenset({"webinar-attended"}))
    plan = project({"w": (WEBINAR, state)}, attended, enrolled, L(DENVER, 2026, 3, 14), delivery())
    assert [p.step for p in plan] == ["registered", "day-before", "thank-you"]
    client = ContactState(DENVER, frozenset({"client"}))
    plan = project({"w": (WEBINAR, state)}, client, enrolled, enrolled + timedelta(days=30), delivery())
    assert [(p.step, p.at) for p in plan] == [("registered", enrolled), ("day-before", L(DENVER, 2026, 3, 11, 19))]
    plan = project(
        {"w": (WEBINAR, state)}, client, enrolled, enrolled + timedelta(days=30), delivery(), goal_skips=True
    )
    assert [(p.step, p.at, p.skipped) for p in plan] == [
        ("registered", enrolled, None),
        ("day-before", L(DENVER, 2026, 3, 11, 19), None),
        # decided when the replay's window opens (08:00), like a run would
        ("replay", L(DENVER, 2026, 3, 13, 8), "goal reached: tag client"),
        ("thank-you", L(DENVER, 2026, 3, 13, 8), "goal reached: tag client"),
        ("offer", L(DENVER, 2026, 3, 15, 9), "goal reached: tag client"),
    ]


def test_project_spaces_marketing_across_sequences() -> None:
    now = L(LONDON, 2026, 3, 27, 10)  # Friday
    sequences = {
        "one": (seq(step("a")), EnrollmentState(now)),
        "two": (seq(step("b")), EnrollmentState(now)),
    }
    plan = project(sequences, ContactState(LONDON), now, now + timedelta(days=7), delivery(send_days=WEEKDAYS))
    assert [(p.sequence, p.step, p.at) for p in plan] == [
        ("one", "a", now),
        ("two", "b", Z(2026, 3, 30, 7)),  # Monday 08:00 BST: not Saturday, and not late
    ]


def test_project_skips_what_a_run_would_skip() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    state = EnrollmentState(enrolled)
    plan = project(
        {"s": (seq(step("a")), state)},
        ContactState(DENVER),
        enrolled + timedelta(days=5),
        enrolled + timedelta(days=10),
        delivery(),
    )
    assert plan == []


# ======================================== properties

SAFE_WINDOWS = [
    "08:00-20:00",
    "20:00-08:00",
    "09:00-17:00",
    "00:00-06:00",
    "18:00-00:00",
    "23:00-04:00",
]
WAITS = ["0m", "30m", "2h", "20h", "1d", "2d", "1w"]
OFFSETS = ["-1d", "-1h", "-30m", "+0m", "+3h", "+1d", "+2d"]
CLOCKS = [None, None, time(2, 30), time(1, 30), time(9), time(19), time(0)]
# instants near every DST change of 2026 in the zones used
BASES = [
    Z(2026, 3, 6, 12),
    Z(2026, 3, 27, 12),
    Z(2026, 4, 3, 12),
    Z(2026, 9, 25, 12),
    Z(2026, 10, 2, 12),
    Z(2026, 10, 23, 12),
    Z(2026, 10, 30, 12),
    Z(2026, 7, 1, 12),
]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    return Delivery(
        send_window=draw(st.sampled_from(SAFE_WINDOWS)),
        send_days=draw(st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True)),
        min_gap=draw(st.sampled_from(["0m", "1h", "20h", "1d", "2d"])),
        max_late=draw(st.sampled_from(["0m", "1h", "1d", "2d", "3d"])),
    )


@st.composite
def sequences(draw: st.DrawFn, prefix: str) -> Sequence:
    count = draw(st.integers(1, 5))
    steps = []
    for index in range(count):
        timing: dict[str, object]
        if draw(st.integers(0, 2)):
            timing = {"wait": draw(st.sampled_from(WAITS))}
        else:
            timing = {"webinar": draw(st.sampled_from(OFFSETS))}
        clock = draw(st.sampled_from(CLOCKS))
        if clock is not None:
            timing["at"] = clock
        steps.append(
            step(
                f"{prefix}{index}",
                transactional=draw(st.booleans()),
                if_tags=draw(st.sampled_from([(), (), (), ("x",), ("x", "y")])),
                unless_tags=draw(st.sampled_from([(), (), (), ("z",)])),
                **timing,
            )
        )
    return seq(*steps)


@dataclass
class Enrollment:
    sequence: Sequence
    enrolled_at: datetime
    webinar_start: datetime | None
    recorded: dict[str, Recorded] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)

    def state(self) -> EnrollmentState:
        return EnrollmentState(self.enrolled_at, self.webinar_start, dict(self.recorded))


@dataclass
class Sent:
    enrollment: int
    step: Step
    at: datetime
    due: datetime


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]]:
    tz = draw(st.sampled_from(ZONES))
    dl = draw(deliveries())
    base = draw(st.sampled_from(BASES)) + timedelta(minutes=draw(st.integers(0, 4 * 1440)))
    enrollments = []
    for index in range(draw(st.integers(1, 2))):
        enrolled = base + timedelta(minutes=draw(st.integers(0, 3 * 1440)) if index else 0)
        webinar = draw(st.sampled_from([None, *range(-1440, 10 * 1440, 97)]))
        if webinar is not None:
            webinar = enrolled + timedelta(minutes=webinar)
        enrollments.append(Enrollment(draw(sequences("ab"[index])), enrolled, webinar))
    tags = frozenset(draw(st.lists(st.sampled_from(["x", "y", "z"]), unique=True)))
    return tz, dl, enrollments, tags


def _step_once(
    enrollments: list[Enrollment],
    contact: ContactState,
    now: datetime,
    dl: Delivery,
    sent: list[Sent],
    failures: list[bool],
) -> tuple[ContactState, list[datetime]]:
    """One run at `now` as the runner does it: each enrollment in turn, the contact carried on."""
    wakes = []
    for index, enrollment in enumerate(enrollments):
        if now < enrollment.enrolled_at:
            wakes.append(enrollment.enrolled_at)
            continue
        evaluation = evaluate(enrollment.sequence, enrollment.state(), contact, now, dl)
        assert evaluation.exit_reason is None
        assert evaluation.contact is not None
        contact = evaluation.contact
        assert evaluation.finished == (evaluation.wake_at is None)
        if evaluation.wake_at is not None:
            assert evaluation.wake_at > now
            wakes.append(evaluation.wake_at)
        dues = due_times(enrollment.sequence, enrollment.enrolled_at, enrollment.webinar_start, contact.tz)
        for item in (*evaluation.sends, *evaluation.skips):
            previous = enrollment.recorded.get(item.step.id)
            assert previous is None or (previous.status == "failed" and previous.retryable), (
                f"{item.step.id} decided again after {previous}"
            )
            assert item.due_at == dues[item.step.id]
        for send in evaluation.sends:
            # a send fails retryably now and then; the runner reconsiders it later
            if failures and failures.pop():
                enrollment.recorded[send.step.id] = Recorded("failed", retryable=True, reason="HTTP 503")
                continue
            enrollment.recorded[send.step.id] = Recorded("sent")
            enrollment.outcomes.setdefault(send.step.id, []).append("sent")
            sent.append(Sent(index, send.step, now, send.due_at))
        for skip in evaluation.skips:
            enrollment.recorded[skip.step.id] = Recorded("skipped", reason=skip.reason)
            enrollment.outcomes.setdefault(skip.step.id, []).append(f"skipped: {skip.reason}")
    return contact, wakes


def _check_sends(sent: list[Sent], enrollments: list[Enrollment], contact: ContactState, dl: Delivery) -> None:
    seen = set()
    for item in sent:
        enrollment = enrollments[item.enrollment]
        key = (item.enrollment, item.step.id)
        assert key not in seen, f"{item.step.id} sent twice"
        seen.add(key)
        assert item.at >= item.due, f"{item.step.id} sent before its due time"
        assert item.at >= enrollment.enrolled_at
        assert item.due >= enrollment.enrolled_at, f"{item.step.id} was due before enrollment"
        start = enrollment.webinar_start
        if start is not None and (item.due < start or (item.step.webinar and item.step.webinar.approx < timedelta(0))):
            assert item.at < start, f"{item.step.id}, timed before the webinar, was sent after its start"
        if item.step.if_tags:
            assert contact.tags.intersection(item.step.if_tags)
        assert not contact.tags.intersection(item.step.unless_tags)
        if item.step.transactional:
            assert item.at - item.due <= dl.max_late.approx
        else:
            assert wall_in_window(item.at, dl, contact.tz), f"{item.step.id} sent outside the window"
    marketing = sorted(item.at for item in sent if not item.step.transactional)
    for earlier, later in zip(marketing, marketing[1:], strict=False):
        assert later - earlier >= dl.min_gap.approx


@PROPERTY
@given(
    scenario=scenarios(),
    moves=st.lists(
        st.sampled_from([None, None, None, 1, 10, 60, 600]) | st.integers(1, 4 * 1440),
        min_size=3,
        max_size=40,
    ),
    failures=st.lists(st.booleans(), max_size=6),
)
def test_property_simulated_runs(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]],
    moves: list[int | None],
    failures: list[bool],
) -> None:
    """Runs at random moments (sometimes exactly when asked to wake) keep every rule."""
    tz, dl, enrollments, tags = scenario
    contact = ContactState(tz, tags)
    sent: list[Sent] = []
    now = enrollments[0].enrolled_at
    contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
    for move in moves:
        if move is None:
            if not wakes:
                continue
            now = min(wakes)
        else:
            now = now + timedelta(minutes=move)
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)

    # then runs whenever asked to, until past the last due time + max_late + a week,
    # and on at the times asked for: every step ends with exactly one outcome. (Not
    # always *by* that time: min_gap moves a marketing step's opening, lateness counts
    # from there, so several steps due together on `send_days: [mon]` go a week apart.)
    last_due = max(
        [e.enrolled_at for e in enrollments]
        + [d for e in enrollments for d in due_times(e.sequence, e.enrolled_at, e.webinar_start, tz).values() if d]
    )
    end = last_due + dl.max_late.approx + timedelta(days=7)
    while wakes and min(wakes) < end:
        now = min(wakes)
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
    now = max(now, end)
    failures.clear()
    for _ in range(50):
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
        if not wakes:
            break
        now = min(wakes)
    assert not wakes
    for enrollment in enrollments:
        for s in enrollment.sequence.steps:
            assert len(enrollment.outcomes.get(s.id, [])) == 1, (s.id, enrollment.outcomes)
            assert enrollment.recorded[s.id].status in ("sent", "skipped")
    _check_sends(sent, enrollments, contact, dl)


@PROPERTY
@given(scenario=scenarios(), horizon=st.integers(0, 30 * 1440))
def test_property_project_keeps_the_rules(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]], horizon: int
) -> None:
    tz, dl, enrollments, tags = scenario
    now = max(e.enrolled_at for e in enrollments)
    until = now + timedelta(minutes=horizon)
    states = {f"s{i}": (e.sequence, e.state()) for i, e in enumerate(enrollments)}
    plan = project(states, ContactState(tz, tags), now, until, dl)
    sent = []
    for item in plan:
        index = int(item.sequence[1:])
        enrollment = enrollments[index]
        s = enrollment.sequence.step(item.step)
        assert s is not None
        due = due_times(enrollment.sequence, enrollment.enrolled_at, enrollment.webinar_start, tz)[s.id]
        assert due is not None
        assert now <= item.at <= until
        sent.append(Sent(index, s, item.at, due))
    assert [p.at for p in plan] == sorted(p.at for p in plan)
    _check_sends(sent, enrollments, ContactState(tz, tags), dl)


@PROPERTY
@given(
    tz=st.sampled_from(ZONES),
    dl=deliveries(),
    base=st.sampled_from(BASES),
    minutes=st.integers(0, 14 * 1440),
    probe=st.floats(0, 1),
)
def test_property_next_opening(tz: ZoneInfo, dl: Delivery, base: datetime, minutes: int, probe: float) -> None:
    instant = base + timedelta(minutes=minutes)
    opening = next_opening(instant, dl, tz)
    assert instant <= opening <= instant + timedelta(days=8)
    assert wall_in_window(opening, dl, tz)
    assert in_window(instant, dl, tz) == wall_in_window(instant, dl, tz)
    if opening > instant:
        # nothing in between is open: the minute before and a random moment
        assert not wall_in_window(opening - timedelta(minutes=1), dl, tz)
        between = instant + (opening - instant) * probe
        assert between == opening or not wall_in_window(between, dl, tz)
        assert not in_window(between, dl, tz) or between == opening


@PROPERTY
@given(
    tz=st.sampled_from(ZONES),
    base=st.sampled_from(BASES),
    minutes=st.integers(0, 14 * 1440),
    days=st.integers(-14, 14),
    clock=st.sampled_from([c for c in CLOCKS if c is not None] + [time(2, 15), time(8, 45)]),
)
def test_property_durations_and_clock(tz: ZoneInfo, base: datetime, minutes: int, days: int, clock: time) -> None:
    instant = base + timedelta(minutes=minutes)
    local = instant.astimezone(tz)
    moved = add_duration(instant, parse_duration(f"{days:+d}d", signed=True), tz).astimezone(tz)
    assert moved.date() == local.date() + timedelta(days=days)
    target = datetime.combine(local.date() + timedelta(days=days), local.time(), tzinfo=tz)
    if target.astimezone(UTC).astimezone(tz).time() == local.time():
        assert moved.time() == local.time()  # same wall clock, unless it fell into a DST gap
    assert abs((moved - instant) - timedelta(days=days)) <= timedelta(hours=1)
    exact = add_duration(instant, parse_duration(f"{abs(days) * 60}m"), tz)
    assert exact - instant == timedelta(hours=abs(days))

    _check_snap(instant, clock, tz)


# ======================================== edits: steps added later


@pytest.mark.parametrize(
    ("introduced", "expected"),
    [
        # the step appeared in sequences.yaml after its due time had passed for this person
        (L(DENVER, 2026, 3, 12, 9), "skip: added after its time"),
        # it appeared before its due time: it applies like any other step
        (L(DENVER, 2026, 3, 10, 9), "send"),
        (L(DENVER, 2026, 3, 11, 9), "send"),  # exactly at its due time
    ],
)
def test_a_step_added_later_reaches_only_those_not_past_it(introduced: datetime, expected: str) -> None:
    sequence = seq(step("a", wait="1d", transactional=True))
    enrolled = L(DENVER, 2026, 3, 10, 9)
    evaluation = evaluate(
        sequence,
        EnrollmentState(enrolled, None, {}, {"a": introduced}),
        ContactState(DENVER),
        L(DENVER, 2026, 3, 12, 10),
        delivery(),
    )
    assert outcome(evaluation) == expected


# ======================================== end to end: cron down across a webinar

E2E_HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def test_cron_down_across_the_webinar_sends_no_reminder_after_it_began(project, funnel) -> None:
    """Issue 6 item 7, with the real command: "Tomorrow" and "in an hour" never go after the start.

    The webinar is 2027-01-14 19:00 Denver (02:00Z on the 15th). Ana registered days
    before; cron is down from before the day-before reminder until 30 minutes after
    the start. Bea registers while it is running: no confirmation for it at all.
    """
    project.write(
        "signups/webinar-registrations.csv",
        E2E_HEADER + "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n",
    )
    project.write("signups/webinar-attendance.csv", "Email,Attended\n")
    first = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert first.code == 0, first.err
    assert project.sent() == [("ana@example.test", "webinar-relationship-911", "registered")]

    project.append("signups/webinar-registrations.csv", "bea@example.test,Bea,Lind,2027-01-14 19:00,America/Denver,\n")
    late = funnel("run", "--now", "2027-01-15T02:30:00Z", "--json")
    assert late.code == 0, late.err
    assert late.json()["sent"] == 0
    assert len(project.sent()) == 1

    steps = {
        s["id"]: s for s in funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"][0]["steps"]
    }
    for step_id in ("day-before", "hour-before"):
        assert (steps[step_id]["status"], steps[step_id]["reason"]) == ("skipped", "the webinar had already begun")
    bea = {
        s["id"]: s for s in funnel("contacts", "show", "bea@example.test", "--json").json()["enrollments"][0]["steps"]
    }
    assert (bea["registered"]["status"], bea["registered"]["reason"]) == ("skipped", "the webinar had already begun")
    shown = funnel("contacts", "show", "bea@example.test")
    assert "the webinar had already begun" in shown.out

    # after the webinar its own steps still go (the replay, in the morning window)
    funnel("run", "--now", "2027-01-15T16:00:00Z")
    assert sorted(s for _to, _seq, s in project.sent()) == ["registered", "replay", "replay"]


@PROPERTY
@given(
    scenario=scenarios(),
    after_start=st.integers(0, 10 * 1440),
    sent=st.sets(st.integers(0, 4)),
)
def test_property_nothing_timed_before_the_webinar_goes_at_or_after_its_start(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]], after_start: int, sent: set[int]
) -> None:
    """Issue 6 item 7: whatever the sequence, the delivery settings and what was sent before."""
    tz, dl, enrollments, tags = scenario
    for enrollment in enrollments:
        start = enrollment.webinar_start
        if start is None:
            continue
        now = max(start, enrollment.enrolled_at) + timedelta(minutes=after_start)
        recorded = {s.id: Recorded("sent") for i, s in enumerate(enrollment.sequence.steps) if i in sent}
        state = EnrollmentState(enrollment.enrolled_at, start, recorded)
        evaluation = evaluate(enrollment.sequence, state, ContactState(tz, tags), now, dl)
        for send in evaluation.sends:
            assert not (send.step.webinar and send.step.webinar.approx < timedelta(0)), send.step
            assert send.due_at >= start, send.step


# --------------------------------------------------------------------------- first look


@PROPERTY
@given(
    scenario=scenarios(),
    last_marketing=st.sampled_from([None, -1440, -600, -60]),
    fraction=st.floats(0, 1),
)
def test_first_look_is_never_later_than_the_first_decision(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]],
    last_marketing: int | None,
    fraction: float,
) -> None:
    """Until an enrollment's first look the schedule only waits, whatever the person's tags and last email.

    So a run that looks at a new enrollment only then (ingest sets it as
    `next_due_at`) decides exactly what a run looking at once would.
    """
    tz, dl, enrollments, tags = scenario
    enrollment = enrollments[0]
    enrolled = enrollment.enrolled_at
    look = first_look(enrollment.sequence, enrolled, enrollment.webinar_start, tz, dl)
    assert look >= enrolled
    contact = ContactState(
        tz=tz,
        tags=tags,
        last_marketing_at=None if last_marketing is None else enrolled + timedelta(minutes=last_marketing),
    )
    # at the enrollment, and at any moment before the first look: nothing but waiting, until no earlier than it
    for now in {enrolled, enrolled + (look - enrolled) * fraction} - {look} if look > enrolled else set():
        evaluation = evaluate(enrollment.sequence, enrollment.state(), contact, now, dl)
        assert (evaluation.sends, evaluation.skips, evaluation.exit_reason, evaluation.finished) == (
            (),
            (),
            None,
            False,
        )
        assert evaluation.wake_at is not None and evaluation.wake_at >= look


def test_first_look_of_a_letter_enrolled_at_night_is_the_morning() -> None:
    """Enrolled at 02:00 in Denver: a marketing letter due at once is first looked at when the window opens."""
    letter = seq(step("a", wait="0m"))
    assert first_look(letter, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 8)
    # a transactional one (a confirmation) is looked at at once, night or day
    confirmation = seq(step("a", wait="0m", transactional=True), step("b", wait="1d"))
    assert first_look(confirmation, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 2)
    # a step without a webinar date is skipped at once: looked at at once
    reminder = seq(step("a", webinar="-1d"), step("b", wait="1d"))
    assert first_look(reminder, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 2)


# ======================================== care: the goal keeps the recording; late registrants


def test_after_goal_step_still_goes_once_the_goal_is_reached() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    sequence = seq(
        step("replay", wait="1d", after_goal=True),
        step("offer", wait="2d"),
        exit_on_tags=("client",),
    )
    evaluation = run(sequence, enrolled, enrolled + timedelta(days=1), tags=frozenset({"client"}))
    assert outcome(evaluation, "replay") == "send"
    assert outcome(evaluation, "offer") == "wait"  # the goal is decided at the offer's own time
    later = run(
        sequence,
        enrolled,
        enrolled + timedelta(days=3),
        tags=frozenset({"client"}),
        recorded={"replay": Recorded("sent")},
    )
    assert outcome(later, "offer") == "skip: goal reached: tag client"
    assert later.finished and later.goal == "goal reached: tag client"


def test_after_goal_step_keeps_the_send_window() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    sequence = seq(step("replay", wait="12h", after_goal=True), exit_on_tags=("client",))
    evaluation = run(sequence, enrolled, L(DENVER, 2026, 3, 9, 22), tags=frozenset({"client"}))
    assert outcome(evaluation, "replay") == "wait"
    assert evaluation.wake_at == L(DENVER, 2026, 3, 10, 8)


@pytest.mark.parametrize(
    ("minutes_before", "day_before", "hour_before"),
    [
        (65, "skip: before enrollment", "skip: too soon after the confirmation (within 2h)"),
        (30, "skip: before enrollment", "skip: before enrollment"),
        (150, "skip: before enrollment", "skip: too soon after the confirmation (within 2h)"),
        (190, "skip: before enrollment", "send"),
        (25 * 60, "skip: too soon after the confirmation (within 2h)", "send"),
        (27 * 60, "send", "send"),
    ],
)
def test_reminder_within_the_gap_of_the_confirmation_is_skipped(
    minutes_before: int, day_before: str, hour_before: str
) -> None:
    start = L(DENVER, 2026, 3, 12, 19)
    enrolled = start - timedelta(minutes=minutes_before)
    sequence = seq(
        step("registered", wait="0m", transactional=True),
        step("day-before", webinar="-1d", transactional=True),
        step("hour-before", webinar="-1h", transactional=True),
    )
    dl = delivery(reminder_gap="2h")
    seen: dict[str, str] = {}
    for now in (enrolled, start - timedelta(days=1), start - timedelta(hours=1)):
        recorded = {k: Recorded("sent") for k, v in seen.items() if v == "send"}
        evaluation = run(sequence, enrolled, max(now, enrolled), webinar_start=start, dl=dl, recorded=recorded)
        for name in ("registered", "day-before", "hour-before"):
            if name not in seen and outcome(evaluation, name) != "wait":
                seen[name] = outcome(evaluation, name)
    assert seen == {"registered": "send", "day-before": day_before, "hour-before": hour_before}


def test_no_reminder_gap_by_default() -> None:
    start = L(DENVER, 2026, 3, 12, 19)
    enrolled = start - timedelta(minutes=65)
    sequence = seq(step("registered", transactional=True), step("hour-before", webinar="-1h", transactional=True))
    evaluation = run(sequence, enrolled, start - timedelta(hours=1), webinar_start=start)
    assert outcome(evaluation, "hour-before") == "send"


def test_a_reminder_due_before_she_was_stored_does_not_apply_though_waits_count_from_her_signup() -> None:
    """A late export (`signed_up_at`): "Tomorrow at..." is not sent on the day itself; a stale wait shows late."""
    sequence = Sequence(
        steps=(
            Step(id="registered", wait=parse_duration("0m"), transactional=True, subject="s", template="t.md"),
            Step(
                id="day-before",
                webinar=parse_duration("-1d", signed=True),
                transactional=True,
                subject="s",
                template="t.md",
            ),
        )
    )
    delivery = Delivery(max_late=parse_duration("3d"))
    signed_up, stored, start = Z(2027, 1, 7, 12), Z(2027, 1, 14, 9), Z(2027, 1, 15, 2)
    state = EnrollmentState(enrolled_at=signed_up, webinar_start=start, imported_at=stored)
    result = evaluate(sequence, state, ContactState(tz=DENVER), stored, delivery)
    reasons = {s.step.id: s.reason for s in result.skips}
    assert reasons["day-before"] == "before enrollment" and reasons["registered"].startswith("late by 6 days")
    assert not result.sends
    # stored before the day before: the reminder goes at its time
    early = EnrollmentState(enrolled_at=signed_up, webinar_start=start, imported_at=Z(2027, 1, 13, 9))
    later = evaluate(sequence, early, ContactState(tz=DENVER), Z(2027, 1, 14, 2), delivery)
    assert [s.step.id for s in later.sends] == ["day-before"]
