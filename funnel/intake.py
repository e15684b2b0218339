"""Live signups (a website form posted to `funnel serve`): the same path as a file row, plus consent.

A form post is the person asking, now, so it is fresh consent: it undoes an
earlier unsubscribe (a file row never does) and leaves evidence (time,
form, IP address, browser). Enrollment follows the file rules exactly
(`ingest.apply_rows`); nothing is sent here: the next `funnel run` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.contacts import resubscribe
from funnel.ingest import IngestResult, apply_rows
from funnel.models import Consent, Contact
from funnel.sources import SignupRow, email_hash

#: longest user agent kept as evidence (some are padded to kilobytes)
_MAX_USER_AGENT = 400


@dataclass(frozen=True)
class Evidence:
    """Where a form post came from, kept as proof of consent."""

    ip: str | None
    user_agent: str | None


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
    with Session(engine, expire_on_commit=False) as session:
        contact = _contact(session, key)
        if contact is not None and contact.erased_at is None:
            resubscribe(session, contact, now, via="form")  # no-op unless they had unsubscribed
            session.flush()
        result = apply_rows(session, config, source_name, source, [row], now)
        contact = _contact(session, key)
        if contact is not None and contact.erased_at is None and contact.id is not None:
            session.add(
                Consent(
                    contact_id=contact.id,
                    source=source_name,
                    given_at=now,
                    ip=evidence.ip,
                    user_agent=(evidence.user_agent or "")[:_MAX_USER_AGENT] or None,
                )
            )
        session.commit()
    return result


def _contact(session: Session, key: str) -> Contact | None:
    return session.scalars(
        select(Contact).where(col(Contact.email_hash) == key).execution_options(populate_existing=True)
    ).first()
