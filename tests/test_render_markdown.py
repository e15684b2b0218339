"""`Renderer`: a Markdown step in the layout with its CSS inlined, its text part, subjects and preheaders."""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import css_inline
import pytest
from markdown_it import MarkdownIt
from render_project import (
    ADDRESS,
    LAYOUT_HTML,
    REPO,
    UNSUB,
    YAML,
    load_project,
    render,
)

from funnel.config import load_config
from funnel.mail.render import Renderer, TemplateContact, TemplateWebinar


def test_markdown_becomes_html_inside_the_layout(tmp_path: Path) -> None:
    out = render(load_project(tmp_path))
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
    out = render(load_project(tmp_path))
    assert out.html is not None
    assert '<p style="color: #333;">Hi Ann,</p>' in out.html
    # the footer paragraph of the layout too
    assert '<p style="color: #333;">Test Practice<br>' in out.html


def test_template_values_in_link_targets_keep_working(tmp_path: Path) -> None:
    config = load_project(tmp_path)
    out = render(config, "reminder")
    assert out.html is not None
    assert '<a href="https://practice.test/join">Join</a>' in out.html
    assert "Join (https://practice.test/join)" in out.text


def test_template_values_in_autolinks_keep_working(tmp_path: Path) -> None:
    config = load_project(
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
    config = load_project(tmp_path, templates={"hello.md": "Hi <b onclick='x()'>there</b>\n"})
    out = render(config)
    assert out.html is not None
    assert "<b onclick" not in out.html
    assert "&lt;b onclick" in out.html


def test_format_date_and_time_filters(tmp_path: Path) -> None:
    out = render(load_project(tmp_path), "reminder")
    assert "On Thursday, January 14 at 7:00 PM MST." in out.text
    assert out.subject == "Tomorrow at 7:00 PM MST"


def test_plain_text_part_from_the_same_markdown(tmp_path: Path) -> None:
    out = render(load_project(tmp_path))
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
    config = load_project(tmp_path, templates={"hello.md": "[https://practice.test/x](https://practice.test/x)\n"})
    out = render(config)
    assert out.text.startswith("https://practice.test/x\n")


def test_without_layout_txt_the_text_part_still_has_the_footer(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"layout.txt": None})
    out = render(config)
    assert "Read our guide (https://practice.test/guide) first." in out.text
    assert ADDRESS in out.text
    assert UNSUB in out.text


def test_html_step_templates_get_a_text_part_via_inscriptis(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="<b>Zed</b>")
    out = render(load_project(tmp_path), "page", contact=contact)
    assert out.html is not None
    assert "<h1>Hello &lt;b&gt;Zed&lt;/b&gt;</h1>" in out.html  # .html templates autoescape too
    assert "Hello <b>Zed</b>" in out.text
    assert "our page" in out.text and "https://practice.test/page" in out.text
    assert "alpha" in out.text and "beta" in out.text
    assert "<h1>" not in out.text and "<ul>" not in out.text
    assert ADDRESS in out.text and UNSUB in out.text


def test_subject_renders_with_jinja(tmp_path: Path) -> None:
    config = load_project(tmp_path)
    assert render(config).subject == "Hello Ann"
    nameless = TemplateContact(email="x@example.test")
    assert render(config, contact=nameless).subject == "Hello friend"


def test_subject_has_no_line_breaks(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="Ann\r\nBcc: evil@example.test\n")
    subject = render(load_project(tmp_path), contact=contact).subject
    assert "\n" not in subject and "\r" not in subject
    assert subject == "Hello Ann Bcc: evil@example.test"


def test_subject_is_not_html_escaped(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="Tom & Jerry")
    assert render(load_project(tmp_path), contact=contact).subject == "Hello Tom & Jerry"


def test_discreet_rendering_is_text_only_with_the_discreet_subject(tmp_path: Path) -> None:
    config = load_project(tmp_path)
    out = render(config, discreet=True)
    assert out.html is None
    assert out.subject == "Your confirmation"  # the step's discreet_subject
    # her links go through the neutral /j/ redirect (funnel.mail.jump); the unsubscribe link stays as it is
    assert re.search(r"Read our guide \(https://mail\.practice\.test/j/[A-Za-z0-9_-]{18}\) first\.", out.text)
    assert "https://practice.test/guide" not in out.text
    assert ADDRESS in out.text and UNSUB in out.text


def test_discreet_subject_falls_back_to_the_practice_one(tmp_path: Path) -> None:
    out = render(load_project(tmp_path), "reminder", discreet=True)
    assert out.html is None
    assert out.subject == "A quiet note"


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
    config = load_project(tmp_path, yaml=PREHEADER_YAML, templates={"layout.html": PREHEADER_LAYOUT})
    out = render(config, contact=TemplateContact(email="ann@example.test", first_name="Ann & Co"))
    assert out.html is not None
    body = out.html.split("<body>", 1)[1]
    assert body.lstrip().startswith('<div style="display:none">Intro Webinar for Ann &amp; Co</div>')
    assert "Intro Webinar for" not in out.text and "details you asked" not in out.text
    assert "details you asked" not in out.html


def test_a_discreet_reader_gets_only_the_discreet_preheader_as_the_first_line(tmp_path: Path) -> None:
    config = load_project(tmp_path, yaml=PREHEADER_YAML, templates={"layout.html": PREHEADER_LAYOUT})
    out = render(config, discreet=True)
    assert out.html is None
    assert out.text.startswith("The details you asked for\n\nHi Ann,")
    assert "Intro Webinar" not in out.text  # never the marketing preheader
    # a step without a discreet_preheader: no preheader at all for her
    plain = render(config, "reminder", discreet=True)
    assert plain.text.startswith("See you at")
    no_discreet = PREHEADER_YAML.replace('        discreet_preheader: "The details you asked for"\n', "")
    out = render(load_project(tmp_path, yaml=no_discreet, templates={"layout.html": PREHEADER_LAYOUT}), discreet=True)
    assert out.text.startswith("Hi Ann,") and "Intro Webinar for" not in out.text


def test_templates_see_contact_discreet_and_the_discreet_signature(tmp_path: Path) -> None:
    hello = "{% if contact.discreet %}Quiet.{% else %}Loud.{% endif %}\n\n{{ practice.from_name }}\n"
    config = load_project(tmp_path, yaml=PREHEADER_YAML, templates={"hello.md": hello})
    normal = render(config)
    discreet = render(config, discreet=True)
    assert "Loud." in normal.text and "Dr. Full Name" in normal.text
    assert "Quiet." in discreet.text and "F. Name" in discreet.text and "Dr. Full Name" not in discreet.text


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


def test_rendering_does_not_reread_template_files(tmp_path: Path) -> None:
    config = load_project(tmp_path)
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


def test_statements_alone_on_their_lines_stand_outside_paragraphs(tmp_path: Path) -> None:
    """A `{% if %}` alone on its line wraps whole paragraphs; a paragraph wholly inside one is left
    out with it (no empty paragraph); `{% endif %}` at the start of a paragraph closes before it."""
    body = (
        "Hi.\n\n{% if contact.discreet %}\nQuiet.\n{% else %}\nLoud.\n{% endif %}\n\n"
        "{% if contact.first_name %}**{{ contact.first_name }}**{% endif %}\n\n"
        "{% if contact.last_name %}\n{{ contact.last_name }}\n\n{% endif %}Bye.\n"
    )
    config = load_project(tmp_path, templates={"hello.md": body})
    nameless = render(config, contact=TemplateContact(email="a@example.test"))
    assert nameless.html is not None
    content = nameless.html.split('<div class="content">', 1)[1].split("</div>", 1)[0]
    assert re.sub(r"\s+", " ", re.sub(r' style="[^"]*"', "", content)).strip() == "<p>Hi.</p> <p>Loud.</p> <p>Bye.</p>"
    assert nameless.text.startswith("Hi.\n\nLoud.\n\nBye.\n\n--\n")
    named = render(config, contact=TemplateContact(email="a@example.test", first_name="Ann", last_name="Lee"))
    assert named.html is not None and "<strong>Ann</strong></p>" in named.html
    assert named.text.startswith("Hi.\n\nLoud.\n\nAnn\n\nLee\n\nBye.\n")
    assert render(config, discreet=True).text.startswith("Hi.\n\nQuiet.\n\nAnn\n\nBye.\n")


def test_a_button_is_a_table_that_outlook_draws_and_words_with_the_link_in_text(tmp_path: Path) -> None:
    body = 'Hi.\n\n{% button practice.links.consultation, "Book a free consultation" %}\n\nBye.\n'
    yaml = YAML.replace(
        '\n  discreet_subject: "A quiet note"',
        '\n  links:\n    consultation: "https://practice.test/book?a=1&b=2"\n  discreet_subject: "A quiet note"',
    )
    config = load_project(tmp_path, yaml=yaml, templates={"hello.md": body})
    out = render(config)
    assert out.html is not None
    button = out.html.split('<table class="button"', 1)[1].split("</table>", 1)[0]
    assert 'bgcolor="#3f6f62"' in button and 'role="presentation"' in button
    assert '<a href="https://practice.test/book?a=1&amp;b=2"' in button and ">Book a free consultation</a>" in button
    assert "Hi.\n\nBook a free consultation: https://practice.test/book?a=1&b=2\n\nBye.\n" in out.text
    quiet = render(config, discreet=True).text
    assert re.search(r"\nBook a free consultation: https://mail\.practice\.test/j/[\w-]+\n", quiet), quiet


def test_markdown_is_read_and_css_inlined_when_loading_never_per_email(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_project(tmp_path)
    renderer = Renderer(config)
    calls: list[str] = []
    parse, inline = MarkdownIt.parse, css_inline.CSSInliner.inline
    monkeypatch.setattr(MarkdownIt, "parse", lambda self, *a, **k: calls.append("parse") or parse(self, *a, **k))
    monkeypatch.setattr(css_inline.CSSInliner, "inline", lambda self, *a: calls.append("inline") or inline(self, *a))
    for n in range(50):
        contact = TemplateContact(email=f"p{n}@example.test", first_name=f"Reader {n}" if n % 3 else None)
        for step in ("hello", "reminder", "page"):
            out = render(config, step, contact=contact, renderer=renderer, discreet=n % 2 == 1)
            assert step != "hello" or out.text.startswith(f"Hi Reader {n}," if n % 3 else "Hi there,")
    assert calls == []
