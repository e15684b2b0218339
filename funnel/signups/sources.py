"""Reading signup files (csv, jsonl) into mapped rows, with line numbers.

Exports come from webinar platforms, from Excel and from hand edits, so the reader
takes them as offices make them (encodings, line endings, delimiters, stray quotes,
a file still being written) and refuses the rest in one sentence. A file is
fingerprinted: an unchanged file is not parsed again, and one that only grew is
parsed from where the last read stopped. Values are cleaned on the way in. What is
accepted, one by one: docs/architecture.md.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from funnel.config import KNOWN_FIELDS, Source
from funnel.errors import SourceError
from funnel.signups.dates import read_instant, read_written
from funnel.signups.layout import Layout, locate, sniff_delimiter
from funnel.text import clean_line, clean_text, normalize_email, title_key
from funnel.timeutil import wall_doubt, zone

TRUTHY = frozenset({"yes", "true", "1", "on", "y"})
#: the only values that turn discretion off; a blank says nothing
FALSY = frozenset({"no", "false", "0", "off", "n"})
#: a file whose last line has no line ending is read in full once it has been still this long
SETTLE_SECONDS = 60.0
#: webinar starts outside these years are refused at import (they cannot be scheduled sanely)
EARLIEST_START = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_START = datetime(2100, 1, 1, tzinfo=UTC)

#: one line with its ending: \n, \r\n, or a lone \r (old Mac); the last may have none
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_ENDINGS = ("\n", "\r")
_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}


@dataclass(frozen=True)
class Fingerprint:
    size: int
    sha256: str
    lines: int = 0


@dataclass(slots=True)
class SignupRow:
    """One accepted row, normalised.

    Not frozen, though nothing changes a row once made: a frozen dataclass
    sets each field through `object.__setattr__`, which made building one
    take several times as long per row of an import (figures: docs/performance.md).
    """

    line: int
    email: str
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    webinar_start: datetime | None = None
    #: None when the row says nothing (blank or no column): a stored choice stays
    discreet: bool | None = None
    fields: dict[str, str] = field(default_factory=dict)
    #: the file the row came from (for `file:line` in what is kept about it)
    file: str = ""
    #: when she signed up (a form's Timestamp, Zoom's Registration Time): waits count from it
    signed_up_at: datetime | None = None
    #: her own link to join the webinar (Zoom gives each registrant one); https only
    join_url: str | None = None
    #: from a public registration nobody confirmed (Zoom's page): anyone may type her address
    #: there, so it never changes the names of someone already known (they name only new people)
    keeps_known_names: bool = False

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}" if self.file else str(self.line)


@dataclass(frozen=True)
class RowProblem:
    line: int
    message: str
    #: a warning keeps the row (e.g. an unknown timezone falls back to the practice's)
    warning: bool = False


@dataclass
class FileRead:
    rows: list[SignupRow] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    #: rows left out by `where:` (not errors)
    filtered: int = 0
    fingerprint: Fingerprint | None = None
    unchanged: bool = False
    #: lines at the end left for a later read (the file is still being written)
    deferred: int = 0
    #: with `stream=True`: the accepted rows, produced while they are read (`rows` stays
    #: empty); problems, `filtered`, `deferred` and the fingerprint are complete once it is used up
    stream: Iterator[SignupRow] | None = None

    def signups(self) -> Iterator[SignupRow]:
        """The accepted rows, streamed or from `rows`."""
        return self.stream if self.stream is not None else iter(self.rows)


def _shown(value: str, limit: int = 60) -> str:
    """A value quoted for a message, cut short and without control characters."""
    cleaned = clean_line(value)
    return repr(cleaned if len(cleaned) <= limit else cleaned[:limit] + "...")


# --------------------------------------------------------------------------- files


def fingerprint(data: bytes, lines: int = 0) -> Fingerprint:
    return Fingerprint(size=len(data), sha256=hashlib.sha256(data).hexdigest(), lines=lines)


def read_source_file(
    name: str,
    source: Source,
    path: Path,
    practice_tz: ZoneInfo,
    previous: Fingerprint | None,
    *,
    settle_seconds: float = SETTLE_SECONDS,
    stream: bool = False,
    webinar_tz: ZoneInfo | None = None,
    now: datetime | None = None,
) -> FileRead:
    """Read a file source, skipping what `previous` already covered.

    `webinar_tz` is where a webinar start without an offset is read
    (`Config.start_zone`); None reads it in each registrant's own zone (evergreen).
    `now` (the run's time) lets a `signed_up_at` after it be warned about (it is taken as now).

    `stream=True` (a run's import of a csv) hands the rows out one by one in
    `FileRead.stream` instead of holding them all in `rows`: a 100,000-row
    export is stored in batches while it is read. A bad header is still
    refused here, before any row is stored.
    """
    try:
        data = path.read_bytes()
        modified = path.stat().st_mtime
    except FileNotFoundError:
        raise SourceError(f"{path}: not found (source {name}): put the export there or fix `path:`") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror})") from None
    current = fingerprint(data)
    if previous is not None and previous.size == current.size and previous.sha256 == current.sha256:
        return FileRead(fingerprint=previous, unchanged=True)
    text, codec, bom, note = _decode(path, data)
    # still being written? (a modification time in the future counts as "just written")
    age = time.time() - modified
    settled = settle_seconds <= 0 or age >= settle_seconds
    # only the lines after what was read before are split and parsed: `base` lines come first
    layout = locate(name, source, path, text, _split_lines) if source.format == "csv" else Layout()
    if layout.lines is not None:
        # a report (summary lines, sections): small, and read whole each time
        offset, base, lines = 0, 0, layout.lines[: layout.stop]
    else:
        offset, base = _resume(data, text, codec, bom, previous)
        lines = _split_lines(text[offset:] if offset else text)
    result = FileRead()
    if note:
        result.problems.append(RowProblem(1, note, warning=True))
    result.problems.extend(RowProblem(line, message, warning=True) for line, message in layout.notes)
    summary = _summary(name, source, path, layout)
    if source.format == "csv":
        header_line = layout.lines[layout.header] if layout.lines is not None else _first_line(text)
        plan = _csv_header(name, source, path, header_line, settled, number=layout.header + 1)
        if plan is not None:
            result.problems.extend(_missing_columns(name, source, plan[1], layout.header + 1))
        start = 0 if base else layout.header + 1
        if stream and plan is not None and any(plan[1]):
            consumed_box: list[int] = []
            records = _csv_records(plan, lines, base, settled, consumed_box, start=start)
            result.stream = _streamed(
                _mapped(
                    source,
                    path,
                    records,
                    practice_tz,
                    result,
                    webinar_tz=webinar_tz,
                    header=plan[1],
                    summary=summary,
                    now=now,
                ),
                lambda: _finish_read(result, data, current, text, codec, bom, offset, lines, base, consumed_box[0]),
            )
            return result
        raw, consumed = _csv_rows(plan, lines, base, settled, start=start)
        header = plan[1] if plan is not None else None
    else:
        raw, consumed = _jsonl_rows(source, lines, base, settled)
        header = None
    _map_rows(
        name,
        source,
        path,
        iter(raw),
        practice_tz,
        result,
        webinar_tz=webinar_tz,
        header=header,
        summary=summary,
        now=now,
    )
    return _finish_read(result, data, current, text, codec, bom, offset, lines, base, consumed)


def _summary(name: str, source: Source, path: Path, layout: Layout) -> tuple[int, str] | None:
    """The start time the summary names, when the source takes its session from it (`session_from: summary`)."""
    if source.session_from != "summary":
        return None
    if layout.summary_start is None:
        raise SourceError(
            f"{path}: sources.{name} takes the webinar's start from the report's summary (session_from: summary), "
            "but no line above the header names a start time (Scheduled Time, Actual Start Time): "
            "export the full report, or map a start column instead"
        )
    return layout.summary_start


def _missing_columns(name: str, source: Source, header: list[str], line: int) -> list[RowProblem]:
    """A warning for each mapped column a csv's header lacks (once per file: its values stay empty).

    Only a csv has a header that says which columns exist: a JSON Lines export
    leaves a key out of an object that has no value for it (a form without a message).
    """
    present = {title_key(h) for h in header if h}
    found = ", ".join(h for h in header if h) or "none"
    return [
        RowProblem(
            line,
            f"no column {title!r} in this file for {fld} (source {name}; columns found: {found}): "
            f"its values are left empty; fix sources.{name}.columns.{fld} if the export calls it otherwise",
            warning=True,
        )
        for fld, title in source.columns.items()
        if fld != "email" and title_key(title) not in present
    ]


def _streamed(rows: Iterator[SignupRow], finish: Callable[[], object]) -> Iterator[SignupRow]:
    yield from rows
    finish()


def _finish_read(
    result: FileRead,
    data: bytes,
    current: Fingerprint,
    text: str,
    codec: str,
    bom: int,
    offset: int,
    lines: list[str],
    base: int,
    consumed: int,
) -> FileRead:
    """The fingerprint of what was read, and the note about a last line left for later."""
    result.deferred = len(lines) - consumed
    if not result.deferred:
        result.fingerprint = Fingerprint(current.size, current.sha256, base + consumed)
        return result
    result.problems.append(
        RowProblem(
            base + consumed + 1,
            "the file ends in the middle of a row (is it still being written?): "
            "this row is read once it is complete, or once the file has not changed for a minute",
            warning=True,
        )
    )
    read_chars = offset + sum(map(len, lines[:consumed]))
    size = bom + len(text[:read_chars].encode(codec)) if read_chars else 0
    result.fingerprint = fingerprint(data[:size], lines=base + consumed)
    return result


def _decode(path: Path, data: bytes) -> tuple[str, str, int, str | None]:
    """The file's text, the codec that maps it back to bytes, the BOM's length and a warning.

    Excel's plain "CSV" is Windows-1252: read, with a warning, when the file is
    not UTF-8. UTF-16 needs its byte-order mark (Excel's "Unicode text" has one).
    """
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec), codec, len(bom), None
            except UnicodeDecodeError as exc:
                line = _byte_line(data, len(bom) + exc.start)
                raise SourceError(
                    f"{path}:{line}: the file is not {codec.upper()} text although it starts like it: "
                    "export it again as CSV UTF-8"
                ) from None
    sample = data[:4096]
    if sample and sample.count(b"\x00") * 4 >= len(sample):  # ASCII as UTF-16: every other byte is 0
        raise SourceError(
            f"{path}:1: the file looks like UTF-16 text without a byte-order mark: export it again as CSV UTF-8"
        )
    try:
        return data.decode("utf-8"), "utf-8", 0, None
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        line = _byte_line(data, utf8_error.start)
        raise SourceError(
            f"{path}:{line}: the file is neither UTF-8 nor Windows-1252 text: export it again as CSV UTF-8"
        ) from None
    line = _byte_line(data, utf8_error.start)
    return (
        text,
        "cp1252",
        0,
        f"the file is not UTF-8 (first at line {line}): read as Windows-1252, Excel's plain CSV; "
        "if accented names look wrong, export it as CSV UTF-8",
    )


def _byte_line(data: bytes, offset: int) -> int:
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _split_lines(text: str) -> list[str]:
    """Physical lines with their endings; only \\n, \\r\\n and \\r end a line."""
    lone_cr = text.count("\r") - text.count("\r\n")
    if lone_cr and "\n" in text:
        return _LINE.findall(text)  # mixed endings: the slow, exact way
    ending = "\r" if lone_cr else "\n"  # \r\n lines end in \n too
    parts = text.split(ending)
    lines = [part + ending for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _resume(data: bytes, text: str, codec: str, bom: int, previous: Fingerprint | None) -> tuple[int, int]:
    """When the file only grew since `previous`: where the new text starts, and how many lines precede it.

    (0, 0) reads it all. The part read before must be unchanged and end with a
    whole line: a "\\r" that is now followed by "\\n" was half a line ending.
    """
    if previous is None or previous.lines <= 0 or not bom < previous.size < len(data):
        return 0, 0
    if hashlib.sha256(data[: previous.size]).hexdigest() != previous.sha256:
        return 0, 0
    try:
        head = data[bom : previous.size].decode(codec)
    except UnicodeDecodeError:
        return 0, 0
    if not head.endswith(_ENDINGS) or (head.endswith("\r") and text[len(head) : len(head) + 1] == "\n"):
        return 0, 0
    if head.count("\n") + head.count("\r") - head.count("\r\n") != previous.lines:
        return 0, 0
    return len(head), previous.lines


def _first_line(text: str) -> str:
    match = _LINE.match(text)
    return match.group(0) if match else ""


def _used_columns(source: Source) -> set[str]:
    return {title_key(h) for h in source.columns.values()} | {title_key(k) for k in source.where}


def _check_header(name: str, source: Source, path: Path, header: list[str], number: int = 1) -> None:
    """A column funnel reads may appear only once; the email column must be there."""
    used = _used_columns(source)
    seen: dict[str, int] = {}
    for position, title in enumerate(header, 1):
        key = title_key(title)
        if key not in used:
            continue
        if key in seen:
            raise SourceError(
                f"{path}:{number}: the column {title.strip()!r} appears twice (columns {seen[key]} and {position}, "
                f"{_letter(seen[key])} and {_letter(position)} in a spreadsheet): rename or delete one of them"
            )
        seen[key] = position
    if any(h.strip() for h in header):
        where = {title_key(k): v for k, v in source.where.items()}
        _require_columns(name, source, path, {title_key(h): h for h in header}, where)


def _letter(position: int) -> str:
    letters = ""
    while position:
        position, rest = divmod(position - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _csv_rows(
    plan: _CsvPlan | None, lines: list[str], skipped: int, settled: bool, *, start: int = 1
) -> tuple[list[tuple[int, _Record]], int]:
    """Rows of `lines` (the file's lines after the first `skipped`), and how many of them were fully read."""
    if plan is None:
        return [], 0
    consumed: list[int] = []
    out = list(_csv_records(plan, lines, skipped, settled, consumed, start=start))
    return out, consumed[0]


_CsvPlan = tuple[str, list[str], int | None]


def _csv_header(
    name: str, source: Source, path: Path, header_line: str, settled: bool, *, number: int = 1
) -> _CsvPlan | None:
    """The delimiter, the header and the email column's position; None while there is no complete header."""
    if not header_line:
        return None
    if not header_line.endswith(_ENDINGS) and not settled:
        return None  # even the header is still being written
    delimiter = sniff_delimiter(header_line)
    try:
        # invisible characters (a doubled BOM, a NUL) must not hide a column that looks right
        header = [clean_line(h) for h in next(csv.reader([header_line], delimiter=delimiter), [])]
    except csv.Error as exc:
        raise SourceError(f"{path}:{number}: the header row cannot be read ({exc})") from None
    _check_header(name, source, path, header, number)
    lowered = [title_key(h) for h in header]
    email_header = title_key(source.columns["email"])
    email_column = lowered.index(email_header) if email_header in lowered else None
    return delimiter, header, email_column


def _csv_records(
    plan: _CsvPlan, lines: list[str], skipped: int, settled: bool, consumed: list[int], *, start: int = 1
) -> Iterator[tuple[int, _Record]]:
    """The records of `lines` one by one; how many lines were fully read is put in `consumed` at the end.

    A record is its values in the header's order, one for every column (a
    short row is filled with blanks), or why it is refused.
    """
    delimiter, header, email_column = plan
    width = len(header)
    index = 0 if skipped else start  # `first`, `end`, `index`: positions in `lines` (after the header)
    total = len(lines)
    while index < total:
        reader = csv.reader(itertools.islice(lines, index, None), delimiter=delimiter)
        base = index
        while True:
            first = base + reader.line_num
            number = skipped + first + 1  # the line number people see
            try:
                values = next(reader)
            except StopIteration:
                index = total
                break
            except csv.Error as exc:
                yield number, f"this line cannot be read as CSV ({exc}): check its quotes"
                index = first + 1  # read on from the next line
                break
            end = base + reader.line_num
            # the everyday case, one complete line that is not the last, needs no closer look
            verdict = (
                None
                if end - first == 1 and end != total
                else _check_record(lines, first, end, skipped, values, delimiter, width, email_column, settled)
            )
            if verdict == "defer":
                consumed.append(first)
                return
            if verdict:
                yield number, verdict
                index = first + 1  # the lines it swallowed are read on their own
                break
            if not "".join(values).strip():  # nothing but blanks
                continue
            if len(values) == width:
                yield number, values
                continue
            if len(values) > width:
                yield (
                    number,
                    f"{len(values)} values but the header has {len(header)} columns: "
                    f"quote values that contain {_DELIMITER_NAMES[delimiter]}",
                )
                continue
            # a short row (trailing empty columns left out) still has every header
            yield number, values + [""] * (width - len(values))
    consumed.append(total)


def _check_record(
    lines: list[str],
    first: int,
    end: int,
    skipped: int,
    values: list[str],
    delimiter: str,
    width: int,
    email_column: int | None,
    settled: bool,
) -> str | None:
    """None for a sound record; "defer" to read it later; otherwise why it is rejected."""
    last = end == len(lines)
    if end - first == 1 and not last:
        return None  # the everyday case: one complete line
    swallowed = _swallows_rows(values, delimiter, width, email_column)
    open_quote = last and _quote_left_open("".join(lines[first:end]), delimiter)
    if swallowed:
        return (
            f'a quote (") opened on this line is not closed, so lines {skipped + first + 1}-{skipped + end} '
            "would be read as one value: close the quote or delete it (the lines after it were read on their own)"
        )
    if open_quote:
        if not settled:
            return "defer"
        return (
            f'a quote (") opened on this line is never closed before the end of the file (line {skipped + end}): '
            "close the quote or delete it (the lines after it were read on their own)"
        )
    if last and not lines[-1].endswith(_ENDINGS) and not settled:
        return "defer"
    return None


def _swallows_rows(values: list[str], delimiter: str, width: int, email_column: int | None) -> bool:
    """Does a value hold, after a line break, something that looks like a whole row with an address?"""
    if email_column is None:
        return False
    for value in values:
        if "\n" not in value and "\r" not in value:
            continue
        for piece in _split_lines(value)[1:]:
            try:
                row = next(csv.reader([piece], delimiter=delimiter), [])
            except csv.Error:
                continue
            if (width == 1 or len(row) >= 2) and email_column < len(row):
                candidate = row[email_column].strip()
                if "@" in candidate and " " not in candidate:
                    return True
    return False


def _quote_left_open(raw: str, delimiter: str) -> bool:
    """Does the text end inside a quoted value (the csv module would quietly take it all)?"""
    try:
        for _ in csv.reader(_split_lines(raw), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _jsonl_rows(source: Source, lines: list[str], skipped: int, settled: bool) -> tuple[list[tuple[int, _Record]], int]:
    # only \n, \r\n and \r end a line: U+2028 and friends are legal inside JSON strings
    used = _used_columns(source)
    out: list[tuple[int, _Record]] = []
    for index, raw in enumerate(lines):
        number = skipped + index + 1
        if index == len(lines) - 1 and not raw.endswith(_ENDINGS) and not settled:
            return out, index
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_Pairs)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            out.append((number, f"not valid JSON ({reason}): each line must be one JSON object"))
            continue
        if not isinstance(value, _Pairs):
            out.append((number, 'not a JSON object: each line must look like {"email": ...}'))
            continue
        row: dict[str, str] = {}
        seen: dict[str, str] = {}
        problem = None
        for key, item in value:
            title = clean_line(str(key))
            lowered = title_key(title)
            if lowered in used and lowered in seen:
                problem = f"the keys {seen[lowered]!r} and {str(key)!r} both fill the same column: keep one of them"
                break
            seen[lowered] = str(key)
            row[title] = _text(item)
        out.append((number, problem or row))
    return out, len(lines)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, so that a key given twice is seen."""


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {str(k): _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, _Pairs | list):  # a nested object or list: kept as JSON text
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(value)


# --------------------------------------------------------------------------- mapping


def read_mapping(
    name: str, source: Source, data: Mapping[str, Any], practice_tz: ZoneInfo, *, origin: str = "form"
) -> FileRead:
    """One row that did not come from a file (a form post), read by the same rules as a file's rows.

    The row is line 1 of `origin`; `apply_rows` stores what comes back.
    """
    result = FileRead()
    row = {str(k).strip(): _text(v) for k, v in data.items()}
    _map_rows(name, source, Path(origin), iter([(1, row)]), practice_tz, result, check_columns=False)
    return result


def _map_rows(
    name: str,
    source: Source,
    path: Path,
    raw: Iterator[tuple[int, _Record]],
    practice_tz: ZoneInfo,
    result: FileRead,
    *,
    check_columns: bool = True,
    webinar_tz: ZoneInfo | None = None,
    header: list[str] | None = None,
    summary: tuple[int, str] | None = None,
    now: datetime | None = None,
) -> None:
    lookup: dict[str, str] = {}
    result.rows.extend(
        _mapped(
            source,
            path,
            raw,
            practice_tz,
            result,
            lookup,
            webinar_tz=webinar_tz,
            header=header,
            summary=summary,
            now=now,
        )
    )
    where = {title_key(k): v.strip().lower() for k, v in source.where.items()}
    if lookup and check_columns:
        _require_columns(name, source, path, lookup, where)


def _mapped(
    source: Source,
    path: Path,
    raw: Iterator[tuple[int, _Record]],
    practice_tz: ZoneInfo,
    result: FileRead,
    lookup: dict[str, str] | None = None,
    *,
    webinar_tz: ZoneInfo | None = None,
    header: list[str] | None = None,
    summary: tuple[int, str] | None = None,
    now: datetime | None = None,
) -> Iterator[SignupRow]:
    """Accepted rows one by one; problems and filtered rows are counted in `result` on the way.

    `summary` (line, text): the start the report's summary names (`session_from: summary`),
    taken by each row that names none of its own; a row whose own start differs is warned
    about once per file.

    A row is an object by title (jsonl, a form), or with `header` a CSV
    record: its values in the header's order, looked up by position (no
    dictionary made per row; the same columns are read, the last of two
    same-named titles winning as before).
    """
    # columns seen: a csv's header (every row has it); for jsonl, the keys of any object,
    # since one object may leave a key out while the others have it
    if lookup is None:
        lookup = {}
    where = {title_key(k): v.strip().lower() for k, v in source.where.items()}
    wanted_columns = [(fld, title_key(header)) for fld, header in source.columns.items()]
    memo = _Memo(practice_tz, webinar_tz, source)
    memo.now = now
    contradiction_told = False
    file = path.name
    titles: tuple[str, ...] = ()
    plan: _Plan = ([], [])
    if header is not None:
        plan = _by_position(_plan(tuple(header), wanted_columns, where), header)
    for line, row in raw:
        if isinstance(row, str):
            result.problems.append(RowProblem(line, row))
            continue
        if header is not None:
            if not lookup:
                lookup.update((title_key(k), k) for k in header)
        else:
            if not lookup or source.format == "jsonl":
                lookup.update((title_key(k), k) for k in row)
            keys = tuple(row)
            if keys != titles:  # rows with the same titles (most of them): matched once
                titles, plan = keys, _plan(keys, wanted_columns, where)
        columns, conditions = plan
        if conditions and any((_cell(row, title)).lower() != wanted for title, wanted in conditions):
            result.filtered += 1
            continue
        values = {fld: (row[title] or "").strip() if title is not None else "" for fld, title in columns}
        if summary is not None:
            own = values.get("webinar_start")
            if not own:
                values["webinar_start"] = summary[1]
            elif not contradiction_told and _contradicts(memo, own, summary[1]):
                contradiction_told = True
                result.problems.append(
                    RowProblem(
                        line,
                        f"the start {_shown(own)} differs from the one the report's summary names at line "
                        f"{summary[0]} ({_shown(summary[1])}): the row's own start is used; check which is right",
                        warning=True,
                    )
                )
        try:
            signup = _to_signup(line, values, practice_tz, result, file=file, webinar_tz=webinar_tz, memo=memo)
        except ValueError as exc:
            result.problems.append(RowProblem(line, str(exc)))
            continue
        yield signup


#: for each of funnel's fields, the row's title that fills it (None: no such column); then
#: for each `where:` condition, the title and the value it must have
#: (a title is a key of the row, or with a CSV header a column's position)
_Plan = tuple[list[tuple[str, Any]], list[tuple[Any, str]]]
#: one row to map: an object by title, or a CSV record (values in the header's order); or why it was refused
_Record = dict[str, str] | list[str] | str


def _contradicts(memo: _Memo, own: str, summary: str) -> bool:
    """Do a row's start and the summary's name two different moments? (Unreadable ones are refused elsewhere.)"""
    if own == summary:
        return False
    tz = memo.webinar_tz or memo.practice_tz
    try:
        return memo.start(own, tz)[0] != memo.start(summary, tz)[0]
    except ValueError:
        return False


def _plan(titles: tuple[str, ...], wanted_columns: list[tuple[str, str]], where: dict[str, str]) -> _Plan:
    """Which title fills which field, matched as headers match (case and stray spaces aside; the last one wins).

    Worked out once per set of titles rather than lowering every title of every row.
    """
    by_key: dict[str, str] = {}
    for title in titles:
        if title is not None:
            by_key[title_key(title)] = title
    columns = [(fld, by_key.get(header)) for fld, header in wanted_columns]
    conditions = [(by_key.get(column), wanted) for column, wanted in where.items()]
    return columns, conditions


def _by_position(plan: _Plan, header: list[str]) -> _Plan:
    """`plan` with each title replaced by its column's position (the last column of that title)."""
    last = {title: position for position, title in enumerate(header)}
    columns, conditions = plan
    return (
        [(fld, None if title is None else last[title]) for fld, title in columns],
        [(None if title is None else last[title], wanted) for title, wanted in conditions],
    )


def _cell(row: Any, title: Any) -> str:
    """A row's value under `title`, stripped ("" when there is no such column)."""
    if title is None:
        return ""
    return (row[title] or "").strip()


def _require_columns(name: str, source: Source, path: Path, lookup: dict[str, str], where: dict[str, str]) -> None:
    header = source.columns["email"]
    if title_key(header) not in lookup:
        found = ", ".join(sorted(clean_line(v) for v in lookup.values())) or "none"
        raise SourceError(
            f"{path.name}: no column {header!r} for the email address (columns found: {found}): "
            f"fix sources.{name}.columns.email in sequences.yaml"
        )
    for column in where:
        if column not in lookup:
            raise SourceError(
                f"{path.name}: no column {column!r} for `where:` (source {name}): fix sources.{name}.where"
            )


def _to_signup(
    line: int,
    values: dict[str, str],
    practice_tz: ZoneInfo,
    result: FileRead,
    *,
    file: str = "",
    webinar_tz: ZoneInfo | None = None,
    memo: _Memo | None = None,
) -> SignupRow:
    address = values.get("email", "")
    if not address:
        raise ValueError("no email address: fill it in or delete the row")
    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise ValueError(
            f"{_shown(address)} is not a valid email address ({exc}): correct it, or delete the row "
            "(no mail provider can deliver to it)"
        ) from None
    memo = memo or _Memo(practice_tz, webinar_tz)
    tz_name, tz, zone_problem = memo.zone(values.get("timezone"))
    if zone_problem:
        result.problems.append(RowProblem(line, zone_problem, warning=True))
    start, doubt = memo.start(values["webinar_start"], tz) if values.get("webinar_start") else (None, None)
    if doubt:
        result.problems.append(RowProblem(line, doubt, warning=True))
    discreet = _discreet(line, values.get("discreet"), result)
    signed_up_at = memo.signed_up(line, values["signed_up_at"], result) if values.get("signed_up_at") else None
    join_url = _join_url(line, values["join_url"], result) if values.get("join_url") else None
    extra = {}
    for key in memo.extra if memo.extra is not None else [k for k in values if k not in KNOWN_FIELDS]:
        text = clean_text(values.get(key))
        if text:
            extra[key] = text
    return SignupRow(
        line=line,
        email=email,
        first_name=clean_line(values.get("first_name")) or None,
        last_name=clean_line(values.get("last_name")) or None,
        timezone=tz_name,
        webinar_start=start,
        discreet=discreet,
        fields=extra,
        file=file,
        signed_up_at=signed_up_at,
        join_url=join_url,
    )


#: the longest join link kept (Zoom's are about 120 characters)
MAX_JOIN_URL = 2000


def _join_url(line: int, value: str, result: FileRead) -> str | None:
    """Her own join link, kept only when it is a plain https address (it goes into her letters)."""
    text = value.strip()
    parsed = urlsplit(text) if len(text) <= MAX_JOIN_URL and text.isprintable() and " " not in text else None
    if parsed is None or parsed.scheme.lower() != "https" or not parsed.hostname:
        result.problems.append(
            RowProblem(
                line,
                f"join link {_shown(value)} is not an https address: left out (her letters use the webinar's own "
                "join_url); correct it in the export",
                warning=True,
            )
        )
        return None
    return text


class _Memo:
    """What repeats from row to row of one read, worked out once: zones, webinar starts, extra fields.

    An export of 100,000 registrations for one webinar holds a handful of zone
    names and start times; looking them up and parsing them again for every
    row was a good part of a row's cost. Results (and refusals) are the same
    as working them out each time.
    """

    #: distinct values remembered per kind; a file with more (hostile, or odd) starts over
    LIMIT = 4096

    def __init__(self, practice_tz: ZoneInfo, webinar_tz: ZoneInfo | None, source: Source | None = None) -> None:
        self.practice_tz = practice_tz
        self.webinar_tz = webinar_tz
        #: the names of a source's own extra fields (None: whatever a row brings)
        self.extra = [f for f in source.columns if f not in KNOWN_FIELDS] if source is not None else None
        self._zones: dict[str | None, tuple[str | None, ZoneInfo, str | None]] = {}
        self._starts: dict[tuple[str, ZoneInfo], tuple[datetime, str | None] | str] = {}
        #: how a date with slashes or dots is read (`date_order` on the source)
        self.date_order = source.date_order if source is not None else "mdy"
        #: the run's time, when known: a signup after it is warned about
        self.now: datetime | None = None

    def signed_up(self, line: int, text: str, result: FileRead) -> datetime | None:
        """When she signed up, as UTC (read in the webinar's zone, else the practice's); None when unreadable.

        An unreadable or impossible moment is a warning and the row is kept:
        she is then taken as signing up now, as before the column existed.
        A moment after the run's time is brought back to it where it is stored.
        """
        tz = self.webinar_tz or self.practice_tz
        try:
            moment = read_instant(text, tz, self.date_order)
        except (ValueError, OverflowError) as exc:
            result.problems.append(RowProblem(line, f"signed up at: {exc}; counted from now instead", warning=True))
            return None
        if not EARLIEST_START <= moment < LATEST_START:
            result.problems.append(
                RowProblem(
                    line,
                    f"signed up at {_shown(text)} is not a date funnel can use (it must lie between 1970 and 2099): "
                    "counted from now instead; correct the date in the export",
                    warning=True,
                )
            )
            return None
        if self.now is not None and moment > self.now:
            result.problems.append(
                RowProblem(
                    line,
                    f"signed up at {_shown(text)} is after this run's time: counted from now; "
                    "check the clock or time zone of whatever made the export",
                    warning=True,
                )
            )
        return moment

    def zone(self, value: str | None) -> tuple[str | None, ZoneInfo, str | None]:
        """The zone name kept (None: the practice's), the zone to read times in, and a warning."""
        known = self._zones.get(value)
        if known is None:
            if len(self._zones) >= self.LIMIT:
                self._zones.clear()
            known = self._zones[value] = self._zone(value)
        return known

    def _zone(self, value: str | None) -> tuple[str | None, ZoneInfo, str | None]:
        name = clean_line(value) or None
        if not name:
            return None, self.practice_tz, None
        try:
            return name, zone(name), None
        except ValueError as exc:
            return None, self.practice_tz, f"{exc}; used the practice's timezone"

    def start(self, text: str, tz: ZoneInfo) -> tuple[datetime, str | None]:
        """A webinar start as UTC, with a warning when its wall time is doubtful; ValueError saying why not."""
        key = (text, tz)
        known = self._starts.get(key)
        if known is None:
            if len(self._starts) >= self.LIMIT:
                self._starts.clear()
            try:
                known = self._start(text, tz)
            except ValueError as exc:
                known = str(exc)
            self._starts[key] = known
        if isinstance(known, str):
            raise ValueError(known)
        return known

    def _start(self, text: str, tz: ZoneInfo) -> tuple[datetime, str | None]:
        # a live webinar is one moment: a start without an offset is read in the
        # webinar's zone; an evergreen one (webinar_tz None) in the registrant's own
        read_in = self.webinar_tz or tz
        try:
            written = read_written(text, self.date_order)
        except ValueError as exc:
            raise ValueError(f"webinar start {exc}") from None
        try:
            start: datetime | None = (
                written.replace(tzinfo=read_in) if written.tzinfo is None else written
            ).astimezone(UTC)
        except OverflowError:
            start = None  # beyond what a date can hold: refused just below
        doubt = wall_doubt(written, read_in)
        return _schedulable(text, start), f"webinar start {doubt}" if doubt else None


def signup_from_values(
    values: dict[str, str], practice_tz: ZoneInfo, *, webinar_tz: ZoneInfo | None = None
) -> tuple[SignupRow, list[RowProblem]]:
    """One record already mapped to funnel's fields (a form post), read exactly like a file row.

    `webinar_tz` is `Config.start_zone(source)`, as for a file: a live webinar is one moment.

    Raises ValueError saying what is wrong (the address, a date); warnings
    (an unknown timezone) come back as problems and keep the row.
    """
    result = FileRead()
    row = _to_signup(0, values, practice_tz, result, webinar_tz=webinar_tz)
    return row, result.problems


def _schedulable(text: str, start: datetime | None) -> datetime:
    """A webinar start funnel can compute reminders around: 1970 up to the end of 2099."""
    if start is None or not EARLIEST_START <= start < LATEST_START:
        raise ValueError(
            f"webinar start {_shown(text)} is not a date funnel can schedule (it must lie between 1970 and 2099): "
            "correct the date in the export, e.g. 2026-12-08 19:00"
        )
    return start


def _discreet(line: int, value: str | None, result: FileRead) -> bool | None:
    """Yes, no, or nothing said (blank); anything else but an explicit no asks for discretion."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    if text in FALSY:
        return False
    if text not in TRUTHY:
        result.problems.append(
            RowProblem(line, f"discreet {_shown(value)} is neither yes nor no: treated as yes", warning=True)
        )
    return True
