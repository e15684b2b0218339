"""Exports as platforms write them (spec section 8): Zoom's reports, dates, mapping gaps, late exports.

Each silent failure of issue 17's bullets "Zoom's reports cannot be read",
"Dates as people write them", "Silent mapping gaps" and "Late exports" has a
test here that fails on the code before it: the files are the real shapes
(the shipped examples are Zoom's layout), read through the shipped
sequences.yaml, and the end-to-end tests run the real `funnel`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import REPO, Project

from funnel.config import Source, load_config
from funnel.errors import SourceError
from funnel.signups.dates import read_instant
from funnel.signups.sources import FileRead, read_source_file

DENVER = ZoneInfo("America/Denver")
EXAMPLES = REPO / "signups" / "examples"
SHIPPED = load_config(REPO / "sequences.yaml")
#: the January webinar: Jan 14, 2027 07:00 PM in Denver
START = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)

_PEOPLE_HEADER = "Attended,User Name (Original Name),Email,Join Time,Leave Time,Time in Session (minutes),Is Guest,"
_ATTENDEES_HEADER = (
    "Attended,User Name (Original Name),First Name,Last Name,Email,Registration Time,Approval Status,"
    "Join Time,Leave Time,Time in Session (minutes),Is Guest,Country/Region Name\n"
)
#: Zoom's three sections, without the summary block above them (as if deleted by hand)
ATTENDEE_SECTIONS = (
    "Host Details\n"
    f"{_PEOPLE_HEADER}Country/Region Name\n"
    'Yes,Maya Ellis,care@healinglightcounseling.test,"Jan 14, 2027 06:41 PM","Jan 14, 2027 08:04 PM",83,No,US\n'
    "Panelist Details\n"
    f"{_PEOPLE_HEADER}Country/Region Name\n"
    "Attendee Details\n"
    f"{_ATTENDEES_HEADER}"
    'Yes,Ana Reyes,Ana,Reyes,ana@example.test,"Jan 2, 2027 10:00 AM",approved,'
    '"Jan 14, 2027 07:01 PM","Jan 14, 2027 08:00 PM",59,Yes,United States\n'
    'No,Bo Lin,Bo,Lin,bo@example.test,"Jan 3, 2027 10:00 AM",approved,--,--,--,--,--\n'
)


def source(**values: object) -> Source:
    data: dict[str, object] = {"format": "csv", "path": "signups/file.csv", "columns": {"email": "Email"}}
    data.update(values)
    return Source.model_validate(data)


def read(path: Path, src: Source, webinar_tz: ZoneInfo | None = DENVER) -> FileRead:
    return read_source_file("test-source", src, path, DENVER, None, webinar_tz=webinar_tz)


def write(tmp_path: Path, text: str, name: str = "file.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def warnings(result: FileRead) -> list[str]:
    return [f"{p.line}: {p.message}" for p in result.problems if p.warning]


def errors(result: FileRead) -> dict[int, str]:
    return {p.line: p.message for p in result.problems if not p.warning}


# --------------------------------------------------------------------------- Zoom's reports


def test_zoom_registration_report_reads_as_it_downloads() -> None:
    """Summary lines above the header, the start from the summary, approved only, own links, signup times.

    Before: line 1 ("Registration Report") was taken as the header and the file refused.
    """
    result = read(EXAMPLES / "zoom-registrations.csv", SHIPPED.sources["zoom-registrations"])
    assert errors(result) == {} and warnings(result) == []
    assert result.filtered == 2  # pending and denied
    rows = {r.email: r for r in result.rows}
    assert list(rows) == [
        "elena.park@example.test",
        "farah.haddad@example.test",
        "gwen.obrien@example.test",
        "hope.lindqvist@example.test",
    ]
    assert {r.webinar_start for r in rows.values()} == {START}  # "Jan 14, 2027 07:00 PM" in Denver
    elena = rows["elena.park@example.test"]
    assert elena.line == 7 and elena.first_name == "Elena"
    assert elena.signed_up_at == datetime(2026, 11, 22, 3, 2, 11, tzinfo=UTC)  # 11/21/2026 08:02:11 PM Denver
    assert elena.join_url == "https://healinglightcounseling.zoom.example.test/w/81234567890?tk=eP4x-Q2mLr8"
    assert rows["farah.haddad@example.test"].discreet is True


def test_zoom_attendee_report_reads_only_the_attendees_who_came() -> None:
    """`section: Attendee Details` with `where: {Attended: Yes}`: the host is not an attendee.

    Before: the summary lines made the file unreadable; without them, the Host section's header was read.
    """
    result = read(EXAMPLES / "zoom-attendees.csv", SHIPPED.sources["zoom-attendees"], webinar_tz=None)
    assert errors(result) == {} and warnings(result) == []
    assert [r.email for r in result.rows] == [
        "elena.park@example.test",
        "farah.haddad@example.test",
        "hope.lindqvist@example.test",
    ]
    assert result.filtered == 1  # Gwen: Attended No
    # the summary's "Actual Start Time" (Jan 14, 2027 06:58 PM), for the session the row belongs to
    assert {r.webinar_start for r in result.rows} == {datetime(2027, 1, 15, 1, 58, tzinfo=UTC)}


def test_sections_without_the_summary_block_still_read_the_attendees(tmp_path: Path) -> None:
    """The assistant deleted Zoom's top block by hand: the Host section's header came first and every
    attendee row failed. With `section:` only the attendees are read, and the rows end at the section's end."""
    path = write(tmp_path, ATTENDEE_SECTIONS + "\nSomething else\nEmail\nnot@example.test\n")
    result = read(path, source(section="attendee details", where={"Attended": "Yes"}))
    assert errors(result) == {}
    assert [(r.email, r.line) for r in result.rows] == [("ana@example.test", 8)]


def test_without_section_a_sectioned_file_reads_the_first_and_says_how_to_choose(tmp_path: Path) -> None:
    result = read(write(tmp_path, ATTENDEE_SECTIONS), source(where={"Attended": "Yes"}))
    assert [r.email for r in result.rows] == ["care@healinglightcounseling.test"]  # Zoom's first: the host
    (note,) = warnings(result)
    assert "'Host Details', 'Panelist Details', 'Attendee Details'" in note
    assert "section: Attendee Details" in note
    # the shipped config does not leave it to chance
    assert SHIPPED.sources["zoom-attendees"].section == "Attendee Details"


def test_a_section_that_is_not_there_refuses_the_file_naming_the_ones_found(tmp_path: Path) -> None:
    path = write(tmp_path, ATTENDEE_SECTIONS.replace("Attendee Details", "Guest Details"))
    with pytest.raises(SourceError) as refused:
        read(path, source(section="Attendee Details"))
    message = str(refused.value)
    assert "no section 'Attendee Details'" in message and "'Guest Details'" in message
    assert "sources.test-source.section" in message


def test_a_header_that_is_nowhere_names_the_email_title_looked_for(tmp_path: Path) -> None:
    path = write(tmp_path, "Attendee Report\nTopic,Webinar ID\nA talk,812\nAttended,Mail\nYes,ana@example.test\n")
    with pytest.raises(SourceError) as refused:
        read(path, source(columns={"email": "E-mail Address"}))
    message = str(refused.value)
    assert "no line holds the column 'E-mail Address'" in message
    assert "line 1 holds: Attendee Report" in message and "sources.test-source.columns.email" in message


def test_summary_start_that_contradicts_a_rows_own_start_is_a_warning_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Registration Report\n"
        "Topic,Webinar ID,Scheduled Time\n"
        'A talk,812,"Jan 14, 2027 07:00 PM"\n'
        "Email,Webinar Start\n"
        "ana@example.test,01/14/2027 07:00 PM\n"
        "bo@example.test,01/21/2027 07:00 PM\n"
        "cy@example.test,01/28/2027 07:00 PM\n"
        "di@example.test,\n",
    )
    result = read(path, source(columns={"email": "Email", "webinar_start": "Webinar Start"}, session_from="summary"))
    assert errors(result) == {}
    (note,) = warnings(result)  # once per file
    assert note.startswith(
        "6: the start '01/21/2027 07:00 PM' differs from the one the report's summary names at line 3"
    )
    starts = {r.email: r.webinar_start for r in result.rows}
    assert starts["bo@example.test"] == datetime(2027, 1, 22, 2, 0, tzinfo=UTC)  # the row's own is kept
    assert starts["ana@example.test"] == starts["di@example.test"] == START


def test_session_from_summary_without_a_summary_start_refuses_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no line above the header names a start time"):
        read(write(tmp_path, "Email\nana@example.test\n"), source(session_from="summary"))


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    "written",
    [
        "2027-01-14T19:00:00-07:00",
        "2027-01-15T02:00Z",
        "2027-01-14 19:00",
        "01/14/2027 07:00 PM",
        "01/14/2027 07:00:00 PM",
        "1/14/2027 19:00",
        "01/14/2027 19:00:00",
        "Jan 14, 2027 07:00 PM",
        "Jan 14, 2027 07:00:00 PM",
    ],
)
def test_dates_as_people_write_them(written: str) -> None:
    assert read_instant(written, DENVER) == START


@pytest.mark.parametrize("written", ["14/01/2027 19:00", "14.01.2027 19:00", "14/1/2027 7:00 PM"])
def test_date_order_dmy_reads_the_day_first(written: str) -> None:
    assert read_instant(written, DENVER, "dmy") == START


def test_a_row_whose_date_is_impossible_in_the_sources_order_is_rejected_with_the_fix(tmp_path: Path) -> None:
    text = "Email,Webinar Start\nana@example.test,13/01/2027 19:00\nbo@example.test,01/02/2027 19:00\n"
    mapped = {"email": "Email", "webinar_start": "Webinar Start"}
    result = read(write(tmp_path, text), source(columns=mapped))
    problem = errors(result)[2]
    assert "cannot be read month first" in problem and "date_order: dmy" in problem
    assert [r.email for r in result.rows] == ["bo@example.test"]  # the rest go on
    assert result.rows[0].webinar_start == datetime(2027, 1, 3, 2, 0, tzinfo=UTC)  # January 2nd
    day_first = read(write(tmp_path, text), source(columns=mapped, date_order="dmy"))
    assert errors(day_first) == {}
    assert [r.webinar_start for r in day_first.rows] == [
        datetime(2027, 1, 14, 2, 0, tzinfo=UTC),  # 13 January, 19:00 Denver
        datetime(2027, 2, 2, 2, 0, tzinfo=UTC),  # 1 February
    ]
    backwards = read(write(tmp_path, "Email,Webinar Start\nana@example.test,01/13/2027 19:00\n"), day_first_source())
    assert "remove `date_order: dmy`" in errors(backwards)[2]
    dots = read(write(tmp_path, "Email,Webinar Start\nana@example.test,14.01.2027 19:00\n"), source(columns=mapped))
    assert "set `date_order: dmy`" in errors(dots)[2]


def day_first_source() -> Source:
    return source(columns={"email": "Email", "webinar_start": "Webinar Start"}, date_order="dmy")


def test_a_date_that_cannot_be_read_is_rejected_listing_the_forms(tmp_path: Path) -> None:
    text = (
        "Email,Webinar Start\n"
        "ana@example.test,next Thursday 7pm\n"
        "bo@example.test,1/14/27 19:00\n"
        'cy@example.test,"Jan 14, 2027 07:00 PM"\n'
    )
    path = write(tmp_path, text)
    result = read(path, source(columns={"email": "Email", "webinar_start": "Webinar Start"}))
    for line in (2, 3):  # no guessing: a two-digit year is not read either
        problem = errors(result)[line]
        assert "is not a date and time funnel reads" in problem
        for form in ("2027-01-14 19:00", "01/14/2027 07:00 PM", "1/14/2027 19:00", "Jan 14, 2027 07:00 PM"):
            assert form in problem
    assert [(r.email, r.webinar_start) for r in result.rows] == [("cy@example.test", START)]


def test_a_registration_export_with_excel_and_zoom_dates_confirms_everyone(project: Project, funnel) -> None:
    """Before: `01/14/2027 07:00 PM`, `1/14/2027 19:00` and `Jan 14, 2027 07:00 PM` were refused, exit 0."""
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,,01/14/2027 07:00 PM,,\n"
        "bo@example.test,Bo,,1/14/2027 19:00,,\n"
        'cy@example.test,Cy,,"Jan 14, 2027 07:00 PM",,\n',
    )
    result = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert (summary["rejected"], summary["problems"]) == (0, [])
    assert sorted(to for to, _, step in project.sent() if step == "registered") == [
        "ana@example.test",
        "bo@example.test",
        "cy@example.test",
    ]
    shown = funnel("contacts", "show", "bo@example.test", "--json").json()
    assert shown["enrollments"][0]["webinar_start"] == "2027-01-15T02:00:00Z"


# --------------------------------------------------------------------------- mapping gaps


def test_a_missing_mapped_column_is_warned_once_per_file_by_run_and_import(project: Project, funnel) -> None:
    """Before: a mapped column the file lacked was ignored without a word."""
    rows = "".join(f"p{n}@example.test,P{n},2027-01-14 19:00\n" for n in range(5))
    project.write("signups/webinar-registrations.csv", "Email,First Name,Webinar Start\n" + rows)
    result = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert result.code == 0, result.err
    found = result.json()["warnings"]
    assert len(found) == 3  # Last Name, Time Zone, Discreet: one line each, not one per row
    last_name = next(w for w in found if "'Last Name'" in w)
    assert last_name.startswith("signups/webinar-registrations.csv:1: no column 'Last Name'")
    assert (
        "source webinar-registrations" in last_name and "columns found: Email, First Name, Webinar Start" in last_name
    )
    plain = funnel("run", "--now", "2027-01-10T16:00:00Z")
    assert plain.err == ""  # an unchanged file is not read again, nor warned about again
    imported = funnel("import", "webinar-registrations", "signups/webinar-registrations.csv")
    assert imported.code == 0
    assert imported.err.count("no column 'Time Zone'") == 1


def test_curly_apostrophes_in_headers_match_straight_ones(project: Project, funnel) -> None:
    """Typeform writes `What’s your first name?`; sequences.yaml is typed with '. Before: name and message lost."""
    add_source(
        project,
        """\
  typeform-consultations:
    format: csv
    path: signups/typeform.csv
    columns:
      email: "What's your email?"
      first_name: "What's your first name?"
      message: "Anything you'd like me to know?"
    tags: [consultation-requested]
    enroll: consultation
""",
    )
    project.write(
        "signups/typeform.csv",
        "What’s your email?,What’s your first name?,Anything you’d like me to know?\n"
        "ruth@example.test,Ruth,“Evenings are best.”\n",
    )
    result = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert result.code == 0, result.err
    assert result.json()["warnings"] == []
    shown = funnel("contacts", "show", "ruth@example.test", "--json").json()
    assert shown["first_name"] == "Ruth"
    assert shown["fields"] == {"message": "“Evenings are best.”"}
    (received,) = [m for m in project.messages() if str(m["To"].addresses[0].addr_spec) == "ruth@example.test"]
    assert "Ruth" in received.get_body(("plain",)).get_content()


def add_source(project: Project, text: str) -> None:
    """Add a source to the project's shipped sequences.yaml (just before the consultation requests)."""
    config = project.root / "sequences.yaml"
    marker = "  # The website's consultation requests, exported as one JSON object per line.\n"
    original = config.read_text(encoding="utf-8")
    assert marker in original
    config.write_text(original.replace(marker, text + "\n" + marker), encoding="utf-8")


# --------------------------------------------------------------------------- late exports


CONSULTATION_EXPORT = """\
  consultation-export:
    format: csv
    path: signups/consultation-export.csv
    columns: {email: Email Address, first_name: Name, message: Message, signed_up_at: Timestamp}
    tags: [consultation-requested]
    enroll: consultation
"""


def test_a_weekly_form_export_does_not_send_last_weeks_receipts_as_new(project: Project, funnel) -> None:
    """Waits count from the form's Timestamp; steps already past max_late are skipped with the reason.

    Before: the Timestamp was ignored and "Your message arrived safely" went out a week late.
    """
    add_source(project, CONSULTATION_EXPORT)
    project.write(
        "signups/consultation-export.csv",
        "Timestamp,Email Address,Name,Message\n"
        "1/3/2027 9:15:32,old@example.test,Olga,Hello\n"  # a week before the export is read
        "1/11/2027 8:50:00,new@example.test,Nia,Hi\n"  # ten minutes before
        "1/11/2027 12:00:00,ahead@example.test,Ada,Hey\n"  # a clock set wrong: in the future
        "12/31/9999 23:59:00,far@example.test,Fay,Yo\n",  # not a usable date: counted from now
    )
    result = funnel("run", "--now", "2027-01-11T16:00:00Z", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["rejected"] == 0
    assert sorted(to for to, _, step in project.sent() if step == "received") == [
        "ahead@example.test",
        "far@example.test",
        "new@example.test",
    ]
    old = funnel("contacts", "show", "old@example.test", "--json").json()["enrollments"][0]
    assert old["enrolled_at"] == "2027-01-03T16:15:32Z"
    steps = {s["id"]: (s["status"], s.get("reason")) for s in old["steps"]}
    assert steps["received"] == ("skipped", "late by 7 days")
    assert steps["what-to-expect"][0] == "skipped"  # a day later: late too
    new = funnel("contacts", "show", "new@example.test", "--json").json()["enrollments"][0]
    assert new["enrolled_at"] == "2027-01-11T15:50:00Z"
    ahead = funnel("contacts", "show", "ahead@example.test", "--json").json()["enrollments"][0]
    assert ahead["enrolled_at"] == "2027-01-11T16:00:00Z"  # never later than now
    far = [w for w in summary["warnings"] if w.startswith("signups/consultation-export.csv:5: signed up at")]
    assert far and "counted from now" in far[0]


# --------------------------------------------------------------------------- join links


def test_each_registrant_gets_her_own_join_link_and_a_bad_one_is_dropped(project: Project, funnel) -> None:
    """Two readers of one letter with different links each get their own (the render memo keys on it)."""
    add_source(
        project,
        """\
  zoom-links:
    format: csv
    path: signups/zoom-links.csv
    columns: {email: Email, first_name: First Name, join_url: Join URL, webinar_start: Start}
    webinar: relationship-911
    tags: [webinar-registered]
    enroll: webinar-relationship-911
""",
    )
    project.write(
        "signups/zoom-links.csv",
        "Email,First Name,Join URL,Start\n"
        "ana@example.test,Ana,https://zoom.example.test/w/812?tk=AAA111,2027-01-14 19:00\n"
        "bo@example.test,Bo,https://zoom.example.test/w/812?tk=BBB222,2027-01-14 19:00\n"
        "cy@example.test,Cy,http://zoom.example.test/w/812?tk=CCC333,2027-01-14 19:00\n",
    )
    result = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert result.code == 0, result.err
    (dropped,) = [w for w in result.json()["warnings"] if "join link" in w]
    assert dropped.startswith("signups/zoom-links.csv:4: join link 'http://") and "not an https address" in dropped
    shared = SHIPPED.webinars["relationship-911"].join_url
    assert shared
    links = {"ana": "tk=AAA111", "bo": "tk=BBB222", "cy": shared}
    letters = {str(m["To"].addresses[0].addr_spec).split("@")[0]: m for m in project.messages()}
    assert sorted(letters) == ["ana", "bo", "cy"]
    for who, link in links.items():
        text = letters[who].get_body(("plain",)).get_content()
        assert link in text, who
        assert all(other not in text for other in links.values() if other != link), who
        ics = next(p for p in letters[who].iter_attachments() if p.get_content_type() == "text/calendar")
        assert link in ics.get_content().replace("\r\n ", "")
    shown = funnel("contacts", "show", "bo@example.test", "--json").json()
    assert shown["enrollments"][0]["join_url"] == "https://zoom.example.test/w/812?tk=BBB222"


# --------------------------------------------------------------------------- whole files refused, end to end


def test_a_file_refused_as_a_whole_makes_the_run_exit_1_after_the_rest(
    example_project: Project, funnel_process
) -> None:
    """Before: the run said so on stderr and exited 0, so cron stayed silent."""
    example_project.write("signups/zoom-attendees.csv", (EXAMPLES / "zoom-registrations.csv").read_text())
    done = funnel_process("run", "--now", "2026-12-01T16:00:00Z")
    assert done.returncode == 1
    assert "zoom-attendees.csv: no section 'Attendee Details'" in done.stderr
    assert "Traceback" not in done.stderr
    # the rest of the run was done: the other files read, the due mail sent
    assert len(example_project.sent()) == 13


def test_the_shipped_examples_run_as_zoom_writes_them(example_project: Project, funnel_process) -> None:
    """The shipped sequences.yaml over the shipped Zoom reports, as cron runs it, with the real program."""
    assert funnel_process("check").returncode == 0
    first = funnel_process("run", "--now", "2026-12-01T16:00:00Z")
    assert first.returncode == 0, first.stderr
    sent = example_project.sent()
    registered = {to for to, _, step in sent if step == "registered"}
    assert {"farah.haddad@example.test", "gwen.obrien@example.test", "hope.lindqvist@example.test"} <= registered
    assert "elena.park@example.test" not in registered  # registered nine days before the report came
    for nobody in ("iris.moreno@example.test", "jo.whitfield@example.test"):  # pending, denied
        assert funnel_process("contacts", "show", nobody).returncode == 1
    elena = funnel_process("contacts", "show", "elena.park@example.test", "--json")
    shown = json.loads(elena.stdout)
    steps = {s["id"]: (s["status"], s.get("reason")) for s in shown["enrollments"][0]["steps"]}
    assert steps["registered"] == ("skipped", "late by 9 days")
    assert shown["enrollments"][0]["webinar_start"] == "2027-01-15T02:00:00Z"
    # the morning after the webinar: the attendee report says who came
    after = funnel_process("run", "--now", "2027-01-15T16:00:00Z")
    assert after.returncode == 0, after.stderr
    later = example_project.sent()[len(sent) :]
    thanked = {to for to, _, step in later if step == "thank-you"}
    replayed = {to for to, _, step in later if step == "replay"}
    assert {"elena.park@example.test", "farah.haddad@example.test", "hope.lindqvist@example.test"} <= thanked
    assert "gwen.obrien@example.test" in replayed and "gwen.obrien@example.test" not in thanked
    assert funnel_process("contacts", "show", "care@healinglightcounseling.test").returncode == 1  # the host
