"""Where prepared data and tokenizers live.

Layout under the cache root (AUTORESEARCH_CACHE, default ~/.cache/autoresearch):

    data/<source>/shard_00000.parquet ...   text shards (column "text"); the
                                            last shard of a source is validation
    data/<source>/.complete                 written last: the source is ready
    tokenizers/<source>-v<vocab>/tokenizer.pkl, token_bytes.npy
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import integrity

CACHE_ENV = "AUTORESEARCH_CACHE"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "autoresearch"


def data_dir(source: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "data" / source


def tokenizer_dir(source: str, vocab_size: int, root: Path | None = None) -> Path:
    return (root or cache_root()) / "tokenizers" / f"{source}-v{vocab_size}"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def list_shards(source: str, root: Path | None = None) -> list[Path]:
    """Ready shards of a source, in order; the last one is the validation shard."""
    d = data_dir(source, root)
    return sorted(d.glob("shard_*.parquet")) if d.is_dir() else []


integrity.protect_module(sys.modules[__name__])
