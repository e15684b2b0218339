"""Sending claimed emails in parallel, with retries, while the main thread goes on.

The main thread claims, renders and records; a small thread pool only calls
`transport.send`. Each job retries 429/5xx/timeouts with exponential backoff
and jitter (tenacity), honouring the provider's Retry-After, a bounded number
of times; a 429 also pauses every worker until the hinted moment so the whole
run slows down instead of hammering the API. A fatal error (bad API key) or
a stop request (SIGTERM) stops the dispatcher: jobs not yet started are
released untouched, requests under way finish and are recorded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from funnel.errors import TransportError, TransportSkipped
from funnel.transports.base import OutgoingEmail, SendResult, Transport

#: longest Retry-After a run waits for; longer hints leave the email for the next run
RETRY_AFTER_CAP = 30.0


@dataclass(frozen=True)
class Job:
    """One claimed email: the row to record into and what to send."""

    step_run_id: int
    enrollment_id: int
    email: OutgoingEmail
    #: whose email it is: suppression is read again right before the hand-over
    contact_id: int = 0


@dataclass(frozen=True)
class Outcome:
    job: Job
    #: sent | failed | released (never attempted: the run stopped first) |
    #: withheld (the person was suppressed by the moment her request would start: `reason`)
    status: str
    result: SendResult | None = None
    error: TransportError | None = None
    attempts: int = 0
    reason: str | None = None


class Dispatcher:
    """A bounded pipeline of sends; `collect` hands back finished outcomes."""

    def __init__(
        self,
        transport: Transport,
        *,
        max_attempts: int = 4,
        backoff_initial: float = 0.25,
        backoff_max: float = 8.0,
        in_flight: int = 0,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        suppressed: Callable[[int], str | None] | None = None,
    ) -> None:
        self.transport = transport
        #: contact id -> why no mail may go to her now (None: send); asked right before each request
        self._suppressed = suppressed
        self.limit = max(max(1, transport.concurrency) * 4, in_flight)
        self._pool = ThreadPoolExecutor(max_workers=max(1, transport.concurrency), thread_name_prefix="send")
        self._done: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
        self._in_flight = 0
        #: outcomes finished (by the sender threads) and taken (by the main thread), for `wait_for`
        self._room = threading.Condition()
        self._done_count = 0
        self._taken_count = 0
        self._wake_at = 0
        self._halt = threading.Event()  # set by a fatal error or by close()
        self._requested = stop or threading.Event()  # set from outside (SIGTERM)
        self._pause_lock = threading.Lock()
        self._pause_until = 0.0
        self._sleep = sleep
        self.fatal: TransportError | None = None
        self._max_attempts = max_attempts
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max

    # ----------------------------------------------------------------- main thread

    @property
    def stopped(self) -> bool:
        return self._halt.is_set() or self._requested.is_set()

    def submit(self, job: Job) -> list[Outcome]:
        """Queue a job; when the pipeline is full, wait for some and return them."""
        done: list[Outcome] = []
        while self._in_flight >= self.limit:
            done.extend(self._take(block=True))
        future = self._pool.submit(self._run, job)
        self._in_flight += 1
        future.add_done_callback(self._finished)
        return done

    def _finished(self, future: Future[Outcome]) -> None:
        """(Sender thread.) Queue the outcome; wake the main thread only once what it waits for is done."""
        self._done.put(future)
        with self._room:
            self._done_count += 1
            if self._done_count >= self._wake_at:
                self._room.notify()

    @property
    def in_flight(self) -> int:
        """Jobs submitted whose outcome has not been taken back yet."""
        return self._in_flight

    def wait_for(self, count: int) -> list[Outcome]:
        """Wait until `count` more jobs in flight have finished (all of them, if fewer are in flight).

        The main thread sleeps until then instead of waking for each outcome:
        with the transport's threads busy, every needless wake-up is a switch
        of threads (and of the GIL) that costs CPU on every email.
        """
        count = min(count, self._in_flight)
        with self._room:
            self._wake_at = self._taken_count + count
            while self._done_count < self._wake_at:
                self._room.wait()
            self._wake_at = 0
        return self._take(block=False)

    def collect(self) -> list[Outcome]:
        """Outcomes finished so far, without waiting."""
        return self._take(block=False)

    def finish(self) -> list[Outcome]:
        """Wait for everything in flight."""
        outcomes: list[Outcome] = []
        while self._in_flight:
            outcomes.extend(self._take(block=True))
        return outcomes

    def _take(self, *, block: bool) -> list[Outcome]:
        """Finished outcomes from the completion queue (O(1) each, whatever is in flight)."""
        finished: list[Future[Outcome]] = []
        if block and self._in_flight:
            finished.append(self._done.get())
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._in_flight -= len(finished)
        self._taken_count += len(finished)
        return [future.result() for future in finished]

    def close(self) -> None:
        self._halt.set()
        self._pool.shutdown(wait=True, cancel_futures=False)

    # ----------------------------------------------------------------- workers

    def _run(self, job: Job) -> Outcome:
        if self.stopped:
            return Outcome(job, "released")
        attempts = 0

        def attempt() -> SendResult:
            nonlocal attempts
            self._wait_for_pause()
            if self.stopped:
                raise _Released()
            reason = self._suppressed(job.contact_id) if self._suppressed else None
            if reason:
                raise _Withheld(reason)
            attempts += 1
            return self.transport.send(job.email)

        try:
            try:
                result = attempt()  # the first try needs none of the retry machinery (and is most of them)
            except TransportError as error:
                if not _worth_retrying(error) or self._max_attempts < 2:
                    raise
                self._sleep(self._delay(error, attempt_number=1))
                from tenacity import Retrying, retry_if_exception, stop_after_attempt  # (and asyncio): only on a retry

                retrying = Retrying(
                    stop=stop_after_attempt(self._max_attempts - 1),
                    wait=self._wait_strategy,
                    retry=retry_if_exception(_worth_retrying),
                    sleep=self._sleep,
                    reraise=True,
                )
                result = retrying(attempt)
        except _Released:
            return Outcome(job, "released", attempts=attempts)
        except _Withheld as withheld:
            return Outcome(job, "withheld", attempts=attempts, reason=withheld.reason)
        except TransportSkipped as skipped:  # refused on purpose (a reserved domain): a skip with its reason
            return Outcome(job, "withheld", attempts=attempts, reason=str(skipped))
        except TransportError as error:
            if error.fatal:
                self.fatal = self.fatal or error
                self._halt.set()
                return Outcome(job, "released", error=error, attempts=attempts)
            return Outcome(job, "failed", error=error, attempts=attempts)
        except Exception as error:  # a bug in a transport must not lose the record
            wrapped = TransportError(f"unexpected {error.__class__.__name__}: {error}", retryable=True)
            return Outcome(job, "failed", error=wrapped, attempts=attempts)
        return Outcome(job, "sent", result=result, attempts=attempts)

    def _wait_strategy(self, state: Any) -> float:
        """Tenacity's wait after its n-th attempt, which is the job's (n + 1)-th (the first ran before)."""
        error = state.outcome.exception() if state.outcome else None
        return self._delay(error, attempt_number=state.attempt_number + 1)

    def _delay(self, error: BaseException | None, *, attempt_number: int) -> float:
        """How long to wait after the `attempt_number`-th failed attempt: the provider's
        Retry-After (which also pauses every sender), else exponential backoff with jitter."""
        if isinstance(error, TransportError) and error.retry_after is not None:
            delay = min(error.retry_after, RETRY_AFTER_CAP)
            with self._pause_lock:
                self._pause_until = max(self._pause_until, time.monotonic() + delay)
            return delay
        from tenacity import wait_exponential_jitter

        backoff = wait_exponential_jitter(multiplier=self._backoff_initial, max=self._backoff_max)
        return float(backoff(cast(Any, _Attempt(attempt_number))))

    def _wait_for_pause(self) -> None:
        with self._pause_lock:
            remaining = self._pause_until - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)


@dataclass(frozen=True)
class _Attempt:
    """What tenacity's wait strategies read of a retry state: which attempt just failed."""

    attempt_number: int


class _Released(Exception):
    """The run stopped before this job's request went out."""


class _Withheld(Exception):
    """The person was suppressed (unsubscribed, erased, bounced) before her request went out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _worth_retrying(error: BaseException) -> bool:
    if not isinstance(error, TransportError) or not error.retryable or error.fatal:
        return False
    # a hint longer than we are willing to wait: leave it for the next run
    return error.retry_after is None or error.retry_after <= RETRY_AFTER_CAP
