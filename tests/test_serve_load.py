"""`funnel serve` under load while `funnel run` writes to the same SQLite file.

Concurrent clients post thousands of unsubscribes (valid tokens for many
contacts, some posted again, some forged) and form posts to a real server on
loopback, for a bounded time, while a real `funnel run` subprocess sends to a
slow fake SendGrid. Afterwards: no 5xx, every acknowledged unsubscribe and
every accepted form post is in the database exactly once, the run finished
and sent each email at most once, and nobody received an email handed over
after her unsubscribe was acknowledged.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from conftest import SECRET, Project
from fake_sendgrid import _recipients

from funnel.unsubscribe import Tokens

NOW = "2026-12-08T16:00:00Z"
PEOPLE = 400  # contacts with a confirmation due
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
                    answer = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                                         headers={"content-type": "application/x-www-form-urlencoded"})
                    seen = time.time()
                    with tally.lock:
                        tally.statuses[answer.status_code] += 1
                        if answer.status_code == 200:
                            tally.acknowledged.setdefault(contact_id, seen)
                elif kind == "forged":
                    answer = client.post(f"/u/{item}", content=b"List-Unsubscribe=One-Click",
                                         headers={"content-type": "application/x-www-form-urlencoded"})
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


def test_unsubscribes_and_forms_under_load_while_a_run_sends(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], fake_sendgrid: Any
) -> None:
    # the rate limit is for the public internet; here every client shares one address
    project.append("sequences.yaml", "\nserve:\n  form_burst: 10000\n  form_per_minute: 10000\n")
    people = [f"person{i}@example.test" for i in range(PEOPLE)]
    project.write("signups/load.jsonl", "".join(json.dumps({"email": p, "name": "P"}) + "\n" for p in people))
    imported = funnel("import", "consultation-requests", "signups/load.jsonl", "--now", NOW)
    assert imported.code == 0, imported.err
    with sqlite3.connect(project.root / "funnel.db") as conn:
        ids = dict(conn.execute("SELECT email, id FROM contacts"))
    tokens = Tokens(SECRET)

    fake_sendgrid.delay(0.12)  # a slow provider keeps the run writing for a while
    env = {
        **os.environ,
        "FUNNEL_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": "SG.test-key",
        "FUNNEL_SENDGRID_HOST": fake_sendgrid.url,
    }
    server = funnel_server()
    run = subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", NOW, "--json"],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        shuffle = random.Random(9)
        jobs: list[tuple[str, Any]] = []
        for email, contact_id in ids.items():
            for _ in range(shuffle.choice((1, 1, 2, 3))):  # some people press twice
                jobs.append(("unsubscribe", (contact_id, tokens.make(contact_id))))
        jobs += [("forged", Tokens("another-key").make(cid)) for cid in list(ids.values())[:100]]
        jobs += [("forged", tokens.make(1)[:-3] + "abc") for _ in range(50)]
        jobs += [("form", f"newcomer{i}@example.test") for i in range(NEWCOMERS)]
        shuffle.shuffle(jobs)
        tally = Tally()
        deadline = time.monotonic() + BUDGET
        threads = [
            threading.Thread(target=_work, args=(server.url, jobs[i::CLIENTS], tally, deadline))
            for i in range(CLIENTS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    # the web side: no 5xx, no dropped connection, forged tokens refused
    assert tally.errors == [], tally.errors[:5]
    assert not [s for s in tally.statuses if s >= 500], (tally.statuses, server.stderr[-3000:])
    assert set(tally.forged_answers) == {400}, tally.forged_answers
    assert took < BUDGET + 10
    handled = sum(tally.statuses.values())
    assert handled >= 1000, f"only {handled} requests in {took:.1f}s"
    # the run finished, sending each email at most once
    assert run.returncode == 0, err
    summary = json.loads(out)
    sent_to = Counter(addr for request in fake_sendgrid.accepted for addr in _recipients(request["body"]))
    assert max(sent_to.values(), default=1) == 1, [a for a, n in sent_to.items() if n > 1][:5]
    with sqlite3.connect(project.root / "funnel.db") as conn:
        unsubscribed = {
            cid: at for cid, at in conn.execute("SELECT id, unsubscribed_at FROM contacts WHERE unsubscribed_at IS NOT NULL")
        }
        stored = {e for (e,) in conn.execute("SELECT email FROM contacts WHERE email LIKE 'newcomer%'")}
        consents = Counter(
            e for (e,) in conn.execute(
                "SELECT c.email FROM consents k JOIN contacts c ON c.id = k.contact_id WHERE c.email LIKE 'newcomer%'"
            )
        )
        sent_rows = conn.execute("SELECT count(*) FROM step_runs WHERE status = 'sent'").fetchone()[0]
    # nothing lost, nothing counted twice
    assert set(tally.acknowledged) <= set(unsubscribed), "an acknowledged unsubscribe is missing"
    assert set(unsubscribed) <= set(tally.acknowledged), "an unsubscribe nobody asked for (a forged token worked?)"
    assert tally.accepted_forms == stored, "an accepted form post is missing"
    assert set(consents.values()) == {1}, "a form post stored twice"
    assert sent_rows == sum(sent_to.values()), (summary, sent_rows, sum(sent_to.values()))
    # nobody got an email handed over after her unsubscribe was acknowledged
    by_address = {email: cid for email, cid in ids.items()}
    late = [
        (addr, request["time"] - tally.acknowledged[by_address[addr]])
        for request in fake_sendgrid.accepted
        for addr in _recipients(request["body"])
        if by_address.get(addr) in tally.acknowledged and request["time"] > tally.acknowledged[by_address[addr]]
    ]
    assert late == [], f"{len(late)} emails handed over after the unsubscribe was acknowledged: {late[:5]}"
