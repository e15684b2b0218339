"""The command line as users see it: exit codes, messages, help, contacts, preview, import."""

from __future__ import annotations

import json
import os
import re

import click
import pytest
from conftest import REPO, Project, project_db, without_shipped_sessions
from filelock import FileLock

from funnel.cli import cli

NOW = "2027-01-10T16:00:00Z"
HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.extend(_commands(command, full + " "))
        else:
            found.append((full, command))
    return found


def test_every_command_has_help_and_is_in_the_command_reference() -> None:
    reference = (REPO / "docs" / "cli.md").read_text()
    for name, command in _commands(cli):
        assert command.help and len(command.help.strip()) > 20, name
        assert f"## funnel {name}\n" in reference, f"`funnel {name}` is not in docs/cli.md: run ./scripts/cli-docs"


def test_readme_states_the_two_commands_and_ci_runs_the_same_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "./scripts/setup-and-run" in readme
    assert "./scripts/test" in readme
    assert "./scripts/test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize(("failing", "named"), [("sqlite", "SQLite"), ("postgres", "PostgreSQL"), ("", "")])
def test_scripts_test_runs_both_passes_and_names_the_one_that_failed(tmp_path, failing: str, named: str) -> None:
    """The real scripts/test, in a copy whose .venv/bin/python stands in for pytest (and pip):
    a failing SQLite pass must not keep the PostgreSQL one from running, and the end says which failed."""
    import shutil
    import subprocess

    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "test", tmp_path / "scripts" / "test")
    tools = tmp_path / "bin"
    tools.mkdir()
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        '[ "$2" = pip ] && exit 0\n'
        'echo "$FUNNEL_TEST_DATABASE $*" >> "$PASSES"\n'
        '[ "$FUNNEL_TEST_DATABASE" = "$FAILING" ] && exit 3\n'
        "exit 0\n"
    )
    for name in ("pg_isready", "chromium", "chromedriver"):  # the server and browser are there
        (tools / name).write_text("#!/bin/sh\nexit 0\n")
    for path in [python, *tools.iterdir()]:
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("FUNNEL_TEST_DATABASE", "FUNNEL_TEST_WORKERS")}
    env.update(PATH=f"{tools}:{env['PATH']}", PASSES=str(tmp_path / "passes"), FAILING=failing)
    result = subprocess.run(
        [str(tmp_path / "scripts" / "test"), "tests/test_x.py"], env=env, capture_output=True, text=True, timeout=60
    )
    passes = (tmp_path / "passes").read_text().splitlines()
    assert [line.split()[0] for line in passes] == ["sqlite", "postgres"]
    assert all(line.endswith("-m pytest -q -n 4 tests/test_x.py") for line in passes)
    last = result.stdout.strip().splitlines()[-1]
    if failing:
        assert result.returncode != 0
        assert last == f"== FAILED: the {named} pass (pytest exit 3)"
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAILED" not in result.stdout


def test_a_config_mistake_exits_2_with_file_and_line_and_no_traceback(project: Project, funnel_process) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text().replace("        wait: 0m\n", "        wait: soon\n", 1)
    path.write_text(text)
    line = text.splitlines().index("        wait: soon") + 1
    result = funnel_process("run", "--now", NOW)
    assert result.returncode == 2
    assert f"sequences.yaml:{line}:" in result.stderr
    assert "30m, 2h, 3d or 1w" in result.stderr
    assert "Traceback" not in result.stderr
    checked = funnel_process("check")
    assert checked.returncode == 1
    assert f"sequences.yaml:{line}:" in checked.stderr
    debug = funnel_process("run", "--now", NOW, "--debug")
    assert "Traceback" in debug.stderr


def test_check_passes_on_the_shipped_funnel_and_fails_without_an_unsubscribe_link(project: Project, funnel) -> None:
    ok = funnel("check")
    assert ok.code == 0, ok.err
    layout = project.root / "email_templates" / "layout.html"
    layout.write_text(layout.read_text().replace("{{ unsubscribe_url }}", "https://example.test/"))
    bad = funnel("check")
    assert bad.code == 1
    assert "layout.html" in bad.err and "unsubscribe" in bad.err


def test_usage_mistakes_exit_2(project: Project, funnel_process) -> None:
    assert funnel_process("run", "--now", "yesterday").returncode == 2
    assert funnel_process("run", "--bogus").returncode == 2
    assert funnel_process("preview", "no-such-sequence", "x").returncode == 2


@pytest.mark.sqlite_only(
    reason="holds the OS file lock beside funnel.db by hand; PostgreSQL's advisory run lock has its own test "
    "(test_delivery.py::test_the_run_lock_on_postgresql_is_an_advisory_lock)"
)
def test_a_second_run_while_one_holds_the_lock_exits_75(project: Project, funnel_process) -> None:
    project.write("signups/webinar-registrations.csv", HEADER)
    assert funnel_process("run", "--now", NOW).returncode == 0
    with FileLock(str(project.root / "funnel.db.lock"), timeout=0):
        result = funnel_process("run", "--now", NOW)
    assert result.returncode == 75
    assert "another `funnel run`" in result.stderr
    assert funnel_process("run", "--now", NOW).returncode == 0


def test_python_dash_m_funnel_is_the_same_program(project: Project, funnel_process) -> None:
    result = funnel_process("--help")
    assert result.returncode == 0
    assert "run" in result.stdout and "contacts" in result.stdout


def test_preview_writes_html_and_text_and_prints_the_subject(project: Project, funnel) -> None:
    result = funnel("preview", "webinar-relationship-911", "registered", "--now", NOW, "--out", "pv")
    assert result.code == 0, result.err
    assert result.out.startswith("Subject: Your place is saved, Sam")
    html = (project.root / "pv" / "webinar-relationship-911--registered.html").read_text()
    text = (project.root / "pv" / "webinar-relationship-911--registered.txt").read_text()
    assert "style=" in html  # CSS inlined
    assert "/u/sample-token" in html and "/u/sample-token" in text


def test_preview_for_a_real_contact(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/New_York,\n"
    )
    funnel("run", "--now", NOW)
    result = funnel("preview", "webinar-relationship-911", "day-before", "--email", "ana@example.test", "--out", "pv")
    assert result.code == 0, result.err
    # 19:00 in the webinar's zone (Denver), told in hers
    assert "Subject: Tomorrow at 9:00 PM EST" in result.out
    text = (project.root / "pv" / "webinar-relationship-911--day-before.txt").read_text()
    assert "Ana" in text


def test_import_reports_bad_rows_with_lines_and_keeps_the_rest(project: Project, funnel, tmp_path) -> None:
    export = tmp_path / "registrants.csv"
    export.write_text(
        HEADER + "ok@example.test,Ok,,2027-01-14 19:00,,\nnope,No,,2027-01-14 19:00,,\n"
        "late@example.test,L,,not a date,,\n"
    )
    result = funnel("import", "webinar-registrations", str(export), "--now", NOW, "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["imported"] == 1 and data["rejected"] == 2 and data["enrolled"] == 1
    assert any(p.startswith("registrants.csv:3: 'nope'") for p in data["problems"])
    assert any(p.startswith("registrants.csv:4: ") and "not a date" in p for p in data["problems"])


def test_contacts_show_has_the_spec_fields_and_unknown_address_exits_1(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,R,2027-01-14 19:00,America/Denver,\n"
    )
    funnel("run", "--now", NOW)
    data = funnel("contacts", "show", "ana@example.test", "--json").json()
    for key in ("email", "first_name", "tags", "unsubscribed", "suppressed", "enrollments"):
        assert key in data
    enrollment = data["enrollments"][0]
    assert enrollment["sequence"] == "webinar-relationship-911" and enrollment["status"] == "active"
    assert [s["id"] for s in enrollment["steps"]][:2] == ["registered", "day-before"]
    assert enrollment["steps"][0]["status"] == "sent" and enrollment["steps"][1]["status"] == "pending"
    missing = funnel("contacts", "show", "nobody@example.test")
    assert missing.code == 1
    assert "no contact" in missing.err
    plain = funnel("contacts", "show", "ana@example.test")
    assert "webinar-relationship-911" in plain.out


def test_unsubscribe_and_resubscribe_by_hand(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    funnel("run", "--now", NOW)
    assert funnel("contacts", "unsubscribe", "ana@example.test", "--now", NOW).code == 0
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["unsubscribed"] is True
    funnel("run", "--now", "2027-01-14T02:00:00Z")
    assert ("ana@example.test", "webinar-relationship-911", "day-before") not in project.sent()
    assert funnel("contacts", "resubscribe", "ana@example.test").code == 0
    data = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert data["unsubscribed"] is False and data["suppressed"] is False


def test_export_and_forget(project: Project, funnel) -> None:
    csv_text = HEADER + "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,\n"
    project.write("signups/webinar-registrations.csv", csv_text)
    funnel("run", "--now", NOW)
    exported = funnel("contacts", "export", "ana@example.test")
    assert exported.code == 0
    data = json.loads(exported.out)
    assert data["email"] == "ana@example.test" and data["consent"]["source"] == "webinar-registrations"
    assert data["tag_details"][0]["tag"] == "webinar-registered"
    assert funnel("contacts", "forget", "ana@example.test", "--now", NOW).code == 0
    for stored in project.root.glob("funnel.db*"):  # the database, its WAL, its lock file
        data = stored.read_bytes()
        assert b"ana@example.test" not in data and b"Reyes" not in data, stored.name
    assert funnel("contacts", "show", "ana@example.test").code == 1
    # an old CSV row cannot bring her back: the file changes, she is read again, and stays out
    project.write("signups/webinar-registrations.csv", csv_text + "\n")
    result = funnel("run", "--now", "2027-01-14T02:00:00Z", "--json")
    assert result.json()["sent"] == 0 and result.json()["enrolled"] == 0
    assert funnel("contacts", "show", "ana@example.test").code == 1
    report = funnel("report", "--json").json()
    assert report["sequences"][0]["steps"][0]["sent"] == 1  # the figures stay


def test_report_json_shape(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    funnel("run", "--now", NOW)
    data = funnel("report", "--json").json()
    sequence = data["sequences"][0]
    for key in ("id", "enrolled", "active", "finished", "exited", "steps"):
        assert key in sequence
    for key in ("id", "sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "failed", "skipped"):
        assert key in sequence["steps"][0]
    text = funnel("report")
    assert text.code == 0 and "registered" in text.out


def test_cron_run_is_quiet_when_all_is_well(project: Project, funnel_process) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    result = funnel_process("run", "--now", NOW)
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""
    verbose = funnel_process("run", "--now", NOW, "--verbose")
    assert re.search(r"sent 0", verbose.stdout)


def test_funnel_base_url_overrides_the_yaml_in_every_link(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    env = {"FUNNEL_BASE_URL": "https://links.example.test/"}
    assert funnel("run", "--now", NOW, env=env).code == 0
    message = project.messages()[0]
    assert message["List-Unsubscribe"].startswith("<https://links.example.test/u/")
    preview = funnel("preview", "consultation", "received", "--out", "pv", env=env)
    assert "https://links.example.test/u/" in (project.root / "pv" / "consultation--received.txt").read_text()
    assert preview.code == 0


def test_a_broken_template_stops_the_run_before_anything_is_done(project: Project, funnel_process) -> None:
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    template = project.root / "email_templates" / "webinar" / "replay.md"
    template.write_text("Hello {% if contact.first_name %}\n")
    result = funnel_process("run", "--now", NOW)
    assert result.returncode == 2
    assert "email_templates/webinar/replay.md:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not project.outbox.exists()


# --------------------------------------------------------------------------- issue 6: blanks and the sandbox in runs


def test_a_registration_without_a_webinar_start_gets_no_email_with_blanks(project: Project, funnel) -> None:
    """Issue 6 item 11: a blank start used to send "at" with no date; now the steps are skipped with a reason."""
    # a webinar without sessions: a row without a start has no date (with the shipped ones, the next session)
    config = project.root / "sequences.yaml"
    config.write_text(without_shipped_sessions(config.read_text()))
    project.write(
        "signups/webinar-registrations.csv",
        HEADER + "ana@example.test,Ana,,,America/Denver,\nbea@example.test,Bea,,2027-01-14 19:00,,\n",
    )
    result = funnel("run", "--now", NOW, "--json")
    assert result.code == 0, result.err
    assert project.sent() == [("bea@example.test", "webinar-relationship-911", "registered")]
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    steps = {s["id"]: s for s in shown["enrollments"][0]["steps"]}
    assert (steps["registered"]["status"], steps["registered"]["reason"]) == ("skipped", "no webinar date")
    assert (steps["day-before"]["status"], steps["day-before"]["reason"]) == ("skipped", "no webinar date")


def test_a_template_reaching_for_the_api_key_never_sends_it(project: Project, funnel) -> None:
    """Issue 6 item 12: the sandbox refuses it in check and at run time; the key goes nowhere."""
    key = "SG.very-secret-key-123"
    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    template = project.root / "email_templates" / "webinar" / "registered.md"
    template.write_text(template.read_text() + "\n{{ cycler.__init__.__globals__.os.environ.SENDGRID_API_KEY }}\n")
    checked = funnel("check", env={"SENDGRID_API_KEY": key})
    assert checked.code == 1
    assert "email_templates/webinar/registered.md:" in checked.err and "Python internals" in checked.err
    assert key not in checked.out + checked.err
    run = funnel("run", "--now", NOW, "--json", env={"SENDGRID_API_KEY": key})
    assert run.code == 1
    assert run.json()["sent"] == 0 and run.json()["failed"] == 1
    assert key not in run.out + run.err
    assert not any(key in p.read_text() for p in project.outbox.glob("*")) if project.outbox.exists() else True
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    registered = shown["enrollments"][0]["steps"][0]
    assert registered["status"] == "failed" and "Python internals" in registered["reason"]


# --------------------------------------------------------------------------- issue 6 item 14: errors people can act on


def _one_sentence(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2, the needles in stderr, and no traceback or SQL."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "SELECT" not in result.stderr and "INSERT" not in result.stderr and "UPDATE" not in result.stderr


@pytest.mark.sqlite_only(reason="about the SQLite file's own permissions (PostgreSQL has no file)")
def test_a_read_only_database_file_is_one_sentence(project: Project, funnel_process) -> None:
    assert funnel_process("run", "--now", NOW).returncode == 0
    database = project.root / "funnel.db"
    database.chmod(0o444)
    try:
        for args in (("run", "--now", NOW), ("contacts", "show", "ana@example.test"), ("plan", "--now", NOW)):
            _one_sentence(funnel_process(*args), "funnel.db is read-only", "chmod u+w")
    finally:
        database.chmod(0o644)


def test_a_read_only_database_folder_is_one_sentence(project: Project, funnel_process, tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    env = {"FUNNEL_DATABASE_URL": f"sqlite:///{folder / 'funnel.db'}"}
    assert funnel_process("run", "--now", NOW, env=env).returncode == 0
    folder.chmod(0o555)
    try:
        _one_sentence(funnel_process("run", "--now", NOW, env=env), "folder", "read-only")
    finally:
        folder.chmod(0o755)


def test_a_mistyped_database_url_creates_nothing(project: Project, funnel_process, tmp_path) -> None:
    missing = tmp_path / "no-such-folder" / "funnel.db"
    result = funnel_process("run", "--now", NOW, env={"FUNNEL_DATABASE_URL": f"sqlite:///{missing}"})
    _one_sentence(result, "FUNNEL_DATABASE_URL", "does not exist")
    assert not missing.parent.exists()
    for url in ("postgress://postgres@127.0.0.1/funnel", "sqlite+nodriver:///funnel.db", "mysqlx://a@b/c"):
        _one_sentence(funnel_process("run", "--now", NOW, env={"FUNNEL_DATABASE_URL": url}), "FUNNEL_DATABASE_URL")
    _one_sentence(
        funnel_process("run", "--now", NOW, env={"FUNNEL_DATABASE_URL": f"sqlite:///{tmp_path}"}), "is a folder"
    )


def test_now_out_of_range_or_garbage_exits_2(project: Project, funnel_process) -> None:
    for value in ("9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "1850-01-01"):
        _one_sentence(funnel_process("run", "--now", value), "out of range")
    for value in ("garbage", "2026-13-45", "9999-12-31T23:59:59-05:00"):
        _one_sentence(funnel_process("plan", "--now", value), "--now")
    assert not (project.root / "funnel.db").exists()


def test_preview_to_a_folder_that_cannot_be_written_exits_2(project: Project, funnel_process) -> None:
    result = funnel_process("preview", "consultation", "received", "--out", "sequences.yaml/pv")
    _one_sentence(result, "--out sequences.yaml/pv: cannot write there")


def test_a_step_id_with_a_slash_is_refused_with_its_line(project: Project, funnel_process) -> None:
    path = project.root / "sequences.yaml"
    text = path.read_text().replace("- id: received", "- id: received/../../x", 1)
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "received/../../x" in row)
    _one_sentence(
        funnel_process("preview", "consultation", "received/../../x"), f"sequences.yaml:{line}:", "'received-x'"
    )
    checked = funnel_process("check")
    assert checked.returncode == 1 and f"sequences.yaml:{line}:" in checked.stderr


def test_report_since_garbage_exits_2(project: Project, funnel_process) -> None:
    for value in ("garbage", "9999-12-31T23:59:59-05:00", "0005-01-01"):
        _one_sentence(funnel_process("report", "--since", value), "--since", "2026-12-01")


def test_control_characters_in_contact_data_never_reach_the_terminal_raw(project: Project, funnel) -> None:
    """However a name got into the database, printing it cannot drive the terminal."""

    project.write("signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,,\n")
    assert funnel("run", "--now", NOW).code == 0
    hostile = "Ana\x1b]0;owned\x07\x1b[2J\x9b31m\u202e[bold]x[/]"
    with project_db(project) as db:
        db.execute("UPDATE contacts SET first_name = ?, last_name = ?", (hostile, "\r\x08Reyes"))
    shown = funnel("contacts", "show", "ana@example.test")
    assert shown.code == 0
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\x08"):
        assert raw not in shown.out + shown.err
    assert "\\x1b]0;owned\\x07" in shown.out and "[bold]x[/]" in shown.out
    as_json = funnel("contacts", "show", "ana@example.test", "--json")
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in as_json.out
    assert json.loads(as_json.out)["first_name"] == hostile


def test_contacts_tag_and_untag_by_hand(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    funnel("run", "--now", NOW)
    tagged = funnel("contacts", "tag", "ANA@example.test", "client", "consultation-held", "--now", NOW)
    assert tagged.code == 0, tagged.err
    assert tagged.out.strip() == "ANA@example.test: tagged client, consultation-held"
    assert tagged.err == ""
    again = funnel("contacts", "tag", "ana@example.test", "client")
    assert again.code == 0 and "already tagged client" in again.out
    data = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert data["tags"] == ["client", "consultation-held", "webinar-registered"]
    export = json.loads(funnel("contacts", "export", "ana@example.test").out)
    assert {"tag": "client", "source": "by hand", "added_at": "2027-01-10T16:00:00Z"} in export["tag_details"]
    untagged = funnel("contacts", "untag", "ana@example.test", "client", "vip")
    assert untagged.code == 0, untagged.err
    assert untagged.out.strip() == "ana@example.test: untagged client; was not tagged vip"
    data = funnel("contacts", "show", "ana@example.test", "--json").json()
    assert data["tags"] == ["consultation-held", "webinar-registered"]


def test_contacts_tag_refuses_unknown_addresses_and_malformed_tags(project: Project, funnel) -> None:
    project.write(
        "signups/webinar-registrations.csv", HEADER + "ana@example.test,Ana,,2027-01-14 19:00,America/Denver,\n"
    )
    funnel("run", "--now", NOW)
    for command in ("tag", "untag"):
        missing = funnel("contacts", command, "nobody@example.test", "client")
        assert missing.code == 1 and "no contact with the address nobody@example.test" in missing.err
        bad = funnel("contacts", command, "ana@example.test", "New Client")
        assert bad.code == 2 and "'New Client' is not a tag" in bad.err and "lower case" in bad.err
        assert funnel("contacts", command, "ana@example.test").code == 2  # at least one tag
    assert funnel("contacts", "show", "ana@example.test", "--json").json()["tags"] == ["webinar-registered"]
    typo = funnel("contacts", "tag", "ana@example.test", "clinet")
    assert typo.code == 0  # a tag of her own is allowed, with a note
    assert "does not use the tag 'clinet': did you mean 'client'?" in typo.err


# --------------------------------------------------------------------------- issue 9: hostile templates


def test_a_template_expression_that_fails_for_one_person_fails_only_her_email(project: Project, funnel) -> None:
    """`{{ 1 / 0 }}`-like arithmetic used to end the whole run with "unexpected ZeroDivisionError"."""
    project.write(
        "signups/consultation-requests.jsonl",
        '{"email": "ana@example.test", "name": "Ana"}\n{"email": "beatriz@example.test", "name": "Beatriz"}\n',
    )
    template = project.root / "email_templates" / "consultation" / "received.md"
    template.write_text(template.read_text() + "\n{{ 12 // (contact.first_name|length - 3) }}\n")
    result = funnel("run", "--now", NOW)
    assert "unexpected" not in result.err, result.err
    assert result.code == 1, result.err
    assert project.sent() == [("beatriz@example.test", "consultation", "received")]
    shown = funnel("contacts", "show", "ana@example.test", "--json").json()
    step = shown["enrollments"][0]["steps"][0]
    assert step["status"] == "failed" and "received.md:" in step["reason"], step


def test_check_names_the_line_of_a_template_loop_the_sandbox_refuses(project: Project, funnel) -> None:
    """A range too big for the sandbox (OverflowError) used to give "unexpected OverflowError" and no line."""
    template = project.root / "email_templates" / "consultation" / "received.md"
    template.write_text(template.read_text() + "\n{% for x in range(10**9) %}x{% endfor %}\n")
    result = funnel("check", "--now", NOW)
    assert result.code == 1, result.err
    assert "unexpected" not in result.err
    lines = len(template.read_text().splitlines())
    assert f"email_templates/consultation/received.md:{lines}:" in result.err, result.err
