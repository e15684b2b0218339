"""Durations, clock times and local-time arithmetic: small pure helpers.

Why days are calendar days: "1d before a 7 pm webinar" means 7 pm the day
before *on the contact's wall clock*, also across a DST change; `m` and `h`
are exact elapsed time. So `Duration` keeps days and minutes apart and
`add_duration` applies days in the contact's timezone, minutes in UTC.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from dateutil.rrule import rrule

_DURATION = re.compile(r"^\s*([+-])?\s*(\d{1,12})\s*([mhdw])\s*$")
_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")

DURATION_HELP = "write a number and a unit: 30m, 2h, 3d or 1w"
#: the longest wait or offset: 5 years. Anything longer is a typo, and would push
#: due times past what a date can hold (year 9999) and crash every run.
MAX_DURATION_DAYS = 5 * 365 + 1


@dataclass(frozen=True, order=True)
class Duration:
    """A signed span: whole calendar days plus exact minutes."""

    days: int = 0
    minutes: int = 0

    @property
    def approx(self) -> timedelta:
        """The span as elapsed time (days as 24 h), for comparisons and display."""
        return timedelta(days=self.days, minutes=self.minutes)

    def __str__(self) -> str:
        if self.days and self.days % 7 == 0 and not self.minutes:
            return f"{self.days // 7}w"
        if self.days:
            return f"{self.days}d"
        if self.minutes and self.minutes % 60 == 0:
            return f"{self.minutes // 60}h"
        return f"{self.minutes}m"


def parse_duration(text: object, *, signed: bool = False) -> Duration:
    """Parse `30m`, `2h`, `3d`, `1w` (and `-1d`, `+3h` when `signed`).

    Raises ValueError with a message a person can act on.
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration: {DURATION_HELP}")
    sign, amount, unit = match.groups()
    if sign and not signed:
        raise ValueError(f"{text!r}: a wait cannot be negative or signed: {DURATION_HELP}")
    value = int(amount) * (-1 if sign == "-" else 1)
    minutes = abs(value) * {"m": 1, "h": 60, "d": 1440, "w": 7 * 1440}[unit]
    if minutes > MAX_DURATION_DAYS * 1440:
        raise ValueError(
            f"{text!r} is longer than 5 years, the longest wait or offset: write at most 260w, 1826d or 43824h"
        )
    if unit == "m":
        return Duration(minutes=value)
    if unit == "h":
        return Duration(minutes=value * 60)
    if unit == "d":
        return Duration(days=value)
    return Duration(days=value * 7)


def parse_clock(text: object) -> time:
    """Parse a local time of day `HH:MM` (24-hour clock)."""
    match = _CLOCK.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a time of day: write HH:MM on a 24-hour clock, e.g. 09:00")
    return time(int(match.group(1)), int(match.group(2)))


#: the longest IANA name is about 30 characters; anything much longer is not a zone (and
#: would reach the file system as a too-long path)
MAX_ZONE_NAME = 64


def zone(name: str) -> ZoneInfo:
    """Look up an IANA timezone, raising ValueError with a hint when unknown or unusable."""
    if len(name.strip()) > MAX_ZONE_NAME:
        raise ValueError(
            f"{name.strip()[:30]!r}... ({len(name)} characters) is not a timezone name: "
            "use an IANA name such as America/Denver"
        )
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
        city = _CITY_OF_ABBREVIATION.get(name.strip().upper(), "America/Denver")
        raise ValueError(f"{name!r} is not a known timezone: use an IANA name such as {city}") from None


#: abbreviations people write for a zone (not zone names themselves), and the city they most likely mean
_CITY_OF_ABBREVIATION = {
    "PST": "America/Los_Angeles",
    "PDT": "America/Los_Angeles",
    "MDT": "America/Denver",
    "CST": "America/Chicago",
    "CDT": "America/Chicago",
    "EDT": "America/New_York",
    "AKST": "America/Anchorage",
    "AKDT": "America/Anchorage",
}


def local_wall(date_part: datetime, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of `clock` on the local date of `date_part`.

    A wall time skipped by a DST jump is moved forward by the jump (02:30 on
    the spring-forward night becomes 03:30); an ambiguous one takes the first.
    """
    naive = datetime.combine(date_part.date(), clock)
    return naive.replace(tzinfo=tz).astimezone(UTC)


def add_duration(instant: datetime, span: Duration, tz: ZoneInfo) -> datetime:
    """Add `span` to a UTC instant: days on the wall clock of `tz`, minutes exactly."""
    result = instant
    if span.days:
        local = instant.astimezone(tz)
        shifted = (local.replace(tzinfo=None) + timedelta(days=span.days)).replace(tzinfo=tz)
        result = shifted.astimezone(UTC)
    if span.minutes:
        result = result + timedelta(minutes=span.minutes)
    return result.astimezone(UTC)


def utc(value: datetime) -> datetime:
    """Make a datetime aware in UTC (naive values are taken as UTC, as stored by SQLite)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_instant(text: str, default_tz: ZoneInfo | None = None) -> datetime:
    """Parse ISO 8601 (`Z` allowed) or `YYYY-MM-DD HH:MM` read in `default_tz`.

    Raises ValueError naming the accepted forms.
    """
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date and time: write 2026-12-08T19:00:00-07:00 "
            "or 2026-12-08 19:00 (read in the webinar's timezone)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz or UTC)
    return value.astimezone(UTC)


def wall_time_doubt(text: str, tz: ZoneInfo) -> str | None:
    """Why a start written without an offset is not one clear moment in `tz`, or None.

    A wall time in the hour the clocks go back happens twice: `parse_instant`
    reads it as the first. One in the hour they skip never happens: it is
    read with the offset from before the change (02:30 becomes 03:30). Both
    are worth a word to the person who wrote it, who may have meant the other.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return wall_doubt(value, tz)


def wall_doubt(value: datetime, tz: ZoneInfo) -> str | None:
    """`wall_time_doubt` for a datetime already read (None when it carries its own offset)."""
    if value.tzinfo is not None:
        return None
    first, second = value.replace(tzinfo=tz, fold=0), value.replace(tzinfo=tz, fold=1)
    try:
        if first.utcoffset() == second.utcoffset():
            return None
        read_as = first.astimezone(UTC).astimezone(tz)
    except OverflowError:  # year 1 or 9999: refused as a date elsewhere
        return None
    shown = value.strftime("%Y-%m-%d %H:%M")
    if read_as.replace(tzinfo=None) == value:
        return (
            f"{shown} happens twice in {tz.key} (the clocks go back that night); read as the first, "
            f"{read_as:%H:%M} {read_as.tzname()}: write the offset (e.g. {_offset(second)}) if the second was meant"
        )
    return (
        f"{shown} does not exist in {tz.key} (the clocks go forward that night); read as "
        f"{read_as:%H:%M} {read_as.tzname()}: correct the time if another was meant"
    )


def _offset(value: datetime) -> str:
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def describe_delay(delta: timedelta) -> str:
    """`late by 4 days`-style wording: the largest whole unit, rounded down."""
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 86400:
        return "1 day"
    if seconds >= 7200:
        return f"{seconds // 3600} hours"
    if seconds >= 3600:
        return "1 hour"
    minutes = max(seconds // 60, 0)
    return f"{minutes} minute" + ("" if minutes == 1 else "s")


def isoformat_z(value: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, the form `plan --json` prints."""
    return utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def readable(value: datetime, tz: ZoneInfo) -> str:
    """`Thu 14 Jan 2027 18:30 MST`: an instant as a person reads it in `tz`, the zone named.

    The abbreviation (MST / MDT) says which side of a DST change the time is on,
    so an hour that happens twice on the night the clocks go back is never ambiguous.
    """
    local = utc(value).astimezone(tz)
    return f"{local:%a} {local.day} {local:%b %Y %H:%M} {local.tzname()}"


def read_rule(text: str, anchor: datetime) -> Iterator[datetime]:
    """The rule's dates (naive) from `anchor`, or ValueError saying what to write.

    `rrulestr` reads the rule; a frequency finer than daily is refused (a
    webinar happens at most once a day, at `repeat_at`). The rule is parsed
    once per (text, anchor): an import asks for every row's session.
    """
    return iter(_parsed_rule(text.strip(), anchor))


@functools.lru_cache(maxsize=64)
def _parsed_rule(body: str, anchor: datetime) -> rrule:
    from dateutil.rrule import rrule, rrulestr

    if not body:
        raise ValueError("`repeat` is empty: write an RFC 5545 rule such as FREQ=MONTHLY;BYDAY=3TH")
    freq = _freq(body)
    if freq not in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY"):
        raise ValueError(
            f"repeat: {body!r} must say FREQ=DAILY, WEEKLY, MONTHLY or YEARLY "
            "(a webinar repeats at most daily): e.g. FREQ=MONTHLY;BYDAY=3TH"
        )
    try:
        rule = rrulestr(body, dtstart=anchor, ignoretz=True)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(
            f"repeat: {body!r} is not an RFC 5545 rule ({exc}): write e.g. FREQ=MONTHLY;BYDAY=3TH"
        ) from None
    if not isinstance(rule, rrule):
        raise ValueError(f"repeat: {body!r} must be one rule (a single RRULE), e.g. FREQ=MONTHLY;BYDAY=3TH")
    return rule


def _freq(body: str) -> str:
    for line in body.replace("\n", ";").split(";"):
        key, _, value = line.partition("=")
        if key.strip().upper().removeprefix("RRULE:") == "FREQ":
            return value.strip().upper()
    return ""
