"""Workspace settings (.autoresearch/config.toml) and `ar init`.

The config is committed with the workspace so every experiment of one research run is
judged with the same profile, data source and budget. It is flat, so it is written by
hand here and read with tomllib (`autoresearch.data.context.read_workspace_config`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from ..data.context import CONFIG_RELPATH, RunContext, read_workspace_config
from ..errors import ArError

BACKENDS = ("mlx", "mps", "cuda", "cpu")
DEFAULT_KILL = 600.0  # upstream: "If a run exceeds 10 minutes, kill it"
BRANCH_PREFIX = "autoresearch/"
RESULTS_NAME = "results.tsv"
RUNS_RELDIR = Path(".autoresearch") / "runs"
PROGRAM_NAME = "program.md"
GITIGNORE_LINES = ("results.tsv", "results-*.tsv", "progress.png", ".autoresearch/runs/")
SCRIPTS = ("train.py", "train_mlx.py")  # both are written; `--backend` picks the one that runs


@dataclass(frozen=True)
class WorkspaceConfig:
    tag: str
    backend: str
    profile: str
    source: str
    budget: float  # seconds of training the script is given
    kill: float = DEFAULT_KILL  # hard wall-clock limit of one run, start-up included
    editable: str = "train.py"  # the script of `backend`, the one file the agent may edit (for_backend)
    # Where val_bpb comes from: "harness" (the signed result of evaluate_bpb, checked; see
    # loop/trust.py) or "printed" (the summary line only, for scripts that do not use the
    # autoresearch harness: no causality, tamper or budget checks then).
    metric: str = "harness"
    warmup_allowance: Optional[float] = None  # training seconds beyond the budget (None: by backend)
    startup_allowance: Optional[float] = None  # seconds before the first training batch (None: 120)
    source_path: str = ""  # a local source's folder, so error messages print a command that works

    def to_toml(self) -> str:
        lines = ["# autoresearch workspace settings, written by `ar init`; every experiment uses them."]
        for key in ("tag", "backend", "profile", "source", "budget", "kill"):
            lines.append(f"{key} = {_toml_value(getattr(self, key))}")
        if self.editable != _script_for(self.backend):
            lines.append(f"editable = {_toml_value(self.editable)}")
        for key, default in (("metric", "harness"), ("warmup_allowance", None), ("startup_allowance", None), ("source_path", "")):
            if getattr(self, key) != default:  # optional keys: written only when set
                lines.append(f"{key} = {_toml_value(getattr(self, key))}")
        return "\n".join(lines) + "\n"

    def for_backend(self, requested: Optional[str] = None) -> "WorkspaceConfig":
        """These settings for one run's backend: `requested` (`--backend`, AUTORESEARCH_BACKEND)
        or the workspace's default, checked to be installed here (one line with the install
        command otherwise); `editable` becomes that backend's script."""
        import dataclasses

        from ..backends import choose_backend, detect_hardware

        name = (requested or "").strip().lower() or self.backend
        if name == "auto":
            name = self.backend
        if name not in BACKENDS:
            raise ArError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
        choose_backend(name, detect_hardware())  # raises with what to install
        editable = self.editable if name == self.backend else _script_for(name)
        return dataclasses.replace(self, backend=name, editable=editable)

    def run_context(self) -> RunContext:
        """The data context the training script will see (the config, not the shell env)."""
        from ..data.cache import cache_root
        from ..data.profiles import get_profile

        return RunContext(profile=get_profile(self.profile), source=self.source, time_budget=self.budget, cache=cache_root(),
                          source_path=self.source_path)


def _script_for(backend: str) -> str:
    from ..backends import script_for_backend

    return script_for_backend(backend) if backend in BACKENDS else "train.py"


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


def parse_seconds(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ArError(f"{name} must be a number of seconds, got {value!r}") from None
    if not out > 0 or out == float("inf"):
        raise ArError(f"{name} must be a positive number of seconds, got {value!r}")
    return out


def check_limits(budget: float, kill: float) -> None:
    if kill <= budget:
        raise ArError(
            f"the hard kill ({kill:g} s) must be longer than the time budget ({budget:g} s), "
            "which excludes start-up and evaluation; raise --kill or lower --budget"
        )


METRICS = ("harness", "printed")


def _optional_seconds(raw: dict, key: str) -> Optional[float]:
    if key not in raw:
        return None
    try:
        value = float(raw[key])
    except (TypeError, ValueError):
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ArError(f"{CONFIG_RELPATH}: {key} must be a number of seconds >= 0, got {raw[key]!r}")
    return value


def config_path(folder: Path) -> Path:
    return folder / CONFIG_RELPATH


def load_config(folder: Path) -> WorkspaceConfig:
    """The settings of the workspace at `folder`, or a clear error if it is not one."""
    raw = read_workspace_config(folder)
    if not raw:
        raise ArError(f"{folder} is not an autoresearch workspace (no {CONFIG_RELPATH}); run `ar init <tag>` there first")
    missing = [k for k in ("tag", "backend", "profile", "source", "budget") if k not in raw]
    if missing:
        raise ArError(f"{config_path(folder)} lacks {', '.join(missing)}; run `ar init <tag>` again or add them")
    cfg = WorkspaceConfig(
        tag=str(raw["tag"]),
        backend=str(raw["backend"]),
        profile=str(raw["profile"]),
        source=str(raw["source"]),
        budget=parse_seconds(raw["budget"], "budget"),
        kill=parse_seconds(raw.get("kill", DEFAULT_KILL), "kill"),
        editable=str(raw.get("editable") or _script_for(str(raw["backend"]))),
        metric=str(raw.get("metric", "harness")),
        warmup_allowance=_optional_seconds(raw, "warmup_allowance"),
        startup_allowance=_optional_seconds(raw, "startup_allowance"),
        source_path=str(raw.get("source_path", "")),
    )
    if cfg.metric not in METRICS:
        raise ArError(f"{config_path(folder)}: metric must be one of {', '.join(METRICS)}, got {cfg.metric!r}")
    if cfg.backend not in BACKENDS:
        raise ArError(f"{config_path(folder)}: unknown backend {cfg.backend!r}; use one of {', '.join(BACKENDS)}")
    if Path(cfg.editable).name != cfg.editable:
        raise ArError(f"{config_path(folder)}: editable must be a file name in the workspace, got {cfg.editable!r}")
    return cfg


def write_config(folder: Path, cfg: WorkspaceConfig) -> Path:
    path = config_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def template_bytes(name: str) -> bytes:
    """A file shipped in autoresearch/templates/."""
    ref = resources.files("autoresearch") / "templates" / name
    try:
        return ref.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ArError(f"the template {name} is missing from the installed autoresearch; reinstall it") from None


@dataclass
class InitReport:
    path: Path
    branch: str
    commit: str
    config: WorkspaceConfig
    created_repo: bool
    written: list[str] = field(default_factory=list)  # files put there by this init
    kept: list[str] = field(default_factory=list)  # files that already existed and were left alone
    data_warning: Optional[str] = None  # the `ar prepare` hint when data is missing
    resumed: bool = False  # the branch existed: `ar init` run again, nothing changed
    archived: list[str] = field(default_factory=list)  # the previous tag's results, moved aside
    dials: dict = field(default_factory=dict)  # script -> the size line written into it


def _resolve_backend(backend: Optional[str], hw) -> str:
    if backend in BACKENDS:
        return backend
    if backend not in (None, "auto"):
        raise ArError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} or auto")
    from ..backends import choose_backend

    return choose_backend(None, hw)


def _ensure_gitignore(folder: Path) -> bool:
    """Add our ignore lines to .gitignore; True if it changed."""
    path = folder / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present and "/" + line not in present]
    if not missing:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "# autoresearch: per-machine results, chart and run logs\n" + "\n".join(missing) + "\n", encoding="utf-8")
    return True


_DIAL = re.compile(r"^(DEPTH|DEVICE_BATCH_SIZE|TOTAL_BATCH_SIZE) = [^#\n]*?(\s*#.*)?$", re.M)
_SIZE_NOTE = re.compile(r"^# Size: .*$", re.M)


def _literal(n: int) -> str:
    """2**12 for a power of two from 1024 up (as upstream writes batch sizes), else the number."""
    return f"2**{n.bit_length() - 1}" if n >= 1024 and n & (n - 1) == 0 else str(n)


def write_dials(text: str, suggestion, note: str) -> str:
    """The template with the suggested DEPTH / DEVICE_BATCH_SIZE / TOTAL_BATCH_SIZE as plain
    numbers and a comment naming the machine and profile they suit."""
    values = {"DEPTH": suggestion.depth, "DEVICE_BATCH_SIZE": suggestion.device_batch_size,
              "TOTAL_BATCH_SIZE": suggestion.total_batch_size}
    text = _DIAL.sub(lambda m: f"{m.group(1)} = {_literal(values[m.group(1)])}{m.group(2) or ''}", text)
    return _SIZE_NOTE.sub(f"# Size: {note}".replace("\\", "\\\\"), text, count=1)


def _template_text(name: str, backend: str, hw, prof) -> tuple[str, str]:
    """A training template with the dials for `backend` on this machine; (text, size line)."""
    from ..backends import suggest_config

    sugg = suggest_config(hw, backend, prof)
    note = f"suggested by `ar init` for {hw.chip or hw.kind} ({backend}), profile {prof.name}"
    text = write_dials(template_bytes(name).decode("utf-8"), sugg, note)
    return text, f"DEPTH = {sugg.depth}, DEVICE_BATCH_SIZE = {sugg.device_batch_size}, TOTAL_BATCH_SIZE = {_literal(sugg.total_batch_size)}"


def _archive(folder: Path, tag: str) -> list[str]:
    """Move the previous tag's results.tsv and runs.jsonl aside (never deleted)."""
    from .results import read_results

    moved = []
    results = folder / RESULTS_NAME
    try:
        has_rows = bool(read_results(results))
    except ArError:
        has_rows = results.exists()
    if not has_rows:
        return moved
    for path, stem, ext in ((results, "results", ".tsv"), (folder / RUNS_RELDIR / "runs.jsonl", "runs", ".jsonl")):
        if not path.exists():
            continue
        target = path.with_name(f"{stem}-{tag}{ext}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{stem}-{tag}.{n}{ext}")
        os.replace(path, target)
        moved.append(str(target.relative_to(folder)))
    return moved


def init_workspace(
    folder: Path,
    tag: str,
    *,
    backend: Optional[str] = None,
    profile: str = "tiny",
    source: Optional[str] = None,
    source_path: Optional[Path] = None,
    budget: Optional[float] = None,
    kill: float = DEFAULT_KILL,
    hardware=None,
) -> InitReport:
    """Set up `folder` as a research workspace on a fresh branch autoresearch/<tag>.

    The branch is made from the current commit (or is the first branch of a new
    repository), and the templates, .gitignore and config are committed on it only: the
    branch you were on is left as it was. Existing files are never overwritten. The
    previous tag's results.tsv and runs.jsonl are archived as results-<tag>.tsv and
    runs-<tag>.jsonl. If the branch exists already (the quick start run again), it is
    checked out and nothing else changes.
    """
    from ..backends import detect_hardware
    from ..data.profiles import get_profile
    from ..data.sources import local_cache_name
    from .results import create_results
    from .workspace import Workspace, valid_branch_name

    folder = Path(folder).resolve()
    branch = BRANCH_PREFIX + tag
    if not tag or not valid_branch_name(branch):
        raise ArError(f"tag {tag!r} does not make a valid git branch name ({branch}); use letters, digits, - or _, e.g. mar5")
    created_repo = not (folder / ".git").exists()
    if not created_repo:
        ws = Workspace.open(folder)
        if ws.branch_exists(branch):
            return _resume(ws, folder, branch, tag)
    prof = get_profile(profile)
    budget = parse_seconds(prof.time_budget if budget is None else budget, "budget")
    kill = parse_seconds(kill, "kill")
    check_limits(budget, kill)
    source = source or prof.source
    if source == "local" or source_path is not None:
        if source_path is None:
            raise ArError("--source local needs --path FOLDER: the folder of .parquet, .jsonl or .txt files to train on")
        if source not in ("local", local_cache_name(source_path)):
            raise ArError(f"--path is only for --source local, not for {source}")
        source_path = Path(source_path).expanduser().resolve()
        source = local_cache_name(source_path)
    hw = hardware or detect_hardware()
    chosen = _resolve_backend(backend, hw)

    ws = Workspace.init(folder)
    if ws.is_dirty():
        raise ArError(f"{folder} has uncommitted changes; commit or stash them before `ar init`")
    if ws.head_commit() is not None and ws.branch is None:
        raise ArError(f"{folder} is on a detached HEAD; check out a branch before `ar init`")
    previous = read_workspace_config(folder).get("tag")
    archived = _archive(folder, str(previous or "previous"))
    ws.create_branch(branch, checkout=True)  # on a new repository: the first branch, no commit yet

    written, kept, dials = [], [], {}
    torch_backend = chosen if chosen != "mlx" else ("mps" if hw.kind == "apple" else "cpu")
    for name in SCRIPTS + (PROGRAM_NAME,):
        target = folder / name
        if target.exists():  # never overwrite work: a later tag starts from the current scripts
            kept.append(name)
            continue
        if name == PROGRAM_NAME:
            target.write_bytes(template_bytes(name))
        else:
            text, dials[name] = _template_text(name, "mlx" if name == "train_mlx.py" else torch_backend, hw, prof)
            target.write_text(text, encoding="utf-8")
        written.append(name)
    if _ensure_gitignore(folder):
        written.append(".gitignore")
    cfg = WorkspaceConfig(tag=tag, backend=chosen, profile=prof.name, source=source, budget=budget, kill=kill,
                          editable=_script_for(chosen), source_path=str(source_path or ""))
    write_config(folder, cfg)
    written.append(str(CONFIG_RELPATH))
    commit = ws.commit([*SCRIPTS, PROGRAM_NAME, ".gitignore", str(CONFIG_RELPATH)], f"autoresearch: start run {tag}")
    (folder / RUNS_RELDIR).mkdir(parents=True, exist_ok=True)
    if create_results(folder / RESULTS_NAME):
        written.append(RESULTS_NAME)
    return InitReport(
        path=folder, branch=branch, commit=commit or ws.head_commit() or "", config=cfg, created_repo=created_repo,
        written=written, kept=kept, data_warning=_data_warning(cfg), archived=archived, dials=dials,
    )


def _data_warning(cfg: WorkspaceConfig) -> Optional[str]:
    try:
        cfg.run_context().check_prepared()
    except ArError as e:
        return str(e)
    return None


def _resume(ws, folder: Path, branch: str, tag: str) -> InitReport:
    """`ar init <tag>` again: check the branch out (when the tree allows) and go on."""
    if ws.branch != branch:
        if ws.is_dirty():
            raise ArError(f"branch {branch} already exists and {folder} has uncommitted changes; "
                          f"commit or stash them, then `git checkout {branch}` (or pick a new tag)")
        ws.checkout(branch)
    cfg = load_config(folder)
    if cfg.tag != tag:
        raise ArError(f"branch {branch} exists but its config names tag {cfg.tag!r}; pick a new tag")
    from .results import create_results

    created = create_results(folder / RESULTS_NAME)
    return InitReport(path=folder, branch=branch, commit=ws.head_commit() or "", config=cfg, created_repo=False,
                      written=[RESULTS_NAME] if created else [], data_warning=_data_warning(cfg), resumed=True)
