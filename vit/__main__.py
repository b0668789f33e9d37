"""`python -m vit ...` is the same as the `vit` command."""

from vit.cli import run

run()
