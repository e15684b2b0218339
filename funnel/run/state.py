"""What one run carries from stage to stage: its summary and its context.

`RunSummary` is what a run did, as `funnel run` prints it (`--json` prints it
whole). `RunContext` is what every stage of a run works in (the config, the
session, `now`, the ledger of its step rows, the enrollment and contact
columns it changes, the summary) and the one way to make work durable,
`checkpoint`, so that every stage commits the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from funnel.config import Config
from funnel.store.deferred import DeferredWrites
from funnel.store.ledger import Ledger
from funnel.store.models import Enrollment


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
    #: enrollments re-timed to a moved webinar session, and ended by a cancelled one (`funnel.webinar.moves`)
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


@dataclass
class RunContext:
    """The config, session, clock, ledger and pending column writes one run's stages share."""

    config: Config
    engine: Engine
    session: Session
    now: datetime
    summary: RunSummary
    dry_run: bool = False
    #: enrollment and contact columns set this run, written at each checkpoint
    writes: DeferredWrites = field(default_factory=DeferredWrites)
    #: the run's step rows; set once the run has its id
    ledger: Ledger = field(init=False)

    def checkpoint(self) -> None:
        """Make what was done durable (a dry run only flushes, and rolls back at the end)."""
        self.writes.write(self.session)
        if self.dry_run:
            self.session.flush()
        else:
            self.session.commit()

    def end(self, enrollment: Enrollment, status: str, reason: str | None) -> None:
        """Finish or exit an enrollment (written at the next checkpoint)."""
        self.writes.set(enrollment, status=status, end_reason=reason, ended_at=self.now, next_due_at=None)
