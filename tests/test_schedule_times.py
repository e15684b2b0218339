"""The pure schedule's clock: due times, DST, durations, send windows, lateness.

Every datetime here is fixed and aware; expected instants are written in UTC
by hand (not computed with the code under test), so a wrong offset shows.

Dates used: US DST starts 2026-03-08 and ends 2026-11-01 (2:00 local); the
EU (London) starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC;
Sydney and Auckland end DST 2026-04-05 and start it 2026-10-04 / 2026-09-27.
2026-03-06 and 2026-10-30 are Fridays, 2026-03-09 a Monday.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from schedule_helpers import (
    AUCKLAND,
    DENVER,
    KOLKATA,
    LONDON,
    NEW_YORK,
    SYDNEY,
    WEEKDAYS,
    ZONES,
    L,
    Z,
    at,
    check_snap,
    delivery,
    outcome,
    run,
    seq,
    step,
)

from funnel.schedule import (
    EnrollmentState,
    Recorded,
    due_times,
    evaluate,
    in_window,
    next_opening,
    snap_to_clock,
)
from funnel.timeutil import add_duration, describe_delay, parse_duration

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
            check_snap(instant, clock, tz)


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
