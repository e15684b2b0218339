"""Benchmark: how soon `funnel serve` hands its own emails to the transport, while a big run sends.

Two latencies, each over `--posts` form posts (default 200), on the shipped
sequences.yaml and letters:

- post -> confirmation: from the moment the client starts `POST /forms/...`
  to the moment the confirmation email's request reaches the fake SendGrid;
- click -> first step: from the moment the client starts `POST /c/{token}`
  to the moment the sequence's first transactional step ("your message
  arrived") reaches it.

Meanwhile a real `funnel run` sends 5,000 emails (`--run-emails`) from the
same database to another fake SendGrid. Both fakes answer at once (they run
in this process, on loopback, and note when each request arrives). The
posts are made one after the other by one client. Figures: median and p95 of
each latency, and how many of the posts were made while the run was still
sending (a run that ends early is restarted on the next batch of people).

Usage: .venv/bin/python benchmarks/confirm_latency.py [--database sqlite|postgres] [--posts 200] [--run-emails 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fake_sendgrid import FakeSendGrid, _recipients  # noqa: E402
from web_server import FunnelServer  # noqa: E402

KEY = "SG.bench-key"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


class Arrivals:
    """When each kind of email reached a fake, by address."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], float] = {}
        self.event = threading.Condition(self.lock)

    def note(self, record: dict[str, Any]) -> None:
        body = record["body"] or {}
        args = body.get("custom_args", {})
        kind = "confirmation" if args.get("funnel_kind") == "confirmation" else args.get("funnel_step", "")
        with self.event:
            for address in _recipients(body):
                self.seen.setdefault((kind, address), record["time"])
            self.event.notify_all()

    def wait(self, kind: str, address: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        with self.event:
            while (kind, address) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} email to {address} within {timeout}s")
                self.event.wait(left)
            return self.seen[(kind, address)]


def _database(kind: str, root: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{root / 'funnel.db'}", None
    import psycopg

    name = f"funnel_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name


def _drop(name: str | None) -> None:
    if name is None:
        return
    import psycopg

    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--run-emails", type=int, default=5000)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="confirm-bench-"))
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    text = (REPO / "sequences.yaml").read_text(encoding="utf-8")
    (root / "sequences.yaml").write_text(text + "\nserve:\n  form_burst: 10000\n  form_per_minute: 10000\n")
    (root / "signups").mkdir()
    url, pg_name = _database(args.database, root)
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FUNNEL_", "SENDGRID_"))},
        "FUNNEL_SECRET_KEY": "bench-secret",
        "FUNNEL_DATABASE_URL": url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "FUNNEL_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": KEY,
    }
    serve_fake, run_fake = FakeSendGrid(api_key=KEY).start(), FakeSendGrid(api_key=KEY).start()
    arrivals = Arrivals()
    serve_fake.on_mail(arrivals.note)
    runs: list[tuple[float, float]] = []
    running = threading.Event()
    stop = threading.Event()
    batch = [0]

    def import_batch() -> None:
        path = root / "signups" / f"batch{batch[0]}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"email": f"b{batch[0]}p{i}@example.test", "name": "P"}) + "\n"
                for i in range(args.run_emails)
            )
        )
        batch[0] += 1
        done = subprocess.run(
            [sys.executable, "-m", "funnel", "import", "consultation-requests", str(path)],
            cwd=root,
            env=base_env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr

    def keep_running() -> None:
        """`funnel run` sending `--run-emails` emails, again and again until the posts are done."""
        while not stop.is_set():
            started = time.time()
            running.set()
            done = subprocess.run(
                [sys.executable, "-m", "funnel", "run", "--json"],
                cwd=root,
                env={**base_env, "FUNNEL_SENDGRID_HOST": run_fake.url},
                capture_output=True,
                text=True,
            )
            runs.append((started, time.time()))
            summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
            print(f"  run: sent {summary.get('sent')} in {time.time() - started:.1f}s", file=sys.stderr)
            if not stop.is_set():
                import_batch()

    import_batch()
    server = FunnelServer(root, (), {**base_env, "FUNNEL_SENDGRID_HOST": serve_fake.url}).start()
    runner = threading.Thread(target=keep_running, daemon=True)
    runner.start()
    running.wait()
    time.sleep(1.0)  # the run is past its start-up and sending
    to_confirmation: list[float] = []
    to_first_step: list[float] = []
    posted_at: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as http:
            for i in range(args.posts):
                address = f"visitor{i}@example.test"
                start = time.time()
                answer = http.post("/forms/consultation-form", data={"email": address, "name": "V", "message": "hi"})
                assert answer.status_code == 303, answer.text
                arrived = arrivals.wait("confirmation", address)
                to_confirmation.append(arrived - start)
                posted_at.append(start)
                body = next(r["body"] for r in serve_fake.accepted if address in _recipients(r["body"]))
                link = body["content"][0]["value"].split("/c/", 1)[1].split()[0]
                start = time.time()
                clicked = http.post(f"/c/{link}", data={"confirm": "yes"})
                assert clicked.status_code == 200, clicked.text
                to_first_step.append(arrivals.wait("received", address) - start)
    finally:
        stop.set()
        runner.join(timeout=600)
        server.stop()
        serve_fake.stop()
        run_fake.stop()
        _drop(pg_name)
        shutil.rmtree(root, ignore_errors=True)
    during = sum(1 for t in posted_at if any(a <= t <= b for a, b in runs))
    for name, values in (("post -> confirmation", to_confirmation), ("click -> first step", to_first_step)):
        print(
            f"{args.database}: {name}: median {statistics.median(values) * 1000:.0f} ms, "
            f"p95 {_percentile(values, 0.95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
            f"over {len(values)} posts ({during} made while a run of {args.run_emails} emails was sending)"
        )


if __name__ == "__main__":
    main()
