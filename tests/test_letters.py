"""The shipped letters (sequences.yaml and email_templates/): safe, honest and consistent.

These read the real copy a practice would send: every step rendered through the
real Renderer, and the first week after a webinar driven through the real
`funnel run`. They guard what issue 7 asked of the letters, so that an edit that
brings back an invented claim or drops the safety footer is caught.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from conftest import REPO, Project

from funnel.config import Config, load_config
from funnel.mail.preview import sample_unsubscribe_url, sample_webinar
from funnel.mail.render import Rendered, Renderer, TemplateContact

NOW = datetime(2027, 1, 5, 16, tzinfo=UTC)
FACTS = {
    "licensure": "I am licensed to practice in Oregon.",
    "response_time": "within three days",
    "consultation_details": "It takes about fifteen minutes, by phone.",
    "reply_note": "I read every reply myself.",
}
NO_FACTS = dict.fromkeys(FACTS)
#: the letters that invite the reader to book a consultation
INVITATIONS = [
    ("webinar-relationship-911", "consultation-invite"),
    ("consultation", "received"),
    ("consultation", "what-to-expect"),
    ("consultation", "follow-up"),
    ("betrayal-recovery", "what-you-feel"),  # the crisis offers, in the first week
    ("betrayal-recovery", "womens-group"),
    ("betrayal-recovery", "ways-to-work"),
    ("betrayal-recovery", "door-open"),
]


def shipped(**practice: str | None) -> Config:
    config = load_config(REPO / "sequences.yaml")
    if not practice:
        return config
    return config.model_copy(update={"practice": config.practice.model_copy(update=practice)})


def render_all(
    config: Config, *, first_name: str | None = "Ana", discreet: bool = False
) -> dict[tuple[str, str], Rendered]:
    """Every step of the config, rendered for one contact (who wrote a message)."""
    renderer = Renderer(config)
    contact = TemplateContact(email="ana@example.test", first_name=first_name, fields={"message": "hello"})
    rendered = {}
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, NOW)
        for step in sequence.steps:
            rendered[(sid, step.id)] = renderer.render(
                sid, sequence, step, contact, webinar, sample_unsubscribe_url(config), discreet=discreet
            )
    return rendered


def words(rendered: Rendered) -> str:
    """Subject and plain text, with line breaks folded, for phrase searches."""
    return " ".join(f"{rendered.subject}\n{rendered.text}".split())


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("discreet", [False, True])
def test_every_email_gives_the_crisis_lines_and_the_privacy_line(discreet: bool) -> None:
    for key, rendered in render_all(shipped(), discreet=discreet).items():
        parts = [words(rendered)]
        if rendered.html is not None:
            parts.append(" ".join(rendered.html.split()))
        for part in parts:
            for needle in ("988", "911", "1-800-799-7233", "text START to 88788"):
                assert needle in part, (key, needle)
            if discreet:  # neutral labels, and no sentence that tells someone else she keeps this quiet
                assert "Support any time: call or text 988 · 1-800-799-7233 · text START to 88788" in part, key
                for admits in ("discreet", "National Domestic Violence Hotline", "someone else may read"):
                    assert admits not in part, (key, admits)
            else:
                assert "National Domestic Violence Hotline" in part, key
                assert "If someone else may read this inbox, you can reply to ask for discreet emails" in part, key


def test_letters_that_coach_asking_a_partner_say_only_if_it_feels_safe() -> None:
    rendered = render_all(shipped())
    for step in ("your-lines", "hard-conversations", "closeness"):
        assert re.search(r"only if it feels safe", words(rendered[("betrayal-recovery", step)]), re.I), step


# --------------------------------------------------------------------------- honesty


def test_no_invented_credential_and_the_details_are_marked_as_examples() -> None:
    config = shipped()
    assert not (config.practice.from_name or "").startswith("Dr")
    assert "Dr." not in (REPO / "sequences.yaml").read_text()
    head = (REPO / "sequences.yaml").read_text().split("\npractice:")[0]
    assert "Make it yours" in head and "example" in head
    readme = (REPO / "README.md").read_text()
    assert readme.index("## Make it yours") < readme.index("## Everyday use")
    assert readme.index("./scripts/test") < readme.index("## Make it yours")


UNSUPPORTED = [
    "two business days",
    "twenty minutes",
    "phone or video",
    "many women tell me",
    "many women do",
    "most women don't",
    "anonymous",
    "read every reply",
    "write to you personally",
    "stays in the group",
    "once a week",
    "small group",
    "small, confidential",
    "one hour a week",
    "that hour",
    "this hour",
    "Dr.",
    "start soon",  # availability the practice has not promised
    "someone to know",  # implies a person reads replies (practice.reply_note says so, if true)
    "a few more short letters",  # there are about ten
    "past few weeks",  # the series spans about two months
]


def test_the_letters_make_no_claim_the_practice_has_not_made() -> None:
    for key, rendered in render_all(shipped()).items():
        text = words(rendered).lower()
        for phrase in UNSUPPORTED:
            assert phrase.lower() not in text, (key, phrase)


def test_preheaders_make_no_claim_the_practice_has_not_made() -> None:
    for sid, sequence in shipped().sequences.items():
        for step in sequence.steps:
            for shown in (step.preheader or "", step.discreet_preheader or ""):
                for phrase in UNSUPPORTED:
                    assert phrase.lower() not in shown.lower(), (sid, step.id, phrase)


def test_group_confidentiality_is_an_agreement_with_limits() -> None:
    text = words(render_all(shipped())[("betrayal-recovery", "womens-group")])
    assert "agree" in text and "limits" in text and "not a guarantee" in text


def test_practice_facts_appear_only_when_the_practice_fills_them_in() -> None:
    filled = render_all(shipped(**FACTS))
    empty = render_all(shipped(**NO_FACTS))
    received = words(filled[("consultation", "received")])
    assert "I'll get back to you within three days to find a time" in received
    assert "It takes about fifteen minutes, by phone." in received
    assert "It takes about fifteen minutes" in words(filled[("consultation", "what-to-expect")])
    assert "I read every reply myself." in words(filled[("webinar-relationship-911", "registered")])
    assert "I'll get back to you to find a time" in words(empty[("consultation", "received")])
    for key, rendered in empty.items():
        text = words(rendered)
        for value in FACTS.values():
            assert value not in text, key
        assert "None" not in text.replace("None of this", "") and " ." not in text and "  " not in rendered.text, key
        assert "licensed" not in text, key


def test_the_invitations_to_book_say_where_the_therapist_is_licensed() -> None:
    rendered = render_all(shipped(**FACTS))
    for key in INVITATIONS:
        assert FACTS["licensure"] in words(rendered[key]), key
    assert shipped().practice.licensure  # the shipped example shows the sentence too


def test_the_signature_falls_back_to_the_practice_name() -> None:
    rendered = render_all(shipped(from_name=None))
    for key, email in rendered.items():
        assert "Healing Light Counseling\n\n--" in email.text, key


# --------------------------------------------------------------------------- consent


def test_the_registration_confirmation_says_letters_follow_and_stop_any_time() -> None:
    text = words(render_all(shipped())[("webinar-relationship-911", "registered")])
    assert "After the webinar, I'll send you a series of short letters" in text
    # the link opens a page of choices (stop, fewer, pause): "any time", not "one click"
    assert "where you can stop them, or choose fewer, any time you like" in text
    assert "one click" not in text


def test_the_letters_after_the_webinar_say_how_often_more_follow() -> None:
    rendered = render_all(shipped())
    for step in ("replay", "thank-you"):
        assert "about one a week" in words(rendered[("webinar-relationship-911", step)]), step


# --------------------------------------------------------------------------- consistency


def test_one_fallback_greeting_in_subjects_and_bodies() -> None:
    sources = (REPO / "sequences.yaml").read_text() + "".join(
        p.read_text() for p in (REPO / "email_templates").rglob("*.md")
    )
    assert set(re.findall(r"first_name or '([^']*)'", sources)) == {"friend"}
    for key, rendered in render_all(shipped(), first_name=None).items():
        assert rendered.text.startswith("Hi friend,\n"), key
        assert "there," not in rendered.subject and "Friend" not in rendered.subject, key


BRITISH = ["counselling", "judgement", "apologis", "realis", "practise", "behaviour", "towards", "afterwards"]


def test_us_spelling_and_place_rather_than_seat() -> None:
    for key, rendered in render_all(shipped()).items():
        text = words(rendered).lower()
        for spelling in BRITISH:
            assert spelling not in text, (key, spelling)
        assert not re.search(r"\bseats?\b", text), key


def test_one_voice_no_we_for_the_practice() -> None:
    for key, rendered in render_all(shipped()).items():
        text = words(rendered)
        assert "we'll help you" not in text and "We received" not in text, key
        assert not re.search(r"\bokay\b", text, re.I), key  # the letters say "all right"


def test_the_exercises_leave_the_choice_to_the_reader() -> None:
    """Breathing and grounding can unsettle a traumatized body: the letter says to take only what helps."""
    text = words(render_all(shipped())[("betrayal-recovery", "steadier-ground")])
    assert "Take what helps and leave the rest" in text


LOUD = [
    "betray",
    "affair",
    "trauma",
    "infidel",
    "intima",
    "sex",
    "partner",
    "couple",
    "crisis",
    "hard conversation",
    "anger",
    "back together",
]


def test_subjects_and_preheaders_stay_quiet_in_a_shared_inbox() -> None:
    config = shipped()
    for sid, sequence in config.sequences.items():
        for step in sequence.steps:
            assert step.preheader, (sid, step.id)
            assert step.discreet_preheader, (sid, step.id)
            for shown in (step.subject, step.preheader, step.discreet_subject or "", step.discreet_preheader):
                for word in LOUD:
                    assert word not in shown.lower(), (sid, step.id, shown)


def test_the_opening_lines_stay_quiet_for_a_discreet_reader() -> None:
    """A plain-text email's inbox preview runs on past its first line into the letter's opening.

    For every step: the subject and the first 200 characters (the preheader line,
    the greeting, the opening) hold no link, no host or link path of the
    practice, and none of the words that leaked there before (issue 18).
    tests/test_discretion.py checks the same for the sender and for a reader
    without a name.
    """
    config = shipped()
    hosts = {config.practice.from_email.rpartition("@")[2], "healinglightcounseling"}
    hosts |= {u.split("/")[2] for u in (config.practice.base_url, *config.practice.links.values())}
    paths = {"/webinar/", "relationship-911", "/join", "/replay", "/services", "womens-group", "/consultation"}
    leaked = [*LOUD, "webinar", "survival", "discovery", "protecting", "therap", "counsel", "recovery", "relationship"]
    for key, rendered in render_all(config, discreet=True).items():
        opening = f"{rendered.subject}\n{rendered.text[:PREVIEW_CHARS]}".lower()
        assert "http" not in opening and "/j/" not in opening, (key, opening)
        for word in (*leaked, *hosts, *paths):
            assert word not in opening, (key, word, opening)


#: how much of a plain-text email an inbox preview, a lock screen or a watch may show
PREVIEW_CHARS = 200


# --------------------------------------------------------------------------- what the article offers


def test_the_series_speaks_of_anger_and_of_intimacy_recovery() -> None:
    rendered = render_all(shipped())
    series = " ".join(words(r) for (sid, _), r in rendered.items() if sid == "betrayal-recovery")
    assert "anger" in series.lower()
    assert "Rebuilding intimacy after betrayal" in series


def test_the_crisis_offers_reach_a_registrant_in_the_first_week_after_the_webinar(project: Project, funnel) -> None:
    """Intensives, individual and couples work: mentioned within 7 days of the webinar, not five weeks on."""
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,no\n",
    )
    start = datetime(2027, 1, 10, 16, tzinfo=UTC)
    webinar = datetime(2027, 1, 15, 2, tzinfo=UTC)  # 19:00 in Denver
    hours = 0
    while start.timestamp() + hours * 3600 <= webinar.timestamp() + 7 * 86400:
        now = datetime.fromtimestamp(start.timestamp() + hours * 3600, UTC)
        assert funnel("run", "--now", now.strftime("%Y-%m-%dT%H:%M:%SZ")).code == 0
        hours += 6
    texts = [
        " ".join(m.get_body(preferencelist=("plain",)).get_content().split())  # type: ignore[union-attr]
        for m in project.messages()
    ]
    config = shipped()
    links = config.practice.links
    # named in plain text, in the article's order, beneath one call to action (issue 18, item 10)
    after = [t for t in texts if "3-hour intensive sessions" in t]
    assert after, "no email in the first week after the webinar names the 3-hour intensives"
    assert any(
        t.index("Individual counseling") < t.index("Couples therapy") < t.index("3-hour intensive") for t in after
    )
    for text in after:
        booking = [link for name, link in links.items() if name != "website" and link in text]
        assert booking == [links["consultation"]], booking


def test_a_reader_who_asks_for_discreet_emails_can_be_marked_through_the_shipped_source(
    project: Project, funnel
) -> None:
    """The footer offers discreet emails; `discreet-requests` is how the practice honors a reply asking for them."""
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n",
    )
    assert funnel("run", "--now", "2027-01-10T16:00:00Z").code == 0
    project.write("signups/discreet-requests.csv", "Email,Discreet\nANA@example.test,yes\nnobody@example.test,yes\n")
    assert funnel("run", "--now", "2027-01-14T02:00:00Z").code == 0
    first, reminder = project.messages()
    assert "text/html" in [part.get_content_type() for part in first.walk()]  # before she asked: HTML too
    assert reminder.get_content_type() == "text/plain"
    assert reminder["Subject"] == "A reminder for tomorrow"
    assert funnel("contacts", "show", "nobody@example.test").code == 1  # nobody new is created
