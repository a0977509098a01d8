"""`python -m qagrel_cli` runs the same CLI as the `qagrel` console script."""

from qagrel_cli.cli import app

app(prog_name="qagrel")
