"""Templates see the reader's own session: `webinar.session`, her own `join_url`, `previous_start`.

Each email is rendered from the reader's own values: two readers whose webinar
differs only in one field (even one added later) never share an output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from render_project import UNSUB, load_project, webinar

from funnel.mail.render import Renderer, TemplateContact, TemplateWebinar

SESSION_MD = """\
Your session: {{ webinar.session }}.

[Join]({{ webinar.join_url }})

{% if webinar.previous_start %}It was {{ webinar.previous_start|format_date }} at \
{{ webinar.previous_start|format_time }}; now {{ webinar.start|format_date }}.{% endif %}
"""


@pytest.fixture
def renderer(tmp_path: Path) -> Renderer:
    return Renderer(load_project(tmp_path, templates={"reminder.md": SESSION_MD}))


def render(renderer: Renderer, who: TemplateWebinar) -> str:
    sequence = renderer.config.sequences["welcome"]
    step = sequence.step("reminder")
    assert step is not None
    contact = TemplateContact(email="ann@example.test", first_name="Ann")
    return renderer.render("welcome", sequence, step, contact, who, UNSUB).text


def test_two_readers_with_their_own_join_links_and_sessions_each_get_their_own(renderer: Renderer) -> None:
    ana = replace(webinar(), join_url="https://zoom.test/w/1?tk=ana", session="2027-01-14 19:00")
    bea = replace(webinar(), join_url="https://zoom.test/w/1?tk=bea", session="2027-02-18 19:00")
    first, second, again = render(renderer, ana), render(renderer, bea), render(renderer, ana)
    assert "tk=ana" in first and "2027-01-14 19:00" in first
    assert "tk=bea" in second and "2027-02-18 19:00" in second and "tk=ana" not in second
    assert again == first


def test_a_moved_session_shows_where_it_was(renderer: Renderer) -> None:
    denver = ZoneInfo("America/Denver")
    moved = replace(
        webinar(),
        start=datetime(2027, 3, 25, 18, 30, tzinfo=denver),
        previous_start=datetime(2027, 3, 18, 18, 30, tzinfo=denver),
        session="2027-03-18 18:30",
    )
    text = render(renderer, moved)
    assert "It was" in text and "March 18" in text and "March 25" in text
    assert "It was" not in render(renderer, replace(moved, previous_start=None))
    other = render(renderer, replace(moved, previous_start=datetime(2027, 3, 11, 18, 30, tzinfo=denver)))
    assert "March 11" in other


@dataclass(frozen=True)
class HostedWebinar(TemplateWebinar):
    """The webinar with a field added later (a host), printed by a letter."""

    host: str = ""


def test_a_new_field_printed_in_a_letter_never_leaks_between_two_readers(tmp_path: Path) -> None:
    """The old renderer's memo listed the webinar's fields by hand: a new one printed in a letter sent
    the first reader's value to the next. Every email is now rendered from its reader's own values."""
    renderer = Renderer(load_project(tmp_path, templates={"reminder.md": "Your host is {{ webinar.host }}.\n"}))
    maya, jordan = (HostedWebinar(**{**webinar().__dict__, "host": host}) for host in ("Maya", "Jordan"))
    texts = [render(renderer, who) for who in (maya, jordan, maya, jordan)]
    assert [text.split("\n", 1)[0] for text in texts] == [
        "Your host is Maya.",
        "Your host is Jordan.",
        "Your host is Maya.",
        "Your host is Jordan.",
    ]


def test_a_registrants_own_join_link_is_kept_and_written_into_her_letters(project_for_ingest: Path) -> None:
    """A row's join_url (Zoom's per-registrant link) is stored on her enrollment and used for her alone."""
    from datetime import UTC

    from sqlmodel import Session, select

    from funnel.config import load_config
    from funnel.mail.compose import letter
    from funnel.signups.sources import SignupRow
    from funnel.signups.store import apply_rows
    from funnel.store.db import make_engine
    from funnel.store.models import Contact, Enrollment

    config = load_config(project_for_ingest / "sequences.yaml")
    source = config.sources["webinar-registrations"]
    start = datetime(2027, 1, 15, 2, tzinfo=UTC)
    rows = [
        SignupRow(
            line=2, email="ana@example.test", first_name="Ana", webinar_start=start, join_url="https://z.test/ana"
        ),
        SignupRow(line=3, email="bea@example.test", first_name="Bea", webinar_start=start),
    ]
    engine = make_engine(f"sqlite:///{project_for_ingest / 'funnel.db'}")
    with Session(engine) as session:
        apply_rows(session, config, "webinar-registrations", source, rows, datetime(2027, 1, 5, tzinfo=UTC))
        session.commit()
        renderer = Renderer(config)
        texts = {}
        for enrollment in session.scalars(select(Enrollment)):
            contact = session.get(Contact, enrollment.contact_id)
            assert contact is not None and contact.email is not None
            assert enrollment.session == "2027-01-14 19:00"
            sequence = config.sequences[enrollment.sequence]
            step = sequence.step("registered")
            assert step is not None
            texts[contact.email] = letter(config, renderer, contact, enrollment, enrollment.sequence, step, UNSUB).text
    engine.dispose()
    assert "https://z.test/ana" in texts["ana@example.test"]
    assert "https://z.test/ana" not in texts["bea@example.test"]
    assert config.webinars["relationship-911"].join_url in texts["bea@example.test"]


@pytest.fixture
def project_for_ingest(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "practice"
    repo = Path(__file__).resolve().parent.parent
    root.mkdir()
    shutil.copy(repo / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(repo / "email_templates", root / "email_templates")
    return root
