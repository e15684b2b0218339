"""Reading signup files (csv, jsonl) into mapped rows, with line numbers.

Headers match case-insensitively and without stray whitespace; files may be
UTF-8 with or without a BOM. A file is fingerprinted (size + sha256): an
unchanged file is not parsed again, and a file that only grew (the usual
export that appends) is parsed from where the last read stopped.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email

from funnel.config import KNOWN_FIELDS, Source
from funnel.errors import SourceError
from funnel.timeutil import parse_instant, zone

TRUTHY = frozenset({"yes", "true", "1", "on", "y"})


@dataclass(frozen=True)
class Fingerprint:
    size: int
    sha256: str
    lines: int = 0


@dataclass(frozen=True)
class SignupRow:
    """One accepted row, normalised."""

    line: int
    email: str
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    webinar_start: datetime | None = None
    discreet: bool | None = None
    fields: dict[str, str] = field(default_factory=dict)


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


def normalize_email(value: str) -> str:
    """Validate and normalise an address; one contact per address whatever its case.

    Raises ValueError with a short reason. `.test` domains are allowed (the
    shipped examples use them; they can never be delivered by accident).
    """
    try:
        result = validate_email(value.strip(), check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    return result.normalized.lower()


def email_hash(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


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
    webinar_tz: ZoneInfo | None = None,
) -> FileRead:
    """Read a file source, skipping what `previous` already covered.

    `webinar_tz` is where a webinar start without an offset is read
    (`Config.start_zone`); None reads it in each registrant's own zone (evergreen).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path}: not found (source {name}): put the export there or fix `path:`") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror})") from None
    current = fingerprint(data)
    if previous is not None and previous.size == current.size and previous.sha256 == current.sha256:
        return FileRead(fingerprint=previous, unchanged=True)
    start, first_line = 0, 1
    if (
        previous is not None
        and previous.size < len(data)
        and data[previous.size - 1 : previous.size] == b"\n"
        and hashlib.sha256(data[: previous.size]).hexdigest() == previous.sha256
    ):
        start, first_line = previous.size, previous.lines + 1
    try:
        text = data.decode("utf-8-sig")
        head = data[:start].decode("utf-8-sig") if start else ""
    except UnicodeDecodeError as exc:
        # utf-8-sig counts positions after the BOM
        offset = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:offset].count(b"\n") + 1
        raise SourceError(f"{path}:{line}: the file is not UTF-8 text: export it again as CSV UTF-8") from None
    tail = text[len(head) :]
    result = FileRead()
    if source.format == "csv":  # a csv's header is known up front, even with no rows yet
        try:
            header = next(csv.reader(io.StringIO(text)), [])
        except csv.Error:
            header = []  # reported with its line by _csv_rows below
        if any(h.strip() for h in header):
            where = {k.strip().lower(): v for k, v in source.where.items()}
            _require_columns(name, source, path, {h.strip().lower(): h for h in header}, where)
    raw = _csv_rows(path, text, tail, first_line) if source.format == "csv" else _jsonl_rows(tail, first_line)
    _map_rows(name, source, path, raw, practice_tz, result, webinar_tz)
    result.fingerprint = Fingerprint(current.size, current.sha256, text.count("\n") + (0 if text.endswith("\n") else 1))
    return result


def _csv_rows(path: Path, whole: str, tail: str, first_line: int) -> Iterator[tuple[int, dict[str, str] | str]]:
    header_reader = csv.reader(io.StringIO(whole))
    try:
        header = [h.strip() for h in next(header_reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise SourceError(f"{path}:1: the header row cannot be read ({exc})") from None
    body = tail if first_line > 1 else whole
    reader = csv.reader(io.StringIO(body))
    if first_line == 1:
        next(reader, None)
    line_base = first_line - 1
    previous_end = 1 if first_line == 1 else 0
    while True:
        start = line_base + previous_end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            previous_end = reader.line_num
            yield start, f"this line cannot be read as CSV ({exc}): check its quotes"
            continue
        previous_end = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            yield start, f"{len(values)} values but the header has {len(header)} columns: quote values with commas"
            continue
        # a short row (trailing empty columns left out) still has every header
        yield start, {h: (values[i] if i < len(values) else "") for i, h in enumerate(header)}


def _jsonl_rows(tail: str, first_line: int) -> Iterator[tuple[int, dict[str, str] | str]]:
    # split on "\n" only: str.splitlines() also breaks on U+2028 etc., legal inside JSON strings
    for offset, line in enumerate(tail.split("\n")):
        number = first_line + offset
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg}): each line must be one JSON object"
            continue
        if not isinstance(value, dict):
            yield number, 'not a JSON object: each line must look like {"email": ...}'
            continue
        yield number, {str(k).strip(): _text(v) for k, v in value.items()}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --------------------------------------------------------------------------- mapping


def _map_rows(
    name: str,
    source: Source,
    path: Path,
    raw: Iterator[tuple[int, dict[str, str] | str]],
    practice_tz: ZoneInfo,
    result: FileRead,
    webinar_tz: ZoneInfo | None = None,
) -> None:
    # columns seen: a csv's header (every row has it); for jsonl, the keys of any object,
    # since one object may leave a key out while the others have it
    lookup: dict[str, str] = {}
    where = {k.strip().lower(): v.strip().lower() for k, v in source.where.items()}
    for line, row in raw:
        if isinstance(row, str):
            result.problems.append(RowProblem(line, row))
            continue
        if not lookup or source.format == "jsonl":
            lookup.update((k.strip().lower(), k) for k in row)
        lowered = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if any(lowered.get(column, "").lower() != wanted for column, wanted in where.items()):
            result.filtered += 1
            continue
        values = {fld: lowered.get(header.strip().lower(), "") for fld, header in source.columns.items()}
        try:
            result.rows.append(_to_signup(line, values, practice_tz, result, webinar_tz))
        except ValueError as exc:
            result.problems.append(RowProblem(line, str(exc)))
    if lookup:
        _require_columns(name, source, path, lookup, where)


def _require_columns(name: str, source: Source, path: Path, lookup: dict[str, str], where: dict[str, str]) -> None:
    header = source.columns["email"]
    if header.strip().lower() not in lookup:
        found = ", ".join(sorted(lookup.values())) or "none"
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
    line: int, values: dict[str, str], practice_tz: ZoneInfo, result: FileRead, webinar_tz: ZoneInfo | None = None
) -> SignupRow:
    address = values.get("email", "")
    if not address:
        raise ValueError("no email address: fill it in or delete the row")
    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise ValueError(f"{address!r} is not a valid email address ({exc})") from None
    tz_name = values.get("timezone") or None
    tz = practice_tz
    if tz_name:
        try:
            tz = zone(tz_name)
        except ValueError as exc:
            result.problems.append(RowProblem(line, f"{exc}; used the practice's timezone", warning=True))
            tz_name = None
    start = None
    if values.get("webinar_start"):
        # a live webinar is one moment: a start without an offset is read in the
        # webinar's zone; an evergreen one (webinar_tz None) in the registrant's own
        start = parse_instant(values["webinar_start"], webinar_tz or tz)
    discreet = None
    if "discreet" in values:
        discreet = values["discreet"].strip().lower() in TRUTHY
    extra = {k: v for k, v in values.items() if k not in KNOWN_FIELDS and v}
    return SignupRow(
        line=line,
        email=email,
        first_name=values.get("first_name") or None,
        last_name=values.get("last_name") or None,
        timezone=tz_name,
        webinar_start=start,
        discreet=discreet,
        fields=extra,
    )
