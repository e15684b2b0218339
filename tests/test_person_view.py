"""What the practice reads: send-test's words, the report's "not tracked" and subjects, undone unsubscribes."""

from __future__ import annotations

from conftest import Project

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
