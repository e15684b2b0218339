"""`funnel contacts list` (who is where, with filters and search) and `contacts pause` / `resume`."""

from __future__ import annotations

from conftest import Project

NOW = "2027-01-10T16:00:00Z"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
PEOPLE = (
    "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n"
    "beth@example.test,Beth,Nguyen,2027-01-14 19:00,America/New_York,\n"
    "carla@example.test,Carla,Mendes,2027-01-14 19:00,America/Los_Angeles,yes\n"
)


def _three(project: Project, funnel) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel("run", "--now", NOW).code == 0


def _emails(result) -> list[str]:
    assert result.code == 0, result.err
    return [person["email"] for person in result.json()]


def test_list_shows_everyone_with_where_they_are(project: Project, funnel) -> None:
    _three(project, funnel)
    people = funnel("contacts", "list", "--json").json()
    assert [p["email"] for p in people] == ["ana@example.test", "beth@example.test", "carla@example.test"]
    ana = people[0]
    assert ana["first_name"] == "Ana" and ana["tags"] == ["webinar-registered"]
    assert ana["unsubscribed"] is False and ana["suppressed"] is False
    [enrollment] = ana["enrollments"]
    assert enrollment["sequence"] == "webinar-relationship-911" and enrollment["status"] == "active"
    assert enrollment["last_sent"] == "registered"
    assert enrollment["last_sent_at"] == NOW  # JSON stays UTC
    assert people[2]["discreet"] is True


def test_terminal_times_are_in_the_practice_zone_with_the_zone_named(project: Project, funnel) -> None:
    _three(project, funnel)
    plain = funnel("contacts", "list")
    assert plain.code == 0
    assert "times in America/Denver" in plain.out
    assert "Sun 10 Jan 2027 09:00 MST" in plain.out  # 16:00 UTC in Denver
    assert "3 people" in plain.out
    utc = funnel("contacts", "list", "--utc")
    assert "times in UTC" in utc.out and "Sun 10 Jan 2027 16:00 UTC" in utc.out


def test_search_looks_in_address_and_names_in_any_case(project: Project, funnel) -> None:
    _three(project, funnel)
    assert _emails(funnel("contacts", "list", "--search", "REYES", "--json")) == ["ana@example.test"]
    assert _emails(funnel("contacts", "list", "--search", "beth@", "--json")) == ["beth@example.test"]
    assert _emails(funnel("contacts", "list", "--search", "carla", "--json")) == ["carla@example.test"]
    # a LIKE wildcard is a character like any other
    assert _emails(funnel("contacts", "list", "--search", "%", "--json")) == []
    assert _emails(funnel("contacts", "list", "--search", "_", "--json")) == []
    assert funnel("contacts", "list", "--search", "nobody").out.strip() == "nobody matches"


def test_tag_sequence_and_status_filters_combine(project: Project, funnel) -> None:
    _three(project, funnel)
    assert funnel("contacts", "tag", "beth@example.test", "client", "--now", NOW).code == 0
    assert _emails(funnel("contacts", "list", "--tag", "client", "--json")) == ["beth@example.test"]
    assert _emails(funnel("contacts", "list", "--tag", "webinar-registered", "--json")) == [
        "ana@example.test",
        "beth@example.test",
        "carla@example.test",
    ]
    assert _emails(funnel("contacts", "list", "--sequence", "consultation", "--json")) == []
    assert funnel("contacts", "unsubscribe", "carla@example.test", "--now", NOW).code == 0
    assert _emails(funnel("contacts", "list", "--status", "unsubscribed", "--json")) == ["carla@example.test"]
    active = funnel("contacts", "list", "--status", "active", "--sequence", "webinar-relationship-911", "--json")
    assert _emails(active) == ["ana@example.test", "beth@example.test"]
    both = funnel("contacts", "list", "--status", "active", "--tag", "client", "--json")
    assert _emails(both) == ["beth@example.test"]
    # an undone unsubscribe is no longer one
    assert funnel("contacts", "resubscribe", "carla@example.test", "--now", NOW).code == 0
    assert _emails(funnel("contacts", "list", "--status", "unsubscribed", "--json")) == []


def test_an_unknown_sequence_or_status_is_a_usage_error(project: Project, funnel) -> None:
    _three(project, funnel)
    wrong = funnel("contacts", "list", "--sequence", "consultaton")
    assert wrong.code == 2 and "consultaton" in wrong.err and "consultation" in wrong.err
    assert funnel("contacts", "list", "--status", "sleeping").code == 2


def test_erased_people_are_not_listed(project: Project, funnel) -> None:
    _three(project, funnel)
    assert funnel("contacts", "forget", "ana@example.test", "--now", NOW).code == 0
    assert _emails(funnel("contacts", "list", "--json")) == ["beth@example.test", "carla@example.test"]


def test_pause_by_hand_stops_her_letters_until_resume(project: Project, funnel) -> None:
    _three(project, funnel)
    paused = funnel("contacts", "pause", "ana@example.test", "--now", NOW)
    assert paused.code == 0 and "paused 1 sequence" in paused.out
    assert funnel("contacts", "pause", "ana@example.test", "--now", NOW).out.strip().endswith("nothing to pause")
    assert _emails(funnel("contacts", "list", "--status", "paused", "--json")) == ["ana@example.test"]
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert shown["enrollments"][0]["status"] == "paused"
    assert shown["enrollments"][0]["reason"] == "paused by hand"
    listed = funnel("contacts", "list", "--search", "ana", "--json").json()
    assert listed[0]["enrollments"][0]["reason"] == "paused by hand"
    # the day-before reminder is due on the 13th at 19:00 Denver: she does not get it while paused
    assert funnel("run", "--now", "2027-01-14T02:30:00Z").code == 0
    day_before = [s for s in project.sent() if s[2] == "day-before"]
    assert {s[0] for s in day_before} == {"beth@example.test", "carla@example.test"}
    resumed = funnel("contacts", "resume", "ana@example.test", "--now", "2027-01-14T02:40:00Z")
    assert resumed.code == 0 and "resumed 1" in resumed.out
    assert funnel("run", "--now", "2027-01-14T02:45:00Z").code == 0
    assert ("ana@example.test", "webinar-relationship-911", "day-before") in project.sent()


def test_pause_of_an_unknown_address_exits_1(project: Project, funnel) -> None:
    _three(project, funnel)
    missing = funnel("contacts", "pause", "nobody@example.test", "--now", NOW)
    assert missing.code == 1 and "no contact" in missing.err
