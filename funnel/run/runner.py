"""`funnel run`: read sources, enroll, send what is due, record every outcome.

Each stage lives in a module of its own: reading sources (`funnel.run.read`),
deciding a page (`funnel.run.decide`), claiming, handing over and recording
(`funnel.run.handover`), finishing and starting the next sequence
(`funnel.run.finish`); they share a `funnel.run.state.RunContext`. This module only
puts them in order; the order, and why, is in docs/architecture.md ("The order of one
run").
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.collector import fewer_collections
from funnel.config import Config
from funnel.errors import ConfigError, TemplateError
from funnel.mail.render import Renderer
from funnel.mail.unsubscribe import Tokens, secret_key
from funnel.preferences import resume_finished_pauses
from funnel.run.decide import Claim, Decider, due_page
from funnel.run.finish import Outstanding
from funnel.run.handover import Delivery, Ready
from funnel.run.read import problem_lines, read_sources
from funnel.run.state import RunContext, RunSummary
from funnel.store.db import put_setting
from funnel.store.ledger import UNKNOWN_REASON, Ledger
from funnel.store.models import Enrollment, Run, Setting
from funnel.store.workers import SHARED_PAGE, RunKeeper, ingest_turn, lock_due_page, shares_work
from funnel.transports.base import OutgoingEmail, SendResult, Transport
from funnel.webinar.moves import apply_session_changes, remember_sessions, removed_sessions
from funnel.webinar.notices import due_notices

PAGE = 400
__all__ = ["PAGE", "UNKNOWN_REASON", "RunSummary", "Runner", "problem_lines"]


class _NullTransport(Transport):
    """Stands in for the real transport in `--dry-run`: sends nothing."""

    name = "dry-run"
    concurrency = 1

    def send(self, email: OutgoingEmail) -> SendResult:
        return SendResult(message_id=None)

    def close(self) -> None:
        return None


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
        self.ctx = RunContext(config, engine, self.session, now, self.summary, dry_run)
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
        self.renderer.sign_links_with(key)  # discreet readers' neutral links (`funnel.mail.jump`)
        self.run_row: Run | None = None
        #: holds "this run is alive" for other workers' recovery (PostgreSQL)
        self.keeper = RunKeeper(engine)
        self.outstanding = Outstanding(self.ctx)
        self.delivery = Delivery(self.ctx, self.transport, self.renderer, self.tokens, self.outstanding, self.stop)

    def checkpoint(self) -> None:
        """Make what was done durable (a dry run only flushes, and rolls back at the end)."""
        self.ctx.checkpoint()

    # ----------------------------------------------------------------- the run

    def run(self) -> RunSummary:
        with fewer_collections():
            return self._run()

    def _run(self) -> RunSummary:
        started = time.monotonic()
        try:
            with self.transport:
                self._start()
                if not self.dry_run:
                    self._recover()
                self._read()
                if not self.dry_run:
                    # "pause for a month" on the unsubscribe page: a month later she gets mail again
                    resume_finished_pauses(self.session, self.now)
                    self.checkpoint()
                self._send_notices()
                self.delivery.send([], self._due_pages())
                self._finish_run()
        finally:
            if self.dry_run:
                self.session.rollback()
            self.session.close()
            self.keeper.release()  # after the last commit: nothing of this run is in hand any more
        self.summary.seconds = round(time.monotonic() - started, 3)
        return self.summary

    def _start(self) -> None:
        self.run_row = Run(
            started_at=datetime.now(UTC),
            clock=self.now,
            host=socket.gethostname(),
            pid=os.getpid(),
            config_fingerprint=self.config.fingerprint,
        )
        self.session.add(self.run_row)
        introduced = introduced_steps(self.session, self.config, self.now, write=True)
        self.checkpoint()
        assert self.run_row.id is not None
        if not self.dry_run:
            self.keeper.hold(self.run_row.id)  # before this run claims anything
        self.ctx.ledger = Ledger(self.session, self.run_row.id, self.now, self.transport.name)
        self.decider = Decider(self.ctx, self.outstanding, introduced)

    def _recover(self) -> None:
        """Settle what a run that died left in hand (see `funnel.store.ledger`)."""
        found = self.ctx.ledger.recover()
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

    def _read(self) -> None:
        """Wake everyone if sequences.yaml changed, then read the sources (one worker at a time)."""
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
                read_sources(self.ctx)

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
        """Send the letters that answer a session's move or cancellation (`funnel.webinar.notices`), before the rest.

        In a round of their own, so that their outcomes never count towards an
        enrollment's pending steps of the ordinary round.
        """
        found = due_notices(self.session, self.config, self.now)
        if not found or self.stop.is_set():
            return
        claims = [
            Claim(
                n.contact,
                n.enrollment,
                self.config.sequences[n.enrollment.sequence],
                schedule.Send(n.step, self.now),
                n.row,
                key=n.key,
            )
            for n in found
        ]
        ready = self.delivery.claim(claims)
        self.checkpoint()
        self.delivery.send(ready, iter(()))

    def _due_pages(self) -> Iterator[list[Ready]]:
        """Decide and claim the due enrollments page by page; each page's claims, durable before any hand-over."""
        total = self.session.execute(
            select(func.count()).where(
                and_(col(Enrollment.status) == "active", col(Enrollment.next_due_at) <= self.now)
            )
        ).scalar_one()
        # PostgreSQL workers take small pages, so that several share the due emails evenly
        size = SHARED_PAGE if shares_work(self.engine) else PAGE
        done = last_id = 0
        while True:
            statement = lock_due_page(due_page(self.now, last_id, size), self.engine)
            page = list(self.session.scalars(statement.execution_options(populate_existing=True)))
            if not page:
                return
            last_id = page[-1].id or last_id
            ready = self.delivery.claim(self.decider.page(page))
            self.checkpoint()  # claims are durable before any of them is handed over
            done += len(page)
            if self.progress:
                self.progress(done, max(total, done))
            yield ready

    def _finish_run(self) -> None:
        assert self.run_row is not None
        counts = Counter({k: v for k, v in self.summary.as_dict().items() if isinstance(v, int)})
        self.run_row.finished_at = datetime.now(UTC)
        self.run_row.summary = dict(counts)
        self.run_row.config_timing = self.config.timing_snapshot()
        put_setting(self.session, "config_fingerprint", self.config.fingerprint)
        self.checkpoint()
