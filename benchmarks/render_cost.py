"""Benchmark: the CPU cost of rendering one email with `Renderer.render`, in µs per email.

`funnel run` renders every email it sends; with a zero-latency SendGrid the
whole per-email budget is about 0.3 ms (issue 9), so rendering must stay a
small part of it. This measures only the renderer, in this process, after
the Renderer compiled every step (each email is then one Jinja render of the
page, one of the text and one of the subject), as in a long run:

- bench welcome: the email of `benchmarks/send_throughput.py` (same
  sequences.yaml and template, the repo's real layout.html and layout.txt),
  a new reader (name and unsubscribe link) each time;
- the shipped letters of the repo's own `sequences.yaml` and templates: the
  webinar's day-before reminder (a webinar start, a subject with a time), the
  same for a discreet reader (text only), and the consultation invitation.

Usage: .venv/bin/python benchmarks/render_cost.py [--n 2000] [--profile]
(--profile prints a cProfile of the bench welcome email, sorted by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from send_throughput import SEQUENCES, TEMPLATE  # noqa: E402

from funnel.config import load_config  # noqa: E402
from funnel.mail.render import Rendered, Renderer, TemplateContact, TemplateWebinar  # noqa: E402


def make_bench_project(folder: Path) -> None:
    """The project `send_throughput.py` sends from (without the signups: nothing is imported here)."""
    (folder / "email_templates").mkdir(parents=True)
    shutil.copy(REPO / "email_templates" / "layout.html", folder / "email_templates" / "layout.html")
    shutil.copy(REPO / "email_templates" / "layout.txt", folder / "email_templates" / "layout.txt")
    (folder / "email_templates" / "welcome.md").write_text(TEMPLATE)
    (folder / "sequences.yaml").write_text(SEQUENCES.format(concurrency=8))


def make_shipped_project(folder: Path) -> None:
    """A copy of the repo's own sequences.yaml and email_templates/."""
    shutil.copytree(REPO / "email_templates", folder / "email_templates")
    shutil.copy(REPO / "sequences.yaml", folder / "sequences.yaml")


def cases(tmp: Path) -> dict[str, Callable[[int], Rendered]]:
    """One function per case: render the case's email for reader number i."""
    bench = tmp / "bench"
    make_bench_project(bench)
    config = load_config(bench / "sequences.yaml")
    renderer = Renderer(config)
    welcome = config.sequences["welcome"]
    hello = welcome.steps[0]

    shipped = tmp / "shipped"
    make_shipped_project(shipped)
    real = load_config(shipped / "sequences.yaml")
    real_renderer = Renderer(real)
    webinar_seq = real.sequences["webinar-relationship-911"]
    day_before = webinar_seq.step("day-before")
    invite = webinar_seq.step("consultation-invite")
    assert day_before is not None and invite is not None
    info = real.webinars["relationship-911"]
    start = datetime(2027, 1, 15, 2, 0, tzinfo=UTC).astimezone(ZoneInfo("America/Denver"))
    webinar = TemplateWebinar("relationship-911", info.title, info.join_url, info.replay_url, start)

    def reader(i: int) -> TemplateContact:
        return TemplateContact(f"person{i:06d}@example.test", f"P{i}", None, {}, False)

    def unsub(i: int) -> str:
        return f"https://mail.bench.test/u/{i:040d}"

    return {
        "bench welcome": lambda i: renderer.render("welcome", welcome, hello, reader(i), None, unsub(i)),
        "webinar day-before": lambda i: real_renderer.render(
            "webinar-relationship-911", webinar_seq, day_before, reader(i), webinar, unsub(i)
        ),
        "webinar day-before, discreet": lambda i: real_renderer.render(
            "webinar-relationship-911", webinar_seq, day_before, reader(i), webinar, unsub(i), discreet=True
        ),
        "consultation invite": lambda i: real_renderer.render(
            "webinar-relationship-911", webinar_seq, invite, reader(i), webinar, unsub(i)
        ),
    }


def time_case(one: Callable[[int], Rendered], n: int, repeats: int = 5) -> float:
    """CPU µs per email, the best of `repeats` runs of n renders (caches warm).

    CPU time of this process, and the best run, so that other work on the
    machine disturbs the figure as little as possible.
    """
    one(0)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for i in range(n):
            one(i)
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        funcs = cases(Path(tmp))
        for name, one in funcs.items():
            print(f"{name:32s} {time_case(one, args.n):8.1f} µs/email")
        if args.profile:
            one = funcs["bench welcome"]
            profile = cProfile.Profile()
            profile.enable()
            for i in range(args.n):
                one(i)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
