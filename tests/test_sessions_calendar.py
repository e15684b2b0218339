"""A session's calendar event: its own UID, kept through a move, SEQUENCE one higher per change,
STATUS:CANCELLED for a cancellation. Read back with icalendar and with a strict RFC 5545 line reader."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from conftest import without_shipped_sessions
from icalendar import Calendar

from funnel.config import Config, load_config
from funnel.mail.invitation import invitation

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 1, 2, 16, 0, tzinfo=UTC)

SESSIONS = """    sessions:
      - 2027-01-14 18:30
      - start: 2027-02-25 18:30
        was: 2027-02-18 18:30
      - start: 2027-03-18 18:30
        cancelled: true
      - start: 2027-04-22 18:30
        was: 2027-04-15 18:30
        cancelled: true
"""


def config_with_sessions(tmp_path: Path) -> Config:
    text = without_shipped_sessions((REPO / "sequences.yaml").read_text()).replace(
        "    duration: 60m", SESSIONS + "    duration: 60m"
    )
    (tmp_path / "sequences.yaml").write_text(text)
    return load_config(tmp_path / "sequences.yaml", check_files=False)


def event(config: Config, session: str, start: datetime, person: str = "hash-of-ana") -> bytes:
    step = config.find_step("webinar-relationship-911", "registered")[1]
    (attachment,) = invitation(
        config,
        step,
        person_key=person,
        discreet=False,
        webinar_id="relationship-911",
        start=start,
        now=NOW,
        session=session,
        join_url="https://zoom.test/w/1?tk=ana",
    )
    return attachment.content


def strict_lines(content: bytes) -> list[tuple[str, dict[str, str], str]]:
    """An independent RFC 5545 reader: CRLF lines of at most 75 octets, folds unfolded, BEGIN/END matched.

    Returns (name, parameters, value) of every content line.
    """
    assert content.endswith(b"\r\n")
    raw = content.split(b"\r\n")[:-1]
    assert all(len(line) <= 75 for line in raw), "a content line longer than 75 octets"
    unfolded: list[str] = []
    for line in raw:
        assert b"\n" not in line and b"\r" not in line
        if line[:1] in (b" ", b"\t"):
            unfolded[-1] += line[1:].decode()
        else:
            unfolded.append(line.decode())
    out = []
    stack: list[str] = []
    for line in unfolded:
        head, sep, value = line.partition(":")
        assert sep, f"no ':' in {line!r}"
        name, *params = head.split(";")
        assert name and name.upper() == name, name
        pairs = dict(p.split("=", 1) for p in params)
        if name == "BEGIN":
            stack.append(value)
        elif name == "END":
            assert stack.pop() == value
        out.append((name, pairs, value))
    assert not stack
    return out


def vevent(content: bytes) -> dict[str, str]:
    lines = strict_lines(content)
    begin = lines.index(("BEGIN", {}, "VEVENT"))
    end = lines.index(("END", {}, "VEVENT"))
    props = {name: value for name, _, value in lines[begin + 1 : end]}
    for required in ("UID", "DTSTAMP", "DTSTART"):
        assert required in props
    return props


def both(content: bytes) -> tuple[dict[str, object], dict[str, str]]:
    (by_icalendar,) = Calendar.from_ical(content).walk("VEVENT")
    return by_icalendar, vevent(content)


def test_a_moved_session_keeps_its_uid_one_sequence_higher_at_the_new_time(tmp_path: Path) -> None:
    config = config_with_sessions(tmp_path)
    plain_a, plain_b = both(event(config, "2027-01-14 18:30", datetime(2027, 1, 15, 1, 30, tzinfo=UTC)))
    assert (int(plain_a["SEQUENCE"]), str(plain_a["STATUS"])) == (0, "CONFIRMED")
    assert (plain_b["SEQUENCE"], plain_b["STATUS"]) == ("0", "CONFIRMED")
    moved = event(config, "2027-02-18 18:30", datetime(2027, 2, 26, 1, 30, tzinfo=UTC))
    moved_a, moved_b = both(moved)
    assert int(moved_a["SEQUENCE"]) == 1 and moved_b["SEQUENCE"] == "1"
    assert moved_a.decoded("DTSTART") == datetime(2027, 2, 26, 1, 30, tzinfo=UTC)
    assert moved_b["DTSTART"] == "20270226T013000Z"
    assert moved_b["URL"] == "https://zoom.test/w/1?tk=ana"  # her own link
    # the UID is the session's (its first date), not its time: the first invitation for the old
    # time carried this very UID, so her calendar updates that event
    again = vevent(event(config, "2027-02-18 18:30", datetime(2027, 2, 19, 1, 30, tzinfo=UTC)))
    assert again["UID"] == moved_b["UID"]
    assert moved_b["UID"] != plain_b["UID"]  # another session: another event
    assert (
        vevent(event(config, "2027-02-18 18:30", datetime(2027, 2, 26, 1, 30, tzinfo=UTC), "bea"))["UID"]
        != (moved_b["UID"])
    )


def test_a_cancelled_session_is_a_cancelled_event(tmp_path: Path) -> None:
    config = config_with_sessions(tmp_path)
    cancelled_a, cancelled_b = both(event(config, "2027-03-18 18:30", datetime(2027, 3, 19, 0, 30, tzinfo=UTC)))
    assert (str(cancelled_a["STATUS"]), int(cancelled_a["SEQUENCE"])) == ("CANCELLED", 1)
    assert (cancelled_b["STATUS"], cancelled_b["SEQUENCE"]) == ("CANCELLED", "1")
    # moved, then cancelled: two changes
    both_a, both_b = both(event(config, "2027-04-15 18:30", datetime(2027, 4, 23, 0, 30, tzinfo=UTC)))
    assert (str(both_a["STATUS"]), int(both_a["SEQUENCE"])) == ("CANCELLED", 2)
    assert (both_b["STATUS"], both_b["SEQUENCE"]) == ("CANCELLED", "2")
