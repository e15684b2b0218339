"""`Renderer` errors: each names the file and line (or sequences.yaml's) and what to do; `funnel check` finds them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from render_project import LAYOUT_HTML, LAYOUT_TXT, NOW, REPO, UNSUB, YAML, load_project, render, webinar

from funnel.config import load_config
from funnel.errors import TemplateError
from funnel.mail.preview import check, sample_unsubscribe_url
from funnel.mail.render import (
    EmptyValueError,
    MissingData,
    Renderer,
    TemplateContact,
    TemplateWebinar,
    format_date,
    format_time,
)


def test_undefined_variable_names_the_template_file_and_line(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "Line one.\n\nHi {{ contact.nickname }}!\n"})
    renderer = Renderer(config)  # compiles fine: the mistake shows when rendering
    with pytest.raises(TemplateError) as info:
        render(config, "reminder", renderer=renderer)
    message = str(info.value)
    assert message.startswith("email_templates/reminder.md:3: ")
    assert "nickname" in message
    assert "define it" in message


def test_undefined_top_level_variable(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "{{ practice.name }}\n{{ coupon_code }}\n"})
    with pytest.raises(TemplateError) as info:
        render(config, "reminder")
    assert str(info.value).startswith("email_templates/reminder.md:2: ")
    assert "'coupon_code' is undefined" in str(info.value)


def test_undefined_contact_field(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "From {{ contact.fields.city }}\n"})
    contact = TemplateContact(email="x@example.test", fields={"city": "Boulder"})
    assert render(config, "reminder", contact=contact).text.startswith("From Boulder\n")
    with pytest.raises(TemplateError) as info:
        render(config, "reminder", contact=TemplateContact(email="x@example.test"))
    assert str(info.value).startswith("email_templates/reminder.md:1: ")
    assert "city" in str(info.value)


def test_undefined_variable_in_the_layout(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"layout.html": "<p>\n{{ content }}\n{{ practice.phone }}</p>\n"})
    with pytest.raises(TemplateError) as info:
        render(config)
    assert str(info.value).startswith("email_templates/layout.html:3: ")
    assert "phone" in str(info.value)


def test_undefined_variable_in_a_subject(tmp_path: Path) -> None:
    config = load_project(tmp_path, yaml=YAML.replace('subject: "A page"', 'subject: "A {{ contact.nick }}"'))
    with pytest.raises(TemplateError) as info:
        render(config, "page")
    assert "subject" in str(info.value)
    assert "nick" in str(info.value)


def test_subject_syntax_error_is_reported_at_construction(tmp_path: Path) -> None:
    config = load_project(tmp_path, yaml=YAML.replace('subject: "A page"', 'subject: "A {{ page"'))
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert "sequences.yaml" in str(info.value)
    assert "'page'" in str(info.value)


def test_jinja_syntax_error_is_reported_with_file_and_line_at_construction(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "One.\n\n{% if contact.first_name %}\nHi\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    message = str(info.value)
    assert message.startswith("email_templates/reminder.md:")
    assert "endif" in message


def test_jinja_syntax_error_line(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "One.\n\nTwo.\n\n{{ contact.first_name + }}\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith("email_templates/reminder.md:5: ")


def test_syntax_errors_in_several_templates_are_all_reported(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"hello.md": "{{ x +}}\n", "reminder.md": "\n{% for %}\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert "email_templates/hello.md:1: " in str(info.value)
    assert "email_templates/reminder.md:2: " in str(info.value)


def test_layout_syntax_error(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"layout.html": "<p>\n{{ content }}\n{% for %}</p>\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith("email_templates/layout.html:3: ")


def test_check_passes_for_the_shipped_project() -> None:
    config = load_config(REPO / "sequences.yaml")
    assert check(config, NOW) == []


def test_check_passes_for_the_minimal_project(tmp_path: Path) -> None:
    assert check(load_project(tmp_path), NOW) == []


def test_check_reports_a_layout_without_unsubscribe_url(tmp_path: Path) -> None:
    layout = LAYOUT_HTML.replace('<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n', "")
    config = load_project(tmp_path, templates={"layout.html": layout})
    problems = check(config, NOW)
    assert problems
    assert all(p.startswith("email_templates/layout.html") for p in problems), problems
    assert all("no unsubscribe link" in p and "{{ unsubscribe_url }}" in p for p in problems)
    assert all("HTML part" in p for p in problems)
    assert any("welcome/hello" in p for p in problems)


def test_check_reports_a_text_layout_without_the_postal_address(tmp_path: Path) -> None:
    config = load_project(
        tmp_path,
        templates={"layout.txt": LAYOUT_TXT.replace("{{ practice.postal_address }}\n", "")},
    )
    problems = check(config, NOW)
    assert problems
    assert any(
        "plain-text part has no postal address" in p and "{{ practice.postal_address }}" in p for p in problems
    ), problems
    assert not any("unsubscribe" in p for p in problems)
    assert any(p.startswith("email_templates/layout.txt") for p in problems)


def test_check_reports_undefined_variables_with_file_and_line(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "Hi.\n\n{{ webinar.zoom_link }}\n"})
    problems = check(config, NOW)
    assert len(problems) == 1, problems
    assert problems[0].startswith("email_templates/reminder.md:3: ")


def test_check_reports_syntax_errors(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"hello.md": "{{ x +}}\n", "reminder.md": "\n{% for %}\n"})
    problems = check(config, NOW)
    assert len(problems) == 2, problems
    assert problems[0].startswith("email_templates/hello.md:1: ")
    assert problems[1].startswith("email_templates/reminder.md:2: ")


def test_check_uses_fields_the_sources_map(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "From {{ contact.fields.city or 'afar' }}.\n"})
    assert check(config, NOW) == []
    assert sample_unsubscribe_url(config) == "https://mail.practice.test/u/sample-token"


def test_a_mistake_in_a_subject_names_the_yaml_line(tmp_path: Path) -> None:
    shutil.copytree(REPO / "email_templates", tmp_path / "email_templates")
    text = (REPO / "sequences.yaml").read_text()
    text = text.replace('subject: "Your message arrived safely"', 'subject: "Arrived {{ contact.nickname }}"')
    (tmp_path / "sequences.yaml").write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "contact.nickname" in row)
    config = load_config(tmp_path / "sequences.yaml")
    problems = check(config, datetime(2027, 1, 1, tzinfo=UTC))
    assert any(p.startswith(f"sequences.yaml:{line}: subject of step 'received'") for p in problems), problems
    broken = text.replace("{{ contact.nickname }}", "{{ contact.first_name")
    (tmp_path / "sequences.yaml").write_text(broken)
    with pytest.raises(TemplateError, match=rf"^sequences.yaml:{line}: subject of step 'received'"):
        Renderer(load_config(tmp_path / "sequences.yaml"))


ESCAPES = [
    "{{ cycler.__init__.__globals__.os.environ.SENDGRID_API_KEY }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ contact.__class__.__init__.__globals__ }}",
    "{{ practice.__class__.__module__ }}",
]


@pytest.mark.parametrize("expression", ESCAPES)
def test_templates_cannot_reach_python_internals(
    tmp_path: Path, expression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 6 item 12: the sandbox refuses; `check` names the file and line; nothing is rendered."""
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.the-real-key")
    config = load_project(tmp_path, templates={"hello.md": f"Hi.\n\n{expression}\n"})
    with pytest.raises(TemplateError) as info:
        render(config)
    assert "SG.the-real-key" not in str(info.value)
    problems = check(config, NOW)
    assert len(problems) == 1, problems
    assert problems[0].startswith("email_templates/hello.md:3: ")
    assert "Python internals" in problems[0]


@pytest.mark.parametrize("expression", ESCAPES[:2])
def test_subjects_cannot_reach_python_internals(
    tmp_path: Path, expression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.the-real-key")
    yaml = YAML.replace('subject: "A page"', f'subject: "Key {expression}"')
    config = load_project(tmp_path, yaml=yaml)
    with pytest.raises(TemplateError, match="Python internals"):
        render(config, "page")
    problems = check(config, NOW)
    line = next(i for i, row in enumerate(yaml.splitlines(), 1) if 'subject: "Key' in row)
    assert [p.split(": subject")[0] for p in problems] == [f"sequences.yaml:{line}"], problems


@pytest.mark.parametrize(
    ("template", "name", "line"),
    [
        ("Hi.\n\nYou wrote: {{ contact.fields.city }}\n", "contact.fields.city", 3),
        ("Dear {{ contact.first_name }},\n", "contact.first_name", 1),
        ("{{ contact.first_name|upper }}\n", "contact.first_name", 1),
        ("{{ contact.last_name }}\n", "contact.last_name", 1),
        ("Reply to {{ practice.reply_to }}\n", None, 1),
    ],
)
def test_check_catches_a_value_that_is_blank_for_some_people(
    tmp_path: Path, template: str, name: str | None, line: int
) -> None:
    """Issue 6 item 11: a bare optional value is reported before a real person meets a blank."""
    config = load_project(tmp_path, templates={"reminder.md": template})
    problems = check(config, NOW)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"email_templates/reminder.md:{line}: ")
    assert name is None or f"{name} is empty" in problems[0]
    assert "or ''" in problems[0] and "{% if" in problems[0]


@pytest.mark.parametrize(
    "template",
    [
        "You wrote: {{ contact.fields.city or '' }}\n",
        "{% if contact.fields.city %}You wrote: {{ contact.fields.city }}{% endif %}\n",
        "Dear {{ contact.first_name or 'friend' }} {{ contact.last_name or '' }},\n",
        "{% if contact.first_name %}{{ contact.first_name|upper }}{% endif %}\n",
    ],
)
def test_guarded_optional_values_pass_check(tmp_path: Path, template: str) -> None:
    config = load_project(tmp_path, templates={"reminder.md": template})
    assert check(config, NOW) == []


def test_a_field_left_blank_in_a_row_renders_its_fallback(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"reminder.md": "[{{ contact.fields.city or 'nowhere' }}]\n"})
    for fields in ({}, {"city": None}, {"city": ""}):
        contact = TemplateContact(email="x@example.test", fields=fields)
        assert render(config, "reminder", contact=contact).text.startswith("[nowhere]")


def test_without_a_webinar_start_the_email_is_not_written(tmp_path: Path) -> None:
    """Issue 6 item 11: "at" with no date never goes out; the run skips it with a reason."""
    page = "<p>{% if webinar.start is defined %}On {{ webinar.start|format_date }}. {% endif %}Soon.</p>"
    config = load_project(tmp_path, templates={"hello.md": "On {{ webinar.start|format_date }}.\n", "page.html": page})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    no_start = TemplateWebinar("intro", "Intro Webinar", "https://practice.test/join", None, None)
    contact = TemplateContact(email="ann@example.test", first_name="Ann")
    for step_id in ("hello", "reminder"):  # the body, and the subject ("Tomorrow at {{ ...|format_time }}")
        step = sequence.step(step_id)
        assert step is not None
        with pytest.raises(MissingData) as info:
            renderer.render("welcome", sequence, step, contact, no_start, UNSUB)
        assert info.value.reason == "no webinar date"
    guarded = sequence.step("page")
    assert guarded is not None
    text = renderer.render("welcome", sequence, guarded, contact, no_start, UNSUB).text
    assert text.startswith("Soon.")
    # and `check` accepts a confirmation that uses the start: a run skips it for someone without one
    assert check(config, NOW) == []


def test_format_filters_refuse_no_date() -> None:
    with pytest.raises(EmptyValueError):
        format_date(None)
    with pytest.raises(EmptyValueError):
        format_time(None)


def test_each_reader_gets_the_error_rendering_her_raises(tmp_path: Path) -> None:
    """Errors are never shared: one reader's blank name fails her email only, and names layout.txt's line."""
    config = load_project(tmp_path, templates={"layout.txt": "{{ content }}\nFor {{ contact.first_name }}\n"})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    hello, reminder = sequence.step("hello"), sequence.step("reminder")
    assert hello is not None and reminder is not None
    named = TemplateContact(email="a@example.test", first_name="Ann")
    nameless = TemplateContact(email="b@example.test")
    for _ in range(2):
        assert "For Ann" in renderer.render("welcome", sequence, hello, named, webinar(), UNSUB).text
        for discreet in (False, True):
            with pytest.raises(TemplateError) as info:
                renderer.render("welcome", sequence, hello, nameless, webinar(), UNSUB, discreet=discreet)
            assert str(info.value).startswith("email_templates/layout.txt:2: contact.first_name is empty")
        renderer.render("welcome", sequence, reminder, named, webinar(), UNSUB)
        with pytest.raises(MissingData):
            renderer.render("welcome", sequence, reminder, named, replace(webinar(), start=None), UNSUB)


def test_an_error_in_a_markdown_body_names_its_line_for_every_reader(tmp_path: Path) -> None:
    body = "Hi.\n\n{% if contact.discreet %}\nQuiet.\n{% endif %}\n\nYou are {{ contact.fields.city }}.\n"
    config = load_project(tmp_path, templates={"hello.md": body})
    for discreet in (False, True):
        with pytest.raises(TemplateError) as info:
            render(config, discreet=discreet)
        assert str(info.value).startswith("email_templates/hello.md:7: contact.fields.city is empty")
