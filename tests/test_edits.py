"""The edit tool: Anthropic's text editor commands, confined to the one editable file."""

from __future__ import annotations

import pytest

from autoresearch.proposers.edits import EditSession, closest_lines

TRAIN = (
    "import math\n"
    "\n"
    "LR = 0.02\n"
    "DEPTH = 8\n"
    "\n"
    "def main():\n"
    "    x = LR * DEPTH\n"
    "    print(x)\n"
    "    print(x)\n"
)


def session() -> EditSession:
    return EditSession("train.py", TRAIN)


def test_view_numbers_lines_and_honours_range():
    s = session()
    out = s.execute({"command": "view", "path": "train.py"})
    assert not out.is_error
    assert out.content.splitlines()[2] == "3: LR = 0.02"
    assert len(out.content.splitlines()) == 9  # the trailing newline is not a tenth line
    part = s.execute({"command": "view", "path": "train.py", "view_range": [6, -1]})
    assert part.content.splitlines() == ["6: def main():", "7:     x = LR * DEPTH", "8:     print(x)", "9:     print(x)"]
    bad = s.execute({"command": "view", "path": "train.py", "view_range": [5, 50]})
    assert bad.is_error and "9 lines" in bad.content
    assert s.errors == 1 and not s.changed


def test_view_of_the_root_lists_only_the_editable_file():
    out = session().execute({"command": "view", "path": "/"})
    assert not out.is_error and "train.py" in out.content


def test_str_replace_edits_once_and_shows_the_result():
    s = session()
    out = s.execute({"command": "str_replace", "path": "train.py", "old_str": "LR = 0.02", "new_str": "LR = 0.04"})
    assert not out.is_error
    assert s.text == TRAIN.replace("LR = 0.02", "LR = 0.04")
    assert s.changed and s.edits == 1
    assert "3: LR = 0.04" in out.content


def test_str_replace_without_new_str_deletes():
    s = session()
    s.execute({"command": "str_replace", "path": "train.py", "old_str": "DEPTH = 8\n"})
    assert "DEPTH = 8" not in s.text and s.text.count("\n") == TRAIN.count("\n") - 1


def test_str_replace_not_found_hints_at_the_closest_lines():
    s = session()
    out = s.execute({"command": "str_replace", "path": "train.py", "old_str": "LR = 0.2\nDEPTH = 8", "new_str": "LR = 1"})
    assert out.is_error
    assert "not found" in out.content
    assert "Did you mean" in out.content and "3: LR = 0.02" in out.content and "4: DEPTH = 8" in out.content
    assert s.text == TRAIN and s.errors == 1


def test_str_replace_whitespace_mismatch_is_named():
    out = session().execute({"command": "str_replace", "path": "train.py", "old_str": "x = LR * DEPTH\n  print(x)", "new_str": ""})
    assert out.is_error and "whitespace is ignored" in out.content


def test_str_replace_ambiguous_asks_for_more_context():
    s = session()
    out = s.execute({"command": "str_replace", "path": "train.py", "old_str": "    print(x)\n", "new_str": ""})
    assert out.is_error
    assert "2 times" in out.content and "8, 9" in out.content and "more surrounding lines" in out.content
    assert s.text == TRAIN


def test_insert_at_top_and_after_last_line():
    s = session()
    s.execute({"command": "insert", "path": "train.py", "insert_line": 0, "new_str": "# top"})
    assert s.text.startswith("# top\nimport math\n")
    s.execute({"command": "insert", "path": "train.py", "insert_line": 10, "new_str": "main()\n"})
    assert s.text.endswith("    print(x)\nmain()\n")
    bad = s.execute({"command": "insert", "path": "train.py", "insert_line": 99, "new_str": "x"})
    assert bad.is_error and "0 (the top) to 11" in bad.content


def test_insert_accepts_the_older_insert_text_field():
    s = session()
    s.execute({"command": "insert", "path": "train.py", "insert_line": 1, "insert_text": "import os\n"})
    assert s.text.startswith("import math\nimport os\n")


def test_create_replaces_the_whole_file():
    s = session()
    out = s.execute({"command": "create", "path": "/train.py", "file_text": "print('hi')\n"})
    assert not out.is_error and s.text == "print('hi')\n"


@pytest.mark.parametrize("path", ["train.py", "./train.py", "/train.py", " train.py "])
def test_the_editable_file_may_be_named_in_these_forms(path):
    s = session()
    out = s.execute({"command": "str_replace", "path": path, "old_str": "DEPTH = 8", "new_str": "DEPTH = 12"})
    assert not out.is_error and "DEPTH = 12" in s.text


@pytest.mark.parametrize(
    "path",
    ["prepare.py", "../train.py", "/repo/train.py", "sub/train.py", ".git/config", "results.tsv", "program.md", "/etc/passwd", ""],
)
def test_every_other_path_is_refused_and_names_the_editable_one(path):
    s = session()
    for args in (
        {"command": "create", "path": path, "file_text": "x = 1\n"},
        {"command": "str_replace", "path": path, "old_str": "LR = 0.02", "new_str": "LR = 1"},
        {"command": "view", "path": path} if path else {"command": "view"},
    ):
        out = s.execute(args)
        assert out.is_error, args
        assert "'train.py'" in out.content
    assert s.text == TRAIN and not s.changed and s.errors == 3


def test_unknown_commands_and_bad_input_are_errors_the_model_can_read():
    s = session()
    assert "undo_edit is not available" in s.execute({"command": "undo_edit", "path": "train.py"}).content
    assert "unknown command" in s.execute({"command": "delete", "path": "train.py"}).content
    assert s.execute(["not", "a", "dict"]).is_error
    assert "non-empty 'old_str'" in s.execute({"command": "str_replace", "path": "train.py", "old_str": ""}).content
    assert "file_text" in s.execute({"command": "create", "path": "train.py"}).content
    assert s.errors == 5 and s.text == TRAIN


def test_syntax_error_is_reported_for_python_files_only():
    s = session()
    assert s.syntax_error() is None
    s.execute({"command": "str_replace", "path": "train.py", "old_str": "def main():", "new_str": "def main(:"})
    assert "line 6" in s.syntax_error()
    assert EditSession("notes.txt", "def (:").syntax_error() is None


def test_closest_lines_finds_nothing_for_unrelated_text():
    assert closest_lines(TRAIN, "completely different words here") is None
    assert closest_lines(TRAIN, "DEPTH = 9") == (4, ["DEPTH = 8"])
