"""A refused form post answers a person's browser with a calm page and a way back; scripts keep JSON."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from conftest import Project

NOW = "2026-12-08T16:00:00Z"
FORM = "/forms/consultation-form"
PRACTICE = "Healing Light Counseling"
BACK = "https://healinglightcounseling.test/consultation"


def test_a_refused_post_gets_a_calm_page_with_a_way_back(project: Project, funnel_server: Callable[..., Any]) -> None:
    with funnel_server("--now", NOW).client() as http:
        mistyped = http.post(FORM, data={"email": "ana-at-example", "name": "Ana"}, headers={"Referer": BACK})
        missing = http.post(FORM, data={"name": "Ana"})
        long = http.post(FORM, data={"email": "ana@example.test", "message": "x" * 70_000}, headers={"Referer": BACK})
        as_json = http.post(FORM, json={"email": "ana-at-example"})
        odd_back = http.post(FORM, data={"name": "Ana"}, headers={"Referer": "javascript:alert(1)"})
    assert mistyped.status_code == 422
    page = mistyped.text
    assert mistyped.headers["content-type"].startswith("text/html")
    assert "<title>Email preferences</title>" in page and "Your message was not sent" in page
    assert "The field 'email' is not a valid email address" in page  # what to fix, quotes as typed
    assert "Nothing was saved." in page
    assert f'<a href="{BACK}">Go back to the form</a>' in page
    assert "default-src 'none'" in mistyped.headers["content-security-policy"]
    assert not re.search(r"<script|<img|<link|src=", page)
    assert PRACTICE not in page  # the form may be one she keeps private
    assert "Traceback" not in page and "BadInput" not in page
    assert missing.status_code == 422 and "is missing" in missing.text
    assert "Back button" in missing.text and "<a href" not in missing.text  # no Referer: her Back button
    assert long.status_code == 413 and "too long" in long.text and f'href="{BACK}"' in long.text
    assert as_json.status_code == 422 and as_json.json() == {
        "ok": False,
        "error": as_json.json()["error"],
        "field": "email",
    }
    assert "javascript" not in odd_back.text and "Back button" in odd_back.text


def test_the_reason_for_a_form_set_up_wrongly_is_kept_small_for_the_website(
    project: Project, funnel_server: Callable[..., Any]
) -> None:
    with funnel_server("--now", NOW).client() as http:
        answer = http.post(FORM, content=b"email=ana@example.test", headers={"Content-Type": "text/plain"})
        unknown = http.post("/forms/nope", data={"email": "ana@example.test"})
        latin1 = http.post(
            FORM,
            content=b"email=ana%40example.test&name=Ren%E9",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert answer.status_code == 415
    assert "could not be sent from this page" in answer.text
    assert "<small>For whoever looks after the website: Send the form as application/x-www-form-urlencoded" in (
        answer.text
    )
    assert unknown.status_code == 404 and "Your message was not sent" in unknown.text
    # the reason is escaped, never markup: 'add accept-charset="UTF-8" to the <form>'
    assert latin1.status_code == 400
    assert 'accept-charset="UTF-8" to the &lt;form&gt;' in latin1.text and "<form" not in latin1.text
