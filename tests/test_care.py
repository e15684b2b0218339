"""Care, consent and pacing in the shipped letters (issue 18, items 6-12).

The recording said before the webinar (and a "sorry I missed you" letter when
there is none), the goal keeping the recording, a confirmation worded for the
time left with no reminder on its heels. Letters go through the public
`Renderer.render` and, end to end, through the real `funnel run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import REPO, Project

from funnel.config import Config, load_config
from funnel.mail.preview import sample_unsubscribe_url, sample_webinar
from funnel.mail.render import Rendered, Renderer, TemplateContact, TemplateWebinar

NOW = datetime(2027, 1, 5, 16, tzinfo=UTC)
SEQ = "webinar-relationship-911"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def shipped(**webinar: Any) -> Config:
    config = load_config(REPO / "sequences.yaml")
    if not webinar:
        return config
    info = config.webinars["relationship-911"].model_copy(update=webinar)
    return config.model_copy(update={"webinars": {"relationship-911": info}})


def letter(
    config: Config,
    step_id: str,
    *,
    discreet: bool = False,
    hours_until: float | None = None,
    webinar: TemplateWebinar | None = None,
    sequence_id: str = SEQ,
) -> Rendered:
    sequence, step = config.find_step(sequence_id, step_id)
    seminar = webinar or sample_webinar(config, sequence_id, NOW)
    if seminar is not None and hours_until is not None:
        seminar = replace(seminar, hours_until=hours_until)
    contact = TemplateContact(email="ana@example.test", first_name="Ana", fields={"message": "hello"})
    return Renderer(config).render(
        sequence_id, sequence, step, contact, seminar, sample_unsubscribe_url(config), discreet=discreet
    )


def words(rendered: Rendered) -> str:
    return " ".join(f"{rendered.subject}\n{rendered.text}".split())


# --------------------------------------------------------------------------- 6: the recording


@pytest.mark.parametrize("discreet", [False, True])
@pytest.mark.parametrize("step_id", ["registered", "day-before"])
def test_the_letters_before_the_webinar_say_it_is_recorded_and_how_to_stay_unseen(step_id: str, discreet: bool) -> None:
    text = words(letter(shipped(), step_id, discreet=discreet))
    assert "The webinar is recorded" in text
    assert "camera off" in text and "display name" in text


@pytest.mark.parametrize("step_id", ["registered", "day-before"])
def test_an_unrecorded_webinar_says_so_before_and_promises_no_recording(step_id: str) -> None:
    text = words(letter(shipped(recorded=False), step_id))
    assert "isn't recorded" in text and "camera off" in text
    assert "is recorded" not in text


def test_an_unrecorded_webinar_gets_a_sorry_i_missed_you_letter_instead_of_the_replay() -> None:
    config = shipped(recorded=False)
    for discreet in (False, True):
        rendered = letter(config, "replay", discreet=discreet)
        text = words(rendered)
        assert rendered.subject == "Sorry I missed you"
        assert "wasn't recorded" in text
        assert "recording is ready" not in text and "Watch the recording" not in text
        assert "when it runs next" in text  # no next date known: the practice's website
        assert config.webinars["relationship-911"].replay_url not in text
    thanks = words(letter(config, "thank-you"))
    assert "recording" not in thanks.lower()


def test_the_missed_letter_names_the_next_date_when_one_is_known() -> None:
    config = shipped(recorded=False)
    seminar = sample_webinar(config, SEQ, NOW)
    assert seminar is not None and seminar.next_start is None  # sessions will provide it
    later = replace(seminar, next_start=seminar.start + timedelta(days=28) if seminar.start else None)
    text = words(letter(config, "replay", webinar=later))
    assert "the next one is on Tuesday, February 9 at 7:00 PM MST" in text
    assert "my website" not in text


def test_a_recorded_webinar_keeps_the_replay_letter() -> None:
    rendered = letter(shipped(), "replay")
    assert rendered.subject == "The recording is ready when you are"
    assert "Watch the recording" in rendered.text


# --------------------------------------------------------------------------- 8: late registrants


@pytest.mark.parametrize(
    ("hours", "says", "never"),
    [
        (None, "a reminder the day before and again an hour before", "I won't send another"),
        (72.0, "a reminder the day before and again an hour before", "I won't send another"),
        (20.0, "a short reminder about an hour before we begin", "the day before"),
        (1.08, "We begin in a few hours, so this email is your reminder as well", "reminder the day before"),
        (0.5, "We begin very soon, in less than an hour", "a short reminder"),
    ],
)
def test_the_confirmation_is_worded_for_the_time_left(hours: float | None, says: str, never: str) -> None:
    for discreet in (False, True):
        text = words(letter(shipped(), "registered", hours_until=hours, discreet=discreet))
        assert says in text
        assert never not in text


def test_registering_65_minutes_before_gets_one_email_worded_for_it(
    project: Project, funnel: Callable[..., Any]
) -> None:
    """The real run: the confirmation, and the hour-before skipped with its reason."""
    row = "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    project.write("signups/webinar-registrations.csv", HEADER + row)
    # 17:55 in Denver: 65 minutes before the start
    assert funnel("run", "--now", "2027-01-15T00:55:00Z").code == 0
    assert funnel("run", "--now", "2027-01-15T01:00:00Z").code == 0
    assert [step for _to, _seq, step in project.sent()] == ["registered"]
    body = str(project.messages()[0].get_body(preferencelist=("plain",)).get_content())
    assert "I won't send another before we start" in " ".join(body.split())
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    steps = {s["id"]: s for s in shown["enrollments"][0]["steps"]}
    assert steps["hour-before"]["status"] == "skipped"
    assert steps["hour-before"]["reason"] == "too soon after the confirmation (within 2h)"


# --------------------------------------------------------------------------- 7: the goal keeps the replay


def test_the_shipped_goal_keeps_the_recording_and_the_thank_you() -> None:
    sequence = shipped().sequences[SEQ]
    kept = {s.id for s in sequence.steps if s.transactional or s.after_goal}
    assert {"registered", "day-before", "hour-before", "replay", "thank-you"} <= kept
    assert "consultation-invite" not in kept


# --------------------------------------------------------------------------- 9: a reply never meets silence


def acknowledgements(project: Project) -> list[Any]:
    return [m for m in project.messages() if m["Subject"] == "Your note arrived"]


@pytest.mark.parametrize("discreet", [False, True])
def test_a_reply_that_pauses_her_gets_one_short_acknowledgement_with_the_numbers(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], discreet: bool
) -> None:
    from test_discretion import PREVIEW, SUBJECT_WORDS, practice_hosts
    from test_inbound import KEY, parse_post, with_inbound
    from test_inbound import NOW as REPLY_NOW

    with_inbound(project)
    flag = "yes" if discreet else "no"
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,2027-01-14 19:00,,{flag}\n")
    assert funnel("run", "--now", REPLY_NOW).code == 0
    server = funnel_server("--now", REPLY_NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        first = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post())
        assert first.status_code == 200 and first.json()["paused"] == 1, first.text
        # a second reply while she is paused pauses nothing more: no second note
        again = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post(message_id="<second@mail.example.test>"))
        assert again.status_code == 200 and again.json()["paused"] == 0
    server.stop()
    assert "ana@example.test" not in server.stderr
    [note] = acknowledgements(project)
    assert note["To"].addresses[0].addr_spec == "ana@example.test"
    assert note.get_body(preferencelist=("html",)) is None or not discreet
    text = str(note.get_body(preferencelist=("plain",)).get_content())
    flat = " ".join(text.split())
    for number in ("988", "911", "1-800-799-7233", "text START to 88788", "findahelpline.com"):
        assert number in flat
    assert "Your note arrived safely" in flat
    if discreet:
        config = load_config(project.root / "sequences.yaml")
        # as test_discretion reads it: the sender's name (her From address is the practice's
        # discreet_from_email once it is set), the subject and the first characters
        name = note["From"].addresses[0].display_name
        assert name == config.practice.discreet_from_name
        shown = f"{name}\n{note['Subject']}\n{text[:PREVIEW]}".lower()
        for word in SUBJECT_WORDS:
            assert word not in shown, word
        for host in practice_hosts(config):
            assert host not in shown, host
        assert "hotline" not in flat.lower() and "crisis" not in flat.lower()
    else:
        assert "paused the automatic letters" in flat
    # after a resume and a new reply, a new pause gets a new note
    assert funnel("contacts", "resume", "ana@example.test", "--now", REPLY_NOW).code == 0
    server = funnel_server("--now", REPLY_NOW, env={"FUNNEL_INBOUND_KEY": KEY})
    with server.client() as http:
        third = http.post(f"/webhooks/inbound?key={KEY}", files=parse_post(message_id="<third@mail.example.test>"))
        assert third.json()["paused"] == 1
    server.stop()
    assert len(acknowledgements(project)) == 2


def every_letter(config: Config, *, discreet: bool) -> dict[tuple[str, str], Rendered]:
    renderer = Renderer(config)
    contact = TemplateContact(email="ana@example.test", first_name="Ana", fields={"message": "hello"})
    out = {}
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, NOW)
        for step in sequence.steps:
            out[(sid, step.id)] = renderer.render(
                sid, sequence, step, contact, webinar, sample_unsubscribe_url(config), discreet=discreet
            )
    return out


@pytest.mark.parametrize("discreet", [False, True])
def test_every_letter_says_it_is_general_information_and_email_is_not_private(discreet: bool) -> None:
    config = load_config(REPO / "sequences.yaml")
    for key, rendered in every_letter(config, discreet=discreet).items():
        parts = [" ".join(rendered.text.split())]
        if rendered.html is not None:
            parts.append(" ".join(rendered.html.split()))
        for part in parts:
            assert "general information" in part and "Email isn't fully private" in part, key
            if discreet:  # her footer names no service (the letter itself may)
                footer = rendered.text.split("\n-- \n", 1)[-1].lower()
                assert "therap" not in footer and "doesn't start a professional relationship" in part, key
            else:
                assert "They aren't therapy" in part and "writing back doesn't make you a client" in part, key
            assert "findahelpline.com" in part, key
            assert "one click" not in part, key  # the link opens a page of choices
        assert "\n-- \n" in rendered.text, key  # the signature marker mail clients know


def test_who_reads_replies_is_said_in_the_footer_once_the_practice_writes_it() -> None:
    config = load_config(REPO / "sequences.yaml")
    config = config.model_copy(
        update={"practice": config.practice.model_copy(update={"reply_note": "I read every reply myself."})}
    )
    rendered = every_letter(config, discreet=False)[("betrayal-recovery", "anger")]
    assert "make you a client. I read every reply myself." in " ".join(rendered.text.split())


def test_the_footer_is_readable_and_outlook_gets_a_600px_table() -> None:
    import re

    layout = (REPO / "email_templates" / "layout.html").read_text()
    footer = re.search(r"\.footer \{(.*?)\}", layout, re.S)
    crisis = re.search(r"\.crisis \{(.*?)\}", layout, re.S)
    assert footer and crisis
    assert "font-size: 14px" in footer.group(1) and "font-size: 14px" in crisis.group(1)

    def luminance(hex_color: str) -> float:
        channels = [int(hex_color[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    background = luminance("f6f3ef")
    for block in (footer.group(1), crisis.group(1)):
        color = re.search(r"color: #([0-9a-f]{6})", block)
        assert color
        contrast = (background + 0.05) / (luminance(color.group(1)) + 0.05)
        assert contrast >= 4.5, (color.group(1), contrast)
    assert '<!--[if mso]><table role="presentation" width="600"' in layout


# --------------------------------------------------------------------------- 12: choices on the unsubscribe page


def registered_with_link(project: Project, funnel: Callable[..., Any], discreet: bool = False) -> str:
    """Ana registers for the webinar (Jan 14, 7 PM Denver) and gets her confirmation: its unsubscribe path."""
    flag = "yes" if discreet else "no"
    project.write("signups/webinar-registrations.csv", HEADER + f"ana@example.test,Ana,,2027-01-14 19:00,,{flag}\n")
    assert funnel("run", "--now", "2027-01-10T16:00:00Z").code == 0
    [message] = project.messages()
    url = str(message["List-Unsubscribe"]).strip("<>")
    return "/u/" + url.split("/u/", 1)[1]


def enrollment_of(funnel: Callable[..., Any], sequence: str = SEQ) -> dict[str, Any]:
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    return next(e for e in shown["enrollments"] if e["sequence"] == sequence)


def test_just_the_webinar_emails_keeps_the_reminders_and_recording_and_ends_the_letters(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    link = registered_with_link(project, funnel)
    server = funnel_server("--now", "2027-01-10T17:00:00Z")
    with server.client() as http:
        choices = http.get(link)
        assert choices.status_code == 200
        for label in ("Stop everything", "Just the webinar emails", "Pause for a month"):
            assert label in choices.text
        # the page's own forms post to these relative actions
        token = link.rsplit("/", 1)[1]
        assert f'action="{token}/letters"' in choices.text and f'action="{token}/pause"' in choices.text
        chosen = http.post(link + "/letters", follow_redirects=True)
        assert chosen.status_code == 200 and "The letters have stopped" in chosen.text
        assert 'action="letters-undo"' in chosen.text
        assert http.post(link + "/letters", follow_redirects=True).status_code == 200  # twice is harmless
    server.stop()
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert "letters-stopped" in shown["tags"] and shown["unsubscribed"] is False
    for now in ("2027-01-14T02:00:00Z", "2027-01-15T01:00:00Z", "2027-01-15T15:00:00Z", "2027-01-25T16:00:00Z"):
        assert funnel("run", "--now", now).code == 0
    sent = [step for _to, seq, step in project.sent() if seq == SEQ]
    assert sent == ["registered", "day-before", "hour-before", "replay"]
    webinar = enrollment_of(funnel)
    steps = {s["id"]: s for s in webinar["steps"]}
    assert steps["consultation-invite"]["status"] == "skipped"
    assert steps["consultation-invite"]["reason"].startswith("goal reached: letters-stopped")
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert "betrayal-recovery" not in {e["sequence"] for e in shown["enrollments"]}  # `next:` ended too


def test_just_the_webinar_emails_is_undone_from_the_same_page(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    link = registered_with_link(project, funnel)
    server = funnel_server("--now", "2027-01-10T17:00:00Z")
    with server.client() as http:
        assert http.post(link + "/letters", follow_redirects=True).status_code == 200
        undone = http.post(link + "/letters-undo", follow_redirects=True)
        assert undone.status_code == 200 and "The letters will come again" in undone.text
        assert 'action="letters"' in undone.text  # and chosen again from there
    server.stop()
    assert "letters-stopped" not in funnel("contacts", "show", "ana@example.test", "--json").json()["tags"]
    for now in ("2027-01-15T15:00:00Z", "2027-01-17T16:00:00Z"):
        assert funnel("run", "--now", now).code == 0
    assert "consultation-invite" in [step for _to, _seq, step in project.sent()]


def test_pause_for_a_month_holds_everything_and_ends_by_itself_or_from_the_page(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    link = registered_with_link(project, funnel)
    server = funnel_server("--now", "2027-01-10T17:00:00Z")
    with server.client() as http:
        paused = http.post(link + "/pause", follow_redirects=True)
        assert paused.status_code == 200 and "Nothing will come to this address for 30 days" in paused.text
        assert 'action="pause-undo"' in paused.text
    server.stop()
    webinar = enrollment_of(funnel)
    assert webinar["status"] == "paused" and webinar["reason"] == "paused for a month from the email page"
    assert funnel("run", "--now", "2027-01-14T02:00:00Z").code == 0  # the day-before falls in the pause
    assert [step for _to, _seq, step in project.sent()] == ["registered"]
    # still paused 29 days on; the next run after 30 days resumes her by itself
    assert funnel("run", "--now", "2027-02-08T17:00:00Z").code == 0
    assert enrollment_of(funnel)["status"] == "paused"
    assert funnel("run", "--now", "2027-02-09T17:01:00Z").code == 0
    assert enrollment_of(funnel)["status"] in ("active", "finished", "exited")

    # and from the page: pause, then end it at once
    server = funnel_server("--now", "2027-02-10T17:00:00Z")
    with server.client() as http:
        assert http.post(link + "/pause", follow_redirects=True).status_code == 200
        ended = http.post(link + "/pause-undo", follow_redirects=True)
        assert ended.status_code == 200 and "The pause has ended" in ended.text
    server.stop()
    assert enrollment_of(funnel)["status"] != "paused"


def test_a_discreet_readers_choices_page_names_nothing(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    from test_discretion import SUBJECT_WORDS

    link = registered_with_link(project, funnel, discreet=True)
    server = funnel_server("--now", "2027-01-10T17:00:00Z")
    with server.client() as http:
        pages = [http.get(link)] + [
            http.post(f"{link}/{c}", follow_redirects=True) for c in ("letters", "letters-undo", "pause", "pause-undo")
        ]
        assert http.post(link + "/nonsense").status_code == 404
    server.stop()
    assert "Just the reminders" in pages[0].text and "Pause for a month" in pages[0].text
    for page in pages:
        assert page.status_code == 200
        assert "Healing Light" not in page.text
        assert not [w for w in SUBJECT_WORDS if w in page.text.lower()], page.text


# --------------------------------------------------------------------------- 10, craft: offers, subjects, lines


def test_the_first_offer_has_one_call_to_action_and_does_not_assume_she_watched() -> None:
    config = load_config(REPO / "sequences.yaml")
    for discreet in (False, True):
        rendered = letter(config, "consultation-invite", discreet=discreet)
        links = config.practice.links
        text = rendered.text.split("\n-- \n", 1)[0]  # the letter, above the footer
        named = [name for name, url in links.items() if url in text and name != "website"]  # a prefix of all
        assert named == ["consultation"] or discreet
        assert "after a webinar like this one" not in text and "in crisis" not in text
        if rendered.html is not None:
            assert "<strong>" not in rendered.html  # no bold services competing with the one action
            # the call to action is a table-based button Outlook draws too, the only one in the letter
            assert rendered.html.count('<table class="button"') == 1
            button = rendered.html.split('<table class="button"', 1)[1].split("</table>", 1)[0]
            assert 'bgcolor="#3f6f62"' in button and f'<a href="{links["consultation"]}"' in button
        neutral = f"{config.practice.base_url}/j/"
        target = neutral if discreet else links["consultation"]
        assert f"\n\nBook a free consultation: {target}" in text
    body = words(letter(config, "consultation-invite"))
    assert "whether or not you were able to watch the webinar" in body
    order = ["Individual counseling", "Couples therapy", "3-hour intensive sessions", "8-week group for women"]
    assert [body.index(s) for s in order] == sorted(body.index(s) for s in order)


def test_teaching_letters_link_to_booking_less_and_every_booking_link_has_the_licensure_line() -> None:
    config = load_config(REPO / "sequences.yaml")
    booking = config.practice.links["consultation"]
    renderer = Renderer(config)
    contact = TemplateContact(email="ana@example.test", first_name="Ana", fields={"message": "hello"})
    teaching = ["anger", "your-lines", "hard-conversations", "closeness", "steadier-ground"]
    linking = []
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, NOW)
        for step in sequence.steps:
            text = renderer.render(sid, sequence, step, contact, webinar, sample_unsubscribe_url(config)).text
            if booking in text:
                assert config.practice.licensure and config.practice.licensure in " ".join(text.split()), step.id
                if step.id in teaching:
                    linking.append(step.id)
    assert len(linking) <= 2, linking


def test_no_friend_in_a_subject_when_there_is_no_name() -> None:
    config = load_config(REPO / "sequences.yaml")
    renderer = Renderer(config)
    nameless = TemplateContact(email="x@example.test")
    for sid, sequence in config.sequences.items():
        webinar = sample_webinar(config, sid, NOW)
        for step in sequence.steps:
            for discreet in (False, True):
                rendered = renderer.render(
                    sid, sequence, step, nameless, webinar, sample_unsubscribe_url(config), discreet=discreet
                )
                assert "friend" not in rendered.subject.lower(), (step.id, rendered.subject)
                assert not rendered.subject.endswith(","), rendered.subject


def test_ways_to_work_names_the_practice_as_sex_therapy_only_in_its_body() -> None:
    config = load_config(REPO / "sequences.yaml")
    plain = letter(config, "ways-to-work", sequence_id="betrayal-recovery")
    assert "sex therapy and intimacy recovery" in words(plain)
    assert "sex" not in plain.subject.lower()
    quiet = letter(config, "ways-to-work", sequence_id="betrayal-recovery", discreet=True)
    assert "sex therapy" not in quiet.text


def test_the_letters_say_how_often_they_come() -> None:
    config = load_config(REPO / "sequences.yaml")
    for step in ("replay", "thank-you"):
        assert "a few in the first week and then about one a week" in words(letter(config, step))


# --------------------------------------------------------------------------- 11: booked straight through the scheduler


def test_a_booking_in_the_schedulers_export_ends_the_invitations_to_book(
    project: Project, funnel: Callable[..., Any]
) -> None:
    row = "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    project.write("signups/webinar-registrations.csv", HEADER + row)
    assert funnel("run", "--now", "2027-01-10T16:00:00Z").code == 0
    project.write("signups/consultations-booked.csv", "Email\nANA@example.test\n")
    for now in ("2027-01-15T15:00:00Z", "2027-01-17T16:00:00Z", "2027-01-25T16:00:00Z"):
        assert funnel("run", "--now", now).code == 0
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert "consultation-booked" in shown["tags"]
    steps = {s["id"]: s for s in enrollment_of(funnel)["steps"]}
    assert steps["replay"]["status"] == "sent"  # the recording she signed up for still comes
    assert steps["consultation-invite"]["reason"] == "goal reached: tag consultation-booked"
    assert "betrayal-recovery" not in {e["sequence"] for e in shown["enrollments"]}


def test_the_optional_signature_line_follows_the_signature_for_everyone_but_discreet_readers() -> None:
    config = load_config(REPO / "sequences.yaml")
    assert config.practice.signature_line is None
    line = "Maya Ellis, LPC · Colorado license 0000"
    config = config.model_copy(update={"practice": config.practice.model_copy(update={"signature_line": line})})
    plain = letter(config, "registered")
    assert f"Maya Ellis\n{line}\n" in plain.text and plain.html is not None and line in plain.html
    assert line not in letter(config, "registered", discreet=True).text
