"""`python -m attnscope` runs the CLI."""

from attnscope.cli import main

main()
