"""Benchmark: a Zoom registration webhook to its confirmation handed to the transport, while a run sends.

Over `--posts` signed `webinar.registration_created` posts (default 200),
one after the other, to a real `funnel serve` on the shipped sequences.yaml
with a zoom source added: from the moment the client starts the post to the
moment the "registered" email's request reaches a fake SendGrid that answers
at once. Meanwhile a real `funnel run` sends `--run-emails` emails from the
same database to another fake SendGrid (restarted on a new batch of people
when it ends). Figures: median, p95 and max, and how many posts were made
while the run was sending. Goal: p95 under 1 s.

Usage: .venv/bin/python benchmarks/zoom_webhook.py [--database sqlite|postgres] [--posts 200] [--run-emails 5000]
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
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from confirm_latency import KEY, Arrivals, _database, _drop, _percentile  # noqa: E402
from fake_sendgrid import FakeSendGrid  # noqa: E402
from fake_zoom import WEBHOOK_SECRET, sign  # noqa: E402
from web_server import FunnelServer  # noqa: E402

WEBINAR = "81234567890"
#: the shipped webinar's first listed session (2027-01-14 19:00 Denver)
START = "2027-01-15T02:00:00Z"
SOURCE = f"""sources:
  zoom-live:
    format: zoom
    webinar_id: "{WEBINAR}"
    webinar: relationship-911
    tags: [webinar-registered]
    attended_tags: [webinar-attended]
    enroll: webinar-relationship-911
"""


def registration(address: str, n: int) -> bytes:
    return json.dumps(
        {
            "event": "webinar.registration_created",
            "event_ts": int(time.time() * 1000),
            "payload": {
                "account_id": "acct",
                "object": {
                    "id": WEBINAR,
                    "uuid": "u",
                    "topic": "Evening webinar",
                    "type": 9,
                    "start_time": START,
                    "duration": 60,
                    "timezone": "America/Denver",
                    "occurrences": [{"occurrence_id": "1", "start_time": START, "duration": 60}],
                    "registrant": {
                        "id": f"r{n}",
                        "email": address,
                        "first_name": "V",
                        "last_name": "",
                        "join_url": f"https://zoom.example.test/w/{WEBINAR}?tk=t{n}",
                        "create_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                },
            },
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--run-emails", type=int, default=5000)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="zoom-hook-bench-"))
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    text = (REPO / "sequences.yaml").read_text(encoding="utf-8")
    (root / "sequences.yaml").write_text(text.replace("sources:\n", SOURCE, 1))
    (root / "signups").mkdir()
    url, pg_name = _database(args.database, root)
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FUNNEL_", "SENDGRID_", "ZOOM_"))},
        "FUNNEL_SECRET_KEY": "bench-secret",
        "FUNNEL_DATABASE_URL": url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "FUNNEL_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": KEY,
        "ZOOM_WEBHOOK_SECRET": WEBHOOK_SECRET,
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
        while not stop.is_set():
            started = time.time()
            running.set()
            subprocess.run(
                [sys.executable, "-m", "funnel", "run", "--json"],
                cwd=root,
                env={**base_env, "FUNNEL_SENDGRID_HOST": run_fake.url},
                capture_output=True,
                text=True,
            )
            runs.append((started, time.time()))
            if not stop.is_set():
                import_batch()

    import_batch()
    server = FunnelServer(root, (), {**base_env, "FUNNEL_SENDGRID_HOST": serve_fake.url}).start()
    runner = threading.Thread(target=keep_running, daemon=True)
    runner.start()
    running.wait()
    time.sleep(1.0)
    latencies: list[float] = []
    posted_at: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for n in range(args.posts):
                address = f"zoomer{n}@example.test"
                body = registration(address, n)
                start = time.time()
                answer = http.post("/webhooks/zoom", content=body, headers=sign(body, int(start)))
                assert answer.status_code == 200, answer.text
                latencies.append(arrivals.wait("registered", address) - start)
                posted_at.append(start)
    finally:
        stop.set()
        runner.join(timeout=600)
        server.stop()
        serve_fake.stop()
        run_fake.stop()
        _drop(pg_name)
        shutil.rmtree(root, ignore_errors=True)
    during = sum(1 for t in posted_at if any(a <= t <= b for a, b in runs))
    print(
        f"{args.database}: zoom webhook -> confirmation: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {_percentile(latencies, 0.95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms over "
        f"{len(latencies)} posts ({during} made while a run of {args.run_emails} emails was sending)"
    )


if __name__ == "__main__":
    main()
