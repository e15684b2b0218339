"""A short acknowledgement to someone whose reply paused her letters.

A painful reply should never meet silence: when a verified reply pauses her
enrollments (`funnel.sendgrid.inbound.receive`), she gets one short note through the
same transport, right after her reply is forwarded: it arrived, the letters are on
hold, who it went to, and the crisis numbers. It goes once per pause. A discreet
reader's note follows her other mail (plain text, her own From, no word of the subject
in the sender, subject or opening). Nothing personal goes to a log. The rule:
docs/decisions.md, "A reply never meets silence".
"""

from __future__ import annotations

from datetime import datetime

from funnel.config import Config
from funnel.store.models import Contact
from funnel.transports.base import Address, OutgoingEmail

#: the (sequence, step) names the note is recorded under in the outbox and the provider
SEQUENCE, STEP = "inbound", "acknowledged"
SUBJECT = "Your note arrived"

_CRISIS = (
    "Email isn't watched around the clock. If you are in crisis or thinking about harming yourself, "
    "please call or text 988, or call 911. If someone close to you is hurting or threatening you, the "
    "National Domestic Violence Hotline is there day and night: call 1-800-799-7233 or text START to "
    "88788. Outside the US: findahelpline.com."
)
_CRISIS_DISCREET = (
    "Email isn't checked around the clock. Support any time: call or text 988 · 1-800-799-7233 · "
    "text START to 88788. In an emergency, call 911. Outside the US: findahelpline.com."
)


def acknowledgement(config: Config, contact: Contact, send_id: str, now: datetime) -> OutgoingEmail | None:
    """The note for `contact` (None when there is no address to write to)."""
    from funnel.mail.compose import sender_of  # compose imports the renderer

    if contact.email is None or contact.suppression is not None:
        return None
    practice = config.practice
    name, address, reply_to = sender_of(config, discreet=contact.discreet)
    greeting = f"Hi {contact.first_name}," if contact.first_name else "Hi,"
    if contact.discreet:
        held = "the regular notes are on hold for now, so nothing else arrives on top of it"
    else:
        held = "I've paused the automatic letters for now, so nothing else arrives on top of it"
    who = practice.reply_note or f"It has been passed on to {name}."
    paragraphs = [
        greeting,
        f"Thank you for writing. Your note arrived safely, and {held}.",
        who,
        _CRISIS_DISCREET if contact.discreet else _CRISIS,
        f"Warmly,\n\n{name}",
    ]
    text = "\n\n".join(paragraphs) + "\n"
    return OutgoingEmail(
        send_id=send_id,
        sender=Address(address, name),
        to=Address(contact.email),
        reply_to=Address(reply_to) if reply_to else None,
        subject=SUBJECT,
        text=text,
        html=None,
        headers=(("Auto-Submitted", "auto-replied"),),
        custom_args=(("funnel_send_id", send_id),),
        categories=(SEQUENCE,),
        date=now,
        sequence=SEQUENCE,
        step=STEP,
    )
