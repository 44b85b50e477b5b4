"""The git layer and `ar init`'s library side, against real temporary repositories."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import git
import pytest

import autoresearch.backends as backends
from autoresearch.data.context import load_context, read_workspace_config
from autoresearch.errors import ArError
from autoresearch.workspace import init as config_mod  # where `ar init` reads the templates
from autoresearch.workspace.config import WorkspaceConfig, load_config, write_config
from autoresearch.workspace.init import init_workspace
from autoresearch.workspace.git import FALLBACK_EMAIL, Workspace, git_output, valid_branch_name


@pytest.fixture(autouse=True)
def templates(monkeypatch):
    """The backend helpers and training templates come from other modules; stand in
    for them only while they are not there yet."""
    if not hasattr(backends, "script_for_backend"):
        monkeypatch.setattr(
            backends, "script_for_backend", lambda b: "train_mlx.py" if b == "mlx" else "train.py", raising=False
        )
    real = config_mod.template_bytes

    def template_bytes(name: str) -> bytes:
        try:
            return real(name)
        except ArError:
            return b"print('training template')\n"

    monkeypatch.setattr(config_mod, "template_bytes", template_bytes)


def git_out(folder, *args) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


# -- Workspace ----------------------------------------------------------------------


def test_init_creates_a_repo_and_commits_only_the_given_paths(tmp_path):
    ws = Workspace.init(tmp_path / "new")
    assert (tmp_path / "new" / ".git").is_dir() and ws.head_commit() is None
    (ws.path / "a.txt").write_text("a")
    (ws.path / "b.txt").write_text("b")
    sha = ws.commit(["a.txt"], "add a")
    assert len(sha) == 7 and sha == git_out(ws.path, "rev-parse", "--short=7", "HEAD")
    assert git_out(ws.path, "ls-files") == "a.txt"
    assert ws.commit(["a.txt"], "nothing changed") is None
    assert ws.commit_subject() == "add a"


def test_dirty_means_tracked_changes_not_untracked_or_ignored_files(tmp_path):
    ws = Workspace.init(tmp_path)
    (tmp_path / ".gitignore").write_text("results.tsv\n")
    (tmp_path / "train.py").write_text("x = 1\n")
    ws.commit([".gitignore", "train.py"], "start")
    (tmp_path / "results.tsv").write_text("ignored")
    (tmp_path / "notes.txt").write_text("untracked")
    assert not ws.is_dirty()
    assert ws.is_dirty(untracked=True)  # notes.txt, but never the ignored results.tsv
    (tmp_path / "notes.txt").unlink()
    assert not ws.is_dirty(untracked=True)
    (tmp_path / "train.py").write_text("x = 2\n")
    assert ws.is_dirty() and ws.is_dirty(["train.py"]) and not ws.is_dirty([".gitignore"])


def test_branches_checkout_and_reset(tmp_path):
    ws = Workspace.init(tmp_path)
    (tmp_path / "f").write_text("1")
    first = ws.commit(["f"], "one")
    main = ws.branch
    ws.create_branch("autoresearch/x")
    assert ws.branch == "autoresearch/x" and ws.branch_exists("autoresearch/x") and ws.branch_exists(main)
    (tmp_path / "f").write_text("2")
    second = ws.commit(["f"], "two")
    assert ws.ancestry() == {first, second}
    ws.reset_hard(first)
    assert ws.head_commit() == first and (tmp_path / "f").read_text() == "1"
    with pytest.raises(ArError, match="already exists"):
        ws.create_branch("autoresearch/x")
    ws.checkout(main)
    assert ws.branch == main and not ws.branch_exists("autoresearch/y")


def test_branch_name_check_follows_git(tmp_path):
    assert valid_branch_name("autoresearch/mar5")
    for bad in ("autoresearch/a b", "autoresearch/x..y", "autoresearch/x~1", "autoresearch/x:", "-x", "autoresearch/@{-1}", ""):
        assert not valid_branch_name(bad), bad


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_git_commands_ignore_a_terminal_ctrl_c_but_stay_in_our_process_group(tmp_path):
    """Ctrl-C signals the whole foreground group: git must finish, not die mid-reset. Staying in
    `ar`'s process group is how containment tells `ar`'s git from a run's orphans."""
    ws = Workspace.init(tmp_path)
    # An alias runs in a shell whose parent ($PPID) is the git process itself.
    text = git_output(ws.repo, "-c", "alias.me=!cat /proc/$PPID/status /proc/$PPID/stat", "me")
    assert re.search(r"^Name:\s*git", text, re.M)
    blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", text, re.M).group(1), 16)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        assert blocked & (1 << (sig - 1)), f"{sig.name} is not blocked in git"
    assert int(text.rstrip().rsplit(")", 1)[1].split()[2]) == os.getpgrp()
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}  # ours is back


def test_open_refuses_a_folder_that_is_not_a_repo(tmp_path):
    with pytest.raises(ArError, match="not a git repository"):
        Workspace.open(tmp_path)


def test_commits_work_without_any_git_identity(tmp_path, monkeypatch):
    # A CI machine: no global or system config, no identity in the environment.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("EMAIL", "")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "ws"
    ws = Workspace.init(folder)
    (folder / "f").write_text("1")
    assert ws.commit(["f"], "first")
    assert git_out(folder, "log", "-1", "--format=%ae") == FALLBACK_EMAIL


def test_an_existing_identity_is_left_alone(tmp_path):
    repo = git.Repo.init(tmp_path)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Ada")
        cw.set_value("user", "email", "ada@example.com")
    ws = Workspace.init(tmp_path)
    (tmp_path / "f").write_text("1")
    ws.commit(["f"], "first")
    assert git_out(tmp_path, "log", "-1", "--format=%an <%ae>") == "Ada <ada@example.com>"


# -- config ---------------------------------------------------------------------------


def test_config_round_trips_and_is_readable_by_the_data_harness(tmp_path):
    cfg = WorkspaceConfig(
        tag='we"ird', backend="mps", profile="laptop", source="tinystories", budget=120.0, kill=900, editable="train.py"
    )
    write_config(tmp_path, cfg)
    assert load_config(tmp_path) == cfg
    raw = read_workspace_config(tmp_path)
    assert raw["budget"] == 120 and raw["profile"] == "laptop" and raw["source"] == "tinystories"
    ctx = load_context(tmp_path)
    assert ctx.profile.name == "laptop" and ctx.time_budget == 120


def test_odd_tags_and_paths_round_trip_and_unset_keys_are_not_written(tmp_path):
    cfg = WorkspaceConfig(tag="mär\"6'", backend="cpu", profile="tiny", source="local", budget=30.0,
                          source_path='C:\\data\\"shards"\tüñí 数据\n', warmup_allowance=2.5)
    text = write_config(tmp_path, cfg).read_text(encoding="utf-8")
    assert load_config(tmp_path) == cfg
    assert text.startswith("# autoresearch workspace settings")
    assert "budget = 30\n" in text and "warmup_allowance = 2.5\n" in text
    assert not any(k in text for k in ("editable", "metric", "startup_allowance"))  # unset or the backend's own


def test_a_broken_config_is_a_clear_error(tmp_path):
    (tmp_path / ".autoresearch").mkdir()
    config = tmp_path / ".autoresearch" / "config.toml"
    config.write_text('tag = "x"\nbackend = "tpu"\nprofile = "tiny"\nsource = "builtin"\nbudget = 5\n')
    with pytest.raises(ArError, match="unknown backend 'tpu'"):
        load_config(tmp_path)
    (tmp_path / ".autoresearch" / "config.toml").write_text('tag = "x"\n')
    with pytest.raises(ArError, match="lacks backend, profile, source, budget"):
        load_config(tmp_path)


# -- init_workspace -----------------------------------------------------------------------


def test_init_in_a_plain_folder_makes_a_complete_workspace(tmp_path):
    folder = tmp_path / "research"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    report = init_workspace(folder, "mar5", backend="cpu", budget=30, kill=200)
    assert report.created_repo and report.branch == "autoresearch/mar5"
    assert git_out(folder, "branch", "--show-current") == "autoresearch/mar5"
    tracked = set(git_out(folder, "ls-files").split())
    assert tracked == {".autoresearch/config.toml", ".gitignore", "program.md", "train.py", "train_mlx.py"}
    assert git_out(folder, "status", "--porcelain", "--untracked-files=no") == ""
    assert (folder / "results.tsv").read_text() == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    assert git_out(folder, "check-ignore", "results.tsv", ".autoresearch/runs/0001-abc.log").splitlines() == [
        "results.tsv",
        ".autoresearch/runs/0001-abc.log",
    ]
    cfg = load_config(folder)
    assert (cfg.tag, cfg.backend, cfg.profile, cfg.source, cfg.budget, cfg.kill, cfg.editable) == (
        "mar5", "cpu", "tiny", "builtin", 30, 200, "train.py",
    )
    program = (folder / "program.md").read_text()
    assert "`train.py`" in program and "`train_mlx.py`" in program and "{{" not in program and "NEVER STOP" in program
    assert "lowest val_bpb" in program and "Simplicity criterion" in program and "soft constraint" in program
    # One commit on the new branch, which is the repository's only branch.
    assert git_out(folder, "rev-list", "--count", "HEAD") == "1"
    assert git_out(folder, "branch", "--format=%(refname:short)") == "autoresearch/mar5"
    assert report.data_warning and "ar prepare --source builtin --profile tiny" in report.data_warning


def test_the_mlx_backend_gets_its_own_script(tmp_path):
    init_workspace(tmp_path, "m1", backend="mlx")
    cfg = load_config(tmp_path)
    assert cfg.editable == "train_mlx.py" and (tmp_path / "train_mlx.py").is_file()


def test_init_again_resumes_the_existing_tag(tmp_path):
    first = init_workspace(tmp_path, "mar5", backend="cpu")
    again = init_workspace(tmp_path, "mar5", backend="cpu")
    assert again.resumed and again.commit == first.commit and again.written == []
    (tmp_path / "train.py").write_text("edited but not committed\n")
    Workspace.open(tmp_path).checkout("HEAD~0")  # detached: a resume must check the branch out
    with pytest.raises(ArError, match="uncommitted changes"):
        init_workspace(tmp_path, "mar5", backend="cpu")


def test_init_refuses_a_dirty_tree(tmp_path):
    init_workspace(tmp_path, "mar5", backend="cpu")
    (tmp_path / "train.py").write_text("edited but not committed\n")
    with pytest.raises(ArError, match="uncommitted changes"):
        init_workspace(tmp_path, "mar6", backend="cpu")
    assert not Workspace.open(tmp_path).branch_exists("autoresearch/mar6")


@pytest.mark.parametrize("tag", ["bad tag", "a..b", "x~1", "", "trailing.lock", "x?", "a//b"])
def test_init_refuses_an_invalid_tag_before_touching_anything(tmp_path, tag):
    with pytest.raises(ArError, match="valid git branch name"):
        init_workspace(tmp_path, tag, backend="cpu")
    assert not (tmp_path / ".git").exists()


def test_a_second_tag_starts_from_the_current_script_and_keeps_it(tmp_path):
    init_workspace(tmp_path, "mar5", backend="cpu")
    ws = Workspace.open(tmp_path)
    (tmp_path / "train.py").write_text("improved = True\n")
    ws.commit(["train.py"], "an improvement")
    report = init_workspace(tmp_path, "mar6", backend="cpu", profile="laptop")
    assert report.kept == ["train.py", "train_mlx.py", "program.md"] and not report.created_repo
    assert (tmp_path / "train.py").read_text() == "improved = True\n"
    assert ws.branch == "autoresearch/mar6" and load_config(tmp_path).tag == "mar6"
    assert load_config(tmp_path).source == "tinystories"  # the laptop profile's source


def test_init_rejects_bad_settings(tmp_path):
    with pytest.raises(ArError, match="longer than the time budget"):
        init_workspace(tmp_path, "a", backend="cpu", budget=300, kill=100)
    with pytest.raises(ArError, match="unknown backend"):
        init_workspace(tmp_path, "a", backend="tpu")
    with pytest.raises(ArError, match="unknown profile"):
        init_workspace(tmp_path, "a", backend="cpu", profile="huge")


def test_a_refused_commit_is_a_clear_error_not_a_traceback(tmp_path):
    ws = Workspace.init(tmp_path)
    hook = tmp_path / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'lint failed: trailing whitespace' >&2\nexit 1\n")
    hook.chmod(0o755)
    (tmp_path / "f").write_text("1")
    with pytest.raises(ArError, match="git commit failed in .*lint failed: trailing whitespace"):
        ws.commit(["f"], "first")
    with pytest.raises(ArError, match="git reset failed"):
        ws.reset_hard("no-such-commit")
