"""Reading signup files: headers, quoting, encodings, row problems with lines, incremental reads."""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.config import Source
from funnel.errors import SourceError
from funnel.sources import FileRead, Fingerprint, read_source_file
from funnel.text import _domain_forms, _validated, normalize_email

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


def _outcome(check: Callable[[str], str], raw: str) -> tuple[str, str]:
    try:
        return "ok", check(raw)
    except ValueError as exc:
        return "refused", str(exc)


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
#: pieces an address is built from: plain and odd characters, dots, quotes, spaces, non-ASCII
_LOCAL = st.text(alphabet=_ATEXT + '..."@ \\()<>,;:[]\u00e9\u00fc\u00a0\u2028\t', min_size=0, max_size=70)
_LABEL = st.one_of(
    st.sampled_from(["example", "gmail", "xn--bcher-kva", "b\u00fccher", "-bad", "bad-", "a" * 63, "a" * 64, "MIX"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_\u00e9\u00df\u0301@ []", min_size=0, max_size=20),
)
_TLD = st.sampled_from(["test", "com", "org", "local", "localhost", "invalid", "arpa", "onion", "c0m", "x", "TEST", ""])
_DOMAIN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]) if tld else ".".join(labels),
    st.lists(_LABEL, min_size=0, max_size=5),
    _TLD,
)
_ADDRESS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, _DOMAIN),
    st.builds(
        lambda local, domain, pad: f"{local}@{domain}{pad}",
        st.text(_ATEXT, min_size=1, max_size=70),
        _DOMAIN,
        st.sampled_from(["", " ", "\n"]),
    ),
    st.builds(lambda n, m: f"{'a' * n}@{'b' * m}.test", st.integers(50, 70), st.integers(150, 260)),
    st.text(max_size=40),
)


@settings(max_examples=1500, deadline=None)
@given(raw=_ADDRESS)
def test_normalize_email_fast_path_agrees_with_email_validator(raw: str) -> None:
    """The per-domain fast path accepts, refuses and normalises exactly as email-validator does."""
    assert _outcome(normalize_email, raw) == _outcome(_validated, raw.strip())


@pytest.mark.parametrize(
    "raw",
    [
        "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 50 + ".test",  # too long in all
        "a..b@example.test",
        "a@example.invalid",  # a special-use domain
        "a@-bad.test",
    ],
)
def test_normalize_email_fast_path_refuses_what_email_validator_refuses(raw: str) -> None:
    _domain_forms.cache_clear()
    normalize_email("a@example.test")  # a domain already known must not let a bad address through
    assert _outcome(normalize_email, raw) == _outcome(_validated, raw)
    assert _outcome(normalize_email, raw)[0] == "refused"


def test_a_domain_too_long_to_be_valid_is_refused_and_not_remembered() -> None:
    """A hostile export's 5,000-character domains must not fill the domain cache's memory."""
    _domain_forms.cache_clear()
    for n in range(3):
        assert _outcome(normalize_email, f"a{n}@" + "b" * 5000 + ".test")[0] == "refused"
    assert _domain_forms.cache_info().currsize == 0


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
    assert second.rows[1].first_name == "Dee, Dunn"
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
    # the last row may have been cut short mid-write: it is left out, then read in full
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,An")
    first = read(path, source)
    assert first.rows == []
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


# --------------------------------------------------------------------------- files still being written


def settle(path: Path) -> None:
    """Make the file look untouched for two minutes (a hand-made file, not an export being written)."""
    old = time.time() - 120
    os.utime(path, (old, old))


def test_half_written_last_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,Ann\nmaria.gonzalez@example.co")
    first = read(path, source)
    assert emails(first) == ["ann@example.test"]
    assert first.deferred == 1
    (warning,) = first.problems
    assert warning.warning and warning.line == 3 and "still being written" in warning.message
    assert first.fingerprint is not None and first.fingerprint.lines == 2
    # read again while it is still being written: nothing new, nothing read twice
    again = read(path, source, previous=first.fingerprint)
    assert again.rows == [] and again.fingerprint == first.fingerprint
    # the exporter finishes the line and adds another: both are read, with their lines
    with path.open("a", encoding="utf-8") as handle:
        handle.write("m,Maria\nbob@example.test,Bob\n")
    done = read(path, source, previous=again.fingerprint)
    assert emails(done) == ["maria.gonzalez@example.com", "bob@example.test"]
    assert lines(done) == [3, 4]
    assert done.problems == [] and done.deferred == 0
    assert read(path, source, previous=done.fingerprint).unchanged


def test_a_still_file_without_final_newline_is_read_in_full(tmp_path: Path) -> None:
    # a hand-made file whose last line simply has no line ending: read once it has been still a minute
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,Ann\nbob@example.test,Bob")
    first = read(path, source)
    assert emails(first) == ["ann@example.test"]
    settle(path)
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["bob@example.test"]
    assert lines(second) == [3]
    assert second.problems == []
    assert read(path, source, previous=second.fingerprint).unchanged


def test_half_written_jsonl_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = write(tmp_path, '{"email": "ann@example.test"}\n{"email": "maria.gonz', name="f.jsonl")
    first = read(path, jsonl_source())
    assert emails(first) == ["ann@example.test"]
    assert errors(first) == {}  # not "not valid JSON": just not written yet
    with path.open("a", encoding="utf-8") as handle:
        handle.write('alez@example.com"}\n')
    second = read(path, jsonl_source(), previous=first.fingerprint)
    assert emails(second) == ["maria.gonzalez@example.com"]
    assert lines(second) == [2]


def test_quoted_value_still_open_at_the_end_waits_then_is_rejected_if_it_stays_open(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email", "first_name": "First Name", "note": "Note"})
    path = write(tmp_path, 'Email,First Name,Note\nann@example.test,Ann,ok\nbob@example.test,Bob,"first line\n')
    first = read(path, source)
    assert emails(first) == ["ann@example.test"] and first.deferred == 1
    with path.open("a", encoding="utf-8") as handle:
        handle.write('second line"\n')
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["bob@example.test"]
    assert second.rows[0].fields == {"note": "first line\nsecond line"}
    # a quote that is still open when the file has long stopped changing is an error with its line
    path = write(
        tmp_path, 'Email,First Name,Note\nann@example.test,Ann,ok\nbob@example.test,Bob,"first line\nmore\n', "b.csv"
    )
    settle(path)
    third = read(path, source)
    assert emails(third) == ["ann@example.test"]
    assert "quote" in errors(third)[3] and "never closed" in errors(third)[3]


# --------------------------------------------------------------------------- exports as offices make them


def test_semicolon_separated_file(tmp_path: Path) -> None:
    # Excel in much of Europe (and some US setups) separates with semicolons
    path = write(tmp_path, 'Email;First Name;Last Name\nann@example.test;Ann;"Ames; RN"\nbob@example.test;Bob;Lee\n')
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name", "last_name": "Last Name"}))
    assert result.problems == []
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert result.rows[0].last_name == "Ames; RN"


def test_tab_separated_file(tmp_path: Path) -> None:
    path = write(tmp_path, "Email\tFirst Name\nann@example.test\tAnn, RN\n")
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["ann@example.test"] and result.rows[0].first_name == "Ann, RN"


def test_old_mac_line_endings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'Email,First Name\rann@example.test,Ann\rbad,Bad\rbob@example.test,"Bob\rBobby"\rcat@example.test,Cat\r',
    )
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    result = read(path, source)
    assert emails(result) == ["ann@example.test", "bob@example.test", "cat@example.test"]
    assert lines(result) == [2, 4, 6]
    assert list(errors(result)) == [3]
    # and growth is picked up where it stopped
    with path.open("a", encoding="utf-8", newline="") as handle:
        handle.write("dee@example.test,Dee\r")
    grown = read(path, source, previous=result.fingerprint)
    assert emails(grown) == ["dee@example.test"] and lines(grown) == [7]


def test_utf16_with_byte_order_mark(tmp_path: Path) -> None:
    # Excel's "Unicode text" and some webinar platforms write UTF-16 with a BOM
    text = "Email\tFirst Name\r\nann@example.test\tAnn\r\nbob@example.test\tJos\u00e9\r\n"
    path = write(tmp_path, text.encode("utf-16"))
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    result = read(path, source)
    assert result.problems == []
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert result.rows[1].first_name == "Jos\u00e9"
    path.write_bytes(path.read_bytes() + "cat@example.test\tCat\r\n".encode("utf-16-le"))
    grown = read(path, source, previous=result.fingerprint)
    assert emails(grown) == ["cat@example.test"] and lines(grown) == [4]


def test_utf16_without_byte_order_mark_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, "Email\nann@example.test\n".encode("utf-16-le"))
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email"}))
    assert "UTF-16" in str(info.value) and "export it again as CSV UTF-8" in str(info.value)


def test_unterminated_quote_does_not_swallow_the_rows_after_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First Name,Last Name\n"
        'ann@example.test,"Ann,Ames\n'
        "bob@example.test,Bob,Bell\n"
        "cat@example.test,Cat,Cole\n"
        'dee@example.test,Dee,"Dunn, RN"\n'
        "eve@example.test,Eve,Eames\n",
    )
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name", "last_name": "Last Name"}))
    assert emails(result) == ["bob@example.test", "cat@example.test", "dee@example.test", "eve@example.test"]
    assert lines(result) == [3, 4, 5, 6]
    assert result.rows[2].last_name == "Dunn, RN"
    problems = errors(result)
    assert list(problems) == [2]
    assert "quote" in problems[2] and "not closed" in problems[2]


def test_unterminated_quote_running_to_the_end_does_not_swallow_the_rows(tmp_path: Path) -> None:
    path = write(tmp_path, 'Email,First Name\n"ann@example.test,Ann\nbob@example.test,Bob\ncat@example.test,Cat\n')
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["bob@example.test", "cat@example.test"]
    assert list(errors(result)) == [2]


# --------------------------------------------------------------------------- duplicate headers


def test_a_column_that_appears_twice_is_an_error_naming_both(tmp_path: Path) -> None:
    path = write(tmp_path, "Email,First Name,EMAIL\nann@example.test,Ann,other@example.test\n", "regs.csv")
    with pytest.raises(SourceError) as info:
        read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    message = str(info.value)
    assert f"{path}:1:" in message
    assert "'EMAIL' appears twice" in message and "columns 1 and 3" in message and "A and C" in message


def test_an_unused_column_that_appears_twice_is_fine(tmp_path: Path) -> None:
    # exports often carry empty or repeated columns funnel does not read
    path = write(tmp_path, "Email,Notes,Notes,,\nann@example.test,a,b,,\n")
    assert emails(read(path, csv_source(columns={"email": "Email"}))) == ["ann@example.test"]


def test_a_jsonl_key_given_twice_is_a_row_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"email": "ann@example.test", "Email": "other@example.test"}\n{"email": "bob@example.test"}\n',
        name="f.jsonl",
    )
    result = read(path, jsonl_source())
    assert emails(result) == ["bob@example.test"]
    assert "'email' and 'Email'" in errors(result)[1]


# --------------------------------------------------------------------------- hostile values


def test_webinar_start_outside_the_schedulable_years_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,Webinar Start,Time Zone\n"
        "far@example.test,9999-12-30 10:00,America/Denver\n"
        "edge@example.test,9999-12-31 23:59,Pacific/Kiritimati\n"
        "old@example.test,1969-12-31 23:00,UTC\n"
        "zero@example.test,0001-01-01 00:00,Asia/Tokyo\n"
        "ok@example.test,2099-12-31 12:00,UTC\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read(path, source)
    assert emails(result) == ["ok@example.test"]
    problems = errors(result)
    assert list(problems) == [2, 3, 4, 5]
    assert "between 1970 and 2099" in problems[2] and "correct the date" in problems[2]


def test_an_unusable_timezone_falls_back_to_the_practice_with_a_warning(tmp_path: Path) -> None:
    huge = "A" * 5000
    path = write(
        tmp_path,
        f"Email,Webinar Start,Time Zone\nann@example.test,2027-01-14 19:00,{huge}\n"
        "bob@example.test,2027-01-14 19:00,../../etc/passwd\n",
    )
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read(path, source)
    assert emails(result) == ["ann@example.test", "bob@example.test"]
    assert all(r.timezone is None for r in result.rows)
    assert all(r.webinar_start == datetime(2027, 1, 15, 2, 0, tzinfo=UTC) for r in result.rows)
    warnings = [p for p in result.problems if p.warning]
    assert [w.line for w in warnings] == [2, 3]
    assert len(warnings[0].message) < 300  # the 5,000 characters are not repeated back


@pytest.mark.parametrize("address", ["\u00fcser@example.test", "j\u00f6rg@example.test", "ann\r\n@example.test"])
def test_addresses_no_provider_can_deliver_are_rejected(tmp_path: Path, address: str) -> None:
    path = write(tmp_path, f'Email,First Name\n"{address}",X\nbob@example.test,Bob\n')
    result = read(path, csv_source(columns={"email": "Email", "first_name": "First Name"}))
    assert emails(result) == ["bob@example.test"]
    assert "not a valid email address" in errors(result)[2]


def test_international_domains_are_stored_as_punycode() -> None:
    assert normalize_email("Ana@B\u00fccher.test") == "ana@xn--bcher-kva.test"
    assert normalize_email("ana@xn--bcher-kva.test") == "ana@xn--bcher-kva.test"  # one contact either way


def test_control_characters_are_cleaned_from_names_and_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'Email,First Name,Last Name,Note\nann@example.test,"Ann\r\nBcc: x@evil.test","\tAmes\x07\u202e",'
        '"line one\r\nline\x00 two\u2028three"\n',
    )
    source = csv_source(
        columns={"email": "Email", "first_name": "First Name", "last_name": "Last Name", "note": "Note"}
    )
    row = read(path, source).rows[0]
    assert row.first_name == "Ann Bcc: x@evil.test"  # one line: it can never break a header
    assert row.last_name == "Ames"
    assert row.fields == {"note": "line one\nline two\nthree"}


def test_read_mapping_reads_a_form_post_by_the_same_rules(tmp_path: Path) -> None:
    from funnel.sources import read_mapping

    source = Source.model_validate(
        {"format": "form", "columns": {"email": "email", "first_name": "name", "discreet": "discreet"}}
    )
    result = read_mapping(
        "consultation-form", source, {"email": "Ann@Example.test", "name": "Ann\r\n", "discreet": ""}, DENVER
    )
    (row,) = result.rows
    assert (row.email, row.first_name, row.discreet) == ("ann@example.test", "Ann", None)
    bad = read_mapping("consultation-form", source, {"email": "\u00fcser@example.test"}, DENVER)
    assert bad.rows == [] and "not a valid email address" in bad.problems[0].message


def test_unterminated_quote_in_an_appended_part_is_reported_with_its_line(tmp_path: Path) -> None:
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, HEADER + "ann@example.test,Ann\n")
    first = read(path, source)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('bob@example.test,"Bob\ncat@example.test,Cat\ndee@example.test,Dee\n')
    second = read(path, source, previous=first.fingerprint)
    assert emails(second) == ["cat@example.test", "dee@example.test"]
    assert lines(second) == [4, 5]
    assert "lines 3-5" in errors(second)[3]


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


def test_a_webinar_start_that_happens_twice_or_never_is_read_with_a_warning(tmp_path: Path) -> None:
    """The night the clocks change: the row is kept, read as before, and its line says how it was read."""
    text = (
        "Email,Webinar Start,Time Zone\n"
        "ann@example.test,2026-11-01 01:30,America/New_York\n"  # happens twice
        "bob@example.test,2026-03-08 02:30,America/New_York\n"  # never happens
        "cat@example.test,2026-11-01 01:30-05:00,America/New_York\n"  # an offset: one moment
        "dan@example.test,2026-11-02 01:30,America/New_York\n"  # an ordinary night
    )
    path = write(tmp_path, text)
    source = csv_source(columns={"email": "Email", "webinar_start": "Webinar Start", "timezone": "Time Zone"})
    result = read_source_file("test-source", source, path, DENVER, None, webinar_tz=None)  # each in her own zone
    assert [row.webinar_start for row in result.rows] == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
        datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),
    ]
    notes = {problem.line: problem.message for problem in result.problems}
    assert all(problem.warning for problem in result.problems) and sorted(notes) == [2, 3]
    assert "2026-11-01 01:30 happens twice in America/New_York" in notes[2]
    assert "read as the first, 01:30 EDT" in notes[2] and "-05:00" in notes[2]
    assert "2026-03-08 02:30 does not exist in America/New_York" in notes[3] and "read as 03:30 EDT" in notes[3]


# --------------------------------------------------------------------------- streaming


def _streamed(path: Path, source: Source, previous: Fingerprint | None = None) -> FileRead:
    """A read with `stream=True`, its rows collected the way a run consumes them."""
    result = read_source_file("test-source", source, path, DENVER, previous, stream=True)
    assert result.rows == []
    if result.stream is not None:
        assert result.fingerprint is None  # known only once every row was handed out
    result.rows = list(result.signups())
    result.stream = None
    return result


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "ann@example.test,Ann\nnot-an-address,Bad\n\nbob@example.test,Bob\nmaria.gonzalez@example.co",
        HEADER + 'ann@example.test,"Ann\nbob@example.test,Bob\ncarla@example.test,Carla\n',
        HEADER + "ann@example.test,Ann,extra,values\r\nbob@example.test,Bob\r\n",
        "\ufeff" + HEADER + "ann@example.test,Ann\n",
    ],
)
def test_a_streamed_read_gives_what_a_whole_read_gives(tmp_path: Path, text: str) -> None:
    """Rows, problems with their lines, deferred lines and the fingerprint are the same, streamed or not."""
    source = csv_source(columns={"email": "Email", "first_name": "First Name"})
    path = write(tmp_path, text)
    whole, streamed = read(path, source), _streamed(path, source)
    assert streamed == whole
    # and a later read that resumes after it
    with path.open("a", encoding="utf-8") as handle:
        handle.write("m,Maria\ndana@example.test,Dana\n")
    assert _streamed(path, source, whole.fingerprint) == read(path, source, previous=whole.fingerprint)


def test_csv_values_are_found_by_their_column_whatever_the_order_case_and_short_rows(tmp_path: Path) -> None:
    """CSV records are read by position: the titles' case and spaces, a repeated unused title, rows
    that leave trailing columns out and `where:` all work as matching by title does."""
    text = (
        " attended ,Notes,EMAIL,Notes,first name\n"
        "Yes,a,ann@example.test,b,Ann\n"
        "no,a,bob@example.test,b,Bob\n"
        "YES,,carla@example.test\n"  # short: no second Notes, no first name
        "yes\n"  # shorter still: no address
    )
    path = write(tmp_path, text)
    source = csv_source(columns={"email": "Email", "first_name": "First Name"}, where={"Attended": "yes"})
    for result in (read(path, source), _streamed(path, source)):
        assert [(row.email, row.first_name, row.line) for row in result.rows] == [
            ("ann@example.test", "Ann", 2),
            ("carla@example.test", None, 4),
        ]
        assert result.filtered == 1
        assert [(p.line, "no email address" in p.message) for p in result.problems] == [(5, True)]


@pytest.mark.parametrize(
    ("configured", "header"),
    [("First  Name", "Email,first name"), ("First Name", "Email,First  Name"), ("first\tname ", "Email, FIRST NAME")],
)
def test_titles_match_whatever_their_spaces_in_the_file_and_in_sequences_yaml(
    tmp_path: Path, configured: str, header: str
) -> None:
    """A doubled space (or a tab) on either side was silently never matched: the column was left empty."""
    path = write(tmp_path, header + "\nann@example.test,Ann\n")
    source = csv_source(columns={"email": "Email", "first_name": configured}, where={configured: "ann"})
    for result in (read(path, source), _streamed(path, source)):
        assert [(row.email, row.first_name) for row in result.rows] == [("ann@example.test", "Ann")]
    jsonl = write(tmp_path, '{"Email": "bea@example.test", "' + header.split(",")[1] + '": "Bea"}\n', "f.jsonl")
    read_jsonl = read(jsonl, jsonl_source(columns={"email": "Email", "first_name": configured}))
    assert [(row.email, row.first_name) for row in read_jsonl.rows] == [("bea@example.test", "Bea")]


def test_titles_match_through_invisible_characters_and_unicode_forms(tmp_path: Path) -> None:
    """A zero-width space, a direction mark or a word joiner cannot be seen in a spreadsheet, and
    macOS writes "é" as e + accent: such a title silently lost its column (a name, a webinar date)."""
    header = "E\uff4dail,Pre\u0301nom\u200b,Webinar Start\u200e,Time\u2060 Zone\n"
    path = write(tmp_path, header + "ann@example.test,Ann,2027-01-14 19:00,America/Denver\n")
    source = csv_source(
        columns={"email": "Email", "first_name": "Prénom", "webinar_start": "Webinar Start", "timezone": "Time Zone"}
    )
    for result in (read(path, source), _streamed(path, source)):
        assert [(r.email, r.first_name, r.timezone) for r in result.rows] == [
            ("ann@example.test", "Ann", "America/Denver")
        ]
        assert result.rows[0].webinar_start == datetime(2027, 1, 15, 2, 0, tzinfo=UTC)


def test_two_jsonl_keys_for_one_column_are_named_as_the_file_writes_them(tmp_path: Path) -> None:
    path = write(tmp_path, '{"email": "ann@example.test", "name": "Ann", "NAME\\t": "Bea"}\n', name="f.jsonl")
    result = read(path, jsonl_source())
    assert result.rows == []
    assert "the keys 'name' and 'NAME\\t' both fill the same column" in result.problems[0].message


def test_a_form_posts_fields_are_matched_as_file_headers_are() -> None:
    from funnel.web.forms import _urlencoded_fields, map_fields

    source = Source.model_validate(
        {"format": "form", "columns": {"email": "Email", "first_name": "First  Name", "message": "message"}}
    )
    posted = _urlencoded_fields(b"EMAIL=ann%40example.test&first+name=Ann&Message=hi")
    assert map_fields(source, posted) == {"email": "ann@example.test", "first_name": "Ann", "message": "hi"}


def test_a_streamed_read_refuses_a_bad_header_before_any_row(tmp_path: Path) -> None:
    path = write(tmp_path, "Name,Other\nAnn,x\n")
    with pytest.raises(SourceError, match="no column 'Email'"):
        read_source_file("test-source", csv_source(), path, DENVER, None, stream=True)
