"""The constants one experiment is judged by, resolved once per process.

Resolution order (first wins), so `python train.py` in a workspace and `ar run`
agree:
  1. environment: AUTORESEARCH_PROFILE, AUTORESEARCH_SOURCE,
     AUTORESEARCH_TIME_BUDGET (seconds; the smoke-test override)
  2. the workspace config .autoresearch/config.toml in the current folder
     (keys: profile, source, budget)
  3. the default profile ("tiny") and its source
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArError
from .cache import COMPLETE_NAME, LEGACY_PICKLE_NAME, TOKENIZER_META_NAME, cache_root, data_dir, list_shards, tokenizer_dir
from .profiles import DEFAULT_PROFILE, Profile, get_profile

CONFIG_RELPATH = Path(".autoresearch") / "config.toml"


def read_workspace_config(folder: Path | None = None) -> dict:
    path = (folder or Path.cwd()) / CONFIG_RELPATH
    if not path.is_file():
        return {}
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArError(f"cannot read {path}: {e}") from None


@dataclass(frozen=True)
class RunContext:
    profile: Profile
    source: str
    time_budget: float
    cache: Path
    source_path: str = ""  # a local source's folder (`ar init --source local --path`), for the prepare command

    # The upstream names, for training scripts.
    @property
    def MAX_SEQ_LEN(self) -> int:
        return self.profile.max_seq_len

    @property
    def TIME_BUDGET(self) -> float:
        return self.time_budget

    @property
    def EVAL_TOKENS(self) -> int:
        return self.profile.eval_tokens

    @property
    def VOCAB_SIZE(self) -> int:
        return self.profile.vocab_size

    @property
    def data_dir(self) -> Path:
        return data_dir(self.source, self.cache)

    @property
    def tokenizer_dir(self) -> Path:
        return tokenizer_dir(self.source, self.profile.vocab_size, self.cache)

    def prepare_command(self) -> str:
        """The command that prepares this data, ready to paste."""
        if self.source.startswith("local"):
            import shlex

            folder = shlex.quote(self.source_path) if self.source_path else "FOLDER"
            return f"ar prepare --source local --path {folder} --profile {self.profile.name}"
        return f"ar prepare --source {self.source} --profile {self.profile.name}"

    def shards(self) -> list[Path]:
        """The prepared shards in order, the last one the validation shard: those `ar prepare`
        recorded (a sandboxed run has the validation shard hidden but still in this list),
        else those on disk."""
        from .digests import prepared_shards

        return prepared_shards(self.data_dir) or list_shards(self.source, self.cache)

    def check_prepared(self) -> None:
        """Raise a clear error naming the `ar prepare` command if data is missing."""
        shards = self.shards()
        if len(shards) < 2 or not (self.data_dir / COMPLETE_NAME).exists():
            raise ArError(f"no prepared data for source {self.source!r} in {self.data_dir}; run: {self.prepare_command()}")
        if not (self.tokenizer_dir / TOKENIZER_META_NAME).is_file():
            if (self.tokenizer_dir / LEGACY_PICKLE_NAME).exists():
                # Written by an older version: a pickle can run code, so it is rebuilt as data, never loaded.
                raise ArError(f"the tokenizer in {self.tokenizer_dir} is a pickle from an older ar; run: {self.prepare_command()}")
            raise ArError(f"no tokenizer in {self.tokenizer_dir}; run: {self.prepare_command()}")


def load_context(folder: Path | None = None) -> RunContext:
    cfg = read_workspace_config(folder)
    profile = get_profile(os.environ.get("AUTORESEARCH_PROFILE") or cfg.get("profile") or DEFAULT_PROFILE)
    source = os.environ.get("AUTORESEARCH_SOURCE") or cfg.get("source") or profile.source
    budget_raw = os.environ.get("AUTORESEARCH_TIME_BUDGET") or cfg.get("budget") or profile.time_budget
    try:
        budget = float(budget_raw)
    except (TypeError, ValueError):
        raise ArError(f"time budget must be a number of seconds, got {budget_raw!r}") from None
    if budget <= 0:
        raise ArError(f"time budget must be positive, got {budget}")
    path = str(cfg.get("source_path") or "") if source == cfg.get("source") else ""
    return RunContext(profile=profile, source=source, time_budget=budget, cache=cache_root(), source_path=path)
