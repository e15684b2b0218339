"""`Renderer`: Markdown + Jinja in the layout, CSS inlined, a text part, strict variables."""

from __future__ import annotations

import re
import shutil
import types
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import SandboxedEnvironment

from funnel.config import Config, load_config
from funnel.errors import TemplateError
from funnel.preview import check, sample_unsubscribe_url
from funnel.render import MissingData, Rendered, Renderer, TemplateContact, TemplateWebinar, _plan, _Sandbox

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 1, 4, 17, 0, tzinfo=UTC)
UNSUB = "https://mail.practice.test/u/tok-123"
ADDRESS = "1 Main St, Suite 2, Town, CO 80000"

YAML = """\
practice:
  name: Test Practice
  from_email: care@practice.test
  postal_address: "1 Main St, Suite 2, Town, CO 80000"
  timezone: America/Denver
  base_url: https://mail.practice.test
  discreet_subject: "A quiet note"

webinars:
  intro:
    title: "Intro Webinar"
    join_url: https://practice.test/join

sources:
  registrations:
    format: csv
    path: signups/registrations.csv
    columns: {email: Email, first_name: First Name, webinar_start: Start, city: City}
    webinar: intro
    enroll: welcome

sequences:
  welcome:
    name: Welcome letters
    steps:
      - id: hello
        wait: 0m
        subject: "Hello {{ contact.first_name or 'friend' }}"
        discreet_subject: "Your confirmation"
        template: hello.md
      - id: reminder
        webinar: -1d
        subject: "Tomorrow at {{ webinar.start|format_time }}"
        template: reminder.md
      - id: page
        wait: 1d
        subject: "A page"
        template: page.html
"""

LAYOUT_HTML = """\
<!DOCTYPE html>
<html>
<head><title>{{ subject }}</title><style>p { color: #333 }</style></head>
<body>
<div class="content">
{{ content }}
</div>
<p>{{ practice.name }}<br>{{ practice.postal_address }}</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body>
</html>
"""

LAYOUT_TXT = """\
{{ content }}

--
{{ practice.name }}
{{ practice.postal_address }}
Unsubscribe: {{ unsubscribe_url }}
"""

HELLO_MD = """\
Hi {{ contact.first_name or 'there' }},

Read [our guide](https://practice.test/guide) first.

- one thing
- another thing

1. first
2. second

**Bold** words from {{ practice.name }}.
"""

REMINDER_MD = """\
See you at {{ webinar.title }}.

On {{ webinar.start|format_date }} at {{ webinar.start|format_time }}.

[Join]({{ webinar.join_url }})
"""

PAGE_HTML = """\
<h1>Hello {{ contact.first_name or 'there' }}</h1>
<p>Visit <a href="https://practice.test/page">our page</a>.</p>
<ul><li>alpha</li><li>beta</li></ul>
"""


def write_project(root: Path, *, yaml: str = YAML, templates: dict[str, str | None] | None = None) -> Path:
    """A minimal valid project; `templates` overrides files (None deletes one)."""
    files: dict[str, str | None] = {
        "layout.html": LAYOUT_HTML,
        "layout.txt": LAYOUT_TXT,
        "hello.md": HELLO_MD,
        "reminder.md": REMINDER_MD,
        "page.html": PAGE_HTML,
        **(templates or {}),
    }
    folder = root / "email_templates"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    path = root / "sequences.yaml"
    path.write_text(yaml, encoding="utf-8")
    return path


def project(root: Path, **kwargs: object) -> Config:
    return load_config(write_project(root, **kwargs))  # type: ignore[arg-type]


def webinar() -> TemplateWebinar:
    start = datetime(2027, 1, 14, 19, 0, tzinfo=ZoneInfo("America/Denver"))
    return TemplateWebinar("intro", "Intro Webinar", "https://practice.test/join", None, start)


def render(
    config: Config,
    step_id: str = "hello",
    *,
    contact: TemplateContact | None = None,
    discreet: bool = False,
    renderer: Renderer | None = None,
) -> Rendered:
    renderer = renderer or Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step(step_id)
    assert step is not None
    contact = contact or TemplateContact(email="ann@example.test", first_name="Ann")
    return renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)


# --------------------------------------------------------------------------- HTML part


def test_markdown_becomes_html_inside_the_layout(tmp_path: Path) -> None:
    out = render(project(tmp_path))
    assert out.html is not None
    assert out.html.lstrip().lower().startswith("<!doctype html>")
    assert '<div class="content">' in out.html
    assert "<strong>Bold</strong>" in out.html
    assert '<a href="https://practice.test/guide">our guide</a>' in out.html
    assert "<li>one thing</li>" in out.html
    assert "<ol>" in out.html
    assert "Hi Ann," in out.html
    assert f'href="{UNSUB}"' in out.html
    assert ADDRESS in out.html
    assert "<title>Hello Ann</title>" in out.html


def test_layout_css_is_inlined(tmp_path: Path) -> None:
    out = render(project(tmp_path))
    assert out.html is not None
    assert '<p style="color: #333;">Hi Ann,</p>' in out.html
    # the footer paragraph of the layout too
    assert '<p style="color: #333;">Test Practice<br>' in out.html


def test_html_autoescapes_contact_values(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="<script>alert(1)</script>")
    out = render(project(tmp_path), contact=contact)
    assert out.html is not None
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    # in the layout's <title> as well (the subject is plain text, the layout escapes it)
    assert "<title>Hello &lt;script&gt;" in out.html
    assert "Hi <script>alert(1)</script>," in out.text  # plain text shows it as written


@pytest.mark.parametrize(
    "name",
    ["[click](http://evil.test)", "<http://evil.test>", "![x](http://evil.test/p.png)"],
)
def test_contact_values_cannot_inject_markdown_links(tmp_path: Path, name: str) -> None:
    contact = TemplateContact(email="x@example.test", first_name=name)
    out = render(project(tmp_path), contact=contact)
    assert out.html is not None
    assert "evil.test" in out.html  # shown as text
    assert 'href="http://evil.test' not in out.html
    assert 'src="http://evil.test' not in out.html
    assert "(http://evil.test)" not in out.text.replace(name, "")


def test_contact_values_cannot_inject_markdown_emphasis_or_headings(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "{{ contact.first_name }}\n\nHi {{ contact.last_name }}\n"})
    contact = TemplateContact(email="x@example.test", first_name="# Big", last_name="**loud** _x_")
    out = render(config, contact=contact)
    assert out.html is not None
    assert "<h1>" not in out.html
    assert "<strong>" not in out.html and "<em>" not in out.html
    assert "# Big" in out.html
    assert "**loud** _x_" in out.html
    assert "# Big" in out.text and "**loud** _x_" in out.text


def test_template_values_in_link_targets_keep_working(tmp_path: Path) -> None:
    config = project(tmp_path)
    out = render(config, "reminder")
    assert out.html is not None
    assert '<a href="https://practice.test/join">Join</a>' in out.html
    assert "Join (https://practice.test/join)" in out.text


def test_template_values_in_autolinks_keep_working(tmp_path: Path) -> None:
    config = project(
        tmp_path,
        templates={"reminder.md": "Join: <{{ webinar.join_url }}>\n\nOr <{{ unsubscribe_url }}>\n"},
    )
    out = render(config, "reminder")
    assert out.html is not None
    assert '<a href="https://practice.test/join">https://practice.test/join</a>' in out.html
    assert f'<a href="{UNSUB}">{UNSUB}</a>' in out.html
    assert "\\" not in out.html and "%5C" not in out.html
    assert "Join: https://practice.test/join\n" in out.text


def test_raw_html_in_markdown_templates_is_not_passed_through(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "Hi <b onclick='x()'>there</b>\n"})
    out = render(config)
    assert out.html is not None
    assert "<b onclick" not in out.html
    assert "&lt;b onclick" in out.html


def test_format_date_and_time_filters(tmp_path: Path) -> None:
    out = render(project(tmp_path), "reminder")
    assert "On Thursday, January 14 at 7:00 PM MST." in out.text
    assert out.subject == "Tomorrow at 7:00 PM MST"


# --------------------------------------------------------------------------- text part


def test_plain_text_part_from_the_same_markdown(tmp_path: Path) -> None:
    out = render(project(tmp_path))
    assert out.text == (
        "Hi Ann,\n"
        "\n"
        "Read our guide (https://practice.test/guide) first.\n"
        "\n"
        "- one thing\n"
        "- another thing\n"
        "\n"
        "1. first\n"
        "2. second\n"
        "\n"
        "Bold words from Test Practice.\n"
        "\n"
        "--\n"
        "Test Practice\n"
        f"{ADDRESS}\n"
        f"Unsubscribe: {UNSUB}\n"
    )
    assert "<" not in out.text


def test_text_link_whose_label_is_the_url_is_not_repeated(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "[https://practice.test/x](https://practice.test/x)\n"})
    out = render(config)
    assert out.text.startswith("https://practice.test/x\n")


def test_without_layout_txt_the_text_part_still_has_the_footer(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"layout.txt": None})
    out = render(config)
    assert "Read our guide (https://practice.test/guide) first." in out.text
    assert ADDRESS in out.text
    assert UNSUB in out.text


def test_html_step_templates_get_a_text_part_via_inscriptis(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="<b>Zed</b>")
    out = render(project(tmp_path), "page", contact=contact)
    assert out.html is not None
    assert "<h1>Hello &lt;b&gt;Zed&lt;/b&gt;</h1>" in out.html  # .html templates autoescape too
    assert "Hello <b>Zed</b>" in out.text
    assert "our page" in out.text and "https://practice.test/page" in out.text
    assert "alpha" in out.text and "beta" in out.text
    assert "<h1>" not in out.text and "<ul>" not in out.text
    assert ADDRESS in out.text and UNSUB in out.text


# --------------------------------------------------------------------------- subjects


def test_subject_renders_with_jinja(tmp_path: Path) -> None:
    config = project(tmp_path)
    assert render(config).subject == "Hello Ann"
    nameless = TemplateContact(email="x@example.test")
    assert render(config, contact=nameless).subject == "Hello friend"


def test_subject_has_no_line_breaks(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="Ann\r\nBcc: evil@example.test\n")
    subject = render(project(tmp_path), contact=contact).subject
    assert "\n" not in subject and "\r" not in subject
    assert subject == "Hello Ann Bcc: evil@example.test"


def test_subject_is_not_html_escaped(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="Tom & Jerry")
    assert render(project(tmp_path), contact=contact).subject == "Hello Tom & Jerry"


def test_subject_syntax_error_is_reported_at_construction(tmp_path: Path) -> None:
    config = project(tmp_path, yaml=YAML.replace('subject: "A page"', 'subject: "A {{ page"'))
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert "sequences.yaml" in str(info.value)
    assert "'page'" in str(info.value)


# --------------------------------------------------------------------------- discreet


def test_discreet_rendering_is_text_only_with_the_discreet_subject(tmp_path: Path) -> None:
    config = project(tmp_path)
    out = render(config, discreet=True)
    assert out.html is None
    assert out.subject == "Your confirmation"  # the step's discreet_subject
    # her links go through the neutral /j/ redirect (funnel.jump); the unsubscribe link stays as it is
    assert re.search(r"Read our guide \(https://mail\.practice\.test/j/[A-Za-z0-9_-]{18}\) first\.", out.text)
    assert "https://practice.test/guide" not in out.text
    assert ADDRESS in out.text and UNSUB in out.text


def test_discreet_subject_falls_back_to_the_practice_one(tmp_path: Path) -> None:
    out = render(project(tmp_path), "reminder", discreet=True)
    assert out.html is None
    assert out.subject == "A quiet note"


# --------------------------------------------------------------------------- errors


def test_undefined_variable_names_the_template_file_and_line(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "Line one.\n\nHi {{ contact.nickname }}!\n"})
    renderer = Renderer(config)  # compiles fine: the mistake shows when rendering
    with pytest.raises(TemplateError) as info:
        render(config, "reminder", renderer=renderer)
    message = str(info.value)
    assert message.startswith("email_templates/reminder.md:3: ")
    assert "nickname" in message
    assert "define it" in message


def test_undefined_top_level_variable(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "{{ practice.name }}\n{{ coupon_code }}\n"})
    with pytest.raises(TemplateError) as info:
        render(config, "reminder")
    assert str(info.value).startswith("email_templates/reminder.md:2: ")
    assert "'coupon_code' is undefined" in str(info.value)


def test_undefined_contact_field(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "From {{ contact.fields.city }}\n"})
    contact = TemplateContact(email="x@example.test", fields={"city": "Boulder"})
    assert render(config, "reminder", contact=contact).text.startswith("From Boulder\n")
    with pytest.raises(TemplateError) as info:
        render(config, "reminder", contact=TemplateContact(email="x@example.test"))
    assert str(info.value).startswith("email_templates/reminder.md:1: ")
    assert "city" in str(info.value)


def test_undefined_variable_in_the_layout(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"layout.html": "<p>\n{{ content }}\n{{ practice.phone }}</p>\n"})
    with pytest.raises(TemplateError) as info:
        render(config)
    assert str(info.value).startswith("email_templates/layout.html:3: ")
    assert "phone" in str(info.value)


def test_undefined_variable_in_a_subject(tmp_path: Path) -> None:
    config = project(tmp_path, yaml=YAML.replace('subject: "A page"', 'subject: "A {{ contact.nick }}"'))
    with pytest.raises(TemplateError) as info:
        render(config, "page")
    assert "subject" in str(info.value)
    assert "nick" in str(info.value)


def test_jinja_syntax_error_is_reported_with_file_and_line_at_construction(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "One.\n\n{% if contact.first_name %}\nHi\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    message = str(info.value)
    assert message.startswith("email_templates/reminder.md:")
    assert "endif" in message


def test_jinja_syntax_error_line(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "One.\n\nTwo.\n\n{{ contact.first_name + }}\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith("email_templates/reminder.md:5: ")


def test_syntax_errors_in_several_templates_are_all_reported(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "{{ x +}}\n", "reminder.md": "\n{% for %}\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert "email_templates/hello.md:1: " in str(info.value)
    assert "email_templates/reminder.md:2: " in str(info.value)


def test_layout_syntax_error(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"layout.html": "<p>\n{{ content }}\n{% for %}</p>\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith("email_templates/layout.html:3: ")


# --------------------------------------------------------------------------- compiled once


def test_templates_are_compiled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = project(tmp_path)
    calls: list[str] = []
    original = jinja2.Environment.get_template

    def counting(self: jinja2.Environment, name: str, *args: object, **kwargs: object) -> jinja2.Template:
        calls.append(name)
        return original(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jinja2.Environment, "get_template", counting)
    renderer = Renderer(config)
    loaded = len(calls)
    assert sorted(calls) == sorted(["layout.html", "layout.txt", "hello.md", "reminder.md", "page.html"])
    for n in range(30):
        contact = TemplateContact(email=f"p{n}@example.test", first_name=f"P{n}")
        for step in ("hello", "reminder", "page"):
            render(config, step, contact=contact, renderer=renderer, discreet=n % 2 == 1)
    assert len(calls) == loaded


def test_rendering_does_not_reread_template_files(tmp_path: Path) -> None:
    config = project(tmp_path)
    renderer = Renderer(config)
    before = render(config, renderer=renderer)
    folder = tmp_path / "email_templates"
    (folder / "hello.md").write_text("Changed body {{ unsubscribe_url }}\n", encoding="utf-8")
    (folder / "layout.html").write_text("<div>changed layout {{ content }}</div>\n", encoding="utf-8")
    (folder / "layout.txt").write_text("changed text {{ content }}\n", encoding="utf-8")
    after = render(config, renderer=renderer)
    assert after == before
    assert "Changed body" not in after.text
    # a new Renderer sees the new files
    fresh = render(config, renderer=Renderer(config))
    assert fresh.html is not None and "changed layout" in fresh.html


def test_a_second_renderer_in_one_process_compiles_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renderers of one process share compiled sources (`funnel serve`, in-process CLI calls): an
    edited file is compiled afresh, and render errors still name their file and line."""
    config = project(tmp_path, templates={"reminder.md": "Line one.\n\nHi {{ contact.nickname }}!\n"})
    compiled: list[str | None] = []
    original = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: object, name: str | None = None, *args: object) -> object:
        compiled.append(name)
        return original(self, source, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    Renderer(config)
    assert "hello.md" in compiled and "layout.html" in compiled
    compiled.clear()
    again = Renderer(config)
    assert compiled == []
    with pytest.raises(TemplateError) as info:
        render(config, "reminder", renderer=again)
    assert str(info.value).startswith("email_templates/reminder.md:3: ")
    (tmp_path / "email_templates" / "hello.md").write_text("Edited {{ contact.first_name }}.\n", encoding="utf-8")
    edited = Renderer(config)
    assert compiled == ["hello.md"]
    assert "Edited Ann." in render(config, renderer=edited).text


# --------------------------------------------------------------------------- funnel check


def test_check_passes_for_the_shipped_project() -> None:
    config = load_config(REPO / "sequences.yaml")
    assert check(config, NOW) == []


def test_check_passes_for_the_minimal_project(tmp_path: Path) -> None:
    assert check(project(tmp_path), NOW) == []


def test_check_reports_a_layout_without_unsubscribe_url(tmp_path: Path) -> None:
    layout = LAYOUT_HTML.replace('<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n', "")
    config = project(tmp_path, templates={"layout.html": layout})
    problems = check(config, NOW)
    assert problems
    assert all(p.startswith("email_templates/layout.html") for p in problems), problems
    assert all("no unsubscribe link" in p and "{{ unsubscribe_url }}" in p for p in problems)
    assert all("HTML part" in p for p in problems)
    assert any("welcome/hello" in p for p in problems)


def test_check_reports_a_text_layout_without_the_postal_address(tmp_path: Path) -> None:
    config = project(
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
    config = project(tmp_path, templates={"reminder.md": "Hi.\n\n{{ webinar.zoom_link }}\n"})
    problems = check(config, NOW)
    assert len(problems) == 1, problems
    assert problems[0].startswith("email_templates/reminder.md:3: ")


def test_check_reports_syntax_errors(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "{{ x +}}\n", "reminder.md": "\n{% for %}\n"})
    problems = check(config, NOW)
    assert len(problems) == 2, problems
    assert problems[0].startswith("email_templates/hello.md:1: ")
    assert problems[1].startswith("email_templates/reminder.md:2: ")


def test_check_uses_fields_the_sources_map(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "From {{ contact.fields.city or 'afar' }}.\n"})
    assert check(config, NOW) == []
    assert sample_unsubscribe_url(config) == "https://mail.practice.test/u/sample-token"


def test_a_mistake_in_a_subject_names_the_yaml_line(tmp_path: Path) -> None:
    from funnel.config import load_config
    from funnel.errors import TemplateError
    from funnel.render import Renderer

    shutil.copytree(REPO / "email_templates", tmp_path / "email_templates")
    text = (REPO / "sequences.yaml").read_text()
    text = text.replace('subject: "Your message arrived safely"', 'subject: "Arrived {{ contact.nickname }}"')
    (tmp_path / "sequences.yaml").write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "contact.nickname" in row)
    config = load_config(tmp_path / "sequences.yaml")
    from funnel.preview import check

    problems = check(config, datetime(2027, 1, 1, tzinfo=UTC))
    assert any(p.startswith(f"sequences.yaml:{line}: subject of step 'received'") for p in problems), problems
    broken = text.replace("{{ contact.nickname }}", "{{ contact.first_name")
    (tmp_path / "sequences.yaml").write_text(broken)
    with pytest.raises(TemplateError, match=rf"^sequences.yaml:{line}: subject of step 'received'"):
        Renderer(load_config(tmp_path / "sequences.yaml"))


# --------------------------------------------------------------------------- issue 6: sandbox, blanks


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
    config = project(tmp_path, templates={"hello.md": f"Hi.\n\n{expression}\n"})
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
    config = project(tmp_path, yaml=yaml)
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
    config = project(tmp_path, templates={"reminder.md": template})
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
    config = project(tmp_path, templates={"reminder.md": template})
    assert check(config, NOW) == []


def test_a_field_left_blank_in_a_row_renders_its_fallback(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"reminder.md": "[{{ contact.fields.city or 'nowhere' }}]\n"})
    for fields in ({}, {"city": None}, {"city": ""}):
        contact = TemplateContact(email="x@example.test", fields=fields)
        assert render(config, "reminder", contact=contact).text.startswith("[nowhere]")


def test_without_a_webinar_start_the_email_is_not_written(tmp_path: Path) -> None:
    """Issue 6 item 11: "at" with no date never goes out; the run skips it with a reason."""
    from funnel.render import MissingData

    page = "<p>{% if webinar.start is defined %}On {{ webinar.start|format_date }}. {% endif %}Soon.</p>"
    config = project(tmp_path, templates={"hello.md": "On {{ webinar.start|format_date }}.\n", "page.html": page})
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
    from funnel.render import EmptyValueError, format_date, format_time

    with pytest.raises(EmptyValueError):
        format_date(None)
    with pytest.raises(EmptyValueError):
        format_time(None)


# --------------------------------------------------------------------------- compiled once per shape


def test_markdown_is_parsed_and_css_inlined_once_per_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand readers of one step cost one Markdown parse and one CSS inlining, not a thousand."""
    config = project(tmp_path)
    renderer = Renderer(config)
    parses: list[int] = []
    inlines: list[int] = []
    original_parse = renderer._markdown.parse
    original_inline = renderer._inliner.inline
    monkeypatch.setattr(renderer._markdown, "parse", lambda src, env=None: parses.append(1) or original_parse(src, env))
    monkeypatch.setattr(
        renderer, "_inliner", type("I", (), {"inline": lambda _s, h: inlines.append(1) or original_inline(h)})()
    )
    outs = [
        render(config, contact=TemplateContact(email=f"p{n}@example.test", first_name=f"Reader {n}"), renderer=renderer)
        for n in range(200)
    ]
    assert len(parses) == 1 and len(inlines) == 1
    assert (
        outs[7].html is not None and "Hi Reader 7," in outs[7].html and "<title>Hello Reader 7</title>" in outs[7].html
    )
    assert "Hi Reader 199," in outs[199].text
    # someone without a first name takes the other branch of `or 'there'`: a second shape
    render(config, contact=TemplateContact(email="x@example.test"), renderer=renderer)
    assert len(parses) == 2


_BENIGN = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd", "Zs"), whitelist_characters="-.,@!?"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s and "  " not in s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_BENIGN, last=_BENIGN, city=_BENIGN)
def test_compiled_rendering_equals_direct_rendering_for_ordinary_values(
    tmp_path: Path, first: str, last: str, city: str
) -> None:
    """The per-shape path fills in exactly what the direct path (values parsed into the Markdown) writes."""
    templates = {
        "hello.md": HELLO_MD + "\n{{ contact.last_name }} from {{ contact.fields.city }}, {{ contact.email }}\n"
    }
    config = project(tmp_path, templates=templates)
    renderer = _RENDERERS.setdefault(str(tmp_path), Renderer(config))
    sequence = config.sequences["welcome"]
    contact = TemplateContact(email="ann@example.test", first_name=first, last_name=last, fields={"city": city})
    for step_id in ("hello", "reminder", "page"):
        step = sequence.step(step_id)
        assert step is not None
        for discreet in (False, True):
            fast = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
            direct = renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
            assert fast == direct


_RENDERERS: dict[str, Renderer] = {}


@pytest.mark.parametrize(
    "value",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        'https://ok.test/" onmouseover="x()',
        "https://ok.test/a b",
        "data:text/html;base64,PHNjcmlwdD4=",
        "<script>alert(1)</script>",
    ],
)
def test_a_readers_value_in_a_link_target_is_checked_like_markdown_does(tmp_path: Path, value: str) -> None:
    config = project(tmp_path, templates={"hello.md": "[your page]({{ contact.fields.site }})\n"})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    contact = TemplateContact(email="x@example.test", first_name="X", fields={"site": value})
    out = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB)
    assert out == renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB)
    assert out.html is not None
    assert 'href="javascript' not in out.html.lower() and 'href="data:' not in out.html
    assert not {"onmouseover", "onclick"} & _attribute_names(out.html)
    assert "<script>" not in out.html


def _tag_names(html: str) -> set[str]:
    """Every element name in an HTML document, as a browser's parser reads it."""
    from html.parser import HTMLParser

    names: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names.add(tag)

    Collect().feed(html)
    return names


def _attribute_names(html: str) -> set[str]:
    """Every attribute name in an HTML document, as a browser's parser reads it."""
    from html.parser import HTMLParser

    names: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names.update(name for name, _ in attrs)

    Collect().feed(html)
    return names


def test_a_readers_plain_url_in_a_link_target_is_filled_in(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "[your page]({{ contact.fields.site }})\n"})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    for site in ("https://a.test/x?y=1&z=2", "https://b.test/"):
        contact = TemplateContact(email="x@example.test", fields={"site": site})
        out = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB)
        assert out == renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB)
        assert out.html is not None and f'href="{site.replace("&", "&amp;")}"' in out.html


def test_a_value_that_looks_like_a_slot_token_stays_text(tmp_path: Path) -> None:
    config = project(tmp_path)
    renderer = Renderer(config)
    fake_token = f"{renderer._prefix}0z"
    out = render(config, contact=TemplateContact(email="x@example.test", first_name=fake_token), renderer=renderer)
    assert f"Hi {fake_token}," in out.text


# --------------------------------------------------------------------------- discretion in the inbox preview

PREHEADER_YAML = YAML.replace(
    '        discreet_subject: "Your confirmation"\n        template: hello.md\n',
    '        discreet_subject: "Your confirmation"\n'
    "        preheader: \"{{ webinar.title }} for {{ contact.first_name or 'you' }}\"\n"
    '        discreet_preheader: "The details you asked for"\n'
    "        template: hello.md\n",
).replace(
    '  discreet_subject: "A quiet note"\n',
    '  discreet_subject: "A quiet note"\n  from_name: Dr. Full Name\n  discreet_from_name: "F. Name"\n',
)
PREHEADER_LAYOUT = LAYOUT_HTML.replace(
    "<body>\n", '<body>\n{% if preheader %}<div style="display:none">{{ preheader }}</div>{% endif %}\n'
)


def test_the_preheader_is_the_hidden_first_text_of_the_html_and_not_in_the_text(tmp_path: Path) -> None:
    config = project(tmp_path, yaml=PREHEADER_YAML, templates={"layout.html": PREHEADER_LAYOUT})
    out = render(config, contact=TemplateContact(email="ann@example.test", first_name="Ann & Co"))
    assert out.html is not None
    body = out.html.split("<body>", 1)[1]
    assert body.lstrip().startswith('<div style="display:none">Intro Webinar for Ann &amp; Co</div>')
    assert "Intro Webinar for" not in out.text and "details you asked" not in out.text
    assert "details you asked" not in out.html


def test_a_discreet_reader_gets_only_the_discreet_preheader_as_the_first_line(tmp_path: Path) -> None:
    config = project(tmp_path, yaml=PREHEADER_YAML, templates={"layout.html": PREHEADER_LAYOUT})
    out = render(config, discreet=True)
    assert out.html is None
    assert out.text.startswith("The details you asked for\n\nHi Ann,")
    assert "Intro Webinar" not in out.text  # never the marketing preheader
    # a step without a discreet_preheader: no preheader at all for her
    plain = render(config, "reminder", discreet=True)
    assert plain.text.startswith("See you at")
    no_discreet = PREHEADER_YAML.replace('        discreet_preheader: "The details you asked for"\n', "")
    out = render(project(tmp_path, yaml=no_discreet, templates={"layout.html": PREHEADER_LAYOUT}), discreet=True)
    assert out.text.startswith("Hi Ann,") and "Intro Webinar for" not in out.text


def test_templates_see_contact_discreet_and_the_discreet_signature(tmp_path: Path) -> None:
    hello = "{% if contact.discreet %}Quiet.{% else %}Loud.{% endif %}\n\n{{ practice.from_name }}\n"
    config = project(tmp_path, yaml=PREHEADER_YAML, templates={"hello.md": hello})
    normal = render(config)
    discreet = render(config, discreet=True)
    assert "Loud." in normal.text and "Dr. Full Name" in normal.text
    assert "Quiet." in discreet.text and "F. Name" in discreet.text and "Dr. Full Name" not in discreet.text


def test_a_preheader_error_names_its_line_in_sequences_yaml(tmp_path: Path) -> None:
    broken = PREHEADER_YAML.replace('"The details you asked for"', '"{{ oops"')
    path = write_project(tmp_path, yaml=broken)
    with pytest.raises(TemplateError) as info:
        Renderer(load_config(path))
    line = next(n for n, text in enumerate(broken.splitlines(), 1) if "discreet_preheader" in text)
    assert str(info.value).startswith(f"sequences.yaml:{line}: discreet_preheader of step 'hello' in welcome:")


def test_the_shipped_layouts_keep_the_footer_neutral_for_discreet_readers(tmp_path: Path) -> None:
    root = tmp_path / "shipped"
    root.mkdir()
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    config = load_config(root / "sequences.yaml")
    sequence = config.sequences["webinar-relationship-911"]
    step = sequence.step("registered")
    assert step is not None and step.preheader and step.discreet_preheader
    renderer = Renderer(config)
    start = datetime(2027, 1, 14, 19, 0, tzinfo=ZoneInfo("America/Denver"))
    info = config.webinars["relationship-911"]
    seminar = TemplateWebinar("relationship-911", info.title, info.join_url, info.replay_url, start)
    contact = TemplateContact(email="c@example.test", first_name="Carla")
    normal = renderer.render("webinar-relationship-911", sequence, step, contact, seminar, UNSUB)
    quiet = renderer.render("webinar-relationship-911", sequence, step, contact, seminar, UNSUB, discreet=True)
    assert normal.html is not None and config.practice.name in normal.html and config.practice.name in normal.text
    first = normal.html.split("<body", 1)[1].split(">", 1)[1].lstrip()
    assert first.startswith('<div style="display:none;') and first.split(">", 1)[1].startswith(step.preheader)
    assert quiet.html is None
    assert config.practice.name not in quiet.text  # the practice's name says what it is about
    assert info.title not in quiet.text  # nor the webinar's title
    assert config.practice.postal_address in quiet.text and UNSUB in quiet.text  # CAN-SPAM still holds
    assert quiet.text.startswith(step.discreet_preheader + "\n\n")
    assert config.practice.discreet_from_name and config.practice.discreet_from_name in quiet.text
    assert config.practice.from_name and config.practice.from_name not in quiet.text


# --------------------------------------------------------------------------- remembered renders (_Plan)

MEMO_YAML = YAML.replace(
    """        subject: "Hello {{ contact.first_name or 'friend' }}"
        discreet_subject: "Your confirmation"
        template: hello.md
""",
    """        subject: "Hello {{ contact.first_name or 'friend' }} {{ contact.last_name if contact.last_name }}"
        discreet_subject: "Your confirmation"
        preheader: "{{ subject }}: {{ webinar.start|format_time }} {{ contact.fields.city or 'anywhere' }}"
        discreet_preheader: "{% if contact.first_name %}{{ contact.first_name }}{% endif %} details"
        template: hello.md
""",
)

MEMO_LAYOUT_HTML = """\
<html><head><title>{{ subject }}</title><style>p { color: #333 }</style></head><body>
{% if preheader %}<div style="display:none">{{ preheader }}</div>{% endif %}
<p>{% if contact.first_name %}Dear {{ contact.first_name }}{% else %}Hello{% endif %}</p>
<p>{{ contact.last_name or 'no last name' }}, {{ 'a quiet note' if contact.discreet else practice.name }}</p>
<div class="content">
{{ content }}
</div>
<p>{{ contact.fields.get('message') or 'no message' }} {{ not contact.fields.city }}</p>
<p>{{ webinar.start|format_time }} {{ sequence.name }} {{ step.id }}</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""

MEMO_LAYOUT_TXT = """\
{{ content }}

{% if not contact.first_name %}Dear friend{% else %}Dear {{ contact.first_name }}{% endif %}
{{ contact.email }} {{ contact.last_name if contact.last_name else 'x' }} {{ contact.discreet and 'discreet' }}
Unsubscribe: {{ unsubscribe_url }}
"""

MEMO_HELLO_MD = (
    HELLO_MD
    + "\n{% if contact.fields.city %}From {{ contact.fields.city }}.{% endif %} Write to {{ contact.email }}.\n"
    + "{% if contact.fields.get('message') %}Thank you for your note.{% endif %}\n"
)

_MAYBE = st.one_of(st.none(), st.just(""), _BENIGN)
_ZONES = [
    ZoneInfo("America/Denver"),
    ZoneInfo("America/Los_Angeles"),
    ZoneInfo("UTC"),
    # the same offset under two names: datetime.timezone compares equal, prints differently
    timezone(timedelta(hours=-7), "MST"),
    timezone(timedelta(hours=-7), "Mountain"),
]


def _memo_renderer(tmp_path: Path) -> tuple[Config, Renderer]:
    key = f"memo:{tmp_path}"
    if key not in _RENDERERS:
        config = project(
            tmp_path,
            yaml=MEMO_YAML,
            templates={"layout.html": MEMO_LAYOUT_HTML, "layout.txt": MEMO_LAYOUT_TXT, "hello.md": MEMO_HELLO_MD},
        )
        _RENDERERS[key] = Renderer(config)
    renderer = _RENDERERS[key]
    return renderer.config, renderer


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=_MAYBE,
    last=_MAYBE,
    city=_MAYBE,
    message=_MAYBE,
    discreet=st.booleans(),
    zone=st.sampled_from(_ZONES),
)
def test_remembered_renders_equal_direct_rendering_whatever_the_reader(
    tmp_path: Path, first: str | None, last: str | None, city: str | None, message: str | None, discreet: bool, zone
) -> None:
    """Templates that test and print the reader's values in every way a `_Plan` allows: one renderer
    for all examples, so most renders come from the memo, filled with another reader's values."""
    config, renderer = _memo_renderer(tmp_path)
    assert renderer.layout_text is not None
    remembered = [renderer.layout_html, renderer.layout_text, *renderer._subjects.values()]
    remembered += [*renderer._preheaders.values(), *(template for _, template in renderer._bodies.values())]
    assert all(renderer._plan_of(template) is not None for template in remembered)
    sequence = config.sequences["welcome"]
    fields = {"city": city} if city is not None else {}
    if message is not None:
        fields["message"] = message
    contact = TemplateContact(email="ann@example.test", first_name=first, last_name=last, fields=fields)
    start = datetime(2027, 1, 15, 2, 0, tzinfo=UTC).astimezone(zone)
    seminar = TemplateWebinar("intro", "Intro Webinar", "https://practice.test/join", None, start)
    for step_id in ("hello", "reminder", "page"):
        step = sequence.step(step_id)
        assert step is not None
        fast = renderer.render("welcome", sequence, step, contact, seminar, UNSUB, discreet=discreet)
        direct = renderer._render_direct("welcome", sequence, step, contact, seminar, UNSUB, discreet=discreet)
        assert fast == direct
    assert any(renderer._memos.values())


#: values people type or old exports hold that are not plain words: quotes, things that look like
#: markup, entities or Markdown, line breaks, controls, no-break spaces
_AWKWARD = st.one_of(
    st.sampled_from(
        [
            "O'Brien",
            'Ann "Annie" Lee',
            "&copy;",
            "Bob &amp; Sue",
            "&#65;&#x42;",
            "a\n===",
            "x\n=",
            "Line1\n\nLine2",
            "a  \nb",
            "a\n    code",
            "A\x00B",
            "A\rB",
            "\xa0x\xa0",
            "<b>x</b>",
            "x = y & z",
            "#1 fan",
            "<!-- x -->",
            "a > b",
            '"><script>alert(1)</script>',
            "Zoë\u2028Ann",
            "x`y",
            "Ann  ",
            "\tAnn",
            " Denver",
            "Ann\u3000",
            "A+B",
            "python extra",
            "mailto:ann@example.test",
            "x onmouseover=alert(1)",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
)

#: values in text, in double- and single-quoted attributes, next to a comment and in a <textarea>:
#: all filled in by the fast path
AWKWARD_LAYOUT_HTML = MEMO_LAYOUT_HTML.replace(
    "<p>{% if contact.first_name %}",
    "<p title=\"{{ contact.first_name or 'friend' }}\" class=\"{{ contact.last_name or 'none' }}\">"
    "<span title='{{ contact.fields.city or \"x\" }}'><!-- for {{ step.id }} --></span>{% if contact.first_name %}",
).replace("</body>", "<textarea>{{ contact.first_name or 'x' }}</textarea></body>")

#: Markdown around values as a therapist's template might put them: filled in by the fast path
AWKWARD_HELLO_MD = (
    MEMO_HELLO_MD
    + "\n# {{ contact.fields.city or 'Home' }}\n\n"
    + "Write to [us](https://a.test/x \"{{ contact.first_name or 'x' }}\").\n\n"
    + "Dear {{ contact.first_name or 'x' }}, see ![{{ contact.last_name or 'a photo' }}](https://a.test/i.png).\n\n"
    + "> {{ contact.fields.message or 'quiet' }}\n\n"
    + "- {{ contact.fields.city or 'nowhere' }}\n- **Dear** {{ contact.last_name or 'x' }} **now**\n"
)

#: where only her values can tell what Markdown or the CSS inliner makes of them: rendered directly
TRICKY_HELLO_MD = (
    MEMO_HELLO_MD
    + "\nWrite to [{{ contact.email }}](mailto:{{ contact.email }}) or [{{ contact.first_name or 'x' }}](https://a.test).\n\n"
    + "Dear *{{ contact.first_name or 'x' }}*, x*{{ contact.last_name or 'y' }}*y.\n\n"
    + "- Use `a` or `b {{ contact.first_name or 'c' }} d\n\n"
    + "```{{ contact.last_name or 'text' }}\ncode\n```\n"
)
TRICKY_LAYOUT_HTML = MEMO_LAYOUT_HTML.replace(
    "<p>{% if contact.first_name %}",
    "<p style=\"color: {{ contact.fields.message or 'red' }}\">{% if contact.first_name %}",
)

#: an HTML step: values in text, a <pre>, a table cell and an attribute
AWKWARD_PAGE_HTML = (
    "<h1>Hello {{ contact.first_name or 'there' }}</h1>\n"
    "<pre>{{ contact.last_name or 'x' }}</pre>\n"
    "<table><tr><td>{{ contact.fields.city or 'y' }}</td></tr></table>\n"
    "<p title=\"{{ contact.fields.message or 'm' }}\">Dear {{ contact.first_name or 'you' }}, welcome</p>\n"
)

_TEMPLATE_SETS = {
    "filled": {"layout.html": AWKWARD_LAYOUT_HTML, "hello.md": AWKWARD_HELLO_MD, "page.html": AWKWARD_PAGE_HTML},
    "direct": {"layout.html": TRICKY_LAYOUT_HTML, "hello.md": TRICKY_HELLO_MD, "page.html": AWKWARD_PAGE_HTML},
}


@pytest.mark.parametrize("templates", sorted(_TEMPLATE_SETS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_AWKWARD, last=_AWKWARD, city=_AWKWARD, message=_AWKWARD, discreet=st.booleans())
def test_remembered_renders_equal_direct_rendering_for_awkward_values(
    tmp_path: Path, templates: str, first: str, last: str, city: str, message: str, discreet: bool
) -> None:
    """Quotes, entities, Markdown, line breaks and controls in a reader's values come out byte for
    byte as rendering her directly writes them, in text, in attributes and in the text part; and no
    value makes markup (a heading, a tag, an attribute) of its own. "filled": templates whose values
    the fast path fills in; "direct": values where only the value can tell what the Markdown or the
    CSS inliner makes of it, which the fast path must send down the direct path."""
    key = f"awkward:{templates}:{tmp_path}"
    if key not in _RENDERERS:
        config = project(
            tmp_path, yaml=MEMO_YAML, templates={**_TEMPLATE_SETS[templates], "layout.txt": MEMO_LAYOUT_TXT}
        )
        _RENDERERS[key] = Renderer(config)
    renderer = _RENDERERS[key]
    config = renderer.config
    sequence = config.sequences["welcome"]
    contact = TemplateContact(
        email="ann@example.test", first_name=first, last_name=last, fields={"city": city, "message": message}
    )
    for step_id in ("hello", "reminder", "page"):
        step = sequence.step(step_id)
        assert step is not None
        try:
            fast = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        except TemplateError as error:  # a value the CSS inliner cannot read in a style attribute
            with pytest.raises(TemplateError) as same:
                renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
            assert str(same.value) == str(error) and templates == "direct"
            continue
        direct = renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        assert fast == direct
        if fast.html is not None:
            assert not _tag_names(fast.html) & {"h2", "script", "b"}, _tag_names(fast.html)
            assert {"onmouseover", "onclick"}.isdisjoint(_attribute_names(fast.html))
        assert "\x00" not in fast.text and "\r" not in fast.text
    if templates == "filled":  # the fast path did the work: shapes compiled and pages filled
        assert any(not body.direct for body in renderer._shapes.values()) and renderer._contexts


def test_a_readers_value_in_code_renders_the_same_both_ways(tmp_path: Path) -> None:
    """Inside a code span or block Markdown shows escapes as written: such a shape renders directly."""
    templates = {"hello.md": "Code: `{{ contact.fields.get('city') or 'x' }}`\n\n    {{ contact.email }}\n"}
    config = project(tmp_path, templates=templates)
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    contact = TemplateContact(email="ann.lee@example.test", first_name="Ann", fields={"city": "Fort-Collins"})
    for discreet in (False, True):
        fast = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        assert fast == renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)


@pytest.mark.parametrize(
    "tag", ["<p class={{ contact.first_name or 'x' }}>", "<p {{ contact.first_name or 'x' }}>", "<img alt={{ x }}>"]
)
def test_a_value_in_a_bare_attribute_is_refused_with_its_line(tmp_path: Path, tag: str) -> None:
    """Autoescaping keeps a value inside a quoted attribute only: `x onmouseover=...` would add one."""
    layout = LAYOUT_HTML.replace("<body>", f"<body>\n{tag}x</p>", 1)
    assert layout != LAYOUT_HTML
    config = project(tmp_path, templates={"layout.html": layout})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    line = layout.splitlines().index(f"{tag}x</p>") + 1
    assert str(info.value).startswith(f"email_templates/layout.html:{line}: a value printed inside an HTML tag")


def test_values_in_quoted_attributes_and_conditions_inside_tags_are_fine(tmp_path: Path) -> None:
    layout = LAYOUT_HTML.replace(
        "<body>",
        "<body>\n<p title='{{ contact.first_name or \"x\" }}' {% if contact.discreet %}hidden{% endif %}"
        " class=\"a {{ contact.last_name or 'b' }}\">x</p>",
        1,
    )
    config = project(tmp_path, templates={"layout.html": layout})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="x onmouseover=alert(1)"))
    assert out.html is not None and "onmouseover" not in _attribute_names(out.html)


@pytest.mark.parametrize(
    ("markdown", "value"),
    [
        ("[Open]({{ contact.first_name }}:alert%281%29)\n", "javascript"),
        ("[Open]({{ contact.first_name }}{{ contact.last_name or '' }})\n", "javascript:alert(1)"),
        ("Thanks!\n{{ contact.first_name }}. That is your seat number.\n", "1"),
        ("- {{ contact.first_name }}) y\n", "6"),
        ("Tom &{{ contact.first_name }};\n", "copy"),
        ("Tom &#{{ contact.first_name }};\n", "65"),
        ("Tom &amp{{ contact.first_name }}\n", ";"),
        # the template's own reference, completed by her name: rendered directly, a link to the template's URL
        ("[Hi {{ contact.first_name }}]\n\n[hi ann]: https://practice.test/ann\n", "Ann"),
        ("[Profile](https://x.test/u/{{ contact.first_name }})\n", "x:@y"),
        ("[Profile](https://x.test/u/{{ contact.first_name }})\n", "a%"),
        ("[here]({{ contact.first_name }})\n", "here"),
        ("[Email]({{ contact.first_name }})\n", "mailto:Emailme@x.test"),
        ("[![{{ contact.first_name }}](i.png)](https://a.test)\n", "https://a.test"),
        ("Hi {{ contact.first_name }}\n", "Ann\ud800"),
    ],
)
def test_where_the_template_and_the_value_decide_together_both_paths_agree(
    tmp_path: Path, markdown: str, value: str
) -> None:
    """Third break-it session: template text next to a value that only the value can complete."""
    config = project(tmp_path, templates={"hello.md": markdown})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    contact = TemplateContact(email="ann@example.test", first_name=value, last_name=value)
    for discreet in (False, True):
        fast = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        assert fast == renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        assert "\ud800" not in fast.text
        if fast.html is not None:
            assert 'href="javascript' not in fast.html


@pytest.mark.parametrize(
    ("name", "source", "line"),
    [
        ("layout.html", LAYOUT_HTML.replace("<body>", "<body>\n<{{ contact.first_name or 'x' }}>hi", 1), 5),
        (
            "layout.html",
            LAYOUT_HTML.replace("<body>", "<body>\n<p {% if 2 > 1 %}{{ contact.email }}{% endif %}>", 1),
            5,
        ),
        ("hello.md", "Hi.\n\nFolder: C:\\Users\\{{ contact.first_name or 'x' }}\n", 3),
        ("hello.md", "Hi.\n\nC:\\Users\\{% if contact.first_name %}{{ contact.first_name }}{% endif %}\n", 3),
        ("hello.md", "Hi.\n\nC:\\Users\\{# the name #}{{ contact.first_name or 'x' }}\n", 3),
        (
            "layout.html",
            LAYOUT_HTML.replace("<body>", '<body>\n<{% if 1 %}p{% endif %} class="a" {{ contact.email }}>', 1),
            5,
        ),
        (
            "layout.html",
            LAYOUT_HTML.replace("<body>", "<body>\n<a title=\"{{ 'a > b' }}\" class={{ contact.email }}>", 1),
            5,
        ),
        (
            "layout.html",
            LAYOUT_HTML.replace(
                "<body>", "<body>\n<!--[if !mso]><!-->\n<p class={{ contact.email }}>x</p>\n<!--<![endif]-->", 1
            ),
            6,
        ),
    ],
)
def test_templates_a_value_could_escape_from_are_refused_with_their_line(
    tmp_path: Path, name: str, source: str, line: int
) -> None:
    assert source.splitlines()[line - 1]
    config = project(tmp_path, templates={name: source})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith(f"email_templates/{name}:{line}: ")


@pytest.mark.parametrize(
    "html",
    [
        '<p><a href="https://practice.test/book"'
        ' title="{{ webinar.title if webinar else "Let\'s talk" }}">Book</a></p>\n'
        '<p>If you\'re not sure, just reply, {{ contact.first_name or "friend" }}.</p>',
        "<p>Groups are small (< {{ practice.name }} people).</p>",
        '<a href="mailto:{{ contact.email }}" title="{{ practice.name }} <{{ contact.email }}>">x</a>',
        "<!-- <img src={{ practice.name }}> -->",
        "{% raw %}<p class={{x}}>{% endraw %}",
        '<p class="a" {% if contact.discreet %}hidden{% endif %}>x</p>',
        "<p class=\"{{ 'a > b' }}\">x</p>",
        "<p title='{{ contact.first_name or \"x\" }}'>x</p>",
        '<!--[if mso]><v:roundrect href="{{ unsubscribe_url }}"></v:roundrect><![endif]-->',
        "<p>5 > 3 and {{ practice.name }} < 7</p>",
    ],
)
def test_legitimate_html_around_values_is_accepted(tmp_path: Path, html: str) -> None:
    """Fourth break-it session: the checks read Jinja's own quotes and `>` as Jinja, not as HTML."""
    layout = LAYOUT_HTML.replace("<body>", f"<body>\n{html}", 1)
    config = project(tmp_path, templates={"layout.html": layout})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="x onmouseover=alert(1)"))
    assert out.html is not None and "onmouseover" not in _attribute_names(out.html)


@pytest.mark.parametrize(
    "markdown",
    [
        "```\nC:\\Users\\{{ practice.name }}\n```\n",
        "Open `\\\\server\\{{ practice.name }}` now.\n",
        "{# old: C:\\Users\\{{ contact.first_name }} #}Hi.\n",
        "\\*{{ practice.name }}\n",
    ],
)
def test_backslashes_in_code_comments_or_escaping_template_text_are_accepted(tmp_path: Path, markdown: str) -> None:
    config = project(tmp_path, templates={"hello.md": markdown})
    render(config, contact=TemplateContact(email="a@example.test", first_name="Ann"))


def test_an_included_part_a_value_could_escape_from_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    """The checks apply to every file the templates load: a part included by an .html step too."""
    templates = {
        "page.html": "<p>Hi</p>\n{% include 'button.html' %}\n",
        "button.html": '<p>Book</p>\n<a href="{{ unsubscribe_url }}"'
        " class={{ contact.first_name or 'x' }}>Book</a>\n",
    }
    config = project(tmp_path, templates=templates)
    with pytest.raises(TemplateError) as info:
        render(config, "page", contact=TemplateContact(email="a@example.test", first_name="Ann"))
    assert str(info.value).startswith("email_templates/button.html:2: a value printed inside an HTML tag")


def test_a_double_backslash_before_a_value_is_a_backslash(tmp_path: Path) -> None:
    config = project(tmp_path, templates={"hello.md": "Folder: C:\\\\Users\\\\{{ contact.first_name or 'x' }}\n"})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="<http://evil.test>"))
    assert "C:\\Users\\<http://evil.test>" in out.text


def test_a_private_use_character_in_a_value_keeps_the_text_part_as_typed() -> None:
    from funnel.render import _html_to_text

    assert _html_to_text("<p>\ue000Ann Tom &amp;copy; Jerry</p>") == "\ue000Ann Tom &copy; Jerry"


def test_the_text_of_an_html_step_shows_entities_as_written_also_in_tables() -> None:
    """inscriptis unescapes once more than HTML does (twice in a table cell): undone."""
    from funnel.render import _html_to_text

    html = (
        "<table><tr><td>Tom &amp;amp; Jerry &amp;lt;b&amp;gt; &copy;</td></tr></table>"
        '<p>Tom &amp;amp; Jerry &amp;copy; <a href="https://x.test/?a=1&amp;copy=2">l</a></p>'
    )
    assert (
        _html_to_text(html) == "Tom &amp; Jerry &lt;b&gt; ©\n\n\nTom &amp; Jerry &copy; [l](https://x.test/?a=1&copy=2)"
    )


def test_a_remembered_template_raises_the_same_errors(tmp_path: Path) -> None:
    """Errors are never remembered: each reader gets the error rendering her would raise."""
    config = project(tmp_path, templates={"layout.txt": "{{ content }}\nFor {{ contact.first_name }}\n"})
    renderer = Renderer(config)
    assert renderer.layout_text is not None and renderer._plan_of(renderer.layout_text) is not None
    sequence = config.sequences["welcome"]
    hello, reminder = sequence.step("hello"), sequence.step("reminder")
    assert hello is not None and reminder is not None
    named = TemplateContact(email="a@example.test", first_name="Ann")
    nameless = TemplateContact(email="b@example.test")
    for _ in range(2):
        assert "For Ann" in renderer.render("welcome", sequence, hello, named, webinar(), UNSUB).text
        with pytest.raises(TemplateError) as fast:
            renderer.render("welcome", sequence, hello, nameless, webinar(), UNSUB)
        with pytest.raises(TemplateError) as direct:
            renderer._render_direct("welcome", sequence, hello, nameless, webinar(), UNSUB)
        assert str(fast.value) == str(direct.value) and "layout.txt:2" in str(fast.value)
        no_start = replace(webinar(), start=None)
        renderer.render("welcome", sequence, reminder, named, webinar(), UNSUB)
        with pytest.raises(MissingData):
            renderer.render("welcome", sequence, reminder, named, no_start, UNSUB)


def test_templates_that_use_a_readers_value_otherwise_are_rendered_every_time(tmp_path: Path) -> None:
    """A filter on a value in layout.txt or a subject works on the value itself, as before the memo."""
    yaml = YAML.replace(
        "subject: \"Hello {{ contact.first_name or 'friend' }}\"",
        "subject: \"Hello {{ (contact.first_name or 'friend')|upper }}\"",
    )
    layout = "{{ content }}\n{% filter upper %}{{ unsubscribe_url }}{% endfilter %}\n"
    config = project(tmp_path, yaml=yaml, templates={"layout.txt": layout})
    renderer = Renderer(config)
    assert renderer.layout_text is not None and renderer._plan_of(renderer.layout_text) is None
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    for name in ("Ann", "Bea"):
        contact = TemplateContact(email="a@example.test", first_name=name)
        fast = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB)
        assert fast == renderer._render_direct("welcome", sequence, step, contact, webinar(), UNSUB)
        assert fast.subject == f"Hello {name.upper()}" and UNSUB.upper() in fast.text


@pytest.mark.parametrize(
    ("source", "remembered"),
    [
        ("{{ contact.first_name or 'friend' }} {{ practice.name|upper }}", True),
        ("{% if contact.first_name %}{{ contact.first_name }}{% endif %}{{ 'x' if not subject else subject }}", True),
        (
            "{% if contact.fields.get('message') %}{{ contact.fields.city }}{{ contact.fields['town'] }}{% endif %}",
            True,
        ),
        (
            "{% for i in range(3) %}{{ i }}{% endfor %}{{ webinar.start|format_date if contact.discreet }}",
            True,
        ),
        ("{{ contact.first_name|upper }}", False),
        ("{% if contact.first_name == 'Ann' %}hi{% endif %}", False),
        ("{% if contact.first_name is defined %}hi{% endif %}", False),
        ("{{ contact.first_name ~ '!' }}", False),
        ("{{ contact }}", False),
        ("{{ contact.fields }}", False),
        ("{{ contact.fields.items }}", False),
        ("{{ contact.fields.get('city', 'x') }}", False),
        ("{% set name = contact.first_name %}{{ name }}", False),
        ("{% set name %}{{ contact.first_name }}{% endset %}{{ name|upper }}", False),
        ("{% filter upper %}{{ subject }}{% endfilter %}", False),
        ("{% macro m() %}{{ subject }}{% endmacro %}{{ m() }}", False),
        ("{% for c in [contact] %}{{ c.first_name }}{% endfor %}", False),
        ("{% include 'layout.txt' %}", False),
        ("{{ lipsum() }}", False),
        ("{{ cycler(1, 2).next() }}", False),
        ("{{ [1, 2]|random }}", False),
        ("{{ self }}", False),
        ("{{ other }}", False),
    ],
)
def test_which_templates_are_remembered(tmp_path: Path, source: str, remembered: bool) -> None:
    renderer = Renderer(project(tmp_path))
    env = renderer._text_env
    assert (_plan(env, env.parse(source)) is not None) is remembered


def test_the_shipped_templates_are_all_remembered(tmp_path: Path) -> None:
    """The speed of `funnel run` rests on it: a shipped template the memo cannot take is rendered every time."""
    root = tmp_path / "shipped"
    root.mkdir()
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    renderer = Renderer(load_config(root / "sequences.yaml"))
    compiled = [*renderer._trees]  # every template it compiled, none rendered yet
    assert len(compiled) > 30
    unplanned = [template.name or "a subject or preheader" for template in compiled if not renderer._plan_of(template)]
    assert unplanned == []


class _Spoof:
    """An object that says it is a function."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return types.FunctionType

    def method(self) -> None:
        pass


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize("attribute", ["upper", "mro", "__class__", "_private", "gi_frame", "func_code", "__globals__"])
def test_the_sandbox_verdicts_are_the_same_when_remembered(attribute: str) -> None:
    """The remembered verdict per (type, attribute) is jinja's own, asked once; a spoofed __class__ is always asked."""
    plain = SandboxedEnvironment()
    remembering = _Sandbox()
    objects = ["text", str, len, _generator, _generator(), _Spoof(), _Spoof().method, {"a": 1}, Renderer]
    for _ in range(2):
        for obj in objects:
            value = getattr(obj, attribute, None)
            assert remembering.is_safe_attribute(obj, attribute, value) == plain.is_safe_attribute(
                obj, attribute, value
            )
