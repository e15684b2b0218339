"""`funnel doctor` against real parts: a `funnel serve` subprocess, the fake SendGrid, a local DNS server.

The practice here has made the shipped funnel its own (healinglight.org,
SendGrid, a .env file): every check passes. Each other test breaks one thing,
as it goes wrong in real installs, and expects that check, and only the
checks that depend on it, to say what to fix.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, Result
from fake_dns import FakeDNS

DOMAIN = "healinglight.org"
SENDGRID_KEY = "SG.test-key"
SIGNING_KEY = "the-practice-signing-key"
WEBHOOK_KEY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" + "A" * 52
INBOUND_KEY = "a-long-random-inbound-key"
NOW = "2026-12-08T16:00:00Z"


@dataclass
class Install:
    """One practice's install, built step by step: the folder, SendGrid, DNS, then `funnel serve`."""

    project: Project
    fake: Any
    dns: FakeDNS
    funnel: Callable[..., Result]
    funnel_server: Callable[..., Any]
    env: dict[str, str] = field(default_factory=dict)
    serve_env: dict[str, str] = field(default_factory=dict)
    url: str = ""

    def write_env(self, extra: str = "", *, mode: int = 0o600) -> Path:
        path = self.project.write(
            ".env",
            "# settings for every funnel command\n"
            f"FUNNEL_SECRET_KEY={SIGNING_KEY}\n"
            "FUNNEL_TRANSPORT=sendgrid\n"
            f"SENDGRID_API_KEY={SENDGRID_KEY}\n"
            f"FUNNEL_SENDGRID_HOST={self.fake.url}\n"
            f"FUNNEL_SENDGRID_WEBHOOK_KEY={WEBHOOK_KEY}\n"
            f"FUNNEL_DNS_SERVER={self.dns.address}\n" + extra,
        )
        path.chmod(mode)
        return path

    def start(self) -> None:
        """Start `funnel serve` (it reads .env itself) and point base_url and SendGrid's webhook at it."""
        server = self.funnel_server("--now", NOW, env=self.serve_env)
        self.url = server.url
        self.env.setdefault("FUNNEL_BASE_URL", self.url)
        self.fake.set_account(
            "/v3/user/webhooks/event/settings",
            {"enabled": True, "url": f"{self.url}/webhooks/sendgrid", "public_key": WEBHOOK_KEY, "bounce": True},
        )

    def doctor(self) -> tuple[int, dict[str, Any]]:
        result = self.funnel("doctor", "--json", env=self.env)
        assert result.code in (0, 1), result.err
        answer = json.loads(result.out)
        assert answer["ok"] is (result.code == 0)
        return result.code, {c["name"]: c for c in answer["checks"]}


@pytest.fixture
def install(
    project: Project,
    fake_sendgrid: Any,
    funnel: Callable[..., Result],
    funnel_server: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Install]:
    monkeypatch.delenv("FUNNEL_SECRET_KEY")  # the suite's key: here the .env decides
    config = project.root / "sequences.yaml"
    config.write_text(config.read_text().replace("healinglightcounseling.test", DOMAIN))
    with FakeDNS() as dns:
        dns.txt(DOMAIN, "v=spf1 include:sendgrid.net ~all", "google-site-verification=abc")
        dns.cname(f"s1._domainkey.{DOMAIN}", "s1.domainkey.u123.wl.sendgrid.net")
        dns.cname(f"s2._domainkey.{DOMAIN}", "s2.domainkey.u123.wl.sendgrid.net")
        dns.txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}")
        fake_sendgrid.authenticate_domain(DOMAIN)
        setup = Install(project, fake_sendgrid, dns, funnel, funnel_server)
        setup.write_env()
        yield setup


def failing(checks: dict[str, Any]) -> dict[str, str]:
    return {name: c["message"] for name, c in checks.items() if c["ok"] is False}


def test_a_practice_that_made_it_its_own_is_all_well(install: Install) -> None:
    install.start()
    code, checks = install.doctor()
    assert failing(checks) == {}
    assert code == 0
    assert {n for n, c in checks.items() if c["ok"]} == {
        "env file",
        "base_url",
        "signing key",
        "transport",
        "sendgrid key",
        "sender domain",
        "event webhook",
        "spf",
        "dkim",
        "dmarc",
        "example settings",
        "example people",
    }
    text = install.funnel("doctor", env=install.env)
    assert text.code == 0 and text.out.rstrip().endswith("all well")
    # it asked SendGrid only what it says, with the key from .env
    asked = {r["path"] for r in install.fake.requests}
    assert asked == {"/v3/scopes", "/v3/whitelabel/domains", "/v3/user/webhooks/event/settings"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# each: what goes wrong, then {check: words its sentence must hold}
def no_env_file(i: Install) -> None:
    # the settings reach funnel another way (a service unit): the key still agrees, the file is missing
    i.project.root.joinpath(".env").rename(i.project.root / "elsewhere.env")
    i.env["FUNNEL_ENV_FILE"] = str(i.project.root / "nothing-here.env")
    i.serve_env["FUNNEL_ENV_FILE"] = str(i.project.root / "elsewhere.env")
    for line in (i.project.root / "elsewhere.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            i.env[key] = value


def note_after_a_value(i: Install) -> None:
    i.write_env("FUNNEL_INBOUND_KEY=abc   # for replies\n")


def shadowed_by_the_environment(i: Install) -> None:
    i.env["SENDGRID_API_KEY"] = SENDGRID_KEY + "-old"
    i.fake.api_key = SENDGRID_KEY + "-old"


def readable_by_others(i: Install) -> None:
    i.write_env(mode=0o644)


def serve_uses_another_key(i: Install) -> None:
    i.serve_env["FUNNEL_SECRET_KEY"] = "a-key-set-in-the-service-unit"


def base_url_does_not_answer(i: Install) -> None:
    i.env["FUNNEL_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"


def key_without_mail_send(i: Install) -> None:
    i.fake.set_account("/v3/scopes", {"scopes": ["suppression.read"]})


def key_refused(i: Install) -> None:
    i.fake.api_key = "SG.another-key"


def domain_not_authenticated(i: Install) -> None:
    i.fake.set_account("/v3/whitelabel/domains", [])


def domain_not_verified(i: Install) -> None:
    i.fake.authenticate_domain(DOMAIN, valid=False)


def no_spf(i: Install) -> None:
    i.dns._records[(DOMAIN, "TXT")] = ["google-site-verification=abc"]


def spf_allowing_anyone(i: Install) -> None:
    i.dns._records[(DOMAIN, "TXT")] = ["v=spf1 include:sendgrid.net +all"]


def two_spf_records(i: Install) -> None:
    i.dns.txt(DOMAIN, "v=spf1 include:_spf.google.com ~all")


def no_dkim(i: Install) -> None:
    del i.dns._records[(f"s2._domainkey.{DOMAIN}", "CNAME")]


def dkim_pointing_elsewhere(i: Install) -> None:
    i.dns.cname(f"s1._domainkey.{DOMAIN}", "s1.domainkey.u999.wl.sendgrid.net")


def no_dmarc(i: Install) -> None:
    del i.dns._records[(f"_dmarc.{DOMAIN}", "TXT")]


def dmarc_without_policy(i: Install) -> None:
    i.dns._records[(f"_dmarc.{DOMAIN}", "TXT")] = ["v=DMARC1; rua=mailto:x@healinglight.org"]


CASES: dict[str, tuple[Callable[[Install], None], dict[str, str]]] = {
    "no env file": (no_env_file, {"env file": "no settings file at"}),
    "a note after a value": (note_after_a_value, {"env file": "line 8 has a note after the value"}),
    "shadowed by the environment": (shadowed_by_the_environment, {"env file": "SENDGRID_API_KEY also set"}),
    "readable by others": (readable_by_others, {"env file": "chmod 600"}),
    "serve uses another key": (serve_uses_another_key, {"signing key": "every unsubscribe link would answer 400"}),
    "base_url does not answer": (base_url_does_not_answer, {"base_url": "start `funnel serve`"}),
    "key without mail.send": (key_without_mail_send, {"sendgrid key": "lacks the Mail Send permission"}),
    "key refused": (key_refused, {"sendgrid key": "SendGrid refused the API key (401)"}),
    "domain not authenticated": (domain_not_authenticated, {"sender domain": "is not authenticated in SendGrid"}),
    "domain not verified": (domain_not_verified, {"sender domain": "not verified"}),
    "no spf": (no_spf, {"spf": "has no SPF record: add a TXT record"}),
    "spf allowing anyone": (spf_allowing_anyone, {"spf": "does not end in ~all or -all"}),
    "two spf records": (two_spf_records, {"spf": "has 2 SPF records"}),
    "no dkim": (no_dkim, {"dkim": f"s2._domainkey.{DOMAIN} is missing"}),
    "dkim pointing elsewhere": (dkim_pointing_elsewhere, {"dkim": "not to s1.domainkey.u123.wl.sendgrid.net"}),
    "no dmarc": (no_dmarc, {"dmarc": f'add a TXT record at _dmarc.{DOMAIN} "v=DMARC1; p=none'}),
    "dmarc without policy": (dmarc_without_policy, {"dmarc": "receivers cannot use"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_thing_that_goes_wrong_is_named_with_what_to_fix(install: Install, case: str) -> None:
    breakage, expected = CASES[case]
    breakage(install)
    install.start()
    code, checks = install.doctor()
    assert code == 1
    found = failing(checks)
    for name, words in expected.items():
        assert words in found.get(name, ""), (name, found)
    # what depends on nothing broken still passes
    independent = {"spf", "dkim", "dmarc", "example settings", "example people"} - set(expected)
    if case not in ("key refused", "domain not authenticated"):  # DKIM selectors come from SendGrid's answer
        assert not independent & set(found), found


def test_the_event_webhook_off_at_another_url_and_unsigned(install: Install) -> None:
    install.start()
    install.fake.set_account(
        "/v3/user/webhooks/event/settings", {"enabled": False, "url": "https://old.example.org/hook"}
    )
    code, checks = install.doctor()
    assert code == 1
    message = failing(checks)["event webhook"]
    assert "it is off" in message and f"not {install.url}/webhooks/sendgrid" in message
    assert "not signed" in message


def test_the_webhook_key_must_be_the_one_sendgrid_shows(install: Install) -> None:
    install.start()
    install.fake.set_account(
        "/v3/user/webhooks/event/settings",
        {"enabled": True, "url": f"{install.url}/webhooks/sendgrid", "public_key": "another-public-key"},
    )
    assert "not the verification key SendGrid shows" in failing(install.doctor()[1])["event webhook"]


def test_inbound_parse_is_checked_when_replies_come_through_it(install: Install) -> None:
    install.write_env(f"FUNNEL_INBOUND_KEY={INBOUND_KEY}\n")
    install.start()
    code, checks = install.doctor()
    assert "no Inbound Parse setting posts to" in failing(checks)["inbound parse"]
    install.fake.set_account(
        "/v3/user/webhooks/parse/settings",
        {"result": [{"hostname": "reply.healinglight.org", "url": f"{install.url}/webhooks/inbound?key=old"}]},
    )
    assert "posts with another key" in failing(install.doctor()[1])["inbound parse"]
    install.fake.set_account(
        "/v3/user/webhooks/parse/settings",
        {
            "result": [
                {"hostname": "reply.healinglight.org", "url": f"{install.url}/webhooks/inbound?key={INBOUND_KEY}"}
            ]
        },
    )
    code, checks = install.doctor()
    assert code == 0, failing(checks)
    assert checks["inbound parse"]["ok"] is True


def test_the_outbox_while_base_url_is_a_real_site(install: Install) -> None:
    install.write_env()
    install.env.update({"FUNNEL_TRANSPORT": "outbox", "FUNNEL_BASE_URL": f"https://mail.{DOMAIN}"})
    install.project.root.joinpath(".env").write_text(
        install.project.root.joinpath(".env").read_text().replace("FUNNEL_TRANSPORT=sendgrid\n", "")
    )
    code, checks = install.doctor()
    assert code == 1
    assert "mail is written to the outbox folder, not sent" in failing(checks)["transport"]


def test_example_addresses_in_the_settings_and_example_people_in_the_database(
    example_project: Project, funnel: Callable[..., Result]
) -> None:
    assert funnel("run", "--now", NOW).code == 0  # the shipped examples: invented people enrolled
    result = funnel("doctor", "--json")
    assert result.code == 1
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert "practice.from_email" in checks["example settings"]["message"]
    assert "contact(s) in the database have example addresses" in checks["example people"]["message"]
    assert checks["dns"]["ok"] is None  # an example domain has no DNS to ask
    text = funnel("doctor")
    assert "FIX  example people:" in text.out and text.out.rstrip().endswith("thing(s) to fix")
