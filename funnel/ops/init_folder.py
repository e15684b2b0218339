"""`funnel init DIR`: a new practice folder to go live from, without example people.

The only install path used to copy ten invented `@example.test` people with reminders
pending into the database, and nothing said to remove them before switching to
SendGrid. A folder made here holds the shipped sequences.yaml and letters, an empty
`signups/` and a `.env` with a new FUNNEL_SECRET_KEY, and no database. A folder that
is not empty is refused, so nothing a practice made is ever overwritten.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from funnel.errors import UsageError
from funnel.store.private import write_private

#: where the shipped sequences.yaml and email_templates/ live: the checkout this package sits in
SHIPPED = Path(__file__).resolve().parents[2]

ENV_TEMPLATE = """\
# Settings for every funnel command: `funnel run` from cron or a timer, `funnel serve`,
# and you in a shell all read this file. Settings already in the real environment win.
# One KEY=value per line; comments on their own lines, never after a value.
# Keep this file private (mode 600): it holds the key that signs unsubscribe links.

# Signs the unsubscribe links in every email. Never change it once mail has gone out
# (links already sent would stop working); to rotate, see docs/operations.md, "Rotating".
FUNNEL_SECRET_KEY={key}

# How mail leaves: outbox (files in outbox/, nothing sent) until you are ready, then sendgrid.
# FUNNEL_TRANSPORT=sendgrid
# The SendGrid API key, with the Mail Send permission.
# SENDGRID_API_KEY=SG.xxxxx
# SendGrid's verification key for the signed event webhook (Mail Settings > Event Webhook).
# FUNNEL_SENDGRID_WEBHOOK_KEY=
# A long random secret for replies through SendGrid Inbound Parse (the endpoint is off without it).
# FUNNEL_INBOUND_KEY=
# Where alerts go when sequences.yaml itself cannot be read (otherwise alerts.email).
# FUNNEL_ALERT_EMAIL=
# Where funnel serve is reached from the internet (overrides practice.base_url).
# FUNNEL_BASE_URL=https://mail.your-practice.com
# The database (default: funnel.db in this folder).
# FUNNEL_DATABASE_URL=postgresql+psycopg://funnel@localhost/funnel
"""

__all__ = ["init_folder"]


def init_folder(target: Path) -> list[Path]:
    """Make the practice folder `target`; the files made. UsageError when it is not empty.

    The folder holds:

    - `sequences.yaml`: the shipped one, with its comments (what each part is,
      the "Make it yours" list) and the commented `alerts:` block;
    - `email_templates/`: the shipped letters, to make one's own;
    - `signups/`: empty, for the platforms' exports;
    - `.env`: a new FUNNEL_SECRET_KEY (mode 0600), and every other setting
      commented on its own line, ready to fill in.

    No database and no signups: the first `funnel run` makes an empty database.
    The shipped files are taken from the source checkout funnel was installed
    from (`pip install -e .`, as the README's install does).
    """
    target = target.expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not an empty folder: funnel init never writes over anything; name a new folder")
    config, letters = SHIPPED / "sequences.yaml", SHIPPED / "email_templates"
    if not config.is_file() or not letters.is_dir():
        raise UsageError(
            f"the shipped sequences.yaml and email_templates/ are not in {SHIPPED}: install funnel from "
            "its source folder (pip install -e .), then run funnel init again"
        )
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(config, target / "sequences.yaml")
    shutil.copytree(letters, target / "email_templates")
    (target / "signups").mkdir()
    env = target / ".env"
    write_private(env, ENV_TEMPLATE.format(key=secrets.token_urlsafe(32)).encode())
    return [target / "sequences.yaml", target / "email_templates", target / "signups", env]
