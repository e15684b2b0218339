"""An in-memory transport that records what it got and can be told to fail (for tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from funnel.errors import TransportError
from funnel.transports.base import OutgoingEmail, SendResult


class MemoryTransport:
    """Keeps every email in `sent`; `fail_with(fn)` decides per email whether to raise."""

    name = "memory"

    def __init__(self, concurrency: int = 4) -> None:
        self.concurrency = concurrency
        self.sent: list[OutgoingEmail] = []
        self._lock = threading.Lock()
        self._fail: Callable[[OutgoingEmail], TransportError | None] | None = None

    def fail_with(self, decide: Callable[[OutgoingEmail], TransportError | None] | None) -> None:
        self._fail = decide

    def send(self, email: OutgoingEmail) -> SendResult:
        if self._fail is not None:
            error = self._fail(email)
            if error is not None:
                raise error
        with self._lock:
            self.sent.append(email)
            return SendResult(message_id=f"memory-{len(self.sent)}")

    def close(self) -> None:
        return None
