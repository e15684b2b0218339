"""Write docs/cli.md from the command line's own help: `python -m funnel.clidocs` (or `./scripts/cli-docs`).

Every command and subcommand gets a section holding exactly what
`funnel COMMAND --help` prints, at a fixed width of 80 columns so that the
file does not depend on the terminal it was made in. The help text in
`funnel/cli.py` stays the one source: the page is never edited by hand.
`--check` writes nothing and exits 1, naming the command to run, when the
file is out of date (a test runs it, so a changed option cannot go unnoticed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from funnel.cli import cli

#: the file this writes, relative to the repository
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
#: what to run when the file is out of date
COMMAND = "./scripts/cli-docs"
WIDTH = 80

_INTRO = """# funnel's commands

This page is made from `funnel COMMAND --help` by `{command}`; do not edit it by hand.
Change the help text in `funnel/cli.py` and run `{command}` again (a test fails until you do).

Every command takes `--config FILE` (default `./sequences.yaml`); every command that reads the clock
takes `--now` (for simulation and tests). Exit codes: 0 success; 1 the command ran but something
failed; 2 bad configuration or usage, nothing done; 75 another `funnel run` holds the lock.
"""


def _commands(ctx: click.Context) -> Iterator[tuple[click.Context, click.Command]]:
    """Every visible command under `ctx`, depth first in the order `--help` lists them."""
    command = ctx.command
    yield ctx, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _commands(click.Context(sub, info_name=name, parent=ctx))


def _summary(command: click.Command) -> str:
    """The first line of the command's help (click's own short help stops at the first "e.g.")."""
    text = command.short_help or (command.help or "").strip()
    return text.split("\n", 1)[0].strip()


def render() -> str:
    """The whole of docs/cli.md."""
    root = click.Context(cli, info_name="funnel", terminal_width=WIDTH, max_content_width=WIDTH, **cli.context_settings)
    sections, index = [], []
    for ctx, command in _commands(root):
        path = ctx.command_path
        anchor = path.replace(" ", "-")
        if ctx is not root:
            index.append(f"- [`{path}`](#{anchor}): {_summary(command)}")
        help_text = command.get_help(ctx).rstrip()
        sections.append(f"## {path}\n\n```text\n{help_text}\n```\n")
    return _INTRO.format(command=COMMAND) + "\n" + "\n".join(index) + "\n\n" + "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cli-docs", description="Write docs/cli.md from funnel's --help.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file is out of date")
    parser.add_argument("--out", type=Path, default=DOCS, help=f"the file (default {DOCS})")
    args = parser.parse_args(argv)
    wanted = render()
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if args.check:
        if current != wanted:
            print(f"{args.out} is out of date with funnel's --help: run {COMMAND} and commit it", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(wanted, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(f"{args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
