"""Where prepared data and tokenizers live.

Layout under the cache root (AUTORESEARCH_CACHE, default ~/.cache/autoresearch):

    data/<source>/shard_00000.parquet ...   text shards (column "text"); the
                                            last shard of a source is validation
    data/<source>/.complete                 the source's build record (JSON)
    data/<source>/digests.json              sha256 of every other file, written last
    tokenizers/<source>-v<vocab>/
        tokenizer.tiktoken                  BPE ranks, tiktoken's "base64(token) rank" lines
        token_bytes.npy                     int32 byte length per token id (no pickle)
        tokenizer.json                      pattern, special tokens, vocab size: marks it ready
        digests.json                        sha256 of the three files above, written last
    results/<workspace key>.json            `ar results`' cache of a joined journal
                                            (journal/cache.py; never trusted when stale)

Every file here is data: nothing in the cache is ever unpickled or executed (a training
script could have rewritten it). Only `ar prepare` writes data/ and tokenizers/, and
digests.py checks them; runs see neither results/ nor anything outside data/ and tokenizers/.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


CACHE_ENV = "AUTORESEARCH_CACHE"

COMPLETE_NAME = ".complete"
DIGESTS_NAME = "digests.json"
RANKS_NAME = "tokenizer.tiktoken"
TOKEN_BYTES_NAME = "token_bytes.npy"
TOKENIZER_META_NAME = "tokenizer.json"  # written last of the tokenizer files: its presence marks the folder ready
LEGACY_PICKLE_NAME = "tokenizer.pkl"  # what older versions wrote; never loaded


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder, synced, then rename: a reader (or a
    crash) never sees half a file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
