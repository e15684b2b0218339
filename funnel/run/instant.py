"""Sending from `funnel serve` at once, through the same ledger as `funnel run`.

When she confirms a form post, the sequence's due transactional step (e.g. "your
message arrived") goes out at once instead of at the next cron run. The serve process
is a run of its own, with a `runs` row and a liveness lock, and follows exactly a
run's discipline (`funnel.store.ledger`): claim, commit, render, hand over, commit,
send, record. Only transactional steps the schedule says are due now are sent; all
else, retries included, is left to `funnel run`. Requests run on the serve's sender
threads, never on the event loop. The details: docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel import schedule
from funnel.changes import introduced_steps
from funnel.config import Config
from funnel.errors import ConfigError, TemplateError, TransportError
from funnel.mail.compose import compose
from funnel.mail.render import MissingData, Renderer
from funnel.mail.unsubscribe import Tokens, secret_key
from funnel.run.decide import contact_state, enrollment_state, tags_of
from funnel.store.ledger import Ledger, StepRow, Wanted
from funnel.store.models import Contact, Enrollment, Run, new_token_key
from funnel.store.workers import RunKeeper, liveness_file
from funnel.transports import make_transport
from funnel.transports.base import OutgoingEmail, Transport

log = logging.getLogger("funnel.run.instant")

#: attempts at one request (429/5xx/timeouts) before the step is left, failed and retryable, to `funnel run`
_ATTEMPTS = 3


class ServeSender:
    """The serve process as a sender: its run identity, transport and renderer, made on first use.

    Thread-safe: the serve's sender threads share it.
    """

    def __init__(self, config: Config, engine: Engine, transport: Transport | None = None) -> None:
        self.config = config
        self.engine = engine
        self._transport = transport
        self._renderer: Renderer | None = None
        self._run_id: int | None = None
        self._keeper = RunKeeper(engine)
        self._file_lock: Any = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- identity

    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = make_transport(self.config)
            return self._transport

    def run_id(self) -> int:
        """This serve's run id: a `runs` row (never finished: it is not a cron run) and its liveness lock."""
        with self._lock:
            if self._run_id is None:
                wall = datetime.now(UTC)
                with Session(self.engine, expire_on_commit=False) as session:
                    row = Run(
                        started_at=wall,
                        clock=wall,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        config_fingerprint=self.config.fingerprint,
                        summary={"serve": 1},
                    )
                    session.add(row)
                    session.commit()
                    assert row.id is not None
                    run_id = row.id
                self._hold(run_id)  # before anything is claimed under this id
                self._run_id = run_id
            return self._run_id

    def _hold(self, run_id: int) -> None:
        if self.engine.dialect.name == "postgresql":
            self._keeper.hold(run_id)
            return
        path = liveness_file(self.engine, run_id)
        if path is None:
            return
        from filelock import FileLock

        lock = FileLock(str(path), timeout=0)
        lock.acquire()
        self._file_lock = lock

    def renderer(self) -> Renderer:
        with self._lock:
            if self._renderer is None:
                self._renderer = Renderer(self.config)
            return self._renderer

    def close(self) -> None:
        """After the last send: let the liveness lock go (rows are all recorded by now)."""
        self._keeper.release()
        if self._file_lock is not None:
            self._file_lock.release()
            path = Path(self._file_lock.lock_file)
            self._file_lock = None
            path.unlink(missing_ok=True)
        if self._transport is not None:
            self._transport.close()

    # ----------------------------------------------------------------- sending

    def send_due_transactional(self, enrollment_ids: tuple[int, ...] | list[int], now: datetime) -> int:
        """Send the transactional steps of these enrollments that are due now; how many went out."""
        if not enrollment_ids:
            return 0
        try:
            transport = self.transport()
            renderer = self.renderer()
        except (ConfigError, TemplateError) as exc:
            log.warning("funnel serve cannot send (%s): the next `funnel run` sends it", _first_line(exc))
            return 0
        run_id = self.run_id()
        session = Session(self.engine, expire_on_commit=False)
        try:
            ledger = Ledger(session, run_id, now, transport.name)
            claimed = self._claim(session, ledger, list(enrollment_ids), now)
            session.commit()  # claims are durable before anything else happens to them
            untouched = {row.id for *_, row in claimed}
            sent = 0
            try:
                for contact, enrollment, step, row in claimed:
                    sent += self._deliver(
                        session, ledger, transport, renderer, contact, enrollment, step, row, now, untouched
                    )
            finally:
                if untouched:
                    self._give_back(run_id, now, transport.name, sorted(untouched))
            return sent
        finally:
            session.close()

    def _give_back(self, run_id: int, now: datetime, transport_name: str, ids: list[int]) -> None:
        """Stopped on an error (the database lost, a bug): steps claimed but never handed over go back.

        As a run does (`funnel.run.handover`): the serve lives on and holds its
        liveness lock, so no run would take them from it, and they would wait,
        unsent, until the serve restarts. Their requests never started, so
        this is safe; one whose request started stays in hand (`unknown` later).
        """
        try:
            # a session of its own: the one that failed may have lost its connection
            with Session(self.engine) as session:
                Ledger(session, run_id, now, transport_name).give_back(ids)
                session.commit()
        except Exception as exc:  # noqa: BLE001  # the error under way is the one to report
            log.warning("funnel serve could not give back %d unsent steps (%s)", len(ids), _first_line(exc))

    def _claim(
        self, session: Session, ledger: Ledger, ids: list[int], now: datetime
    ) -> list[tuple[Contact, Enrollment, Any, StepRow]]:
        enrollments = list(
            session.scalars(select(Enrollment).where(col(Enrollment.id).in_(ids), col(Enrollment.status) == "active"))
        )
        if not enrollments:
            return []
        contact_ids = sorted({e.contact_id for e in enrollments})
        contacts = {c.id: c for c in session.scalars(select(Contact).where(col(Contact.id).in_(contact_ids)))}
        tags = tags_of(session, contact_ids)
        recorded = ledger.rows_of([e.id or 0 for e in enrollments])
        introduced = introduced_steps(session, self.config, now, write=False)
        wanted: list[tuple[Contact, Enrollment, Any, datetime]] = []
        for enrollment in enrollments:
            sequence = self.config.sequences.get(enrollment.sequence)
            contact = contacts.get(enrollment.contact_id)
            if sequence is None or contact is None or contact.email is None:
                continue
            rows = recorded.get(enrollment.id or 0, {})
            try:
                evaluation = schedule.evaluate(
                    sequence,
                    enrollment_state(enrollment, rows, introduced),
                    contact_state(self.config, contact, tags.get(contact.id or 0, ())),
                    now,
                    self.config.delivery,
                )
            except (OverflowError, ValueError, OSError):
                continue  # the run decides, and says why
            if evaluation.exit_reason:
                continue
            for send in evaluation.sends:
                # a failed step is retried by the run (with its backoff), not here
                if send.step.transactional and send.step.id not in rows:
                    wanted.append((contact, enrollment, send.step, send.due_at))
        taken = ledger.claim_new(
            [
                Wanted(enrollment.id or 0, enrollment.sequence, step.id, True, due_at)
                for _c, enrollment, step, due_at in wanted
            ]
        )
        return [
            (contact, enrollment, step, row)
            for (contact, enrollment, step, _due), row in zip(wanted, taken, strict=True)
            if row is not None
        ]

    def _deliver(
        self,
        session: Session,
        ledger: Ledger,
        transport: Transport,
        renderer: Renderer,
        contact: Contact,
        enrollment: Enrollment,
        step: Any,
        row: StepRow,
        now: datetime,
        untouched: set[int],
    ) -> int:
        """Render, hand over, send and record one claimed step (the run's order, one email).

        `untouched` loses the row once it is settled or its request may start.
        """
        try:
            email = self._compose(session, renderer, contact, enrollment, step, row, now)
        except MissingData as exc:
            ledger.unsent(row.id, "skipped", exc.reason)
            session.commit()
            untouched.discard(row.id)
            return 0
        except (TemplateError, OverflowError, ValueError) as exc:
            ledger.unsent(row.id, "failed", f"template error: {exc}")
            session.commit()
            untouched.discard(row.id)
            return 0
        handed = ledger.hand_over([(row.id, contact.id or 0)])
        session.commit()  # `sending` before the request starts: a kill now leaves it unknown
        untouched.discard(row.id)  # from here on its request may start: never given back
        if row.id not in handed.handed:
            return 0  # suppressed meanwhile (recorded as skipped), or no longer ours
        outcome: dict[str, Any] = {"id": row.id, "retryable": False, "sent_at": None, "message_id": None}
        attempts = 0
        try:
            for attempt in range(1, _ATTEMPTS + 1):
                attempts = attempt
                try:
                    result = transport.send(email)
                    break
                except TransportError as exc:
                    wait = exc.retry_after if exc.retry_after is not None else 0.25 * 2**attempt
                    if not exc.retryable or exc.fatal or attempt == _ATTEMPTS or wait > 5:
                        raise
                    time.sleep(wait)
            outcome.update(status="sent", reason=None, sent_at=now, message_id=result.message_id)
        except TransportError as exc:
            outcome.update(status="failed", reason=str(exc), retryable=exc.retryable and not exc.fatal)
        except Exception as exc:  # noqa: BLE001  # a bug in a transport must not lose the record
            outcome.update(status="failed", reason=f"unexpected {exc.__class__.__name__}: {exc}", retryable=True)
        outcome["attempts"] = attempts
        ledger.record([outcome])
        session.commit()
        return 1 if outcome["status"] == "sent" else 0

    def _compose(
        self,
        session: Session,
        renderer: Renderer,
        contact: Contact,
        enrollment: Enrollment,
        step: Any,
        row: StepRow,
        now: datetime,
    ) -> OutgoingEmail:
        """The email exactly as a run writes it (`funnel.mail.compose`)."""
        key = secret_key(session)
        renderer.sign_links_with(key)  # made before a session could read the key
        if contact.token_key is None:  # a row written by other means than funnel's: give it one now
            contact.token_key = new_token_key()
            session.add(contact)
        return compose(self.config, renderer, Tokens(key), contact, enrollment, step, row.send_id or "", now)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
