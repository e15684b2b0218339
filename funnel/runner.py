"""`funnel run`: read sources, enroll, send what is due, record every outcome.

The order of one run, and why:

1. Rows left in `sending` by a run that died are marked `unknown`: SendGrid
   has no idempotency key, so an email whose fate is unknown is reported,
   never sent again blindly.
2. File sources are read (unchanged files cost one hash).
3. If sequences.yaml changed since the last run, every active enrollment is
   looked at once (new or retimed steps); otherwise only those whose stored
   `next_due_at` has come, through an index: work grows with what is due.
4. Due enrollments are taken page by page. For each person the pure
   schedule decides; skips and exits are recorded, sends are *claimed*
   (a `sending` row, unique per enrollment and step) and committed before
   any request goes out; then they are rendered and handed to the
   dispatcher, whose threads send while the next page is prepared.
5. Outcomes are recorded in batches; finished enrollments move on to their
   `next` sequence.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.config import Config, Sequence, Step
from funnel.db import put_setting
from funnel.deliver import Dispatcher, Job, Outcome
from funnel.errors import ConfigError, SourceError, TemplateError
from funnel.ingest import IngestResult, apply_rows, insert_ignore
from funnel.models import Contact, Enrollment, Run, Setting, SourceFile, StepRun, Tag
from funnel.render import MissingData, Rendered, Renderer, TemplateContact, TemplateWebinar
from funnel.sources import Fingerprint, clean_line, read_source_file
from funnel.timeutil import zone
from funnel.transports.base import Address, OutgoingEmail, SendResult, Transport
from funnel.unsubscribe import Tokens, secret_key, unsubscribe_headers, unsubscribe_url

PAGE = 400
UNKNOWN_REASON = "the run sending it stopped mid-request: not sent again (check whether it arrived)"


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
    dry_run: bool = False
    now: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    stopped: str | None = None
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
        return self.failed == 0 and self.stopped is None


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
    row: StepRun | None
    rows: dict[str, StepRun] = field(default_factory=dict)


@dataclass
class _Pending:
    """Bookkeeping for an enrollment whose sends are in flight."""

    enrollment: Enrollment
    sequence_id: str
    outstanding: int
    finished_if_sent: bool
    retry_later: bool = False


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
        self.tokens = Tokens(secret_key(self.session))
        self.run_row: Run | None = None
        self.introduced: dict[str, dict[str, datetime]] = {}
        self._pending: dict[int, _Pending] = {}
        #: rows of claimed steps in flight, held here (the session's identity map is weak)
        self._in_flight: dict[int, StepRun] = {}
        self._unsaved = 0
        self._saved_at = time.monotonic()

    # ----------------------------------------------------------------- helpers

    def checkpoint(self) -> None:
        """Make what was done durable (a dry run only flushes, and rolls back at the end)."""
        if self.dry_run:
            self.session.flush()
        else:
            self.session.commit()

    # ----------------------------------------------------------------- the run

    def run(self) -> RunSummary:
        started = time.monotonic()
        try:
            self._start()
            if not self.dry_run:
                self._recover_unknown()
            # before the import: people enrolled now are scheduled by this very config
            # (ingest sets their first look), so they need no waking
            self._wake_all_if_config_changed()
            if self.read_sources:
                self._ingest_sources()
            self._send_due()
            self._finish_run()
        finally:
            if self.dry_run:
                self.session.rollback()
            self.session.close()
            self.transport.close()
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

    def _recover_unknown(self) -> None:
        """Claims left by a dead run: their request may or may not have gone out."""
        assert self.run_row is not None
        stale = self.session.execute(
            select(col(StepRun.id), col(StepRun.sequence), col(StepRun.step_id)).where(
                and_(col(StepRun.status) == "sending", col(StepRun.run_id) != self.run_row.id)
            )
        ).all()
        if not stale:
            return
        self.session.execute(
            update(StepRun)
            .where(col(StepRun.id).in_([row.id for row in stale]))
            .values(status="unknown", reason=UNKNOWN_REASON, retryable=False)
        )
        for row in stale:
            self.summary.count_step(row.sequence, row.step_id, "unknown")
        self.summary.unknown += len(stale)
        self.summary.warnings.append(
            f"{len(stale)} email(s) were being sent when an earlier run stopped; "
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
                read = read_source_file(name, source, path, practice_tz, previous, stream=True)
            except SourceError as exc:
                report["status"] = "error"
                self.summary.problems.append(str(exc))
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

    def _note_source(
        self, name: str, path: str, report: dict[str, Any], problems: Iterable[Any], filtered: int, result: IngestResult
    ) -> None:
        rejected = 0
        for problem in problems:
            line = f"{path}:{problem.line}: {problem.message}"
            if problem.warning:
                self.summary.warnings.append(line)
            else:
                rejected += 1
                self.summary.problems.append(line + " (row skipped)")
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
        self.session.execute(update(Enrollment).where(col(Enrollment.status) == "active").values(next_due_at=self.now))
        self.checkpoint()

    # ----------------------------------------------------------------- due work

    def _send_due(self) -> None:
        # room for two pages in flight: the next page is prepared while this one sends
        dispatcher = Dispatcher(
            self.transport, max_attempts=self.config.delivery.max_attempts, in_flight=2 * PAGE, stop=self.stop
        )
        total = self.session.execute(
            select(func.count()).where(
                and_(col(Enrollment.status) == "active", col(Enrollment.next_due_at) <= self.now)
            )
        ).scalar_one()
        done = 0
        last_id = 0
        waiting: deque[Job] = deque()
        try:
            while not dispatcher.stopped:
                page = list(
                    self.session.scalars(
                        select(Enrollment)
                        .where(
                            and_(
                                col(Enrollment.status) == "active",
                                col(Enrollment.next_due_at) <= self.now,
                                col(Enrollment.id) > last_id,
                            )
                        )
                        .order_by(col(Enrollment.id))
                        .limit(PAGE)
                    )
                )
                if not page:
                    break
                last_id = page[-1].id or last_id
                waiting = deque(self._decide_page(page))
                self.checkpoint()  # claims are durable before any request goes out
                while waiting and not dispatcher.stopped:
                    self._record(dispatcher.submit(waiting[0]))
                    waiting.popleft()
                self._record(dispatcher.collect())
                done += len(page)
                if self.progress:
                    self.progress(done, max(total, done))
            self._record(dispatcher.finish(), save=True)
        finally:
            # stopped early (bad API key, SIGTERM, a bug): steps claimed but never
            # handed over go back untouched; requests under way finish and are recorded
            self._record([Outcome(job, "released") for job in waiting])
            dispatcher.close()
            self._record(dispatcher.finish(), save=True)
        if dispatcher.fatal is not None:
            self.summary.stopped = str(dispatcher.fatal)
        elif self.stop.is_set():
            self.summary.stopped = (
                "stopped on request (SIGTERM); emails under way were recorded, the rest go out next run"
            )

    def _decide_page(self, page: list[Enrollment]) -> list[Job]:
        contact_ids = sorted({e.contact_id for e in page})
        contacts = {c.id: c for c in self.session.scalars(select(Contact).where(col(Contact.id).in_(contact_ids)))}
        tags: dict[int, set[str]] = defaultdict(set)
        for contact_id, tag in self.session.execute(
            select(col(Tag.contact_id), col(Tag.tag)).where(col(Tag.contact_id).in_(contact_ids))
        ):
            tags[contact_id].add(tag)
        recorded: dict[int, dict[str, StepRun]] = defaultdict(dict)
        for row in self.session.scalars(select(StepRun).where(col(StepRun.enrollment_id).in_([e.id for e in page]))):
            recorded[row.enrollment_id][row.step_id] = row
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
                state = self._decide(contact, enrollment, state, recorded[enrollment.id or 0], claims)
            if state.last_marketing_at != contact.last_marketing_at:
                contact.last_marketing_at = state.last_marketing_at
        return self._claim_all(claims)

    def _decide(
        self,
        contact: Contact,
        enrollment: Enrollment,
        state: schedule.ContactState,
        rows: dict[str, StepRun],
        claims: list[_Claim],
    ) -> schedule.ContactState:
        sequence = self.config.sequences.get(enrollment.sequence)
        if sequence is None:
            # the sequence was removed from sequences.yaml: nothing of it is sent
            self._end(enrollment, "exited", "sequence removed from sequences.yaml")
            return state
        try:
            evaluation = schedule.evaluate(
                sequence,
                schedule.EnrollmentState(
                    enrolled_at=enrollment.enrolled_at,
                    webinar_start=enrollment.webinar_start,
                    recorded={k: schedule.Recorded(r.status, r.retryable, r.reason) for k, r in rows.items()},
                    introduced=self.introduced.get(enrollment.sequence, {}),
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
        enrollment.next_due_at = evaluation.wake_at
        if evaluation.sends:
            self._pending[enrollment.id or 0] = _Pending(enrollment, enrollment.sequence, 0, evaluation.finished)
            claims.extend(
                _Claim(contact, enrollment, sequence, send, rows.get(send.step.id), rows) for send in evaluation.sends
            )
        elif evaluation.finished:
            self._complete(enrollment, sequence)
        return evaluation.contact or state

    def _unschedulable(
        self, contact: Contact, enrollment: Enrollment, sequence: Sequence, rows: dict[str, StepRun], exc: Exception
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

    def _record_skip(self, enrollment: Enrollment, skip: schedule.Skip, rows: dict[str, StepRun]) -> None:
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
            row.status, row.reason, row.retryable, row.decided_at = "skipped", reason, False, self.now
        self.summary.skipped += 1
        self.summary.count_step(enrollment.sequence, skip.step.id, "skipped")

    def _claim_all(self, claims: list[_Claim]) -> list[Job]:
        """Take the page's steps for this run in a few statements; render the ones we got.

        A unique (enrollment, step) row means no other run can take a step
        too: an insert that is ignored, or a conditional update that changes
        nothing, tells us someone else has it.
        """
        assert self.run_row is not None
        fresh = [c for c in claims if c.row is None]
        send_ids = {id(c): uuid.uuid4().hex for c in fresh}
        values = [
            {
                "enrollment_id": c.enrollment.id,
                "sequence": c.enrollment.sequence,
                "step_id": c.send.step.id,
                "status": "sending",
                "transactional": c.send.step.transactional,
                "send_id": send_ids[id(c)],
                "run_id": self.run_row.id,
                "attempts": 0,
                "due_at": c.send.due_at,
                "decided_at": self.now,
                "transport": self.transport.name,
                "retryable": False,
            }
            for c in fresh
        ]
        table = StepRun.__table__  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
        for start in range(0, len(values), 200):
            insert_ignore(self.session, table, values[start : start + 200], ("enrollment_id", "step_id"))
        taken: dict[str, StepRun] = {}
        wanted = list(send_ids.values())
        for start in range(0, len(wanted), 500):
            for found in self.session.scalars(
                select(StepRun).where(col(StepRun.send_id).in_(wanted[start : start + 500]))
            ):
                taken[found.send_id or ""] = found
        jobs: list[Job] = []
        for claim in claims:
            row = taken.get(send_ids[id(claim)]) if claim.row is None else self._retake(claim.row)
            if row is not None:
                claim.rows[claim.send.step.id] = row
                job = self._job(claim, row)
                if job is not None:
                    jobs.append(job)
        for pending in [p for p in self._pending.values() if p.outstanding == 0]:
            self._settle(pending)  # every claim went elsewhere or failed to render
        return jobs

    def _retake(self, row: StepRun) -> StepRun | None:
        """Claim a step whose last attempt failed in a way worth retrying."""
        assert self.run_row is not None
        claimed = self.session.execute(
            update(StepRun)
            .where(and_(col(StepRun.id) == row.id, col(StepRun.status) == "failed", col(StepRun.retryable).is_(True)))
            .values(status="sending", run_id=self.run_row.id, send_id=uuid.uuid4().hex, decided_at=self.now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # execute() is typed Result; an UPDATE gives CursorResult
            return None
        self.session.refresh(row)
        return row

    def _job(self, claim: _Claim, row: StepRun) -> Job | None:
        """Render a claimed step; a template error fails that one email, not the run."""
        enrollment, step = claim.enrollment, claim.send.step
        try:
            email = self._compose(claim.contact, enrollment, claim.sequence, step, row)
        except MissingData as exc:  # e.g. no webinar start: this email cannot be written for her
            row.status, row.reason, row.retryable = "skipped", exc.reason, False
            self.summary.skipped += 1
            self.summary.count_step(enrollment.sequence, step.id, "skipped")
            return None
        except (TemplateError, OverflowError, ValueError) as exc:  # also a stored date beyond what a zone can show
            row.status, row.reason, row.retryable = "failed", f"template error: {exc}", False
            self.summary.fail(claim.contact.email, enrollment.sequence, step.id, row.reason)
            if str(exc) not in self.summary.problems:
                self.summary.problems.append(str(exc))
            self.summary.count_step(enrollment.sequence, step.id, "failed")
            return None
        pending = self._pending.get(enrollment.id or 0)
        if pending is not None:
            pending.outstanding += 1
        self._in_flight[row.id or 0] = row
        return Job(step_run_id=row.id or 0, enrollment_id=enrollment.id or 0, email=email)

    def _compose(
        self, contact: Contact, enrollment: Enrollment, sequence: Sequence, step: Step, row: StepRun
    ) -> OutgoingEmail:
        """Render one claimed step into the frozen email a transport gets."""
        assert contact.id is not None
        url = unsubscribe_url(self.config.practice.base_url, self.tokens.make(contact.id, row.id))
        rendered = render_for(self.renderer, self.config, contact, enrollment, enrollment.sequence, step, url)
        return compose_email(
            self.config, contact, enrollment.sequence, step.id, rendered, row.send_id or "", url, self.now
        )

    # ----------------------------------------------------------------- outcomes

    def _record(self, outcomes: list[Outcome], *, save: bool = False) -> None:
        """Record outcomes; commit every 200 or each second (and when `save`).

        Between a send and its commit a crash leaves the row `sending`, which
        the next run reports as unknown: batching costs honesty nothing.
        """
        for outcome in outcomes:
            row = self._in_flight.pop(outcome.job.step_run_id)
            sequence_id, step_id = row.sequence, row.step_id
            pending = self._pending.get(outcome.job.enrollment_id)
            row.attempts += outcome.attempts
            if outcome.status == "sent":
                row.status, row.sent_at, row.reason, row.retryable = "sent", self.now, None, False
                row.message_id = outcome.result.message_id if outcome.result else None
                self.summary.sent += 1
                self.summary.count_step(sequence_id, step_id, "sent")
            elif outcome.status == "failed":
                error = outcome.error
                row.status, row.reason = "failed", str(error) if error else "failed"
                row.retryable = bool(error and error.retryable)
                self.summary.fail(outcome.job.email.to.email, sequence_id, step_id, row.reason)
                self.summary.count_step(sequence_id, step_id, "failed")
                if pending and row.retryable:
                    pending.retry_later = True
            else:
                # never attempted, or refused as a whole (bad API key): not sent, still pending
                self.session.delete(row)
                if pending:
                    pending.retry_later = True
            if pending:
                pending.outstanding -= 1
                if pending.outstanding == 0:
                    self._settle(pending)
        self._unsaved += len(outcomes)
        if self._unsaved and (save or self._unsaved >= 200 or time.monotonic() - self._saved_at > 1.0):
            self.checkpoint()
            self._unsaved, self._saved_at = 0, time.monotonic()

    def _settle(self, pending: _Pending) -> None:
        enrollment = pending.enrollment
        self._pending.pop(enrollment.id or 0, None)
        if pending.retry_later:
            enrollment.next_due_at = self.now  # the next run tries again (within max_late)
            return
        if pending.finished_if_sent:
            sequence = self.config.sequences.get(pending.sequence_id)
            if sequence is not None:
                self._complete(enrollment, sequence)

    def _complete(self, enrollment: Enrollment, sequence: Sequence) -> None:
        """Every step has an outcome: finish, and start the `next` sequence."""
        self._end(enrollment, "finished", None)
        self.summary.finished += 1
        if not sequence.next or sequence.next not in self.config.sequences:
            return
        insert_ignore(
            self.session,
            Enrollment.__table__,  # type: ignore[attr-defined]  # SQLModel does not declare __table__ for mypy
            [
                {
                    "contact_id": enrollment.contact_id,
                    "sequence": sequence.next,
                    "status": "active",
                    "enrolled_at": self.now,
                    "source": f"after {enrollment.sequence}",
                    "webinar": enrollment.webinar,
                    "webinar_start": enrollment.webinar_start,
                    "next_due_at": self.now,
                }
            ],
            ("contact_id", "sequence"),
        )

    def _end(self, enrollment: Enrollment, status: str, reason: str | None) -> None:
        enrollment.status, enrollment.end_reason = status, reason
        enrollment.ended_at, enrollment.next_due_at = self.now, None

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
) -> Rendered:
    """Render one step for a real contact, with the webinar of their enrollment (used by runs and preview)."""
    assert contact.email is not None
    webinar = None
    if enrollment is not None and enrollment.webinar in config.webinars:
        info = config.webinars[enrollment.webinar]
        start = enrollment.webinar_start.astimezone(contact_zone(config, contact)) if enrollment.webinar_start else None
        webinar = TemplateWebinar(enrollment.webinar, info.title, info.join_url, info.replay_url, start)
    return renderer.render(
        sequence_id,
        config.sequences[sequence_id],
        step,
        TemplateContact(contact.email, contact.first_name, contact.last_name, dict(contact.fields or {})),
        webinar,
        url,
        discreet=contact.discreet,
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
) -> OutgoingEmail:
    """The frozen email for a transport: addresses, headers, custom args, tracking."""
    practice = config.practice
    sender_name = practice.from_name or practice.name
    if contact.discreet and practice.discreet_from_name:
        sender_name = practice.discreet_from_name
    assert contact.email is not None
    # cleaned again here: a name stored by an older version may hold a line break
    display = clean_line(" ".join(p for p in (contact.first_name, contact.last_name) if p)) or None
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(practice.from_email, sender_name),
        to=Address(contact.email, display),
        reply_to=Address(practice.reply_to) if practice.reply_to else None,
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
    )
