"""Claiming, writing and handing over emails, and recording what came back.

The second half of a run (`funnel.store.ledger` has the states a step row moves
through): claimed steps wait in a queue; batch by batch (at most
`delivery.concurrency` emails, never more than two batches under way) each is
composed, the batch is marked `sending` in one commit that also reads suppression
again and records outcomes, and the dispatcher's threads send it. A SIGKILL leaves
at most two batches unknown; anything claimed but not handed over goes next run.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from funnel.errors import TemplateError
from funnel.mail.compose import compose
from funnel.mail.render import MissingData, Renderer
from funnel.mail.unsubscribe import Tokens
from funnel.run.decide import Claim
from funnel.run.deliver import Dispatcher, Job, Outcome
from funnel.run.finish import Outstanding
from funnel.run.state import RunContext
from funnel.store.ledger import StepRow, SuppressionCheck, Wanted, outcome
from funnel.store.models import new_token_key
from funnel.transports.base import OutgoingEmail, Transport

#: a claimed step and its row, waiting to be rendered and handed over
Ready = tuple[Claim, StepRow]


class Delivery:
    """The claimed emails of one run: claim them, hand them over batch by batch, record their outcomes."""

    def __init__(
        self,
        ctx: RunContext,
        transport: Transport,
        renderer: Renderer,
        tokens: Tokens,
        outstanding: Outstanding,
        stop: threading.Event,
    ) -> None:
        self.ctx = ctx
        self.transport = transport
        self.renderer = renderer
        self.tokens = tokens
        self.outstanding = outstanding
        self.stop = stop
        #: rows of claimed steps in flight, held here (the session's identity map is weak)
        self._in_flight: dict[int, StepRow] = {}
        self._unsaved = 0
        self._saved_at = time.monotonic()

    # ----------------------------------------------------------------- claim

    def claim(self, claims: list[Claim]) -> list[Ready]:
        """Take the page's steps for this run in a few statements (see `Ledger.claim_new`).

        Rendering waits for the hand-over, batch by batch.
        """
        fresh = [c for c in claims if c.row is None]
        taken = self.ctx.ledger.claim_new(
            [
                Wanted(
                    c.enrollment.id or 0,
                    c.enrollment.sequence,
                    c.key or c.send.step.id,
                    c.send.step.transactional,
                    c.send.due_at,
                )
                for c in fresh
            ]
        )
        got = {id(c): row for c, row in zip(fresh, taken, strict=True)}
        ready: list[Ready] = []
        for claim in claims:
            row = got[id(claim)] if claim.row is None else self.ctx.ledger.retake(claim.row)
            if row is None:
                continue
            claim.rows[claim.key or claim.send.step.id] = row
            self.outstanding.one_more(claim.enrollment.id or 0)
            self._in_flight[row.id or 0] = row
            ready.append((claim, row))
        self.outstanding.settle_idle()  # every claim of theirs went elsewhere
        return ready

    # ----------------------------------------------------------------- send

    def send(self, first: list[Ready], pages: Iterator[list[Ready]]) -> None:
        """Hand `first`, then each page's claimed emails, over as room frees up; record every outcome.

        The next page is decided (by iterating `pages`) while the last batches are still being sent.
        """
        config = self.ctx.config
        batch = max(1, config.delivery.concurrency)
        # at most this many emails are `sending` at any moment: all a SIGKILL can leave unknown
        window = 2 * batch
        check = None if self.ctx.dry_run else SuppressionCheck(self.ctx.engine)  # a dry run commits nothing
        dispatcher = Dispatcher(
            self.transport,
            max_attempts=config.delivery.max_attempts,
            in_flight=window,
            stop=self.stop,
            suppressed=check,
        )
        more = True
        waiting: deque[Ready] = deque(first)
        try:
            while not dispatcher.stopped:
                if more and len(waiting) < window:
                    page = next(pages, None)
                    if page is None:
                        more = False
                    else:
                        waiting.extend(page)
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
        self._note_stop(dispatcher)

    def _note_stop(self, dispatcher: Dispatcher) -> None:
        if dispatcher.fatal is not None:
            self.ctx.summary.stopped = str(dispatcher.fatal)
            self.ctx.summary.fatal_status = dispatcher.fatal.status
        elif self.stop.is_set():
            self.ctx.summary.stopped = (
                "stopped on request (SIGTERM); emails under way were recorded, the rest go out next run"
            )

    def _hand_over_next(self, dispatcher: Dispatcher, waiting: deque[Ready], window: int, batch: int) -> None:
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
        result = self.ctx.ledger.hand_over([(job.step_run_id, job.contact_id) for job in jobs])
        for job in jobs:
            if job.step_run_id in result.suppressed:
                self._not_handed(job, skipped=result.suppressed[job.step_run_id])
            elif job.step_run_id not in result.handed:
                self._not_handed(job, skipped=None)  # another worker took the row back
        self.ctx.checkpoint()  # the batch is `sending` before any of its requests starts
        self._unsaved, self._saved_at = 0, time.monotonic()
        for job in jobs:
            if job.step_run_id in result.handed:
                self._record(dispatcher.submit(job))

    # ----------------------------------------------------------------- compose

    def _job(self, claim: Claim, row: StepRow) -> Job | None:
        """Render a claimed step; a template error fails that one email, not the run."""
        enrollment, step = claim.enrollment, claim.send.step
        try:
            email = self._compose(claim, row)
        except MissingData as exc:  # e.g. no webinar start: this email cannot be written for her
            self._unsent(claim, row, "skipped", exc.reason)
            return None
        except (TemplateError, OverflowError, ValueError) as exc:  # also a stored date beyond what a zone can show
            reason = f"template error: {exc}"
            self.ctx.summary.fail(claim.contact.email, enrollment.sequence, step.id, reason)
            if str(exc) not in self.ctx.summary.problems:
                self.ctx.summary.problems.append(str(exc))
            self._unsent(claim, row, "failed", reason)
            return None
        return Job(
            step_run_id=row.id or 0, enrollment_id=enrollment.id or 0, email=email, contact_id=claim.contact.id or 0
        )

    def _unsent(self, claim: Claim, row: StepRow, status: str, reason: str) -> None:
        """A claimed email that could not be written: its outcome, and one less in flight for her."""
        self._in_flight.pop(row.id, None)
        self.ctx.ledger.unsent(row.id, status, reason)
        if status == "skipped":
            self.ctx.summary.skipped += 1
        self.ctx.summary.count_step(claim.enrollment.sequence, claim.send.step.id, status)
        self.outstanding.one_less(claim.enrollment.id or 0)

    def _compose(self, claim: Claim, row: StepRow) -> OutgoingEmail:
        """Render one claimed step into the frozen email a transport gets (`funnel.mail.compose`)."""
        contact, enrollment, step = claim.contact, claim.enrollment, claim.send.step
        if contact.token_key is None:  # a row written by other means than funnel's: give it one now
            self.ctx.writes.set(contact, token_key=new_token_key())
        ctx = self.ctx
        email = compose(ctx.config, self.renderer, self.tokens, contact, enrollment, step, row.send_id or "", ctx.now)
        if step.calendar and not email.attachments:  # the email still goes, without the event
            note = f"{enrollment.sequence}/{step.id}: sent without its calendar invitation (no webinar date)"
            if note not in ctx.summary.warnings:
                ctx.summary.warnings.append(note)
        return email

    # ----------------------------------------------------------------- outcomes

    def _record(self, outcomes: list[Outcome], *, save: bool = False) -> None:
        """Record outcomes; commit every 200 or each second (and when `save`).

        Outcomes are also committed with each hand-over (so the rows left
        `sending` stay within the hand-over window); in between, a crash
        leaves a row `sending`, which the next run reports as unknown.
        """
        given_back: list[StepRow] = []
        stored: list[dict[str, Any]] = []
        for done in outcomes:
            if done.status == "released":
                # never attempted, or refused as a whole (bad API key): not sent, still pending
                given_back.append(self._in_flight[done.job.step_run_id])
                continue
            row = self._in_flight.pop(done.job.step_run_id)
            values, retry = self._outcome(done, row)
            stored.append(values)
            self.outstanding.one_less(done.job.enrollment_id, retry=retry)
        self.ctx.ledger.record(stored)
        self._give_back(given_back)
        self._unsaved += len(outcomes)
        if self._unsaved and (save or self._unsaved >= 200 or time.monotonic() - self._saved_at > 1.0):
            self.ctx.checkpoint()
            self._unsaved, self._saved_at = 0, time.monotonic()

    def _outcome(self, done: Outcome, row: StepRow) -> tuple[dict[str, Any], bool]:
        """What to store for one request's outcome, counted; and whether the next run looks at her again."""
        summary = self.ctx.summary
        if done.status == "withheld":  # suppressed between the hand-over and her request
            summary.skipped += 1
            summary.count_step(row.sequence, row.step_id, "skipped")
            # the next run looks again and ends the enrollment
            return outcome(row.id, "skipped", attempts=done.attempts, reason=done.reason), True
        if done.status == "sent":
            summary.sent += 1
            summary.count_step(row.sequence, row.step_id, "sent")
            message_id = done.result.message_id if done.result else None
            return outcome(row.id, "sent", attempts=done.attempts, sent_at=self.ctx.now, message_id=message_id), False
        error = done.error
        reason = str(error) if error else "failed"
        retryable = bool(error and error.retryable)
        summary.fail(done.job.email.to.email, row.sequence, row.step_id, reason)
        summary.count_step(row.sequence, row.step_id, "failed")
        return outcome(row.id, "failed", attempts=done.attempts, reason=reason, retryable=retryable), retryable

    def _not_handed(self, job: Job, *, skipped: str | None) -> None:
        """A claimed email that is not sent after all: its person is suppressed now, or the row is gone."""
        row = self._in_flight.pop(job.step_run_id)
        if skipped is not None:
            self.ctx.summary.skipped += 1
            self.ctx.summary.count_step(row.sequence, row.step_id, "skipped")
        # the next run looks again (and exits a suppressed person)
        self.outstanding.one_less(job.enrollment_id, retry=True)

    def _give_back(self, rows: list[StepRow]) -> None:
        """Rows this run claimed whose request never started: pending again for the next run."""
        if not rows:
            return
        for row in rows:
            self._in_flight.pop(row.id, None)
            self.outstanding.one_less(row.enrollment_id, retry=True)
        self.ctx.ledger.give_back([row.id or 0 for row in rows])
        self.ctx.checkpoint()
