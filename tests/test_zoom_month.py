"""A Zoom-shaped season end to end: the shipped sequences.yaml, Zoom's own reports, the real `funnel run`.

Cron runs `funnel run` at a few moments of each month; the practice replaces
signups/zoom-registrations.csv and signups/zoom-attendees.csv with each new
download, exactly as Zoom writes them (the layouts of signups/examples/). The
webinar repeats every second Thursday at 7 PM Denver time (the shipped
`sessions:`/`repeat:`). January: Ana and Bea register, Ana attends. February:
Ana comes back with a new Zoom link, Cy is new; the session is moved a week
later; Ana does not attend this time. March: the session is called off.
Every letter in the outbox is accounted for: who, which step, at which run,
the session's local time, her own join link, and the calendar event.
"""

from __future__ import annotations

import email.policy
import subprocess
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest
from conftest import SHIPPED_SESSIONS, Project

SEQUENCE = "webinar-relationship-911"
TOPIC = '"Relationship 911: Helping Women Move Through The Crisis Of Betrayal"'
ZOOM = "https://healinglightcounseling.zoom.example.test/w/81234567890?tk="
REG_COLUMNS = "First Name,Last Name,Email,Registration Time,Approval Status,Join URL,Time Zone,Discreet\n"
ATT_COLUMNS = (
    "Attended,User Name (Original Name),First Name,Last Name,Email,Registration Time,Approval Status,"
    "Join Time,Leave Time,Time in Session (minutes),Is Guest,Country/Region Name\n"
)


def registration_report(generated: str, scheduled: str, rows: list[str]) -> str:
    """Zoom's registration report for one occurrence (signups/examples/zoom-registrations.csv)."""
    return (
        "Registration Report\n"
        f'Report Generated:,"{generated}"\n'
        "Topic,Webinar ID,Scheduled Time,Duration (minutes),# Registered,# Cancelled\n"
        f'{TOPIC},812 3456 7890,"{scheduled}",60,{len(rows)},0\n'
        "\n" + REG_COLUMNS + "".join(row + "\n" for row in rows)
    )


def attendee_report(generated: str, started: str, rows: list[str]) -> str:
    """Zoom's attendee report for one occurrence (signups/examples/zoom-attendees.csv)."""
    return (
        "Attendee Report\n"
        f'Report Generated:,"{generated}"\n'
        "Topic,Webinar ID,Actual Start Time,Actual Duration (minutes),# Registered,# Cancelled,"
        "Unique Viewers,Total Users,Max Concurrent Views\n"
        f'{TOPIC},812 3456 7890,"{started}",64,{len(rows)},0,1,2,1\n'
        "Host Details\n"
        "Attended,User Name (Original Name),Email,Join Time,Leave Time,Time in Session (minutes),Is Guest,"
        "Country/Region Name\n"
        f'Yes,Maya Ellis,care@healinglightcounseling.test,"{started}","{started}",60,No,United States\n'
        "Panelist Details\n"
        "Attended,User Name (Original Name),Email,Join Time,Leave Time,Time in Session (minutes),Is Guest,"
        "Country/Region Name\n"
        "Attendee Details\n" + ATT_COLUMNS + "".join(row + "\n" for row in rows)
    )


def set_sessions(project: Project, listed: str) -> None:
    """Replace the shipped session list (keeping the monthly repeat), as a practice edits it."""
    path = project.root / "sequences.yaml"
    head, sessions, rest = path.read_text().partition("    sessions:\n")
    assert sessions and "    repeat:" in rest
    path.write_text(head + sessions + listed + "    repeat:" + rest.split("    repeat:", 1)[1])


def parse(path: Path) -> EmailMessage:
    message = message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def event_of(message: EmailMessage) -> icalendar.Event | None:
    for part in message.walk():
        if part.get_filename() == "invite.ics":
            (event,) = icalendar.Calendar.from_ical(part.get_payload(decode=True)).walk("VEVENT")
            return event
    return None


def stamp(now: str) -> str:
    """The outbox file stamp of a run at `now` (2027-01-05T17:00:00Z -> 20270105T170000Z)."""
    return now.replace("-", "").replace(":", "")


@pytest.mark.long_running
def test_a_zoom_season_runs_as_cron_runs_it(
    project: Project, funnel_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # the shipped webinar: January 14 at 7 PM, then every second Thursday at 7 PM
    assert SHIPPED_SESSIONS in (project.root / "sequences.yaml").read_text()
    # (to, step, run) of every webinar letter so far, and what each must say
    expected: list[tuple[str, str, str]] = []
    seen: set[Path] = set()
    letters: dict[tuple[str, str, str], EmailMessage] = {}

    def run(now: str, *due: tuple[str, str]) -> None:
        """One cron run at `now`: exactly the webinar letters `due` (to, step) go out, stamped `now`."""
        done = funnel_process("run", "--now", now)  # the console program, as cron starts it
        assert done.returncode == 0, done.stderr
        new = sorted(set(project.outbox.glob("*.eml")) - seen) if project.outbox.exists() else []
        seen.update(new)
        got = []
        for path in new:
            when, sequence, step, _ = path.stem.split("_")
            message = parse(path)
            to = str(message["To"].addresses[0].addr_spec)
            assert when == stamp(now), (path.name, now)
            if sequence == SEQUENCE:
                got.append((to, step))
                letters[(to, step, now)] = message
        assert sorted(got) == sorted(due), now
        expected.extend((to, step, now) for to, step in due)

    def letter(to: str, step: str, now: str) -> tuple[str, icalendar.Event | None]:
        message = letters[(to, step, now)]
        return text_of(message), event_of(message)

    ana, bea, cy = "ana@example.test", "bea@example.test", "cy@example.test"
    ana_jan, ana_feb, bea_jan, cy_feb = ZOOM + "aR1-Jan", ZOOM + "aR2-Feb", ZOOM + "bB1-Jan", ZOOM + "cC1-Feb"

    # ---- January 14, 7 PM MST (02:00Z on the 15th) ----
    project.write(
        "signups/zoom-registrations.csv",
        registration_report(
            "Jan 5, 2027 09:30 AM",
            "Jan 14, 2027 07:00 PM",
            [
                f"Ana,Reyes,{ana},01/05/2027 08:40:12 AM,approved,{ana_jan},America/Denver,",
                f"Bea,Stone,{bea},01/05/2027 09:02:55 AM,approved,{bea_jan},America/Los_Angeles,",
                "Pia,Nord,pia@example.test,01/05/2027 09:10:00 AM,pending,,,",
            ],
        ),
    )
    jan_reg = "2027-01-05T17:00:00Z"
    run(jan_reg, (ana, "registered"), (bea, "registered"))
    jan_day = "2027-01-14T02:30:00Z"
    run(jan_day, (ana, "day-before"), (bea, "day-before"))
    jan_hour = "2027-01-15T01:15:00Z"
    run(jan_hour, (ana, "hour-before"), (bea, "hour-before"))
    project.write(
        "signups/zoom-attendees.csv",
        attendee_report(
            "Jan 14, 2027 09:12 PM",
            "Jan 14, 2027 06:58 PM",
            [
                f'Yes,Ana R,Ana,Reyes,{ana},"Jan 5, 2027 08:40 AM",approved,"Jan 14, 2027 06:59 PM",'
                '"Jan 14, 2027 08:01 PM",62,Yes,United States',
                f'No,Bea Stone,Bea,Stone,{bea},"Jan 5, 2027 09:02 AM",approved,--,--,--,--,--',
            ],
        ),
    )
    jan_after = "2027-01-15T16:00:00Z"  # the next morning (send window)
    run(jan_after, (ana, "thank-you"), (bea, "replay"))

    for step, now in [("registered", jan_reg), ("day-before", jan_day), ("hour-before", jan_hour)]:
        text, _ = letter(ana, step, now)
        assert "7:00" in text and ana_jan in text, (step, text)
        text, _ = letter(bea, step, now)
        assert "6:00" in text and bea_jan in text, (step, text)  # her own zone: 6 PM PST
    text, event = letter(ana, "registered", jan_reg)
    assert "January 14" in text
    assert event is not None
    assert event.decoded("dtstart").isoformat() == "2027-01-15T02:00:00+00:00"
    assert ana_jan in str(event.get("description", "")) + str(event.get("location", ""))
    jan_uid = str(event["uid"])
    assert "thank" in letter(ana, "thank-you", jan_after)[0].lower()
    assert "recording" in letter(bea, "replay", jan_after)[0].lower()
    run("2027-01-17T17:00:00Z", (ana, "consultation-invite"), (bea, "consultation-invite"))  # 9 AM in LA

    # ---- February: Ana again, with her new link; Cy is new (Feb 11, 7 PM MST = 02:00Z on the 12th) ----
    project.write(
        "signups/zoom-registrations.csv",
        registration_report(
            "Feb 1, 2027 09:30 AM",
            "Feb 11, 2027 07:00 PM",
            [
                f"Ana,Reyes,{ana},02/01/2027 08:15:00 AM,approved,{ana_feb},America/Denver,",
                f"Cy,Lund,{cy},02/01/2027 09:05:41 AM,approved,{cy_feb},America/Denver,yes",
            ],
        ),
    )
    feb_reg = "2027-02-01T17:00:00Z"
    run(feb_reg, (ana, "registered"), (cy, "registered"))
    text, event = letter(ana, "registered", feb_reg)
    assert "February 11" in text and "7:00" in text and ana_feb in text and ana_jan not in text
    assert event is not None
    assert event.decoded("dtstart").isoformat() == "2027-02-12T02:00:00+00:00"
    assert ana_feb in event.to_ical().decode().replace("\r\n ", "")
    feb_uid = str(event["uid"])
    assert feb_uid != jan_uid
    text, event = letter(cy, "registered", feb_reg)  # discreet: her link in the letter, none in the event
    assert "7:00" in text and cy_feb in text
    assert event is not None and "zoom" not in event.to_ical().decode().lower()

    # the session is moved a week later
    moved = "      - 2027-01-14 19:00\n      - start: 2027-02-18 19:00\n        was: 2027-02-11 19:00\n"
    set_sessions(project, moved)
    checked = funnel_process("check", "--now", "2027-02-03T16:00:00Z")
    assert checked.returncode == 0, checked.stderr
    feb_moved = "2027-02-03T16:00:00Z"
    run(feb_moved, (ana, "new-date"), (cy, "new-date"))
    text, event = letter(ana, "new-date", feb_moved)
    assert "February 18" in text and "7:00" in text and "February 11" in text and ana_feb in text
    assert event is not None
    assert (str(event["uid"]), int(event["sequence"])) == (feb_uid, 1)
    assert event.decoded("dtstart").isoformat() == "2027-02-19T02:00:00+00:00"
    assert str(event["status"]) == "CONFIRMED"
    text, event = letter(cy, "new-date", feb_moved)
    assert "February 18" in text and cy_feb in text
    assert event is not None and int(event["sequence"]) == 1 and "zoom" not in event.to_ical().decode().lower()

    run("2027-02-11T02:30:00Z")  # the old day before: nothing
    run("2027-02-12T01:15:00Z")  # the old hour before: nothing
    feb_day = "2027-02-18T02:30:00Z"
    run(feb_day, (ana, "day-before"), (cy, "day-before"))
    feb_hour = "2027-02-19T01:15:00Z"
    run(feb_hour, (ana, "hour-before"), (cy, "hour-before"))
    for step, now in [("day-before", feb_day), ("hour-before", feb_hour)]:
        text, _ = letter(ana, step, now)
        assert "7:00" in text and ana_feb in text and ana_jan not in text, (step, text)
        text, _ = letter(cy, step, now)
        assert "7:00" in text and cy_feb in text, (step, text)
    # February's attendee report: Cy came, Ana did not (January's attendance does not count)
    project.write(
        "signups/zoom-attendees.csv",
        attendee_report(
            "Feb 18, 2027 09:12 PM",
            "Feb 18, 2027 06:58 PM",
            [
                f'No,Ana Reyes,Ana,Reyes,{ana},"Feb 1, 2027 08:15 AM",approved,--,--,--,--,--',
                f'Yes,Cy L,Cy,Lund,{cy},"Feb 1, 2027 09:05 AM",approved,"Feb 18, 2027 07:01 PM",'
                '"Feb 18, 2027 08:00 PM",59,Yes,United States',
            ],
        ),
    )
    feb_after = "2027-02-19T16:00:00Z"
    run(feb_after, (ana, "replay"), (cy, "thank-you"))
    assert "recording" in letter(ana, "replay", feb_after)[0].lower()
    run("2027-02-21T16:00:00Z", (ana, "consultation-invite"), (cy, "consultation-invite"))

    # ---- March: Bea registers for the 11th, which is called off ----
    project.write(
        "signups/zoom-registrations.csv",
        registration_report(
            "Mar 1, 2027 09:30 AM",
            "Mar 11, 2027 07:00 PM",
            [f"Bea,Stone,{bea},03/01/2027 08:00:00 AM,approved,{ZOOM}bB2-Mar,America/Los_Angeles,"],
        ),
    )
    mar_reg = "2027-03-01T17:00:00Z"
    run(mar_reg, (bea, "registered"))
    text, event = letter(bea, "registered", mar_reg)
    assert "March 11" in text and "6:00" in text and f"{ZOOM}bB2-Mar" in text
    assert event is not None
    mar_uid = str(event["uid"])
    set_sessions(project, moved + "      - start: 2027-03-11 19:00\n        cancelled: true\n")
    mar_off = "2027-03-02T16:00:00Z"
    run(mar_off, (bea, "cancelled"))
    text, event = letter(bea, "cancelled", mar_off)
    assert "will not take place" in text and "March 11" in text
    assert event is not None
    assert (str(event["uid"]), int(event["sequence"]), str(event["status"])) == (mar_uid, 1, "CANCELLED")
    run("2027-03-11T02:30:00Z")  # no reminders for a session called off
    run("2027-03-12T01:15:00Z")

    # ---- April: Dee registers for the 8th (7 PM MDT = 01:00Z on the 9th), which is moved two days earlier ----
    dee, dee_apr = "dee@example.test", ZOOM + "dD1-Apr"
    project.write(
        "signups/zoom-registrations.csv",
        registration_report(
            "Mar 20, 2027 09:30 AM",
            "Apr 8, 2027 07:00 PM",
            [f"Dee,Moss,{dee},03/20/2027 09:00:00 AM,approved,{dee_apr},America/Denver,no"],
        ),
    )
    apr_reg = "2027-03-20T16:00:00Z"
    run(apr_reg, (dee, "registered"))
    text, event = letter(dee, "registered", apr_reg)
    assert "April 8" in text and "7:00" in text and dee_apr in text
    assert event is not None
    apr_uid = str(event["uid"])
    set_sessions(
        project,
        moved
        + "      - start: 2027-03-11 19:00\n        cancelled: true\n"
        + "      - start: 2027-04-06 19:00\n        was: 2027-04-08 19:00\n",
    )
    apr_moved = "2027-03-22T16:00:00Z"
    run(apr_moved, (dee, "new-date"))
    text, event = letter(dee, "new-date", apr_moved)
    assert "April 6" in text and "April 8" in text and "7:00" in text and dee_apr in text
    assert event is not None
    assert (str(event["uid"]), int(event["sequence"])) == (apr_uid, 1)
    assert event.decoded("dtstart").isoformat() == "2027-04-07T01:00:00+00:00"
    apr_day = "2027-04-06T01:30:00Z"
    run(apr_day, (dee, "day-before"))
    apr_hour = "2027-04-07T00:15:00Z"
    run(apr_hour, (dee, "hour-before"))
    for step, now in [("day-before", apr_day), ("hour-before", apr_hour)]:
        text, _ = letter(dee, step, now)
        assert "7:00" in text and dee_apr in text, (step, text)
    # the old day before is the evening after: only her replay (no attendee report for April)
    run("2027-04-08T01:30:00Z", (dee, "replay"))

    # everything in the outbox is one of the letters above, each once
    webinar = [(to, step) for to, sequence, step in project.sent() if sequence == SEQUENCE]
    assert sorted(webinar) == sorted((to, step) for to, step, _ in expected)
    # and the rest is the nurture that follows the webinar (`next:`), to these three only
    others = {(to, sequence) for to, sequence, _ in project.sent() if sequence != SEQUENCE}
    assert {sequence for _, sequence in others} <= {"betrayal-recovery"}
    assert {to for to, _ in others} <= {ana, bea, cy}
