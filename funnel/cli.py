"""The `funnel` command line: parse options, call one service, map errors to exit codes.

Exit codes: 0 success; 1 the command ran but something failed (a send, a
check); 2 bad configuration or usage, nothing done; 75 another `funnel run`
holds the lock. Errors are one sentence on stderr; `--debug` shows the
traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import click

from funnel.collector import use_fewer_collections
from funnel.config import Config, environment_problems, load_config
from funnel.errors import ConfigError, FunnelError, UsageError
from funnel.ops.envfile import applied
from funnel.store.private import make_private_dir, write_private
from funnel.timeutil import parse_instant, readable, zone

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 75
#: years `--now` may name (a simulation far outside them is a typo)
EARLIEST_NOW, LATEST_NOW = 2000, 2199
#: C0 and C1 control characters and DEL: never printed raw (a name could move the
#: cursor, hide text or retitle the terminal); shown as \x1b-style escapes instead. Lone surrogates
#: too (JSON's "\ud800", stored by an older release or another program): no terminal or file takes them
#: as UTF-8, and printing one crashed `contacts show --json` and `export` for that person
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def safe(value: object) -> str:
    """Text for the terminal: control characters escaped (tab and newline kept)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def safe_json(text: str) -> str:
    """JSON text with the control characters json.dumps leaves raw written as \\u escapes."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def safe_markup(value: object) -> str:
    """`safe`, and rich markup escaped, for data printed inside a rich markup string or table."""
    from rich.markup import escape

    return escape(safe(value))


# rich is imported where it prints: a quiet run under cron never loads it
def _stdout() -> Console:
    from rich.console import Console

    # off a terminal rich would cut tables at 80 columns; pipes and files get whole lines
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- shared options


def config_option(func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="sequences.yaml to use (default: ./sequences.yaml or $FUNNEL_CONFIG).",
    )(func)


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = parse_instant(value)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{value!r} is not ISO 8601: write e.g. 2026-12-08T00:10:00Z") from None
    if not EARLIEST_NOW <= moment.year <= LATEST_NOW:
        # the schedule adds up to years to it: year 9999 would overflow in the middle of a run
        raise click.BadParameter(
            f"{value!r} is out of range: give a moment between {EARLIEST_NOW} and {LATEST_NOW}, "
            "e.g. 2026-12-08T00:10:00Z"
        )
    return moment


def now_option(func: F) -> F:
    return click.option(
        "--now",
        callback=_parse_now,
        metavar="ISO8601",
        help="Pretend it is this moment (UTC unless an offset is given); default: the real clock.",
    )(func)


def _parse_optional_now(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    return None if value is None else _parse_now(ctx, param, value)


def now_option_optional(func: F) -> F:
    """`--now` for a long-running command: unset means the real clock at each moment, not at start."""
    return click.option(
        "--now",
        callback=_parse_optional_now,
        metavar="ISO8601",
        help="Stamp every request with this fixed moment (for tests); default: the real clock.",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON value for machines.")(func)


def debug_option(func: F) -> F:
    return click.option("--debug", is_flag=True, help="Show tracebacks for errors.")(func)


def _print_json(value: Any) -> None:
    # json escapes C0 controls itself; DEL, C1 and bidi overrides are escaped here (valid JSON either way)
    click.echo(safe_json(json.dumps(value, indent=2, ensure_ascii=False, default=str)))


def _config(path: Path | None) -> Config:
    return load_config(path)


def _engine(config: Config) -> Any:
    """The database engine, closed with the command (open connections would outlive it otherwise)."""
    from funnel.store.db import database_url, make_engine

    engine = make_engine(database_url(config.folder))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(engine.dispose)
    return engine


def handle_errors(func: F) -> F:
    """Apply the env file, then turn FunnelError into one sentence and its exit code (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            # the settings file first, before anything reads a setting (see funnel.ops.envfile)
            with applied(kwargs.get("config_path")):
                return func(*args, **kwargs)
        except FunnelError as exc:
            if debug:
                raise
            problems = getattr(exc, "problems", None) or [str(exc)]
            for problem in problems:
                click.echo(f"funnel: {safe(problem)}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if debug:
                raise
            database = _database_problem(exc)
            if database:
                click.echo(f"funnel: {database}", err=True)
                sys.exit(EXIT_CONFIG)
            from funnel.logsafe import database_message

            # a database's error text quotes the values it failed on (PostgreSQL's DETAIL): not those
            said = database_message(exc) or exc
            click.echo(
                f"funnel: unexpected {exc.__class__.__name__}: {safe(said)} (run again with --debug for details)",
                err=True,
            )
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def _database_problem(exc: BaseException) -> str | None:
    """One sentence for a database that refuses a write, without the SQL; None for anything else."""
    from sqlalchemy.exc import OperationalError

    if not isinstance(exc, OperationalError):
        return None
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "refused"
    if "readonly" in reason or "read-only" in reason:
        return (
            f"the database is read-only ({reason}): make the database file and its folder writable, "
            "or point FUNNEL_DATABASE_URL at a writable one"
        )
    return (
        f"the database refused the command ({reason}): check FUNNEL_DATABASE_URL, the disk and the "
        "file's permissions, then run again"
    )


def common(func: F) -> F:
    return config_option(debug_option(handle_errors(func)))


# --------------------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funnel")
def cli() -> None:
    """Email nurture and webinar-funnel automation for a small therapy practice.

    Run `funnel COMMAND --help` for each command. The usual cycle:
    `funnel check`, `funnel plan`, then `funnel run` from cron.
    """


@cli.command()
@common
@now_option
def check(config_path: Path | None, debug: bool, now: datetime) -> None:
    """Validate sequences.yaml and render every step for a sample contact.

    Prints each problem as `file:line: message`; exits 0 when all is well, 1 otherwise.

    Example: funnel check
    """
    from funnel.mail.preview import check as check_templates

    try:
        config = _config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_FAILED)
    from funnel.mail.preview import example_warnings

    for warning in example_warnings(config):  # warnings only: the exit code stays 0
        click.echo(warning, err=True)
    from funnel.webinar.sessions import session_warnings

    for warning in session_warnings(config, now):  # history, not a mistake: the exit code stays 0
        click.echo(warning, err=True)
    from funnel.webinar.moves import removed_sessions_on_disk

    problems = _second_look(config, environment_problems(config) + check_templates(config, now))
    problems += removed_sessions_on_disk(config, now)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(EXIT_FAILED)
    steps = sum(len(s.steps) for s in config.sequences.values())
    click.echo(
        f"{config.path.name}: OK ({len(config.sequences)} sequences, {steps} steps, {len(config.sources)} sources)"
    )


@cli.command()
@common
@now_option
@json_option
@click.option("--dry-run", is_flag=True, help="Show what would happen; send and store nothing.")
@click.option("--verbose", "-v", is_flag=True, help="Print the summary even when not on a terminal.")
def run(config_path: Path | None, debug: bool, now: datetime, as_json: bool, dry_run: bool, verbose: bool) -> None:
    """The scheduled job: read every file source, enroll, send what is due.

    Safe to run late, twice or concurrently: on SQLite a second run exits 75
    while the first holds the lock; on PostgreSQL runs share the due emails
    (several workers). Quiet under cron unless something needs attention.

    Example (crontab): */15 * * * * cd /srv/funnel && /opt/funnel/.venv/bin/funnel run
    """
    from funnel.ops import alerts
    from funnel.run.runner import Runner
    from funnel.store.db import run_lock
    from funnel.transports import make_transport

    try:
        config = _config(config_path)
    except ConfigError as exc:
        if not dry_run:  # tell alerts.email, as the last good config named it (see funnel.ops.alerts)
            _warn(alerts.after_config_failure(config_path, str(exc), now))
        raise
    try:
        transport = make_transport(config)  # a missing API key stops us before anything is read
    except ConfigError as exc:
        if not dry_run:
            _warn(alerts.after_problem(config, alerts.settings_problem(str(exc)), now))
        raise
    engine = _engine(config)
    interactive = sys.stderr.isatty() and not as_json
    if dry_run:
        summary = Runner(config, engine, transport, now, dry_run=True).run()
    else:
        with run_lock(engine), _stop_gently_on_sigterm() as stop:
            summary = _run_with_progress(config, engine, transport, now, interactive, stop)
    if as_json:
        _print_json(summary.as_dict())
    else:
        _print_summary(summary, interactive or verbose or dry_run)
        if interactive or verbose or dry_run:  # under cron, once at serve's start is enough
            _print_key_notice(engine)
    if summary.stopped:
        click.echo(f"funnel: {summary.stopped}", err=True)
    if not dry_run:
        _warn(alerts.after_run(config, engine, summary, now))
    sys.exit(EXIT_OK if summary.ok and summary.unknown == 0 else EXIT_FAILED)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {safe(warning)}", err=True)


def _print_key_notice(engine: Any) -> None:
    """Say that the generated key still reads the links already sent, once FUNNEL_SECRET_KEY replaced it."""
    from sqlmodel import Session

    from funnel.mail.unsubscribe import key_notice

    with Session(engine) as session:
        notice = key_notice(session)
    if notice:
        click.echo(notice, err=True)


@contextlib.contextmanager
def _stop_gently_on_sigterm() -> Iterator[threading.Event]:
    """Turn SIGTERM (a service manager, `kill`) into a clean stop at the next safe point.

    The run then hands nothing new to the transport, lets the requests under
    way finish, records them and gives back the steps it claimed but had not
    sent; without this, those sends would be reported as unknown by the next
    run. SIGKILL cannot be caught: that case is what the unknown state is for.
    """
    stop = threading.Event()
    try:
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    except ValueError:  # not the main thread (tests calling the CLI in a thread)
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_with_progress(
    config: Config, engine: Any, transport: Any, now: datetime, interactive: bool, stop: threading.Event
) -> Any:
    from funnel.run.runner import Runner

    if not interactive:
        return Runner(config, engine, transport, now, stop=stop).run()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("due"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_stderr(), transient=True
    ) as bar:
        task = bar.add_task("due", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return Runner(config, engine, transport, now, progress=advance, stop=stop).run()


def _print_summary(summary: Any, loud: bool) -> None:
    for problem in summary.problems:
        if loud:
            _stderr().print(f"[yellow]{safe_markup(problem)}[/]", markup=True)
        else:
            click.echo(safe(problem), err=True)
    for warning in summary.warnings:
        click.echo(f"warning: {safe(warning)}", err=True)
    if loud:  # under cron a source that has not arrived yet is no news
        for name, source in summary.sources.items():
            if source.get("status") == "missing":
                click.echo(f"note: {source['path']} not found yet (source {name}); skipped", err=True)
    if not loud and summary.failed == 0:
        return
    out = _stdout()
    prefix = "dry run: would have " if summary.dry_run else ""
    out.print(
        f"{prefix}imported {summary.imported}, rejected {summary.rejected}, enrolled {summary.enrolled}, "
        f"sent {summary.sent}, skipped {summary.skipped}, failed {summary.failed}"
        + (f", unknown {summary.unknown}" if summary.unknown else "")
        + f" ({summary.seconds:.2f}s)"
    )
    if summary.steps:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None)
        for column in ("sequence / step", "sent", "skipped", "failed"):
            table.add_column(column, justify="left" if column.startswith("seq") else "right")
        for key in sorted(summary.steps):
            counts = summary.steps[key]
            table.add_row(key, *(str(counts.get(c, 0)) for c in ("sent", "skipped", "failed")))
        out.print(table)
    if loud:  # addresses only when asked for (--verbose, a terminal): cron mail stays impersonal
        for failure in getattr(summary, "failures", []):
            where = f"{failure['sequence']}/{failure['step']}".rstrip("/")
            click.echo(f"failed: {failure['email']} {where}: {failure['reason']}")


@cli.command()
@debug_option
@handle_errors
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def init(debug: bool, folder: Path) -> None:
    """Make a new practice folder: sequences.yaml, the letters, signups/ and .env with a new key.

    No example people and no database: the first `funnel run` makes an empty
    one. Refuses a folder that is not empty.

    Example: funnel init /srv/funnel/practice
    """
    from funnel.ops.init_folder import init_folder

    made = init_folder(folder)
    for path in made:
        click.echo(f"made {safe(path)}{'/' if path.is_dir() else ''}")
    click.echo(
        f"next: edit {safe(folder / 'sequences.yaml')} (see its first lines), then in that folder run "
        "`funnel check` and `funnel doctor`"
    )


@cli.command()
@common
@json_option
def doctor(config_path: Path | None, debug: bool, as_json: bool) -> None:
    """Check that this installation is ready to send real mail; each problem says what to fix.

    Asks the .env file, `funnel serve` at base_url (and whether it checks links
    with the same key), SendGrid (the key's permission, the sender domain, the
    event webhook, Inbound Parse), the domain's SPF, DKIM and DMARC records,
    and looks for example addresses. Exits 0 when all is well, 1 otherwise.

    Example: funnel doctor
    """
    from funnel.ops.doctor import run_checks
    from funnel.ops.envfile import loaded

    config = _config(config_path)
    checks = run_checks(config, _engine(config), loaded())
    failed = [c for c in checks if c.ok is False]
    if as_json:
        _print_json({"ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        for check in checks:
            mark = {True: "ok  ", False: "FIX ", None: "--  "}[check.ok]
            click.echo(f"{mark} {check.name}: {safe(check.message)}")
        click.echo("all well" if not failed else f"{len(failed)} thing(s) to fix")
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _second_look(config: Config, found: list[str]) -> list[str]:
    """`found` with what reads wrong though it renders (`funnel.mail.lint`), one problem per line of a file.

    An unmapped field's own words replace the render check's ("empty for some
    people") on the same line; any other of the same line is already told.
    """
    from jinja2 import Environment

    from funnel.mail import lint

    def where(problem: str) -> str:
        return problem.split(": ", 1)[0]

    fields = lint.field_problems(config, Environment())
    mine = {where(problem) for problem in fields}
    kept = [problem for problem in found if where(problem) not in mine] + fields
    told = {where(problem) for problem in kept}
    more = (
        lint.zone_problems(config)
        + lint.webinar_sign_problems(config)
        + lint.rename_problems(config, lint.last_snapshot(config))
    )
    return kept + [problem for problem in more if where(problem) not in told]


@cli.command()
@common
@now_option
@json_option
@click.option("--days", type=click.IntRange(1, 3650), default=14, show_default=True, help="How far ahead.")
@click.option("--changes", is_flag=True, help="Compare sequences.yaml with the one the last run used.")
@click.option("--utc", "in_utc", is_flag=True, help="Times in UTC instead of the practice's time zone.")
def plan(
    config_path: Path | None, debug: bool, now: datetime, as_json: bool, days: int, changes: bool, in_utc: bool
) -> None:
    """What would be sent to whom and when in the next N days; writes nothing.

    Times are in the practice's time zone (--utc for UTC; --json is always UTC).

    Example: funnel plan --days 7
    """
    from funnel.plan import plan as plan_items

    config = _config(config_path)
    engine = _engine(config)
    if changes:
        from funnel.changes import plan_changes

        result = plan_changes(config, engine, now)
        if as_json:
            _print_json(result)
        else:
            _print_changes(result)
        return
    items = plan_items(config, engine, now, days, goal_skips=not as_json)
    if as_json:
        _print_json(items)
        return
    if not items:
        click.echo(f"nothing to send in the next {days} days")
        return
    from rich.table import Table

    tz = _reading_zone(config, in_utc)
    out = _stdout()
    out.print(f"times in {tz.key}" + ("" if in_utc else " (the practice's time zone; --utc for UTC)"))
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("when", "email", "sequence", "step", "note"):
        table.add_column(column)
    for item in items:
        notes = [f"(after {item['via']})"] if item.get("via") else []
        if item.get("skipped"):
            notes.append(f"not sent: {safe_markup(item['skipped'])}")
        when = readable(parse_instant(item["at"]), tz)
        table.add_row(when, safe_markup(item["email"] or ""), item["sequence"], item["step"], " ".join(notes))
    out.print(table)


def _reading_zone(config: Config, in_utc: bool) -> ZoneInfo:
    """The zone times are shown in: the practice's (checked when the config loads), or UTC."""
    return ZoneInfo("UTC") if in_utc else zone(config.practice.timezone)


def _print_changes(result: dict[str, Any]) -> None:
    moves = result.get("sessions", [])
    if moves:
        click.echo("webinar sessions (times in each webinar's zone):")
    for move in moves:
        tz = ZoneInfo(move["zone"])
        old = readable(parse_instant(move["from"]), tz) if move["from"] else "no date"
        if move["change"] == "cancelled":
            what = f"{old}: cancelled"
        else:
            what = f"{old} -> {readable(parse_instant(move['to']), tz)}"
        told = f"told: {move['told']}" if move["told"] else "no letter (no confirmation yet, or none to send)"
        click.echo(f"  {safe(move['email'])}: {what}; {told}")
    if not result["steps"]:
        click.echo("no changes to step timing since the last run")
        return
    for change in result["steps"]:
        click.echo(f"{change['sequence']}/{change['step']}: {change['change']}")
        for effect in change.get("people", [])[:50]:
            click.echo(f"  {safe(effect['email'])}: {safe(effect['effect'])}")
        more = len(change.get("people", [])) - 50
        if more > 0:
            click.echo(f"  ... and {more} more")


@cli.command()
@common
@now_option
@click.argument("sequence")
@click.argument("step")
@click.option("--email", "address", help="Render for this real contact instead of the sample one.")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("preview"), show_default=True
)
def preview(
    config_path: Path | None, debug: bool, now: datetime, sequence: str, step: str, address: str | None, out_dir: Path
) -> None:
    """Render one step (subject, HTML, text) into --out and print the subject.

    Example: funnel preview webinar-relationship-911 registered
    """
    from funnel.mail.preview import preview_for

    config = _config(config_path)
    engine = _engine(config) if address else None
    rendered = preview_for(config, engine, sequence, step, now, address)
    stem = f"{sequence}--{step}"  # ids are letters, digits, - and _ (config.SAFE_ID): no path tricks
    written = []
    try:
        # 0600: a preview for a real contact (--email) holds her name and address
        make_private_dir(out_dir)
        write_private(out_dir / f"{stem}.txt", rendered.text.encode("utf-8"))
        written.append(out_dir / f"{stem}.txt")
        if rendered.html is not None:
            write_private(out_dir / f"{stem}.html", rendered.html.encode("utf-8"))
            written.insert(0, out_dir / f"{stem}.html")
    except OSError as exc:
        raise UsageError(
            f"--out {out_dir}: cannot write there ({exc.strerror or exc.__class__.__name__}): "
            "give a folder you can write to, e.g. --out preview"
        ) from None
    click.echo(f"Subject: {safe(rendered.subject)}")
    for path in written:
        click.echo(f"wrote {path}")


@cli.command("send-test")
@common
@now_option
@click.argument("sequence")
@click.argument("step")
@click.option("--to", "to", required=True, help="Your own address.")
def send_test(config_path: Path | None, debug: bool, now: datetime, sequence: str, step: str, to: str) -> None:
    """Send one step, rendered for the sample contact, to yourself through the configured transport.

    Example: funnel send-test consultation received --to me@example.com
    """
    from funnel.mail.preview import send_test as send_one

    config = _config(config_path)
    transport, result = send_one(config, sequence, step, to, now)
    if "path" in result.extra:  # the outbox: a file on this computer, nobody's inbox
        click.echo(
            safe(
                f"written to {_shown_path(Path(result.extra['path']))}, not sent: the transport is {transport}, "
                "which only writes files (set delivery.transport: sendgrid and SENDGRID_API_KEY to send)"
            )
        )
        return
    sandbox = " in SendGrid's sandbox mode: checked, not delivered" if config.delivery.sandbox else ""
    message_id = f" (message id {result.message_id})" if result.message_id else ""
    click.echo(safe(f"sent {sequence}/{step} to {to} through {transport}{sandbox}{message_id}"))


def _shown_path(path: Path) -> Path:
    """A path relative to the current folder when it is inside it (`outbox/...`), else as it is."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


@cli.command("import")
@common
@now_option
@json_option
@click.argument("source")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_(config_path: Path | None, debug: bool, now: datetime, as_json: bool, source: str, file: Path) -> None:
    """Read one file through a source's column mapping now.

    Bad rows are reported with their line and skipped; the rest are stored.

    Example: funnel import webinar-registrations ~/Downloads/registrants.csv
    """
    from funnel.signups.store import import_file

    config = _config(config_path)
    engine = _engine(config)
    read, result = import_file(config, engine, source, file, now)
    rejected = [p for p in read.problems if not p.warning]
    summary: dict[str, Any] = {
        "imported": result.imported,
        "created": result.created,
        "rejected": len(rejected),
        "enrolled": result.enrolled,
        "rescheduled": result.rescheduled,
        "not_contacts": result.unknown,
        "filtered": read.filtered,
        "problems": [f"{file.name}:{p.line}: {p.message}" for p in read.problems],
    }
    if as_json:
        _print_json(summary)
    else:
        for line in summary["problems"]:
            click.echo(safe(line), err=True)
        click.echo(
            f"imported {result.imported} ({result.created} new), rejected {len(rejected)}, enrolled {result.enrolled}"
        )


# --------------------------------------------------------------------------- contacts


@cli.group()
def contacts() -> None:
    """List people; look up, tag, pause, unsubscribe, resubscribe, export or erase one person."""


def _with_contact(config_path: Path | None, address: str, action: Callable[..., Any]) -> Any:
    from sqlmodel import Session

    from funnel.contacts import find_contact

    config = _config(config_path)
    engine = _engine(config)
    with Session(engine, expire_on_commit=False) as session:
        contact = find_contact(session, address)
        result = action(session, config, contact)
        session.commit()
        return result


@contacts.command("show")
@common
@json_option
@click.option("--utc", "in_utc", is_flag=True, help="Times in UTC instead of the practice's time zone.")
@click.argument("email")
def contacts_show(config_path: Path | None, debug: bool, as_json: bool, in_utc: bool, email: str) -> None:
    """A contact: fields, tags, enrollments and step states, unsubscribe state.

    Times are in the practice's time zone (--utc for UTC; --json is always UTC).

    Example: funnel contacts show ana@example.com --json
    """
    from funnel.contacts import describe

    data, config = _with_contact(config_path, email, lambda s, c, contact: (describe(s, c, contact), c))
    if as_json:
        _print_json(data)
        return
    tz = _reading_zone(config, in_utc)

    def when(value: str | None) -> str:
        return readable(parse_instant(value), tz) if value else ""

    out = _stdout()
    name = " ".join(p for p in (data["first_name"], data["last_name"]) if p)
    out.print(f"[bold]{safe_markup(data['email'])}[/] {safe_markup(name)}".rstrip())
    state = (
        "unsubscribed"
        if data["unsubscribed"]
        else (f"suppressed: {data['suppressed_reason']}" if data["suppressed"] else "receiving mail")
    )
    tags = safe_markup(", ".join(data["tags"]) or "none")
    out.print(f"status: {safe_markup(state)}; timezone {safe_markup(data['timezone'])}; tags: {tags}")
    out.print(f"times in {tz.key}" + ("" if in_utc else " (the practice's time zone; --utc for UTC)"))
    for enrollment in data["enrollments"]:
        reason = f" ({safe_markup(enrollment['reason'])})" if enrollment["reason"] else ""
        if enrollment.get("goal"):
            kept = "confirmations, reminders and the recording still go"
            reason = f" ({safe_markup(enrollment['goal'])}: no more letters; {kept})"
        out.print(
            f"\n[bold]{enrollment['sequence']}[/]: {enrollment['status']}{reason}, "
            f"enrolled {when(enrollment['enrolled_at'])}"
        )
        for step in enrollment["steps"]:
            at = when(step.get("sent_at") or step.get("due_at"))
            why = f" - {safe_markup(step['reason'])}" if step.get("reason") else ""
            out.print(f"  {step['id']:<24} {step['status']:<8} {at}{why}")
    if data.get("events"):
        out.print("\n[bold]SendGrid events[/]")
        for event in data["events"]:
            email_of = "/".join(p for p in (event.get("sequence"), event.get("step")) if p)
            why = f" - {event['reason']}" if event.get("reason") else ""
            out.print(f"  {when(event['at'])}  {event['kind']:<18} {email_of}{why}", markup=False)
    if data.get("subscription_history"):
        out.print("\n[bold]Unsubscribes and resubscribes[/]")
        for change in data["subscription_history"]:
            out.print(f"  {when(change['at'])}  {change['change']:<13} {change['via'] or ''}".rstrip(), markup=False)
    for reply in data.get("replies", []):
        paused = f", paused {reply['paused']} sequence(s)" if reply["paused"] else ""
        if not reply.get("verified", True):
            paused = ", not verified as sent by this person: paused nothing"
        out.print(f"\nreplied {when(reply['received_at'])} ({reply['status']}{paused})")


@contacts.command("unsubscribe")
@common
@now_option
@click.argument("email")
def contacts_unsubscribe(config_path: Path | None, debug: bool, now: datetime, email: str) -> None:
    """Stop all mail to a person at once, for good (until resubscribed).

    Example: funnel contacts unsubscribe ana@example.com
    """
    from funnel.contacts import unsubscribe

    changed = _with_contact(config_path, email, lambda s, c, contact: unsubscribe(s, contact, now))
    click.echo(safe(f"{email}: unsubscribed" if changed else f"{email}: was already unsubscribed"))


@contacts.command("resubscribe")
@common
@now_option
@click.argument("email")
def contacts_resubscribe(config_path: Path | None, debug: bool, now: datetime, email: str) -> None:
    """Undo an unsubscribe, when the person asked for it.

    Example: funnel contacts resubscribe ana@example.com
    """
    from funnel.contacts import resubscribe

    changed = _with_contact(config_path, email, lambda s, c, contact: resubscribe(s, contact, now))
    click.echo(safe(f"{email}: resubscribed" if changed else f"{email}: was not unsubscribed"))


@contacts.command("list")
@common
@json_option
@click.option("--tag", default=None, help="Only people with this tag.")
@click.option("--sequence", default=None, help="Only people who are or were in this sequence.")
@click.option(
    "--status",
    type=click.Choice(["active", "paused", "unsubscribed"], case_sensitive=False),
    default=None,
    help="active: letters going on; paused: waiting for `contacts resume`; unsubscribed: asked to stop.",
)
@click.option("--search", default=None, metavar="TEXT", help="Only people whose address or name contains TEXT.")
@click.option("--utc", "in_utc", is_flag=True, help="Times in UTC instead of the practice's time zone.")
def contacts_list(
    config_path: Path | None,
    debug: bool,
    as_json: bool,
    tag: str | None,
    sequence: str | None,
    status: str | None,
    search: str | None,
    in_utc: bool,
) -> None:
    """Who is where: each person, her tags, and how far she is in each sequence.

    The filters combine. Times are in the practice's time zone (--utc for
    UTC; --json is always UTC).

    Example: funnel contacts list --sequence consultation --status active
    """
    from sqlmodel import Session

    from funnel import roster

    config = _config(config_path)
    filters = roster.Filters(tag, sequence, status.lower() if status else None, search)
    roster.check_filters(config, filters)
    with Session(_engine(config)) as session:
        people = roster.list_contacts(session, filters)
    if as_json:
        _print_json(people)
        return
    _print_roster(people, ZoneInfo("UTC") if in_utc else zone(config.practice.timezone), in_utc)


def _print_roster(people: list[dict[str, Any]], tz: ZoneInfo, in_utc: bool) -> None:
    from rich.table import Table

    from funnel.roster import TERMINAL_LIMIT

    out = _stdout()
    if not people:
        out.print("nobody matches")
        return
    out.print(f"times in {tz.key}" + ("" if in_utc else " (the practice's time zone; --utc for UTC)"))
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("email", "name", "state", "where", "tags"):
        table.add_column(column)
    for person in people[:TERMINAL_LIMIT]:
        name = " ".join(p for p in (person["first_name"], person["last_name"]) if p)
        state = person["suppressed_reason"] or "receiving mail"
        where = []
        for item in person["enrollments"]:
            line = f"{item['sequence']}: {item['status']}"
            if item["last_sent"]:
                line += f", last sent {item['last_sent']} {readable(parse_instant(item['last_sent_at']), tz)}"
            where.append(line)
        table.add_row(
            safe_markup(person["email"] or ""),
            safe_markup(name),
            safe_markup(state),
            safe_markup("\n".join(where) or "in no sequence"),
            safe_markup(", ".join(person["tags"])),
        )
    out.print(table)
    shown = min(len(people), TERMINAL_LIMIT)
    more = f" (the first {shown} shown; --json lists all, or narrow with --search)" if shown < len(people) else ""
    out.print(f"{len(people)} {'person' if len(people) == 1 else 'people'}{more}")


@contacts.command("pause")
@common
@now_option
@click.argument("email")
def contacts_pause(config_path: Path | None, debug: bool, now: datetime, email: str) -> None:
    """Stop one person's letters for now, as a reply would; `contacts resume` goes on.

    Nothing from her sequences goes out while paused, reminders included.
    Unlike an unsubscribe it is not her choice recorded: it is yours, for now.

    Example: funnel contacts pause ana@example.com
    """
    from funnel.contacts import pause

    count = _with_contact(config_path, email, lambda s, c, contact: pause(s, contact, now, reason="paused by hand"))
    click.echo(safe(f"{email}: paused {count} sequence(s)" if count else f"{email}: nothing to pause"))


@contacts.command("resume")
@common
@now_option
@click.argument("email")
def contacts_resume(config_path: Path | None, debug: bool, now: datetime, email: str) -> None:
    """Take back a pause (she replied, and you have answered her): her sequences go on.

    Emails that fell due during the pause follow the usual rules at the next
    run: one late by more than delivery.max_late is skipped, not sent.

    Example: funnel contacts resume ana@example.com
    """
    from funnel.contacts import resume

    count = _with_contact(config_path, email, lambda s, c, contact: resume(s, contact, now))
    click.echo(f"{email}: resumed {count} sequence(s)" if count else f"{email}: nothing was paused")


@contacts.command("tag")
@common
@now_option
@click.argument("email")
@click.argument("tags", nargs=-1, required=True)
def contacts_tag(config_path: Path | None, debug: bool, now: datetime, email: str, tags: tuple[str, ...]) -> None:
    """Add tags by hand, e.g. `client` or `consultation-held` (ends the letters whose exit_on_tags name it).

    Example: funnel contacts tag ana@example.com client
    """
    from funnel.contacts import add_tags, check_tags

    for note in check_tags(_config(config_path), tags):
        click.echo(note, err=True)
    added = _with_contact(config_path, email, lambda s, c, contact: add_tags(s, contact, tags, now))
    already = [t for t in tags if t not in added]
    parts = ([f"tagged {', '.join(added)}"] if added else []) + (
        [f"already tagged {', '.join(already)}"] if already else []
    )
    click.echo(safe(f"{email}: {'; '.join(parts)}"))


@contacts.command("untag")
@common
@click.argument("email")
@click.argument("tags", nargs=-1, required=True)
def contacts_untag(config_path: Path | None, debug: bool, email: str, tags: tuple[str, ...]) -> None:
    """Remove tags by hand (a step already skipped because of a tag stays skipped).

    Example: funnel contacts untag ana@example.com client
    """
    from funnel.contacts import check_tags, remove_tags

    check_tags(_config(config_path), tags)
    removed = _with_contact(config_path, email, lambda s, c, contact: remove_tags(s, contact, tags))
    missing = [t for t in dict.fromkeys(tags) if t not in removed]
    parts = ([f"untagged {', '.join(removed)}"] if removed else []) + (
        [f"was not tagged {', '.join(missing)}"] if missing else []
    )
    click.echo(safe(f"{email}: {'; '.join(parts)}"))


@contacts.command("export")
@common
@click.argument("email")
def contacts_export(config_path: Path | None, debug: bool, email: str) -> None:
    """Everything held about a person, as JSON (a data access request).

    Example: funnel contacts export ana@example.com > ana.json
    """
    from funnel.contacts import export

    _print_json(_with_contact(config_path, email, lambda s, c, contact: export(s, c, contact)))


@contacts.command("forget")
@common
@now_option
@click.argument("email")
def contacts_forget(config_path: Path | None, debug: bool, now: datetime, email: str) -> None:
    """Erase a person's data; keep only what stops mail to the address.

    Example: funnel contacts forget ana@example.com
    """
    from funnel.store.db import flush_to_disk

    config = _config(config_path)
    engine = _engine(config)
    _erase(engine, email, now)
    flush_to_disk(engine)
    click.echo(f"{safe(email)}: erased; no mail will go to this address again")


def _erase(engine: Any, address: str, now: datetime) -> None:
    """`contacts forget` in the transaction that has the address to itself (`funnel.store.personlock`):
    a form post or a confirming click at the same moment comes wholly before or wholly after."""
    from funnel.contacts import find_contact, forget
    from funnel.signups.consent import forget_pending
    from funnel.store.personlock import lock_contact, with_person
    from funnel.text import email_hash, normalize_email

    try:
        digest = email_hash(normalize_email(address))
    except ValueError as exc:
        raise UsageError(f"{address!r} is not a valid email address ({exc})") from None

    def work(session: Any) -> None:
        contact = lock_contact(session, digest)
        if contact is None and forget_pending(session, digest, now):
            return  # only unconfirmed form posts were held: gone, and the address is kept out as erased
        if contact is None or contact.erased_at is not None:
            find_contact(session, address)  # raises NotFoundError (exit 1) in its own words
        assert contact is not None
        forget(session, contact, now)

    with_person(engine, digest, work)


@contacts.command("discreet")
@common
@now_option
@click.argument("email")
@click.argument("setting", type=click.Choice(["on", "off"], case_sensitive=False))
def contacts_discreet(config_path: Path | None, debug: bool, now: datetime, email: str, setting: str) -> None:
    """Turn discretion on or off by hand, as the person asked.

    Discreet: a plain sender name and subject, plain text, no tracking, no
    word of what the emails are about where an inbox or calendar shows it.
    A form post can turn it on but never off: only she can, through a
    confirmed form post that says no, or by asking you (this command).

    Example: funnel contacts discreet ana@example.com off
    """
    from funnel.contacts import set_discreet

    on = setting.lower() == "on"
    changed = _with_contact(config_path, email, lambda s, c, contact: set_discreet(s, contact, on, now))
    state = "discreet" if on else "not discreet"
    click.echo(safe(f"{email}: {state} now" if changed else f"{email}: was already {state}"))


# --------------------------------------------------------------------------- serve


@cli.command()
@common
@now_option_optional
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep loopback behind a proxy)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8025, show_default=True, help="Port (0: any free one).")
def serve(config_path: Path | None, debug: bool, now: datetime | None, host: str, port: int) -> None:
    """The web endpoints: unsubscribe links, the website's forms, SendGrid's webhooks.

    Run it behind a reverse proxy that terminates HTTPS (see the README, "Going live"). It
    sends two kinds of email itself, at once, through the same ledger as
    `funnel run`: the confirmation a form post asks for, and the first
    transactional step (e.g. "your message arrived") once she confirms; all
    other mail goes with `funnel run`. `--now` stamps every request with that
    fixed time (for tests).

    Example: funnel serve --port 8025
    """
    from funnel.web.serve import serve as run_server

    config = _config(config_path)
    for problem in environment_problems(config):  # the server does the safe thing; the file should agree
        click.echo(f"funnel serve: warning: {safe(problem)}", err=True)
    run_server(config, _engine(config), host, port, now, debug=debug)


# --------------------------------------------------------------------------- report, suppressions


@cli.command()
@common
@json_option
@click.option(
    "--since",
    "since",
    default=None,
    metavar="DATE",
    help=(
        "Only what happened since DATE: 2026-12-01 is midnight in the practice's time zone "
        "(midnight UTC with --utc); 2026-12-01T00:00:00Z or -07:00 is read as written."
    ),
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write the report as one self-contained web page (charts included) to FILE.",
)
@click.option("--utc", "in_utc", is_flag=True, help="Times in UTC instead of the practice's time zone.")
def report(
    config_path: Path | None, debug: bool, as_json: bool, since: str | None, html_file: Path | None, in_utc: bool
) -> None:
    """Per sequence and step: sent, delivered, opened, clicked, bounced, unsubscribed, converted; the webinar funnel.

    Times are in the practice's time zone (--utc for UTC; --json prints UTC).
    A --since date without a zone is read in the practice's time zone, with
    --json too, and in UTC with --utc.

    Example: funnel report --since 2026-12-01 --html report.html
    """
    from funnel import report as reporting

    config = _config(config_path)
    tz = ZoneInfo("UTC") if in_utc else zone(config.practice.timezone)
    try:
        since_at = parse_instant(since, tz) if since else None
    except (ValueError, OverflowError):
        since_at = None
        problem = "is not a date"
    else:
        problem = "is out of range" if since_at and not EARLIEST_NOW <= since_at.year <= LATEST_NOW else ""
    if since and (since_at is None or problem):
        raise UsageError(f"--since {safe(since)!r} {problem}: write a date like 2026-12-01 or 2026-12-01T00:00:00Z")
    data = reporting.figures(config, _engine(config), since_at)
    if html_file is not None:
        try:
            html_file.write_text(reporting.render_html(data, tz), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html {html_file}: cannot write the file ({exc.strerror})") from None
    if as_json:
        _print_json(data)
    elif html_file is not None:
        click.echo(f"wrote {html_file}")
    else:
        reporting.print_terminal(data, _stdout(), tz)


@cli.group()
def suppressions() -> None:
    """SendGrid's suppression lists."""


@suppressions.command("sync")
@common
@now_option
@json_option
def suppressions_sync(config_path: Path | None, debug: bool, now: datetime, as_json: bool) -> None:
    """Pull SendGrid's unsubscribes, bounces, spam reports and invalid emails; stop mail to them.

    Example: funnel suppressions sync
    """
    from sqlmodel import Session

    from funnel.contacts import apply_suppressions
    from funnel.sendgrid.send import fetch_suppressions
    from funnel.transports import sendgrid_settings

    config = _config(config_path)
    key, host = sendgrid_settings()
    entries = fetch_suppressions(key, host, config.delivery.request_timeout)
    with Session(_engine(config), expire_on_commit=False) as session:
        counts = apply_suppressions(session, entries, now)
        session.commit()
    counts["fetched"] = len(entries)
    if as_json:
        _print_json(counts)
    else:
        click.echo(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


# --------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Database operations: move to another database, back up the SQLite file."""


@db.command("copy")
@common
@json_option
@click.option(
    "--to",
    "to_url",
    required=True,
    metavar="URL",
    help="The new, empty database, e.g. postgresql://funnel@db.example/funnel or sqlite:///new.db.",
)
@click.option(
    "--from",
    "from_url",
    default=None,
    metavar="URL",
    help="The database to copy (default: FUNNEL_DATABASE_URL, else funnel.db beside sequences.yaml).",
)
def db_copy(config_path: Path | None, debug: bool, as_json: bool, to_url: str, from_url: str | None) -> None:
    """Copy the whole funnel database into a new, empty one (e.g. SQLite to PostgreSQL).

    The target gets the current schema, then every table in batches in one
    transaction; row counts are checked afterwards. A target that holds any rows
    is refused. Stop cron and `funnel serve` first, then point FUNNEL_DATABASE_URL
    at the copy.

    Example: funnel db copy --to postgresql://funnel@localhost/funnel
    """
    from funnel.store.copy import copy_database, shown
    from funnel.store.db import database_url

    source = from_url or database_url(_config(config_path).folder)
    counts = copy_database(source, to_url)
    if as_json:
        _print_json({"from": shown(source), "to": shown(to_url), "tables": counts})
        return
    for name, count in counts.items():
        click.echo(f"{name:<20} {count:>9}")
    click.echo(f"copied {sum(counts.values())} rows from {shown(source)} to {shown(to_url)}; counts match")


@db.command("backup")
@common
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def db_backup(config_path: Path | None, debug: bool, file: Path) -> None:
    """Back up the SQLite database into FILE, safely while runs and `funnel serve` use it.

    Uses SQLite's online backup, so FILE is one consistent snapshot. For
    PostgreSQL use pg_dump instead (see docs/operations.md, "Backups").

    Example: funnel db backup backups/funnel-2026-12-01.db
    """
    from funnel.store.copy import backup_sqlite
    from funnel.store.db import database_url

    size = backup_sqlite(database_url(_config(config_path).folder), file)
    click.echo(f"backed up the database to {file} ({size} bytes)")


def main() -> None:
    """Console-script entry point."""
    use_fewer_collections()  # see funnel.collector: most of funnel's libraries load after this
    try:
        cli.main(prog_name="funnel", standalone_mode=False)
    except click.exceptions.NoSuchOption as exc:
        exc.show()
        sys.exit(EXIT_CONFIG)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_CONFIG)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
