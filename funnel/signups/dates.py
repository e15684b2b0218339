"""Dates and times as people and platforms write them in an export (spec section 8).

Accepted, and nothing else: ISO 8601; slashes (`01/14/2027 07:00 PM`, day first with
`date_order: dmy`, also `14.01.2027 19:00`); the month's name (`Jan 14, 2027 07:00
PM`); seconds optional. A date impossible in the source's order but possible in the
other (`13/01/2027` read month first) is refused with the fix, never turned round
silently: the same file may hold `01/02/2027`, which would be read wrong without a
word. The year has four digits: `1/2/27` is refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

#: what a refusal lists
FORMS = "2027-01-14 19:00 (or ISO 8601 with an offset), 01/14/2027 07:00 PM, 1/14/2027 19:00, Jan 14, 2027 07:00 PM"
FORMS_DMY = "2027-01-14 19:00 (or ISO 8601 with an offset), 14/01/2027 19:00, 14.01.2027 19:00, Jan 14, 2027 07:00 PM"

_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([AaPp])\.?[Mm]\.?)?"
_NUMERIC = re.compile(r"(\d{1,2})([/.])(\d{1,2})\2(\d{4})[ T]+" + _TIME + r"\Z")
_NAMED = re.compile(r"([A-Za-z]{3,9})\.?\s+(\d{1,2}),?\s+(\d{4}),?\s+" + _TIME + r"\Z")
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        1,
    )
    for name in names
}


def read_written(text: str, date_order: str = "mdy") -> datetime:
    """The date and time `text` says: aware when it carries an offset, naive (a wall time) otherwise.

    Raises ValueError in one sentence: the forms accepted, or the fix for a
    date written in the other order.
    """
    raw = " ".join(text.split())
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    if iso[:4].isdigit() and iso[4:5] == "-":
        try:
            return datetime.fromisoformat(iso)
        except ValueError:
            pass
    else:
        numeric = _NUMERIC.match(raw)
        if numeric:
            return _numeric(text, numeric, date_order)
        named = _NAMED.match(raw)
        if named and named.group(1).lower() in _MONTHS:
            month = _MONTHS[named.group(1).lower()]
            return _build(text, int(named.group(3)), month, int(named.group(2)), named.groups()[3:])
    raise ValueError(f"{_quoted(text)} is not a date and time funnel reads: write it like {_forms(date_order)}")


def read_instant(text: str, tz: ZoneInfo, date_order: str = "mdy") -> datetime:
    """`read_written` as a UTC instant; a wall time is read in `tz`."""
    value = read_written(text, date_order)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _numeric(text: str, match: re.Match[str], date_order: str) -> datetime:
    first, separator, second, year = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
    if separator == "." and date_order != "dmy":
        raise ValueError(
            f"{_quoted(text)} is written with dots, the day-first way, but this source reads dates month first: "
            "set `date_order: dmy` on the source in sequences.yaml"
        )
    month, day = (first, second) if date_order == "mdy" else (second, first)
    if month > 12 and day <= 12:
        if date_order == "mdy":
            raise ValueError(
                f"{_quoted(text)} cannot be read month first (there is no month {month}): if the export writes "
                "the day first, set `date_order: dmy` on the source in sequences.yaml"
            )
        raise ValueError(
            f"{_quoted(text)} cannot be read day first (there is no month {month}): if the export writes "
            "the month first, remove `date_order: dmy` from the source in sequences.yaml"
        )
    return _build(text, year, month, day, match.groups()[4:], date_order)


def _build(
    text: str, year: int, month: int, day: int, clock: tuple[str | None, ...], date_order: str = "mdy"
) -> datetime:
    hour_text, minute_text, second_text, meridiem = clock
    hour, minute, second = int(hour_text or 0), int(minute_text or 0), int(second_text or 0)
    if meridiem:
        if not 1 <= hour <= 12:
            raise ValueError(f"{_quoted(text)}: {hour} is not an hour on a 12-hour clock: write 1 to 12 with AM/PM")
        hour = hour % 12 + (12 if meridiem.lower() == "p" else 0)
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise ValueError(
            f"{_quoted(text)} is not a date and time that exists: write it like {_forms(date_order)}"
        ) from None


def _forms(date_order: str) -> str:
    return FORMS_DMY if date_order == "dmy" else FORMS


def _quoted(text: str) -> str:
    cleaned = " ".join(text.split())
    return repr(cleaned if len(cleaned) <= 60 else cleaned[:60] + "...")
