"""`--help` as a user reads it: every command's help renders, brackets survive, no `<bool>`,
`-h` and `--version` work, and every doc page a help text names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app

COMMANDS = ["prepare", "hardware", "init", "run", "results", "show", "report", "plot", "loop"]
REPO = Path(__file__).resolve().parents[1]


def help_of(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_readable_help(command):
    text = help_of(command)
    assert "<bool>" not in text and "Traceback" not in text
    assert text == CliRunner().invoke(app, [command, "-h"], env={"COLUMNS": "100"}).output  # -h is --help
    for page in re.findall(r"docs/[\w./-]+\.md", text):
        assert (REPO / page).is_file(), f"{command} --help names {page}, which does not exist"


def test_brackets_in_help_are_shown_not_eaten_as_markup():
    assert "pip install 'autoresearch[ray]'" in " ".join(help_of("loop").split())


def test_version_and_short_help():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and re.match(r"ar \(autoresearch\) \d+\.\d+", res.output)
    top = CliRunner().invoke(app, ["-h"])
    assert top.exit_code == 0 and all(c in top.output for c in COMMANDS)
