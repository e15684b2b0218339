"""Confirmed consent on forms (double opt-in, spec section 9), end to end over HTTP.

A real `funnel serve` subprocess sends through the real SendGrid transport to
the fake SendGrid server (tests/fake_sendgrid.py); `funnel run` and the CLI
run for real on the same database (SQLite file, or PostgreSQL in the
PostgreSQL pass). Nothing is mocked.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Project, project_db
from fake_sendgrid import FakeSendGrid, _recipients

NOW = "2026-12-08T16:00:00Z"  # a Tuesday, 9 am in Denver
FORM = "/forms/consultation-form"
THANKS = "https://healinglightcounseling.test/consultation/thank-you"
ANA = {"email": "ana@example.test", "name": "Ana", "message": "Could we talk?"}
#: words that would tell a shared inbox what the emails are about, or who sends them
TELLING = ("healing", "light", "counsel", "betrayal", "therap", "webinar", "consultation", "relationship", "ellis")

Run = Callable[..., Any]


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid(api_key="SG.test-key").start()
    try:
        yield server
    finally:
        server.stop()


def sendgrid_env(fake: FakeSendGrid) -> dict[str, str]:
    return {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake.url}


@pytest.fixture
def serve(funnel_server: Callable[..., Any], fake: FakeSendGrid) -> Callable[..., Any]:
    """Start a `funnel serve` that sends through the fake SendGrid, at `now` (default NOW)."""

    def start(now: str = NOW) -> Any:
        return funnel_server("--now", now, env=sendgrid_env(fake))

    return start


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll for something another process does (not a schedule): its value once truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def mails(fake: FakeSendGrid, address: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Accepted mail/send bodies to `address`; `kind` "confirmation" or a step id."""
    found = []
    for request in fake.accepted:
        body = request["body"]
        if address.lower() not in _recipients(body):
            continue
        args = body.get("custom_args", {})
        what = "confirmation" if args.get("funnel_kind") == "confirmation" else args.get("funnel_step")
        if kind is None or what == kind:
            found.append(body)
    return found


def text_of(body: dict[str, Any]) -> str:
    return next(c["value"] for c in body["content"] if c["type"] == "text/plain")


def link_of(body: dict[str, Any], server: Any) -> str:
    """The path of the confirmation link (its host is practice.base_url; the path is the server's)."""
    match = re.search(r"https://mail\.healinglightcounseling\.test(/c/[A-Za-z0-9_-]+)", text_of(body))
    assert match, text_of(body)
    return match.group(1)


def confirmation(fake: FakeSendGrid, address: str, server: Any) -> str:
    found = wait_until(lambda: mails(fake, address, "confirmation"))
    assert len(found) == 1, found
    return link_of(found[0], server)


def show(funnel: Run, address: str) -> dict[str, Any] | None:
    result = funnel("contacts", "show", address, "--json")
    if result.code == 1:
        return None
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


def write_csv(project: Project, rows: str) -> None:
    project.write(
        "signups/webinar-registrations.csv", "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n" + rows
    )


# --------------------------------------------------------------------------- the whole way


def test_a_post_sends_one_discreet_confirmation_and_the_click_enrolls_and_sends_the_first_step_once(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    server = serve()
    with server.client() as http:
        answer = http.post(FORM, data=ANA, headers={"User-Agent": "Poster/1.0"})
        assert answer.status_code == 303 and answer.headers["location"] == THANKS
        link = confirmation(fake, "ana@example.test", server)
        # discreet by construction: the neutral sender and subject, plain text, not a word of the subject
        [body] = mails(fake, "ana@example.test", "confirmation")
        assert body["from"]["name"] == "M. Ellis"
        assert body["subject"] == "Please confirm your request"
        assert [c["type"] for c in body["content"]] == ["text/plain"]
        # (the link's host is practice.base_url, where `funnel serve` answers: the README says to pick a neutral one)
        words = (body["subject"] + " " + re.sub(r"https://\S+", "", text_of(body))).lower()
        assert not [w for w in TELLING if w in words], words
        assert "820 Aspen Grove Lane" in text_of(body)  # the postal address
        assert body.get("tracking_settings", {}).get("open_tracking", {}).get("enable") in (None, False)
        # nothing stored about her yet, and the page asks without changing anything
        assert show(funnel, "ana@example.test") is None
        for _ in range(3):  # link scanners
            page = http.get(link)
            assert page.status_code == 200 and "<button" in page.text
        assert show(funnel, "ana@example.test") is None
        # her click
        done = http.post(link, data={"confirm": "yes"}, headers={"User-Agent": "Clicker/2.0"})
        assert done.status_code == 200 and "confirmed" in done.text
        wait_until(lambda: mails(fake, "ana@example.test", "received"))
        again = http.post(link, data={"confirm": "yes"})  # a second click changes nothing
        assert again.status_code == 200
    ana = show(funnel, "ana@example.test")
    assert ana is not None
    assert ana["first_name"] == "Ana" and "consultation-requested" in ana["tags"]
    [enrollment] = ana["enrollments"]
    assert enrollment["sequence"] == "consultation"
    assert enrollment["steps"][0] == {**enrollment["steps"][0], "id": "received", "status": "sent"}
    consents = funnel("contacts", "export", "ana@example.test").json()["consents"]  # type: ignore[index]
    assert consents == [
        {
            "source": "consultation-form",
            "given_at": "2026-12-08T16:00:00Z",
            "ip": "127.0.0.1",
            "user_agent": "Poster/1.0",
            "confirmed_at": "2026-12-08T16:00:00Z",
            "confirm_ip": "127.0.0.1",
            "confirm_user_agent": "Clicker/2.0",
        }
    ]
    # a cron run at the same moment never sends it again
    run = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert run.code == 0, run.err
    assert len(mails(fake, "ana@example.test", "received")) == 1
    assert len(mails(fake, "ana@example.test")) == 2  # the confirmation and the first step, nothing else
    with project_db(project) as db:
        [(run_id,)] = db.execute("SELECT run_id FROM step_runs WHERE step_id = 'received'").fetchall()
        [(summary,)] = db.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchall()
    assert "serve" in str(summary)  # sent by the serve, under a run of its own


# --------------------------------------------------------------------------- strangers


def test_a_strangers_post_changes_nothing_about_a_known_person_until_she_confirms(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,yes\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    before = show(funnel, "ana@example.test")
    assert before is not None and before["discreet"] is True
    server = serve()
    hostile = {"email": "ANA@example.test", "name": "Ana - your husband will read this", "discreet": "no"}
    with server.client() as http:
        assert http.post(FORM, data={**hostile, "message": "hello"}).status_code == 303
        confirmation(fake, "ana@example.test", server)  # she is asked (discreetly), nothing else
    after = show(funnel, "ana@example.test")
    assert after == before  # name, fields, tags, enrollments, discretion: all as they were
    assert "consultation-requested" not in after["tags"]


def test_a_post_asking_for_discretion_applies_at_once_and_only_she_turns_it_off(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    write_csv(project, "bea@example.test,Bea,Lund,2027-01-14 19:00,America/Denver,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data={"email": "bea@example.test", "discreet": "yes"}).status_code == 303
        bea = show(funnel, "bea@example.test")
        assert bea is not None and bea["discreet"] is True  # at once, before any confirmation
        link = confirmation(fake, "bea@example.test", server)
        page = http.get(link)  # the page of a discreet request never names the practice
        assert "Healing Light" not in page.text and "<button" in page.text
        # a stranger's "no" meanwhile sends nothing and changes nothing; her click applies her own post
        assert http.post(FORM, data={"email": "bea@example.test", "discreet": "no"}).status_code == 303
        assert http.post(link, data={"confirm": "yes"}).status_code == 200
    assert show(funnel, "bea@example.test")["discreet"] is True  # type: ignore[index]
    result = funnel("contacts", "discreet", "bea@example.test", "off")
    assert result.code == 0 and "not discreet" in result.out
    assert show(funnel, "bea@example.test")["discreet"] is False  # type: ignore[index]
    assert funnel("contacts", "discreet", "nobody@example.test", "on").code == 1
    assert "{on|off}" in funnel("contacts", "discreet", "--help").out


def test_a_browser_post_from_another_site_is_403(
    project: Project, funnel: Run, funnel_server: Callable[..., Any], fake: FakeSendGrid
) -> None:
    # the shipped sequences.yaml lists the practice's website (with and without www)
    assert "allowed_origins: [https://healinglightcounseling.test" in (project.root / "sequences.yaml").read_text()
    server = funnel_server("--now", NOW, env=sendgrid_env(fake))
    with server.client() as http:
        evil = http.post(FORM, data=ANA, headers={"Origin": "https://evil.test"})
        assert evil.status_code == 403
        assert http.post(FORM, data=ANA, headers={"Referer": "https://evil.test/page"}).status_code == 403
        assert http.post(FORM, data=ANA, headers={"Origin": "null"}).status_code == 403
        assert mails(fake, "ana@example.test") == []
        good = http.post(FORM, data=ANA, headers={"Origin": "https://healinglightcounseling.test"})
        assert good.status_code == 303
        www = {"Referer": "https://www.healinglightcounseling.test/consultation"}
        assert http.post(FORM, data={**ANA, "email": "bea@example.test"}, headers=www).status_code == 303
        confirmation(fake, "ana@example.test", server)
        # a server posting for the website sends no Origin and no Referer: not a browser's post
        assert http.post(FORM, data={**ANA, "email": "cai@example.test"}).status_code == 303


def test_a_repeated_post_within_the_hour_sends_no_second_confirmation(
    funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    server = serve()
    with server.client() as http:
        for _ in range(4):
            assert http.post(FORM, data=ANA).status_code == 303
        confirmation(fake, "ana@example.test", server)
    server.stop()
    later = serve("2026-12-08T16:59:00Z")
    with later.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
    later.stop()  # a post does not wait for its email: stopping drains the serve's sender threads
    assert len(mails(fake, "ana@example.test")) == 1
    hour = serve("2026-12-08T17:01:00Z")
    with hour.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
    assert len(wait_until(lambda: len(mails(fake, "ana@example.test")) == 2 and mails(fake, "ana@example.test"))) == 2
    assert show(funnel, "ana@example.test") is None


def test_an_expired_link_confirms_nothing(funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid) -> None:
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
    server.stop()
    late = serve("2026-12-15T16:00:01Z")  # 7 days and a second later
    with late.client() as http:
        assert http.get(link).status_code == 410
        answer = http.post(link, data={"confirm": "yes"})
        assert answer.status_code == 410 and "expired" in answer.text
        assert http.post("/c/not-a-token", data={"confirm": "yes"}).status_code == 400
    assert show(funnel, "ana@example.test") is None
    assert len(mails(fake, "ana@example.test")) == 1


# --------------------------------------------------------------------------- unsubscribes


def test_her_own_unsubscribe_is_lifted_by_her_confirmed_post_one_made_by_hand_never(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    write_csv(
        project,
        "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n"
        "bea@example.test,Bea,Lund,2027-01-14 19:00,America/Denver,no\n",
    )
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    assert funnel("contacts", "unsubscribe", "bea@example.test", "--now", NOW).code == 0  # by hand
    [eml] = [m for m in project.messages() if m["To"].addresses[0].addr_spec == "ana@example.test"]
    own_link = str(eml["List-Unsubscribe"]).strip("<>").split("/u/", 1)[1]
    server = serve()
    with server.client() as http:
        done = http.post(f"/u/{own_link}", data={"confirm": "yes"}, follow_redirects=True)
        assert done.status_code == 200
        assert show(funnel, "ana@example.test")["unsubscribed"] is True  # type: ignore[index]
        for who in ("ana@example.test", "bea@example.test"):
            assert http.post(FORM, data={**ANA, "email": who}).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        assert show(funnel, "ana@example.test")["unsubscribed"] is True  # type: ignore[index]  # until she clicks
        assert http.post(link, data={"confirm": "yes"}).status_code == 200
    assert show(funnel, "ana@example.test")["unsubscribed"] is False  # type: ignore[index]
    server.stop()  # a post does not wait for its email: stopping drains the serve's sender threads
    # by hand stays: no confirmation even goes (it could confirm nothing), nothing changes
    assert mails(fake, "bea@example.test") == []
    bea = show(funnel, "bea@example.test")
    assert bea is not None and bea["unsubscribed"] is True and "consultation-requested" not in bea["tags"]


def test_an_erased_address_stores_nothing_and_is_not_asked(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    assert funnel("contacts", "forget", "ana@example.test", "--now", NOW).code == 0
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
    assert mails(fake, "ana@example.test") == []


# --------------------------------------------------------------------------- confirm: false


def test_confirm_false_keeps_the_old_way_store_at_once_and_the_next_run_sends(
    project: Project, funnel: Run, funnel_server: Callable[..., Any], fake: FakeSendGrid
) -> None:
    text = (project.root / "sequences.yaml").read_text()
    project.write(
        "sequences.yaml",
        text.replace(f"    thank_you_url: {THANKS}\n", f"    thank_you_url: {THANKS}\n    confirm: false\n"),
    )
    server = funnel_server("--now", NOW, env=sendgrid_env(fake))
    with server.client() as http:
        assert http.post(FORM, data=ANA, headers={"User-Agent": "Site/1.0"}).status_code == 303
    ana = show(funnel, "ana@example.test")
    assert ana is not None and "consultation-requested" in ana["tags"]
    assert mails(fake, "ana@example.test") == []  # serve sends nothing for such a source
    consents = funnel("contacts", "export", "ana@example.test").json()["consents"]  # type: ignore[index]
    assert consents == [{"source": "consultation-form", "given_at": NOW, "ip": "127.0.0.1", "user_agent": "Site/1.0"}]
    assert funnel("run", "--now", NOW, env=sendgrid_env(fake)).code == 0
    assert len(mails(fake, "ana@example.test", "received")) == 1


# --------------------------------------------------------------------------- a serve killed mid-send


def test_a_serve_killed_mid_send_leaves_the_step_unknown_and_no_run_sends_it_again(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        arrived: list[str] = []
        fake.on_mail(lambda record: arrived.append(record["body"]["custom_args"].get("funnel_step", "")))
        fake.delay(30)  # the first step's request hangs at SendGrid ...
        assert http.post(link, data={"confirm": "yes"}).status_code == 200  # (the answer does not wait long)
        assert wait_until(lambda: "received" in arrived)
    server._process.send_signal(signal.SIGKILL)  # ... and the serve dies mid-request
    server._process.wait()
    fake.delay(0)
    before = len(fake.requests)
    run = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))
    assert run.code == 1, run.err  # a run that finds an unknown email says so
    assert run.json()["unknown"] == 1  # type: ignore[index]
    assert [r for r in fake.requests[before:] if r["path"] == "/v3/mail/send"] == []
    ana = show(funnel, "ana@example.test")
    assert ana is not None and ana["enrollments"][0]["steps"][0]["status"] == "unknown"


# --------------------------------------------------------------------------- "not me"


def test_not_me_on_the_confirmation_stops_every_further_request_to_the_address(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        [body] = mails(fake, "ana@example.test", "confirmation")
        # every email carries RFC 8058 headers (spec 5); this one's never points at the confirming link
        stop_url = body["headers"]["List-Unsubscribe"].strip("<>")
        assert stop_url.endswith(link + "/stop") and stop_url in text_of(body)
        assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert http.get(link + "/stop").status_code == 200  # asks, changes nothing
        assert (
            http.post(
                link + "/stop",
                content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ).status_code
            == 200
        )
        assert http.post(link, data={"confirm": "yes"}).status_code == 400  # nothing left to confirm
    server.stop()
    later = serve("2026-12-09T16:00:00Z")  # a day later, the hour long past
    with later.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
    assert len(mails(fake, "ana@example.test")) == 1  # never asked again
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
        row = db.execute("SELECT email, unsubscribed_via FROM contacts").fetchall()
    assert row == [(None, "declined a confirmation")]  # the address's hash only


def test_a_cron_run_while_the_serve_is_sending_leaves_its_email_alone(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """The serve is a live run of its own (a liveness lock): a run's recovery at that moment neither
    turns its email `unknown` nor gives it back, and the serve records it as sent."""
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        arrived: list[str] = []
        fake.on_mail(lambda record: arrived.append(record["body"]["custom_args"].get("funnel_step", "")))
        fake.delay(6)  # the first step's request is under way at SendGrid ...
        assert http.post(link, data={"confirm": "yes"}).status_code == 200
        assert wait_until(lambda: "received" in arrived)
        run = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))  # ... while cron runs
        assert run.code == 0, run.err
        assert run.json()["unknown"] == 0 and run.json()["sent"] == 0  # type: ignore[index]
        fake.delay(0)

        def step_status() -> str:
            ana = show(funnel, "ana@example.test")
            return str(ana["enrollments"][0]["steps"][0]["status"]) if ana else ""

        assert wait_until(lambda: step_status() == "sent", timeout=30)
    assert len(mails(fake, "ana@example.test", "received")) == 1


def test_forget_erases_a_post_waiting_for_confirmation(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        erased = funnel("contacts", "forget", "ana@example.test", "--now", NOW)
        assert erased.code == 0, erased.err
        with project_db(project) as db:
            assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
        assert http.post(link, data={"confirm": "yes"}).status_code == 400  # nothing left to confirm
        assert http.post(FORM, data=ANA).status_code == 303  # erased stays erased: stored nothing, asked nothing
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
        assert db.execute("SELECT email, suppressed_reason FROM contacts").fetchall() == [(None, "erased")]
    assert len(mails(fake, "ana@example.test")) == 1
    assert funnel("contacts", "forget", "bea@example.test").code == 1  # nothing held: unknown, as before


def test_a_cron_run_reaching_the_database_by_another_path_still_sees_the_serve_alive(
    project: Project, funnel: Run, funnel_server: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """SQLite: the serve's liveness file is named after the database file itself, not the path spelled in
    the URL. A serve whose FUNNEL_DATABASE_URL goes through a symlink (a /srv link, a deploy's `current`)
    beside a cron run that names the file directly is one serve: its email under way is left alone."""
    if not project.on_sqlite:
        pytest.skip("a SQLite file's own path; PostgreSQL holds an advisory lock (test above)")
    assert funnel("check").code == 0  # the database file exists
    link = project.root.parent / f"{project.root.name}-link.db"
    link.symlink_to(project.root / "funnel.db")
    server = funnel_server("--now", NOW, env={**sendgrid_env(fake), "FUNNEL_DATABASE_URL": f"sqlite:///{link}"})
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303
        link_path = confirmation(fake, "ana@example.test", server)
        arrived: list[str] = []
        fake.on_mail(lambda record: arrived.append(record["body"]["custom_args"].get("funnel_step", "")))
        fake.delay(6)  # the first step's request is under way at SendGrid ...
        assert http.post(link_path, data={"confirm": "yes"}).status_code == 200
        assert wait_until(lambda: "received" in arrived)
        run = funnel("run", "--now", NOW, "--json", env=sendgrid_env(fake))  # ... while cron runs
        assert run.code == 0, run.err
        assert run.json()["unknown"] == 0 and run.json()["sent"] == 0  # type: ignore[index]
        fake.delay(0)

        def step_status() -> str:
            ana = show(funnel, "ana@example.test")
            return str(ana["enrollments"][0]["steps"][0]["status"]) if ana else ""

        assert wait_until(lambda: step_status() == "sent", timeout=30)
    assert len(mails(fake, "ana@example.test", "received")) == 1


# --------------------------------------------------------------------------- found by trying to break it


def test_a_posts_answer_does_not_wait_for_the_confirmation_so_its_timing_tells_nothing(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """The answer must not wait for SendGrid: an address that is asked would answer as slowly as
    SendGrid, one that is never asked (erased, bounced, unsubscribed by hand) at once, and the
    difference would tell a stranger who knows her address that she was listed and left."""
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    assert funnel("contacts", "forget", "ana@example.test", "--now", NOW).code == 0
    server = serve()
    fake.delay(5.0)  # SendGrid slow today: each request answered 5 s after it arrives
    took = {}
    with server.client() as http:
        for address in ("ana@example.test", "new@example.test"):  # erased (never asked), unknown (asked)
            started = time.monotonic()
            assert http.post(FORM, data={**ANA, "email": address}).status_code == 303
            took[address] = time.monotonic() - started
    # the old code waited up to 2 s for the asked address's request, and not at all for the erased one
    assert took["new@example.test"] < 1.5, took
    fake.delay(0)
    assert len(wait_until(lambda: mails(fake, "new@example.test", "confirmation"))) == 1  # it still goes, once
    assert mails(fake, "ana@example.test") == []


def test_a_strangers_earlier_no_never_lowers_a_discretion_she_asked_for_after_it(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """A stranger posts her address with discreet=no; she then registers for the webinar asking for
    discretion; the confirmation she clicks (it looks like hers) must not turn her discretion off."""
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    server = serve()
    with server.client() as http:
        hostile = {"email": "ana@example.test", "name": "Ana", "discreet": "no", "message": "hello"}
        assert http.post(FORM, data=hostile).status_code == 303
        link = confirmation(fake, "ana@example.test", server)
        # her webinar registration, asking for discretion, is imported after the stranger's post
        write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,yes\n")
        assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
        assert show(funnel, "ana@example.test")["discreet"] is True  # type: ignore[index]
        # she presses Confirm as her browser sends it: the page's box to keep discretion is ticked for her
        page = http.get(link).text
        assert 'name="keep_discreet" value="yes" checked' in page
        assert http.post(link, data={"confirm": "yes", "keep_discreet": "yes"}).status_code == 200
    ana = show(funnel, "ana@example.test")
    assert ana is not None and ana["discreet"] is True


def test_her_own_confirmed_no_lowers_discretion_only_when_she_unticks_the_box(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """Spec 9: nothing but she herself, through a confirmed post (or `contacts discreet off`), turns
    discretion off. The post's "no" alone never does; her unticking the page's box does."""
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,yes\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    server = serve()
    with server.client() as http:
        own = {"email": "ana@example.test", "name": "Ana", "discreet": "no", "message": "ordinary emails now"}
        assert http.post(FORM, data=own).status_code == 303
        assert show(funnel, "ana@example.test")["discreet"] is True  # type: ignore[index]  # not before the click
        link = confirmation(fake, "ana@example.test", server)
        assert 'name="keep_discreet" value="yes" checked' in http.get(link).text
        assert http.post(link, data={"confirm": "yes"}).status_code == 200  # the box unticked: her choice
    ana = show(funnel, "ana@example.test")
    assert ana is not None and ana["discreet"] is False


def test_the_page_behind_a_confirmation_link_is_as_discreet_as_the_email_until_she_confirms(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """The confirmation email names nobody because anyone may have posted her address and anyone
    sharing her inbox may open it: the page one click further must not name the practice either."""
    server = serve()
    with server.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303  # no discretion asked: a stranger's, perhaps
        link = confirmation(fake, "ana@example.test", server)
        for path in (link, f"{link}/stop"):
            page = http.get(path)
            assert page.status_code == 200 and "<button" in page.text
            assert not [w for w in TELLING if w in page.text.lower()], page.text
        # once she has confirmed, her own choice applies: she did not ask for discretion
        assert "Healing Light" in http.post(link, data={"confirm": "yes"}).text


def test_not_me_stops_further_requests_also_to_someone_who_had_unsubscribed_by_link(
    project: Project, funnel: Run, serve: Callable[..., Any], fake: FakeSendGrid
) -> None:
    """Her own unsubscribe is one a confirmed post may lift, so requests still went to her; her
    "not me, do not ask again" left it as it was and a stranger could go on asking every hour."""
    write_csv(project, "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n")
    assert funnel("run", "--now", NOW, env={"FUNNEL_TRANSPORT": "outbox"}).code == 0
    [eml] = [m for m in project.messages() if m["To"].addresses[0].addr_spec == "ana@example.test"]
    own_link = str(eml["List-Unsubscribe"]).strip("<>").split("/u/", 1)[1]
    server = serve()
    with server.client() as http:
        assert http.post(f"/u/{own_link}", data={"confirm": "yes"}, follow_redirects=True).status_code == 200
        assert http.post(FORM, data=ANA).status_code == 303  # a stranger
        link = confirmation(fake, "ana@example.test", server)
        assert http.post(f"{link}/stop", data={"confirm": "yes"}).status_code == 200  # "not me"
    server.stop()
    later = serve("2026-12-09T16:00:00Z")  # a day later, the hour long past
    with later.client() as http:
        assert http.post(FORM, data=ANA).status_code == 303  # the stranger again
    later.stop()  # a post does not wait for its email: stopping drains the serve's sender threads
    assert len(mails(fake, "ana@example.test", "confirmation")) == 1  # never asked again
    with project_db(project) as db:
        assert db.execute("SELECT count(*) FROM pending_signups").fetchone() == (0,)
    ana = show(funnel, "ana@example.test")
    assert ana is not None and ana["unsubscribed"] is True
