"""Reading signup files: headers, quoting, encodings, row problems with lines, incremental reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from funnel.config import Source
from funnel.errors import SourceError
from funnel.sources import FileRead, Fingerprint, normalize_email, read_source_file

DENVER = ZoneInfo("America/Denver")

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


# --------------------------------------------------------------------------- normalize_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.TEST", "ann@example.test"),
        ("  bob@example.test  ", "bob@example.test"),
        ("\tCarla.Mendes@EXAMPLE.test\n", "carla.mendes@example.test"),
        ("dana+news@example.test", "dana+news@example.test"),
    ],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_normalize_email_same_contact_whatever_the_case() -> None:
    assert normalize_email("ANA.REYES@Example.Test") == normalize_email("ana.reyes@example.test")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not-an-email",
        "a@",
        "@example.test",
        "a b@example.test",
        "a@@example.test",
        "a@example",
    ],
)
def test_normalize_email_rejects_invalid_addresses(raw: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_email(raw)
    assert str(info.value)


# --------------------------------------------------------------------------- csv basics


def test_headers_match_case_insensitively_with_stray_whitespace(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        " EMAIL ,first name,  last NAME,webinar start ,TIME ZONE,discreet\n"
        "ann@example.test,Ann,Ames,2027-01-14 19:00,America/Denver,no\n",
    )
    result = read(path)
    assert result.problems == []
    row = result.rows[0]
    assert (row.email, row.first_name, row.last_name) == ("ann@example.test", "Ann", "Ames")
    assert row.timezone == "America/Denver"
    assert row.discreet is False
    assert row.line == 2


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfEmail,First Name\r\nann@example.test,Ann\r\n")
    result = read(path)
    assert result.problems == []
    assert emails(result) == ["ann@example.test"]
    assert result.rows[0].first_name == "Ann"


def test_quoted_fields_with_commas_and_newlines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name,Last Name\n"
        'ann@example.test,Ann,"Ames, RN"\n'
        'bob@example.test,"Bob ""Bobby""","Line one\nline two\nline three"\n'
        "not-an-email,Cy,Cole\n"
        "dee@example.test,Dee,Dunn\n",
    )
    result = read(path)
    assert emails(result) == ["ann@example.test", "bob@example.test", "dee@example.test"]
    assert lines(result) == [2, 3, 7]
    assert result.rows[0].last_name == "Ames, RN"
    assert result.rows[1].first_name == 'Bob "Bobby"'
    assert result.rows[1].last_name == "Line one\nline two\nline three"
    assert list(errors(result)) == [6]


def test_crlf_line_endings_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "Email\r\nann@example.test\r\n\r\n,\r\nbob@example.test\r\n")
    result = read(path, csv_source(columns={"email": "Email"}))
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert lines(result) == [2, 5]


def test_stray_whitespace_in_values_is_trimmed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name,Last Name,Time Zone,Discreet\n"
        "  Ann@Example.test  ,  Ann  , Ames ,  America/New_York , YES \n",
    )
    result = read(path)
    assert result.problems == []
    row = result.rows[0]
    assert (row.email, row.first_name, row.last_name) == ("ann@example.test", "Ann", "Ames")
    assert row.timezone == "America/New_York"
    assert row.discreet is True


def test_empty_values_become_none(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\nann@example.test,,,,,\n",
    )
    row = read(path).rows[0]
    assert row.first_name is None and row.last_name is None
    assert row.timezone is None and row.webinar_start is None
    assert row.discreet is False
    assert row.fields == {}


def test_unmapped_discreet_column_stays_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "Email\nann@example.test\n")
    row = read(path, csv_source(columns={"email": "Email"})).rows[0]
    assert row.discreet is None


# --------------------------------------------------------------------------- where


def test_where_filters_rows_case_insensitively(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Attended\n"
        "ann@example.test,Yes\n"
        "bob@example.test,no\n"
        "cat@example.test, YES \n"
        "dee@example.test,\n"
        "eve@example.test,yes\n",
    )
    source = csv_source(columns={"email": "Email"}, where={"attended": "Yes"})
    result = read(path, source)
    assert emails(result) == ["ann@example.test", "cat@example.test", "eve@example.test"]
    assert lines(result) == [2, 4, 6]
    assert result.filtered == 2
    assert result.problems == []


def test_where_yaml_boolean_is_read_as_yes(tmp_path: Path) -> None:
    path = write(tmp_path, "Email,Attended\nann@example.test,yes\nbob@example.test,no\n")
    source = csv_source(columns={"email": "Email"}, where={"Attended": True})
    assert emails(read(path, source)) == ["ann@example.test"]


def test_where_filtered_rows_are_not_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "Email,Attended\nnot-an-email,No\nann@example.test,Yes\n")
    result = read(path, csv_source(columns={"email": "Email"}, where={"Attended": "Yes"}))
    assert emails(result) == ["ann@example.test"]
    assert result.problems == []


def test_where_on_a_missing_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "Email\nann@example.test\n")
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email"}, where={"Attended": "Yes"}))
    assert "attended" in str(info.value).lower()
    assert "file.csv" in str(info.value)


def test_short_first_row_does_not_hide_columns(tmp_path: Path) -> None:
    # an export that leaves trailing empty columns out of a row
    path = write(tmp_path, "First Name,Email,Attended\nAnn\nBob,bob@example.test,Yes\n")
    source = csv_source(columns={"email": "Email", "first_name": "First Name"}, where={"Attended": "Yes"})
    result = read(path, source)
    assert emails(result) == ["bob@example.test"]
    assert lines(result) == [3]
    assert result.filtered == 1


# --------------------------------------------------------------------------- row problems


def test_bad_email_row_is_reported_with_its_line_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name\nann@example.test,Ann\nann(at)example.test,Bad\n,Nobody\nbob@example.test,Bob\n",
    )
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert lines(result) == [2, 5]
    problems = errors(result)
    assert set(problems) == {3, 4}
    assert "'ann(at)example.test' is not a valid email address" in problems[3]
    assert "no email address" in problems[4]


def test_row_with_too_many_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name\nann@example.test,Ann\nbob@example.test,Bob,Smith, Jr\ncat@example.test,Cat\n",
    )
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["ann@example.test", "cat@example.test"]
    problems = errors(result)
    assert list(problems) == [3]
    assert "4 values but the header has 2 columns" in problems[3]
    assert "quote" in problems[3]


def test_bad_webinar_start_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Webinar Start\nann@example.test,next thursday\nbob@example.test,2027-01-14 19:00\n",
    )
    result = read(path, csv_source(columns={"email": "Email", "webinar_start": "Webinar Start"}))
    assert emails(result) == ["bob@example.test"]
    problems = errors(result)
    assert list(problems) == [2]
    assert "'next thursday' is not a date and time" in problems[2]
    assert "2026-12-08 19:00" in problems[2]  # what to write instead


def test_unknown_timezone_is_a_warning_and_falls_back(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Webinar Start,Time Zone\nann@example.test,2027-01-14 19:00,Mountain Standard\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read(path, source)
    assert emails(result) == ["ann@example.test"]
    row = result.rows[0]
    assert row.timezone is None  # the practice's timezone applies
    assert row.webinar_start == datetime(2027, 1, 15, 2, 0, tzinfo=UTC)  # 19:00 in Denver (MST)
    assert len(result.problems) == 1
    warning = result.problems[0]
    assert warning.warning and warning.line == 2
    assert "'Mountain Standard' is not a known timezone" in warning.message
    assert "practice" in warning.message


def test_local_start_is_read_in_the_contacts_timezone(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Webinar Start,Time Zone\n"
        "ny@example.test,2027-01-14 19:00,America/New_York\n"
        "la@example.test,2027-01-14 19:00,America/Los_Angeles\n"
        "none@example.test,2027-01-14 19:00,\n"
        "iso@example.test,2027-01-14T19:00:00-05:00,America/Los_Angeles\n"
        "zulu@example.test,2027-01-15T00:00:00Z,\n"
        "summer@example.test,2027-07-14 19:00,\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read(path, source)
    assert result.problems == []
    starts = {row.email.split("@")[0]: row.webinar_start for row in result.rows}
    assert starts["ny"] == datetime(2027, 1, 15, 0, 0, tzinfo=UTC)
    assert starts["la"] == datetime(2027, 1, 15, 3, 0, tzinfo=UTC)
    assert starts["none"] == datetime(2027, 1, 15, 2, 0, tzinfo=UTC)  # practice: Denver, MST
    assert starts["iso"] == datetime(2027, 1, 15, 0, 0, tzinfo=UTC)  # the offset wins over the zone
    assert starts["zulu"] == datetime(2027, 1, 15, 0, 0, tzinfo=UTC)
    assert starts["summer"] == datetime(2027, 7, 15, 1, 0, tzinfo=UTC)  # MDT
    assert all(s is not None and s.utcoffset() is not None for s in starts.values())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True),
        ("Yes", True),
        ("TRUE", True),
        ("true", True),
        ("1", True),
        ("on", True),
        (" On ", True),
        ("no", False),
        ("false", False),
        ("0", False),
        ("off", False),
        ("", False),
    ],
)
def test_discreet_truthy_values(tmp_path: Path, value: str, expected: bool) -> None:
    path = write(tmp_path, f"Email,Discreet\nann@example.test,{value}\n")
    result = read(path, csv_source(columns={"email": "Email", "discreet": "Discreet"}))
    assert result.rows[0].discreet is expected


def test_extra_mapped_columns_go_to_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,City,How Did You Hear,Ignored\nann@example.test, Boulder ,A friend,x\nbob@example.test,,Podcast,y\n",
    )
    source = csv_source(columns={"email": "Email", "city": "City", "referral": "How did you hear"})
    result = read(path, source)
    assert result.rows[0].fields == {"city": "Boulder", "referral": "A friend"}
    assert result.rows[1].fields == {"referral": "Podcast"}  # empty values are left out


def test_missing_email_column_raises_naming_column_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "E-mail address,First Name\nann@example.test,Ann\n", name="regs.csv")
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    message = str(info.value)
    assert "regs.csv" in message
    assert "'Email'" in message
    assert "E-mail address" in message  # the columns it did find
    assert "sources.test-source.columns.email" in message


def test_non_utf8_file_raises_with_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name\nann@example.test,Ann\nbob@example.test,Jos\xe9\n".encode("latin-1"),
    )
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert f"{path}:3:" in str(info.value)
    assert "UTF-8" in str(info.value)


def test_non_utf8_file_with_bom_raises_with_the_right_line(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfEmail,First Name\nann@example.test,Ann\nbob@example.test,Jos\xe9\n"
    path = write(tmp_path, data)
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert f"{path}:3:" in str(info.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read(tmp_path / "nope.csv")
    assert "nope.csv" in str(info.value)
    assert "not found" in str(info.value)


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    result = read(write(tmp_path, ""))
    assert result.rows == [] and result.problems == []


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    result = read(write(tmp_path, "Email,First Name\n"))
    assert result.rows == [] and result.problems == []


# --------------------------------------------------------------------------- jsonl


def test_jsonl_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"email": " Ann@Example.test ", "name": "Ann", "message": "Hello, there",'
        ' "discreet": true}\n'
        "\n"
        '{"Email": "bob@example.test", "NAME": "Bob", "discreet": "no", "extra": 1}\n',
        name="file.jsonl",
    )
    result = read(path, jsonl_source())
    assert result.problems == []
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert lines(result) == [1, 3]
    ann, bob = result.rows
    assert ann.first_name == "Ann" and ann.discreet is True
    assert ann.fields == {"message": "Hello, there"}
    assert bob.first_name == "Bob" and bob.discreet is False


def test_jsonl_bad_json_line_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"email": "ann@example.test"}\n'
        '{"email": "bob@example.test",}\n'
        "{'email': 'cat@example.test'}\n"
        '{"email": "dee@example.test"}\n',
        name="file.jsonl",
    )
    result = read(path, jsonl_source())
    assert emails(result) == ["ann@example.test", "dee@example.test"]
    assert lines(result) == [1, 4]
    problems = errors(result)
    assert set(problems) == {2, 3}
    assert all("not valid JSON" in m for m in problems.values())


def test_jsonl_non_object_line_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '["ann@example.test"]\n"bob@example.test"\n42\n{"email": "cat@example.test"}\n',
        name="file.jsonl",
    )
    result = read(path, jsonl_source())
    assert emails(result) == ["cat@example.test"]
    assert lines(result) == [4]
    problems = errors(result)
    assert set(problems) == {1, 2, 3}
    assert all("not a JSON object" in m for m in problems.values())


def test_jsonl_object_without_the_email_key_is_a_row_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"name": "No Address"}\n{"email": "ann@example.test", "name": "Ann"}\n',
        name="file.jsonl",
    )
    result = read(path, jsonl_source())
    assert emails(result) == ["ann@example.test"]
    assert lines(result) == [2]
    assert list(errors(result)) == [1]


def test_jsonl_without_any_email_key_raises(tmp_path: Path) -> None:
    path = write(tmp_path, '{"mail": "ann@example.test"}\n{"mail": "bob@example.test"}\n', name="file.jsonl")
    with pytest.raises(SourceError) as info:
        read(path, jsonl_source())
    assert "file.jsonl" in str(info.value) and "'email'" in str(info.value)


def test_jsonl_line_separator_inside_a_string_does_not_split_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"email": "ann@example.test", "message": "one\u2028two\u0085three"}\n{broken\n{"email": "bob@example.test"}\n',
        name="file.jsonl",
    )
    result = read(path, jsonl_source())
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert lines(result) == [1, 3]
    assert result.rows[0].fields == {"message": "one\u2028two\u0085three"}
    assert list(errors(result)) == [2]


# --------------------------------------------------------------------------- fingerprints


HEADER = "Email,First Name\n"


def test_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "ann@example.test,Ann\nbob@example.test,Bob\n")
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    first = read(path, source)
    assert first.fingerprint is not None and not first.unchanged
    assert first.fingerprint.lines == 3
    again = read(path, source, previous=first.fingerprint)
    assert again.unchanged
    assert again.rows == [] and again.problems == []
    assert again.fingerprint == first.fingerprint


def test_grown_file_is_parsed_from_where_it_stopped(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + 'ann@example.test,"Ann\nAmes"\nbob@example.test,Bob\n')
    first = read(path, source)
    assert emails(first) == ["ann@example.test", "bob@example.test"]
    assert first.fingerprint is not None and first.fingerprint.lines == 4
    with path.open("a", encoding="utf-8") as handle:
        handle.write('cat@example.test,Cat\nbad-address,Bad\ndee@example.test,"Dee,\nDunn"\neve@example.test,Eve\n')
    second = read(path, source, previous=first.fingerprint)
    assert not second.unchanged
    assert emails(second) == ["cat@example.test", "dee@example.test", "eve@example.test"]
    assert lines(second) == [5, 7, 9]
    assert list(errors(second)) == [6]
    assert second.rows[1].first_name == "Dee,\nDunn"
    assert second.fingerprint is not None and second.fingerprint.lines == 9
    # and once more: only the newest row
    with path.open("a", encoding="utf-8") as handle:
        handle.write("fay@example.test,Fay\n")
    third = read(path, source, previous=second.fingerprint)
    assert emails(third) == ["fay@example.test"]
    assert lines(third) == [10]


def test_grown_file_with_bom_is_parsed_from_where_it_stopped(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email"})
    path = write(tmp_path, b"\xef\xbb\xbfEmail\r\nann@example.test\r\n")
    first = read(path, source)
    assert emails(first) == ["ann@example.test"]
    path.write_bytes(path.read_bytes() + b"bob@example.test\r\n")
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["bob@example.test"]
    assert lines(second) == [3]


def test_grown_header_only_file(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email"})
    path = write(tmp_path, "Email\n")
    first = read(path, source)
    assert first.rows == []
    path.write_text("Email\nann@example.test\n", encoding="utf-8")
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["ann@example.test"]
    assert lines(second) == [2]


def test_grown_jsonl_file_is_parsed_from_where_it_stopped(tmp_path: Path) -> None:
    path = write(tmp_path, '{"email": "ann@example.test"}\n{"email": "bob@example.test"}\n', name="f.jsonl")
    first = read(path, jsonl_source())
    assert lines(first) == [1, 2]
    with path.open("a", encoding="utf-8") as handle:
        handle.write('not json\n{"email": "cat@example.test"}\n')
    second = read(path, jsonl_source(), previous=first.fingerprint)
    assert emails(second) == ["cat@example.test"]
    assert lines(second) == [4]
    assert list(errors(second)) == [3]


def test_file_changed_in_the_middle_is_fully_reread(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,Ann\nbob@example.test,Bob\n")
    first = read(path, source)
    path.write_text(HEADER + "ann@example.test,Annie\nbob@example.test,Bob\ncat@example.test,Cat\n")
    second = read(path, source, previous=first.fingerprint)
    assert not second.unchanged
    assert emails(second) == ["ann@example.test", "bob@example.test", "cat@example.test"]
    assert lines(second) == [2, 3, 4]
    assert second.rows[0].first_name == "Annie"


def test_replaced_shorter_file_is_fully_reread(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email"})
    path = write(tmp_path, "Email\nann@example.test\nbob@example.test\n")
    first = read(path, source)
    path.write_text("Email\ncat@example.test\n")
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["cat@example.test"]
    assert lines(second) == [2]


def test_file_without_final_newline_is_reread_when_it_grows(tmp_path: Path) -> None:
    # the last row may have been cut short mid-write: it is read again in full
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,An")
    first = read(path, source)
    assert first.rows[0].first_name == "An"
    path.write_text(HEADER + "ann@example.test,Ann\nbob@example.test,Bob\n")
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["ann@example.test", "bob@example.test"]
    assert second.rows[0].first_name == "Ann"


def test_a_header_only_csv_without_the_email_column_is_reported(tmp_path: Path) -> None:
    from funnel.config import Source
    from funnel.errors import SourceError
    from funnel.sources import read_source_file

    path = tmp_path / "export.csv"
    path.write_text("Mail,Name\n")
    source = Source(format="csv", path="export.csv", columns={"email": "Email"})
    with pytest.raises(SourceError, match=r"no column 'Email' .*columns found: Mail, Name"):
        read_source_file("signups", source, path, ZoneInfo("UTC"), None)


def test_a_live_webinar_start_is_one_moment_read_in_the_webinars_zone(tmp_path: Path) -> None:
    """Without an offset the start is read in the webinar's zone, whatever the registrant's; an offset wins."""
    path = write(
        tmp_path,
        "Email,Webinar Start,Time Zone\n"
        "ny@example.test,2027-01-14 19:00,America/New_York\n"
        "la@example.test,2027-01-14 19:00,America/Los_Angeles\n"
        "none@example.test,2027-01-14 19:00,\n"
        "iso@example.test,2027-01-14T19:00:00-05:00,America/Los_Angeles\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read_source_file("test-source", source, path, DENVER, None, webinar_tz=DENVER)
    assert result.problems == []
    starts = {row.email.split("@")[0]: row.webinar_start for row in result.rows}
    # 19:00 MST for everyone: 6:00 PM in Los Angeles, 9:00 PM in New York
    assert starts["ny"] == starts["la"] == starts["none"] == datetime(2027, 1, 15, 2, 0, tzinfo=UTC)
    assert starts["iso"] == datetime(2027, 1, 15, 0, 0, tzinfo=UTC)  # an offset is taken as written
    # the registrant's own zone is still kept (she reads the time in it)
    assert {row.email.split("@")[0]: row.timezone for row in result.rows}["la"] == "America/Los_Angeles"


def test_an_evergreen_webinar_start_is_read_in_each_registrants_zone(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Webinar Start,Time Zone\nla@example.test,2027-01-14 19:00,America/Los_Angeles\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read_source_file("test-source", source, path, DENVER, None, webinar_tz=None)
    assert result.rows[0].webinar_start == datetime(2027, 1, 15, 3, 0, tzinfo=UTC)  # 19:00 PST
