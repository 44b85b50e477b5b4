"""Workspace settings (.autoresearch/config.toml) and `ar init`.

The config is committed with the workspace so every experiment of one research run is
judged with the same profile, data source and budget. It is flat, so it is written by
hand here and read with tomllib (`autoresearch.data.context.read_workspace_config`).
"""

from __future__ import annotations

import json
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
GITIGNORE_LINES = ("results.tsv", "progress.png", ".autoresearch/runs/")


@dataclass(frozen=True)
class WorkspaceConfig:
    tag: str
    backend: str
    profile: str
    source: str
    budget: float  # seconds of training the script is given
    kill: float = DEFAULT_KILL  # hard wall-clock limit of one run, start-up included
    editable: str = "train.py"  # the one file the agent may edit
    # Where val_bpb comes from: "harness" (the signed result of evaluate_bpb, checked; see
    # loop/trust.py) or "printed" (the summary line only, for scripts that do not use the
    # autoresearch harness: no causality, tamper or budget checks then).
    metric: str = "harness"
    warmup_allowance: Optional[float] = None  # training seconds beyond the budget (None: by backend)
    startup_allowance: Optional[float] = None  # seconds before the first training batch (None: 120)

    def to_toml(self) -> str:
        lines = ["# autoresearch workspace settings, written by `ar init`; every experiment uses them."]
        for key in ("tag", "backend", "profile", "source", "budget", "kill", "editable"):
            lines.append(f"{key} = {_toml_value(getattr(self, key))}")
        for key, default in (("metric", "harness"), ("warmup_allowance", None), ("startup_allowance", None)):
            if getattr(self, key) != default:  # optional keys: written only when set
                lines.append(f"{key} = {_toml_value(getattr(self, key))}")
        return "\n".join(lines) + "\n"

    def run_context(self) -> RunContext:
        """The data context the training script will see (the config, not the shell env)."""
        from ..data.cache import cache_root
        from ..data.profiles import get_profile

        return RunContext(profile=get_profile(self.profile), source=self.source, time_budget=self.budget, cache=cache_root())


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
        editable=str(raw.get("editable", "train.py")),
        metric=str(raw.get("metric", "harness")),
        warmup_allowance=_optional_seconds(raw, "warmup_allowance"),
        startup_allowance=_optional_seconds(raw, "startup_allowance"),
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


def _resolve_backend(backend: Optional[str]) -> str:
    if backend in BACKENDS:
        return backend
    if backend not in (None, "auto"):
        raise ArError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} or auto")
    from ..backends import choose_backend, detect_hardware

    return choose_backend(None, detect_hardware())


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


def init_workspace(
    folder: Path,
    tag: str,
    *,
    backend: Optional[str] = None,
    profile: str = "tiny",
    source: Optional[str] = None,
    budget: Optional[float] = None,
    kill: float = DEFAULT_KILL,
) -> InitReport:
    """Set up `folder` as a research workspace on a fresh branch autoresearch/<tag>.

    Template files are committed on the current branch (existing files are never
    overwritten), then the branch is created and checked out and the config (which
    records the tag) is committed on it.
    """
    from ..backends import script_for_backend
    from ..data.profiles import get_profile
    from .results import create_results
    from .workspace import Workspace, valid_branch_name

    folder = Path(folder).resolve()
    branch = BRANCH_PREFIX + tag
    if not tag or not valid_branch_name(branch):
        raise ArError(f"tag {tag!r} does not make a valid git branch name ({branch}); use letters, digits, - or _, e.g. mar5")
    prof = get_profile(profile)
    budget = parse_seconds(prof.time_budget if budget is None else budget, "budget")
    kill = parse_seconds(kill, "kill")
    check_limits(budget, kill)
    chosen = _resolve_backend(backend)
    editable = script_for_backend(chosen)

    created_repo = not (folder / ".git").exists()
    ws = Workspace.init(folder)
    if ws.branch_exists(branch):
        raise ArError(f"branch {branch} already exists; pick a new tag (a fresh run gets a fresh branch)")
    if ws.is_dirty():
        raise ArError(f"{folder} has uncommitted changes; commit or stash them before `ar init`")
    if ws.head_commit() is not None and ws.branch is None:
        raise ArError(f"{folder} is on a detached HEAD; check out a branch before `ar init`")

    written, kept = [], []
    for name in (editable, PROGRAM_NAME):
        target = folder / name
        if target.exists():  # never overwrite work: a later tag starts from the current script
            kept.append(name)
            continue
        data = template_bytes(name)
        if name == PROGRAM_NAME:
            data = data.decode("utf-8").replace("{{editable}}", editable).encode("utf-8")
        target.write_bytes(data)
        written.append(name)
    if _ensure_gitignore(folder):
        written.append(".gitignore")
    ws.commit([editable, PROGRAM_NAME, ".gitignore"], "autoresearch: training template and program.md")

    ws.create_branch(branch, checkout=True)
    cfg = WorkspaceConfig(
        tag=tag, backend=chosen, profile=prof.name, source=source or prof.source, budget=budget, kill=kill, editable=editable
    )
    write_config(folder, cfg)
    written.append(str(CONFIG_RELPATH))
    commit = ws.commit([str(CONFIG_RELPATH)], f"autoresearch: start run {tag}")
    (folder / RUNS_RELDIR).mkdir(parents=True, exist_ok=True)
    if create_results(folder / RESULTS_NAME):
        written.append(RESULTS_NAME)

    warning = None
    try:
        cfg.run_context().check_prepared()
    except ArError as e:
        warning = str(e)
    return InitReport(
        path=folder,
        branch=branch,
        commit=commit or ws.head_commit() or "",
        config=cfg,
        created_repo=created_repo,
        written=written,
        kept=kept,
        data_warning=warning,
    )
