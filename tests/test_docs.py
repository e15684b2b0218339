"""The practice's documentation: README.md for the practice, the rest under docs/, and both true to the code."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from funnel import config as config_models
from funnel.schedule import due_times

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
SEQUENCES_MD = (REPO / "docs" / "sequences.md").read_text(encoding="utf-8")

#: each section of sequences.yaml and the model of its keys (SendWindow is written as one "08:00-20:00" value)
SECTIONS: dict[str, type[BaseModel]] = {
    "config": config_models.Config,
    "practice": config_models.Practice,
    "delivery": config_models.Delivery,
    "tracking": config_models.Tracking,
    "alerts": config_models.Alerts,
    "inbound": config_models.Inbound,
    "serve": config_models.Serve,
    "webinars": config_models.Webinar,
    "sessions": config_models.WebinarSession,
    "sources": config_models.Source,
    "sequences": config_models.Sequence,
    "steps": config_models.Step,
}


def test_docs_sequences_md_explains_every_key() -> None:
    missing = [
        f"{section}.{name}"
        for section, model in SECTIONS.items()
        for name, field in model.model_fields.items()
        if not field.exclude and f"`{name}`" not in SEQUENCES_MD and f"{name}:" not in SEQUENCES_MD
    ]
    assert not missing, f"docs/sequences.md does not explain {missing}"


def test_the_webinar_offset_example_means_what_docs_sequences_md_says() -> None:
    """`webinar: -7d` with `at: "10:00"` for a 6:30 PM webinar is six days before; `-8d` is seven."""
    denver = ZoneInfo("America/Denver")
    steps = [
        {"id": name, "webinar": offset, "at": "10:00", "subject": "s", "template": "t.md"}
        for name, offset in (("minus-7", "-7d"), ("minus-8", "-8d"))
    ]
    sequence = config_models.Sequence.model_validate({"steps": steps})
    enrolled = datetime(2026, 12, 1, tzinfo=UTC)

    def local(start: datetime) -> dict[str, datetime]:
        return {k: v.astimezone(denver) for k, v in due_times(sequence, enrolled, start, denver).items() if v}

    evening = local(datetime(2027, 1, 14, 18, 30, tzinfo=denver))
    assert evening["minus-7"] == datetime(2027, 1, 8, 10, 0, tzinfo=denver)  # Friday: six days before
    assert evening["minus-8"] == datetime(2027, 1, 7, 10, 0, tzinfo=denver)  # Thursday: seven days before
    morning = local(datetime(2027, 1, 14, 9, 0, tzinfo=denver))
    assert morning["minus-7"] == datetime(2027, 1, 7, 10, 0, tzinfo=denver)
    for phrase in ("Friday 8 January at\n10:00 AM: six days before", "webinar: -8d", "Thursday 7 January, 10:00 AM"):
        assert phrase in SEQUENCES_MD, phrase


def test_the_readme_is_for_the_practice_and_short() -> None:
    assert len(README.splitlines()) <= 330
    for heading in (
        "## Two commands",
        "## Make it yours",
        "## Everyday use",
        "## Going live",
        "## Getting exports onto the server",
        "## When an alert comes",
        "## Health information",
    ):
        assert f"\n{heading}" in README, heading
    # the production install, step by step
    for needed in (
        "useradd --system",
        "python3-venv",
        "funnel init /srv/funnel",
        "FUNNEL_SECRET_KEY=",
        "funnel-serve.service",
        "funnel-run.timer",
        "crontab -u funnel -e",
        "reverse_proxy 127.0.0.1:8025",
        "v=spf1 include:sendgrid.net",
        "v=DMARC1; p=none;",
        "_domainkey",
        "0.3 %",
        "BAA",
        "docs/zoom.md",
    ):
        assert needed in README, needed
    # the specifics the letters state that the practice's article does not, for her to confirm
    assert "These are things the letters state that the practice's own article does not" in README
    assert "breathing counts in `hour-before`" in README


def test_every_link_to_a_file_points_at_one() -> None:
    """Relative links of README.md and docs/*.md name files that exist (docs/zoom.md comes with the Zoom work)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and path != (REPO / "docs" / "zoom.md"):
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
