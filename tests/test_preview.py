"""`funnel check` warns, without failing, while the shipped example practice's details are in place."""

from __future__ import annotations

from conftest import REPO, Project

from funnel.config import load_config
from funnel.mail.preview import EXAMPLE_DOMAIN, EXAMPLE_POSTAL_ADDRESS, EXAMPLE_PRACTICE, example_warnings


def _make_it_ours(project: Project) -> None:
    """Replace the example address and domain, as a practice following the checklist would."""
    path = project.root / "sequences.yaml"
    text = path.read_text()
    text = text.replace(EXAMPLE_POSTAL_ADDRESS, "12 Real Street, Suite 3, Boulder, CO 80302")
    text = text.replace(EXAMPLE_DOMAIN, "our-practice.example.com")
    text = text.replace("name: Healing Light Counseling", "name: Our Practice")
    text = text.replace("from_name: Maya Ellis", "from_name: Robin Real, LPC")
    text = text.replace('discreet_from_name: "M. Ellis"', 'discreet_from_name: "R. Real"')
    text = text.replace(EXAMPLE_PRACTICE["licensure"], "I am licensed in Oregon")
    text = text.replace("  reply_note:\n", "  reply_note: I read every reply myself.\n")
    path.write_text(text)


def test_the_shipped_example_is_still_marked_as_such() -> None:
    """The constants must match the shipped sequences.yaml, or the warning would never fire."""
    config = load_config(REPO / "sequences.yaml")
    assert config.practice.postal_address == EXAMPLE_POSTAL_ADDRESS
    assert EXAMPLE_DOMAIN in config.practice.from_email


def test_shipped_config_warns_about_the_example_address_and_domain_with_lines() -> None:
    config = load_config(REPO / "sequences.yaml")
    warnings = example_warnings(config)
    assert len(warnings) == 4
    names = "practice.name, practice.from_name, practice.discreet_from_name, practice.licensure still hold"
    assert any(names in w for w in warnings)
    note_line = config.line_of("practice", "reply_note")
    assert any(w.startswith(f"sequences.yaml:{note_line}: warning: practice.reply_note is empty") for w in warnings)
    address_line = config.line_of("practice", "postal_address")
    assert any(w.startswith(f"sequences.yaml:{address_line}: warning: practice.postal_address") for w in warnings)
    from_line = config.line_of("practice", "from_email")
    assert any(w.startswith(f"sequences.yaml:{from_line}: warning: practice.from_email") for w in warnings)
    assert any(EXAMPLE_DOMAIN in w and "more settings" in w for w in warnings)


def test_one_leftover_link_still_warns(project: Project) -> None:
    _make_it_ours(project)
    path = project.root / "sequences.yaml"
    path.write_text(
        path.read_text().replace(
            "https://our-practice.example.com/services/intensives",
            f"https://www.{EXAMPLE_DOMAIN}/services/intensives",
        )
    )
    config = load_config(path)
    warnings = example_warnings(config)
    assert len(warnings) == 1
    assert "practice.links.intensive still use the example domain" in warnings[0]
    assert warnings[0].startswith(f"sequences.yaml:{config.line_of('practice', 'links', 'intensive')}: ")


def test_check_warns_but_exits_0_on_the_shipped_example(project: Project, funnel) -> None:
    result = funnel("check")
    assert result.code == 0, result.err
    assert "OK" in result.out
    assert "warning: practice.postal_address is still the example address" in result.err
    assert f"still use the example domain {EXAMPLE_DOMAIN}" in result.err


def test_check_is_silent_once_the_practice_has_made_it_its_own(project: Project, funnel) -> None:
    _make_it_ours(project)
    result = funnel("check")
    assert result.code == 0, result.err
    assert "warning" not in result.err
    assert result.err == ""


def test_warnings_do_not_hide_real_problems(project: Project, funnel) -> None:
    layout = project.root / "email_templates" / "layout.html"
    layout.write_text(layout.read_text().replace("{{ unsubscribe_url }}", "https://example.test/"))
    result = funnel("check")
    assert result.code == 1
    assert "warning: practice.postal_address" in result.err
    assert "layout.html" in result.err and "unsubscribe" in result.err
