"""Issue 16, section 3: what a hostile stranger (or a broken database) does to `funnel serve`.

Each test talks HTTP to a real `funnel serve` subprocess (or runs the real CLI)
on the test database, and fails on the code before the fix:

- 3.2: a database error during a form post logs none of the post's values;
- 3.4: a lone surrogate ("\\ud800") in a JSON form is a 422 naming the field; one
  already stored prints as an escape in `contacts show --json` / `export`; one in a
  signed SendGrid batch costs none of the other events (a bounce in it suppresses);
- 3.6: the rate limiter counts IPv6 by /64, keeps a bounded table, and the address
  it and the consent record use comes from `X-Forwarded-For` only through
  `serve.trusted_proxies` (right-most untrusted hop), also behind a proxy on ::1;
- 3.7: `tracking.webhook_unsigned: true` with a verification key set is refused by
  `funnel check`, and the webhook verifies every post while the key is set;
- 3.14: a 500 and a 404 carry the protective headers;
- 3.15: the SQLite file, its WAL and SHM, backups, outbox files and previews of a
  real person are created 0600, whatever the umask.

Forced database errors are real ones: the test gives every table a trigger that
refuses any row mentioning the post (on PostgreSQL its error DETAIL carries the
whole row, as PostgreSQL's own constraint errors do), so whichever tables a
form post writes, it fails inside the database on a statement holding its values.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Project, project_db
from starlette.requests import Request
from test_web import confirmation_link
from webhook_signing import Signer, post_events, sent_ids, sg_event

from funnel.config import load_config
from funnel.store.db import make_engine
from funnel.web.forms import RateLimiter

NOW = "2026-12-08T16:00:00Z"
NOW_AT = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)
FORM = "/forms/consultation-form"
Run = Callable[..., Any]

#: a post whose every value is easy to find in a log
ZELDA = {
    "email": "zelda.quistorff@example.test",
    "name": "Zeldaquist",
    "message": "Please be careful, my husband Bartholomew reads my mail",
}
ZELDA_WORDS = ("zelda", "quistorff", "Zeldaquist", "Bartholomew", "husband")
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
PEOPLE = (
    "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n"
    "dana@example.test,Dana,Whitaker,2027-01-14 19:00,America/Chicago,\n"
)


def confirm(project: Project, http: httpx.Client, address: str, headers: dict[str, str] | None = None) -> None:
    """Press the link of the confirmation email the post sent (spec 9), through the same proxy headers."""
    clicked = http.post(confirmation_link(project, address), data={"confirm": "yes"}, headers=headers or {})
    assert clicked.status_code == 200, clicked.text


def consents(funnel: Run, address: str) -> list[dict[str, Any]]:
    result = funnel("contacts", "export", address)
    assert result.code == 0, result.err
    return result.json()["consents"]  # type: ignore[no-any-return]


def refuse_writes_mentioning(project: Project, word: str) -> None:
    """Make the database itself refuse any row written with `word` in it, in any table.

    So the statement that fails is one that carries the post's values. On
    PostgreSQL the trigger's error DETAIL holds the row as JSON, the way its
    own check and unique violations quote values ("Failing row contains (...)").
    """
    with project_db(project) as db:
        if db.postgres:
            tables = [
                row[0]
                for row in db.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> ?",
                    ("alembic_version",),
                )
            ]
            db.execute(
                "CREATE FUNCTION refused_by_test() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF strpos(lower(row_to_json(NEW)::text), lower(TG_ARGV[0])) > 0 THEN "
                "RAISE EXCEPTION 'refused by the test' USING DETAIL = row_to_json(NEW)::text; END IF; "
                "RETURN NEW; END $$"
            )
            for table in tables:
                db.execute(
                    f'CREATE TRIGGER refused_by_test BEFORE INSERT OR UPDATE ON "{table}" '
                    f"FOR EACH ROW EXECUTE FUNCTION refused_by_test('{word}')"
                )
        else:
            tables = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'alembic_version' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in tables:
                columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
                mentions = " OR ".join(f"CAST(NEW.\"{column}\" AS TEXT) LIKE '%{word}%'" for column in columns)
                for action in ("INSERT", "UPDATE"):
                    db.execute(
                        f'CREATE TRIGGER "refused_{action}_{table}" BEFORE {action} ON "{table}" WHEN {mentions} '
                        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                    )


# --------------------------------------------------------------------------- 3.2 and 3.14: a database error


def test_a_database_error_during_a_form_post_logs_none_of_its_values(project: Project, funnel_server: Run) -> None:
    server = funnel_server("--now", NOW)
    refuse_writes_mentioning(project, "zelda")
    with server.client() as http:
        answer = http.post(FORM, data=ZELDA)
        as_json = http.post(FORM, json=ZELDA, headers={"X-Forwarded-For": "203.0.113.50"})
    assert answer.status_code == 500 and as_json.status_code == 500
    for word in ZELDA_WORDS:
        assert word.lower() not in answer.text.lower() and word.lower() not in as_json.text.lower()
    server.stop()  # all it wrote is read once it has stopped
    log = server.stderr
    assert "refused by the test" in log  # the error is logged, in words that help
    assert "form" in log.lower() or "/forms/" in log
    for word in ZELDA_WORDS:
        assert word.lower() not in log.lower(), (word, log[-3000:])
    assert "203.0.113.50" not in log


def test_a_database_error_in_a_command_prints_none_of_the_values(project: Project, funnel: Run) -> None:
    engine = make_engine(project.database_url)
    assert engine.hide_parameters  # no statement's values in any error text
    engine.dispose()
    refuse_writes_mentioning(project, "zelda")
    path = project.write(
        "signups/webinar-registrations.csv",
        HEADER + "zelda.quistorff@example.test,Zeldaquist,Bartholomew,2027-01-14 19:00,America/Denver,no\n",
    )
    result = funnel("import", "webinar-registrations", str(path))
    assert result.code == 1
    assert "refused by the test" in result.err and "Traceback" not in result.err
    for word in ZELDA_WORDS:
        assert word.lower() not in result.err.lower(), (word, result.err)


def test_every_answer_carries_the_protective_headers_a_500_and_a_404_too(project: Project, funnel_server: Run) -> None:
    server = funnel_server("--now", NOW)
    refuse_writes_mentioning(project, "zelda")
    with server.client() as http:
        failed = http.post(FORM, data=ZELDA)
        missing = http.get("/no/such/page")
        wrong_method = http.delete("/healthz")
    assert failed.status_code == 500 and missing.status_code == 404 and wrong_method.status_code == 405
    for answer in (failed, missing, wrong_method):
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert "Traceback" not in failed.text and failed.text.strip()
    server.stop()
    assert server.stop() is not None


# --------------------------------------------------------------------------- 3.4: lone surrogates


def test_a_lone_surrogate_in_a_json_form_is_a_422_naming_the_field(funnel: Run, funnel_server: Run) -> None:
    server = funnel_server("--now", NOW)
    with server.client() as http:
        for field, ip in (("message", "198.51.100.1"), ("name", "198.51.100.2"), ("email", "198.51.100.3")):
            value = {**ZELDA, field: ZELDA[field] + "\ud800"}
            body = json.dumps(value).encode()  # "\ud800" written as its escape, as JSON.stringify does
            answer = http.post(FORM, content=body, headers={"Content-Type": "application/json", "X-Forwarded-For": ip})
            assert answer.status_code == 422, (field, answer.status_code, answer.text)
            assert answer.json()["field"] == field
            assert field in answer.json()["error"]
        # in a field's name, too: named with the surrogate written as an escape
        body = json.dumps({**ZELDA, "note\udc00": "x"}).encode()
        answer = http.post(FORM, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422 and answer.json()["field"] == "note\\udc00"
    assert funnel("contacts", "show", ZELDA["email"], "--json").code == 1  # nothing stored


def test_a_lone_surrogate_already_stored_prints_as_an_escape(project: Project, funnel: Run, funnel_server: Run) -> None:
    server = funnel_server("--now", NOW)
    with server.client() as http:
        assert http.post(FORM, data=ZELDA).status_code == 303
        confirm(project, http, ZELDA["email"])
    # a row written by an older release (or any other program) holding a lone surrogate
    with project_db(project) as db:
        db.execute(
            "UPDATE contacts SET fields = ? WHERE first_name = ?", ('{"message": "hi \\ud800 there"}', "Zeldaquist")
        )
    shown = funnel("contacts", "show", ZELDA["email"], "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["fields"]["message"] == "hi \ud800 there"  # read back exactly as stored
    exported = funnel("contacts", "export", ZELDA["email"])
    assert exported.code == 0, exported.err
    assert "\\ud800" in exported.out and exported.json()["fields"]["message"] == "hi \ud800 there"
    plain = funnel("contacts", "show", ZELDA["email"])
    assert plain.code == 0, plain.err


def test_a_lone_surrogate_in_a_signed_batch_costs_none_of_the_other_events(
    project: Project, funnel: Run, funnel_server: Run
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel("run", "--now", NOW).code == 0
    ids = sent_ids(project)
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    events = [
        sg_event("open", "ana@example.test", ids["ana@example.test"], "s1", useragent="Mozilla \ud800"),
        sg_event("bounce", "dana@example.test", ids["dana@example.test"], "s2", reason="550 \udfff gone"),
        sg_event("delivered", "ana@example.test", ids["ana@example.test"], "s3\ud800"),
        sg_event("delivered\udc00", "ana@example.test", ids["ana@example.test"], "s4"),
        sg_event("processed", "ana@example.test", ids["ana@example.test"], "s5"),
    ]
    with server.client() as http:
        first = post_events(http, signer, events)
        assert first.status_code == 200, first.text
        outcome = first.json()
        assert outcome["stored"] == 4 and len(outcome["skipped"]) == 1, outcome  # the unknown event name
        assert outcome["suppressed"] == 1
        again = post_events(http, signer, events)  # SendGrid's retry: nothing twice
        assert again.status_code == 200 and again.json()["stored"] == 0 and again.json()["duplicates"] == 4
    dana = funnel("contacts", "show", "dana@example.test", "--json").json()
    assert dana["suppressed"] is True
    assert dana["suppressed_reason"] == "bounced: 550 \ufffd gone"
    ana = funnel("contacts", "show", "ana@example.test", "--json")
    assert ana.code == 0, ana.err


def test_an_event_the_database_refuses_costs_none_of_the_others(
    project: Project, funnel: Run, funnel_server: Run
) -> None:
    """Whatever a bad event is (here the database refuses one by its id), the good ones are stored."""
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel("run", "--now", NOW).code == 0
    ids = sent_ids(project)
    with project_db(project) as db:
        if db.postgres:
            db.execute(
                "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.sg_event_id = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
                "RETURN NEW; END $$"
            )
            db.execute(
                "CREATE TRIGGER refuse_event BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_event()"
            )
        else:
            db.execute(
                "CREATE TRIGGER refuse_event BEFORE INSERT ON events WHEN NEW.sg_event_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    events = [
        sg_event("open", "ana@example.test", ids["ana@example.test"], "poison"),
        sg_event("bounce", "dana@example.test", ids["dana@example.test"], "p2", reason="550 gone"),
        sg_event("delivered", "ana@example.test", ids["ana@example.test"], "p3"),
    ]
    with server.client() as http:
        answer = post_events(http, signer, events)
    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert outcome["stored"] == 2 and outcome["suppressed"] == 1, outcome
    assert [item["index"] for item in outcome["skipped"]] == [0]
    assert funnel("contacts", "show", "dana@example.test", "--json").json()["suppressed"] is True
    server.stop()
    assert "ana@example.test" not in server.stderr


# --------------------------------------------------------------------------- 3.6: rate limiter and client address


def test_ipv6_visitors_are_counted_by_their_64_block(project: Project, funnel_server: Run) -> None:
    project.append("sequences.yaml", "\nserve:\n  form_burst: 3\n  form_per_minute: 1\n")
    with funnel_server("--now", NOW).client() as http:
        for i in range(3):
            rotated = {"X-Forwarded-For": f"2001:db8:1:2::{i + 1:x}"}
            assert http.post(FORM, data={**ZELDA, "email": f"p{i}@example.test"}, headers=rotated).status_code == 303
        rotated = {"X-Forwarded-For": "2001:db8:1:2:aaaa:bbbb:cccc:dddd"}
        assert http.post(FORM, data={**ZELDA, "email": "p3@example.test"}, headers=rotated).status_code == 429
        neighbour = {"X-Forwarded-For": "2001:db8:1:3::1"}  # the next /64: someone else
        assert http.post(FORM, data={**ZELDA, "email": "p4@example.test"}, headers=neighbour).status_code == 303


def test_behind_a_proxy_on_ipv6_loopback_each_visitor_has_her_own_address(
    project: Project, funnel: Run, funnel_server: Run
) -> None:
    project.append("sequences.yaml", "\nserve:\n  form_burst: 2\n  form_per_minute: 1\n")
    server = funnel_server("--now", NOW, "--host", "::1")
    assert server.url.startswith("http://[::1]:")
    with server.client() as http:
        for i in range(4):  # four visitors, each once: nobody shares the proxy's bucket
            visitor = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
            assert http.post(FORM, data={**ZELDA, "email": f"v{i}@example.test"}, headers=visitor).status_code == 303
        confirm(project, http, "v2@example.test", {"X-Forwarded-For": "203.0.113.30"})
    consent = consents(funnel, "v2@example.test")[0]
    assert (consent["ip"], consent["confirm_ip"]) == ("203.0.113.3", "203.0.113.30")


def test_forwarded_addresses_count_only_from_trusted_proxies(project: Project, funnel: Run, funnel_server: Run) -> None:
    project.append("sequences.yaml", "\nserve:\n  form_burst: 2\n  form_per_minute: 1\n  trusted_proxies: [10.9.8.7]\n")
    with funnel_server("--now", NOW).client() as http:
        # loopback is not a trusted proxy here: what it claims is not the visitor's address
        forged = {"X-Forwarded-For": "198.51.100.77", "Forwarded": "for=198.51.100.78"}
        assert http.post(FORM, data={**ZELDA, "email": "f0@example.test"}, headers=forged).status_code == 303
        assert http.post(FORM, data={**ZELDA, "email": "f1@example.test"}, headers=forged).status_code == 303
        other = {"X-Forwarded-For": "198.51.100.99"}  # the same peer, another claim: the same bucket
        assert http.post(FORM, data={**ZELDA, "email": "f2@example.test"}, headers=other).status_code == 429
        confirm(project, http, "f0@example.test", forged)
    consent = consents(funnel, "f0@example.test")[0]
    assert (consent["ip"], consent["confirm_ip"]) == ("127.0.0.1", "127.0.0.1")


def test_the_right_most_untrusted_hop_is_the_visitor(project: Project, funnel: Run, funnel_server: Run) -> None:
    project.append("sequences.yaml", "\nserve:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n")
    with funnel_server("--now", NOW).client() as http:
        # the visitor wrote "6.6.6.6" herself; the outer proxy appended her real address, an inner one its own
        chain = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.2.3"}
        assert http.post(FORM, data={**ZELDA, "email": "h0@example.test"}, headers=chain).status_code == 303
        forwarded = {"Forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.0.0.1'}
        assert http.post(FORM, data={**ZELDA, "email": "h1@example.test"}, headers=forwarded).status_code == 303
        confirm(project, http, "h0@example.test")
        confirm(project, http, "h1@example.test")
    assert consents(funnel, "h0@example.test")[0]["ip"] == "203.0.113.9"
    assert consents(funnel, "h1@example.test")[0]["ip"] == "2001:db8::7"


def _request(peer: str | None, headers: dict[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/forms/x",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": (peer, 50000) if peer else None,
    }
    return Request(scope)


def test_client_ip_reads_the_chain_from_the_right(project: Project) -> None:
    from funnel.web.client import client_ip

    project.append("sequences.yaml", "\nserve:\n  trusted_proxies: [127.0.0.1, '::1', 10.0.0.0/8]\n")
    config = load_config(project.root / "sequences.yaml")
    cases = [
        ("203.0.113.1", {"X-Forwarded-For": "198.51.100.1"}, "203.0.113.1"),  # not from a proxy: ignored
        ("127.0.0.1", {}, "127.0.0.1"),
        ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1"}, "198.51.100.1"),
        ("::1", {"X-Forwarded-For": "198.51.100.1"}, "198.51.100.1"),
        ("::ffff:127.0.0.1", {"X-Forwarded-For": "198.51.100.1"}, "198.51.100.1"),  # IPv4 on a dual-stack socket
        ("127.0.0.1", {"X-Forwarded-For": "1.1.1.1, 198.51.100.1, 10.0.0.2"}, "198.51.100.1"),
        ("127.0.0.1", {"X-Forwarded-For": "10.0.0.3, 10.0.0.2"}, "10.0.0.3"),  # all trusted: the left-most
        ("127.0.0.1", {"X-Forwarded-For": "junk, 198.51.100.1"}, "198.51.100.1"),
        ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1, junk"}, "127.0.0.1"),  # cannot see past junk
        ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1:4711"}, "198.51.100.1"),
        ("127.0.0.1", {"X-Forwarded-For": "[2001:db8::1]:4711"}, "2001:db8::1"),
        ("127.0.0.1", {"Forwarded": 'for="[2001:db8::2]";proto=https'}, "2001:db8::2"),
        ("127.0.0.1", {"Forwarded": "for=unknown"}, "127.0.0.1"),
        ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1", "Forwarded": "for=198.51.100.2"}, "198.51.100.1"),
        (None, {"X-Forwarded-For": "198.51.100.1"}, "unknown"),
    ]
    for peer, headers, expected in cases:
        assert client_ip(_request(peer, headers), config) == expected, (peer, headers)


def test_rate_keys_group_ipv6_by_64_and_keep_ipv4_whole() -> None:
    from funnel.web.client import rate_key

    assert rate_key("2001:db8:1:2::1") == rate_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("203.0.113.1") == "203.0.113.1" and rate_key("203.0.113.2") == "203.0.113.2"
    assert rate_key("unknown") == "unknown"


def test_the_limiter_table_is_bounded_and_forgets_the_least_recent_first() -> None:
    clock = [1000.0]
    limiter = RateLimiter(2, 1.0, clock=lambda: clock[0], max_buckets=1000)
    assert limiter.take("198.51.100.1") == 0 and limiter.take("198.51.100.1") == 0
    assert limiter.take("198.51.100.1") > 0  # held back
    for i in range(5000):  # a flood of new visitors in the same second
        limiter.take(f"2001:db8:{i:x}::1")
        if i % 100 == 0:
            assert limiter.take("198.51.100.1") > 0  # still held back: kept as the most recent
    assert len(limiter) == 1000
    assert limiter.take("2001:db8:0::1") == 0  # the oldest were forgotten: a fresh bucket


# --------------------------------------------------------------------------- 3.7: unsigned webhooks with a key


def test_check_refuses_unsigned_webhooks_while_a_verification_key_is_set(project: Project, funnel: Run) -> None:
    config = project.root / "sequences.yaml"
    config.write_text(config.read_text().replace("  clicks: false\n", "  clicks: false\n  webhook_unsigned: true\n", 1))
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "webhook_unsigned" in text)
    assert funnel("check").code == 0  # without a key, unsigned posts are what the practice asked for
    result = funnel("check", env={"FUNNEL_SENDGRID_WEBHOOK_KEY": Signer().public_b64})
    assert result.code == 1
    assert f"sequences.yaml:{line}: " in result.err
    assert "webhook_unsigned" in result.err and "FUNNEL_SENDGRID_WEBHOOK_KEY" in result.err
    assert "Traceback" not in result.err


def test_with_a_key_set_every_webhook_post_must_be_signed(project: Project, funnel: Run, funnel_server: Run) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    assert funnel("run", "--now", NOW).code == 0
    ids = sent_ids(project)
    config = project.root / "sequences.yaml"
    config.write_text(config.read_text().replace("  clicks: false\n", "  clicks: false\n  webhook_unsigned: true\n", 1))
    signer = Signer()
    server = funnel_server("--now", NOW, env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    with server.client() as http:
        unsigned = post_events(http, None, [sg_event("spamreport", "ana@example.test", ids["ana@example.test"], "u1")])
        assert unsigned.status_code == 401
        signed = post_events(http, signer, [sg_event("delivered", "ana@example.test", ids["ana@example.test"], "u2")])
        assert signed.status_code == 200
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["suppressed"] is False


# --------------------------------------------------------------------------- 3.15: files holding people's data


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.sqlite_only("file modes of the SQLite database, its WAL and SHM, and its backups")
@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_the_database_its_wal_and_shm_and_backups_are_private(project: Project, funnel: Run, mask: int) -> None:
    database = project.root / "funnel.db"
    with umask(mask):
        engine = make_engine(project.database_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO settings (key, value) VALUES ('x', 'y')")
            with engine.connect() as conn:  # held open: the WAL and SHM are there meanwhile
                conn.exec_driver_sql("SELECT 1")
                wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
                assert wal.exists() and shm.exists()
                assert (mode(database), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
        finally:
            engine.dispose()
        backup = project.root / "backups" / "funnel-copy.db"
        result = funnel("db", "backup", str(backup))
        assert result.code == 0, result.err
        assert mode(backup) == 0o600
        assert not Path(f"{backup}-journal").exists() or mode(Path(f"{backup}-journal")) == 0o600


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_outbox_files_and_previews_of_a_person_are_private(project: Project, funnel: Run, mask: int) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + PEOPLE)
    with umask(mask):
        assert funnel("run", "--now", NOW).code == 0
        previews = project.root / "previews"
        shown = funnel(
            "preview", "webinar-relationship-911", "registered", "--email", "ana@example.test", "--out", str(previews)
        )
        assert shown.code == 0, shown.err
    letters = sorted(project.outbox.glob("*.eml"))
    assert letters
    assert {mode(path) for path in letters} == {0o600}
    assert mode(project.outbox) == 0o700
    assert {mode(path) for path in previews.iterdir()} == {0o600}
