"""Signed, opaque unsubscribe tokens and the RFC 8058 headers.

A token carries the contact id and the step run that sent the email (so a
report can say which email people left from), signed with the practice's
secret key. It holds no address: link scanners and forwarded emails reveal
nothing, and a forged or edited token fails the signature.

Rotating the key: new links are signed with FUNNEL_SECRET_KEY, while the keys
listed in FUNNEL_SECRET_KEY_PREVIOUS (comma-separated) are still accepted, so
the links in mail already sent keep working until those keys are dropped.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_encode
from sqlmodel import Session

from funnel.db import get_or_put_setting

_SALT = "funnel-unsubscribe-v1"
PREVIOUS_KEYS_VARIABLE = "FUNNEL_SECRET_KEY_PREVIOUS"


def secret_key(session: Session) -> str:
    """FUNNEL_SECRET_KEY, else a key generated once and kept in the database."""
    from_env = os.environ.get("FUNNEL_SECRET_KEY")
    if from_env:
        return from_env
    return get_or_put_setting(session, "secret_key", secrets.token_urlsafe(32))


def previous_keys() -> list[str]:
    """The retired keys in FUNNEL_SECRET_KEY_PREVIOUS (comma-separated), still good for reading."""
    return [key.strip() for key in os.environ.get(PREVIOUS_KEYS_VARIABLE, "").split(",") if key.strip()]


class Tokens:
    """Makes unsubscribe tokens with `key`; reads those made with it or with a previous key.

    `previous` defaults to FUNNEL_SECRET_KEY_PREVIOUS, so every reader (runs,
    `funnel serve`) honours a rotation without being told.
    """

    def __init__(self, key: str, previous: list[str] | None = None) -> None:
        older = previous_keys() if previous is None else previous
        # itsdangerous signs with the last key of the list and accepts a signature from any of them
        keys = [k for k in older if k != key] + [key]
        self._serializer = URLSafeSerializer(keys, salt=_SALT)
        #: the signing key as itsdangerous derives it from `key` and the salt (its default: HMAC-SHA1)
        self._signing_key = self._serializer.make_signer().derive_key()

    def make(self, contact_id: int, step_run_id: int | None = None) -> str:
        """The token `URLSafeSerializer.dumps` gives for [contact_id, step_run_id or 0], uncompressed
        (a payload of two numbers never shrinks, and trying costs more than the rest of the
        email's rendering; reading still accepts the compressed form of links already sent).

        Written out, because `funnel run` makes one for every email: the
        payload is the compact JSON of two numbers, and the signature is
        HMAC-SHA1 in one call to OpenSSL (itsdangerous hands `hmac.new` a
        Python function as the digest, which computes it in Python: several
        times slower). `read` checks them with itsdangerous itself, and a test
        compares both ways of making them.
        """
        payload = base64_encode(f"[{int(contact_id)},{int(step_run_id or 0)}]".encode("ascii"))
        signature = base64_encode(hmac.digest(self._signing_key, payload, "sha1"))
        return (payload + b"." + signature).decode("ascii")

    def read(self, token: str) -> tuple[int, int | None] | None:
        """(contact id, step run id) or None for a bad or forged token."""
        try:
            value = self._serializer.loads(token)
        except BadSignature:
            return None
        if not (isinstance(value, list) and len(value) == 2 and all(_row_id(v) for v in value)):
            return None
        return value[0], (value[1] or None)


def _row_id(value: Any) -> bool:
    """A number a database row id can be (0 for "no step run"): anything else in a signed token is not ours."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}"


def unsubscribe_headers(url: str) -> tuple[tuple[str, str], ...]:
    """RFC 8058 one-click: the https URL and the POST marker, on every email."""
    return (
        ("List-Unsubscribe", f"<{url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
