"""Benchmark: a `funnel run` reading a webinar of 5,000 registrants from the fake Zoom, twice.

The fake Zoom (tests/fake_zoom.py) runs in this process on loopback; the
real `funnel run` runs as a subprocess on the shipped sequences.yaml with a
zoom source added (sessions from Zoom's two occurrences). Registrants signed
up days before `--now`, so their confirmations are skipped as late: the
figure is the cost of reading and storing, not of sending. Figures: each
run's seconds and the requests it made to Zoom (token included). The second
run finds nothing new and must cost a handful of requests.

Usage: .venv/bin/python benchmarks/zoom_read.py [--registrants 5000] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from confirm_latency import _database, _drop  # noqa: E402
from fake_zoom import FakeZoom  # noqa: E402

SOURCE = """sources:
  zoom-live:
    format: zoom
    webinar_id: "81234567890"
    webinar: relationship-911
    tags: [webinar-registered]
    attended_tags: [webinar-attended]
    enroll: webinar-relationship-911
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrants", type=int, default=5000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zoom-bench-"))
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    text = (REPO / "sequences.yaml").read_text(encoding="utf-8")
    (root / "sequences.yaml").write_text(text.replace("sources:\n", SOURCE, 1))
    (root / "signups").mkdir()
    url, pg_name = _database(args.database, root)
    with FakeZoom() as zoom:
        zoom.add_webinar("81234567890", occurrences=[("1", "2027-01-15T02:00:00Z"), ("2", "2027-02-12T02:00:00Z")])
        for n in range(args.registrants):
            zoom.add_registrant(
                "81234567890",
                f"r{n}@example.test",
                first_name="R",
                occurrences=["1" if n % 2 else "2"],
                create_time="2027-01-01T12:00:00Z",
            )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FUNNEL_", "SENDGRID_", "ZOOM_"))},
            **zoom.env(),
            "FUNNEL_SECRET_KEY": "bench-secret",
            "FUNNEL_DATABASE_URL": url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        try:
            for label, now in (("first", "2027-01-05T16:00:00Z"), ("second", "2027-01-05T16:15:00Z")):
                zoom.reset_log()
                started = time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "funnel", "run", "--now", now, "--json"],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                seconds = time.monotonic() - started
                summary = json.loads(done.stdout)
                report = summary["sources"]["zoom-live"]
                print(
                    f"{args.database}: {label} run: {seconds:.2f} s, {len(zoom.requests)} requests to Zoom "
                    f"({zoom.token_calls()} token), {report.get('registrants', 0)} registrants read, "
                    f"{summary['enrolled']} enrolled"
                )
        finally:
            _drop(pg_name)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
