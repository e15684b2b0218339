"""The project's own errors: one root, each class says what kind of mistake it is.

The CLI maps them to exit codes (see `funnel.cli`): configuration and usage
mistakes exit 2, failures while running exit 1. Messages are one sentence a
person can act on, naming the file, line, setting or flag to change.
"""

from __future__ import annotations


class FunnelError(Exception):
    """Root of every error funnel raises on purpose."""

    exit_code = 1


class ConfigError(FunnelError):
    """sequences.yaml, a template or the environment is wrong; nothing was done."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class UsageError(FunnelError):
    """A command was called with arguments that cannot work."""

    exit_code = 2


class TemplateError(FunnelError):
    """A template could not be rendered (syntax, undefined variable, missing footer)."""


class SourceError(FunnelError):
    """A signup file could not be read at all (missing, unreadable, no email column)."""


class NotFoundError(FunnelError):
    """The contact, sequence or step named on the command line does not exist."""


class MigrationError(FunnelError):
    """The database was reached but its schema could not be brought up to date."""


class LockedError(FunnelError):
    """Another `funnel run` holds the run lock."""

    exit_code = 75


class TransportError(FunnelError):
    """A transport could not deliver one email.

    `retryable` is true when the same request may succeed later (429, 5xx,
    timeouts, dropped connections); `retry_after` is the provider's hint in
    seconds, when it gave one. `fatal` means no further email can succeed in
    this run (bad API key, missing permission) and the run must stop.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        fatal: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.fatal = fatal
        self.status = status
        self.retry_after = retry_after


class TransportSkipped(TransportError):
    """The transport would not send this email on purpose (an address at a reserved example domain).

    A run records the step as skipped with this reason, not as failed: nothing
    is wrong and nothing is to be tried again.
    """
