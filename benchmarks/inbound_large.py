"""Benchmark: a 29 MB reply through Inbound Parse, and what every other request feels meanwhile.

Starts a real `funnel serve` (this interpreter's funnel) on 127.0.0.1 in a
fresh project, posts one reply of about 29 MB (a photo attached; "parsed"
mode, or "raw" for Send Raw) while a prober asks `GET /healthz` every 10 ms,
and reports:

- the server's peak resident memory (VmHWM from /proc, the kernel's own
  high-water mark) before and after the post;
- the post's own time;
- /healthz during the post: the slowest answer (the event loop's longest
  stall, plus one request's own time) and the median, next to the median
  when idle.

Issue 16 (3.13) measured about 460 MB and a 1.2 s stall before the post was
read from a spooled file in the thread pool. To compare with another
checkout, run this file with that checkout's interpreter (its funnel is the
one imported), e.g. `/work/main/.venv/bin/python benchmarks/inbound_large.py`.

Usage: .venv/bin/python benchmarks/inbound_large.py [--mode parsed|raw|both] [--mb 28] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from send_throughput import make_project  # noqa: E402
from web_server import FunnelServer  # noqa: E402

KEY = "bench-inbound-key"


def write_post(path: Path, raw: bool, megabytes: int) -> str:
    """A SendGrid post with a photo of about `megabytes` MB; returns its content type."""
    boundary = "xYzZY-bench"
    photo = os.urandom(megabytes * 1024 * 1024 * (3 if raw else 4) // 4)
    with path.open("wb") as out:

        def field(name: str, value: bytes, filename: str = "") -> None:
            extra = f'; filename="{filename}"' if filename else ""
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode())
            out.write(value + b"\r\n")

        field("envelope", b'{"to":["reply@reply.example.test"],"from":"someone@example.test"}')
        field("SPF", b"pass")
        field("dkim", b"{@example.test : pass}")
        if raw:
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'.encode())
            out.write(
                b"Message-ID: <bench@example.test>\r\nFrom: Someone <someone@example.test>\r\nSubject: photo\r\n"
                b"Content-Type: multipart/mixed; boundary=m1\r\n\r\n"
                b"--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHere it is.\r\n"
                b"--m1\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="p.jpg"\r\n\r\n'
            )
            out.write(base64.encodebytes(photo))
            out.write(b"--m1--\r\n\r\n")
        else:
            field(
                "headers", b"Message-ID: <bench@example.test>\nFrom: Someone <someone@example.test>\nSubject: photo\n"
            )
            field("from", b"Someone <someone@example.test>")
            field("subject", b"photo")
            field("text", b"Here it is.")
            field("attachments", b"1")
            field("attachment1", photo, filename="p.jpg")
        out.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(server: FunnelServer) -> int:
    process = server._process  # noqa: SLF001  # the test helper keeps its Popen private
    assert process is not None
    return process.pid


def probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get(f"{url}/healthz")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)


def measure(folder: Path, mode: str, megabytes: int, round_no: int) -> dict[str, float]:
    content_type = write_post(folder / f"{mode}.post", mode == "raw", megabytes)
    size = (folder / f"{mode}.post").stat().st_size
    server = FunnelServer(
        folder, ("--now", "2026-12-08T16:00:00Z"), env={"FUNNEL_INBOUND_KEY": KEY, "FUNNEL_TRANSPORT": "outbox"}
    ).start()
    try:
        pid = server_pid(server)
        idle: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(server.url, stop, idle))
        prober.start()
        time.sleep(1.0)
        stop.set()
        prober.join()
        before = peak_rss_mb(pid)
        busy: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(server.url, stop, busy))
        prober.start()
        time.sleep(0.2)
        started = time.perf_counter()
        with (folder / f"{mode}.post").open("rb") as body, httpx.Client(timeout=120) as client:
            answer = client.post(
                f"{server.url}/webhooks/inbound?key={KEY}", content=body, headers={"content-type": content_type}
            )
        took = time.perf_counter() - started
        time.sleep(0.2)
        stop.set()
        prober.join()
        after = peak_rss_mb(pid)
        if answer.status_code != 200:
            raise SystemExit(f"the post was answered {answer.status_code}: {answer.text[:200]}")
    finally:
        server.stop()
    return {
        "round": round_no,
        "post_mb": size / 2**20,
        "rss_before_mb": before,
        "rss_peak_mb": after,
        "post_s": took,
        "healthz_max_ms": max(busy) * 1000,
        "healthz_median_ms": statistics.median(busy) * 1000,
        "healthz_idle_median_ms": statistics.median(idle) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("parsed", "raw", "both"), default="both")
    parser.add_argument("--mb", type=int, default=28, help="size of the attached photo (the post is ~1 MB more)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import funnel

    print(f"funnel from {Path(funnel.__file__).resolve().parent}")
    modes = ("parsed", "raw") if args.mode == "both" else (args.mode,)
    for mode in modes:
        rows = []
        for round_no in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory(prefix="funnel-bench-inbound-") as tmp:
                folder = Path(tmp)
                make_project(folder, 0, 1)
                rows.append(measure(folder, mode, args.mb, round_no))
        print(f"\n{mode}: a {rows[0]['post_mb']:.1f} MB post, {args.repeat} round(s), each on a fresh server")
        print("  round  rss before  rss peak  post s  healthz max ms  healthz median ms  idle median ms")
        for row in rows:
            print(
                f"  {row['round']:>5}  {row['rss_before_mb']:>10.0f}  {row['rss_peak_mb']:>8.0f}  {row['post_s']:>6.2f}"
                f"  {row['healthz_max_ms']:>14.0f}  {row['healthz_median_ms']:>17.1f}"
                f"  {row['healthz_idle_median_ms']:>14.1f}"
            )


if __name__ == "__main__":
    main()
