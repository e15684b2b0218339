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
from datetime import UTC, datetime, time, timedelta
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


# =========================================================================== due times


@pytest.mark.parametrize(
    ("tz", "enrolled_at", "webinar_start", "kw", "expected"),
    [
        # `d`/`w` keep the wall clock across DST, `m`/`h` are elapsed time
        pytest.param(DENVER, L(DENVER, 2026, 3, 7, 12), None, {"wait": "1d"}, Z(2026, 3, 8, 18), id="denver-1d-spring"),
        pytest.param(DENVER, L(DENVER, 2026, 3, 7, 12), None, {"wait": "24h"}, Z(2026, 3, 8, 19), id="denver-24h-spring"),
        pytest.param(DENVER, Z(2026, 3, 8, 8, 45), None, {"wait": "30m"}, Z(2026, 3, 8, 9, 15), id="denver-30m-over-gap"),
        pytest.param(NEW_YORK, L(NEW_YORK, 2026, 10, 31, 12), None, {"wait": "1d"}, Z(2026, 11, 1, 17), id="ny-1d-fall"),
        pytest.param(NEW_YORK, L(NEW_YORK, 2026, 10, 31, 12), None, {"wait": "24h"}, Z(2026, 11, 1, 16), id="ny-24h-fall"),
        pytest.param(LONDON, L(LONDON, 2026, 3, 28, 12), None, {"wait": "1d"}, Z(2026, 3, 29, 11), id="london-1d-spring"),
        pytest.param(LONDON, L(LONDON, 2026, 3, 28, 12), None, {"wait": "1w"}, Z(2026, 4, 4, 11), id="london-1w-spring"),
        pytest.param(LONDON, L(LONDON, 2026, 10, 24, 12), None, {"wait": "1d"}, Z(2026, 10, 25, 12), id="london-1d-fall"),
        pytest.param(SYDNEY, L(SYDNEY, 2026, 4, 4, 12), None, {"wait": "1d"}, Z(2026, 4, 5, 2), id="sydney-1d-dst-end"),
        pytest.param(AUCKLAND, L(AUCKLAND, 2026, 9, 26, 12), None, {"wait": "1d"}, Z(2026, 9, 26, 23), id="auckland-1d-dst-start"),
        pytest.param(KOLKATA, L(KOLKATA, 2026, 3, 7, 12), None, {"wait": "1d"}, Z(2026, 3, 8, 6, 30), id="kolkata-1d"),
        # webinar offsets from the webinar start
        pytest.param(DENVER, Z(2026, 3, 1), L(DENVER, 2026, 3, 8, 19), {"webinar": "-1d"}, Z(2026, 3, 8, 2), id="denver-webinar-1d-before-spring"),
        pytest.param(DENVER, Z(2026, 10, 1), L(DENVER, 2026, 11, 1, 19), {"webinar": "-1d"}, Z(2026, 11, 1, 1), id="denver-webinar-1d-before-fall"),
        pytest.param(DENVER, Z(2026, 3, 1), L(DENVER, 2026, 3, 8, 3, 30), {"webinar": "-1h"}, Z(2026, 3, 8, 8, 30), id="denver-webinar-1h-before-over-gap"),
        pytest.param(LONDON, Z(2026, 3, 1), L(LONDON, 2026, 3, 29, 19), {"webinar": "-1d"}, Z(2026, 3, 28, 19), id="london-webinar-1d-before"),
        pytest.param(NEW_YORK, Z(2026, 10, 1), L(NEW_YORK, 2026, 11, 1, 0, 30), {"webinar": "+3h"}, Z(2026, 11, 1, 7, 30), id="ny-webinar-3h-after-fall"),
        pytest.param(AUCKLAND, Z(2026, 3, 1), L(AUCKLAND, 2026, 4, 5, 19), {"webinar": "-1d"}, Z(2026, 4, 4, 6), id="auckland-webinar-1d-before"),
        pytest.param(KOLKATA, Z(2026, 3, 1), L(KOLKATA, 2026, 3, 8, 19), {"webinar": "+0m"}, Z(2026, 3, 8, 13, 30), id="kolkata-webinar-at-start"),
        # at: snaps to the next such local time at or after
        pytest.param(DENVER, L(DENVER, 2026, 3, 7, 22), None, {"at": "02:30"}, Z(2026, 3, 8, 9, 30), id="denver-at-0230-spring-forward"),
        pytest.param(NEW_YORK, L(NEW_YORK, 2026, 3, 7, 22), None, {"at": "02:30"}, Z(2026, 3, 8, 7, 30), id="ny-at-0230-spring-forward"),
        pytest.param(LONDON, L(LONDON, 2026, 3, 28, 22), None, {"at": "01:30"}, Z(2026, 3, 29, 1, 30), id="london-at-0130-spring-forward"),
        pytest.param(AUCKLAND, L(AUCKLAND, 2026, 9, 26, 22), None, {"at": "02:30"}, Z(2026, 9, 26, 14, 30), id="auckland-at-0230-spring-forward"),
        pytest.param(SYDNEY, L(SYDNEY, 2026, 4, 4, 22), None, {"at": "02:30"}, Z(2026, 4, 4, 15, 30), id="sydney-at-0230-ambiguous-first"),
        pytest.param(DENVER, Z(2026, 11, 1, 7, 45), None, {"at": "01:30"}, Z(2026, 11, 1, 8, 30), id="denver-at-0130-second-occurrence"),
        pytest.param(DENVER, L(DENVER, 2026, 3, 10, 9), None, {"at": "09:00"}, Z(2026, 3, 10, 15), id="at-exactly-now"),
        pytest.param(DENVER, L(DENVER, 2026, 3, 10, 9, 1), None, {"at": "09:00"}, Z(2026, 3, 11, 15), id="at-just-missed"),
        pytest.param(DENVER, L(DENVER, 2026, 3, 6, 10), None, {"wait": "2d", "at": "09:00"}, Z(2026, 3, 9, 15), id="wait-2d-then-at"),
        pytest.param(KOLKATA, L(KOLKATA, 2026, 3, 8, 21), None, {"at": "09:00"}, Z(2026, 3, 9, 3, 30), id="kolkata-at"),
    ],
)
def test_due_time(
    tz: ZoneInfo, enrolled_at: datetime, webinar_start: datetime | None, kw: dict[str, str], expected: datetime
) -> None:
    assert due_times(seq(step("a", **kw)), enrolled_at, webinar_start, tz) == {"a": expected}


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


# =========================================================================== windows


@pytest.mark.parametrize(
    ("tz", "kw", "instant", "expected"),
    [
        pytest.param(DENVER, {}, L(DENVER, 2026, 3, 10, 7), Z(2026, 3, 10, 14), id="before-window"),
        pytest.param(DENVER, {}, L(DENVER, 2026, 3, 10, 12), Z(2026, 3, 10, 18), id="inside"),
        pytest.param(DENVER, {}, L(DENVER, 2026, 3, 10, 20), Z(2026, 3, 11, 14), id="end-is-exclusive"),
        pytest.param(DENVER, {}, L(DENVER, 2026, 3, 7, 21), Z(2026, 3, 8, 14), id="denver-spring-forward"),
        pytest.param(DENVER, {}, L(DENVER, 2026, 10, 31, 21), Z(2026, 11, 1, 15), id="denver-fall-back"),
        pytest.param(NEW_YORK, {}, L(NEW_YORK, 2026, 3, 7, 21), Z(2026, 3, 8, 12), id="ny-spring-forward"),
        pytest.param(LONDON, {}, L(LONDON, 2026, 3, 28, 21), Z(2026, 3, 29, 7), id="london-spring-forward"),
        pytest.param(LONDON, {}, L(LONDON, 2026, 10, 24, 21), Z(2026, 10, 25, 8), id="london-fall-back"),
        pytest.param(SYDNEY, {}, L(SYDNEY, 2026, 4, 4, 21), Z(2026, 4, 4, 22), id="sydney-dst-end"),
        pytest.param(AUCKLAND, {}, L(AUCKLAND, 2026, 9, 26, 21), Z(2026, 9, 26, 19), id="auckland-dst-start"),
        pytest.param(KOLKATA, {}, L(KOLKATA, 2026, 3, 7, 7), Z(2026, 3, 7, 2, 30), id="kolkata-half-hour-offset"),
        # a window that wraps midnight
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 3, 10, 12), Z(2026, 3, 11, 2), id="wrap-midday"),
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 3, 10, 23), Z(2026, 3, 11, 5), id="wrap-late-evening"),
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 3, 10, 3), Z(2026, 3, 10, 9), id="wrap-early-morning"),
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 3, 10, 8), Z(2026, 3, 11, 2), id="wrap-end-exclusive"),
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, Z(2026, 3, 8, 8, 59), Z(2026, 3, 8, 8, 59), id="wrap-spring-night"),
        pytest.param(DENVER, {"send_window": "20:00-08:00"}, Z(2026, 3, 8, 14), Z(2026, 3, 9, 2), id="wrap-after-spring-night"),
        pytest.param(DENVER, {"send_window": "18:00-00:00"}, L(DENVER, 2026, 3, 10, 10), Z(2026, 3, 11, 0), id="until-midnight"),
        pytest.param(DENVER, {"send_window": "18:00-00:00"}, L(DENVER, 2026, 3, 11, 0), Z(2026, 3, 12, 0), id="midnight-is-outside"),
        # restricted send days
        pytest.param(DENVER, {"send_days": WEEKDAYS}, L(DENVER, 2026, 3, 6, 20, 30), Z(2026, 3, 9, 14), id="friday-night-to-monday-over-dst"),
        pytest.param(DENVER, {"send_days": WEEKDAYS}, L(DENVER, 2026, 3, 7, 12), Z(2026, 3, 9, 14), id="saturday-to-monday"),
        pytest.param(LONDON, {"send_days": WEEKDAYS}, L(LONDON, 2026, 3, 28, 12), Z(2026, 3, 30, 7), id="london-weekend"),
        pytest.param(NEW_YORK, {"send_days": ["sat", "sun"]}, L(NEW_YORK, 2026, 10, 30, 12), Z(2026, 10, 31, 12), id="weekend-only"),
        pytest.param(AUCKLAND, {"send_days": ["sun"]}, L(AUCKLAND, 2026, 9, 26, 9), Z(2026, 9, 26, 19), id="auckland-sunday-only"),
        pytest.param(DENVER, {"send_days": ["mon"]}, L(DENVER, 2026, 3, 9, 20), Z(2026, 3, 16, 14), id="one-day-a-week"),
        # the night part belongs to the calendar day it falls on
        pytest.param(DENVER, {"send_window": "20:00-08:00", "send_days": ["mon"]}, L(DENVER, 2026, 3, 10, 2), Z(2026, 3, 16, 6), id="wrap-tuesday-morning-not-monday"),
        pytest.param(DENVER, {"send_window": "20:00-08:00", "send_days": ["mon"]}, L(DENVER, 2026, 3, 9, 12), Z(2026, 3, 10, 2), id="wrap-monday-evening"),
    ],
)
def test_next_opening(tz: ZoneInfo, kw: dict[str, object], instant: datetime, expected: datetime) -> None:
    dl = delivery(**kw)
    assert next_opening(instant, dl, tz) == expected
    assert in_window(expected, dl, tz)
    assert in_window(instant, dl, tz) == (instant == expected)


@pytest.mark.parametrize(
    ("tz", "kw", "instant", "expected"),
    [
        (DENVER, {}, L(DENVER, 2026, 3, 10, 8), True),
        (DENVER, {}, L(DENVER, 2026, 3, 10, 7, 59), False),
        (DENVER, {}, L(DENVER, 2026, 3, 10, 19, 59), True),
        (DENVER, {}, L(DENVER, 2026, 3, 10, 20), False),
        (DENVER, {}, Z(2026, 3, 10, 19), True),  # 13:00 local, 19:00 UTC
        (KOLKATA, {}, Z(2026, 3, 10, 2, 29), False),
        (KOLKATA, {}, Z(2026, 3, 10, 2, 30), True),
        (SYDNEY, {"send_days": WEEKDAYS}, Z(2026, 3, 6, 22), False),  # Saturday 09:00 in Sydney
        (SYDNEY, {"send_days": WEEKDAYS}, Z(2026, 3, 8, 22), True),  # Monday 09:00 in Sydney
        (DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 11, 1, 1, 30), True),
        (DENVER, {"send_window": "20:00-08:00"}, Z(2026, 11, 1, 8, 30), True),  # second 01:30
        (DENVER, {"send_window": "20:00-08:00"}, L(DENVER, 2026, 11, 1, 12), False),
    ],
)
def test_in_window(tz: ZoneInfo, kw: dict[str, object], instant: datetime, expected: bool) -> None:
    assert in_window(instant, delivery(**kw), tz) is expected


# =========================================================================== evaluate: lateness


@pytest.mark.parametrize(
    ("tz", "transactional", "kw", "enrolled", "now", "expected"),
    [
        # a 5-day outage: skipped, never sent late
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 9, 10), L(DENVER, 2026, 3, 14, 10), "skip: late by 5 days", id="outage-marketing"),
        pytest.param(DENVER, True, {}, L(DENVER, 2026, 3, 9, 10), L(DENVER, 2026, 3, 14, 10), "skip: late by 5 days", id="outage-transactional"),
        pytest.param(LONDON, False, {}, L(LONDON, 2026, 3, 26, 10), L(LONDON, 2026, 3, 31, 10), "skip: late by 4 days", id="outage-over-eu-dst-is-elapsed"),
        pytest.param(AUCKLAND, False, {}, L(AUCKLAND, 2026, 9, 24, 10), L(AUCKLAND, 2026, 9, 29, 10), "skip: late by 4 days", id="outage-auckland"),
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 10, 10), L(DENVER, 2026, 3, 12, 10), "send", id="exactly-max-late"),
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 10, 10), L(DENVER, 2026, 3, 12, 10, 1), "skip: late by 2 days", id="a-minute-over"),
        pytest.param(DENVER, True, {"max_late": "1h"}, L(DENVER, 2026, 3, 10, 10), L(DENVER, 2026, 3, 10, 13), "skip: late by 3 hours", id="hours"),
        pytest.param(DENVER, True, {"max_late": "30m"}, L(DENVER, 2026, 3, 10, 10), L(DENVER, 2026, 3, 10, 11, 30), "skip: late by 1 hour", id="one-hour"),
        pytest.param(DENVER, True, {"max_late": "0m"}, L(DENVER, 2026, 3, 10, 10), L(DENVER, 2026, 3, 10, 10, 5), "skip: late by 5 minutes", id="minutes"),
        # lateness counts from the opening: a weekend without send days is not late
        pytest.param(DENVER, False, {"send_days": WEEKDAYS}, L(DENVER, 2026, 3, 6, 21), L(DENVER, 2026, 3, 9, 10), "send", id="weekend-not-late"),
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 6, 21), L(DENVER, 2026, 3, 9, 10), "skip: late by 2 days", id="weekend-with-send-days-is-late"),
        pytest.param(DENVER, True, {"send_days": WEEKDAYS}, L(DENVER, 2026, 3, 6, 21), L(DENVER, 2026, 3, 9, 10), "skip: late by 2 days", id="weekend-transactional-is-late"),
        pytest.param(DENVER, False, {"send_days": WEEKDAYS}, L(DENVER, 2026, 3, 6, 21), L(DENVER, 2026, 3, 11, 8, 30), "skip: late by 2 days", id="weekend-then-two-days"),
        pytest.param(SYDNEY, False, {"send_days": WEEKDAYS}, L(SYDNEY, 2026, 4, 3, 20, 30), L(SYDNEY, 2026, 4, 6, 9), "send", id="sydney-easter-weekend"),
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 10, 22), L(DENVER, 2026, 3, 12, 9), "send", id="evening-due-counts-from-morning"),
        pytest.param(DENVER, False, {}, L(DENVER, 2026, 3, 10, 22), L(DENVER, 2026, 3, 13, 9), "skip: late by 2 days", id="evening-due-too-late"),
    ],
)
def test_lateness(
    tz: ZoneInfo, transactional: bool, kw: dict[str, object], enrolled: datetime, now: datetime, expected: str
) -> None:
    evaluation = run(seq(step(transactional=transactional)), enrolled, now, tz, dl=delivery(**kw))
    assert outcome(evaluation) == expected
    assert evaluation.finished
    assert evaluation.wake_at is None


# =========================================================================== evaluate: window, gap, transactional


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
    ids=lambda v: v.key if isinstance(v, ZoneInfo) else "",
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
    second = evaluate(
        seq(step("other")), EnrollmentState(now), first.contact, now, delivery()
    )
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


# =========================================================================== evaluate: webinar signups


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
    # thank-you's tag condition is only read when it may go out: after the gap
    assert outcome(morning, "thank-you") == "wait"
    assert morning.wake_at == L(DENVER, 2026, 3, 14, 8)
    recorded["replay"] = Recorded("sent")
    next_day = run(WEBINAR, enrolled, L(DENVER, 2026, 3, 14, 8), webinar_start=webinar, recorded=recorded,
                   last_marketing_at=L(DENVER, 2026, 3, 13, 8))
    assert outcome(next_day, "thank-you") == "skip: without tag webinar-attended"
    # offer: 2 days after thank-you's due time (Thu 22:00), at 09:00 -> Sun 09:00
    assert next_day.wake_at == L(DENVER, 2026, 3, 15, 9)


def test_attendance_tag_is_read_at_send_time() -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    now = webinar + timedelta(hours=3)
    evaluation = run(
        WEBINAR, enrolled, now, webinar_start=webinar, recorded=recorded, tags=frozenset({"webinar-attended"})
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
    first = run(sequence, enrolled, max(enrolled, L(NEW_YORK, 2026, 10, 31, 19)), NEW_YORK, webinar_start=webinar)
    assert outcome(first, "day-before") == day_before
    recorded = {"day-before": Recorded("sent")}
    second = run(sequence, enrolled, max(enrolled, webinar - timedelta(hours=1)), NEW_YORK,
                 webinar_start=webinar, recorded=recorded)
    assert outcome(second, "hour-before") == hour_before


def test_signup_after_the_webinar_started() -> None:
    webinar = L(KOLKATA, 2026, 3, 12, 19)
    enrolled = webinar + timedelta(minutes=10)
    evaluation = run(WEBINAR, enrolled, enrolled, KOLKATA, webinar_start=webinar)
    assert [s.step.id for s in evaluation.sends] == ["registered"]
    assert outcome(evaluation, "day-before") == "skip: before enrollment"
    assert outcome(evaluation, "replay") == "wait"


# =========================================================================== evaluate: tags, exit, suppression


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
    if_tags: tuple[str, ...], unless_tags: tuple[str, ...], tags: set[str], expected: str, transactional: bool
) -> None:
    sequence = seq(step(if_tags=if_tags, unless_tags=unless_tags, transactional=transactional))
    now = L(AUCKLAND, 2026, 4, 5, 10)
    evaluation = run(sequence, now, now, AUCKLAND, tags=frozenset(tags))
    assert outcome(evaluation) == expected
    assert evaluation.exit_reason is None and evaluation.finished


@pytest.mark.parametrize(
    ("tags", "reason"),
    [({"client"}, "tag client"), ({"consultation-requested", "client"}, "tag client"),
     ({"consultation-requested"}, "tag consultation-requested")],
)
def test_exit_tags(tags: set[str], reason: str) -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    evaluation = run(
        WEBINAR, enrolled, webinar + timedelta(hours=3), webinar_start=webinar, recorded=recorded, tags=frozenset(tags)
    )
    assert evaluation.exit_reason == reason
    assert evaluation.sends == ()
    assert [(s.step.id, s.reason) for s in evaluation.skips] == [("replay", reason)]


@pytest.mark.parametrize("suppressed", ["unsubscribed", "bounced", "erased"])
@pytest.mark.parametrize("transactional", [False, True])
def test_suppressed_contact_leaves(suppressed: str, transactional: bool) -> None:
    now = L(SYDNEY, 2026, 10, 4, 10)
    evaluation = run(seq(step(transactional=transactional), step("b")), now, now, SYDNEY, suppressed=suppressed)
    assert evaluation.exit_reason == suppressed
    assert evaluation.sends == ()
    assert outcome(evaluation) == f"skip: {suppressed}"
    assert outcome(evaluation, "b") == "wait"  # not recorded: the whole enrollment ends


# =========================================================================== evaluate: recorded steps


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
    evaluation = run(seq(step(transactional=True)), now, now + timedelta(hours=1), NEW_YORK,
                     recorded={"a": recorded})
    assert outcome(evaluation) == expected
    assert evaluation.finished and evaluation.wake_at is None


def test_retryable_failure_is_still_subject_to_lateness() -> None:
    enrolled = L(NEW_YORK, 2026, 3, 9, 10)
    evaluation = run(seq(step()), enrolled, L(NEW_YORK, 2026, 3, 14, 10), NEW_YORK,
                     recorded={"a": Recorded("failed", retryable=True)})
    assert outcome(evaluation) == "skip: late by 5 days"


def test_nothing_left() -> None:
    now = L(DENVER, 2026, 3, 10, 10)
    evaluation = run(seq(step("a"), step("b", wait="1d")), now, now,
                     recorded={"a": Recorded("sent"), "b": Recorded("skipped")})
    assert evaluation == Evaluation(finished=True, contact=ContactState(DENVER))


# =========================================================================== project


def test_project_webinar_plan() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = L(DENVER, 2026, 3, 9, 15)
    state = EnrollmentState(enrolled, webinar)
    plan = project({"w": (WEBINAR, state)}, ContactState(DENVER), enrolled, enrolled + timedelta(days=30), delivery())
    assert [(p.step, p.at) for p in plan] == [
        ("registered", enrolled),
        ("day-before", L(DENVER, 2026, 3, 11, 19)),
        ("replay", L(DENVER, 2026, 3, 13, 8)),
        ("offer", L(DENVER, 2026, 3, 15, 9)),
    ]
    attended = ContactState(DENVER, frozenset({"webinar-attended"}))
    plan = project({"w": (WEBINAR, state)}, attended, enrolled, L(DENVER, 2026, 3, 14), delivery())
    assert [p.step for p in plan] == ["registered", "day-before", "thank-you"]
    exiting = ContactState(DENVER, frozenset({"client"}))
    plan = project({"w": (WEBINAR, state)}, exiting, enrolled, enrolled + timedelta(days=30), delivery())
    assert plan == []


def test_project_spaces_marketing_across_sequences() -> None:
    now = L(LONDON, 2026, 3, 27, 10)  # Friday
    sequences = {
        "one": (seq(step("a")), EnrollmentState(now)),
        "two": (seq(step("b")), EnrollmentState(now)),
    }
    plan = project(sequences, ContactState(LONDON), now, now + timedelta(days=7),
                   delivery(send_days=WEEKDAYS))
    assert [(p.sequence, p.step, p.at) for p in plan] == [
        ("one", "a", now),
        ("two", "b", Z(2026, 3, 30, 7)),  # Monday 08:00 BST: not Saturday, and not late
    ]


def test_project_skips_what_a_run_would_skip() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    state = EnrollmentState(enrolled)
    plan = project({"s": (seq(step("a")), state)}, ContactState(DENVER), enrolled + timedelta(days=5),
                   enrolled + timedelta(days=10), delivery())
    assert plan == []


# =========================================================================== properties

SAFE_WINDOWS = ["08:00-20:00", "20:00-08:00", "09:00-17:00", "00:00-06:00", "18:00-00:00", "23:00-04:00"]
WAITS = ["0m", "30m", "2h", "20h", "1d", "2d", "1w"]
OFFSETS = ["-1d", "-1h", "-30m", "+0m", "+3h", "+1d", "+2d"]
CLOCKS = [None, None, time(2, 30), time(1, 30), time(9), time(19), time(0)]
# instants near every DST change of 2026 in the zones used
BASES = [
    Z(2026, 3, 6, 12), Z(2026, 3, 27, 12), Z(2026, 4, 3, 12), Z(2026, 9, 25, 12),
    Z(2026, 10, 2, 12), Z(2026, 10, 23, 12), Z(2026, 10, 30, 12), Z(2026, 7, 1, 12),
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
        at = draw(st.sampled_from(CLOCKS))
        if at is not None:
            timing["at"] = at
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
    """One run at `now`, as the runner does it: each enrollment in turn, the contact carried along."""
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
        st.sampled_from([None, None, None, 1, 10, 60, 600]) | st.integers(1, 4 * 1440), min_size=3, max_size=40
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

    # then runs whenever asked to, until past the last due time + max_late + a week:
    # by then every step has exactly one outcome
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
def test_property_next_opening(
    tz: ZoneInfo, dl: Delivery, base: datetime, minutes: int, probe: float
) -> None:
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
def test_property_durations_and_clock(
    tz: ZoneInfo, base: datetime, minutes: int, days: int, clock: time
) -> None:
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

    snapped = snap_to_clock(instant, clock, tz)
    assert instant <= snapped < instant + timedelta(hours=26)
    wall = snapped.astimezone(tz)
    exists = datetime.combine(wall.date(), clock, tzinfo=tz).astimezone(UTC).astimezone(tz).time() == clock
    if exists:
        assert wall.time() == clock
