"""Benchmark: one `funnel run` worker vs several at once on one PostgreSQL database.

A fake SendGrid in its own process answers every request after a fixed
latency (100 ms by default, about what the real one takes). For each
worker count a fresh PostgreSQL database gets N people enrolled (nothing due
yet), then that many `funnel run` processes start together an hour later and
send the N due emails between them. Two times are shown: wall, from the
start of the first process to the end of the last (Python start-up
included, which a loaded machine stretches), and sending, the longest
worker's own run time as `funnel run --json` reports it.

Usage: .venv/bin/python benchmarks/workers.py [--n 2000] [--latency 0.1] [--concurrency 8] [--workers 2]
Prints each throughput and the ratio (target: two workers >= 1.8x one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from send_throughput import KEY, FakeServer, installed, make_project

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def fresh_database(admin_url: str) -> str:
    import psycopg

    name = f"funnel_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Measure:
    """One measurement: `workers` processes sending n due emails together."""

    workers: int
    #: from the start of the first process to the end of the last (Python start-up included)
    wall: float
    #: the longest worker's own run time (`funnel run --json` "seconds"): the sending phase
    sending: float
    accepted: int
    failed: int
    #: CPU seconds the workers used (user + system): a busy machine, or workers waiting on each other
    cpu: float
    #: emails each worker sent
    shares: list[int]


def time_workers(workers: int, n: int, latency: float, concurrency: int, admin_url: str) -> Measure:
    fake = FakeServer(latency)
    name = fresh_database(admin_url)
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            make_project(folder, n, concurrency)
            env = installed(
                {
                    **os.environ,
                    "SENDGRID_API_KEY": KEY,
                    "FUNNEL_SENDGRID_HOST": fake.url,
                    "FUNNEL_DATABASE_URL": url,
                    "NO_PROXY": "127.0.0.1,localhost",
                }
            )
            funnel = [sys.executable, "-m", "funnel", "run"]
            # enroll everyone first (nothing is due yet): the timed runs only send
            subprocess.run([*funnel, "--now", "2027-01-10T16:00:00Z"], cwd=folder, env=env, check=True)
            cpu_before = _children_cpu()
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [*funnel, "--now", "2027-01-10T17:00:00Z", "--json"], cwd=folder, env=env, stdout=subprocess.PIPE
                )
                for _ in range(workers)
            ]
            outputs = [p.communicate(timeout=1800)[0] for p in procs]
            wall = time.perf_counter() - started
            cpu = _children_cpu() - cpu_before
        summaries = [json.loads(output) for output in outputs]
        return Measure(
            workers=workers,
            wall=wall,
            sending=max(s["seconds"] for s in summaries),
            accepted=fake.accepted(),
            failed=sum(1 for p in procs if p.returncode != 0),
            cpu=cpu,
            shares=[s["sent"] for s in summaries],
        )
    finally:
        fake.close()
        drop_database(admin_url, name)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1, help="fake SendGrid's answer time, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="workers of the second measurement")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a PostgreSQL database to create the test ones from")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    one = time_workers(1, args.n, args.latency, args.concurrency, args.admin_url)
    many = time_workers(args.workers, args.n, args.latency, args.concurrency, args.admin_url)
    print(
        f"N = {args.n}, latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print("workers  wall s  emails/s   sending s  emails/s   CPU s  accepted  failed  sent by each")
    for m in (one, many):
        print(
            f"{m.workers:7d}  {m.wall:6.2f}  {args.n / m.wall:8.1f}   {m.sending:9.2f}  {args.n / m.sending:8.1f}"
            f"   {m.cpu:5.1f}  {m.accepted:8d}  {m.failed:6d}  {m.shares}"
        )
    target = " (target >= 1.80x)" if args.workers == 2 else ""
    wall, sending = one.wall / many.wall, one.sending / many.sending
    print(f"ratio {args.workers} / 1: {wall:.2f}x wall, {sending:.2f}x sending{target}")


if __name__ == "__main__":
    main()
