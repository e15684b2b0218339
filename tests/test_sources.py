"""Reading signup files: headers, quoting, encodings, row problems with lines, incremental reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from source_helpers import (
    REG_COLUMNS,
    csv_source,
    emails,
    errors,
    jsonl_source,
    lines,
    read,
    write,
)

from funnel.errors import SourceError

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


def test_invisible_characters_in_headers_do_not_hide_a_column(tmp_path: Path) -> None:
    """A doubled BOM (two exports pasted together) or a NUL before a header: the column is still found.

    Before, the error said "no column 'Email' (columns found: ..., Email, ...)", which no one can act on.
    """
    path = write(tmp_path, b"\xef\xbb\xbf\xef\xbb\xbfEmail,First\x00 Name\nann@example.test,Ann\n")
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert [(r.email, r.first_name) for r in result.rows] == [("ann@example.test", "Ann")]
    path = write(tmp_path, '{"\\ufeffemail": "bo@example.test", "\\u0000name": "Bo"}\n', "file.jsonl")
    result = read(path, jsonl_source())
    assert [(r.email, r.first_name) for r in result.rows] == [("bo@example.test", "Bo")]


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfEmail,First Name\r\nann@example.test,Ann\r\n")
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
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
    assert result.rows[1].last_name == "Line one line two line three"  # a name is one line
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
    result = read(path, csv_source(columns={k: v for k, v in REG_COLUMNS.items() if k != "webinar_start"}))
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
    assert row.discreet is None  # a blank says nothing: a stored choice stays
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
    assert "2027-01-14 19:00" in problems[2]  # what to write instead


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
        ("n", False),
        ("", None),
        ("  ", None),
        ("please", True),  # anything but an explicit no asks for discretion (with a warning)
    ],
)
def test_discreet_truthy_values(tmp_path: Path, value: str, expected: bool | None) -> None:
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


def test_windows_1252_file_is_read_with_a_warning(tmp_path: Path) -> None:
    # Excel's plain "CSV" on Windows: not UTF-8, but Windows-1252
    path = write(
        tmp_path,
        "Email,First Name\nann@example.test,Ann\nbob@example.test,Jos\xe9 \u201cPepe\u201d\n".encode("cp1252"),
    )
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert result.rows[1].first_name == "Jos\xe9 \u201cPepe\u201d"
    (warning,) = result.problems
    assert warning.warning and "Windows-1252" in warning.message and "line 3" in warning.message
    assert "CSV UTF-8" in warning.message  # what to do if names look wrong


def test_file_that_is_neither_utf8_nor_windows_1252_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"Email,First Name\nann@example.test,Ann\nbob@example.test,B\x81b\n")
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert f"{path}:3:" in str(info.value)
    assert "export it again as CSV UTF-8" in str(info.value)


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
    only = csv_source(columns={"email": "Email", "first_name": "First Name"})
    result = read(write(tmp_path, "Email,First Name\n"), only)
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
    assert result.rows[0].fields == {"message": "one\ntwo\nthree"}  # kept as plain line breaks
    assert list(errors(result)) == [2]
