"""A run's first stage: read the file sources that changed, and store their signups.

Each source file is fingerprinted (size, hash, lines): an unchanged file
costs one hash. A changed one is read row by row (`funnel.signups.sources`), its
rows stored through the same rules as every other way people come in
(`funnel.signups.store.apply_rows`), and its problems reported as `file:line`
lines, rows with the same message grouped (`problem_lines`). One bad file
is reported and the run goes on with the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from funnel.errors import SourceError
from funnel.run.state import RunContext, RunSummary
from funnel.signups.sources import Fingerprint, read_source_file
from funnel.signups.store import IngestResult, apply_rows
from funnel.store.bulk import insert_ignore
from funnel.store.models import SourceFile
from funnel.timeutil import zone

#: line numbers shown for rows that share one message; the rest are counted
_LINES_SHOWN = 5


def problem_lines(path: str, problems: Iterable[Any]) -> tuple[list[str], list[str], int]:
    """A file's row warnings and refusals as `path:line: message` lines, and how many rows were refused.

    Rows with the very same message (50,000 registrations for one webinar
    whose start falls in the hour the clocks go back, a zone misspelt the
    same way) make one line naming the first row and counting the others,
    not 50,000 lines in the cron mail.
    """
    grouped: dict[tuple[str, bool], list[int]] = {}
    for problem in problems:
        grouped.setdefault((problem.message, problem.warning), []).append(problem.line)
    warnings: list[str] = []
    refusals: list[str] = []
    for (message, warning), lines in grouped.items():
        text = f"{path}:{lines[0]}: {message}" + ("" if warning else " (row skipped)")
        if len(lines) > 1:
            shown = ", ".join(str(n) for n in lines[1 : 1 + _LINES_SHOWN])
            more = len(lines) - 1 - _LINES_SHOWN
            text += f" (the same on {len(lines) - 1:,} more row(s): line {shown}"
            text += f" and {more:,} more)" if more > 0 else ")"
        (warnings if warning else refusals).append(text)
    return warnings, refusals, sum(len(lines) for (_, warning), lines in grouped.items() if not warning)


def read_sources(ctx: RunContext) -> None:
    """Read every file source whose file changed since it was last read, then Zoom; commit after each."""
    for name, source in ctx.config.sources.items():
        if source.format == "form" or not source.path:
            continue
        report: dict[str, Any] = {"path": source.path}
        ctx.summary.sources[name] = report
        _read_one(ctx, name, report)
    read_zoom(ctx)


def read_zoom(ctx: RunContext) -> None:
    """`format: zoom` sources: Zoom's registrants and participants (`funnel.signups.zoom`); commit after each."""
    from funnel.signups.zoom import read_zoom_sources

    summary = ctx.summary
    for name, read in read_zoom_sources(ctx.session, ctx.config, ctx.now).items():
        summary.sources[name] = read.report
        summary.warnings.extend(read.warnings)
        summary.problems.extend(read.problems)
        summary.imported += read.result.imported
        summary.enrolled += read.result.enrolled
        summary.rejected += read.rejected
        summary.refused_files += 1 if read.report.get("status") == "error" else 0
        ctx.checkpoint()


def _read_one(ctx: RunContext, name: str, report: dict[str, Any]) -> None:
    config, session, now = ctx.config, ctx.session, ctx.now
    source = config.sources[name]
    assert source.path is not None
    path = config.resolve(source.path)
    stored = session.get(SourceFile, name)
    previous = None
    if stored is not None and stored.path == str(path):
        previous = Fingerprint(stored.size, stored.sha256, stored.lines)
    if not path.exists():
        report["status"] = "missing"
        return
    try:
        read = read_source_file(
            name,
            source,
            path,
            zone(config.practice.timezone),
            previous,
            stream=True,
            webinar_tz=config.start_zone(source),
            now=now,
        )
    except SourceError as exc:
        report["status"] = "error"
        report["problem"] = str(exc)
        ctx.summary.problems.append(str(exc))
        ctx.summary.refused_files += 1
        return
    if read.unchanged:
        report["status"] = "unchanged"
        return
    result = apply_rows(session, config, name, source, read.signups(), now)
    _note_source(ctx.summary, source.path, report, read.problems, read.filtered, result)
    assert read.fingerprint is not None
    fp = read.fingerprint
    if stored is None:
        insert_ignore(
            session,
            SourceFile.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
            [{"source": name, "path": str(path), "size": 0, "sha256": "", "lines": 0, "read_at": now}],
            ("source",),
        )
        stored = session.get(SourceFile, name)
        assert stored is not None
    stored.path, stored.size, stored.sha256, stored.lines, stored.read_at = (
        str(path),
        fp.size,
        fp.sha256,
        fp.lines,
        now,
    )
    ctx.checkpoint()


def _note_source(
    summary: RunSummary,
    path: str,
    report: dict[str, Any],
    problems: Iterable[Any],
    filtered: int,
    result: IngestResult,
) -> None:
    warnings, refusals, rejected = problem_lines(path, problems)
    summary.warnings.extend(warnings)
    summary.problems.extend(refusals)
    report.update(
        status="read",
        imported=result.imported,
        created=result.created,
        rejected=rejected,
        enrolled=result.enrolled,
        rescheduled=result.rescheduled,
        not_contacts=result.unknown,
        erased=result.erased,
        filtered=filtered,
    )
    summary.imported += result.imported
    summary.rejected += rejected
    summary.enrolled += result.enrolled
