"""Reading signup files as they grow and as offices export them: fingerprints, half-written lines, encodings."""

from __future__ import annotations

import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from source_helpers import (
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
from funnel.signups.sources import read_source_file

# --------------------------------------------------------------------------- fingerprints


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
    from funnel.errors import SourceError

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
