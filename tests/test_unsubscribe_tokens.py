"""Unsubscribe tokens: made without compression, and links made the older way still read."""

from __future__ import annotations

from itsdangerous import URLSafeSerializer
from itsdangerous.encoding import base64_encode

from funnel.unsubscribe import _SALT, Tokens


def test_tokens_round_trip_and_refuse_forgeries() -> None:
    tokens = Tokens("key-one")
    token = tokens.make(42, 7)
    assert tokens.read(token) == (42, 7)
    assert tokens.read(tokens.make(42)) == (42, None)
    assert Tokens("another-key").read(token) is None
    assert tokens.read(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None
    assert tokens.read("garbage") is None


def test_links_sent_with_compressed_tokens_still_unsubscribe() -> None:
    """Tokens from before this change (itsdangerous compressed them when it could) stay valid."""
    legacy = URLSafeSerializer("key-one", salt=_SALT)
    payload = [10**15, 10**15]  # compressible enough to take the compressed form
    token = legacy.dumps(payload)
    assert token.startswith(".")
    assert Tokens("key-one").read(token) == (10**15, 10**15)


def test_a_signed_token_with_numbers_no_row_can_have_is_refused() -> None:
    """Found by tests/test_hardening.py: [2**63, 0] passed the check and the database answered 500 (OverflowError)."""
    signer = URLSafeSerializer("k", salt=_SALT)
    for payload in ([2**63, 0], [-1, 0], [1, 2**64], [True, 0], [1, False]):
        assert Tokens("k").read(signer.dumps(payload)) is None, payload
    assert Tokens("k").read(signer.dumps([2**63 - 1, 0])) == (2**63 - 1, None)


def test_tokens_are_made_exactly_as_itsdangerous_makes_them_uncompressed() -> None:
    """`Tokens.make` writes the token out by hand (for speed); itsdangerous' own signer must agree byte for byte."""
    reference = URLSafeSerializer(["old-key", "key-one"], salt=_SALT)
    signer = reference.make_signer()
    tokens = Tokens("key-one", previous=["old-key"])
    for contact_id, step_run_id in [(1, None), (42, 7), (2**63 - 1, 2**63 - 1), (10**15, 10**15), (9, 0)]:
        payload = reference.serializer.dumps([contact_id, step_run_id or 0], **reference.serializer_kwargs)
        expected = signer.sign(base64_encode(payload.encode("utf-8"))).decode("ascii")
        assert tokens.make(contact_id, step_run_id) == expected
        assert reference.loads(expected) == [contact_id, step_run_id or 0]
