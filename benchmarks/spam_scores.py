"""SpamAssassin's score of every shipped letter, as a reader and as a discreet reader gets it.

    .venv/bin/python benchmarks/spam_scores.py [--limit 2.0]

Each step is rendered for the sample reader (and for a discreet one), built into
the exact .eml the outbox transport writes (`compose.envelope`,
`outbox.message_bytes`), and scored with `spamassassin -L -t` (local tests only:
no network lookups, so DNS blocklists do not count). Exits 1 when any letter
scores at or above the limit; needs the `spamassassin` command (Debian:
`apt-get install spamassassin`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from funnel.config import load_config
from funnel.mail.compose import envelope
from funnel.mail.preview import sample_contact, sample_unsubscribe_url, sample_webinar
from funnel.mail.render import Renderer
from funnel.store.models import Contact
from funnel.transports.outbox import message_bytes

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 1, 5, 16, tzinfo=UTC)
SCORE = re.compile(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", re.M)


def scores() -> list[tuple[str, float]]:
    config = load_config(REPO / "sequences.yaml")
    renderer = Renderer(config, jump_key="spam-check-key")
    person = sample_contact(config, "sam.sample@gmail.com")
    out = []
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, NOW)
        for step in sequence.steps:
            for discreet in (False, True):
                url = sample_unsubscribe_url(config)
                rendered = renderer.render(sid, sequence, step, person, webinar, url, discreet=discreet)
                contact = Contact(
                    email_hash="x",
                    email=person.email,
                    first_name=person.first_name,
                    discreet=discreet,
                    created_at=NOW,
                    updated_at=NOW,
                )
                email = envelope(config, contact, sid, step.id, rendered, "spam-check", url, NOW)
                data, _id = message_bytes(email)
                checked = subprocess.run(
                    ["spamassassin", "-L", "-t"], input=data, capture_output=True, check=False, timeout=120
                )
                found = SCORE.search(checked.stdout.decode("utf-8", "replace"))
                if found is None:
                    raise SystemExit(f"spamassassin gave no score for {sid}/{step.id}: {checked.stderr[-500:]!r}")
                out.append((f"{sid}/{step.id}{' (discreet)' if discreet else ''}", float(found.group(1))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=2.0)
    limit = parser.parse_args().limit
    if shutil.which("spamassassin") is None:
        raise SystemExit("spamassassin is not installed (Debian: apt-get install spamassassin)")
    results = scores()
    worst = max(score for _name, score in results)
    for name, score in results:
        print(f"{score:5.1f}  {name}{'  <-- at or over the limit' if score >= limit else ''}")
    print(f"highest: {worst:.1f} (limit {limit})")
    sys.exit(1 if worst >= limit else 0)


if __name__ == "__main__":
    main()
