"""`funnel doctor`: is this installation ready to send real mail? Each check says what to fix.

Why: every piece of a working install lives somewhere else (the `.env`
file, the running `funnel serve`, the SendGrid account, the domain's DNS),
and each one wrong fails silently: links that answer 400, mail in spam,
events that never arrive. The doctor asks each of them, reads nothing it
need not, writes nothing, and prints one sentence per check; exit 0 when
all is well, 1 otherwise.

What it asks: the env file (read, comments on their own lines, not shadowed
by the real environment, mode 0600); `GET {base_url}/healthz` (answers, and
checks links with the same key as this folder signs them with: the key's
fingerprint); SendGrid, when it is the transport: `GET /v3/scopes`
(`mail.send`), `GET /v3/whitelabel/domains` (the sender's domain
authenticated and valid), `GET /v3/user/webhooks/event/settings` (on, at
`{base_url}/webhooks/sendgrid`, signed), `GET /v3/user/webhooks/parse/settings`
(when replies come through Inbound Parse); the sending domain's SPF, DKIM
(the selectors SendGrid gave, else s1 and s2) and DMARC records, through
dnspython (`FUNNEL_DNS_SERVER=host:port` asks that server instead of the
system's); the outbox transport while `base_url` is a real https address;
example (reserved-domain) addresses left in the config or the database.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.domains import RESERVED_NAMES, RESERVED_SUFFIXES, domain_of, is_reserved
from funnel.envfile import EnvFile, key_fingerprint
from funnel.models import Contact
from funnel.unsubscribe import signing_key

#: seconds each HTTP request or DNS query may take
TIMEOUT = 10.0
DNS_SERVER_VARIABLE = "FUNNEL_DNS_SERVER"

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed (None: not applicable here), and the sentence."""

    name: str
    ok: bool | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(config: Config, engine: Engine, env: EnvFile | None) -> list[Check]:
    """Every check, in the order a person would fix them."""
    from funnel.transports import transport_name

    checks = [_env_file(env)]
    with Session(engine) as session:
        own_key = signing_key(session)
        checks += _serve(config, own_key)
        try:
            transport = transport_name(config)
        except Exception as exc:
            transport = "?"
            checks.append(Check("transport", False, str(exc)))
        checks.append(_outbox_while_live(config, transport))
        selectors: dict[str, str] = {}
        if transport == "sendgrid":
            sendgrid_checks, selectors = _sendgrid(config)
            checks += sendgrid_checks
        checks += _dns(config, selectors)
        checks += _examples(config, session)
    return checks


# --------------------------------------------------------------------------- settings file and serve


def _env_file(env: EnvFile | None) -> Check:
    if env is None or not env.exists:
        where = env.path if env else ".env beside sequences.yaml"
        return Check(
            "env file",
            False,
            f"no settings file at {where}: create it (funnel init makes one) with FUNNEL_SECRET_KEY=..., "
            "so cron, the service and a shell all use the same key and transport",
        )
    problems = []
    if env.inline_comments:
        lines = ", ".join(str(n) for n in env.inline_comments)
        problems.append(
            f"line {lines} has a note after the value: move the note to its own line (other programs "
            "reading the file would take it as part of the value)"
        )
    if env.overridden:
        names = ", ".join(sorted(env.overridden))
        problems.append(
            f"{names} also set in the environment with another value, which wins: remove it from the "
            "service unit, crontab or shell profile, so that the file alone decides"
        )
    try:
        mode = stat.S_IMODE(env.path.stat().st_mode)
    except OSError:
        mode = 0
    if mode & 0o077:
        problems.append(f"the file is readable by others (mode {mode:o}): run chmod 600 {env.path}")
    if problems:
        return Check("env file", False, f"{env.path}: " + "; ".join(problems))
    return Check("env file", True, f"{env.path} is read ({len(env.values)} settings)")


def _serve(config: Config, own_key: str | None) -> list[Check]:
    """`base_url` answers /healthz, with the fingerprint of the key this folder signs links with."""
    base = config.practice.base_url
    url = f"{base}/healthz"
    try:
        status, body = _get(url, {"Accept": "application/json"})
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        return [
            Check(
                "base_url",
                False,
                f"{url} does not answer ({reason}): start `funnel serve` (the service), check the reverse "
                "proxy and DNS, or correct practice.base_url / FUNNEL_BASE_URL",
            ),
            Check("signing key", None, "not compared: funnel serve did not answer at base_url"),
        ]
    if status != 200:
        return [
            Check(
                "base_url",
                False,
                f"{url} answers {status}: funnel serve is not the one answering there, or its database is "
                "unavailable; check the reverse proxy's rules and `systemctl status` of the service",
            ),
            Check("signing key", None, "not compared: funnel serve did not answer at base_url"),
        ]
    checks = [Check("base_url", True, f"{url} answers")]
    try:
        theirs = json.loads(body).get("key_fingerprint")
    except (ValueError, AttributeError):
        theirs = None
    ours = key_fingerprint(own_key)
    if theirs is None:
        checks.append(Check("signing key", False, f"{url} names no key fingerprint: upgrade and restart funnel serve"))
    elif theirs != ours:
        checks.append(
            Check(
                "signing key",
                False,
                f"funnel serve checks links with another key (fingerprint {theirs}) than runs here sign them "
                f"with ({ours}): every unsubscribe link would answer 400. Put FUNNEL_SECRET_KEY in the .env "
                "file only, remove it from the service unit and crontab, and restart the service",
            )
        )
    else:
        checks.append(Check("signing key", True, f"funnel serve uses the same signing key (fingerprint {ours})"))
    return checks


def _outbox_while_live(config: Config, transport: str) -> Check:
    base = config.practice.base_url
    live = base.startswith("https://") and not is_reserved(base) and domain_of(base) not in ("127.0.0.1", "::1")
    if transport == "outbox" and live:
        return Check(
            "transport",
            False,
            f"mail is written to the outbox folder, not sent, while base_url ({base}) is a real site: "
            "set FUNNEL_TRANSPORT=sendgrid and SENDGRID_API_KEY in .env when you are ready to send",
        )
    return Check("transport", True, f"transport is {transport}")


# --------------------------------------------------------------------------- SendGrid


def _sendgrid(config: Config) -> tuple[list[Check], dict[str, str]]:
    """The key's scopes, the sender domain, the event webhook and Inbound Parse; the DKIM records SendGrid gave."""
    from funnel.transports import DEFAULT_SENDGRID_HOST

    key = os.environ.get("SENDGRID_API_KEY", "").strip()
    if not key:
        return [Check("sendgrid key", False, "SENDGRID_API_KEY is not set: put it in .env")], {}
    host = (os.environ.get("FUNNEL_SENDGRID_HOST", "").strip() or DEFAULT_SENDGRID_HOST).rstrip("/")
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}

    def ask(path: str) -> Any:
        status, body = _get(host + path, headers)
        if status in (401, 403):
            raise PermissionError(status)
        if status != 200:
            raise OSError(f"SendGrid answered {status}")
        return json.loads(body)

    checks: list[Check] = []
    try:
        scopes = ask("/v3/scopes").get("scopes") or []
    except PermissionError as exc:
        return [
            Check(
                "sendgrid key",
                False,
                f"SendGrid refused the API key ({exc}): make a new key with Mail Send permission in "
                "SendGrid (Settings > API Keys) and put it in .env as SENDGRID_API_KEY",
            )
        ], {}
    except (OSError, ValueError) as exc:
        return [
            Check("sendgrid key", False, f"SendGrid could not be asked ({exc}): check the network and try again")
        ], {}
    if "mail.send" in scopes:
        checks.append(Check("sendgrid key", True, "the API key may send mail (mail.send)"))
    else:
        checks.append(
            Check(
                "sendgrid key",
                False,
                "the API key lacks the Mail Send permission: edit it in SendGrid (Settings > API Keys) "
                "and give it Mail Send > Full Access",
            )
        )
    selectors: dict[str, str] = {}
    for name, path, judge in (
        ("sender domain", "/v3/whitelabel/domains", _judge_domain),
        ("event webhook", "/v3/user/webhooks/event/settings", _judge_event_webhook),
        ("inbound parse", "/v3/user/webhooks/parse/settings", _judge_parse),
    ):
        if name == "inbound parse" and not _inbound_configured(config):
            continue
        try:
            answer = ask(path)
        except PermissionError as exc:
            checks.append(
                Check(name, False, f"the API key may not read this ({exc}): give it read access, or check by hand")
            )
            continue
        except (OSError, ValueError) as exc:
            checks.append(Check(name, False, f"SendGrid could not be asked ({exc}): try again"))
            continue
        checks.append(judge(config, answer, selectors))
    return checks, selectors


def _judge_domain(config: Config, answer: Any, selectors: dict[str, str]) -> Check:
    domain = domain_of(config.practice.from_email)
    entries = [e for e in answer if isinstance(e, dict)] if isinstance(answer, list) else []
    found = next((e for e in entries if str(e.get("domain", "")).lower() == domain), None)
    if found is None:
        return Check(
            "sender domain",
            False,
            f"{domain} is not authenticated in SendGrid: Settings > Sender Authentication > Authenticate "
            "Your Domain, then add the records it gives to the domain's DNS",
        )
    for record in (found.get("dns") or {}).values():
        host = str(record.get("host", "")).lower()
        if "._domainkey." in host:
            selectors[host] = str(record.get("data", "")).lower().rstrip(".")
    if not found.get("valid"):
        return Check(
            "sender domain",
            False,
            f"{domain} is set up in SendGrid but not verified: add the CNAME records SendGrid lists for it to "
            "the domain's DNS, wait an hour, then press Verify in Sender Authentication",
        )
    return Check("sender domain", True, f"{domain} is authenticated in SendGrid")


def _judge_event_webhook(config: Config, answer: Any, _selectors: dict[str, str]) -> Check:
    want = f"{config.practice.base_url}/webhooks/sendgrid"
    problems = []
    if not answer.get("enabled"):
        problems.append("it is off")
    if str(answer.get("url", "")).rstrip("/") != want:
        problems.append(f"its URL is {answer.get('url') or 'empty'}, not {want}")
    signed = bool(answer.get("signed") or answer.get("public_key"))
    key = os.environ.get("FUNNEL_SENDGRID_WEBHOOK_KEY", "").strip()
    if not signed:
        problems.append("it is not signed (turn on Signed Event Webhook)")
    elif not key:
        problems.append("FUNNEL_SENDGRID_WEBHOOK_KEY is not set: copy the verification key into .env")
    elif answer.get("public_key") and answer["public_key"].strip() != key:
        problems.append("FUNNEL_SENDGRID_WEBHOOK_KEY is not the verification key SendGrid shows: copy it again")
    if problems:
        return Check(
            "event webhook",
            False,
            "SendGrid's event webhook (Settings > Mail Settings > Event Webhook): "
            + "; ".join(problems)
            + ". Without it bounces and spam reports never stop mail to those people",
        )
    return Check("event webhook", True, f"SendGrid posts signed events to {want}")


def _inbound_configured(config: Config) -> bool:
    return bool(config.inbound.reply_address or os.environ.get("FUNNEL_INBOUND_KEY", "").strip())


def _judge_parse(config: Config, answer: Any, _selectors: dict[str, str]) -> Check:
    want = f"{config.practice.base_url}/webhooks/inbound?key="
    key = os.environ.get("FUNNEL_INBOUND_KEY", "").strip()
    hostname = domain_of(config.inbound.reply_address or "")
    results = answer.get("result") or [] if isinstance(answer, dict) else []
    if not key:
        return Check("inbound parse", False, "FUNNEL_INBOUND_KEY is not set: put a long random key in .env")
    for entry in results:
        url = str(entry.get("url", ""))
        if url.startswith(want) and (not hostname or str(entry.get("hostname", "")).lower() == hostname):
            if url[len(want) :] != key:
                return Check(
                    "inbound parse",
                    False,
                    "Inbound Parse posts with another key than FUNNEL_INBOUND_KEY: set its URL to "
                    f"{want}<the key in .env> (Settings > Inbound Parse)",
                )
            return Check("inbound parse", True, f"Inbound Parse posts replies for {hostname or 'your host'}")
    return Check(
        "inbound parse",
        False,
        f"no Inbound Parse setting posts to {want}...: add one (Settings > Inbound Parse) for the host "
        f"{hostname or 'of inbound.reply_address'}, with the URL {want}<FUNNEL_INBOUND_KEY>",
    )


# --------------------------------------------------------------------------- DNS


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


def _dns(config: Config, selectors: dict[str, str]) -> list[Check]:
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


# --------------------------------------------------------------------------- example addresses


def _examples(config: Config, session: Session) -> list[Check]:
    from funnel.preview import _addresses

    keys = [".".join(str(p) for p in path) for path, value in _addresses(config) if is_reserved(value)]
    keys += [f"alerts.{k}" for k in ("email", "heartbeat_url") if is_reserved(getattr(config.alerts, k) or "")]
    checks = []
    if keys:
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        checks.append(
            Check("example settings", False, f"{config.path.name}: {shown} still use an example domain: write your own")
        )
    else:
        checks.append(Check("example settings", True, "no example addresses in the settings"))
    email = col(Contact.email)
    patterns = [email.like(f"%@{n}") for n in RESERVED_NAMES] + [email.like(f"%{s}") for s in RESERVED_SUFFIXES]
    count = session.execute(select(func.count()).select_from(Contact).where(or_(*patterns))).scalar_one()
    if count:
        checks.append(
            Check(
                "example people",
                False,
                f"{count} contact(s) in the database have example addresses (@example.test and the like): "
                "they are invented people; remove each with `funnel contacts forget ADDRESS`, or start from "
                "a fresh database (`funnel init`)",
            )
        )
    else:
        checks.append(Check("example people", True, "no example people in the database"))
    return checks


# --------------------------------------------------------------------------- HTTP


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """(status, body) of one GET; OSError when nothing answered."""
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, answer.read(1_000_000)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(1_000_000)
    except ValueError as exc:  # not a URL
        raise OSError(str(exc)) from None
