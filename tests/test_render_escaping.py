"""A reader's value never becomes markup: no element, attribute or link target of its own, escaped once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import escape
from render_project import HELLO_MD, LAYOUT_HTML, UNSUB, YAML, load_project, parsed, render, webinar

from funnel.mail.render import Renderer, TemplateContact


def test_html_autoescapes_contact_values(tmp_path: Path) -> None:
    contact = TemplateContact(email="x@example.test", first_name="<script>alert(1)</script>")
    out = render(load_project(tmp_path), contact=contact)
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
    out = render(load_project(tmp_path), contact=contact)
    assert out.html is not None
    assert "evil.test" in out.html  # shown as text
    assert 'href="http://evil.test' not in out.html
    assert 'src="http://evil.test' not in out.html
    assert "(http://evil.test)" not in out.text.replace(name, "")


def test_contact_values_cannot_inject_markdown_emphasis_or_headings(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"hello.md": "{{ contact.first_name }}\n\nHi {{ contact.last_name }}\n"})
    contact = TemplateContact(email="x@example.test", first_name="# Big", last_name="**loud** _x_")
    out = render(config, contact=contact)
    assert out.html is not None
    assert "<h1>" not in out.html
    assert "<strong>" not in out.html and "<em>" not in out.html
    assert "# Big" in out.html
    assert "**loud** _x_" in out.html
    assert "# Big" in out.text and "**loud** _x_" in out.text


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
    config = load_project(tmp_path, templates={"hello.md": "[your page]({{ contact.fields.site }})\n"})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    contact = TemplateContact(email="x@example.test", first_name="X", fields={"site": value})
    out = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB)
    assert out.html is not None
    tags, attributes, targets = parsed(out.html)
    assert not any(t.lower().startswith(("javascript", "data:")) for t in targets), targets
    assert not {"onmouseover", "onclick"} & attributes and "script" not in tags
    assert "your page ()" not in out.text


def test_a_readers_plain_url_in_a_link_target_is_filled_in(tmp_path: Path) -> None:
    config = load_project(tmp_path, templates={"hello.md": "[your page]({{ contact.fields.site }})\n"})
    renderer = Renderer(config)
    sequence = config.sequences["welcome"]
    step = sequence.step("hello")
    assert step is not None
    for site in ("https://a.test/x?y=1&z=2", "https://b.test/"):
        contact = TemplateContact(email="x@example.test", fields={"site": site})
        out = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB)
        assert out.html is not None and f'href="{site.replace("&", "&amp;")}"' in out.html
        assert f"your page ({site})" in out.text


AWKWARD_YAML = YAML.replace(
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

BASE_LAYOUT_HTML = """\
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


AWKWARD_LAYOUT_TXT = """\
{{ content }}

{% if not contact.first_name %}Dear friend{% else %}Dear {{ contact.first_name }}{% endif %}
{{ contact.email }} {{ contact.last_name if contact.last_name else 'x' }} {{ contact.discreet and 'discreet' }}
Unsubscribe: {{ unsubscribe_url }}
"""


BASE_HELLO_MD = (
    HELLO_MD
    + "\n{% if contact.fields.city %}From {{ contact.fields.city }}.{% endif %} Write to {{ contact.email }}.\n"
    + "{% if contact.fields.get('message') %}Thank you for your note.{% endif %}\n"
)


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

#: values in text, in double- and single-quoted attributes, next to a comment and in a <textarea>
AWKWARD_LAYOUT_HTML = BASE_LAYOUT_HTML.replace(
    "<p>{% if contact.first_name %}",
    "<p title=\"{{ contact.first_name or 'friend' }}\" class=\"{{ contact.last_name or 'none' }}\">"
    "<span title='{{ contact.fields.city or \"x\" }}'><!-- for {{ step.id }} --></span>{% if contact.first_name %}",
).replace("</body>", "<textarea>{{ contact.first_name or 'x' }}</textarea></body>")

#: Markdown around values as a therapist's template might put them
AWKWARD_HELLO_MD = (
    BASE_HELLO_MD
    + "\n# {{ contact.fields.city or 'Home' }}\n\n"
    + "Write to [us](https://a.test/x \"{{ contact.first_name or 'x' }}\").\n\n"
    + "Dear {{ contact.first_name or 'x' }}, see ![{{ contact.last_name or 'a photo' }}](https://a.test/i.png).\n\n"
    + "> {{ contact.fields.message or 'quiet' }}\n\n"
    + "- {{ contact.fields.city or 'nowhere' }}\n- **Dear** {{ contact.last_name or 'x' }} **now**\n"
)

#: values in link words, emphasis, code and a fence's info string
TRICKY_HELLO_MD = (
    BASE_HELLO_MD
    + "\nWrite to [{{ contact.email }}](mailto:{{ contact.email }}) or [{{ contact.first_name or 'x' }}](https://a.test).\n\n"
    + "Dear *{{ contact.first_name or 'x' }}*, x*{{ contact.last_name or 'y' }}*y.\n\n"
    + "- Use `a` or `b {{ contact.first_name or 'c' }} d\n\n"
    + "```{{ contact.last_name or 'text' }}\ncode\n```\n"
)


AWKWARD_PAGE_HTML = (
    "<h1>Hello {{ contact.first_name or 'there' }}</h1>\n"
    "<pre>{{ contact.last_name or 'x' }}</pre>\n"
    "<table><tr><td>{{ contact.fields.city or 'y' }}</td></tr></table>\n"
    "<p title=\"{{ contact.fields.message or 'm' }}\">Dear {{ contact.first_name or 'you' }}, welcome</p>\n"
)


#: every awkward value the same template could meet, with where each was printed
_TEMPLATES = {
    "layout.html": AWKWARD_LAYOUT_HTML,
    "hello.md": AWKWARD_HELLO_MD + TRICKY_HELLO_MD[len(BASE_HELLO_MD) :],
    "page.html": AWKWARD_PAGE_HTML,
    "layout.txt": AWKWARD_LAYOUT_TXT,
}
_RENDERERS: dict[str, Renderer] = {}


def _awkward_renderer(tmp_path: Path) -> Renderer:
    key = str(tmp_path)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(load_project(tmp_path, yaml=AWKWARD_YAML, templates=_TEMPLATES))
    return _RENDERERS[key]


def _as_shown(value: str) -> str:
    """A value as the email shows it: on one line, without controls, trimmed."""
    import re

    value = re.sub(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+", " ", value)
    return re.sub(r"[\x00-\x08\x0e-\x1b\x1f\x7f\ud800-\udfff]", "", value).strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_AWKWARD, last=_AWKWARD, city=_AWKWARD, message=_AWKWARD, discreet=st.booleans())
def test_awkward_values_never_add_markup_and_are_escaped_once(
    tmp_path: Path, first: str, last: str, city: str, message: str, discreet: bool
) -> None:
    """Quotes, entities, Markdown, line breaks, controls and markup in a reader's values, printed in
    text, attributes, link words, emphasis, code, lists, quotes, a <pre> and a table: the page has
    exactly the elements, attributes and link targets it has for a plain name, and the text part
    shows each value as typed (`O'Brien` stays `O'Brien`, `&copy;` stays `&copy;`)."""
    renderer = _awkward_renderer(tmp_path)
    sequence = renderer.config.sequences["welcome"]
    plain = TemplateContact(
        email="ann@example.test", first_name="Ann", last_name="Lee", fields={"city": "Town", "message": "Hi"}
    )
    contact = TemplateContact(
        email="ann@example.test", first_name=first, last_name=last, fields={"city": city, "message": message}
    )
    for step_id in ("hello", "reminder", "page"):
        step = sequence.step(step_id)
        assert step is not None
        out = renderer.render("welcome", sequence, step, contact, webinar(), UNSUB, discreet=discreet)
        base = renderer.render("welcome", sequence, step, plain, webinar(), UNSUB, discreet=discreet)
        assert "\x00" not in out.text and "\r" not in out.text
        for value in (first, last, city, message):
            shown = _as_shown(value)
            if shown and step_id == "hello":
                assert shown in out.text, (shown, out.text)
        if out.html is None:
            continue
        assert base.html is not None
        assert parsed(out.html)[:2] == parsed(base.html)[:2]
        targets = parsed(out.html)[2]
        assert not any(t.lower().startswith(("javascript", "data:", "vbscript")) for t in targets), targets
        assert len(targets) == len(parsed(base.html)[2])
        for value in (first, last, city, message):
            shown = _as_shown(value)
            if shown and step_id == "hello":
                assert str(escape(shown)) in out.html, shown


@pytest.mark.parametrize(
    ("value", "text", "html_text"),
    [
        ("O'Brien", "O'Brien", "O&#39;Brien"),
        ("&copy;", "&copy;", "&amp;copy;"),
        ('Ann "Annie"', 'Ann "Annie"', "Ann &#34;Annie&#34;"),
    ],
)
def test_a_value_shows_as_typed_in_text_and_is_escaped_once_in_html(
    tmp_path: Path, value: str, text: str, html_text: str
) -> None:
    config = load_project(tmp_path)
    out = render(config, contact=TemplateContact(email="a@example.test", first_name=value))
    assert out.html is not None
    assert f"Hi {text}," in out.text and out.subject == f"Hello {text}"
    assert f"Hi {html_text}," in out.html and f"<title>Hello {html_text}</title>" in out.html
    assert "&amp;amp;" not in out.html and "&amp;#" not in out.html


@pytest.mark.parametrize(
    ("markdown", "value"),
    [
        ("[Open](https://x.test/{{ contact.first_name }})\n", "javascript:alert(1)"),
        ("Thanks!\n{{ contact.first_name }}. That is your seat number.\n", "1"),
        ("- {{ contact.first_name }}) y\n", "6"),
        ("Tom &{{ contact.first_name }};\n", "copy"),
        ("Tom &#{{ contact.first_name }};\n", "65"),
        ("Tom &amp{{ contact.first_name }}\n", ";"),
        ("[Hi {{ contact.first_name }}]\n\n[hi ann]: https://practice.test/ann\n", "Ann"),
        ("[Profile](https://x.test/u/{{ contact.first_name }})\n", "x:@y"),
        ("[Profile](https://x.test/u/{{ contact.first_name }})\n", "a%"),
        ("[here]({{ contact.first_name }})\n", "javascript:alert(1)"),
        ("[Email](mailto:{{ contact.first_name }})\n", "me@x.test?subject=a b"),
        ("*{{ contact.first_name }}*, x*{{ contact.first_name }}*y\n", "*a*"),
        ("Use `a {{ contact.first_name }}` now.\n", "x`y"),
        ("Hi {{ contact.first_name }}\n", "Ann\ud800"),
    ],
)
def test_where_template_text_meets_a_value_the_value_stays_text(tmp_path: Path, markdown: str, value: str) -> None:
    """Break-it cases of the old renderer: template text next to a value that only the value could
    complete. A value is never parsed, so it can complete nothing: no entity, list, reference or
    link of its making."""
    config = load_project(tmp_path, templates={"hello.md": markdown})
    base = render(config, contact=TemplateContact(email="a@example.test", first_name="Ann"))
    contact = TemplateContact(email="ann@example.test", first_name=value, last_name=value)
    for discreet in (False, True):
        out = render(config, contact=contact, discreet=discreet)
        assert "\ud800" not in out.text
        if out.html is not None:
            assert base.html is not None
            assert parsed(out.html)[:2] == parsed(base.html)[:2]
            assert not any(t.startswith("javascript") for t in parsed(out.html)[2])
            assert "&amp;copy;" not in markdown or "&copy;" not in out.html


def test_a_private_use_character_and_entities_in_an_html_step_keep_the_text_part_as_typed(tmp_path: Path) -> None:
    """inscriptis unescapes once more than HTML does (twice in a table cell): undone."""
    page = "<table><tr><td>{{ contact.first_name }} &amp;amp; &copy;</td></tr></table><p>{{ contact.last_name }}</p>\n"
    config = load_project(tmp_path, templates={"page.html": page})
    contact = TemplateContact(email="a@example.test", first_name="Tom &copy; \ue000", last_name="&lt;b&gt;")
    text = render(config, "page", contact=contact).text
    assert "Tom &copy; \ue000 &amp; ©" in text and "&lt;b&gt;" in text


def test_a_value_in_a_link_target_of_an_html_step_or_the_layout_is_checked_too(tmp_path: Path) -> None:
    page = '<p><a href="{{ contact.fields.site }}">your page</a></p>\n'
    layout = LAYOUT_HTML.replace("<body>", '<body>\n<img src="{{ contact.fields.photo }}" alt="">', 1)
    config = load_project(tmp_path, templates={"page.html": page, "layout.html": layout})
    for value in ("javascript:alert(1)", "data:text/html;base64,PHNjcmlwdD4=", "https://ok.test/a b"):
        contact = TemplateContact(email="a@example.test", fields={"site": value, "photo": value})
        out = render(config, "page", contact=contact)
        assert out.html is not None
        assert not any(t.lower().startswith(("javascript", "data:")) for t in parsed(out.html)[2])
        assert value != "https://ok.test/a b" or 'href="https://ok.test/a%20b"' in out.html
