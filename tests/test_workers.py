"""Several `funnel run` workers sharing one PostgreSQL database (`funnel.store.workers`).

Real `funnel run` processes, the real PostgreSQL server and the fake SendGrid
on 127.0.0.1 with a latency, so that the workers' sends overlap in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import psycopg
import pytest
from conftest import Project
from fake_sendgrid import FakeSendGrid
from test_delivery import NOW, registrations, sendgrid_env, set_delivery, step_statuses, wait_until

from funnel.store.db import make_engine
from funnel.store.workers import INGEST_KEY, RUN_KEY_SPACE

LATER = "2027-01-10T16:01:00Z"


@pytest.fixture
def fake(fake_sendgrid: FakeSendGrid) -> FakeSendGrid:
    return fake_sendgrid


def start_worker(project: Project, env: dict[str, str], now: str = NOW) -> subprocess.Popen[str]:
    """One `funnel run --json` worker as a real process."""
    return subprocess.Popen(
        [sys.executable, "-m", "funnel", "run", "--now", now, "--json"],
        cwd=project.root,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, json.loads(out) if out.strip() else {}, err


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]  # test SQL, not user input
        return list(cursor.fetchall()) if cursor.description else []


def waiting_for_a_lock(url: str) -> int:
    """How many sessions of this database wait for an advisory lock."""
    return query(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )[0][0]


def test_workers_started_together_share_the_sends_and_read_the_source_once(
    project: Project, fake: FakeSendGrid, postgres_url: str
) -> None:
    addresses = registrations(project, 240)
    set_delivery(project, concurrency=4)
    fake.delay(0.1)  # one worker alone would need about 6 s: all three are at work together
    env = {**sendgrid_env(fake), "FUNNEL_DATABASE_URL": postgres_url}
    make_engine(postgres_url).dispose()
    # the three start together however slowly each process comes up: they queue for the sources' turn
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (INGEST_KEY,))
        workers = [start_worker(project, env) for _ in range(3)]
        wait_until(lambda: waiting_for_a_lock(postgres_url) == 3)
    results = [finish(w) for w in workers]
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    summaries = [summary for _, summary, _ in results]
    # each email accepted exactly once, and every worker sent its share
    assert [fake.sent_to(a) for a in addresses] == [1] * 240
    assert sum(s["sent"] for s in summaries) == 240
    assert all(s["sent"] > 0 for s in summaries), [s["sent"] for s in summaries]
    # the file was read by one worker; the others found it unchanged
    statuses = sorted(s["sources"]["webinar-registrations"]["status"] for s in summaries)
    assert statuses == ["read", "unchanged", "unchanged"]
    assert sum(s["imported"] for s in summaries) == 240
    assert query(postgres_url, "SELECT count(*) FROM contacts") == [(240,)]
    enrollments = query(postgres_url, "SELECT count(*) FROM enrollments")[0][0]
    assert sum(s["enrolled"] for s in summaries) == enrollments
    assert query(postgres_url, "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") == [(3,)]


def test_recovery_leaves_a_live_workers_claims_alone(project: Project, fake: FakeSendGrid, postgres_url: str) -> None:
    registrations(project, 6)
    env = {**sendgrid_env(fake), "FUNNEL_DATABASE_URL": postgres_url}
    code, first, _ = finish(start_worker(project, env))
    assert (code, first["sent"]) == (0, 6)
    # a worker that is alive (its liveness lock held) with two emails handed over and two only claimed
    [(live_run,)] = query(
        postgres_url,
        "INSERT INTO runs (started_at, clock, host, pid, config_fingerprint, config_timing, summary) "
        "VALUES (now(), now(), 'elsewhere', 1, '', '{}', '{}') RETURNING id",
    )
    ids = [row[0] for row in query(postgres_url, "SELECT id FROM step_runs WHERE step_id = 'registered' ORDER BY id")]
    query(postgres_url, "UPDATE step_runs SET status = 'sending', run_id = %s WHERE id = ANY(%s)", live_run, ids[:2])
    query(postgres_url, "UPDATE step_runs SET status = 'claimed', run_id = %s WHERE id = ANY(%s)", live_run, ids[2:4])
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as alive:
        alive.execute("SELECT pg_advisory_lock(%s, %s)", (RUN_KEY_SPACE, live_run))
        code, during, err = finish(start_worker(project, env, LATER))
        assert code == 0, err
        assert during["unknown"] == 0
        assert step_statuses(project, env) == Counter({"sent": 2, "sending": 2, "claimed": 2})
        assert query(postgres_url, "SELECT DISTINCT run_id FROM step_runs WHERE status IN ('claimed', 'sending')") == [
            (live_run,)
        ]
    # the worker is gone (its connection closed): the next run settles what it left
    code, after, _ = finish(start_worker(project, env, LATER))
    assert after["unknown"] == 2
    assert step_statuses(project, env)["unknown"] == 2
    assert not {"claimed", "sending"} & set(step_statuses(project, env))


#: the hand-over window is two batches of this
CONCURRENCY = 4


def test_a_killed_worker_leaves_only_its_hand_over_unknown_while_the_others_go_on(
    project: Project, fake: FakeSendGrid, postgres_url: str
) -> None:
    addresses = registrations(project, 400)
    set_delivery(project, concurrency=CONCURRENCY)
    fake.delay(0.5)  # slow while the third worker comes up (a loaded machine may take seconds to start it)
    env = {**sendgrid_env(fake), "FUNNEL_DATABASE_URL": postgres_url}
    make_engine(postgres_url).dispose()  # the schema, so that the test can watch the workers' progress
    workers = [start_worker(project, env) for _ in range(2)]

    def handed_by(proc: subprocess.Popen[str]) -> int:
        return query(
            postgres_url,
            "SELECT count(*) FROM step_runs s JOIN runs r ON r.id = s.run_id "
            "WHERE s.status IN ('sending', 'sent') AND r.pid = %s",
            proc.pid,
        )[0][0]

    # both workers are sending; a third one joins (its recovery runs while they live)
    wait_until(lambda: min(handed_by(w) for w in workers) >= 2 * CONCURRENCY)
    late = start_worker(project, env)
    wait_until(lambda: handed_by(late) >= 2 * CONCURRENCY)
    victim, survivor = workers
    assert victim.poll() is None, "the victim finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    fake.delay(0.05)
    for proc in (survivor, late):
        code, summary, err = finish(proc)
        assert code == 0, err
        assert summary["unknown"] == 0 and summary["sent"] > 0  # nobody turned another's claims unknown
    [(victim_run,)] = query(postgres_url, "SELECT id FROM runs WHERE pid = %s", victim.pid)
    left = dict(
        query(postgres_url, "SELECT status, count(*) FROM step_runs WHERE run_id = %s GROUP BY status", victim_run)
    )
    assert left.get("sending", 0) <= 2 * CONCURRENCY, left
    # the next pass settles what the dead worker held: unknown only what it had handed over
    code, after, err = finish(start_worker(project, env, LATER))
    assert after["unknown"] == left.get("sending", 0), err
    assert after["sent"] == left.get("claimed", 0)
    final = step_statuses(project, env)
    assert final == Counter({"sent": 400 - after["unknown"], "unknown": after["unknown"]})
    counts = [fake.sent_to(a) for a in addresses]
    assert max(counts) == 1
    assert counts.count(0) <= after["unknown"] <= 2 * CONCURRENCY
