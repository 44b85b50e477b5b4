"""Workspace settings (.autoresearch/config.toml) and `ar init`.

The config is committed with the workspace so every experiment of one research run is
judged with the same profile, data source and budget. It is flat; it is written with
tomli_w here and read with tomllib (`autoresearch.data.context.read_workspace_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import tomli_w

from autoresearch.data.context import CONFIG_RELPATH, RunContext, read_workspace_config
from autoresearch.errors import ArError

BACKENDS = ("mlx", "mps", "cuda", "cpu")
DEFAULT_KILL = 600.0  # upstream: "If a run exceeds 10 minutes, kill it"
BRANCH_PREFIX = "autoresearch/"
RESULTS_NAME = "results.tsv"
RUNS_RELDIR = Path(".autoresearch") / "runs"
PROGRAM_NAME = "program.md"
GITIGNORE_LINES = ("results.tsv", "results-*.tsv", "progress.png", "report.html", ".autoresearch/runs/",
                   ".autoresearch/notes.md")  # the agent's research notes (proposers/notes.py)
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
    # Where val_bpb comes from: "harness" (ar's judge evaluates the model, checked; see
    # integrity/trust.py) or "printed" (the summary line only, for scripts that do not use the
    # autoresearch harness: no causality, tamper or budget checks then).
    metric: str = "harness"
    warmup_allowance: Optional[float] = None  # training seconds beyond the budget (None: by backend)
    startup_allowance: Optional[float] = None  # seconds before the first training batch (None: 120)
    source_path: str = ""  # a local source's folder, so error messages print a command that works
    network: bool = False  # a sandboxed run may reach the network (it cannot by default)

    def to_toml(self) -> str:
        values = {key: getattr(self, key) for key in ("tag", "backend", "profile", "source", "budget", "kill")}
        if self.editable != _script_for(self.backend):
            values["editable"] = self.editable
        for key, default in (("metric", "harness"), ("warmup_allowance", None), ("startup_allowance", None), ("source_path", ""),
                             ("network", False)):
            if getattr(self, key) != default:  # optional keys: written only when set
                values[key] = getattr(self, key)
        header = "# autoresearch workspace settings, written by `ar init`; every experiment uses them.\n"
        return header + tomli_w.dumps({key: _toml_value(v) for key, v in values.items()})

    def for_backend(self, requested: Optional[str] = None) -> "WorkspaceConfig":
        """These settings for one run's backend: `requested` (`--backend`, AUTORESEARCH_BACKEND)
        or the workspace's default, checked to be installed here (one line with the install
        command otherwise); `editable` becomes that backend's script."""
        import dataclasses

        from autoresearch.backends import choose_backend, detect_hardware

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
        from autoresearch.data.cache import cache_root
        from autoresearch.data.profiles import get_profile

        return RunContext(profile=get_profile(self.profile), source=self.source, time_budget=self.budget, cache=cache_root(),
                          source_path=self.source_path)


def _script_for(backend: str) -> str:
    from autoresearch.backends import script_for_backend

    return script_for_backend(backend) if backend in BACKENDS else "train.py"


def _toml_value(v):
    """Whole seconds as integers (`budget = 300`, as users write it), the rest as it is."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


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
        network=raw.get("network", False),
    )
    if not isinstance(cfg.network, bool):
        raise ArError(f"{config_path(folder)}: network must be true or false, got {cfg.network!r}")
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


def run_settings(cfg: WorkspaceConfig, *, budget=None, kill=None, backend: Optional[str] = None
                 ) -> tuple[WorkspaceConfig, float, float]:
    """One run's settings from `ar run`'s and `ar loop`'s flags: the config for the run's
    backend (its `budget` stays the workspace's), the run's budget and hard kill, checked."""
    run_budget = cfg.budget if budget is None else parse_seconds(budget, "budget")
    run_kill = cfg.kill if kill is None else parse_seconds(kill, "kill")
    check_limits(run_budget, run_kill)
    return cfg.for_backend(backend), run_budget, run_kill
