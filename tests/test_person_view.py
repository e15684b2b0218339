"""What the practice reads: send-test's words, the report's "not tracked" and subjects, undone unsubscribes."""

from __future__ import annotations

import re
from html import escape as html_escape

from conftest import Project

from funnel.config import load_config

NOW = "2027-01-10T16:00:00Z"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def test_send_test_through_the_outbox_says_it_only_wrote_a_file(project: Project, funnel) -> None:
    result = funnel("send-test", "consultation", "received", "--to", "me@example.test", "--now", NOW)
    assert result.code == 0, result.err
    line = result.out.strip()
    assert line.startswith("written to outbox/") and ".eml, not sent" in line
    assert "sent consultation" not in line
    assert "delivery.transport: sendgrid" in line
    [written] = list(project.outbox.glob("*.eml"))
    assert line.startswith(f"written to outbox/{written.name}")


def test_send_test_through_sendgrid_says_sent_and_names_the_transport(project: Project, funnel, fake_sendgrid) -> None:
    env = {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake_sendgrid.url}
    result = funnel("send-test", "consultation", "received", "--to", "me@example.test", "--now", NOW, env=env)
    assert result.code == 0, result.err
    assert result.out.startswith("sent consultation/received to me@example.test through sendgrid")
    assert not project.outbox.exists()


def _link_path(project: Project, address: str) -> str:
    """The /u/... path of the unsubscribe link in the first email to `address`."""
    to_her = [m for m in project.messages() if m["To"].addresses[0].addr_spec == address]
    link = str(to_her[0]["List-Unsubscribe"])
    return "/u/" + link.strip("<>").rsplit("/u/", 1)[1]


def test_an_unsubscribe_taken_back_still_counts_in_the_report(project: Project, funnel, funnel_server) -> None:
    project.write(
        "signups/webinar-registrations.csv",
        HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\nbea@example.test,Bea,,2027-01-14 19:00,,\n",
    )
    assert funnel("run", "--now", NOW).code == 0
    ana, bea = _link_path(project, "ana@example.test"), _link_path(project, "bea@example.test")
    server = funnel_server("--now", NOW)
    form = {"content-type": "application/x-www-form-urlencoded"}
    with server.client() as http:
        assert http.post(ana, content=b"confirm=yes", headers=form).status_code in (200, 303)
        assert http.post(f"{ana}/resubscribe").status_code in (200, 303)
        assert http.post(bea, content=b"List-Unsubscribe=One-Click", headers=form).status_code == 200
    server.stop()
    people = {p["email"]: p for p in funnel("contacts", "list", "--json").json()}
    assert people["ana@example.test"]["unsubscribed"] is False  # she took it back
    assert people["bea@example.test"]["unsubscribed"] is True
    data = funnel("report", "--json").json()
    registered = data["sequences"][0]["steps"][0]
    assert registered["id"] == "registered" and registered["unsubscribed"] == 2
    assert funnel("report", "--json", "--since", "2027-01-11").json()["sequences"][0]["steps"][0]["unsubscribed"] == 0


def test_the_report_says_not_tracked_with_the_outbox_and_names_steps_by_subject(
    project: Project, funnel, tmp_path
) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    assert funnel("run", "--now", NOW).code == 0
    data = funnel("report", "--json").json()
    assert data["tracking"]["events"] is False
    assert set(data["tracking"]["why"]) == {"delivered", "opened", "clicked", "bounced"}
    registered = data["sequences"][0]["steps"][0]
    assert registered["delivered"] == 0  # JSON keeps its numbers; `tracking` says what they mean
    # the shipped subject, with its {{ ... }} shown as …
    source = load_config(project.root / "sequences.yaml").sequences["webinar-relationship-911"].steps[0].subject
    prefix = source.split("{")[0].strip()  # its {{ ... }} and {% ... %} both shown as …
    assert "{{" in source and registered["subject"].startswith(prefix) and registered["subject"].endswith("…")
    page = tmp_path / "report.html"
    assert funnel("report", "--html", str(page)).code == 0
    html = page.read_text()
    assert "not tracked" in html and "outbox transport only writes files" in html
    assert '<div class="value">0%</div>' not in html and '<div class="value">not tracked</div>' in html
    assert html_escape(registered["subject"]) in html
    text = funnel("report").out
    assert "not tracked (the outbox transport" in text and registered["subject"] in text


def test_the_report_says_opens_and_clicks_are_not_tracked_while_tracking_is_off(
    project: Project, funnel, fake_sendgrid, tmp_path
) -> None:
    env = {"FUNNEL_TRANSPORT": "sendgrid", "SENDGRID_API_KEY": "SG.test-key", "FUNNEL_SENDGRID_HOST": fake_sendgrid.url}
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    assert funnel("run", "--now", NOW, env=env).code == 0
    data = funnel("report", "--json").json()  # the report itself runs without the SendGrid settings
    assert data["tracking"]["events"] is True
    assert data["tracking"]["why"] == {"opened": "tracking.opens is off", "clicked": "tracking.clicks is off"}
    page = tmp_path / "report.html"
    assert funnel("report", "--html", str(page)).code == 0
    html = page.read_text()
    assert "tracking.opens is off" in html and "tracking.clicks is off" in html
    assert '<div class="value">0%</div>' in html  # delivered: tracked, nothing reported yet


def test_report_times_are_in_the_practice_zone_named_and_utc_on_request(project: Project, funnel, tmp_path) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    assert funnel("run", "--now", NOW).code == 0
    text = funnel("report", "--since", "2027-01-10").out
    # the practice's day: midnight in Denver is 07:00 UTC
    assert "since Sun 10 Jan 2027 00:00 MST; last run" in text and "(times in America/Denver)" in text
    utc = funnel("report", "--since", "2027-01-10", "--utc").out
    assert "since Sun 10 Jan 2027 00:00 UTC" in utc and "(times in UTC)" in utc
    assert funnel("report", "--since", "2027-01-10", "--json").json()["since"] == "2027-01-10T07:00:00Z"
    page = tmp_path / "r.html"
    assert funnel("report", "--html", str(page)).code == 0
    # the run's real start (not its --now), as a person reads it
    assert re.search(r"last run \w{3} \d{1,2} \w{3} \d{4} \d\d:\d\d M[SD]T", page.read_text())


def test_report_since_is_the_practices_day_and_utcs_with_utc(project: Project, funnel) -> None:
    """Issue 19: `--since 2027-01-10` starts at midnight in the practice's zone (America/Denver, 07:00 UTC);
    with `--utc` at midnight UTC; a date with its own offset is read as written, with or without `--utc`."""
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    # she signs up at 03:00 UTC on the 10th: still the evening of the 9th in Denver
    assert funnel("run", "--now", "2027-01-10T03:00:00Z").code == 0

    def enrolled(*args: str) -> int:
        data = funnel("report", "--json", "--since", *args).json()
        return sum(sequence["enrolled"] for sequence in data["sequences"])

    assert enrolled("2027-01-10") == 0  # the practice's 10th began after her signup
    assert enrolled("2027-01-09") == 1
    assert enrolled("2027-01-10", "--utc") == 1  # UTC's 10th began before it
    assert enrolled("2027-01-10T04:00:00Z") == enrolled("2027-01-10T04:00:00Z", "--utc") == 0
    assert enrolled("2027-01-09T20:00:00-07:00") == enrolled("2027-01-09T20:00:00-07:00", "--utc") == 1
    assert funnel("report", "--json", "--since", "2027-01-10", "--utc").json()["since"] == "2027-01-10T00:00:00Z"
    # the help says so
    assert "practice's time zone" in " ".join(funnel("report", "--help").out.split()).split("--since")[1]
