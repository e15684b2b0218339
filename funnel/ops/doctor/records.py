"""The sending domain's SPF, DKIM and DMARC records, as `funnel doctor` reads them (dnspython).

`FUNNEL_DNS_SERVER=host:port` asks that server instead of the system's (tests
run a small one on loopback). DKIM selectors come from SendGrid's domain
authentication answer when there is one, else SendGrid's usual s1 and s2.
"""

from __future__ import annotations

import os
from typing import Any

from funnel.config import Config
from funnel.domains import domain_of, is_reserved
from funnel.ops.doctor.check import TIMEOUT, Check

DNS_SERVER_VARIABLE = "FUNNEL_DNS_SERVER"

__all__ = ["DNS_SERVER_VARIABLE", "dns_checks"]


def _resolver() -> Any:
    import dns.resolver

    chosen = os.environ.get(DNS_SERVER_VARIABLE, "").strip()
    if not chosen:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = chosen.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host or chosen]
        resolver.port = int(port) if host and port.isdigit() else 53
    resolver.lifetime = TIMEOUT
    resolver.timeout = TIMEOUT
    return resolver


def _records(resolver: Any, name: str, kind: str) -> list[str] | None:
    """The records of `name` as text (TXT strings joined); [] when there are none; None when DNS failed."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name, kind, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        return []
    except dns.exception.DNSException:
        return None
    if answer.rrset is None:
        return []
    if kind == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset]
    return [r.to_text().rstrip(".").lower() for r in answer.rrset]


def dns_checks(config: Config, selectors: dict[str, str]) -> list[Check]:
    domain = domain_of(config.practice.from_email)
    if is_reserved(domain):
        return [Check("dns", None, f"{domain} is an example domain: no DNS to check until from_email is yours")]
    resolver = _resolver()
    spf = _records(resolver, domain, "TXT")
    if spf is None:
        return [Check("dns", False, f"DNS did not answer for {domain}: check the network, or try again later")]
    return [_judge_spf(domain, spf), _judge_dkim(resolver, domain, selectors), _judge_dmarc(resolver, domain)]


def _judge_spf(domain: str, txt: list[str]) -> Check:
    records = [r for r in txt if r.lower().startswith("v=spf1")]
    if not records:
        return Check(
            "spf",
            False,
            f'{domain} has no SPF record: add a TXT record at {domain} "v=spf1 include:sendgrid.net ~all" '
            "(with your own mail provider's include too, if it has one)",
        )
    if len(records) > 1:
        return Check(
            "spf",
            False,
            f"{domain} has {len(records)} SPF records, and receivers then ignore them all: merge them into one",
        )
    terms = records[0].lower().split()
    if "+all" in terms or "all" in terms or "?all" in terms or not any(t in ("-all", "~all") for t in terms):
        if not any(t.startswith("redirect=") for t in terms):
            return Check(
                "spf",
                False,
                f'{domain}\'s SPF record "{records[0]}" does not end in ~all or -all, so it stops no one '
                "from sending as you: end it with ~all",
            )
    return Check("spf", True, f"{domain} has one SPF record")


def _judge_dkim(resolver: Any, domain: str, selectors: dict[str, str]) -> Check:
    wanted = selectors or {f"s1._domainkey.{domain}": "", f"s2._domainkey.{domain}": ""}
    problems = []
    for host, target in sorted(wanted.items()):
        cname = _records(resolver, host, "CNAME") or []
        if cname:
            if target and cname[0] != target:
                problems.append(f"{host} points to {cname[0]}, not to {target} as SendGrid asks")
            continue
        txt = [r for r in (_records(resolver, host, "TXT") or []) if "v=dkim1" in r.lower().replace(" ", "")]
        if not txt:
            shown = f"CNAME {host} -> {target}" if target else f"the DKIM record at {host}"
            problems.append(f"{host} is missing: add {shown}")
        elif "p=" not in txt[0].replace(" ", "") or txt[0].replace(" ", "").rstrip(";").endswith("p="):
            problems.append(f"{host} holds a DKIM record without a key (p=): copy it again from SendGrid")
    if problems:
        return Check("dkim", False, "; ".join(problems) + " (SendGrid, Settings > Sender Authentication)")
    return Check("dkim", True, f"{domain} has its DKIM records ({', '.join(sorted(wanted))})")


def _judge_dmarc(resolver: Any, domain: str) -> Check:
    name = f"_dmarc.{domain}"
    records = [r for r in (_records(resolver, name, "TXT") or []) if r.upper().startswith("V=DMARC1")]
    suggestion = f'"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"'
    if not records:
        return Check(
            "dmarc",
            False,
            f"{domain} has no DMARC record (Gmail and Yahoo require one): add a TXT record at {name} {suggestion}",
        )
    tags = {
        part.split("=", 1)[0].strip().lower(): part.split("=", 1)[1].strip().lower()
        for part in records[0].split(";")
        if "=" in part
    }
    if len(records) > 1 or tags.get("p") not in ("none", "quarantine", "reject"):
        return Check(
            "dmarc",
            False,
            f'{name} holds "{records[0]}", which receivers cannot use: replace it with one record like {suggestion}',
        )
    return Check("dmarc", True, f"{domain} has a DMARC record (p={tags['p']})")
