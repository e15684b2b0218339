"""Unsubscribe tokens: a random per-contact key and the email's send id, signed; links made the older way."""

from __future__ import annotations

import base64
import secrets

from itsdangerous import URLSafeSerializer

from funnel.mail.unsubscribe import _SALT, TokenRef, Tokens, legacy_token

KEY = secrets.token_hex(16)
SEND = secrets.token_hex(16)


def test_tokens_round_trip_and_refuse_forgeries() -> None:
    tokens = Tokens("key-one")
    token = tokens.make(KEY, SEND)
    assert tokens.read(token) == TokenRef(token_key=KEY, send_id=SEND)
    assert tokens.read(tokens.make(KEY)) == TokenRef(token_key=KEY)
    assert Tokens("another-key").read(token) is None
    assert tokens.read(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None
    for junk in ("garbage", "", "A" * 66, "A" * 500, token + "A", token[:-1], "é" * 10, "%00"):
        assert tokens.read(junk) is None, junk


def test_a_token_shows_no_row_number_and_no_address() -> None:
    """Found by issue 16 (3.10): tokens were `[contact id, step run id]` in base64: row counters for anyone to read."""
    tokens = Tokens("key-one")
    token = tokens.make(KEY, SEND)
    assert len(token) == 66 and len(tokens.make(KEY)) == 44
    raw = base64.urlsafe_b64decode(token + "==")
    assert raw[1:17].hex() == KEY and raw[17:33].hex() == SEND  # random values only, and a 16-byte signature
    assert b"[" not in raw[:1] and "." not in token
    # two people's tokens share nothing that counts up
    other = tokens.make(secrets.token_hex(16), secrets.token_hex(16))
    assert other[0] == token[0] == "A" and other[2:12] != token[2:12]  # the version byte, then randomness


def test_tokens_cost_one_hmac_each() -> None:
    """`funnel run` makes one per email: the making must stay one HMAC call, not a serializer's stack."""
    calls = []
    import hmac

    real = hmac.digest

    def counting(key: bytes, msg: bytes, digest: str) -> bytes:
        calls.append(digest)
        return real(key, msg, digest)

    tokens = Tokens("key-one", previous=["older"])
    hmac.digest = counting  # type: ignore[assignment]
    try:
        tokens.make(KEY, SEND)
    finally:
        hmac.digest = real
    assert calls == ["sha256"]


def test_links_sent_with_compressed_tokens_still_read_as_legacy() -> None:
    """Tokens from long ago (itsdangerous compressed them when it could) still read, as legacy row ids."""
    legacy = URLSafeSerializer("key-one", salt=_SALT)
    token = legacy.dumps([10**15, 10**15])  # compressible enough to take the compressed form
    assert token.startswith(".")
    assert Tokens("key-one").read(token) == TokenRef(contact_id=10**15, step_run_id=10**15)
    assert Tokens("key-one").read(legacy_token("key-one", 7)) == TokenRef(contact_id=7)
    assert Tokens("key-one").read(legacy_token("key-one", 7, 3)) == TokenRef(contact_id=7, step_run_id=3)


def test_a_signed_legacy_token_with_numbers_no_row_can_have_is_refused() -> None:
    """Found by tests/test_hardening.py: [2**63, 0] passed the check and the database answered 500 (OverflowError)."""
    signer = URLSafeSerializer("k", salt=_SALT)
    for payload in ([2**63, 0], [-1, 0], [1, 2**64], [True, 0], [1, False]):
        assert Tokens("k").read(signer.dumps(payload)) is None, payload
    assert Tokens("k").read(signer.dumps([2**63 - 1, 0])) == TokenRef(contact_id=2**63 - 1)
