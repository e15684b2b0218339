"""Unsubscribe tokens: rotating FUNNEL_SECRET_KEY keeps the links in mail already sent working."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from conftest import Project, Result
from sqlmodel import Session

from funnel.db import make_engine
from funnel.unsubscribe import Tokens, secret_key

HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def test_a_previous_key_still_reads_old_tokens_and_new_tokens_use_the_new_key() -> None:
    old_token = Tokens("old-key", previous=[]).make(7, 3)
    rotated = Tokens("new-key", previous=["older-key", "old-key"])
    assert rotated.read(old_token) == (7, 3)
    assert Tokens("new-key", previous=[]).read(old_token) is None  # without it, the old link is dead
    new_token = rotated.make(8)
    assert Tokens("new-key", previous=[]).read(new_token) == (8, None)  # signed with the new key only
    assert Tokens("old-key", previous=[]).read(new_token) is None
    assert rotated.read(old_token[:-2] + "xx") is None  # forgeries still fail


def test_previous_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    old_token = Tokens("old-key", previous=[]).make(5)
    monkeypatch.setenv("FUNNEL_SECRET_KEY_PREVIOUS", " retired-key , old-key ,")
    assert Tokens("new-key").read(old_token) == (5, None)
    monkeypatch.delenv("FUNNEL_SECRET_KEY_PREVIOUS")
    assert Tokens("new-key").read(old_token) is None


def link_tokens(project: Project) -> list[str]:
    """The token of the List-Unsubscribe header of every email in the outbox, oldest first."""
    found = []
    for message in project.messages():
        match = re.search(r"/u/([^>]+)>", str(message["List-Unsubscribe"]))
        assert match, message["List-Unsubscribe"]
        found.append(match.group(1))
    return found


def read_with_running_key(project: Project, token: str) -> tuple[int, int | None] | None:
    """What funnel's readers do with a token: the current key (and previous ones) from the environment."""
    engine = make_engine(project.database_url)
    try:
        with Session(engine) as session:
            return Tokens(secret_key(session)).read(token)
    finally:
        engine.dispose()


def test_rotating_the_secret_key_keeps_links_already_sent_working(
    project: Project, funnel: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,no\n")
    monkeypatch.setenv("FUNNEL_SECRET_KEY", "the-old-key")
    assert funnel("run", "--now", "2026-12-01T16:00:00Z").code == 0
    [sent_before] = link_tokens(project)
    contact_id = read_with_running_key(project, sent_before)
    assert contact_id is not None

    monkeypatch.setenv("FUNNEL_SECRET_KEY", "the-new-key")
    assert read_with_running_key(project, sent_before) is None  # rotated without a grace period: dead link
    monkeypatch.setenv("FUNNEL_SECRET_KEY_PREVIOUS", "the-old-key")
    assert read_with_running_key(project, sent_before) == contact_id

    assert funnel("run", "--now", "2027-01-14T02:00:00Z").code == 0  # the day-before reminder goes out
    sent_after = link_tokens(project)[-1]
    assert sent_after != sent_before
    assert Tokens("the-new-key", previous=[]).read(sent_after) is not None
    assert Tokens("the-old-key", previous=[]).read(sent_after) is None
