"""`python -m autoresearch` is the same as `ar`."""

from .cli import app

app(prog_name="ar")
