"""Telling the practice when mail stops: alert emails and the heartbeat (spec 10).

A refused file or a typo in sequences.yaml used to stop all mail, the hour-before
reminders included, and the only signal was cron's mail, which on a typical server
goes nowhere. Now `funnel run` emails `alerts.email` once per new problem and at most
once a day per problem (docs/decisions.md, "Alerts"), through the outbox when the
transport is the problem, and asks `alerts.heartbeat_url` after each run. The alert
settings are remembered in the database for the run whose config cannot be read.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from funnel.config import Config
from funnel.store.db import put_setting
from funnel.store.models import Setting
from funnel.transports.base import Address, OutgoingEmail, Transport

#: how often one problem may be told about
ONCE_PER = timedelta(days=1)
#: seconds the heartbeat may take: a monitor that hangs must not hold up the next run
HEARTBEAT_TIMEOUT = 10.0
ALERT_EMAIL_VARIABLE = "FUNNEL_ALERT_EMAIL"
#: the setting that keeps the last good config's alert settings (for a run whose config cannot be read)
LAST_GOOD_SETTING = "alerts_last_good"
_STATE_PREFIX = "alert:"
_SIGNATURE = "Sent by funnel, the practice's mail program (one email a day at most per problem)."

__all__ = ["Problem", "after_config_failure", "after_run", "problems_of_run", "settings_problem"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong, told about once a day at most: `key` says which thing it is."""

    key: str
    subject: str
    text: str
    #: the configured transport is the problem: write the alert to the outbox instead
    via_outbox: bool = False


# --------------------------------------------------------------------------- the problems, in words


def config_problem(message: str, path: Path) -> Problem:
    return Problem(
        "config-unreadable",
        "No email is going out: sequences.yaml cannot be read",
        f"funnel could not read its settings file, {path}, so this run sent nothing: no letters, "
        f"no reminders, until it is fixed.\n\nWhat it said:\n  {message}\n\n"
        "What to do: open the file at that line and fix it (a missing space after a colon, a tab "
        "instead of spaces, text with a colon that needs quotes), then run `funnel check` in the "
        "practice folder. When it says OK, the next run sends what is due.",
    )


def settings_problem(message: str) -> Problem:
    return Problem(
        "transport-settings",
        "No email is going out: the mail settings are incomplete",
        f"funnel cannot start sending, so this run sent nothing.\n\nWhat it said:\n  {message}\n\n"
        "What to do: put the missing setting in the .env file beside sequences.yaml (one KEY=value "
        "per line, comments on their own lines), then run `funnel doctor`.",
        via_outbox=True,
    )


def problems_of_run(summary: Any) -> list[Problem]:
    """What in a run's summary the practice must hear about."""
    found: list[Problem] = []
    if summary.fatal_status in (401, 403):
        found.append(
            Problem(
                "transport-key",
                "No email is going out: SendGrid refused the API key",
                f"SendGrid answered {summary.fatal_status} to funnel's API key, so the run stopped; "
                "nothing more goes out until the key is fixed (the emails due wait, and go out on the "
                "first run after).\n\nWhat to do: in SendGrid, Settings > API Keys, make a key with the "
                '"Mail Send" permission, put it in the .env file beside sequences.yaml as '
                "SENDGRID_API_KEY=..., then run `funnel doctor`.",
                via_outbox=True,
            )
        )
    for name, source in sorted(summary.sources.items()):
        if source.get("status") == "error":
            found.append(
                Problem(
                    f"source-refused:{name}",
                    f"A signups file was refused: {source.get('path', name)}",
                    f"funnel could not read the file of source {name!r}, so nobody in it was added "
                    f"and no one new from it gets letters.\n\nWhat it said:\n  {source.get('problem', '')}\n\n"
                    "What to do: export the file again from the platform (CSV, UTF-8) with the columns "
                    "sequences.yaml names for this source, put it in place, and run `funnel import "
                    f"{name} FILE` to see at once whether it reads.",
                )
            )
    if summary.failed:
        reasons = sorted({f["reason"] for f in summary.failures})[:3]
        found.append(
            Problem(
                "sends-failed",
                f"{summary.failed} email(s) could not be sent",
                f"In this run {summary.failed} email(s) failed. The reasons given:\n"
                + "".join(f"  - {r}\n" for r in reasons)
                + "\nWhat to do: `funnel report` counts the failures per letter; `funnel run --verbose` "
                "or `funnel contacts show ADDRESS` names whose they were and why. A wrong address is "
                "fixed in the next export; anything else, check with `funnel doctor`.",
            )
        )
    if summary.unknown:
        found.append(
            Problem(
                "sends-unknown",
                f"{summary.unknown} email(s) may or may not have gone out",
                f"{summary.unknown} email(s) were being handed to the mail service when an earlier run "
                "was stopped (a restart, a power cut, a killed process). funnel cannot know whether "
                "they left, so it will not send them again.\n\nWhat to do: look for them in SendGrid's "
                "Activity feed; `funnel report` shows them as unknown. If runs are being stopped "
                "often, check the server's timer or cron line and that the machine is not out of memory.",
            )
        )
    return found


# --------------------------------------------------------------------------- after a run


def after_run(config: Config, engine: Engine, summary: Any, now: datetime) -> list[str]:
    """Tell about this run's problems (throttled), ping the heartbeat; warnings for stderr."""
    problems = problems_of_run(summary)
    warnings: list[str] = []
    with Session(engine) as session:
        _remember(session, config)
        target = _Target.of_config(config)
        warnings += _tell(session, target, problems, now)
        session.commit()
    warnings += _ping(config.alerts.heartbeat_url, ok=not problems and summary.ok)
    return warnings


def after_problem(config: Config, problem: Problem, now: datetime) -> list[str]:
    """A run that could not start (its transport's settings): tell, ping /fail.

    A database that does not exist yet is not made for it: a run that cannot
    start makes nothing (the once-a-day state needs one, so the first run must
    have got that far).
    """
    engine = _existing_engine(config.folder)
    warnings: list[str] = []
    if engine is not None:
        try:
            with Session(engine) as session:
                _remember(session, config)
                warnings = _tell(session, _Target.of_config(config), [problem], now)
                session.commit()
        finally:
            engine.dispose()
    return warnings + _ping(config.alerts.heartbeat_url, ok=False)


def _existing_engine(folder: Path, *, make: bool = False) -> Engine | None:
    """The database's engine, unless it is a SQLite file not made yet (and `make` is false), or fails to open."""
    from funnel.store.db import database_url, make_engine

    url = database_url(folder)
    if not make and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    try:
        return make_engine(url)
    except Exception:  # the database is the second problem; the first one is already on stderr
        return None


def after_config_failure(explicit_config: str | os.PathLike[str] | None, message: str, now: datetime) -> list[str]:
    """A run whose sequences.yaml cannot be read: tell whom the last good config named (or FUNNEL_ALERT_EMAIL)."""
    from funnel.config import config_path

    path = config_path(explicit_config)
    # nobody named yet (never ran, no FUNNEL_ALERT_EMAIL): make no database just to find nobody in it;
    # with an address, the database keeps the once-a-day state, so it is made even in a fresh folder
    engine = _existing_engine(path.parent, make=bool(os.environ.get(ALERT_EMAIL_VARIABLE, "").strip()))
    if engine is None:
        return []
    try:
        with Session(engine) as session:
            stored = session.get(Setting, LAST_GOOD_SETTING)
            remembered: dict[str, Any] = json.loads(stored.value) if stored else {}
            target = _Target.remembered(remembered, path.parent)
            warnings = _tell(session, target, [config_problem(message, path)], now)
            session.commit()
    finally:
        engine.dispose()
    return warnings + _ping(remembered.get("heartbeat_url"), ok=False)


# --------------------------------------------------------------------------- how


@dataclass(frozen=True)
class _Target:
    """Where an alert goes and how: the address, the sender, the transport and the outbox folder."""

    to: str | None
    sender: Address
    transport: str
    outbox: Path

    @classmethod
    def of_config(cls, config: Config) -> _Target:
        from funnel.transports import transport_name

        try:
            name = transport_name(config)
        except Exception:
            name = "outbox"
        return cls(
            os.environ.get(ALERT_EMAIL_VARIABLE, "").strip() or config.alerts.email,
            Address(config.practice.from_email, config.practice.from_name or config.practice.name),
            name,
            config.resolve(config.delivery.outbox_dir),
        )

    @classmethod
    def remembered(cls, stored: dict[str, Any], folder: Path) -> _Target:
        return cls(
            os.environ.get(ALERT_EMAIL_VARIABLE, "").strip() or stored.get("email"),
            Address(stored.get("from_email") or "funnel@localhost", stored.get("from_name")),
            stored.get("transport") or os.environ.get("FUNNEL_TRANSPORT", "").strip().lower() or "outbox",
            Path(stored.get("outbox") or folder / "outbox"),
        )


def _remember(session: Session, config: Config) -> None:
    """Keep this (good) config's alert settings for a run that cannot read its config."""
    target = _Target.of_config(config)
    value = json.dumps(
        {
            "email": config.alerts.email,
            "heartbeat_url": config.alerts.heartbeat_url,
            "from_email": target.sender.email,
            "from_name": target.sender.name,
            "transport": target.transport,
            "outbox": str(target.outbox),
        },
        sort_keys=True,
    )
    stored = session.get(Setting, LAST_GOOD_SETTING)
    if stored is None or stored.value != value:
        put_setting(session, LAST_GOOD_SETTING, value)


def _tell(session: Session, target: _Target, problems: list[Problem], now: datetime) -> list[str]:
    """Send each problem not told about in the last day; mark it told once it left."""
    if not target.to or not problems:
        return []
    warnings: list[str] = []
    for problem in problems:
        key = _STATE_PREFIX + problem.key
        stored = session.get(Setting, key)
        if stored is not None and now - datetime.fromisoformat(stored.value) < ONCE_PER:
            continue
        try:
            _send(target, problem, now)
        except Exception as exc:
            warnings.append(f"the alert about {problem.key!r} could not be sent ({exc}); it is tried again next run")
            continue
        put_setting(session, key, now.isoformat())
    return warnings


def _send(target: _Target, problem: Problem, now: datetime) -> None:
    """One alert through a transport of its own (the run's has been closed): SendGrid, or the outbox."""
    assert target.to is not None
    email = OutgoingEmail(
        send_id=uuid.uuid4().hex,
        sender=target.sender,
        to=Address(target.to),
        subject=problem.subject,
        text=problem.text
        + "\n\n-- \nSent by funnel, the practice's mail program (one email a day at most per problem).\n",
        html=None,
        headers=(),
        date=now,
        sequence="alert",
        step=problem.key.split(":", 1)[0],
    )
    use: Transport | None = None
    if not problem.via_outbox and target.transport == "sendgrid":
        from funnel.errors import ConfigError
        from funnel.sendgrid.send import SendGridTransport
        from funnel.transports import sendgrid_settings

        try:
            key, host = sendgrid_settings()
            use = SendGridTransport(key, host=host, timeout=HEARTBEAT_TIMEOUT, concurrency=1)
        except ConfigError:
            use = None
    if use is None:
        from funnel.transports.outbox import OutboxTransport

        use = OutboxTransport(target.outbox)
    try:
        use.send(email)
    finally:
        use.close()


def _ping(url: str | None, *, ok: bool) -> list[str]:
    """GET the heartbeat (`/fail` after a bad run); a warning when it cannot be reached."""
    if not url:
        return []
    target = url if ok else f"{url}/fail"
    try:
        with urllib.request.urlopen(urllib.request.Request(target, method="GET"), timeout=HEARTBEAT_TIMEOUT) as answer:
            answer.read(1024)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return [f"the heartbeat at alerts.heartbeat_url could not be reached ({reason}); the run itself is unaffected"]
    return []
