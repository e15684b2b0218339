"""`funnel serve` under load while `funnel run` writes to the same SQLite file.

Concurrent clients post thousands of unsubscribes (valid tokens for many
contacts, some posted again, some forged) and form posts to a real server on
loopback, for a bounded time, while a real `funnel run` subprocess sends to a
slow fake SendGrid. Afterwards: no 5xx, every acknowledged unsubscribe and
every accepted form post is in the database exactly once, the run finished
and sent each email at most once, and nobody received an email handed over
after her unsubscribe was acknowledged. Form posts wait for confirmation
(spec 9): each accepted one is stored once as a pending signup, and the
serve wrote exactly one confirmation email for it meanwhile.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, SECRET
from fake_sendgrid import FakeSendGrid, _recipients
from web_server import FunnelServer

from funnel.mail.unsubscribe import Tokens

NOW = "2026-12-08T16:00:00Z"
PEOPLE = 600  # contacts with a confirmation due
NEWCOMERS = 300  # form posts during the run
CLIENTS = 8
#: the clients stop by themselves after this long, whatever is left
BUDGET = 25.0


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[int] = field(default_factory=Counter)
    #: contact id -> when the first unsubscribe of hers was acknowledged (wall clock)
    acknowledged: dict[int, float] = field(default_factory=dict)
    forged_answers: Counter[int] = field(default_factory=Counter)
    accepted_forms: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def _work(server_url: str, jobs: list[tuple[str, Any]], tally: Tally, deadline: float) -> None:
    with httpx.Client(base_url=server_url, timeout=30, follow_redirects=False) as client:
        for kind, item in jobs:
            if time.monotonic() > deadline:
                return
            try:
                if kind == "unsubscribe":
                    contact_id, token = item
                    answer = client.post(
                        f"/u/{token}",
                        content=b"List-Unsubscribe=One-Click",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                    seen = time.time()
                    with tally.lock:
                        tally.statuses[answer.status_code] += 1
                        if answer.status_code == 200:
                            tally.acknowledged.setdefault(contact_id, seen)
                elif kind == "forged":
                    answer = client.post(
                        f"/u/{item}",
                        content=b"List-Unsubscribe=One-Click",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                    with tally.lock:
                        tally.statuses[answer.status_code] += 1
                        tally.forged_answers[answer.status_code] += 1
                else:
                    answer = client.post("/forms/consultation-form", data={"email": item, "name": "New"})
                    with tally.lock:
                        tally.statuses[answer.status_code] += 1
                        if answer.status_code == 303:
                            tally.accepted_forms.add(item)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors.append(f"{kind}: {exc.__class__.__name__}: {exc}")


@dataclass
class Load:
    """One load run, shared by the tests below (it takes some seconds)."""

    root: Path
    ids: dict[str, int]
    tally: Tally
    took: float
    run_code: int
    run_out: str
    run_err: str
    server_stderr: str
    accepted: list[dict[str, Any]]


def _funnel(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "funnel", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    root = tmp_path_factory.mktemp("load")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    # the rate limit is for the public internet; here every client shares one address
    text = (REPO / "sequences.yaml").read_text(encoding="utf-8")
    (root / "sequences.yaml").write_text(text + "\nserve:\n  form_burst: 10000\n  form_per_minute: 10000\n")
    (root / "signups").mkdir()
    people = [f"person{i}@example.test" for i in range(PEOPLE)]
    (root / "signups" / "load.jsonl").write_text("".join(json.dumps({"email": p, "name": "P"}) + "\n" for p in people))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FUNNEL_", "SENDGRID_"))},
        "FUNNEL_SECRET_KEY": SECRET,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    imported = _funnel(root, env, "import", "consultation-requests", "signups/load.jsonl", "--now", NOW)
    assert imported.returncode == 0, imported.stderr
    with sqlite3.connect(root / "funnel.db") as conn:
        ids = dict(conn.execute("SELECT email, id FROM contacts"))
        keys = dict(conn.execute("SELECT id, token_key FROM contacts"))
    tokens = Tokens(SECRET)

    fake = FakeSendGrid(api_key="SG.test-key").start()
    fake.delay(0.12)  # a slow provider keeps the run writing for a while
    server = FunnelServer(root, (), env).start()
    run_env = {
        **env,
        "FUNNEL_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": "SG.test-key",
        "FUNNEL_SENDGRID_HOST": fake.url,
    }
    run = subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", NOW, "--json"],
        cwd=root,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        shuffle = random.Random(9)
        jobs: list[tuple[str, Any]] = []
        for contact_id in ids.values():
            for _ in range(shuffle.choice((1, 2, 3, 4))):  # some people press twice
                jobs.append(("unsubscribe", (contact_id, tokens.make(keys[contact_id]))))
        jobs += [("forged", Tokens("another-key").make(keys[cid])) for cid in list(ids.values())[:200]]
        jobs += [("forged", tokens.make(keys[cid])[:-3] + "abc") for cid in list(ids.values())[:100]]
        jobs += [("form", f"newcomer{i}@example.test") for i in range(NEWCOMERS)]
        shuffle.shuffle(jobs)
        tally = Tally()
        deadline = time.monotonic() + BUDGET
        threads = [
            threading.Thread(target=_work, args=(server.url, jobs[i::CLIENTS], tally, deadline)) for i in range(CLIENTS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
        out, err = run.communicate(timeout=120)
        server.stop()  # (SIGTERM: confirmation emails under way are finished and recorded first)
        yield Load(root, ids, tally, took, run.returncode, out, err, server.stderr, fake.accepted)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        server.stop()
        fake.stop()


def test_nothing_lost_nothing_counted_twice_no_server_error(load: Load) -> None:
    tally = load.tally
    # the web side: no 5xx, no dropped connection, forged tokens refused
    assert tally.errors == [], tally.errors[:5]
    assert not [s for s in tally.statuses if s >= 500], (tally.statuses, load.server_stderr[-3000:])
    assert set(tally.forged_answers) == {400}, tally.forged_answers
    assert load.took < BUDGET + 10
    handled = sum(tally.statuses.values())
    assert handled >= 1000, f"only {handled} requests in {load.took:.1f}s"
    print(f"{handled} requests in {load.took:.1f}s: {dict(tally.statuses)}; {len(load.accepted)} emails sent")
    # the run finished, sending each email at most once
    assert load.run_code == 0, load.run_err
    summary = json.loads(load.run_out)
    sent_to = Counter(addr for request in load.accepted for addr in _recipients(request["body"]))
    assert max(sent_to.values(), default=1) == 1, [a for a, n in sent_to.items() if n > 1][:5]
    with sqlite3.connect(load.root / "funnel.db") as conn:
        unsubscribed = {cid for (cid,) in conn.execute("SELECT id FROM contacts WHERE unsubscribed_at IS NOT NULL")}
        pending = Counter(
            e for (e,) in conn.execute("""SELECT json_extract("values", '$.email') FROM pending_signups""")
        )
        created = conn.execute("SELECT count(*) FROM contacts WHERE email LIKE 'newcomer%'").fetchone()[0]
        sent_rows = conn.execute("SELECT count(*) FROM step_runs WHERE status = 'sent'").fetchone()[0]
    # nothing lost, nothing counted twice
    assert set(tally.acknowledged) <= unsubscribed, "an acknowledged unsubscribe is missing"
    assert unsubscribed <= set(tally.acknowledged), "an unsubscribe nobody asked for (a forged token worked?)"
    assert tally.accepted_forms == set(pending), "an accepted form post is missing"
    assert set(pending.values()) <= {1}, "a form post stored twice"
    assert created == 0, "a form post made a contact before anyone confirmed it"
    confirmations = Counter(
        str(message["To"]).lower()
        for message in (
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in (load.root / "outbox").glob("*_confirmation_*.eml")
        )
    )
    assert set(confirmations) == tally.accepted_forms and set(confirmations.values()) == {1}
    assert sent_rows == sum(sent_to.values()), (summary, sent_rows, sum(sent_to.values()))


#: how long a request that has passed its last suppression check may still take to reach the fake:
#: opening a connection, writing the body and waiting for the CPU among the run's eight sender
#: threads, the server, the clients and three other test workers on a 2-core machine. 50 ms proved
#: too little (92 ms once), and so did 300 ms on a slower machine (427 ms once, in a fresh clone's
#: CI run, 2026-11-28). Wall-clock time here only bounds lateness under load, loosely; that the
#: check right before each request stops an email already handed over is proven without clocks by
#: test_delivery's `test_an_unsubscribe_after_the_hand_over_stops_the_request_not_yet_started`.
IN_FLIGHT = 1.0


def test_no_email_handed_over_after_the_unsubscribe_was_acknowledged(load: Load) -> None:
    """The fake SendGrid notes when each request arrives; none may follow that person's acknowledged
    unsubscribe by more than a request's time on the way (`IN_FLIGHT`).

    Suppression is read for each batch at the hand-over and again on the sender thread right before
    each request (see docs/operations.md, "Never twice").
    """
    acknowledged = load.tally.acknowledged
    late = [
        (addr, round(request["time"] - acknowledged[load.ids[addr]], 3))
        for request in load.accepted
        for addr in _recipients(request["body"])
        if load.ids.get(addr) in acknowledged and request["time"] > acknowledged[load.ids[addr]] + IN_FLIGHT
    ]
    assert late == [], f"{len(late)} emails handed over after the unsubscribe was acknowledged: {late[:5]}"
