"""`funnel report`: one set of figures, shown three ways (terminal table, JSON, one HTML page).

`figures()` reads the database once and returns plain data; `--json` prints
it as it is, the terminal and the HTML page only lay it out, so the three
never disagree. What each number means is in `figures()`'s docstring and the
README.
"""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from funnel.config import Config
from funnel.store.models import Enrollment, Event, InboundMessage, Run, StepRun, SubscriptionChange, Tag
from funnel.timeutil import isoformat_z, parse_instant, readable, zone

STEP_COUNTS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "failed",
    "skipped",
    "unknown",
    "converted",
)
#: which SendGrid event kinds (funnel.sendgrid.webhook.EventKind values) feed which column
EVENT_COLUMNS = {
    "delivered": ("delivered",),
    "opened": ("open",),
    "clicked": ("click",),
    "bounced": ("bounce", "blocked", "dropped"),
    "unsubscribed": ("unsubscribe", "group_unsubscribe"),
    "spam_reports": ("spamreport",),
}
#: the webinar funnel: stage name, the tag that marks it
FUNNEL_STAGES = (
    ("registered", "webinar-registered"),
    ("attended", "webinar-attended"),
    ("asked for a consultation", "consultation-requested"),
    ("became a client", "client"),
)
OPENS_NOTE = (
    "Opens are approximate: privacy proxies (Apple Mail, some company filters) open emails by themselves, "
    "and plain-text emails cannot be tracked."
)


def goal_tags(config: Config, sequence_id: str) -> tuple[str, ...]:
    """The tags that mean a sequence reached its goal: its `exit_on_tags`, else `client`."""
    sequence = config.sequences.get(sequence_id)
    return tuple(sequence.exit_on_tags) if sequence and sequence.exit_on_tags else ("client",)


# --------------------------------------------------------------------------- figures


def figures(config: Config, engine: Engine, since: datetime | None) -> dict[str, Any]:
    """Every figure of the report, as JSON-able data.

    What the numbers mean (also in the README):

    - per step, `sent`, `failed`, `skipped`, `unknown` come from our own records;
      `delivered`, `opened`, `clicked`, `bounced` (bounce, block or drop) and
      `unsubscribed` count the *emails* SendGrid reported each for (an email
      opened five times counts once); `unsubscribed` also counts people who left
      through the link of that email, even those who later took it back (it is
      counted from her history, `subscription_changes`, not from her state now);
    - `tracking` says which of those can be known at all: nothing comes back
      from the outbox transport (no email left), and opens or clicks are not
      tracked while `tracking.opens` / `tracking.clicks` are off: the terminal and
      the HTML page then say "not tracked" rather than a misleading 0 %;
    - opens are approximate: privacy proxies (Apple Mail, some company filters)
      open every email by themselves, and plain-text emails cannot be tracked;
    - `converted` counts the people who reached the sequence's goal (a tag in its
      `exit_on_tags`, or `client`) after that email went to them;
    - the webinar funnel follows the people tagged `webinar-registered`: how many
      of them attended, asked for a consultation and became clients;
    - `since` (`--since DATE`) keeps what happened from DATE on (sends by decision
      time, events by their time, sign-ups by enrollment, tags by when they were
      added); a DATE without a zone is the practice's day (UTC with `--utc`), as
      the times the terminal and the HTML page show are the practice's, zone named.
    """
    with Session(engine) as session:
        enrollment_counts = _enrollment_counts(session, since)
        step_counts = _step_counts(session, since)
        event_counts = _event_counts(session, since)
        unsubscribed = _unsubscribed_per_step(session, since)
        last_run = session.scalars(select(Run).order_by(col(Run.id).desc()).limit(1)).first()
        sequences: list[dict[str, Any]] = []
        for sid, sequence in config.sequences.items():
            goals = goal_tags(config, sid)
            converted_steps = _converted_per_step(session, sid, goals, since)
            counts = enrollment_counts.get(sid, {})
            steps = []
            for step in sequence.steps:
                key = (sid, step.id)
                got: dict[str, int] = dict(step_counts.get(key, {}))
                for column, kinds in EVENT_COLUMNS.items():
                    got[column] = sum(event_counts.get((sid, step.id, kind), 0) for kind in kinds)
                got["unsubscribed"] = len(unsubscribed.get(key, ()))
                got["converted"] = converted_steps.get(step.id, 0)
                steps.append(
                    {
                        "id": step.id,
                        "subject": readable_subject(step.subject),
                        "transactional": step.transactional,
                        **{name: got.get(name, 0) for name in STEP_COUNTS},
                        "spam_reports": got.get("spam_reports", 0),
                    }
                )
            sequences.append(
                {
                    "id": sid,
                    "name": sequence.name or sid,
                    "enrolled": sum(counts.values()),
                    "active": counts.get("active", 0),
                    "paused": counts.get("paused", 0),
                    "finished": counts.get("finished", 0),
                    "exited": counts.get("exited", 0),
                    "converted": _converted_in_sequence(session, sid, goals, since),
                    "goal_tags": list(goals),
                    "steps": steps,
                }
            )
        funnel = _webinar_funnel(session, since)
        weeks = _weeks(session, config, since)
        totals_by_kind = _totals_by_kind(session, since)
        replies = _replies(session, since)
        tracking = _tracking(config, session, totals_by_kind)
    totals = {name: sum(s[name] for seq in sequences for s in seq["steps"]) for name in STEP_COUNTS}
    return {
        "practice": config.practice.name,
        "since": isoformat_z(since) if since else None,
        "last_run": isoformat_z(last_run.started_at) if last_run else None,
        "sequences": sequences,
        "totals": totals,
        "events": totals_by_kind,
        "replies": replies,
        "webinar_funnel": funnel,
        "weeks": weeks,
        "unknown": totals["unknown"],
        "tracking": tracking,
        "notes": {"opened": OPENS_NOTE},
    }


#: a Jinja expression or tag inside a subject, shown as … in the report
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def readable_subject(source: str) -> str:
    """A step's subject as the practice wrote it, each `{{ ... }}` shown as `…`.

    The report names steps by their subject too: the id (`day-before`) is the
    permanent key, the subject is what she recognises. Not rendered: whose
    name or which webinar would it be rendered for?
    """
    text = _JINJA.sub("…", source)
    return re.sub(r"\s+", " ", text).strip()


def _tracking(config: Config, session: Session, events: dict[str, int]) -> dict[str, Any]:
    """Which figures can be known at all, and why not (`why`), so nobody reads "0 %" as "nobody".

    SendGrid's events (delivered, opens, clicks, bounces) come back only for
    email that went through SendGrid: with the outbox transport, nothing ever
    sent through SendGrid and no event received, none can. Opens and clicks, besides, only
    while `tracking.opens` / `tracking.clicks` are on (or once were: events
    already received still count).
    """
    from funnel.errors import ConfigError
    from funnel.transports import transport_name

    try:
        transport = transport_name(config)
    except ConfigError:
        transport = config.delivery.transport
    through_sendgrid = (
        session.execute(select(col(StepRun.id)).where(col(StepRun.transport) == "sendgrid").limit(1)).first()
        is not None
    )
    # events already received (posted to the webhook) also mean something comes back
    tracked = transport == "sendgrid" or through_sendgrid or any(events.values())
    opens = tracked and (config.tracking.opens or events.get("open", 0) > 0)
    clicks = tracked and (config.tracking.clicks or events.get("click", 0) > 0)
    why: dict[str, str] = {}
    if not tracked:
        for name in ("delivered", "opened", "clicked", "bounced"):
            why[name] = "the outbox transport only writes files: no email left, nothing comes back"
    else:
        if not opens:
            why["opened"] = "tracking.opens is off"
        if not clicks:
            why["clicked"] = "tracking.clicks is off"
    return {"transport": transport, "events": tracked, "opens": opens, "clicks": clicks, "why": why}


def _enrollment_counts(session: Session, since: datetime | None) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    query = select(col(Enrollment.sequence), col(Enrollment.status), func.count()).group_by(
        col(Enrollment.sequence), col(Enrollment.status)
    )
    if since:
        query = query.where(col(Enrollment.enrolled_at) >= since)
    for sequence, status, count in session.execute(query):
        counts[sequence][status] += count
    return counts


def _step_counts(session: Session, since: datetime | None) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    query = select(col(StepRun.sequence), col(StepRun.step_id), col(StepRun.status), func.count()).group_by(
        col(StepRun.sequence), col(StepRun.step_id), col(StepRun.status)
    )
    if since:
        query = query.where(col(StepRun.decided_at) >= since)
    for sequence, step_id, status, count in session.execute(query):
        key = "unknown" if status == "sending" else status
        counts[(sequence, step_id)][key] += count
    return counts


def _event_counts(session: Session, since: datetime | None) -> dict[tuple[str, str, str], int]:
    """Emails (distinct step runs) per step and event kind."""
    query = (
        select(
            col(Event.sequence), col(Event.step_id), col(Event.kind), func.count(func.distinct(col(Event.step_run_id)))
        )
        .where(col(Event.step_run_id).is_not(None))
        .group_by(col(Event.sequence), col(Event.step_id), col(Event.kind))
    )
    if since:
        query = query.where(col(Event.occurred_at) >= since)
    return {(seq or "", step or "", kind): int(n) for seq, step, kind, n in session.execute(query)}


def _unsubscribed_per_step(session: Session, since: datetime | None) -> dict[tuple[str, str], set[int]]:
    """The emails people left from, per step: SendGrid's unsubscribe events and our own link (its token names
    the email), each email once."""
    found: dict[tuple[str, str], set[int]] = defaultdict(set)
    events = select(col(Event.sequence), col(Event.step_id), col(Event.step_run_id)).where(
        and_(col(Event.kind).in_(EVENT_COLUMNS["unsubscribed"]), col(Event.step_run_id).is_not(None))
    )
    if since:
        events = events.where(col(Event.occurred_at) >= since)
    # from her history, not the contact row: an unsubscribe she later took back still happened
    links = (
        select(col(StepRun.sequence), col(StepRun.step_id), col(StepRun.id))
        .join(SubscriptionChange, col(SubscriptionChange.step_run_id) == col(StepRun.id))
        .where(col(SubscriptionChange.change) == "unsubscribed")
    )
    if since:
        links = links.where(col(SubscriptionChange.changed_at) >= since)
    for query in (events, links):
        for sequence, step_id, step_run_id in session.execute(query):
            found[(sequence or "", step_id or "")].add(int(step_run_id))
    return found


def _replies(session: Session, since: datetime | None) -> dict[str, int]:
    """Replies that came in through Inbound Parse, by what became of them (failed: not forwarded yet)."""
    query = select(col(InboundMessage.status), func.count()).group_by(col(InboundMessage.status))
    if since:
        query = query.where(col(InboundMessage.received_at) >= since)
    counts = {status: int(n) for status, n in session.execute(query)}
    return {
        "received": sum(counts.values()),
        "forwarded": counts.get("forwarded", 0),
        "not_forwarded": counts.get("failed", 0) + counts.get("stored", 0) + counts.get("forwarding", 0),
        "loops": counts.get("loop", 0),
    }


def _totals_by_kind(session: Session, since: datetime | None) -> dict[str, int]:
    query = select(col(Event.kind), func.count()).group_by(col(Event.kind))
    if since:
        query = query.where(col(Event.occurred_at) >= since)
    return {kind: int(n) for kind, n in session.execute(query)}


def _converted_per_step(
    session: Session, sequence_id: str, goals: tuple[str, ...], since: datetime | None
) -> dict[str, int]:
    """Per step: people sent that email who reached a goal tag afterwards."""
    query = (
        select(col(StepRun.step_id), func.count(func.distinct(col(Enrollment.contact_id))))
        .join(Enrollment, col(Enrollment.id) == col(StepRun.enrollment_id))
        .join(Tag, col(Tag.contact_id) == col(Enrollment.contact_id))
        .where(
            and_(
                col(StepRun.sequence) == sequence_id,
                col(StepRun.status) == "sent",
                col(Tag.tag).in_(goals),
                col(Tag.added_at) >= col(StepRun.sent_at),
            )
        )
        .group_by(col(StepRun.step_id))
    )
    if since:
        query = query.where(col(StepRun.decided_at) >= since)
    return {step: int(n) for step, n in session.execute(query)}


def _converted_in_sequence(session: Session, sequence_id: str, goals: tuple[str, ...], since: datetime | None) -> int:
    """People enrolled in the sequence who reached a goal tag after enrolling."""
    query = (
        select(func.count(func.distinct(col(Enrollment.contact_id))))
        .join(Tag, col(Tag.contact_id) == col(Enrollment.contact_id))
        .where(
            and_(
                col(Enrollment.sequence) == sequence_id,
                col(Tag.tag).in_(goals),
                col(Tag.added_at) >= col(Enrollment.enrolled_at),
            )
        )
    )
    if since:
        query = query.where(col(Enrollment.enrolled_at) >= since)
    return int(session.execute(query).scalar_one())


def _webinar_funnel(session: Session, since: datetime | None) -> list[dict[str, Any]]:
    """Each stage: people of the registered cohort with its tag, and everyone with it."""
    registered = select(col(Tag.contact_id)).where(col(Tag.tag) == FUNNEL_STAGES[0][1])
    if since:
        registered = registered.where(col(Tag.added_at) >= since)
    stages = []
    for stage, tag in FUNNEL_STAGES:
        everyone = select(func.count(func.distinct(col(Tag.contact_id)))).where(col(Tag.tag) == tag)
        if since:
            everyone = everyone.where(col(Tag.added_at) >= since)
        cohort = everyone.where(col(Tag.contact_id).in_(registered))
        stages.append(
            {
                "stage": stage,
                "tag": tag,
                "count": int(session.execute(cohort).scalar_one()),
                "all": int(session.execute(everyone).scalar_one()),
            }
        )
    return stages


def _weeks(session: Session, config: Config, since: datetime | None) -> list[dict[str, Any]]:
    """Sign-ups (enrollments from a source, not `next:` moves) and emails sent, per week (Monday, practice time)."""
    tz = zone(config.practice.timezone)

    def monday(moment: datetime) -> date:
        local = moment.astimezone(tz).date()
        return local - timedelta(days=local.weekday())

    signups: Counter[date] = Counter()
    query = select(col(Enrollment.enrolled_at), col(Enrollment.source))
    if since:
        query = query.where(col(Enrollment.enrolled_at) >= since)
    for enrolled_at, source in session.execute(query):
        if not (source or "").startswith("after "):
            signups[monday(enrolled_at)] += 1
    sends: Counter[date] = Counter()
    query2 = select(col(StepRun.sent_at)).where(and_(col(StepRun.status) == "sent", col(StepRun.sent_at).is_not(None)))
    if since:
        query2 = query2.where(col(StepRun.sent_at) >= since)
    for (sent_at,) in session.execute(query2):
        sends[monday(sent_at)] += 1
    if not signups and not sends:
        return []
    first, last = min({*signups, *sends}), max({*signups, *sends})
    weeks = []
    current = first
    while current <= last:
        weeks.append({"week": current.isoformat(), "signups": signups[current], "sent": sends[current]})
        current += timedelta(days=7)
    return weeks


# --------------------------------------------------------------------------- terminal


TERMINAL_COLUMNS = (
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("opened", "opened~"),
    ("clicked", "clicked"),
    ("bounced", "bounced"),
    ("unsubscribed", "unsub"),
    ("failed", "failed"),
    ("skipped", "skipped"),
    ("unknown", "unknown"),
    ("converted", "converted"),
)


def print_terminal(data: dict[str, Any], console: Any, tz: ZoneInfo | None = None) -> None:
    """The report as rich tables on a terminal (plain lines when piped); times in `tz`, named (default UTC)."""
    from rich.table import Table

    tz = tz or ZoneInfo("UTC")
    untracked = data["tracking"]["why"]
    when = f"last run {_local(data['last_run'], tz)}" if data["last_run"] else "no run yet"
    if data["since"]:
        when = f"since {_local(data['since'], tz)}; {when}"
    console.print(f"{when} (times in {tz.key})")
    for sequence in data["sequences"]:
        paused = f", paused {sequence['paused']}" if sequence["paused"] else ""
        console.print(
            f"[bold]{sequence['name']}[/] ({sequence['id']}): enrolled {sequence['enrolled']}, "
            f"active {sequence['active']}{paused}, finished {sequence['finished']}, exited {sequence['exited']}, "
            f"converted {sequence['converted']}"
        )
        table = Table(show_header=True, header_style="bold", box=None)
        table.add_column("step")
        for _key, label in TERMINAL_COLUMNS:
            table.add_column(label, justify="right")
        table.add_column("subject")
        for step in sequence["steps"]:
            table.add_row(
                step["id"],
                *("-" if key in untracked else str(step[key]) for key, _label in TERMINAL_COLUMNS),
                _markup_escape(step["subject"]),
            )
        console.print(table)
    stages = data["webinar_funnel"]
    if stages and stages[0]["count"]:
        console.print("[bold]Webinar funnel[/] (people who registered)")
        base = stages[0]["count"]
        for stage in stages:
            console.print(f"  {stage['stage']:<26} {stage['count']:>6}  {_percent(stage['count'], base):>5}")
    replies = data["replies"]
    if replies["received"]:
        console.print(f"Replies: {replies['received']} received, {replies['forwarded']} forwarded")
    if replies["not_forwarded"]:
        console.print(
            f"[yellow]{replies['not_forwarded']} reply(ies) could not be forwarded yet; SendGrid posts them again "
            "(see `funnel contacts show` of the sender).[/]"
        )
    console.print(f"[dim]~ {OPENS_NOTE}[/]")
    for reason, names in _grouped(untracked).items():
        console.print(f"[dim]- {', '.join(names)}: not tracked ({reason})[/]")
    if data["unknown"]:
        console.print(
            f"[yellow]{data['unknown']} email(s) have an unknown outcome (a run stopped mid-send); "
            "they were not sent again.[/]"
        )


def _grouped(why: dict[str, str]) -> dict[str, list[str]]:
    """{reason: [figures]} from {figure: reason}, for one line per reason."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for name, reason in why.items():
        grouped[reason].append(name)
    return grouped


def _markup_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


# --------------------------------------------------------------------------- HTML


def _local(value: str, tz: ZoneInfo) -> str:
    """An ISO instant of the data as a person reads it in `tz`, the zone named."""
    return readable(parse_instant(value), tz)


def render_html(data: dict[str, Any], tz: ZoneInfo | None = None) -> str:
    """One self-contained page: inline CSS, inline SVG charts, no script, nothing fetched; times in `tz`."""
    esc = html.escape
    tz = tz or ZoneInfo("UTC")
    totals = data["totals"]
    sent = totals["sent"]
    period = f"since {esc(_local(data['since'], tz))}" if data["since"] else "all time"
    last_run = f"last run {esc(_local(data['last_run'], tz))}" if data["last_run"] else "no run yet"
    signups = sum(w["signups"] for w in data["weeks"])
    why = data["tracking"]["why"]

    def tracked(name: str, value: str, hint: str) -> tuple[str, str]:
        return ("not tracked", why[name]) if name in why else (value, hint)

    bounced = "bounces not tracked" if "bounced" in why else f"{totals['bounced']} bounced"
    cards = [
        ("Sign-ups", f"{signups}", "new enrollments from a form or an export"),
        ("Emails sent", f"{sent}", f"{totals['failed']} failed, {totals['skipped']} skipped"),
        (
            "Delivered",
            *tracked("delivered", _percent(totals["delivered"], sent), f"{totals['delivered']} reported by SendGrid"),
        ),
        ("Opened ~", *tracked("opened", _percent(totals["opened"], sent), f"{totals['opened']} emails, approximate")),
        ("Clicked", *tracked("clicked", _percent(totals["clicked"], sent), f"{totals['clicked']} emails")),
        ("Unsubscribed", f"{totals['unsubscribed']}", bounced),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        f"<title>Email report · {esc(data['practice'])}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<header>",
        f'<p class="eyebrow">{esc(data["practice"])}</p>',
        "<h1>How the emails are doing</h1>",
        f'<p class="muted">{period} · {last_run}</p>',
        "</header>",
        '<section class="cards">',
        *(
            f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
            f'<div class="hint">{esc(hint)}</div></div>'
            for label, value, hint in cards
        ),
        "</section>",
    ]
    if data["replies"]["not_forwarded"]:
        parts.append(
            f'<p class="warning">{data["replies"]["not_forwarded"]} reply(ies) could not be forwarded yet; '
            "SendGrid posts them again.</p>"
        )
    if data["unknown"]:
        parts.append(
            f'<p class="warning">{data["unknown"]} email(s) have an unknown outcome (a run stopped mid-send); '
            "they were not sent again. See <code>funnel contacts show</code> for each person.</p>"
        )
    parts += [
        '<section class="two">',
        '<div class="panel"><h2>Webinar funnel</h2>',
        '<p class="muted">People who registered, and how far they came.</p>',
        _funnel_svg(data["webinar_funnel"]),
        "</div>",
        '<div class="panel"><h2>Week by week</h2>',
        '<p class="muted"><span class="key signups"></span>sign-ups <span class="key sends"></span>emails sent</p>',
        _weeks_svg(data["weeks"]),
        "</div>",
        "</section>",
    ]
    for sequence in data["sequences"]:
        parts.append(_sequence_html(sequence, why))
    parts += [
        f"<footer><p>~ {esc(OPENS_NOTE)}</p><p>Delivered, opened, clicked, bounced and unsubscribed count emails "
        "(an email opened five times counts once), as reported by SendGrid's event webhook. Converted: people who "
        "reached the sequence's goal tag after that email.</p></footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _sequence_html(sequence: dict[str, Any], why: dict[str, str]) -> str:
    esc = html.escape
    status = [
        ("active", sequence["active"], "#3f7d74"),
        ("paused", sequence["paused"], "#c99a3b"),
        ("finished", sequence["finished"], "#7a6aa8"),
        ("exited", sequence["exited"], "#b9b3aa"),
    ]
    rows = []
    for step in sequence["steps"]:
        sent = step["sent"]
        badge = ' <span class="badge">transactional</span>' if step["transactional"] else ""
        subject = f'<span class="subject">{esc(step["subject"])}</span>' if step.get("subject") else ""
        cells = [f'<th scope="row">{esc(step["id"])}{badge}{subject}</th>', f'<td class="num strong">{sent}</td>']
        for key in ("delivered", "opened", "clicked"):
            shown = _not_tracked(why[key]) if key in why else _rate_cell(step[key], sent)
            cells.append(f'<td class="num">{shown}</td>')
        for key in ("bounced", "unsubscribed", "failed", "skipped", "unknown", "converted"):
            if key in why:
                cells.append(f'<td class="num">{_not_tracked(why[key])}</td>')
                continue
            value = step[key]
            css = "num zero" if value == 0 else ("num alert" if key in ("failed", "unknown", "bounced") else "num")
            cells.append(f'<td class="{css}">{value}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(
        f'<th scope="col" class="num">{esc(label)}</th>'
        for label in (
            "sent",
            "delivered",
            "opened ~",
            "clicked",
            "bounced",
            "unsub.",
            "failed",
            "skipped",
            "unknown",
            "converted",
        )
    )
    key = re.sub(r"[^a-z0-9-]", "-", sequence["id"].lower())
    legend = " ".join(
        f'<span class="legend"><span class="dot" style="background:{color}"></span>{name} {count}</span>'
        for name, count, color in status
    )
    return (
        '<section class="panel sequence">'
        f'<div class="seqhead"><div><h2>{esc(sequence["name"])}</h2>'
        f'<p class="muted">{esc(sequence["id"])} · {sequence["enrolled"]} enrolled · '
        f"{sequence['converted']} reached the goal ({esc(', '.join(sequence['goal_tags']))})</p></div>"
        f'<div class="status">{_status_svg(status, key)}<div>{legend}</div></div></div>'
        '<div class="tablewrap"><table><thead><tr><th scope="col">email</th>'
        + header
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div></section>"
    )


def _not_tracked(reason: str) -> str:
    return f'<span class="untracked" title="{html.escape(reason)}">not tracked</span>'


def _rate_cell(count: int, sent: int) -> str:
    """A count with its share of the emails sent, drawn as a thin bar under it."""
    if not sent or not count:
        return f'<span class="zero">{count}</span>'
    share = min(1.0, count / sent)
    width = max(2, round(share * 56))
    return (
        f'<span class="rate"><span>{count}<small>{_percent(count, sent)}</small></span>'
        f'<svg width="56" height="4" aria-hidden="true"><rect width="56" height="4" rx="2" fill="#ece6dc"/>'
        f'<rect width="{width}" height="4" rx="2" fill="#3f7d74"/></svg></span>'
    )


def _status_svg(status: list[tuple[str, int, str]], key: str) -> str:
    total = sum(count for _name, count, _color in status)
    width = 220
    if not total:
        return f'<svg width="{width}" height="10" role="img" aria-label="nobody enrolled yet"><rect width="{width}" height="10" rx="5" fill="#ece6dc"/></svg>'  # noqa: E501
    x = 0.0
    bars = []
    for name, count, color in status:
        if count:
            w = width * count / total
            bars.append(
                f'<rect x="{x:.1f}" width="{w:.1f}" height="10" fill="{color}"><title>{name} {count}</title></rect>'
            )
            x += w
    label = ", ".join(f"{name} {count}" for name, count, _c in status)
    return (
        f'<svg width="{width}" height="10" role="img" aria-label="{label}">'
        f'<clipPath id="clip-{key}"><rect width="{width}" height="10" rx="5"/></clipPath>'
        f'<g clip-path="url(#clip-{key})">{"".join(bars)}</g></svg>'
    )


def _funnel_svg(stages: list[dict[str, Any]]) -> str:
    base = stages[0]["count"] if stages else 0
    width, row, label_w = 520, 46, 190
    height = row * len(stages) + 8
    colors = ("#3f7d74", "#5b9a8b", "#8d7bb8", "#c7785b")
    label = ", ".join(f"{stage['stage']} {stage['count']}" for stage in stages)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="webinar funnel: {label}">']
    bar_w = width - label_w - 70
    for index, stage in enumerate(stages):
        y = index * row + 4
        share = stage["count"] / base if base else 0.0
        w = max(2.0, bar_w * share) if stage["count"] else 0.0
        out.append(f'<text x="0" y="{y + 24}" class="lbl">{html.escape(stage["stage"])}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 8}" width="{bar_w}" height="24" rx="6" fill="#f1ece4"/>')
        if w:
            out.append(
                f'<rect x="{label_w}" y="{y + 8}" width="{w:.1f}" height="24" rx="6" fill="{colors[index % 4]}"/>'
            )
        out.append(
            f'<text x="{label_w + bar_w + 10}" y="{y + 25}" class="val">{stage["count"]}'
            f'<tspan class="pct"> {_percent(stage["count"], base) if index else ""}</tspan></text>'
        )
    out.append("</svg>")
    if not base:
        out.append('<p class="muted">Nobody has registered for a webinar yet.</p>')
    return "".join(out)


def _weeks_svg(weeks: list[dict[str, Any]]) -> str:
    if not weeks:
        return '<p class="muted">No sign-ups or emails yet.</p>'
    shown = weeks[-26:]
    width, height, left, bottom, top = 520, 230, 34, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max(max(w["signups"], w["sent"]) for w in shown) or 1
    scale = _nice_ceiling(peak)
    slot = plot_w / len(shown)
    bar = max(2.0, min(14.0, slot * 0.36))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="sign-ups and emails sent per week, {len(shown)} weeks">'
    ]
    for tick in range(0, 5):
        value = scale * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{value:g}</text>')
    step = max(1, len(shown) // 6)
    for index, week in enumerate(shown):
        x = left + slot * index + slot / 2
        for offset, key, css in ((-bar - 1, "signups", "signups"), (1, "sent", "sends")):
            h = plot_h * week[key] / scale
            if week[key]:
                out.append(
                    f'<rect x="{x + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'rx="2" class="{css}"><title>week of {week["week"]}: {week[key]} {key}</title></rect>'
                )
        if index % step == 0:
            label = date.fromisoformat(week["week"]).strftime("%b %-d")
            out.append(f'<text x="{x:.1f}" y="{height - 8}" class="axis" text-anchor="middle">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def _nice_ceiling(value: float) -> float:
    """A round top for a chart with four grid steps: each step 1, 2, 2.5 or 5 x 10^n (at least 1)."""
    target = max(1.0, value / 4)
    magnitude = 1.0
    while magnitude * 10 <= target:
        magnitude *= 10
    for factor in (1, 1.5, 2, 2.5, 5, 10):
        if factor * magnitude >= target and (factor * magnitude).is_integer():
            return 4 * factor * magnitude
    return 40 * magnitude


_CSS = """
:root{--ink:#2d2a26;--muted:#7a7168;--paper:#fbf8f3;--card:#fff;--line:#ece6dc;--teal:#3f7d74;--plum:#8d7bb8;
--warn:#b5532f}
*{box-sizing:border-box}
body{margin:0;background:var(--paper);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:40px 24px 56px}
header{margin-bottom:28px}
.eyebrow{margin:0;color:var(--teal);font-weight:600;letter-spacing:.08em;text-transform:uppercase;font-size:12px}
h1{margin:6px 0 4px;font:600 30px/1.2 Georgia,"Iowan Old Style","Times New Roman",serif}
h2{margin:0 0 4px;font:600 19px/1.3 Georgia,"Iowan Old Style","Times New Roman",serif}
.muted{color:var(--muted);margin:0 0 12px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:14px;margin-bottom:22px}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:14px;
box-shadow:0 1px 2px rgba(60,40,20,.04)}
.card{padding:16px 18px}
.label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.value{font:600 28px/1.2 Georgia,"Times New Roman",serif;margin:6px 0 2px}
.hint{font-size:12px;color:var(--muted)}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px;margin-bottom:18px}
.panel{padding:20px 22px;margin-bottom:18px}
.chart{width:100%;height:auto;display:block}
.chart .lbl{font-size:14px;fill:var(--ink)} .chart .val{font-size:15px;font-weight:600;fill:var(--ink)}
.chart .pct{font-weight:400;fill:var(--muted);font-size:13px}
.chart .axis{font-size:11px;fill:var(--muted)} .chart .grid{stroke:var(--line);stroke-width:1}
.chart .signups{fill:var(--plum)} .chart .sends{fill:var(--teal)}
.key{display:inline-block;width:10px;height:10px;border-radius:3px;margin:0 6px 0 10px;vertical-align:-1px}
.key.signups{background:var(--plum);margin-left:0} .key.sends{background:var(--teal)}
.seqhead{display:flex;justify-content:space-between;gap:16px;flex-wrap:wrap;align-items:flex-start;
margin-bottom:10px}
.status{font-size:12px;color:var(--muted);text-align:right}
.legend{margin-left:10px;white-space:nowrap}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:4px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{padding:9px 7px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th:first-child{padding-left:0}
thead th{font-size:10.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
tbody th{font-weight:500}
tbody tr:last-child th,tbody tr:last-child td{border-bottom:none}
.num{text-align:right;font-variant-numeric:tabular-nums}
.strong{font-weight:600}
.subject{display:block;font-weight:400;font-size:12px;color:var(--muted);white-space:normal;max-width:320px}
.untracked{color:var(--muted);font-size:11.5px;font-style:italic}
.zero{color:#c2bab0}
.alert{color:var(--warn);font-weight:600}
.rate{display:inline-flex;flex-direction:column;align-items:flex-end;gap:4px}
.rate small{color:var(--muted);font-size:11px;margin-left:5px}
.badge{font-size:9.5px;text-transform:uppercase;letter-spacing:.05em;color:var(--teal);background:#e6f0ee;
border-radius:6px;padding:1px 5px;margin-left:6px;vertical-align:1px}
.warning{background:#fbeee7;border:1px solid #f0cdbd;color:var(--warn);border-radius:10px;padding:10px 14px}
footer{color:var(--muted);font-size:12px;margin-top:26px;max-width:760px}
@media (max-width:560px){main{padding:24px 14px}.two{grid-template-columns:1fr}.value{font-size:24px}}
"""
