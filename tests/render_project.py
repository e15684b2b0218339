"""A small project for the renderer's tests: sequences.yaml, layouts and three steps, and helpers
that render through the public API (`Renderer.render`) and read the HTML as a browser would."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

from funnel.config import Config, load_config
from funnel.mail.render import Rendered, Renderer, TemplateContact, TemplateWebinar

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


def load_project(root: Path, **kwargs: object) -> Config:
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


def parsed(html: str) -> tuple[set[str], set[str], set[str]]:
    """Every element name, attribute name and link target (href, src) of a page, as a browser reads it."""
    tags: set[str] = set()
    attributes: set[str] = set()
    targets: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.add(tag)
            attributes.update(name for name, _ in attrs)
            targets.update(value or "" for name, value in attrs if name in ("href", "src"))

    Collect().feed(html)
    return tags, attributes, targets
