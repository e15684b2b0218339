"""`funnel check` says what reads wrong in the author's words: "did you mean", straight quotes,
never an internal class name; `practice.details` holds the practice's own facts for the letters."""

from __future__ import annotations

import re

import pytest
from conftest import Project

LETTER = "email_templates/consultation/received.md"


def _with_line(project: Project, line: str) -> int:
    """Append `line` to a shipped letter; its line number."""
    path = project.root / LETTER
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "\n" + line + "\n")
    return text.count("\n") + 2


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("{{ contact.frist_name }}", "contact.frist_name does not exist: did you mean contact.first_name?"),
        ("{{ first_name }}", "'first_name' is undefined on its own: did you mean contact.first_name?"),
        ("{{ webinar.start | format_dat }}", "there is no filter 'format_dat': did you mean format_date?"),
        ("{{ practice.adress }}", "practice.adress does not exist: did you mean practice.postal_address?"),
        (
            "{{ practice.links.webinar }}",
            "practice.links.webinar: there is no link named 'webinar' under practice.links "
            "(the links: consultation, services, individual, couples, intensive, group, website)",
        ),
        ("{{ practice.links.consultaton }}", "did you mean practice.links.consultation?"),
        (
            "{{ contact.first_name or ‘friend’ }}",
            "a curly quote ‘ inside {{ }} or {% %}: use straight quotes ' or \"",
        ),
        ("{% if contact.first_name == “Ana” %}x{% endif %}", "a curly quote “ inside"),
        ("{{ contact.fields.mesage }}", "did you mean contact.fields.message?"),
    ],
)
def test_a_mistake_in_a_letter_gets_did_you_mean(project: Project, funnel, line: str, said: str) -> None:
    number = _with_line(project, line)
    result = funnel("check")
    assert result.code == 1
    problems = [p for p in result.err.splitlines() if "warning" not in p]
    assert len(problems) == 1, result.err
    assert problems[0].startswith(f"{LETTER}:{number}: "), problems[0]
    assert said in problems[0]


@pytest.mark.parametrize(
    "line",
    ["{{ contact.nickname }}", "{{ practice.details.fax }}", "{{ contact.fields.x.y }}", "{{ webinar.nope }}"],
)
def test_template_errors_never_name_internal_classes(project: Project, funnel, line: str) -> None:
    _with_line(project, line)
    result = funnel("check")
    assert result.code == 1
    assert not re.search(r"funnel\.|TemplateContact|Practice object|dict object|<class|Error\b", result.err)


def test_a_subject_with_curly_quotes_says_use_straight_quotes(project: Project, funnel) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text()
    shipped = "Your place is saved{% if contact.first_name %}, {{ contact.first_name }}{% endif %}"
    assert shipped in text
    path.write_text(text.replace(shipped, "Your place is saved, {{ contact.first_name or ‘friend’ }}", 1))
    result = funnel("check")
    assert result.code == 1
    assert re.search(r"sequences\.yaml:\d+: subject of step .*: a curly quote ‘ .*use straight quotes", result.err)


def test_practice_details_are_the_practices_own_facts_for_the_letters(project: Project, funnel) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text()
    path.write_text(
        text.replace(
            "  links:\n",
            '  details:\n    phone: "(970) 555-0142"\n    office_hours: "Tuesday to Friday, 9 to 5"\n  links:\n',
            1,
        )
    )
    _with_line(project, "Call {{ practice.details.phone }} ({{ practice.details.office_hours }}).")
    assert funnel("check").code == 0
    preview = funnel("preview", "consultation", "received", "--out", "preview")
    assert preview.code == 0, preview.err
    letter = (project.root / "preview" / "consultation--received.txt").read_text()
    assert "Call (970) 555-0142 (Tuesday to Friday, 9 to 5)." in letter
    _with_line(project, "{{ practice.details.phon }}")
    result = funnel("check")
    assert result.code == 1
    assert (
        "practice.details has no 'phon' (the details: phone, office_hours): did you mean practice.details.phone?"
        in (result.err)
    )
