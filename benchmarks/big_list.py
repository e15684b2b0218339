"""Benchmark: `funnel run` over a 100,000-row registration CSV.

Prints the time of: the first run (imports and enrolls everyone, sends the
registration confirmations into the outbox), a run when nothing new is due
and the file is unchanged, and a run after ten rows were appended.

Usage: .venv/bin/python benchmarks/big_list.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
ZONES = ["America/Denver", "America/New_York", "America/Los_Angeles", "America/Chicago", ""]


def rows(start: int, count: int) -> str:
    return "".join(
        f"person{i:07d}@example.test,P{i},,2027-01-14 19:00,{ZONES[i % len(ZONES)]},\n"
        for i in range(start, start + count)
    )


def timed(folder: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "funnel", *args],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "FUNNEL_SECRET_KEY": "bench"},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(REPO / "sequences.yaml", folder / "sequences.yaml")
        shutil.copytree(REPO / "email_templates", folder / "email_templates")
        (folder / "signups").mkdir()
        csv = folder / "signups" / "webinar-registrations.csv"
        csv.write_text(HEADER + rows(0, args.rows))
        first = timed(folder, "run", "--now", "2027-01-10T16:00:00Z")
        sent = len(list((folder / "outbox").glob("*.eml")))
        idle = [timed(folder, "run", "--now", f"2027-01-10T{h}:00:00Z") for h in (17, 18, 19)]
        with csv.open("a") as handle:
            handle.write(rows(args.rows, 10))
        appended = timed(folder, "run", "--now", "2027-01-10T20:00:00Z")
        start = timed(folder, "--help")
    print(f"rows: {args.rows:,} ({os.cpu_count()} cores)")
    print(f"first run (import, enroll, {sent:,} confirmations to the outbox): {first:7.2f} s")
    print(f"run with nothing new due, file unchanged (best of 3):        {min(idle):7.2f} s")
    print(f"run after 10 rows were appended (10 new confirmations):     {appended:7.2f} s")
    print(f"for scale, `funnel --help` (Python start and imports):      {start:7.2f} s")


if __name__ == "__main__":
    main()
