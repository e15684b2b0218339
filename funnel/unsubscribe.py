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

import os
import secrets
from typing import Any

from itsdangerous import BadSignature, Signer, URLSafeSerializer
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


class _UncompressedSerializer(URLSafeSerializer):
    """URL-safe tokens without zlib: a payload of two numbers never shrinks, and trying
    costs more than the rest of an email's rendering. Reading still accepts the
    compressed form, so links already sent keep working."""

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(self.serializer.dumps(obj, **self.serializer_kwargs).encode("utf-8"))


class _KeyCachingSigner(Signer):
    """A signer that derives each key once: the derived key is a pure function of (key, salt),
    and deriving it again for every email's token cost more than signing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


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
        self._serializer = _UncompressedSerializer(keys, salt=_SALT, signer=_KeyCachingSigner)
        self._signer = self._serializer.make_signer()  # one signer for every token this run makes

    def make(self, contact_id: int, step_run_id: int | None = None) -> str:
        """The same token `URLSafeSerializer.dumps` gives, with the signer made once."""
        payload = self._serializer.dump_payload([contact_id, step_run_id or 0])
        return self._signer.sign(payload).decode("ascii")

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
