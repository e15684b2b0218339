"""Webhook posts the way SendGrid makes them: signed with a key pair made in the test, events for our sends."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from conftest import Project
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from funnel.sendgrid.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

NOW_AT = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)


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


def sent_ids(project: Project) -> dict[str, str]:
    """Address -> the send id of the first email to it (X-Funnel-Send-Id in the outbox; custom_args at SendGrid)."""
    ids: dict[str, str] = {}
    for message in project.messages():
        ids.setdefault(str(message["To"].addresses[0].addr_spec), str(message["X-Funnel-Send-Id"]))
    return ids


def sg_event(kind: str, email: str, send_id: str | None, event_id: str, at: datetime = NOW_AT, **extra: Any) -> dict:
    event: dict[str, Any] = {
        "email": email,
        "timestamp": int(at.timestamp()),
        "event": kind,
        "sg_event_id": event_id,
        "sg_message_id": f"msg-{event_id}.filter0001",
        "funnel_sequence": "webinar-relationship-911",
        "funnel_step": "registered",
    }
    if send_id:
        event["funnel_send_id"] = send_id
    event.update(extra)
    return event


def post_events(http: Any, signer: Signer | None, events: Any, at: datetime = NOW_AT, raw: bytes | None = None) -> Any:
    body = raw if raw is not None else json.dumps(events).encode()
    headers = {"content-type": "application/json"}
    if signer is not None:
        headers.update(signer.headers(body, at))
    return http.post("/webhooks/sendgrid", content=body, headers=headers)
