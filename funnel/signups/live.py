"""Live signups from a form source with `confirm: false`: applied at once, as before double opt-in.

Only for websites that confirm addresses themselves (the default is
`funnel.signups.consent`): the post is taken as the person asking, now, so it undoes
her own earlier unsubscribe (never one made by hand, at SendGrid, or a bounce) and
leaves evidence. Enrollment follows the file rules exactly; nothing is sent here:
the next `funnel run` does. The transaction has the address to itself
(`funnel.store.personlock`), so an erasure at the same moment is never undone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from funnel.config import Config
from funnel.contacts import resubscribe
from funnel.signups.consent import Evidence, can_lift
from funnel.signups.sources import SignupRow
from funnel.signups.store import IngestResult, apply_rows
from funnel.store.models import Consent
from funnel.store.personlock import lock_contact, with_person
from funnel.text import email_hash

__all__ = ["Evidence", "accept_form"]


def accept_form(
    config: Config, engine: Engine, source_name: str, row: SignupRow, now: datetime, evidence: Evidence
) -> IngestResult:
    """Store one form post in one transaction: resubscribe if needed, ingest, record consent.

    An erased address stays erased and no evidence about it is kept; a
    source with `create: false` ignores strangers. The caller answers the
    same in every case, so the answer reveals nothing about who is listed.
    """
    source = config.sources[source_name]
    key = email_hash(row.email)

    def work(session: Session) -> IngestResult:
        contact = lock_contact(session, key)
        if contact is not None and contact.erased_at is not None:
            return IngestResult(erased=1)  # erased stays erased: nothing about the post is kept
        if contact is not None and contact.unsubscribed_at is not None and can_lift(contact):
            resubscribe(session, contact, now, via="form")
            session.flush()
        result = apply_rows(session, config, source_name, source, [row], now)
        contact = lock_contact(session, key)
        if contact is not None and contact.erased_at is None and contact.id is not None:
            session.add(
                Consent(
                    contact_id=contact.id,
                    source=source_name,
                    given_at=now,
                    ip=evidence.ip,
                    user_agent=evidence.agent,
                )
            )
        return result

    return with_person(engine, key, work)
