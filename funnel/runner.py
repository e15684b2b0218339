"""`funnel run`: read sources, enroll, send what is due, record every outcome.

The order of one run, and why:

1. What a run that died left behind is settled (`funnel.ledger`): emails it
   had handed to the transport are marked `unknown` (SendGrid has no
   idempotency key: reported, never sent again blindly); the ones it had only
   claimed are given back and go out in this run. On PostgreSQL, where
   several runs share the work, only runs that are really dead are settled
   (`funnel.workers`).
2. File sources are read (unchanged files cost one hash); on PostgreSQL one
   worker at a time, the others wait and then find them unchanged.
3. If sequences.yaml changed since the last run, every active enrollment is
   looked at once (new or retimed steps); otherwise only those whose stored
   `next_due_at` has come, through an index: work grows with what is due.
4. Due enrollments are taken page by page (on PostgreSQL with SKIP LOCKED,
   so that workers split them). For each person the pure
   schedule decides; skips and exits are recorded, sends are *claimed*
   (a `claimed` row, unique per enrollment and step) and committed.
5. Claimed emails are rendered and *handed over* in small batches (at most
   `delivery.concurrency` a batch, and never more than two batches under
   way): one commit marks the batch `sending`, reads suppression again and
   records the outcomes that came back meanwhile; then the dispatcher's
   threads send it. A SIGKILL thus leaves at most two batches unknown.
6. Finished enrollments move on to their `next` sequence.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.collector import fewer_collections
from funnel.config import Config, Sequence, Step
from funnel.db import put_setting
from funnel.deferred import DeferredWrites
from funnel.deliver import Dispatcher, Job, Outcome
from funnel.errors import ConfigError, SourceError, TemplateError
from funnel.ingest import IngestResult, apply_rows, insert_ignore
from funnel.invitation import invitation
from funnel.ledger import UNKNOWN_REASON, Ledger, StepRow, SuppressionCheck
from funnel.models import Contact, Enrollment, EnrollmentTag, Run, Setting, SourceFile, StepRun, Tag, new_token_key
from funnel.moves import apply_session_changes, remember_sessions, removed_sessions
from funnel.notices import due_notices
from funnel.preferences import resume_finished_pauses
from funnel.render import MissingData, Rendered, Renderer, TemplateContact, TemplateWebinar, hours_between
from funnel.sessions import session_scoped_tags, tags_in_session
from funnel.sources import Fingerprint, clean_line, read_source_file
from funnel.timeutil import zone
from funnel.transports.base import Address, Attachment, OutgoingEmail, SendResult, Transport
from funnel.unsubscribe import Tokens, secret_key, unsubscribe_headers, unsubscribe_url
from funnel.workers import SHARED_PAGE, RunKeeper, ingest_turn, lock_contacts, lock_due_page, shares_work

PAGE = 400
__all__ = ["PAGE", "UNKNOWN_REASON", "RunSummary", "Runner", "compose_email", "contact_zone", "render_for"]


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


@dataclass
class RunSummary:
    """What one run did; `--json` prints it."""

    imported: int = 0
    rejected: int = 0
    enrolled: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    unknown: int = 0
    exited: int = 0
    finished: int = 0
    #: enrollments re-timed to a moved webinar session, and ended by a cancelled one (`funnel.moves`)
    moved: int = 0
    cancelled: int = 0
    dry_run: bool = False
    now: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    stopped: str | None = None
    #: files refused as a whole (no email column, unreadable, bad encoding): the run exits 1 once done
    refused_files: int = 0
    #: the transport's status when it stopped the run (401/403: the key was refused), for the alert
    fatal_status: int | None = None
    #: each email that failed: address, sequence, step, reason (`--verbose` and `--json` show them)
    failures: list[dict[str, str]] = field(default_factory=list)

    def fail(self, email: str | None, sequence: str, step: str, reason: str) -> None:
        """Count one failed email and say whose it was and why."""
        self.failed += 1
        self.failures.append({"email": email or "", "sequence": sequence, "step": step, "reason": reason})

    def count_step(self, sequence: str, step: str, outcome: str) -> None:
        key = f"{sequence}/{step}"
        self.steps.setdefault(key, {})
        self.steps[key][outcome] = self.steps[key].get(outcome, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.stopped is None and self.refused_files == 0


class _NullTransport:
    """Stands in for the real transport in `--dry-run`: sends nothing."""

    name = "dry-run"
    concurrency = 1

    def send(self, email: OutgoingEmail) -> SendResult:
        return SendResult(message_id=None)

    def close(self) -> None:
        return None


@dataclass
class _Claim:
    """A step the schedule says to send now, before this run has taken it."""

    contact: Contact
    enrollment: Enrollment
    sequence: Sequence
    send: schedule.Send
    row: StepRow | None
    rows: dict[str, StepRow] = field(default_factory=dict)
    #: the ledger's step id when it is not the step's own: a letter answering a change (`funnel.notices`)
    key: str | None = None


#: a claimed step and its row, waiting to be rendered and handed over
_Ready = tuple[_Claim, StepRow]


@dataclass
class _Pending:
    """Bookkeeping for an enrollment whose sends are in flight."""

    enrollment: Enrollment
    sequence_id: str
    outstanding: int
    finished_if_sent: bool
    retry_later: bool = False
    #: the sequence's goal was reached: finishing ends it as exited, without `next`
    goal: str | None = None
    #: her time zone (the `next` sequence starts at the last step's due time on her wall clock)
    tz: ZoneInfo | None = None


class Runner:
    """One run over one database; build, then call `run()`."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        transport: Transport,
        now: datetime,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        sources: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.transport: Transport = _NullTransport() if dry_run else transport
        self.now = now
        self.dry_run = dry_run
        self.progress = progress
        self.read_sources = sources
        #: set from outside (SIGTERM) to stop at the next safe point: nothing new is
        #: handed to the transport, requests under way finish and are recorded
        self.stop = stop or threading.Event()
        self.summary = RunSummary(dry_run=dry_run, now=now.isoformat())
        self.session = Session(engine, expire_on_commit=False)
        try:
            self.renderer = Renderer(config)
        except TemplateError as exc:  # a broken template is bad configuration: nothing is done
            raise ConfigError(str(exc)) from exc
        removed = removed_sessions(self.session, config, now)
        if removed:  # a session taken out while people are registered for it: say what happened first
            self.session.close()
            raise ConfigError(removed[0], removed)
        key = secret_key(self.session)
        self.tokens = Tokens(key)
        self.renderer.sign_links_with(key)  # discreet readers' neutral links (`funnel.jump`)
        self.run_row: Run | None = None
        #: holds "this run is alive" for other workers' recovery (PostgreSQL)
        self.keeper = RunKeeper(engine)
        self.ledger: Ledger  # set by _start, once the run has its id
        self.introduced: dict[str, dict[str, datetime]] = {}
        #: by webinar, the tags that belong to one session (attendance), and the page's own of them
        self._scoped = session_scoped_tags(config)
        self._session_tags: dict[int, frozenset[str]] = {}
        self._pending: dict[int, _Pending] = {}
        #: rows of claimed steps in flight, held here (the session's identity map is weak)
        self._in_flight: dict[int, StepRow] = {}
        self._unsaved = 0
        self._saved_at = time.monotonic()
        #: enrollment and contact columns set this run, written at each checkpoint
        self.writes = DeferredWrites()

    # ----------------------------------------------------------------- helpers

    def checkpoint(self) -> None:
        """Make what was done durable (a dry run only flushes, and rolls back at the end)."""
        self.writes.write(self.session)
        if self.dry_run:
            self.session.flush()
        else:
            self.session.commit()

    # ----------------------------------------------------------------- the run

    def run(self) -> RunSummary:
        with fewer_collections():
            return self._run()

    def _run(self) -> RunSummary:
        started = time.monotonic()
        try:
            self._start()
            if not self.dry_run:
                self._recover()
            with ingest_turn(self.engine) as our_turn:  # PostgreSQL workers read the sources one at a time
                if not our_turn:
                    self.summary.warnings.append(
                        "another worker has been reading the sources for a long time: "
                        "this run sent what was already due without reading them"
                    )
                # before the import: people enrolled now are scheduled by this very config
                # (ingest sets their first look), so they need no waking
                self._wake_all_if_config_changed()
                if self.read_sources and our_turn:
                    self._ingest_sources()
                    self._read_zoom()
            if not self.dry_run:
                # "pause for a month" on the unsubscribe page: a month later she gets mail again
                resume_finished_pauses(self.session, self.now)
                self.checkpoint()
            self._send_notices()
            self._send_due()
            self._finish_run()
        finally:
            if self.dry_run:
                self.session.rollback()
            self.session.close()
            self.transport.close()
            self.keeper.release()  # after the last commit: nothing of this run is in hand any more
        self.summary.seconds = round(time.monotonic() - started, 3)
        return self.summary

    def _start(self) -> None:
        wall = datetime.now(UTC)
        self.run_row = Run(
            started_at=wall,
            clock=self.now,
            host=socket.gethostname(),
            pid=os.getpid(),
            config_fingerprint=self.config.fingerprint,
        )
        self.session.add(self.run_row)
        self.introduced = introduced_steps(self.session, self.config, self.now, write=True)
        self.checkpoint()
        assert self.run_row.id is not None
        if not self.dry_run:
            self.keeper.hold(self.run_row.id)  # before this run claims anything
        self.ledger = Ledger(self.session, self.run_row.id, self.now, self.transport.name)

    def _recover(self) -> None:
        """Settle what a run that died left in hand (see `funnel.ledger`)."""
        found = self.ledger.recover()
        if not found.unknown and not found.released:
            return
        for sequence_id, step_id in found.unknown:
            self.summary.count_step(sequence_id, step_id, "unknown")
        self.summary.unknown += len(found.unknown)
        if found.unknown:
            self.summary.warnings.append(
                f"{len(found.unknown)} email(s) were being sent when an earlier run stopped; "
                "they are marked unknown and will not be sent again (see `funnel report`)"
            )
        self.checkpoint()

    # ----------------------------------------------------------------- sources

    def _ingest_sources(self) -> None:
        practice_tz = zone(self.config.practice.timezone)
        for name, source in self.config.sources.items():
            if source.format == "form" or not source.path:
                continue
            path = self.config.resolve(source.path)
            stored = self.session.get(SourceFile, name)
            previous = None
            if stored is not None and stored.path == str(path):
                previous = Fingerprint(stored.size, stored.sha256, stored.lines)
            report: dict[str, Any] = {"path": source.path}
            self.summary.sources[name] = report
            if not path.exists():
                report["status"] = "missing"
                continue
            try:
                read = read_source_file(
                    name,
                    source,
                    path,
                    practice_tz,
                    previous,
                    stream=True,
                    webinar_tz=self.config.start_zone(source),
                    now=self.now,
                )
            except SourceError as exc:
                report["status"] = "error"
                report["problem"] = str(exc)
                self.summary.problems.append(str(exc))
                self.summary.refused_files += 1
                continue
            if read.unchanged:
                report["status"] = "unchanged"
                continue
            result = apply_rows(self.session, self.config, name, source, read.signups(), self.now)
            self._note_source(name, source.path, report, read.problems, read.filtered, result)
            assert read.fingerprint is not None
            fp = read.fingerprint
            if stored is None:
                insert_ignore(
                    self.session,
                    SourceFile.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
                    [{"source": name, "path": str(path), "size": 0, "sha256": "", "lines": 0, "read_at": self.now}],
                    ("source",),
                )
                stored = self.session.get(SourceFile, name)
                assert stored is not None
            stored.path, stored.size, stored.sha256, stored.lines, stored.read_at = (
                str(path),
                fp.size,
                fp.sha256,
                fp.lines,
                self.now,
            )
            self.checkpoint()

    def _read_zoom(self) -> None:
        """`format: zoom` sources: Zoom's registrants and participants (`funnel.zoom_source`)."""
        from funnel.zoom_source import read_zoom_sources

        for name, read in read_zoom_sources(self.session, self.config, self.now).items():
            self.summary.sources[name] = read.report
            self.summary.warnings.extend(read.warnings)
            self.summary.problems.extend(read.problems)
            self.summary.imported += read.result.imported
            self.summary.enrolled += read.result.enrolled
            self.summary.rejected += read.rejected
            self.summary.refused_files += 1 if read.report.get("status") == "error" else 0
            self.checkpoint()

    def _note_source(
        self, name: str, path: str, report: dict[str, Any], problems: Iterable[Any], filtered: int, result: IngestResult
    ) -> None:
        warnings, refusals, rejected = problem_lines(path, problems)
        self.summary.warnings.extend(warnings)
        self.summary.problems.extend(refusals)
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
        self.summary.imported += result.imported
        self.summary.rejected += rejected
        self.summary.enrolled += result.enrolled

    def _wake_all_if_config_changed(self) -> None:
        stored = self.session.get(Setting, "config_fingerprint")
        if stored is not None and stored.value == self.config.fingerprint:
            return
        # sessions moved (`was:`) or cancelled in the new sequences.yaml: before anyone is decided
        changes = apply_session_changes(self.session, self.config, self.now)
        self.summary.moved += changes.moved
        self.summary.cancelled += changes.cancelled
        remember_sessions(self.session, self.config, self.now)
        self.session.execute(update(Enrollment).where(col(Enrollment.status) == "active").values(next_due_at=self.now))
        # stored with the wake-up: a worker starting meanwhile does not wake everyone again
        put_setting(self.session, "config_fingerprint", self.config.fingerprint)
        self.checkpoint()

    # ----------------------------------------------------------------- due work

    def _send_notices(self) -> None:
        """Send the letters that answer a session's move or cancellation (`funnel.notices`), before the rest.

        In a round of their own, so that their outcomes never count towards an
        enrollment's pending steps of the ordinary round.
        """
        found = due_notices(self.session, self.config, self.now)
        if not found or self.stop.is_set():
            return
        claims = [
            _Claim(
                n.contact,
                n.enrollment,
                self.config.sequences[n.enrollment.sequence],
                schedule.Send(n.step, self.now),
                n.row,
                key=n.key,
            )
            for n in found
        ]
        ready = self._claim_all(claims)
        self.checkpoint()
        self._send_due(first=ready, pages=False)

    def _send_due(self, first: list[_Ready] | None = None, *, pages: bool = True) -> None:
        """Decide and claim page by page; hand claimed emails over in small batches as room frees up.

        `first`: emails already claimed, handed over before any page (and, without `pages`, alone).
        """
        batch = max(1, self.config.delivery.concurrency)
        # at most this many emails are `sending` at any moment: all a SIGKILL can leave unknown
        window = 2 * batch
        check = None if self.dry_run else SuppressionCheck(self.engine)  # a dry run commits nothing
        dispatcher = Dispatcher(
            self.transport,
            max_attempts=self.config.delivery.max_attempts,
            in_flight=window,
            stop=self.stop,
            suppressed=check,
        )
        total = self.session.execute(
            select(func.count()).where(
                and_(col(Enrollment.status) == "active", col(Enrollment.next_due_at) <= self.now)
            )
        ).scalar_one()
        # PostgreSQL workers take small pages, so that several share the due emails evenly
        page_size = SHARED_PAGE if shares_work(self.engine) else PAGE
        done = 0
        last_id = 0
        more = pages
        waiting: deque[_Ready] = deque(first or ())
        try:
            while not dispatcher.stopped:
                if more and len(waiting) < window:
                    # the next page is decided while the last batches are still being sent
                    page = list(
                        self.session.scalars(
                            lock_due_page(
                                select(Enrollment)
                                .where(
                                    and_(
                                        col(Enrollment.status) == "active",
                                        col(Enrollment.next_due_at) <= self.now,
                                        col(Enrollment.id) > last_id,
                                    )
                                )
                                .order_by(col(Enrollment.id))
                                .limit(page_size),
                                self.engine,
                            ).execution_options(populate_existing=True)
                        )
                    )
                    if not page:
                        more = False
                        continue
                    last_id = page[-1].id or last_id
                    waiting.extend(self._decide_page(page))
                    self.checkpoint()  # claims are durable before any of them is handed over
                    done += len(page)
                    if self.progress:
                        self.progress(done, max(total, done))
                    continue
                if not waiting:
                    break
                self._hand_over_next(dispatcher, waiting, window, batch)
            self._record(dispatcher.finish(), save=True)
        finally:
            # stopped early (bad API key, SIGTERM, a bug): steps claimed but never
            # handed over go back untouched; requests under way finish and are recorded
            self._give_back([row for _, row in waiting])
            waiting.clear()
            dispatcher.close()
            if check is not None:
                check.close()
            self._record(dispatcher.finish(), save=True)
        if dispatcher.fatal is not None:
            self.summary.stopped = str(dispatcher.fatal)
            self.summary.fatal_status = dispatcher.fatal.status
        elif self.stop.is_set():
            self.summary.stopped = (
                "stopped on request (SIGTERM); emails under way were recorded, the rest go out next run"
            )

    def _hand_over_next(self, dispatcher: Dispatcher, waiting: deque[_Ready], window: int, batch: int) -> None:
        """Render the next batch, mark it handed over (with the outcomes so far) in one commit, send it.

        The run waits until a whole batch has come back: the other batch of
        the window keeps the transport's threads busy while this one is
        prepared, and each commit (the fixed cost of a hand-over) carries a
        full batch.
        """
        outcomes = dispatcher.collect()
        wanted = min(len(waiting), batch)
        while window - dispatcher.in_flight < wanted and not dispatcher.stopped:
            outcomes.extend(dispatcher.wait_for(wanted - (window - dispatcher.in_flight)))
        self._record(outcomes)
        if dispatcher.stopped:
            return
        room = window - dispatcher.in_flight
        ready = [waiting.popleft() for _ in range(min(room, batch, len(waiting)))]
        jobs = [job for job in (self._job(claim, row) for claim, row in ready) if job is not None]
        result = self.ledger.hand_over([(job.step_run_id, job.contact_id) for job in jobs])
        for job in jobs:
            if job.step_run_id in result.suppressed:
                self._not_handed(job, skipped=result.suppressed[job.step_run_id])
            elif job.step_run_id not in result.handed:
                self._not_handed(job, skipped=None)  # another worker took the row back
        self.checkpoint()  # the batch is `sending` before any of its requests starts
        self._unsaved, self._saved_at = 0, time.monotonic()
        for job in jobs:
            if job.step_run_id in result.handed:
                self._record(dispatcher.submit(job))

    def _not_handed(self, job: Job, *, skipped: str | None) -> None:
        """A claimed email that is not sent after all: its person is suppressed now, or the row is gone."""
        row = self._in_flight.pop(job.step_run_id)
        if skipped is not None:
            self.summary.skipped += 1
            self.summary.count_step(row.sequence, row.step_id, "skipped")
        pending = self._pending.get(job.enrollment_id)
        if pending:
            pending.retry_later = True  # the next run looks again (and exits a suppressed person)
            self._one_less(pending)

    def _give_back(self, rows: list[StepRow]) -> None:
        """Rows this run claimed whose request never started: pending again for the next run."""
        if not rows:
            return
        for row in rows:
            self._in_flight.pop(row.id, None)
            pending = self._pending.get(row.enrollment_id)
            if pending:
                pending.retry_later = True
                self._one_less(pending)
        self.ledger.give_back([row.id or 0 for row in rows])
        self.checkpoint()

    def _one_less(self, pending: _Pending) -> None:
        pending.outstanding -= 1
        if pending.outstanding == 0:
            self._settle(pending)

    def _decide_page(self, page: list[Enrollment]) -> list[_Ready]:
        contact_ids = sorted({e.contact_id for e in page})
        # PostgreSQL workers: one person is decided by one worker at a time (the gap between
        # marketing emails counts what the other worker just sent), locked in id order
        contacts = {c.id: c for c in self.session.scalars(lock_contacts(contact_ids, self.engine))}
        tags: dict[int, set[str]] = defaultdict(set)
        for contact_id, tag in self.session.execute(
            select(col(Tag.contact_id), col(Tag.tag)).where(col(Tag.contact_id).in_(contact_ids))
        ):
            tags[contact_id].add(tag)
        recorded = self.ledger.rows_of([e.id or 0 for e in page])
        self._session_tags = self._own_session_tags(page)
        by_contact: dict[int, list[Enrollment]] = defaultdict(list)
        for enrollment in page:
            by_contact[enrollment.contact_id].append(enrollment)
        claims: list[_Claim] = []
        for contact_id, enrollments in by_contact.items():
            contact = contacts[contact_id]
            state = schedule.ContactState(
                tz=contact_zone(self.config, contact),
                tags=frozenset(tags.get(contact_id, ())),
                suppressed=contact.suppression,
                last_marketing_at=contact.last_marketing_at,
            )
            for enrollment in enrollments:
                state = self._decide(contact, enrollment, state, recorded.get(enrollment.id or 0, {}), claims)
            if state.last_marketing_at != contact.last_marketing_at:
                self.writes.set(contact, last_marketing_at=state.last_marketing_at)
        return self._claim_all(claims)

    def _own_session_tags(self, page: list[Enrollment]) -> dict[int, frozenset[str]]:
        """The session-scoped tags of the page's webinar-session enrollments (none asked for when none can be)."""
        ids = [e.id or 0 for e in page if e.session and e.webinar in self._scoped]
        if not ids:
            return {}
        found: dict[int, set[str]] = defaultdict(set)
        for enrollment_id, tag in self.session.execute(
            select(col(EnrollmentTag.enrollment_id), col(EnrollmentTag.tag)).where(
                col(EnrollmentTag.enrollment_id).in_(ids)
            )
        ):
            found[enrollment_id].add(tag)
        return {e: frozenset(tags) for e, tags in found.items()}

    def _decide(
        self,
        contact: Contact,
        enrollment: Enrollment,
        state: schedule.ContactState,
        rows: dict[str, StepRow],
        claims: list[_Claim],
    ) -> schedule.ContactState:
        sequence = self.config.sequences.get(enrollment.sequence)
        if sequence is None:
            # the sequence was removed from sequences.yaml: nothing of it is sent
            self._end(enrollment, "exited", "sequence removed from sequences.yaml")
            return state
        scoped = self._scoped.get(enrollment.webinar or "") if enrollment.session else None
        if scoped:
            # within a webinar session's enrollment, attendance tags are that session's own
            seen = tags_in_session(state.tags, scoped, self._session_tags.get(enrollment.id or 0, frozenset()))
            after = self._evaluate_and_act(contact, enrollment, sequence, replace(state, tags=seen), rows, claims)
            return replace(after, tags=state.tags)
        return self._evaluate_and_act(contact, enrollment, sequence, state, rows, claims)

    def _evaluate_and_act(
        self,
        contact: Contact,
        enrollment: Enrollment,
        sequence: Sequence,
        state: schedule.ContactState,
        rows: dict[str, StepRow],
        claims: list[_Claim],
    ) -> schedule.ContactState:
        try:
            evaluation = schedule.evaluate(
                sequence,
                schedule.EnrollmentState(
                    enrolled_at=enrollment.enrolled_at,
                    webinar_start=enrollment.webinar_start,
                    recorded={k: schedule.Recorded(r.status, r.retryable, r.reason) for k, r in rows.items()},
                    introduced=self.introduced.get(enrollment.sequence, {}),
                    imported_at=enrollment.imported_at,
                ),
                state,
                self.now,
                self.config.delivery,
            )
        except (OverflowError, ValueError, OSError) as exc:
            # a value no import accepts today but an older version stored (a webinar in
            # the year 9999, say): this person's enrollment stops, with the reason; the run goes on
            self._unschedulable(contact, enrollment, sequence, rows, exc)
            return state
        for skip in evaluation.skips:
            self._record_skip(enrollment, skip, rows)
        if evaluation.exit_reason:
            self._end(enrollment, "exited", evaluation.exit_reason)
            self.summary.exited += 1
            return evaluation.contact or state
        if enrollment.next_due_at != evaluation.wake_at:
            self.writes.set(enrollment, next_due_at=evaluation.wake_at)
        if evaluation.sends:
            self._pending[enrollment.id or 0] = _Pending(
                enrollment, enrollment.sequence, 0, evaluation.finished, goal=evaluation.goal, tz=state.tz
            )
            claims.extend(
                _Claim(contact, enrollment, sequence, send, rows.get(send.step.id), rows) for send in evaluation.sends
            )
        elif evaluation.finished:
            self._complete(enrollment, sequence, evaluation.goal, state.tz)
        return evaluation.contact or state

    def _unschedulable(
        self, contact: Contact, enrollment: Enrollment, sequence: Sequence, rows: dict[str, StepRow], exc: Exception
    ) -> None:
        """Fail the next step of an enrollment whose times cannot be computed, and stop it."""
        start = enrollment.webinar_start.isoformat() if enrollment.webinar_start else "none"
        zone_name = (contact.timezone or "the practice's")[:40]
        reason = f"its times cannot be computed ({exc}; webinar start {start}, timezone {zone_name}): stopped"
        step = next((s for s in sequence.steps if s.id not in rows), None)
        if step is not None:
            insert_ignore(
                self.session,
                StepRun.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
                [
                    {
                        "enrollment_id": enrollment.id,
                        "sequence": enrollment.sequence,
                        "step_id": step.id,
                        "status": "failed",
                        "reason": reason,
                        "retryable": False,
                        "transactional": step.transactional,
                        "attempts": 0,
                        "decided_at": self.now,
                    }
                ],
                ("enrollment_id", "step_id"),
            )
            self.summary.count_step(enrollment.sequence, step.id, "failed")
        self._end(enrollment, "exited", reason)
        self.summary.fail(contact.email, enrollment.sequence, step.id if step else "", reason)

    def _record_skip(self, enrollment: Enrollment, skip: schedule.Skip, rows: dict[str, StepRow]) -> None:
        row = rows.get(skip.step.id)
        if row is None:
            # insert-or-ignore: a concurrent worker may have decided the same step
            insert_ignore(
                self.session,
                StepRun.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
                [
                    {
                        "enrollment_id": enrollment.id,
                        "sequence": enrollment.sequence,
                        "step_id": skip.step.id,
                        "status": "skipped",
                        "reason": skip.reason,
                        "retryable": False,
                        "transactional": skip.step.transactional,
                        "attempts": 0,
                        "due_at": skip.due_at,
                        "decided_at": self.now,
                    }
                ],
                ("enrollment_id", "step_id"),
            )
        else:  # a failed step that is now too late, say: keep why it failed
            reason = f"{skip.reason} (last attempt: {row.reason})" if row.reason else skip.reason
            self.ledger.too_late(row, reason)
        self.summary.skipped += 1
        self.summary.count_step(enrollment.sequence, skip.step.id, "skipped")

    def _claim_all(self, claims: list[_Claim]) -> list[_Ready]:
        """Take the page's steps for this run in a few statements (see `Ledger.claim_new`).

        Rendering waits for the hand-over, batch by batch.
        """
        fresh = [c for c in claims if c.row is None]
        send_ids = {id(c): uuid.uuid4().hex for c in fresh}
        taken = self.ledger.claim_new(
            [
                {
                    "enrollment_id": c.enrollment.id,
                    "sequence": c.enrollment.sequence,
                    "step_id": c.key or c.send.step.id,
                    "transactional": c.send.step.transactional,
                    "send_id": send_ids[id(c)],
                    "attempts": 0,
                    "due_at": c.send.due_at,
                    "retryable": False,
                }
                for c in fresh
            ]
        )
        ready: list[_Ready] = []
        for claim in claims:
            row = taken.get(send_ids[id(claim)]) if claim.row is None else self.ledger.retake(claim.row)
            if row is None:
                continue
            claim.rows[claim.key or claim.send.step.id] = row
            pending = self._pending.get(claim.enrollment.id or 0)
            if pending is not None:
                pending.outstanding += 1
            self._in_flight[row.id or 0] = row
            ready.append((claim, row))
        for pending in [p for p in self._pending.values() if p.outstanding == 0]:
            self._settle(pending)  # every claim went elsewhere
        return ready

    def _job(self, claim: _Claim, row: StepRow) -> Job | None:
        """Render a claimed step; a template error fails that one email, not the run."""
        enrollment, step = claim.enrollment, claim.send.step
        try:
            email = self._compose(claim.contact, enrollment, claim.sequence, step, row)
        except MissingData as exc:  # e.g. no webinar start: this email cannot be written for her
            self._in_flight.pop(row.id, None)
            self.ledger.unsent(row.id, "skipped", exc.reason)
            self.summary.skipped += 1
            self.summary.count_step(enrollment.sequence, step.id, "skipped")
            pending = self._pending.get(enrollment.id or 0)
            if pending is not None:
                self._one_less(pending)
            return None
        except (TemplateError, OverflowError, ValueError) as exc:  # also a stored date beyond what a zone can show
            self._in_flight.pop(row.id, None)
            reason = f"template error: {exc}"
            self.ledger.unsent(row.id, "failed", reason)
            self.summary.fail(claim.contact.email, enrollment.sequence, step.id, reason)
            if str(exc) not in self.summary.problems:
                self.summary.problems.append(str(exc))
            self.summary.count_step(enrollment.sequence, step.id, "failed")
            pending = self._pending.get(enrollment.id or 0)
            if pending is not None:
                self._one_less(pending)
            return None
        return Job(
            step_run_id=row.id or 0,
            enrollment_id=enrollment.id or 0,
            email=email,
            contact_id=claim.contact.id or 0,
        )

    def _compose(
        self, contact: Contact, enrollment: Enrollment, sequence: Sequence, step: Step, row: StepRow
    ) -> OutgoingEmail:
        """Render one claimed step into the frozen email a transport gets."""
        assert contact.id is not None
        token_key = contact.token_key
        if token_key is None:  # a row written by other means than funnel's: give it one now
            token_key = new_token_key()
            self.writes.set(contact, token_key=token_key)
        url = unsubscribe_url(self.config.practice.base_url, self.tokens.make(token_key, row.send_id))
        rendered = render_for(self.renderer, self.config, contact, enrollment, enrollment.sequence, step, url, self.now)
        attachments = invitation(
            self.config,
            step,
            person_key=contact.email_hash,
            discreet=contact.discreet,
            webinar_id=enrollment.webinar,
            start=enrollment.webinar_start,
            now=self.now,
            session=enrollment.session,
            join_url=enrollment.join_url,
            moves=enrollment.moves or 0,
        )
        if step.calendar and not attachments:  # the email still goes, without the event
            note = f"{enrollment.sequence}/{step.id}: sent without its calendar invitation (no webinar date)"
            if note not in self.summary.warnings:
                self.summary.warnings.append(note)
        return compose_email(
            self.config,
            contact,
            enrollment.sequence,
            step.id,
            rendered,
            row.send_id or "",
            url,
            self.now,
            attachments=attachments,
        )

    # ----------------------------------------------------------------- outcomes

    def _record(self, outcomes: list[Outcome], *, save: bool = False) -> None:
        """Record outcomes; commit every 200 or each second (and when `save`).

        Outcomes are also committed with each hand-over (so the rows left
        `sending` stay within the hand-over window); in between, a crash
        leaves a row `sending`, which the next run reports as unknown.
        """
        given_back: list[StepRow] = []
        stored: list[dict[str, Any]] = []
        for outcome in outcomes:
            if outcome.status == "released":
                # never attempted, or refused as a whole (bad API key): not sent, still pending
                given_back.append(self._in_flight[outcome.job.step_run_id])
                continue
            row = self._in_flight.pop(outcome.job.step_run_id)
            sequence_id, step_id = row.sequence, row.step_id
            pending = self._pending.get(outcome.job.enrollment_id)
            values: dict[str, Any] = {
                "id": row.id,
                "attempts": outcome.attempts,
                "retryable": False,
                "sent_at": None,
                "message_id": None,
            }
            if outcome.status == "withheld":  # suppressed between the hand-over and her request
                values.update(status="skipped", reason=outcome.reason)
                self.summary.skipped += 1
                self.summary.count_step(sequence_id, step_id, "skipped")
                if pending:
                    pending.retry_later = True  # the next run looks again and ends the enrollment
            elif outcome.status == "sent":
                values.update(
                    status="sent",
                    reason=None,
                    sent_at=self.now,
                    message_id=outcome.result.message_id if outcome.result else None,
                )
                self.summary.sent += 1
                self.summary.count_step(sequence_id, step_id, "sent")
            else:
                error = outcome.error
                reason = str(error) if error else "failed"
                values.update(status="failed", reason=reason, retryable=bool(error and error.retryable))
                self.summary.fail(outcome.job.email.to.email, sequence_id, step_id, reason)
                self.summary.count_step(sequence_id, step_id, "failed")
                if pending and values["retryable"]:
                    pending.retry_later = True
            stored.append(values)
            if pending:
                self._one_less(pending)
        self.ledger.record(stored)
        self._give_back(given_back)
        self._unsaved += len(outcomes)
        if self._unsaved and (save or self._unsaved >= 200 or time.monotonic() - self._saved_at > 1.0):
            self.checkpoint()
            self._unsaved, self._saved_at = 0, time.monotonic()

    def _settle(self, pending: _Pending) -> None:
        enrollment = pending.enrollment
        self._pending.pop(enrollment.id or 0, None)
        if pending.retry_later:
            self.writes.set(enrollment, next_due_at=self.now)  # the next run tries again (within max_late)
            return
        if pending.finished_if_sent:
            sequence = self.config.sequences.get(pending.sequence_id)
            if sequence is not None:
                self._complete(enrollment, sequence, pending.goal, pending.tz)

    def _complete(
        self, enrollment: Enrollment, sequence: Sequence, goal: str | None = None, tz: ZoneInfo | None = None
    ) -> None:
        """Every step has an outcome: finish, and start the `next` sequence (not when its goal was reached).

        She enters `next` at the last step's due time (`schedule.next_enrolled_at`), as `funnel plan` shows.
        """
        if goal:
            self._end(enrollment, "exited", goal)
            self.summary.exited += 1
            return
        self._end(enrollment, "finished", None)
        self.summary.finished += 1
        if not sequence.next or sequence.next not in self.config.sequences:
            return
        entered = self.now
        if tz is not None:
            try:
                entered = schedule.next_enrolled_at(
                    sequence,
                    schedule.EnrollmentState(enrollment.enrolled_at, enrollment.webinar_start),
                    tz,
                    self.now,
                    self.config.delivery,
                )
            except (OverflowError, ValueError):  # a stored date beyond what a zone can show: now, as before
                entered = self.now
        insert_ignore(
            self.session,
            Enrollment.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
            [
                {
                    "contact_id": enrollment.contact_id,
                    "sequence": sequence.next,
                    "status": "active",
                    "enrolled_at": entered,
                    "source": f"after {enrollment.sequence}",
                    "webinar": enrollment.webinar,
                    "webinar_start": enrollment.webinar_start,
                    # once per person, whichever session led her there
                    "session": "",
                    "next_due_at": self.now,
                }
            ],
            ("contact_id", "sequence", "session"),
        )

    def _end(self, enrollment: Enrollment, status: str, reason: str | None) -> None:
        self.writes.set(enrollment, status=status, end_reason=reason, ended_at=self.now, next_due_at=None)

    def _finish_run(self) -> None:
        assert self.run_row is not None
        counts = Counter({k: v for k, v in self.summary.as_dict().items() if isinstance(v, int)})
        self.run_row.finished_at = datetime.now(UTC)
        self.run_row.summary = dict(counts)
        self.run_row.config_timing = self.config.timing_snapshot()
        put_setting(self.session, "config_fingerprint", self.config.fingerprint)
        self.checkpoint()


def contact_zone(config: Config, contact: Contact) -> ZoneInfo:
    """The contact's timezone, or the practice's when they have none (or an unknown one)."""
    try:
        return zone(contact.timezone or config.practice.timezone)
    except ValueError:
        return zone(config.practice.timezone)


def render_for(
    renderer: Renderer,
    config: Config,
    contact: Contact,
    enrollment: Enrollment | None,
    sequence_id: str,
    step: Step,
    url: str,
    now: datetime | None = None,
) -> Rendered:
    """Render one step for a real contact, with the webinar of their enrollment (used by runs and preview).

    `now` is the moment the email is written (the send): templates see how far away
    the webinar is from it (`webinar.hours_until`).
    """
    assert contact.email is not None
    webinar = None
    if enrollment is not None and enrollment.webinar in config.webinars:
        info = config.webinars[enrollment.webinar]
        start = enrollment.webinar_start.astimezone(contact_zone(config, contact)) if enrollment.webinar_start else None
        webinar = TemplateWebinar(
            enrollment.webinar,
            info.title,
            enrollment.join_url or info.join_url,  # her own link, when the export gave her one
            info.replay_url,
            start,
            session=enrollment.session or None,
            recorded=info.recorded,
            hours_until=hours_between(now, start),
            # where her session was before its latest move: said in the letter that answers the move
            previous_start=(
                enrollment.previous_start.astimezone(contact_zone(config, contact))
                if step.on == "rescheduled" and enrollment.previous_start
                else None
            ),
        )
    return renderer.render(
        sequence_id,
        config.sequences[sequence_id],
        step,
        TemplateContact(
            contact.email, contact.first_name, contact.last_name, dict(contact.fields or {}), contact.discreet
        ),
        webinar,
        url,
        discreet=contact.discreet,
    )


def sender_of(config: Config, *, discreet: bool) -> tuple[str, str, str | None]:
    """The (From name, From address, Reply-To) of an email to a reader, discreet or not.

    A discreet reader's email comes from `practice.discreet_from_email` under
    `discreet_from_name` (each falling back to the ordinary one), and her
    replies go to `practice.discreet_reply_to` when it is set: it wins over
    `inbound.reply_address`, whose domain is usually the practice's own and
    would show in her mail client's reply line. Unset, her replies go where
    everyone's do: the Inbound Parse address when there is one (a reply
    pauses the person's letters), else `practice.reply_to`.
    """
    practice = config.practice
    reply_address = config.inbound.reply_address or practice.reply_to
    if not discreet:
        return practice.from_name or practice.name, practice.from_email, reply_address
    return (
        practice.discreet_from_name or practice.from_name or practice.name,
        practice.discreet_from_email or practice.from_email,
        practice.discreet_reply_to or reply_address,
    )


def compose_email(
    config: Config,
    contact: Contact,
    sequence_id: str,
    step_id: str,
    rendered: Any,
    send_id: str,
    url: str,
    now: datetime,
    *,
    attachments: tuple[Attachment, ...] = (),
) -> OutgoingEmail:
    """The frozen email for a transport: addresses, headers, custom args, tracking, attachments."""
    sender_name, sender_address, reply_address = sender_of(config, discreet=contact.discreet)
    assert contact.email is not None
    # cleaned again here: a name stored by an older version may hold a line break
    display = clean_line(" ".join(p for p in (contact.first_name, contact.last_name) if p)) or None
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(sender_address, sender_name),
        to=Address(contact.email, display),
        reply_to=Address(reply_address) if reply_address else None,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=unsubscribe_headers(url),
        custom_args=(("funnel_send_id", send_id), ("funnel_sequence", sequence_id), ("funnel_step", step_id)),
        categories=(sequence_id,),
        tracking_opens=config.tracking.opens and not contact.discreet,
        tracking_clicks=config.tracking.clicks and not contact.discreet,
        date=now,
        sequence=sequence_id,
        step=step_id,
        attachments=attachments,
    )
