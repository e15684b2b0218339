"""What a template may not do is refused when the Renderer loads it, with the file's line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from render_project import LAYOUT_HTML, NOW, load_project, parsed, render

from funnel.errors import TemplateError
from funnel.mail.preview import check
from funnel.mail.render import Renderer, TemplateContact


@pytest.mark.parametrize(
    "tag", ["<p class={{ contact.first_name or 'x' }}>", "<p {{ contact.first_name or 'x' }}>", "<img alt={{ x }}>"]
)
def test_a_value_in_a_bare_attribute_is_refused_with_its_line(tmp_path: Path, tag: str) -> None:
    """Autoescaping keeps a value inside a quoted attribute only: `x onmouseover=...` would add one."""
    layout = LAYOUT_HTML.replace("<body>", f"<body>\n{tag}x</p>", 1)
    assert layout != LAYOUT_HTML
    config = load_project(tmp_path, templates={"layout.html": layout})
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
    config = load_project(tmp_path, templates={"layout.html": layout})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="x onmouseover=alert(1)"))
    assert out.html is not None and "onmouseover" not in parsed(out.html)[1]


@pytest.mark.parametrize(
    ("name", "source", "line"),
    [
        ("layout.html", LAYOUT_HTML.replace("<body>", "<body>\n<{{ contact.first_name or 'x' }}>hi", 1), 5),
        (
            "layout.html",
            LAYOUT_HTML.replace("<body>", "<body>\n<p {% if 2 > 1 %}{{ contact.email }}{% endif %}>", 1),
            5,
        ),
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
    config = load_project(tmp_path, templates={name: source})
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
    config = load_project(tmp_path, templates={"layout.html": layout})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="x onmouseover=alert(1)"))
    assert out.html is not None and "onmouseover" not in parsed(out.html)[1]


@pytest.mark.parametrize(
    "markdown",
    [
        "```\nC:\\Users\\{{ practice.name }}\n```\n",
        "Open `\\\\server\\{{ practice.name }}` now.\n",
        "{# old: C:\\Users\\{{ contact.first_name }} #}Hi.\n",
        "\\*{{ practice.name }}\n",
        "Folder: C:\\Users\\{{ contact.first_name or 'x' }}\n",
        "C:\\Users\\{% if contact.first_name %}{{ contact.first_name }}{% endif %}\n",
        "C:\\Users\\{# the name #}{{ contact.first_name or 'x' }}\n",
    ],
)
def test_backslashes_in_code_comments_or_escaping_template_text_are_accepted(tmp_path: Path, markdown: str) -> None:
    """A backslash before a value escapes nothing of hers: a value is never read as Markdown."""
    config = load_project(tmp_path, templates={"hello.md": markdown})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="<http://evil.test>"))
    assert out.html is not None and not any("evil" in target for target in parsed(out.html)[2])


def test_an_included_part_a_value_could_escape_from_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    """The checks apply to every file the templates load: a part included by an .html step too."""
    templates = {
        "page.html": "<p>Hi</p>\n{% include 'button.html' %}\n",
        "button.html": '<p>Book</p>\n<a href="{{ unsubscribe_url }}"'
        " class={{ contact.first_name or 'x' }}>Book</a>\n",
    }
    config = load_project(tmp_path, templates=templates)
    with pytest.raises(TemplateError) as info:
        render(config, "page", contact=TemplateContact(email="a@example.test", first_name="Ann"))
    assert str(info.value).startswith("email_templates/button.html:2: a value printed inside an HTML tag")


def test_a_double_backslash_before_a_value_is_a_backslash(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"hello.md": "Folder: C:\\\\Users\\\\{{ contact.first_name or 'x' }}\n"})
    out = render(config, contact=TemplateContact(email="a@example.test", first_name="<http://evil.test>"))
    assert "C:\\Users\\<http://evil.test>" in out.text


@pytest.mark.parametrize(
    ("markdown", "line", "says"),
    [
        ("Hi.\n\n[Open]({{ contact.first_name }}:alert%281%29)\n", 3, "choose what kind of link"),
        ("Hi.\n\n[Open](java{{ contact.first_name }})\n", 3, "choose what kind of link"),
        ("[Open]({{ contact.first_name }}{{ contact.last_name }})\n", 1, "choose what kind of link"),
        ("Hi.\n\n{% if contact.discreet %}- a quiet item{% endif %}\n", 3, "list, heading or quote mark"),
        ("{% if contact.discreet %}# Quiet{% endif %}\n", 1, "list, heading or quote mark"),
        ("Hello {% if contact.discreet %}there\n\nfriend{% endif %}.\n", 3, "stand in different paragraphs"),
        ("- one {% if contact.discreet %}\n- two {% endif %}\n", 2, "stand in different paragraphs"),
        ("Hi.\n\n{% include 'layout.txt' %}\n", 3, "make the letter an .html template"),
        ("{% macro m() %}*x*{% endmacro %}{{ m() }}\n", 1, "make the letter an .html template"),
        ('Hi {% button practice.name, "Go" %}\n', 1, "alone on its line"),
    ],
)
def test_markdown_a_value_or_statement_would_change_is_refused_with_its_line(
    tmp_path: Path, markdown: str, line: int, says: str
) -> None:
    config = load_project(tmp_path, templates={"hello.md": markdown})
    with pytest.raises(TemplateError) as info:
        Renderer(config)
    assert str(info.value).startswith(f"email_templates/hello.md:{line}: "), str(info.value)
    assert says in str(info.value)
    assert check(config, NOW) == [str(info.value)]


@pytest.mark.parametrize(
    ("html", "says"),
    [
        ("<p style=\"color: {{ contact.fields.city or 'red' }}\">x</p>", "style attribute"),
        ('<p style="{% if contact.discreet %}color: red{% endif %}">x</p>', "style attribute"),
        ("<style>p { color: {{ practice.name }} }</style>", "inside <style>"),
        ("<table>{% for i in range(2) %}<tr><td>{{ i }}</td></tr>{% endfor %}</table>", "rewritten around this tag"),
    ],
)
def test_html_the_css_inliner_would_change_is_refused_with_its_line(tmp_path: Path, html: str, says: str) -> None:
    layout = LAYOUT_HTML.replace("<body>", f"<body>\n{html}", 1)
    with pytest.raises(TemplateError) as info:
        Renderer(load_project(tmp_path, templates={"layout.html": layout}))
    assert str(info.value).startswith("email_templates/layout.html:5: "), str(info.value)
    assert says in str(info.value)


@pytest.mark.parametrize(
    "markdown",
    [
        "[Profile](https://x.test/u/{{ contact.first_name or 'x' }})\n",
        "[Write](mailto:{{ contact.email }})\n",
        "[Join]({{ webinar.join_url }}/room?x=1)\n",
        "[Back](#{{ step.id }})\n",
        "Hi.\n\n{% if contact.discreet %}\n\n- a quiet item\n\n{% endif %}\n",
        "{% if contact.discreet %}\nA\n\nB{% endif %}\n",
    ],
)
def test_links_and_statements_that_keep_markdown_whole_are_accepted(tmp_path: Path, markdown: str) -> None:
    config = load_project(tmp_path, templates={"hello.md": markdown})
    renderer = Renderer(config)
    for discreet in (False, True):
        render(config, contact=TemplateContact(email="a@example.test"), discreet=discreet, renderer=renderer)
