"""`ar prepare`: build a source's shards, then train its tokenizer. Idempotent.

Each step is skipped when its result is already in the cache (`.complete` for the
shards, `tokenizer.pkl` for the tokenizer), so a second run does nothing and an
interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ArError
from .cache import CACHE_ENV, data_dir, list_shards, tokenizer_dir
from .profiles import Profile
from .progress import ProgressFn, no_progress
from .sources import iter_shard_texts, resolve_source

COMPLETE = ".complete"


@dataclass(frozen=True)
class PrepareReport:
    source: str  # the cache name, e.g. local-mycorpus
    data_dir: Path
    tokenizer_dir: Path
    num_train_shards: int
    did_work: bool


def _writable(folder: Path) -> None:
    """Create folder and prove we can write there, or say which folder and what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ArError(
            f"cannot write to the cache folder {folder} ({e.strerror or e}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None


def _read_manifest(marker: Path) -> dict:
    try:
        data = json.loads(marker.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def training_texts(shards: list[Path], max_chars: Optional[int], doc_cap: Optional[int]) -> Iterator[str]:
    """Documents of the training shards, streamed; each cut to doc_cap, max_chars in all."""
    nchars = 0
    for shard in shards:
        for text in iter_shard_texts(shard):
            if doc_cap is not None:
                text = text[:doc_cap]
            yield text
            nchars += len(text)
            if max_chars is not None and nchars >= max_chars:
                return


def prepare_data(
    source: str,
    profile: Profile,
    path: Optional[Path] = None,
    num_shards: Optional[int] = None,
    workers: int = 8,
    progress: Optional[ProgressFn] = None,
) -> PrepareReport:
    """Make `source` ready for `profile`: shards in data_dir, tokenizer in tokenizer_dir.

    path: the folder for the local source. num_shards: training shards of a remote
    source (climbmix: shards to download, more can be added later; tinystories: the
    number the train file is cut into). Raises ArError for every user mistake.
    """
    progress = progress or no_progress
    src, name = resolve_source(source, path)
    ddir = data_dir(name)
    tdir = tokenizer_dir(name, profile.vocab_size)
    marker = ddir / COMPLETE
    did_work = False

    if marker.exists() and not src.needs_more(ddir, num_shards):
        src.check_prepared(_read_manifest(marker), path, name)
    else:
        _writable(ddir)
        marker.unlink(missing_ok=True)  # being extended: not complete until build returns
        manifest = src.build(ddir, path=path, num_shards=num_shards, workers=workers, progress=progress)
        if len(list_shards(name)) < 2:
            raise ArError(f"{name} gave fewer than two shards in {ddir}; need training shards and a validation shard")
        tmp = marker.with_name(COMPLETE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
        did_work = True

    shards = list_shards(name)
    if not (tdir / "tokenizer.pkl").is_file():
        _writable(tdir)
        from .tokenizer import train_tokenizer

        # The last shard is validation: the tokenizer never sees it.
        texts = training_texts(shards[:-1], src.tokenizer_chars, src.doc_cap)
        train_tokenizer(texts, profile.vocab_size, tdir, progress=progress)
        did_work = True

    return PrepareReport(
        source=name, data_dir=ddir, tokenizer_dir=tdir, num_train_shards=len(shards) - 1, did_work=did_work
    )
