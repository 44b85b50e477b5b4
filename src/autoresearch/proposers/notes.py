"""The research notes: a file the agent keeps through a second tool, shown on every turn.

What it learned and what it plans next survive from one experiment to the next and across
restarts of `ar loop`. The file is `.autoresearch/notes.md` in the workspace (git-ignored;
training runs see `.autoresearch` read-only, so a run cannot write it). The proposer only
edits an in-memory copy (`NotesSession`); the loop writes the result (loop/proposing.py),
so side effects stay at the edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from autoresearch.data.cache import atomic_write
from autoresearch.proposers.edits import ToolResult

NOTES_RELPATH = Path(".autoresearch") / "notes.md"
NOTES_TOOL = "research_notes"
NOTES_MAX = 12_000  # characters: notes go into every prompt, so they must stay short

DESCRIPTION = (
    "Your research notes for this run, kept in a file that is shown to you at the start of "
    "every experiment and survives restarts. Record what you learned from the results (what "
    "helped, what did not and why you think so) and what you plan to try next. "
    "command 'replace' rewrites the whole notes with `text`; 'append' adds `text` at the end. "
    f"At most {NOTES_MAX} characters in all: summarise rather than log every result."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "enum": ["replace", "append"], "description": "replace the notes, or append to them"},
        "text": {"type": "string", "description": "the notes text (markdown)"},
    },
    "required": ["command", "text"],
}


def anthropic_tool() -> dict:
    return {"name": NOTES_TOOL, "description": DESCRIPTION, "input_schema": SCHEMA}


def openai_tool() -> dict:
    return {"type": "function", "function": {"name": NOTES_TOOL, "description": DESCRIPTION, "parameters": SCHEMA}}


class NotesSession:
    """The notes during one proposal; `changed` when the model wrote them."""

    def __init__(self, text: str):
        self.original = text
        self.text = text

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def execute(self, args: Mapping[str, Any]) -> ToolResult:
        command, text = args.get("command"), args.get("text")
        if command not in ("replace", "append"):
            return ToolResult(f"Error: command must be 'replace' or 'append', got {command!r}", True)
        if not isinstance(text, str):
            return ToolResult("Error: `text` must be a string", True)
        new = text if command == "replace" else (self.text.rstrip("\n") + "\n" + text if self.text.strip() else text)
        if len(new) > NOTES_MAX:
            return ToolResult(f"Error: the notes would be {len(new)} characters, over the limit of {NOTES_MAX}; "
                              "use 'replace' with a shorter summary", True)
        self.text = new
        return ToolResult(f"Notes saved ({len(new)} characters). They will be shown at the start of every experiment.")


def read_notes(folder: Path) -> str:
    try:
        return (Path(folder) / NOTES_RELPATH).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def write_notes(folder: Path, text: str) -> None:
    """Atomically: a crash mid-write leaves the old notes, never half of the new ones."""
    path = Path(folder) / NOTES_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"))
