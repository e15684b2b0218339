"""Shared helpers of the schedule tests: fixed zones, instants written by hand, small sequences.

Expected instants in those tests are written in UTC by hand (not computed
with the code under test), so a wrong offset shows; these helpers only
spell them and build the config objects the pure schedule takes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from funnel.config import DAY_NAMES, Delivery, Sequence, Step
from funnel.schedule import (
    ContactState,
    EnrollmentState,
    Evaluation,
    Recorded,
    evaluate,
    snap_to_clock,
)

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


def wall_exists(day: date, clock: time, tz: ZoneInfo) -> bool:
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC).astimezone(tz).time() == clock


def check_snap(instant: datetime, clock: time, tz: ZoneInfo) -> None:
    """snap_to_clock against a brute-force search over both days and both folds."""
    snapped = snap_to_clock(instant, clock, tz)
    assert instant <= snapped < instant + timedelta(hours=26)
    local = instant.astimezone(tz)
    if not wall_exists(local.date(), clock, tz):
        return  # a DST gap today: moved forward by the jump (the table covers it)
    found = [
        candidate
        for day in (local.date(), local.date() + timedelta(days=1))
        for fold in (0, 1)
        if wall_exists(day, clock, tz)
        and (candidate := datetime.combine(day, clock, tzinfo=tz).replace(fold=fold).astimezone(UTC)) >= instant
    ]
    if found:
        assert snapped == min(found), (instant, clock, tz)
