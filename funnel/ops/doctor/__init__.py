"""`funnel doctor`: is this installation ready to send real mail? Each check says what to fix.

Every piece of a working install lives somewhere else (the `.env` file, the running
`funnel serve`, the SendGrid account, the domain's DNS), and each one wrong fails
silently: links that answer 400, mail in spam, events that never arrive. The doctor
asks each of them, reads nothing it need not, writes nothing, and prints one sentence
per check; exit 0 when all is well, 1 otherwise. What it asks, one by one:
docs/architecture.md.
"""

from __future__ import annotations

import json
import stat

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.domains import RESERVED_NAMES, RESERVED_SUFFIXES, domain_of, is_reserved
from funnel.mail.unsubscribe import signing_key
from funnel.ops.doctor.check import Check, http_get
from funnel.ops.doctor.records import dns_checks
from funnel.ops.doctor.sendgrid import sendgrid_checks
from funnel.ops.envfile import EnvFile, key_fingerprint
from funnel.store.models import Contact

__all__ = ["Check", "run_checks"]


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
            account, selectors = sendgrid_checks(config)
            checks += account
        checks += dns_checks(config, selectors)
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
        status, body = http_get(url, {"Accept": "application/json"})
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


# --------------------------------------------------------------------------- example addresses


def _examples(config: Config, session: Session) -> list[Check]:
    from funnel.mail.preview import _addresses

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
