"""Where the rows of a platform's report are: summary lines, sections, the header (spec section 8).

Zoom's reports do not begin with their header: a registration report opens with a
summary (titles such as Topic and Scheduled Time, then their values), and an attendee
report adds sections ("Host Details", "Attendee Details"), each with its own header
and rows. The header is the first line holding the source's `email` title;
`section:` picks a section; the summary's start time may name the session. A file
whose header is on line 1 and which has no sections is read exactly as before. How
each part is found: docs/architecture.md.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from funnel.errors import SourceError

if TYPE_CHECKING:
    from funnel.config import Source

#: how far down a file its header is looked for (Zoom's summary is a dozen lines)
HEADER_SEARCH_LINES = 200
#: summary titles that hold the webinar's start, best first (compared as `title_key` gives them)
START_TITLES = ("actual start time", "scheduled time", "scheduled start time", "start time", "start date & time")

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


@dataclass
class Layout:
    """Where a csv file's rows are (indexes into `lines`, the file's physical lines)."""

    header: int = 0
    #: the first line after the rows (a section's end); None: the end of the file
    stop: int | None = None
    #: all the file's lines (only split when the header is not on line 1)
    lines: list[str] | None = None
    #: the start time named in the summary: (line number, the text as written)
    summary_start: tuple[int, str] | None = None
    #: (line number, message) warnings about the layout, kept with the rows' problems
    notes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def plain(self) -> bool:
        return self.lines is None


def locate(name: str, source: Source, path: Path, text: str, split: object) -> Layout:
    """The layout of a csv source's text; SourceError when the section asked for is not there.

    `split` is `funnel.signups.sources._split_lines` (passed in to keep one definition of a line).
    """
    from funnel.text import title_key

    email_key = title_key(source.columns["email"])
    first = _LINE.match(text)
    if source.section is None and source.session_from is None and first and email_key in _keys(first.group(0)):
        return Layout()  # the everyday file: its header on line 1
    lines: list[str] = split(text)  # type: ignore[operator]
    cells = _Cells(lines)
    header = next((i for i in range(min(len(lines), HEADER_SEARCH_LINES)) if email_key in cells.keys(i)), None)
    layout = Layout(lines=lines)
    titles = _titles(cells, email_key)
    if source.section is not None:
        wanted = title_key(source.section)
        found = [i for i in titles if cells.keys(i)[0] == wanted]
        if not found:
            names = ", ".join(repr(cells.values(i)[0]) for i in titles) or "none"
            raise SourceError(
                f"{path}: no section {source.section!r} in this file (sections found: {names}): "
                f"fix sources.{name}.section in sequences.yaml, or export the report again"
            )
        header = _next_filled(cells, found[0] + 1)
        if header is None or email_key not in cells.keys(header):
            raise SourceError(
                f"{path}:{found[0] + 1}: the section {source.section!r} has no header holding the column "
                f"{source.columns['email']!r}: fix sources.{name}.columns.email in sequences.yaml"
            )
    if header is None and len(cells.values(0)) != 1:
        return Layout()  # no report: line 1 is the header, and its columns are named when it lacks the email
    if header is None:
        shown = ", ".join(cells.values(0)) or "nothing"
        raise SourceError(
            f"{path}: no line holds the column {source.columns['email']!r} for the email address "
            f"(looked for the header in the first {HEADER_SEARCH_LINES} lines; line 1 holds: {shown}): "
            f"fix sources.{name}.columns.email in sequences.yaml"
        )
    layout.header = header
    ends = [i for i in titles if i > header]
    in_section = bool(titles) and titles[0] < header and _next_filled(cells, titles[0] + 1) is not None
    if in_section or source.section is not None:
        layout.stop = _section_end(lines, header, ends)
    if source.section is None and len(titles) > 1:
        names = ", ".join(repr(cells.values(i)[0]) for i in titles)
        before = [i for i in titles if i < header]
        here = cells.values(before[-1])[0] if before else "the first"
        layout.notes.append(
            (
                header + 1,
                f"this file has sections ({names}): only the rows of {here!r} were read; "
                f"set `section:` on sources.{name} to read another (Zoom's attendees: section: Attendee Details)",
            )
        )
    summary_end = titles[0] if titles and titles[0] < header else header
    layout.summary_start = _summary_start(cells, summary_end)
    return layout


class _Cells:
    """The values of a line, parsed once when asked for (delimiter as the line itself uses most)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self._values: dict[int, list[str]] = {}
        self._raw: dict[int, list[str]] = {}
        self._keys: dict[int, list[str]] = {}

    def values(self, index: int) -> list[str]:
        """The line's non-blank values."""
        if index not in self._values:
            self._values[index] = [v for v in self.raw(index) if v]
        return self._values[index]

    def raw(self, index: int) -> list[str]:
        """All the line's values, blanks included (trailing blanks dropped), cleaned."""
        if index not in self._raw:
            self._raw[index] = _raw(self.lines[index]) if index < len(self.lines) else []
        return self._raw[index]

    def keys(self, index: int) -> list[str]:
        if index not in self._keys:
            from funnel.text import title_key

            self._keys[index] = [title_key(v) for v in self.values(index)]
        return self._keys[index]


def _raw(line: str) -> list[str]:
    """A line's values, cleaned, without the blanks at its end."""
    from funnel.text import clean_line

    try:
        row = [clean_line(v) for v in next(csv.reader([line.rstrip("\r\n")], delimiter=sniff_delimiter(line)), [])]
    except csv.Error:
        return []
    while row and not row[-1]:
        row.pop()
    return row


def _keys(line: str) -> list[str]:
    from funnel.text import title_key

    return [title_key(v) for v in _raw(line) if v]


def _titles(cells: _Cells, email_key: str) -> list[int]:
    """Section title lines: one value alone, the next filled line a header holding the email title."""
    found = []
    for index in range(len(cells.lines)):
        if len(cells.values(index)) != 1:
            continue
        following = _next_filled(cells, index + 1)
        if following is not None and email_key in cells.keys(following):
            found.append(index)
    return found


def _next_filled(cells: _Cells, index: int) -> int | None:
    while index < len(cells.lines):
        if cells.values(index):
            return index
        index += 1
    return None


def _section_end(lines: list[str], header: int, titles: list[int]) -> int:
    """The first line after a section's rows: a blank line, the next title, or the end of the file."""
    end = min(titles) if titles else len(lines)
    for index in range(header + 1, end):
        if not lines[index].strip(" ,;\t\r\n"):
            return index
    return end


def _summary_start(cells: _Cells, end: int) -> tuple[int, str] | None:
    """The start time of the summary above `end`: `Key:,value` lines, or a row of titles over a row of values."""
    found: dict[str, tuple[int, str]] = {}
    from funnel.text import title_key

    for index in range(end):
        row = cells.raw(index)
        if len(row) == 2 and row[0].endswith(":"):
            found.setdefault(title_key(row[0].rstrip(":")), (index + 1, row[1]))
            continue
        below = cells.raw(index + 1) if index + 1 < end else []
        if len(row) >= 2 and all(row) and 0 < len(below) <= len(row):
            for key, value in zip(row, below, strict=False):
                found.setdefault(title_key(key.rstrip(":")), (index + 2, value))
    return next((found[title] for title in START_TITLES if title in found), None)


def sniff_delimiter(header_line: str) -> str:
    """`,`, `;` or tab: whichever the header line uses most outside quotes (`,` when none)."""
    bare = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: bare.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","
