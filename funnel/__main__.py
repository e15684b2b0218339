"""`python -m funnel` runs the same CLI as the `funnel` command."""

from funnel.cli import main

main()
