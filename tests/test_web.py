"""`funnel serve` through real HTTP: a real subprocess on a free loopback port.

Each test starts the shipped project's server (`funnel_server` fixture) and
talks to it with httpx; state is checked with the real CLI (`funnel`)
and, for what the CLI does not show, the SQLite file itself.
"""

from __future__ import annotations

import email.policy
import json
import re
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import POSTGRES_ADMIN, Project, project_db

NOW = "2026-12-08T16:00:00Z"  # a Tuesday, 9 am in Denver: inside the send window
FORM = "/forms/consultation-form"
THANKS = "https://healinglightcounseling.test/consultation/thank-you"
ANA = {"email": "Ana@Example.test", "name": "Ana", "message": "Could we talk?\r\nThank you."}
PRACTICE = "Healing Light Counseling"

Run = Callable[..., Any]


# state is checked with the real CLI, in-process (the `funnel` fixture) for speed; runs that
# make the emails are real subprocesses where the test is end to end (the browser test)


def show(funnel: Run, address: str) -> dict[str, Any]:
    result = funnel("contacts", "show", address, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


def export(funnel: Run, address: str) -> dict[str, Any]:
    result = funnel("contacts", "export", address)
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


def unknown(funnel: Run, address: str) -> bool:
    return bool(funnel("contacts", "show", address, "--json").code == 1)


@pytest.fixture
def server(funnel_server: Callable[..., Any]) -> Any:
    return funnel_server("--now", NOW)


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


CONFIRM_SUBJECT = "Please confirm your request"


def confirmation_link(project: Project, who: str, nth: int = 1) -> str:
    """The path of the link in the `nth` confirmation email that `funnel serve` wrote to the outbox for `who`."""
    deadline = time.monotonic() + 20
    while True:
        found = []
        paths = list(project.outbox.glob("*_confirmation_*.eml")) if project.outbox.exists() else []
        for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
            message = message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["To"].addresses[0].addr_spec == who.lower():
                assert message["Subject"] == CONFIRM_SUBJECT
                link = re.search(r"https?://[^/\s]+(/c/[A-Za-z0-9_-]+)", message.get_content())
                assert link, message.get_content()
                found.append(link.group(1))
        if len(found) >= nth:
            assert len(found) == nth, f"{len(found)} confirmation emails to {who}, expected {nth}"
            return found[nth - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no confirmation email number {nth} to {who} in the outbox")
        time.sleep(0.02)  # the serve's sender thread writes it (the post waits for it only briefly)


def post_confirmed(project: Project, http: httpx.Client, data: dict[str, Any], **kwargs: Any) -> httpx.Response:
    """Post the form and press the emailed link, as the mailbox owner does (spec 9); the post's answer."""
    answer = http.post(FORM, data=data, **kwargs)
    assert answer.status_code in (200, 303), answer.text
    clicked = http.post(confirmation_link(project, data["email"]), data={"confirm": "yes"}, **kwargs)
    assert clicked.status_code == 200, clicked.text
    return answer


def letters(project: Project) -> list[Any]:
    """The emails in the outbox other than confirmations, parsed."""
    return [
        message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(project.outbox.glob("*.eml"))
        if "_confirmation_" not in path.name
    ]


def unsubscribe_link(
    project: Project, funnel: Run, server: Any, http: httpx.Client, who: str, discreet: bool = False
) -> str:
    """Post the form for `who` and confirm it, run the job (base URL: this server), and return the
    path of the List-Unsubscribe link in the first email she got (the serve sends it at once)."""
    post_confirmed(project, http, {**ANA, "email": who, **({"discreet": "yes"} if discreet else {})})
    run = funnel("run", "--now", NOW, env={"FUNNEL_BASE_URL": server.url})
    assert run.code == 0, run.err
    for message in letters(project):
        if message["To"].addresses[0].addr_spec == who.lower():
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            url = str(message["List-Unsubscribe"]).strip("<>")
            # the serve sent it, at its base_url (practice.base_url: the proxy's address); same path here
            assert re.match(r"https?://[^/]+/u/[^/]+$", url), url
            return "/u/" + url.split("/u/", 1)[1]
    raise AssertionError(f"no email to {who} in the outbox")


# --------------------------------------------------------------------------- healthz


def test_healthz_answers_when_the_database_does(http: httpx.Client) -> None:
    answer = http.get("/healthz")
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_healthz_is_503_when_the_database_is_gone(funnel_server: Callable[..., Any], postgres_url: str) -> None:
    server = funnel_server("--now", NOW, env={"FUNNEL_DATABASE_URL": postgres_url})
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
        name = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        answer = http.get("/healthz")
        assert answer.status_code == 503
        assert "database" in answer.text


def test_serve_refuses_a_busy_port_in_one_sentence(server: Any, funnel_process: Run) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = funnel_process("serve", "--port", port, timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- forms


def test_a_confirmed_form_post_stores_the_person_with_consent_and_the_serve_sends_the_first_step(
    project: Project, funnel: Run, http: httpx.Client
) -> None:
    answer = post_confirmed(project, http, ANA, headers={"User-Agent": "TestBrowser/1.0"})
    assert answer.status_code == 303
    assert answer.headers["location"] == THANKS
    ana = show(funnel, "ana@example.test")
    assert ana["first_name"] == "Ana"
    assert "consultation-requested" in ana["tags"]
    assert [e["sequence"] for e in ana["enrollments"]] == ["consultation"]
    assert ana["fields"]["message"] == "Could we talk?\nThank you."
    consents = export(funnel, "ana@example.test")["consents"]
    assert consents == [
        {
            "source": "consultation-form",
            "given_at": "2026-12-08T16:00:00Z",
            "ip": "127.0.0.1",
            "user_agent": "TestBrowser/1.0",
            "confirmed_at": "2026-12-08T16:00:00Z",
            "confirm_ip": "127.0.0.1",
            "confirm_user_agent": "TestBrowser/1.0",
        }
    ]
    assert [m["Subject"] for m in letters(project)] == ["Your message arrived safely"]  # sent by the serve
    run = funnel("run", "--now", NOW, "--json")
    assert run.code == 0, run.err
    assert [s for s in project.sent() if s[1] != "confirmation"] == [("ana@example.test", "consultation", "received")]


def test_a_json_post_gets_a_json_answer(project: Project, funnel: Run, http: httpx.Client) -> None:
    answer = http.post(FORM, json={"email": "bea@example.test", "name": "Bea", "discreet": True})
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "thank_you_url": THANKS}
    assert http.post(confirmation_link(project, "bea@example.test"), data={"confirm": "yes"}).status_code == 200
    bea = show(funnel, "bea@example.test")
    assert bea["discreet"] is True


def test_a_source_without_thank_you_url_shows_a_plain_page(project: Project, funnel_server: Callable[..., Any]) -> None:
    text = (project.root / "sequences.yaml").read_text()
    project.write("sequences.yaml", text.replace(f"    thank_you_url: {THANKS}\n", ""))
    with funnel_server("--now", NOW).client() as http:
        answer = http.post(FORM, data=ANA)
    assert answer.status_code == 200
    assert "Thank you" in answer.text
    assert "<title>Email preferences</title>" in answer.text


@pytest.mark.parametrize(
    ("data", "field"),
    [({"name": "No Address"}, "email"), ({"email": "not-an-address", "name": "X"}, "email")],
)
def test_a_missing_or_invalid_address_is_422_naming_the_field(
    http: httpx.Client, data: dict[str, str], field: str
) -> None:
    answer = http.post(FORM, data=data)
    assert answer.status_code == 422
    assert f"'{field}'" in answer.text
    answer = http.post(FORM, json=data)
    assert answer.status_code == 422
    assert answer.json()["field"] == field


def test_unknown_and_file_sources_are_404(http: httpx.Client) -> None:
    assert http.post("/forms/nope", data=ANA).status_code == 404
    assert http.post("/forms/webinar-registrations", data=ANA).status_code == 404
    assert http.post("/forms/consultation-requests", json=ANA).status_code == 404


def test_an_oversized_body_is_413_also_when_chunked(funnel: Run, http: httpx.Client) -> None:
    big = {**ANA, "message": "x" * 70_000}
    assert http.post(FORM, data=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b"email=ana%40example.test&message="
        for _ in range(100):
            yield b"y" * 1024

    answer = http.post(FORM, content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413
    assert unknown(funnel, "ana@example.test")


def test_the_honeypot_drops_bots_with_the_same_answer(funnel: Run, http: httpx.Client) -> None:
    bot = http.post(FORM, data={**ANA, "website": "http://spam.test"})
    assert bot.status_code == 303
    assert bot.headers["location"] == THANKS
    assert http.post(FORM, json={**ANA, "website": "x"}).json() == {"ok": True, "thank_you_url": THANKS}
    assert unknown(funnel, "ana@example.test")


ODD_BODIES = [
    (b"email=ana%40example.test&name=Jos\xe9", "application/x-www-form-urlencoded", 400),  # raw latin-1
    (b"email=ana%40example.test&name=Jos%E9", "application/x-www-form-urlencoded", 400),  # %-encoded latin-1
    (b"email=ana%40example.test", "application/x-www-form-urlencoded; charset=ISO-8859-1", 415),
    (b'{"email": "ana@example.test", ', "application/json", 400),
    (b'["ana@example.test"]', "application/json", 400),
    (b'"ana@example.test"', "application/json", 400),
    (b'{"email": "ana@example.test", "name": {"first": "Ana"}}', "application/json", 422),
    (b'{"email": "ana@example.test", "n": ' + b"9" * 5000 + b"}", "application/json", 400),
    (b"[" * 20_000 + b"]" * 20_000, "application/json", 400),
    (b'{"email": "ana@example.test\xff"}', "application/json", 400),
    (
        b"&".join(b"f%d=1" % i for i in range(500)) + b"&email=ana%40example.test",
        "application/x-www-form-urlencoded",
        400,
    ),
    (b"email=ana@example.test", "text/plain", 415),
    (b"email=ana@example.test", "", 415),
]


def test_odd_bodies_get_a_4xx_never_a_500(funnel: Run, http: httpx.Client) -> None:
    for i, (content, content_type, status) in enumerate(ODD_BODIES):
        # each from its own visitor (as the proxy reports it), so the rate limit stays out of the way
        headers = {"Content-Type": content_type, "X-Forwarded-For": f"198.51.100.{i}"}
        answer = http.post(FORM, content=content, headers=headers)
        assert answer.status_code == status, (content[:60], answer.text)
        assert answer.text.strip()  # one sentence saying what is wrong
    assert http.get("/healthz").status_code == 200
    assert unknown(funnel, "ana@example.test")


def test_many_json_fields_are_refused(http: httpx.Client) -> None:
    answer = http.post(FORM, json={"email": "ana@example.test", **{f"f{i}": "x" for i in range(200)}})
    assert answer.status_code == 400
    assert "fields" in answer.json()["error"]


def test_line_breaks_and_control_characters_in_names_are_cleaned(
    project: Project, funnel: Run, http: httpx.Client
) -> None:
    answer = post_confirmed(
        project, http, {"email": "ana@example.test", "name": "Ana\r\nBcc: evil@example.test\x00\x1b[31m"}
    )
    assert answer.status_code == 303
    ana = show(funnel, "ana@example.test")
    assert ana["first_name"] == "Ana Bcc: evil@example.test [31m"
    assert not re.search(r"[\x00-\x1f]", ana["first_name"])


def test_a_simple_per_address_rate_limit(project: Project, funnel_server: Callable[..., Any]) -> None:
    project.append("sequences.yaml", "\nserve:\n  form_burst: 3\n  form_per_minute: 1\n")
    with funnel_server("--now", NOW).client() as http:
        for i in range(3):
            assert http.post(FORM, data={**ANA, "email": f"p{i}@example.test"}).status_code == 303
        limited = http.post(FORM, data={**ANA, "email": "p3@example.test"})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # another visitor (as the reverse proxy on loopback reports it) is not held up
        other = http.post(FORM, data={**ANA, "email": "p4@example.test"}, headers={"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 303


def test_cors_only_for_listed_origins(project: Project, funnel_server: Callable[..., Any]) -> None:
    project.append("sequences.yaml", "\nserve:\n  cors_origins: [https://www.healinglightcounseling.test]\n")
    listed, other = "https://www.healinglightcounseling.test", "https://elsewhere.test"
    with funnel_server("--now", NOW).client() as http:
        preflight = http.options(
            FORM,
            headers={
                "Origin": listed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == listed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        refused = http.options(FORM, headers={"Origin": other, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        posted = http.post(FORM, json=ANA, headers={"Origin": listed})
        assert posted.headers["access-control-allow-origin"] == listed
        bad = http.post(FORM, json={"name": "x"}, headers={"Origin": listed})
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == listed
        elsewhere = http.post(FORM, json=ANA, headers={"Origin": other})
        assert "access-control-allow-origin" not in elsewhere.headers


# --------------------------------------------------------------------------- unsubscribe


def test_get_asks_and_changes_nothing(project: Project, funnel: Run, server: Any, http: httpx.Client) -> None:
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    page = http.get(link)
    assert page.status_code == 200
    assert re.search(r'<form method="post" action="[^"]+">', page.text)
    assert "<title>Email preferences</title>" in page.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    assert "Healing Light Counseling" in page.text
    # nothing from anywhere else: no scripts, no links to other sites, no external styles or images
    assert not re.search(r"<script|<img|<link|src=|https?://", page.text)
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "form-action 'self'" in policy
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers
    for _ in range(3):  # link scanners and previews
        assert http.get(link).status_code == 200
    assert show(funnel, "ana@example.test")["unsubscribed"] is False


def test_one_click_post_unsubscribes_at_once_and_twice_is_harmless(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    # RFC 8058: urlencoded body, no cookies, and the answer is not a redirect
    answer = http.post(
        link, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 200
    assert "You are unsubscribed" in answer.text
    assert "set-cookie" not in answer.headers
    ana = show(funnel, "ana@example.test")
    assert ana["unsubscribed"] is True and ana["unsubscribed_at"] == "2026-12-08T16:00:00Z"
    again = http.post(
        link, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert again.status_code == 200
    assert export(funnel, "ana@example.test")["unsubscribed_via"] == "one-click"


def press(http: httpx.Client, url: str | httpx.URL, **kwargs: Any) -> tuple[httpx.URL, httpx.Response]:
    """A button of the page, as a browser presses it: the POST must answer 303, then GET where it points."""
    posted = http.post(url, **kwargs)
    assert posted.status_code == 303, (posted.status_code, posted.text)
    assert posted.text == "" and "set-cookie" not in posted.headers
    target = httpx.URL(str(http.base_url)).join(str(url)).join(posted.headers["location"])
    return target, http.get(target)


def test_the_page_offers_undo_by_post(project: Project, funnel: Run, server: Any, http: httpx.Client) -> None:
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    result_url, done = press(http, link, data={"confirm": "yes"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    action = re.search(r'<form method="post" action="([^"]+)">\s*<button type="submit" class="quiet">', done.text)
    assert action is not None
    undo_url = result_url.join(action.group(1))
    assert str(undo_url) == server.url + link + "/resubscribe"
    undone_url, undone = press(http, undo_url)
    assert undone.status_code == 200 and "subscribed again" in undone.text
    assert show(funnel, "ana@example.test")["unsubscribed"] is False
    # and from there, unsubscribing again points back at the token's own address
    again = re.search(r'<form method="post" action="([^"]+)">', undone.text)
    assert again is not None
    assert str(undone_url.join(again.group(1))) == server.url + link


def test_a_button_answers_with_a_redirect_to_a_page_that_only_reads(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    """Issue 19: every button's post answers 303 See Other to `GET /u/{token}/done?r=...`, which shows the
    result with the protective headers and writes nothing, however often it is loaded; it shows her state
    now when the result no longer holds, and the bad-link page for a bad token."""
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    token = link.rsplit("/", 1)[1]
    posted = http.post(link, data={"confirm": "yes"})
    assert posted.status_code == 303 and posted.headers["location"] == f"./{token}/done?r=unsubscribed"
    for name in ("referrer-policy", "cache-control", "content-security-policy", "x-content-type-options"):
        assert name in posted.headers
    history = show(funnel, "ana@example.test")["subscription_history"]
    for _ in range(3):  # reloads
        page = http.get(f"{link}/done?r=unsubscribed")
        assert page.status_code == 200 and "You are unsubscribed" in page.text
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in page.headers["content-security-policy"]
    assert show(funnel, "ana@example.test")["subscription_history"] == history
    # a result that no longer holds shows what is true now: she is unsubscribed, so no page says mail may come
    for claim in ("resubscribed", "letters", "pause-undo", "nonsense", ""):
        assert "You are unsubscribed" in http.get(f"{link}/done?r={claim}").text
    assert funnel("contacts", "resubscribe", "ana@example.test", "--now", NOW).code == 0
    assert "Your email choices" in http.get(f"{link}/done?r=unsubscribed").text
    # every choice of the page redirects the same way, relative to where the page is
    for choice, heading in (
        ("letters", "Just the webinar emails"),
        ("letters-undo", "The letters will come again"),
        ("pause", "Paused for a month"),
        ("pause-undo", "The pause has ended"),
    ):
        answer = http.post(f"{link}/{choice}")
        assert answer.status_code == 303 and answer.headers["location"] == f"./done?r={choice}", choice
        assert f"<h1>{heading}</h1>" in http.get(f"{link}/done?r={choice}").text
    assert show(funnel, "ana@example.test")["subscription_history"] == history + [
        {"change": "resubscribed", "at": NOW, "via": "by hand"}
    ]
    # a bad link: the post answers 400 at once (nothing changed, nothing to show again), and so does the page
    assert http.post(link + "x", data={"confirm": "yes"}).status_code == 400
    assert http.get(f"{link}x/done?r=unsubscribed").status_code == 400
    assert http.post(f"{link}/done").status_code == 404  # not a choice


def test_forged_or_damaged_tokens_are_400_and_change_nothing(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    damaged = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
    from itsdangerous import URLSafeSerializer

    forged = "/u/" + str(URLSafeSerializer("not-the-key", salt="funnel-unsubscribe-v1").dumps([1, 0]))
    for bad in (damaged, forged, "/u/x", link + "x"):
        assert http.get(bad).status_code == 400
        assert (
            http.post(
                bad,
                content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ).status_code
            == 400
        )
        assert http.post(bad + "/resubscribe").status_code == 400
    assert show(funnel, "ana@example.test")["unsubscribed"] is False


def test_a_forgotten_person_gets_the_same_answer_as_anyone(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    """Her link, opened by anyone after she was erased, answers as for a discreet person who unsubscribed
    elsewhere: nothing tells that she was forgotten, and the pages name no practice (her discretion went
    with her data, so it is assumed)."""
    ana_link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    bea_link = unsubscribe_link(project, funnel, server, http, "bea@example.test", discreet=True)
    assert funnel("contacts", "forget", "ana@example.test").code == 0
    assert funnel("contacts", "unsubscribe", "bea@example.test", "--now", NOW).code == 0
    answers = {}
    for who, link in (("ana", ana_link), ("bea", bea_link)):
        got = http.get(link)
        posted = http.post(link, data={"confirm": "yes"}, follow_redirects=True)
        undone = http.post(link + "/resubscribe", follow_redirects=True)
        token = link.rsplit("/", 1)[1]
        answers[who] = [
            (a.status_code, a.text.replace(token, "T"), sorted(a.headers.keys())) for a in (got, posted, undone)
        ]
    assert answers["ana"] == answers["bea"]
    assert all(PRACTICE not in text for _, text, _ in answers["ana"])
    assert unknown(funnel, "ana@example.test")


#: words of the subject matter that no page may show to a discreet person (nor any page, in fact)
SUBJECT_WORDS = ("counsel", "therap", "betrayal", "trauma", "webinar", "relationship")


def one_click(http: httpx.Client, link: str) -> httpx.Response:
    return http.post(
        link, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


def test_the_pages_never_name_the_practice_to_a_discreet_person(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    """Found by issue 16 (3.5): the unsubscribe pages named the practice to people who asked for discretion."""
    ana_link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    bea_link = unsubscribe_link(project, funnel, server, http, "bea@example.test", discreet=True)
    pages = [
        http.get(bea_link),
        http.post(bea_link, data={"confirm": "yes"}, follow_redirects=True),
        http.post(bea_link + "/resubscribe", follow_redirects=True),
    ]
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert "You are subscribed again" in pages[2].text  # the pages still work for her
    pages += [
        one_click(http, bea_link),
        http.post(bea_link + "/resubscribe", follow_redirects=True),
        http.get("/u/" + "A" * 66),
    ]
    for page in pages:
        assert PRACTICE not in page.text
        assert not [word for word in SUBJECT_WORDS if word in page.text.lower()], page.text
        assert 'class="practice"' not in page.text
    # and someone who did not ask for discretion still sees whom the page is about
    assert PRACTICE in http.get(ana_link).text
    assert PRACTICE in one_click(http, ana_link).text


def test_a_link_page_never_writes_even_before_any_key_exists(
    project: Project, funnel_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by issue 16 (3.8): without FUNNEL_SECRET_KEY every GET /u/... (junk too) wrote a key, waited
    behind any writer and answered 500 after 30 s. No key yet means no link can be good: the bad-link page."""
    monkeypatch.delenv("FUNNEL_SECRET_KEY")
    server = funnel_server("--now", NOW)
    with project_db(project) as db, server.client() as http:
        # a run (or any writer) holds the database: SQLite's write lock, PostgreSQL's lock against inserts
        db.execute("LOCK TABLE settings IN EXCLUSIVE MODE" if db.postgres else "BEGIN IMMEDIATE")
        for path in ("/u/junk", "/u/" + "A" * 66, "/u/W1sxLDBd.c2lnbmF0dXJl"):
            started = time.monotonic()
            answer = http.get(path, timeout=10)
            assert answer.status_code == 400 and "This link does not work" in answer.text
            assert time.monotonic() - started < 5
        assert http.post("/u/junk", data={"confirm": "yes"}, timeout=10).status_code == 400
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM settings WHERE key = 'secret_key'").fetchone() == (0,)


def test_subscribe_again_undoes_only_this_emails_own_unsubscribe_within_30_days(
    project: Project, funnel: Run, funnel_server: Callable[..., Any], server: Any, http: httpx.Client
) -> None:
    """Found by issue 16 (3.9): "Subscribe again" worked from any old email, forever, undid unsubscribes
    made by hand or at SendGrid, and erased the record that she had opted out."""
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\nana@example.test,Ana,,2027-01-14 19:00,,no\n",
    )
    consultation = unsubscribe_link(project, funnel, server, http, "ana@example.test")  # also sends the webinar's
    # the letters' links (the confirmation's own points elsewhere), as paths: the serve sent the first at base_url
    links = ["/u/" + str(m["List-Unsubscribe"]).strip("<>").split("/u/", 1)[1] for m in letters(project)]
    [webinar] = [link for link in links if link != consultation]

    # left from the webinar email: the consultation email cannot put her back, the webinar email can
    assert one_click(http, webinar).status_code == 200
    refused = http.post(consultation + "/resubscribe", follow_redirects=True)
    assert refused.status_code == 200 and "cannot be undone here" in refused.text
    assert "Nothing has changed" in refused.text and "ana" not in refused.text.lower()
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    assert "subscribed again" in http.post(webinar + "/resubscribe", follow_redirects=True).text
    assert show(funnel, "ana@example.test")["unsubscribed"] is False

    # made by hand: no link undoes it
    assert funnel("contacts", "unsubscribe", "ana@example.test", "--now", NOW).code == 0
    for link in (webinar, consultation):
        assert "cannot be undone here" in http.post(link + "/resubscribe", follow_redirects=True).text
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    assert funnel("contacts", "resubscribe", "ana@example.test", "--now", NOW).code == 0

    # from its own link, but more than 30 days later
    assert http.post(consultation, data={"confirm": "yes"}).status_code == 303
    with funnel_server("--now", "2027-01-08T16:00:01Z").client() as later:  # 30 days and a second
        assert "cannot be undone here" in later.post(consultation + "/resubscribe", follow_redirects=True).text
    with funnel_server("--now", "2027-01-07T16:00:00Z").client() as in_time:  # 30 days to the second
        assert "subscribed again" in in_time.post(consultation + "/resubscribe", follow_redirects=True).text
    assert show(funnel, "ana@example.test")["unsubscribed"] is False

    # every opt-out and opt-in stays in her history, where she and the practice can see it
    expected = [
        {"change": "unsubscribed", "at": "2026-12-08T16:00:00Z", "via": "one-click"},
        {"change": "resubscribed", "at": "2026-12-08T16:00:00Z", "via": "link"},
        {"change": "unsubscribed", "at": "2026-12-08T16:00:00Z", "via": "by hand"},
        {"change": "resubscribed", "at": "2026-12-08T16:00:00Z", "via": "by hand"},
        {"change": "unsubscribed", "at": "2026-12-08T16:00:00Z", "via": "link"},
        {"change": "resubscribed", "at": "2027-01-07T16:00:00Z", "via": "link"},
    ]
    assert show(funnel, "ana@example.test")["subscription_history"] == expected
    assert export(funnel, "ana@example.test")["subscription_history"] == expected
    text = funnel("contacts", "show", "ana@example.test")
    assert text.code == 0 and text.out.count("unsubscribed") >= 3 and "resubscribed" in text.out


def test_a_new_form_post_after_an_unsubscribe_is_fresh_consent(
    project: Project, funnel: Run, server: Any, http: httpx.Client
) -> None:
    link = unsubscribe_link(project, funnel, server, http, "ana@example.test")
    http.post(
        link, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    # re-reading an old file never resubscribes anyone ...
    project.write("signups/consultation-requests.jsonl", '{"email": "ana@example.test", "name": "Ana"}\n')
    assert funnel("run", "--now", NOW).code == 0
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    # ... nor does a form post by itself (anyone can post her address) ...
    assert http.post(FORM, data=ANA).status_code == 303
    assert show(funnel, "ana@example.test")["unsubscribed"] is True
    # ... but she asking again, confirmed by her click on the emailed link, does
    assert http.post(confirmation_link(project, "ana@example.test", 2), data={"confirm": "yes"}).status_code == 200
    assert show(funnel, "ana@example.test")["unsubscribed"] is False
    assert len(export(funnel, "ana@example.test")["consents"]) == 2


def test_forget_erases_the_consent_evidence(project: Project, funnel: Run, http: httpx.Client) -> None:
    assert post_confirmed(project, http, ANA, headers={"User-Agent": "TestBrowser/1.0"}).status_code == 303
    assert len(export(funnel, "ana@example.test")["consents"]) == 1
    assert funnel("contacts", "forget", "ana@example.test").code == 0
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM consents").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
    # a form post for an erased address stores nothing, and answers like any other
    assert http.post(FORM, data=ANA).status_code == 303
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM consents").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
    assert unknown(funnel, "ana@example.test")


# --------------------------------------------------------------------------- a real browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium through chromedriver (installed by .ci/run), phone-sized, fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=390,844",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _not_blank(png: Path) -> None:
    """The screenshot shows a page: many colours, dark text on the light background, not one flat fill."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1_000_000) or []
        dark = sum(count for count, (r, g, b) in colours if r + g + b < 200)
        assert len(colours) > 50, f"{png} looks blank ({len(colours)} colours)"
        assert dark > 500, f"{png} shows no text"


def test_a_browser_unsubscribes_from_a_real_email(
    project: Project, funnel_process: Run, funnel_server: Callable[..., Any], chromium: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    server = funnel_server("--now", NOW, env={"FUNNEL_BASE_URL": "http://base.invalid"})
    with server.client() as http:
        post_confirmed(project, http, ANA)
    # the first email, sent by the serve at once; its links name the proxy's address (base_url)
    [message] = letters(project)
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    links = re.findall(r'href="(http://base\.invalid/u/[^"]+)"', html)
    assert links, "no unsubscribe link in the email's HTML"
    assert str(message["List-Unsubscribe"]) == f"<{links[0]}>"

    chromium.get(links[0].replace("http://base.invalid", server.url))
    assert chromium.title == "Email preferences"
    # the stylesheet is allowed by the Content-Security-Policy's hash, and the page fits a phone
    background = chromium.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(250, 248, 245)"
    assert chromium.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "unsubscribe.png"
    shot.unlink(missing_ok=True)
    assert chromium.save_screenshot(str(shot))
    _not_blank(shot)
    assert show_subprocess(funnel_process)["unsubscribed"] is False  # opening the page changed nothing

    # keyboard only: Tab reaches the button, Enter presses it
    ActionChains(chromium).send_keys(Keys.TAB).perform()
    focused = chromium.switch_to.active_element
    assert focused.tag_name == "button" and focused.text == "Stop everything"
    focused.send_keys(Keys.ENTER)
    WebDriverWait(chromium, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda driver: driver.find_element(By.TAG_NAME, "h1").text == "You are unsubscribed"
    )
    done = ARTIFACTS / "unsubscribed.png"
    assert chromium.save_screenshot(str(done))
    _not_blank(done)
    assert show_subprocess(funnel_process)["unsubscribed"] is True


def test_a_browser_pauses_for_a_month_and_ends_the_pause_from_the_same_page(
    project: Project, funnel_process: Run, funnel_server: Callable[..., Any], chromium: Any
) -> None:
    """The choices besides "stop everything" (spec section 12), pressed in a real browser."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    server = funnel_server("--now", NOW, env={"FUNNEL_BASE_URL": "http://base.invalid"})
    with server.client() as http:
        post_confirmed(project, http, ANA)
    [message] = letters(project)
    link = str(message["List-Unsubscribe"]).strip("<>").replace("http://base.invalid", server.url)
    chromium.get(link)
    buttons = [b.text for b in chromium.find_elements(By.TAG_NAME, "button")]
    assert buttons == ["Stop everything", "Just the webinar emails", "Pause for a month"]
    assert chromium.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "email-choices.png"
    assert chromium.save_screenshot(str(shot))
    _not_blank(shot)

    def press(label: str, heading: str) -> None:
        button = next(b for b in chromium.find_elements(By.TAG_NAME, "button") if b.text == label)
        button.click()
        WebDriverWait(chromium, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda driver: driver.find_element(By.TAG_NAME, "h1").text == heading
        )

    press("Pause for a month", "Paused for a month")
    [enrollment] = show_subprocess(funnel_process)["enrollments"]
    assert enrollment["status"] == "paused"
    press("End the pause now", "The pause has ended")
    [enrollment] = show_subprocess(funnel_process)["enrollments"]
    assert enrollment["status"] != "paused"
    assert show_subprocess(funnel_process)["unsubscribed"] is False


def test_a_browser_back_and_reload_after_a_button_never_post_again(
    project: Project, funnel_process: Run, funnel_server: Callable[..., Any], chromium: Any
) -> None:
    """Issue 19: a button lands on a result page of its own (a GET), so Reload and Back show pages and
    never post again: no "Confirm Form Resubmission", and nothing changes."""
    from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    server = funnel_server("--now", NOW, env={"FUNNEL_BASE_URL": "http://base.invalid"})
    with server.client() as http:
        post_confirmed(project, http, ANA)
    [message] = letters(project)
    link = str(message["List-Unsubscribe"]).strip("<>").replace("http://base.invalid", server.url)

    def heading(*texts: str) -> None:
        WebDriverWait(chromium, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda driver: driver.find_element(By.TAG_NAME, "h1").text in texts,
            f"the page never showed {texts} (at {chromium.current_url})",
        )
        with pytest.raises(NoAlertPresentException):  # no dialog asking to send the form again
            chromium.switch_to.alert.text  # noqa: B018

    def press(label: str, text: str) -> None:
        next(b for b in chromium.find_elements(By.TAG_NAME, "button") if b.text == label).click()
        heading(text)

    chromium.get(link)
    heading("Your email choices")
    press("Stop everything", "You are unsubscribed")
    assert chromium.current_url == link + "/done?r=unsubscribed"
    unsubscribed = show_subprocess(funnel_process)
    assert unsubscribed["unsubscribed"] is True
    chromium.refresh()
    heading("You are unsubscribed")
    assert show_subprocess(funnel_process) == unsubscribed

    # posting "Subscribe again" twice would answer "This cannot be undone here": a reload must not
    press("Subscribe again", "You are subscribed again")
    assert chromium.current_url == link + "/done?r=resubscribed"
    chromium.refresh()
    heading("You are subscribed again")
    resubscribed = show_subprocess(funnel_process)
    assert resubscribed["unsubscribed"] is False
    # Back: the earlier result page (the browser may show the copy it kept); reloaded, it no longer holds,
    # so it shows her choices as they are now; nothing is posted either way
    chromium.back()
    heading("You are unsubscribed", "Your email choices")
    assert chromium.current_url == link + "/done?r=unsubscribed"
    chromium.refresh()
    heading("Your email choices")
    chromium.back()
    heading("Your email choices")
    assert chromium.current_url == link
    chromium.forward()
    chromium.forward()
    heading("You are subscribed again")
    assert show_subprocess(funnel_process) == resubscribed
    assert [c["change"] for c in resubscribed["subscription_history"]] == ["unsubscribed", "resubscribed"]


def show_subprocess(funnel_process: Run) -> dict[str, Any]:
    result = funnel_process("contacts", "show", "ana@example.test", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


WEBINAR_FORM = """
  webinar-form:
    format: form
    columns: {email: email, first_name: name, webinar_start: start, timezone: tz}
    webinar: relationship-911
    tags: [webinar-registered]
    enroll: webinar-relationship-911
"""


def test_a_webinar_form_reads_a_start_without_offset_in_the_webinars_zone(
    project: Project, funnel: Run, funnel_server: Callable[..., Any]
) -> None:
    """A live webinar is one moment, also when people register through the website's form:
    '2027-01-14 19:00' is 7 PM in Denver (the webinar's zone) for a reader in Los Angeles."""
    text = (project.root / "sequences.yaml").read_text()
    project.write("sequences.yaml", text.replace("\nsources:\n", "\nsources:\n" + WEBINAR_FORM, 1))
    with funnel_server("--now", NOW).client() as http:
        answer = http.post(
            "/forms/webinar-form",
            data={"email": "lia@example.test", "name": "Lia", "start": "2027-01-14 19:00", "tz": "America/Los_Angeles"},
        )
        assert answer.status_code == 200, answer.text
        assert http.post(confirmation_link(project, "lia@example.test"), data={"confirm": "yes"}).status_code == 200
    lia = show(funnel, "lia@example.test")
    assert lia["timezone"] == "America/Los_Angeles"
    assert [e["webinar_start"] for e in lia["enrollments"]] == ["2027-01-15T02:00:00Z"]
