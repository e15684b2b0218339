"""Signup values that could hurt: impossible dates, zones, addresses, control characters; streamed reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from source_helpers import (
    DENVER,
    HEADER,
    csv_source,
    emails,
    errors,
    jsonl_source,
    lines,
    read,
    write,
)

from funnel.config import Source
from funnel.errors import SourceError
from funnel.signups.sources import FileRead, Fingerprint, read_source_file
from funnel.text import normalize_email

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
    from funnel.signups.sources import read_mapping

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
