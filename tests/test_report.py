"""`funnel report`: the same figures on a terminal, as JSON and as one self-contained HTML page.

The data is made the way it happens in practice: exports read by real runs
over simulated weeks, SendGrid events posted to a real `funnel serve`, a
client list read through a source. A headless Chromium (Debian's) opens the
HTML page and saves a screenshot to tests/artifacts/report.png.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import REPO, Project
from webhook_signing import Signer, post_events, sent_ids, sg_event

FORM = {"content-type": "application/x-www-form-urlencoded"}
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def registrant(n: int, start: str) -> str:
    return f"p{n}@example.test,Person{n},,{start},America/Denver,\n"


def build_history(project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any]) -> None:
    """Three weeks of sign-ups and runs, SendGrid's events for the first emails, attendance and a client.

    The shipped config's `clients` source (signups/clients.csv, tag `client`) marks the client.
    """
    regs = project.root / "signups" / "webinar-registrations.csv"
    project.write(
        "signups/webinar-registrations.csv", HEADER + "".join(registrant(n, "2027-01-14 19:00") for n in range(8))
    )
    funnel("run", "--now", "2026-12-01T16:00:00Z")
    project.append(
        "signups/webinar-registrations.csv", "".join(registrant(n, "2027-01-14 19:00") for n in range(8, 13))
    )
    funnel("run", "--now", "2026-12-08T16:00:00Z")
    project.append(
        "signups/webinar-registrations.csv", "".join(registrant(n, "2027-01-14 19:00") for n in range(13, 16))
    )
    funnel("run", "--now", "2026-12-15T16:00:00Z")
    assert regs.exists()
    ids = sent_ids(project)
    signer = Signer()
    at = datetime(2026, 12, 15, 16, 0, tzinfo=UTC)
    events = []
    for n in range(16):
        address = f"p{n}@example.test"
        if n == 5:
            events.append(sg_event("bounce", address, ids[address], f"b{n}", at=at, type="bounce", reason="550"))
            continue
        events.append(sg_event("delivered", address, ids[address], f"d{n}", at=at))
        if n % 2 == 0:
            events.append(sg_event("open", address, ids[address], f"o{n}", at=at))
        if n % 4 == 0:
            events.append(sg_event("click", address, ids[address], f"c{n}", at=at))
    events.append(sg_event("unsubscribe", "p7@example.test", ids["p7@example.test"], "u7", at=at))
    server = funnel_server("--now", "2026-12-15T16:00:00Z", env={"FUNNEL_SENDGRID_WEBHOOK_KEY": signer.public_b64})
    to_p9 = [m for m in project.messages() if m["To"].addresses[0].addr_spec == "p9@example.test"]
    link = str(to_p9[0]["List-Unsubscribe"])
    path = "/u/" + link.strip("<>").rsplit("/u/", 1)[1]
    with server.client() as http:
        assert post_events(http, signer, events, at=at).status_code == 200
        # p9 leaves through the one-click link of her confirmation (RFC 8058)
        one_click = http.post(path, content=b"List-Unsubscribe=One-Click", headers=FORM)
        assert one_click.status_code == 200
    server.stop()
    funnel("run", "--now", "2027-01-14T02:10:00Z")
    funnel("run", "--now", "2027-01-15T01:10:00Z")  # the hour before
    project.write(
        "signups/webinar-attendance.csv", "Email,Attended\n" + "".join(f"p{n}@example.test,Yes\n" for n in range(9))
    )
    project.write("signups/consultation-requests.jsonl", '{"email": "p2@example.test", "name": "Person2"}\n')
    funnel("run", "--now", "2027-01-15T05:10:00Z")  # replay / thank-you
    project.write("signups/clients.csv", "Email\np0@example.test\n")
    funnel("run", "--now", "2027-01-15T18:00:00Z")


def test_the_report_has_every_figure_in_json_terminal_and_html(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], tmp_path: Path
) -> None:
    build_history(project, funnel, funnel_server)
    data = funnel("report", "--json").json()
    webinar = data["sequences"][0]
    assert webinar["id"] == "webinar-relationship-911" and webinar["enrolled"] == 16
    steps = {step["id"]: step for step in webinar["steps"]}
    registered = steps["registered"]
    assert (registered["sent"], registered["delivered"], registered["opened"], registered["clicked"]) == (16, 15, 8, 4)
    assert (registered["bounced"], registered["unsubscribed"], registered["failed"], registered["unknown"]) == (
        1,
        2,
        0,
        0,
    )
    assert registered["converted"] == 2  # p0 became a client, p2 asked for a consultation, after it
    assert webinar["converted"] == 2  # p0 (client) and p2 (asked for a consultation)
    assert steps["day-before"]["sent"] == 13  # not the bounced one nor the two who unsubscribed
    # not p5 (bounced) nor p7 and p9 (unsubscribed); p2 (asked for a consultation) and p0 (a client
    # by then) still get the thank-you with the recording: a goal never withholds it (issue 18, item 7)
    assert (steps["thank-you"]["sent"], steps["replay"]["sent"]) == (7, 6)
    for step in webinar["steps"]:
        for key in (
            "sent",
            "delivered",
            "opened",
            "clicked",
            "bounced",
            "unsubscribed",
            "failed",
            "skipped",
            "unknown",
        ):
            assert isinstance(step[key], int)
    assert [(s["stage"], s["count"]) for s in data["webinar_funnel"]] == [
        ("registered", 16),
        ("attended", 9),
        ("asked for a consultation", 1),
        ("became a client", 1),
    ]
    weeks = {week["week"]: week for week in data["weeks"]}
    assert (weeks["2026-11-30"]["signups"], weeks["2026-12-07"]["signups"], weeks["2026-12-14"]["signups"]) == (8, 5, 3)
    assert weeks["2026-11-30"]["sent"] == 8
    assert "approximate" in data["notes"]["opened"]

    later = funnel("report", "--json", "--since", "2026-12-14").json()
    assert later["sequences"][0]["enrolled"] == 3
    assert {w["week"] for w in later["weeks"]} >= {"2026-12-14"} and "2026-11-30" not in {
        w["week"] for w in later["weeks"]
    }
    assert funnel("report", "--since", "yesterday-ish").code == 2

    text = funnel("report")
    assert text.code == 0
    assert "opened~" in text.out and "approximate" in text.out and "Webinar funnel" in text.out
    assert re.search(r"registered\s+16\s+15\s+8\s+4\s+1\s+2\s+0\s+0\s+0\s+2", text.out), text.out

    page = tmp_path / "report.html"
    result = funnel("report", "--html", str(page))
    assert result.code == 0 and str(page) in result.out
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "approximate" in html
    # self-contained: nothing is fetched, nothing runs
    assert not re.search(r"<script|<link|<img|<iframe|src=|url\((?!#)|@import", html, re.IGNORECASE)
    assert "Healing Light Counseling" in html and "became a client" in html
    # the HTML and the JSON are one set of figures
    both = funnel("report", "--json", "--html", str(tmp_path / "again.html"))
    assert json.loads(both.out) == data and (tmp_path / "again.html").read_text() == html


def test_an_empty_database_gives_a_calm_report(project: Project, funnel: Callable[..., Any], tmp_path: Path) -> None:
    data = funnel("report", "--json").json()
    assert data["weeks"] == [] and all(stage["count"] == 0 for stage in data["webinar_funnel"])
    assert funnel("report", "--html", str(tmp_path / "r.html")).code == 0
    assert "Nobody has registered" in (tmp_path / "r.html").read_text()
    assert funnel("report", "--html", str(tmp_path / "missing" / "r.html")).code == 2


def test_chromium_renders_the_html_report(
    project: Project, funnel: Callable[..., Any], funnel_server: Callable[..., Any], tmp_path: Path
) -> None:
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    build_history(project, funnel, funnel_server)
    page = tmp_path / "report.html"
    assert funnel("report", "--html", str(page)).code == 0
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1900")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.get(page.as_uri())
        assert driver.title.startswith("Email report")
        assert driver.execute_script("return document.querySelectorAll('svg rect').length") > 20
        # nothing was loaded from anywhere but the page itself
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    image = Image.open(shot).convert("RGB")
    assert image.width >= 1000
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, bars and cards, not a blank page
    background = max(colours)[1]
    painted = sum(count for count, colour in colours if colour != background)
    assert painted > image.width * image.height * 0.05
    shutil.copy(shot, tmp_path / "report.png")
