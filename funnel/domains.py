"""Reserved domains: names that can never receive mail (RFC 2606, RFC 6761).

`.test`, `.example`, `.invalid`, `.localhost` and example.com/.net/.org are
for documentation and tests. The shipped example people live there; mail to
them through SendGrid's real API would bounce and spend a new sender's
reputation, so the SendGrid transport skips them (see
`transports.sendgrid.SendGridTransport.send`), and `funnel doctor` names any
left in the config or the database.
"""

from __future__ import annotations

from urllib.parse import urlsplit

RESERVED_SUFFIXES = (".test", ".example", ".invalid", ".localhost")
RESERVED_NAMES = ("example.com", "example.net", "example.org", "localhost")

__all__ = ["RESERVED_NAMES", "RESERVED_SUFFIXES", "domain_of", "is_reserved"]


def domain_of(value: str) -> str:
    """The domain of an address, a URL or a host name, lower-cased, without a trailing dot ("" when there is none)."""
    value = value.strip()
    if "://" in value:
        host = urlsplit(value).hostname or ""
    elif "@" in value:
        host = value.rsplit("@", 1)[1]
    else:  # a bare host name
        host = value.split("/", 1)[0]
    return host.strip().rstrip(".").lower()


def is_reserved(value: str) -> bool:
    """Whether an address's or URL's domain is reserved (never a real mailbox or site)."""
    domain = domain_of(value)
    if not domain:
        return False
    if domain in RESERVED_NAMES or any(domain.endswith("." + name) for name in RESERVED_NAMES):
        return True
    return any(domain.endswith(suffix) or domain == suffix[1:] for suffix in RESERVED_SUFFIXES)
