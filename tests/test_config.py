"""`load_config`: every mistake in sequences.yaml is reported as `sequences.yaml:LINE: message`."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from funnel.config import Config, load_config
from funnel.errors import ConfigError
from funnel.timeutil import Duration

REPO = Path(__file__).resolve().parent.parent

BASE_YAML = """\
practice:
  name: Test Practice
  from_email: care@practice.test
  postal_address: "1 Main St, Suite 2, Town, CO 80000"
  timezone: America/Denver
  base_url: https://mail.practice.test

delivery:
  send_window: "08:00-20:00"
  send_days: [mon, tue, wed, thu, fri]

webinars:
  intro:
    title: "Intro Webinar"
    join_url: https://practice.test/join

sources:
  registrations:
    format: csv
    path: signups/registrations.csv
    columns: {email: Email, first_name: First Name, webinar_start: Start}
    webinar: intro
    enroll: welcome

sequences:
  welcome:
    next: later
    steps:
      - id: hello
        wait: 0m
        subject: "Hello {{ contact.first_name or 'friend' }}"
        template: hello.md
      - id: reminder
        webinar: -1d
        subject: "Tomorrow"
        template: reminder.md
  later:
    steps:
      - id: only
        wait: 1d
        subject: "Later"
        template: hello.md
"""

LAYOUT_HTML = (
    "<html><body>{{ content }}<p>{{ practice.postal_address }}</p>"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>\n'
)
LAYOUT_TXT = "{{ content }}\n\n--\n{{ practice.postal_address }}\nUnsubscribe: {{ unsubscribe_url }}\n"


def write_project(
    root: Path,
    yaml: str = BASE_YAML,
    *,
    replace: dict[str, str] | None = None,
    templates: dict[str, str] | None = None,
) -> Path:
    """A minimal valid project in `root`; `replace` edits the YAML, `templates` adds files."""
    for old, new in (replace or {}).items():
        assert old in yaml, f"test bug: {old!r} is not in the YAML"
        yaml = yaml.replace(old, new)
    files = {
        "layout.html": LAYOUT_HTML,
        "layout.txt": LAYOUT_TXT,
        "hello.md": "Hi {{ contact.first_name or 'there' }},\n\nWelcome.\n",
        "reminder.md": "See you tomorrow at {{ webinar.title }}.\n",
        **(templates or {}),
    }
    for name, text in files.items():
        path = root / "email_templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    config = root / "sequences.yaml"
    config.write_text(yaml, encoding="utf-8")
    return config


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the `occurrence`-th line containing `needle`."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    assert len(hits) >= occurrence, f"test bug: {needle!r} not found {occurrence} times"
    return hits[occurrence - 1]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert problems, "a ConfigError always lists its problems"
    assert str(info.value) == problems[0]
    return problems


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def test_minimal_project_loads(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path))
    assert isinstance(config, Config)
    assert config.practice.timezone == "America/Denver"
    assert config.delivery.send_window.start == time(8)
    assert config.delivery.send_window.end == time(20)
    assert config.delivery.send_days == ("mon", "tue", "wed", "thu", "fri")
    steps = config.sequences["welcome"].steps
    assert [s.id for s in steps] == ["hello", "reminder"]
    assert steps[0].wait == Duration(minutes=0)
    assert steps[1].webinar == Duration(days=-1)
    assert config.sequences["later"].steps[0].wait == Duration(days=1)
    assert config.fingerprint


def test_loading_the_same_file_again_gives_the_same_config_and_an_edit_is_read(tmp_path: Path) -> None:
    """A process keeps the parse of a text it has read (`funnel serve`, in-process CLI calls)."""
    path = write_project(tmp_path)
    first, second = load_config(path), load_config(path)
    assert first == second and first is not second
    assert first.source_lines == second.source_lines and first.source_lines
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("America/Denver", "America/Chicago", 1), encoding="utf-8")
    assert load_config(path).practice.timezone == "America/Chicago"
    path.write_text(text.replace("America/Denver", "Mars/Olympus", 1), encoding="utf-8")
    assert "Mars/Olympus" in only_problem(path)
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == first


def test_shipped_sequences_yaml_loads_without_problems() -> None:
    config = load_config(REPO / "sequences.yaml")
    assert config.practice.postal_address
    assert "webinar-relationship-911" in config.sequences
    assert config.sources["webinar-attendance"].where == {"Attended": "Yes"}
    for sequence in config.sequences.values():
        for step in sequence.steps:
            assert (config.templates_path / step.template).is_file()


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={'subject: "Tomorrow"': 'subjct: "Tomorrow"'})
    problems = problems_of(path)
    unknown = [p for p in problems if "subjct" in p]
    assert len(unknown) == 1, problems
    assert unknown[0].startswith(f"sequences.yaml:{line_of(path, 'subjct:')}: ")
    assert "did you mean `subject`?" in unknown[0]
    # and the step now lacks its subject: named on the step's own line
    missing = [p for p in problems if "`subject` is missing" in p]
    assert missing and missing[0].startswith(f"sequences.yaml:{line_of(path, '- id: reminder')}: ")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"delivery:\n": "delivry:\n"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'delivry:')}: ")
    assert "did you mean `delivery`?" in problem


def test_unknown_key_in_practice(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"  timezone: America/Denver": "  time_zone: America/Denver"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'time_zone:')}: ")
    assert "did you mean `timezone`?" in problem


def test_bad_duration(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"wait: 1d": "wait: 2 days"})
    # the only step of `later` is wrong: one problem, not an extra "too short" about the list
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'wait: 2 days')}: ")
    assert "'2 days' is not a duration" in problem
    assert "30m, 2h, 3d or 1w" in problem


def test_signed_wait_is_refused(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"wait: 1d": "wait: -1d"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'wait: -1d')}: ")
    assert "cannot be negative" in problem


def test_step_with_both_wait_and_webinar(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"webinar: -1d\n": "webinar: -1d\n        wait: 1h\n"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, '- id: reminder')}: ")
    assert "both `wait:` and `webinar:`" in problem
    assert "'reminder'" in problem


def test_step_with_neither_wait_nor_webinar(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"        webinar: -1d\n": ""})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, '- id: reminder')}: ")
    assert "needs `wait:`" in problem
    assert "webinar:" in problem


def test_unknown_sequence_in_enroll(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"enroll: welcome": "enroll: welcom"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'enroll: welcom')}: ")
    assert "unknown sequence 'welcom'" in problem
    assert "did you mean 'welcome'?" in problem


def test_unknown_sequence_in_next(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"next: later": "next: nowhere-at-all"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'next: nowhere-at-all')}: ")
    assert "unknown sequence 'nowhere-at-all'" in problem
    assert "later" in problem and "welcome" in problem  # lists the known ones


def test_unknown_webinar_in_source(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"    webinar: intro": "    webinar: intor"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'webinar: intor')}: ")
    assert "did you mean 'intro'?" in problem


def test_duplicate_step_ids(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"- id: reminder": "- id: hello"})
    problem = only_problem(path)
    first, second = line_of(path, "- id: hello", 1), line_of(path, "- id: hello", 2)
    assert problem.startswith(f"sequences.yaml:{second}: ")
    assert f"first on line {first}" in problem
    assert "'hello'" in problem


def test_same_step_id_in_two_sequences_is_fine(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"- id: only": "- id: hello"})
    load_config(path)


def test_unknown_timezone(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"timezone: America/Denver": "timezone: Mountain Time"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'timezone: Mountain Time')}: ")
    assert "'Mountain Time' is not a known timezone" in problem
    assert "America/Denver" in problem  # an example of what to write


def test_missing_template_file(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"template: reminder.md": "template: reminder-typo.md"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'reminder-typo.md')}: ")
    assert "'reminder-typo.md' not found in email_templates/" in problem


def test_a_template_path_too_long_for_the_disk_is_not_found_with_its_line(tmp_path: Path) -> None:
    """A 5,000-character template path made the OS refuse the look-up (OSError: name too long): a traceback."""
    long_name = "x" * 5000 + ".md"
    path = write_project(tmp_path, replace={"template: reminder.md": f"template: {long_name}"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, long_name)}: "), problem
    assert "not found in email_templates/" in problem


def test_missing_template_is_not_checked_without_check_files(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"template: reminder.md": "template: reminder-typo.md"})
    config = load_config(path, check_files=False)
    assert config.sequences["welcome"].steps[1].template == "reminder-typo.md"


def test_missing_layout(tmp_path: Path) -> None:
    path = write_project(tmp_path)
    (tmp_path / "email_templates" / "layout.html").unlink()
    problem = only_problem(path)
    assert problem.startswith("sequences.yaml:")
    assert "layout.html not found" in problem


def test_missing_postal_address_mentions_can_spam(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={'  postal_address: "1 Main St, Suite 2, Town, CO 80000"\n': ""})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'practice:')}: ")
    assert "postal_address" in problem
    assert "CAN-SPAM" in problem


def test_empty_postal_address_mentions_can_spam(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={'postal_address: "1 Main St, Suite 2, Town, CO 80000"': 'postal_address: "  "'},
    )
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'postal_address:')}: ")
    assert "CAN-SPAM" in problem


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("8am to 8pm", "is not a window"),
        ("08:00-25:00", "'25:00' is not a time of day"),
        ("08:00-08:00", "is an empty window"),
        ("08:00", "is not a window"),
    ],
)
def test_bad_send_window(tmp_path: Path, window: str, expected: str) -> None:
    path = write_project(tmp_path, replace={'send_window: "08:00-20:00"': f'send_window: "{window}"'})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'send_window:')}: ")
    assert expected in problem


def test_send_window_may_wrap_past_midnight(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={'send_window: "08:00-20:00"': 'send_window: "22:00-06:00"'})
    window = load_config(path).delivery.send_window
    assert (window.start, window.end) == (time(22), time(6))
    assert str(window) == "22:00-06:00"


def test_bad_send_days(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"[mon, tue, wed, thu, fri]": "[mon, tue, funday]"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'send_days:')}: ")
    assert "'funday' is not a day" in problem
    assert "mon, tue, wed, thu, fri, sat or sun" in problem


def test_empty_send_days(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"[mon, tue, wed, thu, fri]": "[]"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'send_days:')}: ")
    assert "send_days needs a list of days" in problem


def test_send_days_accept_full_names_and_capitals(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"[mon, tue, wed, thu, fri]": "[Monday, TUESDAY, sat]"})
    assert load_config(path).delivery.send_days == ("mon", "tue", "sat")


def test_invalid_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    # an unquoted colon inside a value
    path = write_project(tmp_path, replace={'title: "Intro Webinar"': "title: Intro: the webinar"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'title: Intro: the webinar')}: ")
    assert "quotes" in problem


def test_invalid_yaml_indentation_names_the_line(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"      - id: only\n": "      - id: only\n     - id: stray\n"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, '- id: stray')}: ")
    assert "indentation" in problem


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write_project(tmp_path, yaml="- just\n- a list\n")
    problem = only_problem(path)
    assert problem.startswith("sequences.yaml:1: ")
    assert "practice:" in problem


def test_several_validation_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={
            "timezone: America/Denver": "timezone: Nowhere/Land",
            'subject: "Tomorrow"': 'subjct: "Tomorrow"',
            "wait: 1d": "wait: soon",
            "[mon, tue, wed, thu, fri]": "[mon, someday]",
        },
    )
    problems = problems_of(path)
    expected = {
        line_of(path, "timezone: Nowhere/Land"): "Nowhere/Land",
        line_of(path, "subjct:"): "did you mean `subject`?",
        line_of(path, "wait: soon"): "'soon' is not a duration",
        line_of(path, "send_days:"): "'someday' is not a day",
    }
    for line, text in expected.items():
        assert any(p.startswith(f"sequences.yaml:{line}: ") and text in p for p in problems), (
            line,
            problems,
        )


def test_several_reference_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={
            "enroll: welcome": "enroll: welcom",
            "next: later": "next: latter",
            "- id: reminder": "- id: hello",
            "template: reminder.md": "template: gone.md",
        },
    )
    problems = problems_of(path)
    assert len(problems) == 4, problems
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == sorted(
        [
            line_of(path, "enroll: welcom"),
            line_of(path, "next: latter"),
            line_of(path, "- id: hello", 2),
            line_of(path, "gone.md"),
        ]
    )


def test_every_problem_has_file_line_message_form(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"format: csv": "format: excel", "wait: 0m": "wait: now"})
    for problem in problems_of(path):
        name, line, message = problem.split(":", 2)
        assert name == "sequences.yaml"
        assert line.isdigit() and int(line) >= 1
        assert message.strip()
    assert any("format" in p and "'excel'" in p for p in problems_of(path))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "sequences.yaml")
    assert "not found" in str(info.value)
    assert "--config" in str(info.value)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_project(project)
    monkeypatch.chdir(elsewhere)
    config = load_config("../project/sequences.yaml")
    assert config.path == (project / "sequences.yaml").resolve()
    assert config.folder == project.resolve()
    assert config.templates_path == project.resolve() / "email_templates"
    source = config.sources["registrations"]
    assert source.path is not None
    assert config.resolve(source.path) == project.resolve() / "signups" / "registrations.csv"
    absolute = tmp_path / "abs.csv"
    assert config.resolve(str(absolute)) == absolute


def test_templates_dir_is_relative_to_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_project(tmp_path, yaml=BASE_YAML + "templates_dir: mail\n")
    (tmp_path / "email_templates").rename(tmp_path / "mail")
    monkeypatch.chdir(tmp_path.parent)
    config = load_config(path)
    assert config.templates_path == tmp_path.resolve() / "mail"


def test_funnel_config_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_project(tmp_path / "somewhere", replace={"name: Test Practice": "name: From Env"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUNNEL_CONFIG", str(path))
    config = load_config()
    assert config.practice.name == "From Env"
    assert config.path == path.resolve()


def test_explicit_path_wins_over_funnel_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_path = write_project(tmp_path / "env", replace={"name: Test Practice": "name: From Env"})
    explicit = write_project(tmp_path / "explicit", replace={"name: Test Practice": "name: Explicit"})
    monkeypatch.setenv("FUNNEL_CONFIG", str(env_path))
    assert load_config(explicit).practice.name == "Explicit"


def test_default_is_sequences_yaml_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path, replace={"name: Test Practice": "name: Current Folder"})
    monkeypatch.delenv("FUNNEL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config().practice.name == "Current Folder"


def test_utf8_bom_in_config_is_accepted(tmp_path: Path) -> None:
    path = write_project(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_config(path).practice.name == "Test Practice"


# ---------------------------------------------------------------- issue 6: silent misreadings, bad ids and spans


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("[mon-fri]", ("mon", "tue", "wed", "thu", "fri")),
        ("[sat-sun]", ("sat", "sun")),
        ("[fri-mon]", ("mon", "fri", "sat", "sun")),  # a range may wrap over the weekend
        ("mon-wed", ("mon", "tue", "wed")),
        ("[Monday-Friday, sun]", ("mon", "tue", "wed", "thu", "fri", "sun")),
        ("[thurs, tues]", ("tue", "thu")),
    ],
)
def test_send_days_accept_ranges(tmp_path: Path, days: str, expected: tuple[str, ...]) -> None:
    """Issue 6 item 11: `[mon-fri]` used to mean Mondays only."""
    path = write_project(tmp_path, replace={"[mon, tue, wed, thu, fri]": days})
    assert load_config(path).delivery.send_days == expected


@pytest.mark.parametrize("days", ["[mon-fri-sun]", "[mon-someday]", "[monkey]", "[mo]"])
def test_send_days_that_are_not_days_or_ranges_are_refused_with_the_line(tmp_path: Path, days: str) -> None:
    path = write_project(tmp_path, replace={"[mon, tue, wed, thu, fri]": days})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'send_days:')}: ")
    assert "mon-fri" in problem


@pytest.mark.parametrize("step_id", ["a/b", "../up", "hello world", "naïve", "-lead", "x" * 65, "a?b"])
def test_step_ids_unsafe_in_file_names_and_links_are_refused(tmp_path: Path, step_id: str) -> None:
    """Issue 6 item 14: a step id with `/` made `preview` write outside its folder."""
    path = write_project(tmp_path, replace={"- id: reminder": f"- id: {step_id!r}"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'webinar: -1d') - 1}: ")
    assert "letters, digits, - and _" in problem


def test_sequence_ids_unsafe_in_file_names_are_refused(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"  later:\n": "  later/x:\n", "next: later": "next: later/x"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'later/x:')}: ")
    assert "letters, digits, - and _" in problem and "'later-x'" in problem


@pytest.mark.parametrize("span", ["wait: 500000w", "wait: 261w", "wait: 99999999d"])
def test_waits_longer_than_five_years_are_refused_with_the_line(tmp_path: Path, span: str) -> None:
    """Issue 6 item 4: `wait: 500000w` passed check and then crashed every run."""
    path = write_project(tmp_path, replace={"wait: 1d": span})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, span)}: ")
    assert "longer than 5 years" in problem


def test_webinar_offsets_longer_than_five_years_are_refused(tmp_path: Path) -> None:
    path = write_project(tmp_path, replace={"webinar: -1d": "webinar: -300w"})
    assert "longer than 5 years" in only_problem(path)


# ---------------------------------------------------------------- webinars: one moment, evergreen, calendar

HELLO_END = "template: hello.md\n      - id: reminder"
CALENDAR_HELLO = "template: hello.md\n        calendar: true\n      - id: reminder"


def test_a_webinar_start_is_read_in_the_webinars_zone_by_default_the_practices(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path))
    source = config.sources["registrations"]
    assert config.start_zone(source) == ZoneInfo("America/Denver")  # practice.timezone
    assert config.webinars["intro"].duration == Duration(minutes=60)
    config = load_config(
        write_project(
            tmp_path,
            replace={
                "join_url: https://practice.test/join": (
                    "join_url: https://practice.test/join\n    timezone: America/New_York\n    duration: 90m"
                )
            },
        )
    )
    assert config.start_zone(source) == ZoneInfo("America/New_York")
    assert config.webinars["intro"].duration == Duration(minutes=90)


def test_an_evergreen_webinar_is_read_in_each_registrants_zone(tmp_path: Path) -> None:
    path = write_project(
        tmp_path, replace={"join_url: https://practice.test/join": "join_url: https://x.test/j\n    evergreen: true"}
    )
    config = load_config(path)
    assert config.start_zone(config.sources["registrations"]) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("timezone: Mountain", "webinars.intro.timezone: 'Mountain' is not a known timezone"),
        ("duration: 0m", "webinars.intro.duration: '0m' is not a length"),
        ("duration: soon", "webinars.intro.duration: 'soon' is not a duration"),
    ],
)
def test_bad_webinar_settings_name_their_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_project(tmp_path, replace={"join_url: https://practice.test/join": f"join_url: x\n    {line}"})
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, line)}: {expected}")


def test_calendar_is_allowed_on_steps_of_webinar_sequences_also_through_next(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={
            HELLO_END: CALENDAR_HELLO,
            'subject: "Later"\n': 'subject: "Later"\n        calendar: true\n',
        },
    )
    config = load_config(path)
    assert config.sequences["welcome"].steps[0].calendar
    assert config.webinar_sequences() == {"welcome", "later"}


def test_calendar_on_a_sequence_without_a_webinar_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={
            "    webinar: intro\n": "",
            "columns: {email: Email, first_name: First Name, webinar_start: Start}": "columns: {email: Email}",
            HELLO_END: CALENDAR_HELLO,
        },
    )
    problem = only_problem(path)
    assert problem.startswith(f"sequences.yaml:{line_of(path, 'calendar: true')}: step 'hello' in sequences.welcome")
    assert "no webinar" in problem and "remove the line" in problem


def test_preheaders_are_optional_step_keys(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        replace={
            "template: hello.md\n      - id: reminder": (
                'template: hello.md\n        preheader: "Your link"\n        discreet_preheader: "Details"\n'
                "      - id: reminder"
            )
        },
    )
    hello = load_config(path).sequences["welcome"].steps[0]
    assert (hello.preheader, hello.discreet_preheader) == ("Your link", "Details")
    assert load_config(path).sequences["welcome"].steps[1].preheader is None
