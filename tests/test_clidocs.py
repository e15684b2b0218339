"""docs/cli.md is funnel's own --help, current: `./scripts/cli-docs` writes it, `--check` tells."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from funnel import clidocs
from funnel.cli import cli

REPO = Path(__file__).resolve().parent.parent


def test_docs_cli_md_is_current() -> None:
    result = subprocess.run([str(REPO / "scripts" / "cli-docs"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stderr.strip()} (docs/cli.md differs from funnel's --help)"
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == clidocs.render()


def test_every_command_and_subcommand_has_its_section() -> None:
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for name, command in cli.commands.items():
        assert f"\n## funnel {name}\n" in text, name
        for sub in getattr(command, "commands", {}):
            assert f"\n## funnel {name} {sub}\n" in text, (name, sub)
            assert f"Usage: funnel {name} {sub} [OPTIONS]" in text, (name, sub)


def test_the_check_fails_on_a_stale_file_and_names_the_command(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(clidocs.render().replace("--since DATE", "--from DATE"), encoding="utf-8")
    result = subprocess.run(
        [str(REPO / "scripts" / "cli-docs"), "--check", "--out", str(stale)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"{stale} is out of date with funnel's --help: run ./scripts/cli-docs and commit it"
    # and without --check it brings the file up to date
    assert clidocs.main(["--out", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == clidocs.render()
    assert clidocs.main(["--check", "--out", str(stale)]) == 0


@pytest.mark.parametrize("columns", ["40", "250"])
def test_the_page_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert clidocs.render() == (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
