"""The calendar invitation (funnel.mail.invitation): one VEVENT, decoded again with icalendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from icalendar import Calendar

from funnel.config import Config, Step, load_config
from funnel.mail.invitation import event_uid, invitation

REPO = Path(__file__).resolve().parent.parent
START = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)  # 2027-01-14 19:00 in Denver
NOW = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "sequences.yaml")


def registered(config: Config) -> Step:
    return config.find_step("webinar-relationship-911", "registered")[1]


def event_of(content: bytes) -> tuple[Calendar, dict[str, object]]:
    calendar = Calendar.from_ical(content)
    events = calendar.walk("VEVENT")
    assert len(events) == 1
    return calendar, events[0]


def make(config: Config, *, person: str = "hash-of-ana", discreet: bool = False, start: datetime | None = START):
    return invitation(
        config,
        registered(config),
        person_key=person,
        discreet=discreet,
        webinar_id="relationship-911",
        start=start,
        now=NOW,
    )


def test_the_invitation_is_one_published_event_in_utc_with_the_join_link(config: Config) -> None:
    (attachment,) = make(config)
    assert (attachment.filename, attachment.content_type) == ("invite.ics", "text/calendar")
    assert ("method", "PUBLISH") in attachment.params
    calendar, event = event_of(attachment.content)
    assert str(calendar["METHOD"]) == "PUBLISH" and str(calendar["VERSION"]) == "2.0"
    assert event.decoded("DTSTART") == START
    assert b"DTSTART:20270115T020000Z" in attachment.content  # written in UTC, no zone to resolve
    assert event.decoded("DTEND") - event.decoded("DTSTART") == timedelta(minutes=60)  # webinars...duration
    assert event.decoded("DTSTAMP") == NOW
    join = config.webinars["relationship-911"].join_url
    assert str(event["URL"]) == join and str(event["LOCATION"]) == join
    # the quiet title on lock screens; the full title only inside, in the description
    assert str(event["SUMMARY"]) == config.webinars["relationship-911"].event_title
    assert join in str(event["DESCRIPTION"])
    assert config.webinars["relationship-911"].title in str(event["DESCRIPTION"])
    # a published event, not an organizer's invitation: nobody is asked to answer
    assert "ORGANIZER" not in event and "ATTENDEE" not in event


def test_the_uid_is_stable_per_person_and_webinar_and_holds_no_personal_data(config: Config) -> None:
    uid = str(event_of(make(config)[0].content)[1]["UID"])
    assert uid == str(event_of(make(config, start=START + timedelta(days=7))[0].content)[1]["UID"])
    assert uid != str(event_of(make(config, person="hash-of-beth")[0].content)[1]["UID"])
    assert uid == event_uid("hash-of-ana", "relationship-911", "healinglightcounseling.test")
    assert uid != event_uid("hash-of-ana", "another-webinar", "healinglightcounseling.test")
    local, _, domain = uid.partition("@")
    assert len(local) == 32 and int(local, 16) >= 0 and domain == "healinglightcounseling.test"
    assert "hash-of-ana" not in uid


def test_a_discreet_reader_gets_a_neutral_event(config: Config) -> None:
    (attachment,) = make(config, discreet=True)
    _calendar, event = event_of(attachment.content)
    assert str(event["SUMMARY"]) == "Appointment"  # practice.discreet_event_title
    join = config.webinars["relationship-911"].join_url
    assert str(event["DESCRIPTION"]) == "Your link is in the email."  # the link may name the subject
    assert "URL" not in event and "LOCATION" not in event
    unfolded = attachment.content.decode().replace("\r\n ", "")
    assert join not in unfolded and "http" not in unfolded
    for revealing in ("Relationship 911", "Betrayal", config.practice.name):
        assert revealing.lower() not in unfolded.lower()


def test_the_duration_comes_from_the_webinar(config: Config) -> None:
    webinar = config.webinars["relationship-911"].model_copy(update={"duration": config.delivery.min_gap})
    longer = config.model_copy(update={"webinars": {"relationship-911": webinar}})
    _calendar, event = event_of(make(longer)[0].content)
    assert event.decoded("DTEND") - event.decoded("DTSTART") == timedelta(hours=20)


def test_no_invitation_without_calendar_true_or_without_a_start(config: Config) -> None:
    assert make(config, start=None) == ()
    day_before = config.find_step("webinar-relationship-911", "day-before")[1]
    assert not day_before.calendar
    found = invitation(
        config, day_before, person_key="x", discreet=False, webinar_id="relationship-911", start=START, now=NOW
    )
    assert found == ()
    assert (
        invitation(config, registered(config), person_key="x", discreet=False, webinar_id=None, start=START, now=NOW)
        == ()
    )


def test_a_discreet_event_keeps_the_link_out_of_its_location(config: Config) -> None:
    """Calendars show LOCATION in week views, list views and lock-screen alerts ("Appointment at
    https://.../webinar/relationship-911/join"): for a discreet reader the link stays in the email."""
    (attachment,) = make(config, discreet=True)
    _calendar, event = event_of(attachment.content)
    assert "LOCATION" not in event
    (plain,) = make(config)
    assert str(event_of(plain.content)[1]["LOCATION"]) == config.webinars["relationship-911"].join_url


@pytest.mark.parametrize(
    "domain",
    [
        "practice.example",
        "a" * 38 + ".example",  # the UID line folds (after the digest, which starts every UID line)
        "b" * 150 + ".example",  # folds twice
        "x.example,with;odd\\chars",  # escaped: no stand-in found as written, written for each person
    ],
)
def test_an_event_written_once_per_webinar_is_the_event_written_for_each_person(domain: str) -> None:
    """`_event_for` writes the file once with a stand-in UID and puts each person's in; it must be
    byte for byte what icalendar writes for her, however the UID line folds."""
    from funnel.mail.invitation import _event_for, webinar_event

    for discreet in (False, True):
        event = {
            "title": "Relationship 911" if not discreet else "Appointment",
            "start": START,
            "length": timedelta(minutes=75),
            "join_url": "https://zoom.example/j/123",
            "description": "" if discreet else "Relationship 911\n\nJoin: https://zoom.example/j/123",
            "now": NOW,
            "location": not discreet,
        }
        for person in ("hash-of-ana", "hash-of-bea", "hash-of-cleo"):
            uid = event_uid(person, "relationship-911", domain)
            assert _event_for(uid, **event) == webinar_event(uid=uid, **event), (domain, person, discreet)
        assert _event_for("not-a-digest@" + domain, **event) == webinar_event(uid="not-a-digest@" + domain, **event)
