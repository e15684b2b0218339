"""`funnel check` and `funnel preview`: render every step for a sample contact.

The sample contact has every field any source maps, a webinar a week ahead and a
real-looking unsubscribe URL; each step is rendered as a normal and as a discreet
email, and every part must hold the unsubscribe URL and the postal address. Each step
is then rendered for a contact with every optional value empty, so a bare
`{{ contact.fields.message }}` is reported with its file and line before a real
person meets it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, time, timedelta
from html import escape
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import Engine

from funnel.config import KNOWN_FIELDS, Config, Step
from funnel.errors import TemplateError
from funnel.mail.render import MissingData, Rendered, Renderer, TemplateContact, TemplateWebinar, hours_between
from funnel.timeutil import local_wall, zone
from funnel.transports.base import SendResult

SAMPLE_TOKEN = "sample-token"

#: the shipped example practice's postal address and domain: `funnel check` warns while either is still in place
EXAMPLE_POSTAL_ADDRESS = "820 Aspen Grove Lane, Suite 4, Fort Collins, CO 80521"
EXAMPLE_DOMAIN = "healinglightcounseling.test"
#: the shipped example's names and license sentence, by setting: a practice must not send mail signed with them
EXAMPLE_PRACTICE = {
    "name": "Healing Light Counseling",
    "from_name": "Maya Ellis",
    "discreet_from_name": "M. Ellis",
    "licensure": "I am licensed to practice in Colorado",
}


def sample_contact(config: Config, email: str = "sample@example.test") -> TemplateContact:
    fields = {
        name: f"(sample {name.replace('_', ' ')})"
        for source in config.sources.values()
        for name in source.columns
        if name not in KNOWN_FIELDS
    }
    return TemplateContact(email=email, first_name="Sam", last_name="Sample", fields=fields)


def sample_webinar(config: Config, sequence_id: str, now: datetime) -> TemplateWebinar | None:
    """The webinar a contact of this sequence would have, starting a week from `now`."""
    webinar_ids = [s.webinar for s in config.sources.values() if s.webinar and s.enroll == sequence_id]
    webinar_id = webinar_ids[0] if webinar_ids else next(iter(config.webinars), None)
    if webinar_id is None:
        return None
    tz = zone(config.practice.timezone)
    start = local_wall(now.astimezone(tz) + timedelta(days=7), time(19), tz).astimezone(tz)
    info = config.webinars[webinar_id]
    return TemplateWebinar(
        webinar_id,
        info.title,
        info.join_url,
        info.replay_url,
        start,
        recorded=info.recorded,
        hours_until=hours_between(now, start),
    )


def sample_unsubscribe_url(config: Config) -> str:
    return f"{config.practice.base_url}/u/{SAMPLE_TOKEN}"


def footer_problems(config: Config, rendered: Rendered, where: str, *, discreet: bool = False) -> list[str]:
    """Every part must carry the unsubscribe link and the postal address (CAN-SPAM, RFC 8058); a
    discreet reader's, `practice.discreet_postal_address` when it is set."""
    problems = []
    url = sample_unsubscribe_url(config)
    address = config.practice.postal_address
    if discreet and config.practice.discreet_postal_address:
        address = config.practice.discreet_postal_address
    parts = [("plain-text part", rendered.text, address)]
    if rendered.html is not None:
        parts.append(("HTML part", rendered.html, escape(address, quote=False)))
    for label, body, shown_address in parts:
        if url not in body:
            problems.append(
                f"{where}: the {label} has no unsubscribe link: put {{{{ unsubscribe_url }}}} in the layout"
            )
        if shown_address not in body and address not in body:
            problems.append(
                f"{where}: the {label} has no postal address: put {{{{ practice.postal_address }}}} in the layout"
            )
    return problems


#: a link written out in a plain-text email
_LINK = re.compile(r"https?://[^\s()<>]+")


def bare_link_problems(config: Config, rendered: Rendered, where: str, sid: str, step: Step) -> list[str]:
    """A discreet reader's links must all be neutral `/j/` links (or the unsubscribe link): a link the
    renderer does not know as one of the practice's (`funnel.mail.jump.known_targets`) would print in full."""
    neutral = f"{config.practice.base_url}/j/"
    bare = [
        url
        for url in _LINK.findall(rendered.text)
        if url != sample_unsubscribe_url(config) and not url.startswith(neutral)
    ]
    return [
        f"{where} (step {sid}/{step.id}): a discreet reader would see {url} in full: link to a page named in "
        "practice.links or written out in the template (those go through the neutral /j/ link for her)"
        for url in dict.fromkeys(bare)
    ]


def check(config: Config, now: datetime) -> list[str]:
    """All problems with templates, as `file:line: message` (empty when all is well)."""
    try:
        renderer = Renderer(config)
    except TemplateError as exc:
        return [p.strip() for p in str(exc).split("; ")]
    contact = sample_contact(config)
    problems: list[str] = []
    url = sample_unsubscribe_url(config)
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, now)
        for step in sequence.steps:
            broken = False
            for discreet in (False, True):
                try:
                    rendered = renderer.render(sid, sequence, step, contact, webinar, url, discreet=discreet)
                except TemplateError as exc:
                    problems.append(str(exc))
                    broken = True
                    break
                layout = "layout.txt" if discreet else "layout.html"
                where = f"{config.templates_dir}/{layout} (step {sid}/{step.id})"
                found = footer_problems(config, rendered, where, discreet=discreet)
                if discreet:
                    found += bare_link_problems(config, rendered, f"{config.templates_dir}/{step.template}", sid, step)
                for problem in found:
                    if problem not in problems:
                        problems.append(problem)
            blank = None if broken else _empty_contact_problem(renderer, sid, step, webinar, url)
            if blank and blank not in problems:
                problems.append(blank)
    return problems


def _empty_contact_problem(
    renderer: Renderer, sid: str, step: Step, webinar: TemplateWebinar | None, url: str
) -> str | None:
    """Render `step` for a contact with every optional value empty; the problem, if any."""
    empty = TemplateContact(email="sample@example.test")
    if webinar is not None and step.webinar is None:
        webinar = replace(webinar, start=None)
    sequence = renderer.config.sequences[sid]
    for discreet in (False, True):
        try:
            renderer.render(sid, sequence, step, empty, webinar, url, discreet=discreet)
        except MissingData:
            return None  # a run skips this step, with the reason, for someone without a webinar start
        except TemplateError as exc:
            return f"{exc} (checked for a contact with no name and every optional field empty)"
    return None


def render_sample(config: Config, sequence_id: str, step_id: str, now: datetime) -> Rendered:
    sequence, step = config.find_step(sequence_id, step_id)
    renderer = Renderer(config)
    return renderer.render(
        sequence_id,
        sequence,
        step,
        sample_contact(config),
        sample_webinar(config, sequence_id, now),
        sample_unsubscribe_url(config),
    )


def _addresses(config: Config) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every email address and URL of the config, with its YAML path."""
    practice = config.practice
    for key in ("from_email", "reply_to", "discreet_from_email", "discreet_reply_to", "base_url"):
        value = getattr(practice, key)
        if value:
            yield ("practice", key), value
    for name, url in practice.links.items():
        yield ("practice", "links", name), url
    for wid, webinar in config.webinars.items():
        for key in ("join_url", "replay_url"):
            value = getattr(webinar, key)
            if value:
                yield ("webinars", wid, key), value
    for sid, source in config.sources.items():
        if source.thank_you_url:
            yield ("sources", sid, "thank_you_url"), source.thank_you_url


def _host(value: str) -> str:
    """The domain of an address or URL, lower-cased ("" when there is none)."""
    if "://" not in value and "@" in value:
        return value.rsplit("@", 1)[1].strip().lower()
    return (urlsplit(value).hostname or "").lower()


def example_warnings(config: Config) -> list[str]:
    """Warnings while the shipped example's postal address or domain are still in the config.

    They are only warnings (`funnel check` still exits 0): the shipped funnel must
    check cleanly, yet a practice must not send mail signed with an invented address.
    """
    name = config.path.name
    warnings: list[tuple[int, str]] = []
    address = " ".join(config.practice.postal_address.split()).lower()
    if address == EXAMPLE_POSTAL_ADDRESS.lower():
        line = config.line_of("practice", "postal_address") or 1
        warnings.append(
            (
                line,
                f"{name}:{line}: warning: practice.postal_address is still the example address in Fort Collins: "
                "write the practice's own mailing address",
            )
        )
    found = [
        (path, config.line_of(*path))
        for path, value in _addresses(config)
        if _host(value) == EXAMPLE_DOMAIN or _host(value).endswith("." + EXAMPLE_DOMAIN)
    ]
    if found:
        lines = [line for _path, line in found if line]
        keys = ", ".join(".".join(str(part) for part in path) for path, _line in found[:3])
        if len(found) > 3:
            keys += f" and {len(found) - 3} more settings"
        line = min(lines) if lines else 1
        warnings.append(
            (
                line,
                f"{name}:{line}: warning: {keys} still use the example domain {EXAMPLE_DOMAIN}: "
                "write the practice's own addresses and links",
            )
        )
    practice = config.practice
    leftover = [
        key
        for key, example in EXAMPLE_PRACTICE.items()
        if (getattr(practice, key) or "").strip().lower().startswith(example.lower())
    ]
    if leftover:
        line = min(config.line_of("practice", key) or 1 for key in leftover)
        keys = ", ".join(f"practice.{key}" for key in leftover)
        warnings.append(
            (
                line,
                f"{name}:{line}: warning: {keys} still hold the shipped example: "
                "write the practice's own name, your name as you sign and where you are licensed",
            )
        )
    if not (practice.reply_note or "").strip():
        line = config.line_of("practice", "reply_note") or config.line_of("practice") or 1
        warnings.append(
            (
                line,
                f"{name}:{line}: warning: practice.reply_note is empty: every footer invites replies, so say in "
                'one sentence who reads them and how soon (e.g. "I read every reply myself, usually within two '
                'business days.")',
            )
        )
    return [message for _line, message in sorted(warnings)]


def preview_for(
    config: Config, engine: Engine | None, sequence_id: str, step_id: str, now: datetime, address: str | None
) -> Rendered:
    """`funnel preview`: one step rendered for the sample contact, or for a real one (`--email`)."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    from funnel.contacts import find_contact
    from funnel.mail.compose import letter
    from funnel.mail.unsubscribe import Tokens, secret_key, unsubscribe_url
    from funnel.store.models import Enrollment, new_token_key

    _sequence, step = config.find_step(sequence_id, step_id)
    if address is None:
        return render_sample(config, sequence_id, step_id, now)
    assert engine is not None
    with Session(engine) as session:
        contact = find_contact(session, address)
        enrollment = session.scalars(
            select(Enrollment).where(col(Enrollment.contact_id) == contact.id, col(Enrollment.sequence) == sequence_id)
        ).first()
        key = secret_key(session)
        token = Tokens(key).make(contact.token_key or new_token_key())
        url = unsubscribe_url(config.practice.base_url, token)
        return letter(config, Renderer(config, jump_key=key), contact, enrollment, sequence_id, step, url, now)


def send_test(config: Config, sequence_id: str, step_id: str, to: str, now: datetime) -> tuple[str, SendResult]:
    """`funnel send-test`: one sample-rendered step to `to` through the configured transport; its name and answer.

    The outbox transport only writes a file (`extra["path"]`): the command
    must say so, or a practice trying its setup believes an email went out.
    """
    import uuid

    from funnel.errors import ConfigError
    from funnel.mail.compose import envelope
    from funnel.mail.invitation import invitation
    from funnel.store.models import Contact
    from funnel.text import normalize_email
    from funnel.transports import make_transport
    from funnel.transports.base import Address

    try:
        address = normalize_email(to)
    except ValueError as exc:
        raise ConfigError(f"--to {to!r} is not a valid email address ({exc})") from None
    transport = make_transport(config)
    rendered = render_sample(config, sequence_id, step_id, now)
    rendered = Rendered(subject=f"[Test] {rendered.subject}", text=rendered.text, html=rendered.html)
    contact = Contact(email_hash="", email=address, first_name="Sam", created_at=now, updated_at=now)
    _sequence, step = config.find_step(sequence_id, step_id)
    webinar = sample_webinar(config, sequence_id, now)
    attachments = invitation(
        config,
        step,
        person_key="send-test",
        discreet=False,
        webinar_id=webinar.id if webinar else None,
        start=webinar.start if webinar else None,
        now=now,
    )
    send_id = f"test-{uuid.uuid4().hex}"
    email = envelope(
        config,
        contact,
        sequence_id,
        step_id,
        rendered,
        send_id,
        sample_unsubscribe_url(config),
        now,
        attachments=attachments,
    )
    email = replace(email, to=Address(address))
    with transport:
        return transport.name, transport.send(email)
