"""`funnel check` catches what is valid and renders, yet reads wrong: zones, webinar signs,
unmapped fields, renamed step ids."""

from __future__ import annotations

import re

import pytest
from conftest import Project

NOW = "2027-01-10T16:00:00Z"


def _edit(project: Project, old: str, new: str, count: int = 1) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _problems(result) -> list[str]:
    return [line for line in result.err.splitlines() if ": warning: " not in line]


def test_the_shipped_config_reads_right(project: Project, funnel) -> None:
    result = funnel("check")
    assert result.code == 0, result.err
    assert _problems(result) == []


@pytest.mark.parametrize(
    ("name", "advice"),
    [
        ("MST", "MST is a fixed offset with no summer time: write the city's zone, e.g. America/Denver"),
        ("EST", "e.g. America/New_York"),
        ("MST7MDT", "MST7MDT is a legacy zone name: write the city's zone, e.g. America/Denver"),
        ("Etc/GMT+7", "Etc/GMT+7 is a fixed offset (UTC-7 all year"),
    ],
)
def test_a_fixed_offset_zone_gets_the_city_to_write(project: Project, funnel, name: str, advice: str) -> None:
    _edit(project, "  timezone: America/Denver\n  base_url", f"  timezone: {name}\n  base_url")
    result = funnel("check")
    assert result.code == 1
    [problem] = _problems(result)
    assert re.match(r"sequences\.yaml:\d+: practice\.timezone: ", problem), problem
    assert advice in problem


def test_a_webinars_fixed_offset_zone_is_caught_too(project: Project, funnel) -> None:
    _edit(project, "    timezone: America/Denver\n    evergreen", "    timezone: EST\n    evergreen")
    [problem] = _problems(funnel("check"))
    assert "webinars.relationship-911.timezone: EST is a fixed offset" in problem


def test_a_webinar_offset_with_the_wrong_sign_for_its_place(project: Project, funnel) -> None:
    _edit(project, "webinar: -1d", "webinar: +1d")  # day-before, placed before hour-before (-1h)
    result = funnel("check")
    assert result.code == 1
    [problem] = _problems(result)
    line = (project.root / "sequences.yaml").read_text().splitlines().index("        webinar: +1d") + 1
    assert problem.startswith(f"sequences.yaml:{line}: step 'day-before' in webinar-relationship-911: ")
    assert "webinar: +1d means after the webinar starts" in problem
    assert "it stands before 'hour-before' (webinar: -1h): did you mean webinar: -1d?" in problem


def test_a_before_step_timed_after_the_webinar_is_caught_by_its_id(project: Project, funnel) -> None:
    _edit(project, "webinar: -1h", "webinar: +1h")  # hour-before between -1d and +3h: in order, yet "before"
    [problem] = _problems(funnel("check"))
    assert "step 'hour-before'" in problem and "its id 'hour-before' says before: did you mean webinar: -1h?" in problem


def test_a_field_no_source_of_the_sequence_maps(project: Project, funnel) -> None:
    letter = project.root / "email_templates" / "webinar" / "replay.md"
    lines = letter.read_text().rstrip("\n").split("\n")
    letter.write_text("\n".join([*lines, "", "{% if contact.fields.get('message') %}You wrote to us.{% endif %}"]))
    result = funnel("check")
    assert result.code == 1
    [problem] = _problems(result)
    assert problem.startswith(f"email_templates/webinar/replay.md:{len(lines) + 2}: contact.fields.message: ")
    assert "no source of webinar-relationship-911 maps 'message' (its sources: webinar-registrations" in problem
    # the consultation letters use it too, and their form maps it: nothing said about them
    assert "consultation/" not in result.err


def test_a_field_in_a_subject_names_the_yaml_line(project: Project, funnel) -> None:
    _edit(project, 'subject: "Starting in an hour"', 'subject: "Starting in an hour{{ contact.fields.message }}"')
    [problem] = _problems(funnel("check"))
    assert re.match(r"sequences\.yaml:\d+: contact\.fields\.message: no source of webinar-relationship-911", problem)


def test_a_renamed_step_id_points_at_the_rule(project: Project, funnel) -> None:
    before = set((project.root).iterdir())
    assert funnel("check").code == 0
    assert set(project.root.iterdir()) == before  # no database made by a check
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\nana@example.test,Ana,,2027-01-14 19:00,,\n",
    )
    assert funnel("run", "--now", NOW).code == 0
    _edit(project, "      - id: day-before\n", "      - id: reminder-day-before\n")
    result = funnel("check")
    assert result.code == 1
    [problem] = _problems(result)
    assert re.match(r"sequences\.yaml:\d+: step 'reminder-day-before' in webinar-relationship-911 ", problem)
    assert "looks like 'day-before' renamed (the last run had 'day-before' with the same template)" in problem
    assert "Put back id: day-before, and change its subject or template instead" in problem
    # a new step with a template of its own is simply new
    _edit(project, "      - id: reminder-day-before\n", "      - id: day-before\n")
    _edit(project, "template: webinar/hour-before.md", "template: webinar/day-before.md")
    _edit(project, "      - id: hour-before\n", "      - id: soon\n")
    assert not [p for p in _problems(funnel("check")) if "renamed" in p]


def test_a_zone_abbreviation_that_is_no_zone_name_gets_its_city(project: Project, funnel) -> None:
    _edit(project, "  timezone: America/Denver\n  base_url", "  timezone: PST\n  base_url")
    result = funnel("check")
    assert result.code == 1
    assert "'PST' is not a known timezone: use an IANA name such as America/Los_Angeles" in result.err


def test_an_after_step_timed_before_the_webinar_names_the_step_it_follows(project: Project, funnel) -> None:
    _edit(project, "      - id: replay\n        webinar: +3h\n", "      - id: replay\n        webinar: -3h\n")
    [problem] = _problems(funnel("check"))
    assert "step 'replay' in webinar-relationship-911: webinar: -3h means before the webinar starts" in problem
    assert "it stands after 'hour-before' (webinar: -1h): did you mean webinar: +3h?" in problem
