"""One email, assembled: unsubscribe link, rendered letter, calendar invitation, headers.

Every email funnel writes for a person is put together here, so a run,
`funnel serve`'s immediate sends, `funnel preview --email` and
`funnel send-test` cannot drift apart: `compose` is the whole of it for a
claimed step; `letter` is its rendering part (what preview shows);
`envelope` wraps a rendered letter in the frozen `OutgoingEmail` a transport
gets (From, Reply-To and tracking follow the reader's discretion).
Transports never see database rows: only what this module returns.
"""

from __future__ import annotations

from datetime import datetime

from funnel.config import Config, Step
from funnel.contacts import contact_zone
from funnel.mail.invitation import invitation
from funnel.mail.render import Rendered, Renderer, TemplateContact, TemplateWebinar, hours_between
from funnel.mail.unsubscribe import Tokens, unsubscribe_headers, unsubscribe_url
from funnel.store.models import Contact, Enrollment
from funnel.text import clean_line
from funnel.transports.base import Address, Attachment, OutgoingEmail

__all__ = ["compose", "envelope", "letter", "sender_of"]


def compose(
    config: Config,
    renderer: Renderer,
    tokens: Tokens,
    contact: Contact,
    enrollment: Enrollment,
    step: Step,
    send_id: str,
    now: datetime,
) -> OutgoingEmail:
    """The email of one claimed step for her, as a transport gets it.

    `contact.token_key` must be set (the caller gives a row written by other
    means one first, in its own way of writing). Raises `MissingData` when the
    letter needs what she does not have (a webinar start), `TemplateError`
    when a template fails for her values.
    """
    assert contact.token_key is not None
    url = unsubscribe_url(config.practice.base_url, tokens.make(contact.token_key, send_id))
    rendered = letter(config, renderer, contact, enrollment, enrollment.sequence, step, url, now)
    attachments = invitation(
        config,
        step,
        person_key=contact.email_hash,
        discreet=contact.discreet,
        webinar_id=enrollment.webinar,
        start=enrollment.webinar_start,
        now=now,
        session=enrollment.session,
        join_url=enrollment.join_url,
        moves=enrollment.moves or 0,
    )
    return envelope(config, contact, enrollment.sequence, step.id, rendered, send_id, url, now, attachments=attachments)


def letter(
    config: Config,
    renderer: Renderer,
    contact: Contact,
    enrollment: Enrollment | None,
    sequence_id: str,
    step: Step,
    url: str,
    now: datetime | None = None,
) -> Rendered:
    """Render one step for a real contact, with the webinar of her enrollment (a run, preview).

    `now` is the moment the email is written (the send): templates see how far away
    the webinar is from it (`webinar.hours_until`).
    """
    assert contact.email is not None
    webinar = None
    if enrollment is not None and enrollment.webinar in config.webinars:
        info = config.webinars[enrollment.webinar]
        start = enrollment.webinar_start.astimezone(contact_zone(config, contact)) if enrollment.webinar_start else None
        webinar = TemplateWebinar(
            enrollment.webinar,
            info.title,
            enrollment.join_url or info.join_url,  # her own link, when the export gave her one
            info.replay_url,
            start,
            session=enrollment.session or None,
            recorded=info.recorded,
            hours_until=hours_between(now, start),
            # where her session was before its latest move: said in the letter that answers the move
            previous_start=(
                enrollment.previous_start.astimezone(contact_zone(config, contact))
                if step.on == "rescheduled" and enrollment.previous_start
                else None
            ),
        )
    return renderer.render(
        sequence_id,
        config.sequences[sequence_id],
        step,
        TemplateContact(
            contact.email, contact.first_name, contact.last_name, dict(contact.fields or {}), contact.discreet
        ),
        webinar,
        url,
        discreet=contact.discreet,
    )


def sender_of(config: Config, *, discreet: bool) -> tuple[str, str, str | None]:
    """The (From name, From address, Reply-To) of an email to a reader, discreet or not.

    A discreet reader's email comes from `practice.discreet_from_email` under
    `discreet_from_name` (each falling back to the ordinary one), and her
    replies go to `practice.discreet_reply_to` when it is set: it wins over
    `inbound.reply_address`, whose domain is usually the practice's own and
    would show in her mail client's reply line. Unset, her replies go where
    everyone's do: the Inbound Parse address when there is one (a reply
    pauses the person's letters), else `practice.reply_to`.
    """
    practice = config.practice
    reply_address = config.inbound.reply_address or practice.reply_to
    if not discreet:
        return practice.from_name or practice.name, practice.from_email, reply_address
    return (
        practice.discreet_from_name or practice.from_name or practice.name,
        practice.discreet_from_email or practice.from_email,
        practice.discreet_reply_to or reply_address,
    )


def envelope(
    config: Config,
    contact: Contact,
    sequence_id: str,
    step_id: str,
    rendered: Rendered,
    send_id: str,
    url: str,
    now: datetime,
    *,
    attachments: tuple[Attachment, ...] = (),
) -> OutgoingEmail:
    """The frozen email for a transport: addresses, headers, custom args, tracking, attachments."""
    sender_name, sender_address, reply_address = sender_of(config, discreet=contact.discreet)
    assert contact.email is not None
    # cleaned again here: a name stored by an older version may hold a line break
    display = clean_line(" ".join(p for p in (contact.first_name, contact.last_name) if p)) or None
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(sender_address, sender_name),
        to=Address(contact.email, display),
        reply_to=Address(reply_address) if reply_address else None,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=unsubscribe_headers(url),
        custom_args=(("funnel_send_id", send_id), ("funnel_sequence", sequence_id), ("funnel_step", step_id)),
        categories=(sequence_id,),
        tracking_opens=config.tracking.opens and not contact.discreet,
        tracking_clicks=config.tracking.clicks and not contact.discreet,
        date=now,
        sequence=sequence_id,
        step=step_id,
        attachments=attachments,
    )
