"""End to end with webinar sessions: the real `funnel run` as cron would run it, over January and February.

The registration export has no start column (Zoom's has none): each registrant
joins the next session after she signed up. Ana comes in January, attends,
comes back for February and does not attend: she gets February's confirmation
and reminders again, and February's replay (not a second thank-you).
"""

from __future__ import annotations

import email.policy
import subprocess
from collections import Counter
from collections.abc import Callable
from email import message_from_bytes

import pytest
from conftest import Project, without_shipped_sessions

SEQUENCE = "webinar-relationship-911"
HEADER = "Email,First Name,Last Name,Time Zone\n"


def with_sessions(project: Project) -> None:
    """The shipped sequences.yaml with the monthly sessions and a registration export without a start column."""
    path = project.root / "sequences.yaml"
    text = path.read_text()
    assert "      webinar_start: Webinar Start" in text
    text = text.replace("      webinar_start: Webinar Start", "      # no start column: the sessions below")
    text = without_shipped_sessions(text).replace(
        "    duration: 60m",
        "    sessions: ['2027-01-14 18:30']\n"
        '    repeat: "FREQ=MONTHLY;BYDAY=3TH"\n'
        '    repeat_at: "18:30"\n'
        "    duration: 60m",
    )
    # the attendance source belongs to the webinar (shipped so): attendance is per session
    assert "    tags: [webinar-attended]" in text and "    webinar: relationship-911\n" in text
    path.write_text(text)


def bodies(project: Project, to: str, step: str) -> list[str]:
    """The plain-text bodies of every `step` email to `to`, oldest first."""
    out = []
    for path in sorted(project.outbox.glob(f"*_{SEQUENCE}_{step}_*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[arg-type]
        if message["To"].addresses[0].addr_spec == to:
            part = message.get_body(preferencelist=("plain",))
            assert part is not None
            out.append(part.get_content())
    return out


def test_a_returning_registrant_gets_februarys_letters_and_attendance_is_per_session(
    project: Project, funnel_process: Callable[..., subprocess.CompletedProcess[str]], funnel
) -> None:
    with_sessions(project)
    check = funnel_process("check", "--now", "2027-01-01T00:00:00Z")
    assert check.returncode == 0, check.stderr

    def run(now: str) -> None:
        done = funnel_process("run", "--now", now)
        assert done.returncode == 0, done.stderr

    project.write(
        "signups/webinar-registrations.csv",
        HEADER + "ana@example.test,Ana,Reyes,America/Denver\nbea@example.test,Bea,,America/Denver\n",
    )
    project.write("signups/webinar-attendance.csv", "Email,Attended\n")
    run("2027-01-05T17:00:00Z")  # both join January 14's session (the next after they signed up)
    run("2027-01-14T02:00:00Z")  # day before
    run("2027-01-15T00:45:00Z")  # hour before
    project.write("signups/webinar-attendance.csv", "Email,Attended\nana@example.test,Yes\nbea@example.test,No\n")
    run("2027-01-15T04:00:00Z")  # attendance read: January's session
    run("2027-01-15T16:00:00Z")  # thank-you / replay, next morning in Denver
    january = Counter(step for to, seq, step in project.sent() if seq == SEQUENCE and to == "ana@example.test")
    assert january == Counter({"registered": 1, "day-before": 1, "hour-before": 1, "thank-you": 1})

    # February: Ana registers again (the export grows); Bea does not
    project.append("signups/webinar-registrations.csv", "ana@example.test,Ana,Reyes,America/Denver\n")
    run("2027-02-01T17:00:00Z")
    run("2027-02-18T02:00:00Z")
    run("2027-02-19T00:45:00Z")
    # February's attendance report: Ana did not come this time
    project.write("signups/webinar-attendance.csv", "Email,Attended\nana@example.test,No\n")
    run("2027-02-19T04:00:00Z")
    run("2027-02-19T16:00:00Z")

    sent = project.sent()
    ana = Counter(step for to, seq, step in sent if seq == SEQUENCE and to == "ana@example.test")
    assert ana == Counter({"registered": 2, "day-before": 2, "hour-before": 2, "thank-you": 1, "replay": 1}), (
        "February's replay depends on February alone"
    )
    bea = Counter(step for to, seq, step in sent if seq == SEQUENCE and to == "bea@example.test")
    assert bea == Counter({"registered": 1, "day-before": 1, "hour-before": 1, "replay": 1})
    confirmations = bodies(project, "ana@example.test", "registered")
    assert "January 14" in confirmations[0] and "6:30" in confirmations[0]
    assert "February 18" in confirmations[1] and "6:30" in confirmations[1]
    # the nurture that follows the webinar is entered once, whichever session led there
    assert sum(1 for to, seq, step in sent if to == "ana@example.test" and step == "what-you-feel") <= 1

    shown = funnel("contacts", "show", "ana@example.test", "--json")
    assert shown.code == 0, shown.err
    webinar = [e for e in shown.json()["enrollments"] if e["sequence"] == SEQUENCE]
    assert [e["session"] for e in webinar] == ["2027-01-14 18:30", "2027-02-18 18:30"]
    assert "webinar-attended" in shown.json()["tags"]  # the contact keeps it, for other sequences
    report = funnel("report", "--json")
    assert report.code == 0, report.err
    forgotten = funnel("contacts", "forget", "ana@example.test")
    assert forgotten.code == 0, forgotten.err
    assert funnel("run", "--now", "2027-02-20T16:00:00Z").code == 0


@pytest.mark.parametrize(
    ("second_at", "moved"),
    [
        ("2027-01-10T17:00:00Z", True),  # January is still ahead: she is moved, not enrolled twice
        ("2027-01-05T18:00:00Z", False),  # the same session again: nothing changes
    ],
)
def test_another_session_while_hers_is_ahead_moves_her(project: Project, funnel, second_at: str, moved: bool) -> None:
    path = project.root / "sequences.yaml"
    path.write_text(
        without_shipped_sessions(path.read_text()).replace(
            "    duration: 60m", "    sessions: ['2027-01-14 19:00', '2027-01-21 19:00']\n    duration: 60m"
        )
    )
    header = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
    project.write("signups/webinar-registrations.csv", header + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    assert funnel("run", "--now", "2027-01-05T17:00:00Z").code == 0
    start = "2027-01-21 19:00" if moved else "2027-01-14 19:00"
    project.append("signups/webinar-registrations.csv", f"ana@example.test,Ana,,{start},,\n")
    done = funnel("run", "--now", second_at, "--json")
    assert done.code == 0, done.err
    summary = done.json()
    assert summary["enrolled"] == 0
    enrollments = [e for e in funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"]]
    assert [e["session"] for e in enrollments] == [start]
    assert [to for to, seq, step in project.sent() if step == "registered"] == ["ana@example.test"]
