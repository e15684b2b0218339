"""Shared helpers of the signup file tests: a registrations mapping, files written into a temp folder, reads."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from funnel.config import Source
from funnel.signups.sources import FileRead, Fingerprint, read_source_file

DENVER = ZoneInfo("America/Denver")

#: the header of the small two-column files
HEADER = "Email,First Name\n"

REG_COLUMNS = {
    "email": "Email",
    "first_name": "First Name",
    "last_name": "Last Name",
    "webinar_start": "Webinar Start",
    "timezone": "Time Zone",
    "discreet": "Discreet",
}


def csv_source(**kwargs: object) -> Source:
    data: dict[str, object] = {"format": "csv", "path": "signups/file.csv", "columns": REG_COLUMNS}
    data.update(kwargs)
    return Source.model_validate(data)


def jsonl_source(**kwargs: object) -> Source:
    data: dict[str, object] = {
        "format": "jsonl",
        "path": "signups/file.jsonl",
        "columns": {
            "email": "email",
            "first_name": "name",
            "message": "message",
            "discreet": "discreet",
        },
    }
    data.update(kwargs)
    return Source.model_validate(data)


def write(tmp_path: Path, text: str | bytes, name: str = "file.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_bytes(text.encode("utf-8"))
    else:
        path.write_bytes(text)
    return path


def read(
    path: Path,
    source: Source | None = None,
    previous: Fingerprint | None = None,
    tz: ZoneInfo = DENVER,
) -> FileRead:
    return read_source_file("test-source", source or csv_source(), path, tz, previous)


def emails(result: FileRead) -> list[str]:
    return [row.email for row in result.rows]


def lines(result: FileRead) -> list[int]:
    return [row.line for row in result.rows]


def errors(result: FileRead) -> dict[int, str]:
    return {p.line: p.message for p in result.problems if not p.warning}
