"""Signed, opaque unsubscribe tokens and the RFC 8058 headers.

A token names a person by her contact's random `token_key` and the email by its
`send_id`, signed with the practice's secret key: it holds no address and no row
number, so a forwarded email or a link scanner learns nothing, and a forged or edited
token fails the signature. A random key, not the row id, because row ids are given
again after a backup is restored, and a link must never unsubscribe a stranger. Made
with one HMAC, because `funnel run` makes one for every email. The token's layout,
legacy links and key rotation: docs/architecture.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlmodel import Session, col

from funnel.store.db import get_or_put_setting
from funnel.store.models import Contact, Enrollment, Setting, StepRun, new_token_key

_SALT = "funnel-unsubscribe-v1"
#: the HMAC key of a token is derived from the secret key with this (a key used for nothing else)
_SALT_V2 = b"funnel-unsubscribe-v2"
_VERSION = b"\x02"
_KEY_BYTES = 16
_SEND_BYTES = 16
_MAC_BYTES = 16
PREVIOUS_KEYS_VARIABLE = "FUNNEL_SECRET_KEY_PREVIOUS"
#: the setting that holds the key funnel generated (when FUNNEL_SECRET_KEY is not set)
STORED_KEY_SETTING = "secret_key"
#: the setting migration 0007 writes: legacy tokens name only contacts with an id up to it
LEGACY_SETTING = "legacy_token_contacts"

__all__ = ["Tokens", "TokenRef", "find", "new_token_key", "reading_tokens", "secret_key"]


def secret_key(session: Session) -> str:
    """FUNNEL_SECRET_KEY, else a key generated once and kept in the database (written here: for making mail)."""
    from_env = os.environ.get("FUNNEL_SECRET_KEY")
    if from_env:
        return from_env
    return get_or_put_setting(session, STORED_KEY_SETTING, secrets.token_urlsafe(32))


def stored_key(session: Session) -> str | None:
    """The key funnel generated and kept in the database, if it ever did; reads only."""
    found = session.execute(select(col(Setting.value)).where(col(Setting.key) == STORED_KEY_SETTING)).first()
    return found[0] if found else None


def signing_key(session: Session) -> str | None:
    """The key new links are signed with, without writing one: FUNNEL_SECRET_KEY, else the stored key."""
    return os.environ.get("FUNNEL_SECRET_KEY") or stored_key(session)


def previous_keys() -> list[str]:
    """The retired keys in FUNNEL_SECRET_KEY_PREVIOUS (comma-separated), still good for reading."""
    return [key.strip() for key in os.environ.get(PREVIOUS_KEYS_VARIABLE, "").split(",") if key.strip()]


def reading_tokens(session: Session) -> Tokens | None:
    """Tokens that read every link still good, without writing anything; None when no key exists yet.

    No key anywhere means funnel never made a link with this database, so
    no token can be valid: the caller answers the bad-link page (a GET must
    never write, nor wait behind a writer to make a key).
    """
    stored = stored_key(session)
    from_env = os.environ.get("FUNNEL_SECRET_KEY")
    if from_env:
        older = previous_keys() + ([stored] if stored else [])
        return Tokens(from_env, previous=older)
    if stored is None:
        return None
    return Tokens(stored)


def key_notice(session: Session) -> str | None:
    """One line when FUNNEL_SECRET_KEY replaced a key funnel had generated (links signed with it still work)."""
    from_env = os.environ.get("FUNNEL_SECRET_KEY")
    stored = stored_key(session)
    if not from_env or not stored or hmac.compare_digest(from_env.encode(), stored.encode()):
        return None
    return (
        "note: FUNNEL_SECRET_KEY signs new unsubscribe links; links already sent, signed with the key funnel "
        "had generated (kept in the database), still work"
    )


@dataclass(frozen=True)
class TokenRef:
    """What a token names, once its signature is good: a current token or a legacy one."""

    #: current tokens: the contact's token key (hex) and the email's send id (hex), if any
    token_key: str | None = None
    send_id: str | None = None
    #: legacy tokens: the row ids they carried
    contact_id: int | None = None
    step_run_id: int | None = None


class Tokens:
    """Makes unsubscribe tokens with `key`; reads those made with it or with a previous key.

    `previous` defaults to FUNNEL_SECRET_KEY_PREVIOUS, so every reader (runs,
    `funnel serve`) honours a rotation without being told.
    """

    def __init__(self, key: str, previous: list[str] | None = None) -> None:
        older = previous_keys() if previous is None else previous
        keys = list(dict.fromkeys([key] + [k for k in older if k != key]))
        #: HMAC keys, the signing one first
        self._macs = [hmac.digest(k.encode("utf-8"), _SALT_V2, "sha256") for k in keys]
        # legacy links: itsdangerous signs with the last key of a list and accepts any of them
        self._legacy = URLSafeSerializer(list(reversed(keys)), salt=_SALT)

    def make(self, token_key: str, send_id: str | None = None) -> str:
        """The token for a contact's `token_key` and the `send_id` of the email it goes in (one HMAC)."""
        body = _VERSION + bytes.fromhex(token_key) + (bytes.fromhex(send_id) if send_id else b"")
        if len(body) not in (1 + _KEY_BYTES, 1 + _KEY_BYTES + _SEND_BYTES):
            raise ValueError("a token key and a send id are 16 bytes each (32 hex digits)")
        mac = hmac.digest(self._macs[0], body, "sha256")[:_MAC_BYTES]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

    def read(self, token: str) -> TokenRef | None:
        """What a token names, or None for a bad, damaged or forged one."""
        if "." in token:
            return self._read_legacy(token)
        if len(token) > 80:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) not in (1 + _KEY_BYTES, 1 + _KEY_BYTES + _SEND_BYTES) or body[:1] != _VERSION:
            return None
        if not any(hmac.compare_digest(hmac.digest(k, body, "sha256")[:_MAC_BYTES], mac) for k in self._macs):
            return None
        key, send = body[1 : 1 + _KEY_BYTES], body[1 + _KEY_BYTES :]
        return TokenRef(token_key=key.hex(), send_id=send.hex() or None)

    def _read_legacy(self, token: str) -> TokenRef | None:
        """A link sent before token keys: `[contact id, step run id or 0]` signed by itsdangerous."""
        try:
            value = self._legacy.loads(token)
        except BadSignature:
            return None
        if not (isinstance(value, list) and len(value) == 2 and all(_row_id(v) for v in value)):
            return None
        return TokenRef(contact_id=value[0], step_run_id=value[1] or None)


def _row_id(value: Any) -> bool:
    """A number a database row id can be (0 for "no step run"): anything else in a signed token is not ours."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


@dataclass(frozen=True)
class Named:
    """The person and the email a token names, as found in this database."""

    contact: Contact
    #: the step run of the email the link came in (None: a link without one, e.g. from `funnel preview`)
    step_run_id: int | None


def find(session: Session, ref: TokenRef) -> Named | None:
    """The contact (and email) a good token names here, or None when it names nobody in this database.

    Nobody: a token key no contact holds (a backup was restored, or another
    database), a legacy id above `legacy_token_contacts`, or an email that is
    not this person's. A forgotten person is found (the caller answers for
    her as for anyone).
    """
    if ref.token_key is not None:
        contact = session.scalars(select(Contact).where(col(Contact.token_key) == ref.token_key)).first()
        if contact is None:
            return None
        if ref.send_id is None:
            return Named(contact, None)
        step_run_id = _step_of(session, contact, col(StepRun.send_id) == ref.send_id)
        return None if step_run_id is None else Named(contact, step_run_id)
    assert ref.contact_id is not None
    if ref.contact_id > legacy_limit(session):
        return None
    contact = session.get(Contact, ref.contact_id)
    if contact is None:
        return None
    if ref.step_run_id is None:
        return Named(contact, None)
    step_run_id = _step_of(session, contact, col(StepRun.id) == ref.step_run_id)
    return None if step_run_id is None else Named(contact, step_run_id)


def _step_of(session: Session, contact: Contact, which: Any) -> int | None:
    """The id of the step run `which` when it is one of this contact's emails."""
    found = session.execute(
        select(col(StepRun.id))
        .join(Enrollment, col(Enrollment.id) == col(StepRun.enrollment_id))
        .where(which, col(Enrollment.contact_id) == contact.id)
    ).first()
    return found[0] if found else None


def legacy_limit(session: Session) -> int:
    """The highest contact id a legacy token may name (0: none; a database made after the move)."""
    found = session.execute(select(col(Setting.value)).where(col(Setting.key) == LEGACY_SETTING)).first()
    try:
        return int(found[0]) if found else 0
    except ValueError:
        return 0


def legacy_token(key: str, contact_id: int, step_run_id: int | None = None) -> str:
    """A link as funnel made them before token keys (for tests of the links already sent)."""
    return str(URLSafeSerializer(key, salt=_SALT).dumps([contact_id, step_run_id or 0]))


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}"


def unsubscribe_headers(url: str) -> tuple[tuple[str, str], ...]:
    """RFC 8058 one-click: the https URL and the POST marker, on every email."""
    return (
        ("List-Unsubscribe", f"<{url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
