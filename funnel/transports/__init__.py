"""Transports deliver rendered emails: outbox (.eml files), sendgrid."""

from __future__ import annotations

import os

from funnel.config import Config
from funnel.errors import ConfigError
from funnel.transports.base import Transport

DEFAULT_SENDGRID_HOST = "https://api.sendgrid.com"


def transport_name(config: Config) -> str:
    """FUNNEL_TRANSPORT, else delivery.transport."""
    name = (os.environ.get("FUNNEL_TRANSPORT") or config.delivery.transport).strip().lower()
    if name not in ("outbox", "sendgrid"):
        raise ConfigError(f"FUNNEL_TRANSPORT={name!r} is not a transport: use outbox or sendgrid")
    return name


def sendgrid_settings() -> tuple[str, str]:
    """(api key, host) from the environment; a missing key is a configuration error."""
    key = os.environ.get("SENDGRID_API_KEY", "").strip()
    if not key:
        raise ConfigError(
            "SENDGRID_API_KEY is not set: export the API key (with the Mail Send permission) "
            "before running with the sendgrid transport"
        )
    host = os.environ.get("FUNNEL_SENDGRID_HOST", "").strip() or DEFAULT_SENDGRID_HOST
    return key, host.rstrip("/")


def make_transport(config: Config) -> Transport:
    """The configured transport, checked before anything is read or sent."""
    name = transport_name(config)
    if name == "sendgrid":
        from funnel.sendgrid.send import SendGridTransport

        key, host = sendgrid_settings()
        return SendGridTransport(
            key,
            host=host,
            timeout=config.delivery.request_timeout,
            concurrency=config.delivery.concurrency,
            sandbox=config.delivery.sandbox,
        )
    from funnel.transports.outbox import OutboxTransport

    return OutboxTransport(config.resolve(config.delivery.outbox_dir))
