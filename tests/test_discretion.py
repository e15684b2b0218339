"""Discretion in the letters themselves (spec 12, issue 18 items 1-5), on the shipped letters.

What a discreet reader's inbox, screen and calendar show: her own From and
Reply-To, neutral `/j/` links that `funnel serve` answers with a 303, a
footer that admits nothing, a quiet calendar title for everyone, and her own
mundane subject and opening for every step. Rendering goes through the
public `Renderer.render`, mail through the real `funnel run`, links through
a real `funnel serve`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import REPO, SECRET, Project, database_rows
from icalendar import Calendar

from funnel.config import Config, load_config
from funnel.mail.compose import sender_of
from funnel.mail.invitation import event_title, invitation
from funnel.mail.jump import TOKEN_LENGTH, JumpLinks, jump_links, known_targets
from funnel.mail.preview import sample_unsubscribe_url, sample_webinar
from funnel.mail.render import Rendered, Renderer, TemplateContact
from funnel.mail.unsubscribe import Tokens

NOW = datetime(2027, 1, 5, 16, tzinfo=UTC)
#: words of the subject matter that must not show before she opens the email
SUBJECT_WORDS = [
    "betray",
    "trauma",
    "affair",
    "infidel",
    "therap",
    "counsel",
    "relationship 911",
    "webinar",
    "partner",
    "marriage",
    "husband",
    "crisis",
    "recovery",
    "discover",
    "survival",
    "protecting",
    "intima",
    "sex",
    "couple",
    "cheat",
    "hotline",
    "abuse",
]
#: sentences that would tell whoever opens her email that she keeps it quiet
ADMITS = ["discreet", "discretion", "as you asked", "as you requested", "someone else may read", "keep these emails"]
#: how much of a plain-text email an inbox, a lock screen or a watch may show
PREVIEW = 200
URL = re.compile(r"https?://[^\s()<>]+")


def shipped(**practice: Any) -> Config:
    config = load_config(REPO / "sequences.yaml")
    if not practice:
        return config
    return config.model_copy(update={"practice": config.practice.model_copy(update=practice)})


def contacts() -> list[TemplateContact]:
    return [
        TemplateContact(email="sam@example.test", first_name="Sam", fields={"message": "hello"}),
        TemplateContact(email="x@example.test"),  # no name, no message
    ]


def every_discreet_email(config: Config, renderer: Renderer | None = None) -> dict[tuple[str, str, str], Rendered]:
    """Every step for each contact, discreet, rendered twice (the second from the remembered shapes)."""
    renderer = renderer or Renderer(config, jump_key=SECRET)
    out: dict[tuple[str, str, str], Rendered] = {}
    for person in contacts():
        for sid, sequence in config.sequences.items():
            webinar = sample_webinar(config, sid, NOW)
            for step in sequence.steps:
                first, again = (
                    renderer.render(sid, sequence, step, person, webinar, sample_unsubscribe_url(config), discreet=True)
                    for _ in range(2)
                )
                assert first == again, (sid, step.id)
                out[(person.email, sid, step.id)] = first
    return out


def practice_hosts(config: Config) -> set[str]:
    """Every host name the practice is known by: base_url, the From domain, links, join and replay."""
    practice = config.practice
    urls = [practice.base_url, *practice.links.values()]
    for webinar in config.webinars.values():
        urls += [u for u in (webinar.join_url, webinar.replay_url) if u]
    hosts = {urlsplit(u).hostname or "" for u in urls}
    hosts.add(practice.from_email.rpartition("@")[2])
    # and the name under the subdomains (mail.healinglightcounseling.test -> healinglightcounseling)
    hosts |= {h.split(".")[-2] for h in hosts if h.count(".") >= 1}
    return {h.lower() for h in hosts if h}


def link_paths(config: Config) -> set[str]:
    """The path words of every link the practice wrote ("webinar", "relationship-911", "womens-group")."""
    words: set[str] = set()
    for target in known_targets(config):
        words |= {part.lower() for part in urlsplit(target).path.split("/") if len(part) > 3}
    return words


# --------------------------------------------------------------------------- what shows before she opens it


def test_the_inbox_line_of_every_discreet_email_holds_no_link_host_path_or_subject_word() -> None:
    """Sender name and address, subject and the first 200 characters of the text, for every shipped step."""
    config = shipped()
    name, address, reply_to = sender_of(config, discreet=True)
    hosts, paths = practice_hosts(config), link_paths(config)
    subjects: dict[str, tuple[str, str]] = {}
    for key, rendered in every_discreet_email(config).items():
        shown = f"{name}\n{rendered.subject}\n{rendered.text[:PREVIEW]}".lower()
        assert not URL.search(shown) and "/j/" not in shown and "/u/" not in shown, (key, shown)
        for host in hosts:
            assert host not in shown, (key, host)
        for path in paths:
            assert path not in shown, (key, path)
        for word in SUBJECT_WORDS:
            assert word not in shown, (key, word)
        assert rendered.html is None, key  # plain text only: the text is what any client previews
        # no two steps look alike in a conversation view
        first_line = rendered.text.split("\n", 1)[0]
        if key[0] == "sam@example.test":
            subjects[f"{key[1]}/{key[2]}"] = (rendered.subject, first_line)
    assert len(set(subjects.values())) == len(subjects), subjects
    assert len({s for s, _ in subjects.values()}) == len(subjects), "two steps share a discreet subject"
    for word in SUBJECT_WORDS:
        assert word not in name.lower()


def test_every_shipped_step_has_its_own_quiet_discreet_subject_and_preheader() -> None:
    config = shipped()
    steps = [step for sequence in config.sequences.values() for step in sequence.steps]
    assert all(step.discreet_subject for step in steps)
    assert len({step.discreet_subject for step in steps}) == len(steps)
    assert len({step.discreet_preheader for step in steps}) == len(steps)


def test_no_sentence_anywhere_in_a_discreet_email_admits_discretion() -> None:
    for key, rendered in every_discreet_email(shipped()).items():
        text = " ".join(f"{rendered.subject}\n{rendered.text}".split()).lower()
        for admits in ADMITS:
            assert admits not in text, (key, admits)


def test_the_discreet_footer_keeps_every_number_under_neutral_labels() -> None:
    for key, rendered in every_discreet_email(shipped()).items():
        text = " ".join(rendered.text.split())
        assert "Support any time: call or text 988 · 1-800-799-7233 · text START to 88788" in text, key
        assert "call 911" in text, key
        assert "Domestic Violence" not in text and "Healing Light" not in text, key


def test_each_webinar_letter_opens_with_a_sentence_before_any_link() -> None:
    for (_who, sid, step), rendered in every_discreet_email(shipped()).items():
        if sid != "webinar-relationship-911":
            continue
        body = rendered.text.split("\n\n", 2)[2]  # after the preheader line and the greeting
        assert re.match(r"[A-Z][^\n]*[.!?]", body) and not URL.match(body), (step, body[:80])


# --------------------------------------------------------------------------- links


def test_every_link_in_a_discreet_email_is_a_jump_link_except_the_unsubscribe_link() -> None:
    config = shipped()
    base = config.practice.base_url
    jumps = jump_links(config, SECRET, [])
    seen: set[str] = set()
    for key, rendered in every_discreet_email(config).items():
        links = URL.findall(rendered.text)
        assert sample_unsubscribe_url(config) in links, key
        for link in links:
            if link == sample_unsubscribe_url(config):
                continue
            assert re.fullmatch(re.escape(base) + rf"/j/[A-Za-z0-9_-]{{{TOKEN_LENGTH}}}", link), (key, link)
            target = jumps.target(link.rsplit("/", 1)[1])
            assert target in known_targets(config), (key, link)
            seen.add(target)
    # the webinar's join and replay links among them
    webinar = config.webinars["relationship-911"]
    assert {webinar.join_url, webinar.replay_url, config.practice.links["consultation"]} <= seen


def test_everyone_else_still_gets_the_real_links() -> None:
    config = shipped()
    renderer = Renderer(config, jump_key=SECRET)
    sequence, step = config.find_step("webinar-relationship-911", "registered")
    webinar = sample_webinar(config, "webinar-relationship-911", NOW)
    rendered = renderer.render(
        "webinar-relationship-911", sequence, step, contacts()[0], webinar, sample_unsubscribe_url(config)
    )
    assert webinar is not None and webinar.join_url in rendered.text and "/j/" not in rendered.text
    assert rendered.html is not None and webinar.join_url in rendered.html


def test_jump_and_unsubscribe_tokens_never_pass_for_each_other() -> None:
    config = shipped()
    jumps = jump_links(config, SECRET, [])
    tokens = Tokens(SECRET, previous=[])
    target = config.webinars["relationship-911"].join_url
    assert target is not None
    jump = jumps.token(target)
    assert jump is not None and len(jump) == TOKEN_LENGTH
    assert jumps.target(jump) == target
    assert tokens.read(jump) is None
    unsubscribe = tokens.make("ab" * 16, "cd" * 16)
    assert jumps.target(unsubscribe) is None and jumps.target(tokens.make("ab" * 16)) is None
    # a token signed with another key, or changed by one character, leads nowhere
    assert jump_links(config, "another key", []).token(target) != jump
    assert jumps.target(jump[:-1] + ("A" if jump[-1] != "A" else "B")) is None


def test_a_token_is_stable_when_links_are_added_and_a_reader_typed_url_is_never_signed() -> None:
    config = shipped()
    more = shipped(links={"new": "https://elsewhere.example/new", **config.practice.links})
    target = config.practice.links["consultation"]
    assert jump_links(config, SECRET, []).token(target) == jump_links(more, SECRET, []).token(target)
    jumps = JumpLinks(SECRET, known_targets(config), [])
    assert jumps.token("https://evil.example/phish") is None
    text = "see https://evil.example/phish and " + target + "."
    rewritten = jumps.rewrite(text, "https://base.example")
    assert "https://evil.example/phish" in rewritten and target not in rewritten and rewritten.endswith(".")
    # a known target inside a longer URL is left alone
    longer = target + "/more"
    assert jumps.rewrite(longer, "https://base.example") == longer


def plain(message: Any) -> str:
    return str(message.get_body(preferencelist=("plain",)).get_content())


def sent_discreet_registration(project: Project, funnel: Callable[..., Any], **practice: str) -> Any:
    """Register a discreet reader through the shipped source and run: her confirmation email."""
    if practice:
        path = project.root / "sequences.yaml"
        text = path.read_text()
        for key, value in practice.items():
            text = text.replace(f"  {key}:\n", f"  {key}: {value}\n", 1)
        path.write_text(text)
    project.write(
        "signups/webinar-registrations.csv",
        "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
        "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,yes\n"
        "bea@example.test,Bea,,2027-01-14 19:00,America/Denver,no\n",
    )
    result = funnel("run", "--now", "2027-01-10T16:00:00Z")
    assert result.code == 0, result.err
    messages = {m["To"].addresses[0].addr_spec: m for m in project.messages()}
    return messages["ana@example.test"], messages["bea@example.test"]


def test_funnel_serve_answers_a_jump_link_with_a_303_and_writes_nothing(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]
) -> None:
    ana, _bea = sent_discreet_registration(project, funnel)
    text = plain(ana)
    config = load_config(project.root / "sequences.yaml")
    join = config.webinars["relationship-911"].join_url
    assert join not in text
    (jump,) = re.findall(r"https?://[^/\s]+(/j/[A-Za-z0-9_-]+)", text)
    unsubscribe = re.search(r"https?://[^/\s]+(/u/[A-Za-z0-9_-]+)", text)
    assert unsubscribe is not None
    server = funnel_server("--now", "2027-01-10T16:05:00Z")
    before = database_rows(project.database_url)
    with server.client() as http:
        answer = http.get(jump, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == join
        for name, value in (
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
        ):
            assert answer.headers.get(name) == value, name
        token = jump.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for bad in (f"/j/{forged}", "/j/garbled", f"/j/{token}x", f"/j/{unsubscribe.group(1).rsplit('/', 1)[1]}"):
            refused = http.get(bad, follow_redirects=False)
            assert refused.status_code == 400, bad
            assert "location" not in refused.headers and refused.headers.get("referrer-policy") == "no-referrer"
            assert "Healing Light" not in refused.text and "This link does not work" in refused.text
        # a jump token is no unsubscribe token either
        assert http.get(f"/u/{token}").status_code == 400
    assert database_rows(project.database_url) == before


def test_funnel_serve_refuses_every_jump_link_before_any_key_exists(
    project: Project, funnel_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FUNNEL_SECRET_KEY")
    config = load_config(project.root / "sequences.yaml")
    target = config.practice.links["consultation"]
    token = jump_links(config, "whatever key", []).token(target)
    server = funnel_server("--now", "2027-01-10T16:05:00Z")
    with server.client() as http:
        assert http.get(f"/j/{token}", follow_redirects=False).status_code == 400


# --------------------------------------------------------------------------- sender, reply-to, address


def test_a_discreet_reader_gets_the_discreet_from_reply_to_and_postal_address(
    project: Project, funnel: Callable[..., Any]
) -> None:
    ana, bea = sent_discreet_registration(
        project,
        funnel,
        discreet_from_email="notes@quiet-mail.test",
        discreet_reply_to="replies@quiet-mail.test",
        discreet_postal_address='"PO Box 123, Fort Collins, CO 80522"',
    )
    assert ana["From"].addresses[0].addr_spec == "notes@quiet-mail.test"
    assert ana["From"].addresses[0].display_name == "M. Ellis"
    assert ana["Reply-To"].addresses[0].addr_spec == "replies@quiet-mail.test"
    text = plain(ana)
    assert "PO Box 123, Fort Collins, CO 80522" in text and "Aspen Grove" not in text
    # everyone else: as before
    assert bea["From"].addresses[0].addr_spec == "care@healinglightcounseling.test"
    assert bea["Reply-To"].addresses[0].addr_spec == "care@healinglightcounseling.test"
    assert "820 Aspen Grove Lane" in plain(bea)
    assert funnel("check").code == 0


def test_unset_discreet_addresses_fall_back_to_todays_behaviour(project: Project, funnel: Callable[..., Any]) -> None:
    ana, _bea = sent_discreet_registration(project, funnel)
    assert ana["From"].addresses[0].addr_spec == "care@healinglightcounseling.test"
    assert ana["Reply-To"].addresses[0].addr_spec == "care@healinglightcounseling.test"
    assert "820 Aspen Grove Lane" in plain(ana)


def test_discreet_reply_to_wins_over_the_inbound_reply_address_for_discreet_readers_only() -> None:
    config = shipped(discreet_reply_to="replies@quiet-mail.test")
    config = config.model_copy(
        update={"inbound": config.inbound.model_copy(update={"reply_address": "in@parse.healinglight.test"})}
    )
    assert sender_of(config, discreet=True)[2] == "replies@quiet-mail.test"
    assert sender_of(config, discreet=False)[2] == "in@parse.healinglight.test"
    unset = config.model_copy(update={"practice": config.practice.model_copy(update={"discreet_reply_to": None})})
    assert sender_of(unset, discreet=True)[2] == "in@parse.healinglight.test"


@pytest.mark.parametrize("key", ["discreet_from_email", "discreet_reply_to"])
def test_a_discreet_address_that_is_not_one_is_refused_with_its_line(
    project: Project, funnel: Callable[..., Any], key: str
) -> None:
    path = project.root / "sequences.yaml"
    path.write_text(path.read_text().replace(f"  {key}:\n", f"  {key}: quiet-mail.test\n", 1))
    assert funnel("check").code == 1  # as for from_email: a problem `check` reports
    result = funnel("run", "--now", "2027-01-10T16:00:00Z")
    assert result.code == 2  # bad configuration: nothing done
    line = path.read_text().splitlines().index(f"  {key}: quiet-mail.test") + 1
    assert f"sequences.yaml:{line}" in result.err and "not an email address" in result.err


# --------------------------------------------------------------------------- the calendar


def events_for(config: Config) -> dict[bool, Any]:
    step = config.find_step("webinar-relationship-911", "registered")[1]
    found = {}
    for discreet in (False, True):
        (attachment,) = invitation(
            config,
            step,
            person_key="hash",
            discreet=discreet,
            webinar_id="relationship-911",
            start=datetime(2027, 1, 15, 2, tzinfo=UTC),
            now=NOW,
        )
        (event,) = Calendar.from_ical(attachment.content).walk("VEVENT")
        found[discreet] = event
    return found


def test_no_calendar_event_carries_the_full_title_and_the_discreet_one_no_link() -> None:
    config = shipped()
    webinar = config.webinars["relationship-911"]
    events = events_for(config)
    assert str(events[False]["SUMMARY"]) == webinar.event_title == "Evening webinar with Maya Ellis"
    assert webinar.title in str(events[False]["DESCRIPTION"])  # inside the event only
    discreet = events[True]
    assert str(discreet["SUMMARY"]) == config.practice.discreet_event_title
    assert str(discreet["DESCRIPTION"]) == "Your link is in the email."
    assert "URL" not in discreet and "LOCATION" not in discreet
    for event in events.values():
        summary = str(event["SUMMARY"]).lower()
        assert webinar.title.lower() not in summary
        for word in ("relationship 911", "betrayal", "crisis"):
            assert word not in summary


def test_the_quiet_default_title_is_the_signature_name_without_credentials() -> None:
    config = shipped(from_name="Maya Ellis, LPC")
    webinar = config.webinars["relationship-911"].model_copy(update={"event_title": None})
    config = config.model_copy(update={"webinars": {"relationship-911": webinar}})
    assert event_title(config, "relationship-911") == "Webinar with Maya Ellis"
    assert str(events_for(config)[False]["SUMMARY"]) == "Webinar with Maya Ellis"
    nameless = config.model_copy(update={"practice": config.practice.model_copy(update={"from_name": None})})
    assert event_title(nameless, "relationship-911") == "Webinar"


def test_check_refuses_a_link_a_discreet_reader_would_see_in_full(project: Project, funnel: Callable[..., Any]) -> None:
    """A link the renderer cannot know as the practice's (built from pieces) would print as it is."""
    letter = project.root / "email_templates" / "recovery" / "anger.md"
    letter.write_text(
        letter.read_text().replace("Hi {{", "See {{ practice.links.website }}anger-guide first.\n\nHi {{", 1)
    )
    result = funnel("check")
    assert result.code == 1
    assert "anger.md (step betrayal-recovery/anger): a discreet reader would see" in result.err
    assert "https://healinglightcounseling.test/anger-guide in full" in result.err
