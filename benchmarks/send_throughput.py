"""Benchmark: `funnel run` sending N emails to a fake SendGrid vs a bare loop of the official client.

Both sides send to the same fake SendGrid, running in its own process on
127.0.0.1 with a fixed per-request latency, with the same concurrency. The
bare loop sends N pre-built request bodies with one official client per
thread, doing nothing else; `funnel run` claims, renders, sends and records
each email (process start and imports included, from compiled bytecode as
an installed funnel starts: see `installed`).

Two latencies are measured in one run, side by side:
- 0 ms: the fake answers at once, so only CPU counts: this is the figure that
  shows funnel's own overhead per email (target: at most 1.3x the bare client);
- 50 ms: closer to the real service (which answers in 100-300 ms), where
  waiting dominates (target: at most 1.1x).

The official client builds a new urllib opener for every call, which costs
about as much CPU as the rest of the request; funnel's transport keeps one
per sending thread (see `SendGridTransport._post_mail`). So a second bare
loop sends through that same kept opener: the ratio against it, and the CPU
funnel spends per email beyond it, are funnel's own overhead, with the
cheaper request taken out. Both are printed beside the target figure.

This machine's speed drifts by tens of percent within minutes, so one round
says little: each latency is measured in `--repeat` rounds (the three
sides one after the other, so that each ratio compares runs made under the
same conditions), and a summary line gives the median ratio and its range.

Usage: .venv/bin/python benchmarks/send_throughput.py [--n 5000] [--latency 0 --latency 0.05] [--concurrency 8]
[--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = "SG.bench-key"

SEQUENCES = """\
practice:
  name: Bench Counseling
  from_email: care@bench.test
  from_name: Dr. Bench
  postal_address: "1 Bench St, Boulder, CO 80302"
  timezone: America/Denver
  base_url: https://mail.bench.test
delivery:
  transport: sendgrid
  concurrency: {concurrency}
  max_late: 2d
sources:
  signups:
    format: csv
    path: signups.csv
    columns: {{email: Email, first_name: First Name}}
    enroll: welcome
sequences:
  welcome:
    steps:
      - id: hello
        wait: 1h
        transactional: true
        subject: "Welcome, {{{{ contact.first_name or 'friend' }}}}"
        template: welcome.md
"""

TEMPLATE = """Hi {{ contact.first_name or 'there' }},

Thank you for signing up. This letter is about as long as a real one: a few
paragraphs, [a link]({{ practice.base_url }}), and a signature.

- one point
- another point

Warmly,
{{ practice.from_name }}
"""


_COMPILED: list[bool] = []


def installed(env: dict[str, str]) -> dict[str, str]:
    """`env` for a timed `funnel` process, after funnel's modules are compiled to bytecode once.

    `pip install` compiles a package's modules, and its libraries here were
    installed that way. This checkout is an editable install, and where
    PYTHONDONTWRITEBYTECODE is set (this machine sets it) every funnel process
    would compile its ~25 modules from source again: 50-80 ms a start that no
    installed funnel pays, and that the bare loop (timed after its imports)
    does not pay either. So funnel's modules are compiled once, into
    `funnel/__pycache__` (ignored by git), which Python reads even where it
    may not write.
    """
    if not _COMPILED:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "funnel")], check=True)
        _COMPILED.append(True)
    return env


class FakeServer:
    """The test suite's fake SendGrid, in a child process."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "fake_sendgrid.py"), str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def accepted(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def make_project(folder: Path, n: int, concurrency: int) -> None:
    (folder / "email_templates").mkdir(parents=True)
    shutil.copy(REPO / "email_templates" / "layout.html", folder / "email_templates" / "layout.html")
    shutil.copy(REPO / "email_templates" / "layout.txt", folder / "email_templates" / "layout.txt")
    (folder / "email_templates" / "welcome.md").write_text(TEMPLATE)
    (folder / "sequences.yaml").write_text(SEQUENCES.format(concurrency=concurrency))
    rows = "".join(f"person{i:06d}@example.test,P{i}\n" for i in range(n))
    (folder / "signups.csv").write_text("Email,First Name\n" + rows)


@dataclass(frozen=True)
class Timing:
    """One side's figures: wall-clock seconds, CPU seconds (user + system) and emails accepted."""

    wall: float
    cpu: float
    accepted: int


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_funnel(n: int, latency: float, concurrency: int) -> Timing:
    fake = FakeServer(latency)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_project(folder, n, concurrency)
        env = installed(
            {**os.environ, "SENDGRID_API_KEY": KEY, "FUNNEL_SENDGRID_HOST": fake.url, "NO_PROXY": "127.0.0.1"}
        )
        funnel = [sys.executable, "-m", "funnel"]
        # enroll everyone first (nothing is due yet): the timed run only sends
        subprocess.run([*funnel, "run", "--now", "2027-01-10T16:00:00Z"], cwd=folder, env=env, check=True)
        cpu_before = _children_cpu()
        started = time.perf_counter()
        subprocess.run([*funnel, "run", "--now", "2027-01-10T17:00:00Z"], cwd=folder, env=env, check=True)
        elapsed = time.perf_counter() - started
        cpu = _children_cpu() - cpu_before
    count = fake.accepted()
    fake.close()
    return Timing(elapsed, cpu, count)


def bodies(n: int) -> list[dict]:
    """N pre-built request bodies of a real-sized letter."""
    from funnel.sendgrid.send import sendgrid_payload
    from funnel.transports.base import Address, OutgoingEmail

    html = "<html><body>" + "<p>A paragraph of a real-sized letter.</p>" * 20 + "</body></html>"
    return [
        sendgrid_payload(
            OutgoingEmail(
                send_id=f"{i:032x}",
                sender=Address("care@bench.test", "Dr. Bench"),
                to=Address(f"person{i:06d}@example.test"),
                subject=f"Welcome, P{i}",
                text="Hi,\n\nThank you for signing up.\n" * 10,
                html=html,
                headers=(("List-Unsubscribe", "<https://mail.bench.test/u/x>"),),
                custom_args=(("funnel_send_id", f"{i:032x}"),),
            ),
            sandbox=False,
        )
        for i in range(n)
    ]


def time_bare_client(n: int, latency: float, concurrency: int, *, keep_opener: bool = False) -> Timing:
    """The official client in a bare thread pool, doing nothing else.

    `keep_opener`: send through the same per-thread kept opener funnel's
    transport uses (`SendGridTransport._post_mail`), so that the ratio shows
    funnel's own overhead; without it, `client.mail.send.post(...)` as the
    library's README shows, which builds a urllib opener per call.
    """
    import sendgrid

    from funnel.sendgrid.send import SendGridTransport

    prepared = bodies(n)
    fake = FakeServer(latency)
    local = threading.local()
    transport = SendGridTransport(KEY, host=fake.url, timeout=30, concurrency=concurrency)

    def send(body: dict) -> None:
        if keep_opener:
            transport._post_mail(body)
            return
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = sendgrid.SendGridAPIClient(api_key=KEY, host=fake.url)
            client.client.timeout = 30
        client.client.mail.send.post(request_body=body)

    cpu_before = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, prepared))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    count = fake.accepted()
    fake.close()
    return Timing(elapsed, cpu, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument(
        "--latency", type=float, action="append", help="fake SendGrid's answer time in seconds (repeatable)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds per latency (bare client, opener kept, funnel run, one after the other); the summary "
        "line gives the median ratio and the range",
    )
    args = parser.parse_args()
    latencies = args.latency or [0.0, 0.05]
    targets = {0.0: 1.3, 0.05: 1.1}
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    print(f"N = {args.n}, concurrency {args.concurrency}, {os.cpu_count()} cores (wall-clock seconds, CPU in brackets)")
    print(
        f"{'latency':>8}  {'bare client':>16}  {'funnel run':>16}  {'ratio':>6}  {'target':>7}"
        f"  | {'bare, opener kept':>17}  {'ratio':>6}  funnel CPU/email"
    )
    for latency in latencies:
        target = targets.get(latency)
        ratios: list[float] = []
        for _ in range(args.repeat):
            bare = time_bare_client(args.n, latency, args.concurrency)
            kept = time_bare_client(args.n, latency, args.concurrency, keep_opener=True)
            ours = time_funnel(args.n, latency, args.concurrency)
            counts = (bare.accepted, kept.accepted, ours.accepted)
            if any(count != args.n for count in counts):
                print(f"  (accepted: bare {counts[0]}, opener kept {counts[1]}, funnel {counts[2]} of {args.n})")
            ratios.append(ours.wall / bare.wall)
            print(
                f"{latency * 1000:6.0f}ms  {bare.wall:6.2f} s ({bare.cpu:5.1f})  {ours.wall:6.2f} s ({ours.cpu:5.1f})"
                f"  {ours.wall / bare.wall:5.2f}x  "
                + (f"<= {target:.2f}x" if target else "      -")
                + f"  | {kept.wall:6.2f} s ({kept.cpu:5.1f})  {ours.wall / kept.wall:5.2f}x"
                + f"  {(ours.cpu - kept.cpu) / args.n * 1000:.2f} ms more",
                flush=True,
            )
        if len(ratios) > 1:
            print(
                f"{latency * 1000:6.0f}ms  median of {len(ratios)} rounds: {statistics.median(ratios):.2f}x "
                f"(from {min(ratios):.2f}x to {max(ratios):.2f}x)" + (f", target <= {target:.2f}x" if target else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
