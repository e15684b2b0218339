"""The SendGrid account as `funnel doctor` reads it: the key's scopes, the sender domain, the webhooks.

Shapes as SendGrid documents them: `GET /v3/scopes` -> `{"scopes": [...]}`;
`GET /v3/whitelabel/domains` -> a list of `{domain, valid, dns: {name: {host,
data, valid}}}`; `GET /v3/user/webhooks/event/settings` -> `{enabled, url, ...}`
(signed: `public_key` present); `GET /v3/user/webhooks/parse/settings` ->
`{"result": [{hostname, url, ...}]}`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from funnel.config import Config
from funnel.domains import domain_of
from funnel.ops.doctor.check import Check, http_get

__all__ = ["sendgrid_checks"]


def sendgrid_checks(config: Config) -> tuple[list[Check], dict[str, str]]:
    """The key's scopes, the sender domain, the event webhook and Inbound Parse; the DKIM records SendGrid gave."""
    from funnel.transports import DEFAULT_SENDGRID_HOST

    key = os.environ.get("SENDGRID_API_KEY", "").strip()
    if not key:
        return [Check("sendgrid key", False, "SENDGRID_API_KEY is not set: put it in .env")], {}
    host = (os.environ.get("FUNNEL_SENDGRID_HOST", "").strip() or DEFAULT_SENDGRID_HOST).rstrip("/")
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}

    def ask(path: str) -> Any:
        status, body = http_get(host + path, headers)
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
