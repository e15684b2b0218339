"""Signing webhook posts the way SendGrid does, with a key pair made in the test."""

from __future__ import annotations

import base64
from datetime import datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from funnel.tracking import SIGNATURE_HEADER, TIMESTAMP_HEADER


class Signer:
    """A SendGrid-like signer: a fresh P-256 key pair, the public half as SendGrid shows it (base64 DER)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()

    def headers(self, body: bytes, at: datetime) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        signature = self.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: timestamp}
