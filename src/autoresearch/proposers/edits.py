"""The text editor tool, confined to the one editable file.

`EditSession` executes the commands of Anthropic's text editor tool (`view`,
`str_replace`, `insert`, `create`) against an in-memory copy of the editable file; both
LLM proposers route every tool call through it. Nothing touches the disk: the loop
commits `session.text` itself.

Paths: the model may name the file as `train.py`, `./train.py` or `/train.py` (models
often think of the workspace as the root). Every other path (another file, `..`, a
longer absolute path, `.git/...`, `results.tsv`, `program.md`) is refused with an error
naming the single path it may edit. Viewing `/` or `.` lists that one file.

Mistakes come back as `ToolResult(is_error=True)` with a message the model can act on
(for an `old_str` that is not found: the closest lines of the file), so it can fix the
call in its next turn; `errors` counts them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

COMMANDS = ("view", "str_replace", "insert", "create")
SNIPPET_CONTEXT = 4  # lines shown around an edit in the confirmation


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False


class EditSession:
    def __init__(self, editable_name: str, text: str):
        self.editable_name = editable_name
        self.original = text
        self.text = text
        self.edits = 0  # successful modifying commands
        self.errors = 0  # commands refused or failed

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def syntax_error(self) -> Optional[str]:
        """For a Python file: where the edited text fails to compile (so a typo costs a
        turn rather than a whole training run), else None."""
        if not self.editable_name.endswith(".py"):
            return None
        try:
            compile(self.text, self.editable_name, "exec")
        except SyntaxError as e:
            where = f"line {e.lineno}: " if e.lineno else ""
            return f"{self.editable_name} no longer compiles ({where}{e.msg})."
        except ValueError as e:  # e.g. a NUL byte
            return f"{self.editable_name} no longer compiles ({e})."
        return None

    # -- dispatch ---------------------------------------------------------------------

    def execute(self, args: Mapping[str, Any]) -> ToolResult:
        """Run one tool call (the tool's input as a dict); never raises for bad input."""
        if not isinstance(args, Mapping):
            return self._error("the tool input must be an object with a 'command' field.")
        command = args.get("command")
        path = args.get("path")
        if command not in COMMANDS:
            hint = " (undo_edit is not available: use str_replace to change the text back)" if command == "undo_edit" else ""
            return self._error(f"unknown command {command!r}{hint}; use one of: {', '.join(COMMANDS)}.")
        if command == "view" and _is_root(path):
            return ToolResult(f"The only file here is {self.editable_name}; view it with path {self.editable_name!r}.")
        refusal = self._check_path(path)
        if refusal:
            return self._error(refusal)
        return getattr(self, "_" + command)(args)

    def _check_path(self, path: Any) -> Optional[str]:
        name = self.editable_name
        if not isinstance(path, str) or not path.strip():
            return f"missing 'path'; the only file you may view or edit is {name!r}."
        p = path.strip()
        if p in (name, "./" + name, "/" + name):
            return None
        return f"{p!r} is not editable: the only file you may view or edit is {name!r} (use path {name!r})."

    def _error(self, message: str) -> ToolResult:
        self.errors += 1
        return ToolResult("Error: " + message, is_error=True)

    # -- commands ---------------------------------------------------------------------

    def _view(self, args: Mapping[str, Any]) -> ToolResult:
        lines = self.text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # a trailing newline is not a line of its own
        start, end = 1, len(lines)
        rng = args.get("view_range")
        if rng is not None:
            if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(_is_int(v) for v in rng)):
                return self._error("view_range must be two integers [start, end] (1-based; end -1 = to the end).")
            start, end = int(rng[0]), int(rng[1])
            if end == -1:
                end = len(lines)
            if not (1 <= start <= max(len(lines), 1)) or end < start or end > len(lines):
                return self._error(f"view_range {list(rng)} is outside the file, which has {len(lines)} lines.")
        return ToolResult(_numbered(lines[start - 1 : end], start))

    def _str_replace(self, args: Mapping[str, Any]) -> ToolResult:
        old = args.get("old_str")
        new = args.get("new_str", "")
        if not isinstance(old, str) or old == "":
            return self._error("str_replace needs a non-empty 'old_str' copied exactly from the file.")
        if new is None:
            new = ""
        if not isinstance(new, str):
            return self._error("'new_str' must be a string.")
        count = self.text.count(old)
        if count == 0:
            return self._error(self._not_found(old))
        if count > 1:
            lines = _match_lines(self.text, old)
            return self._error(
                f"old_str occurs {count} times in {self.editable_name} (starting at lines "
                f"{', '.join(map(str, lines))}); include more surrounding lines so it matches exactly once."
            )
        at = self.text.index(old)
        self.text = self.text[:at] + new + self.text[at + len(old) :]
        self.edits += 1
        first = self.text.count("\n", 0, at) + 1
        return ToolResult(self._edited(first, first + new.count("\n")))

    def _insert(self, args: Mapping[str, Any]) -> ToolResult:
        line = args.get("insert_line")
        new = args.get("new_str", args.get("insert_text"))
        if not isinstance(new, str):
            return self._error("insert needs 'new_str' (the text to insert) and 'insert_line'.")
        lines = self.text.splitlines(keepends=True)
        if not _is_int(line) or not 0 <= int(line) <= len(lines):
            return self._error(f"insert_line must be an integer from 0 (the top) to {len(lines)} (after the last line).")
        line = int(line)
        if lines and not lines[-1].endswith("\n") and line == len(lines):
            lines[-1] += "\n"
        if not new.endswith("\n"):
            new += "\n"
        self.text = "".join(lines[:line]) + new + "".join(lines[line:])
        self.edits += 1
        return ToolResult(self._edited(line + 1, line + new.count("\n")))

    def _create(self, args: Mapping[str, Any]) -> ToolResult:
        text = args.get("file_text")
        if not isinstance(text, str) or not text.strip():
            return self._error("create needs 'file_text', the whole new content of the file.")
        self.text = text
        self.edits += 1
        return ToolResult(f"{self.editable_name} has been rewritten ({len(text.splitlines())} lines).")

    # -- messages ---------------------------------------------------------------------

    def _edited(self, first: int, last: int) -> str:
        lines = self.text.split("\n")
        lo = max(1, first - SNIPPET_CONTEXT)
        hi = min(len(lines), last + SNIPPET_CONTEXT)
        return (
            f"{self.editable_name} has been edited. Lines {lo}-{hi} now read:\n"
            + _numbered(lines[lo - 1 : hi], lo)
        )

    def _not_found(self, old: str) -> str:
        msg = f"old_str was not found in {self.editable_name}; it must match the file exactly, whitespace included."
        if _squash(old) and _squash(old) in _squash(self.text):
            msg += " It does match when whitespace is ignored: check the indentation and line breaks."
        near = closest_lines(self.text, old)
        if near is not None:
            first, block = near
            msg += f" Did you mean these lines (from line {first})?\n{_numbered(block, first)}"
        return msg


def closest_lines(text: str, snippet: str) -> Optional[tuple[int, list[str]]]:
    """The run of lines of `text` most similar to `snippet` (as many lines as it has):
    (first line number, lines), or None when nothing is even vaguely similar."""
    lines = text.split("\n")
    want = snippet.strip("\n").split("\n")
    n = max(1, min(len(want), len(lines)))
    target = "\n".join(w.strip() for w in want)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    best, best_ratio = None, 0.0
    for i in range(0, len(lines) - n + 1):
        window = "\n".join(x.strip() for x in lines[i : i + n])
        matcher.set_seq1(window)
        # the quick bounds skip most windows before the quadratic ratio()
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue
        r = matcher.ratio()
        if r > best_ratio:
            best, best_ratio = i, r
    if best is None or best_ratio < 0.5:
        return None
    return best + 1, lines[best : best + n]


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{first + k}: {line}" for k, line in enumerate(lines))


def _match_lines(text: str, old: str) -> list[int]:
    out, start = [], 0
    while (at := text.find(old, start)) != -1:
        out.append(text.count("\n", 0, at) + 1)
        start = at + 1
    return out


def _squash(s: str) -> str:
    return "".join(s.split())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())


def _is_root(path: Any) -> bool:
    return isinstance(path, str) and path.strip() in ("/", ".", "./", "")
