"""`ar prepare`: build a source's shards, then train its tokenizer. Idempotent, and it repairs.

Each step is skipped when its result is already in the cache and matches the digests
recorded when it was made (digests.json, see digests.py), so a second run does nothing
and an interrupted run picks up where it stopped. A file that differs from its digest,
is missing or was added is removed and made again; a cache from an older version (no
digests yet) is checked as before and its digests recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ArError
from .cache import CACHE_ENV, COMPLETE_NAME, DIGESTS_NAME, TOKENIZER_META_NAME, data_dir, list_shards, tokenizer_dir
from .digests import CHANGED, EXTRA, MISSING, Problem, folder_problems, load_digests, record_digests
from .profiles import Profile
from .progress import ProgressFn, no_progress
from .sources import Source, check_parquet, iter_shard_texts, resolve_source

COMPLETE = COMPLETE_NAME
_SHARD = re.compile(r"^shard_\d+\.parquet$")


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


def damage(folder: Path) -> Optional[list[Problem]]:
    """How `folder` differs from its recorded digests ([] when intact); None when none
    were recorded. Unreadable digests make every entry suspect."""
    try:
        expected = load_digests(folder)
    except ArError:
        return [Problem(name, CHANGED) for name in sorted(os.listdir(folder)) if name != DIGESTS_NAME]
    return None if expected is None else folder_problems(folder, expected)


def _hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def discard(path: Path, hf_cache: Optional[Path] = None) -> None:
    """Remove a damaged entry. A downloaded shard is a hard link to the Hugging Face cache's
    copy, which a write in place changed too: with hf_cache, that copy goes as well, or
    the next download would link the damaged copy again."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and hf_cache is not None:
        for blob in Path(hf_cache).glob("*/blobs/*"):
            with suppress(OSError):
                b = blob.lstat()
                if (b.st_dev, b.st_ino) == (st.st_dev, st.st_ino):
                    blob.unlink()
    path.unlink(missing_ok=True)


def _legacy_damage(ddir: Path) -> list[Problem]:
    """A data folder prepared by an older ar: its shards must at least be readable parquet."""
    bad = []
    for shard in sorted(ddir.glob("shard_*.parquet")):
        try:
            check_parquet(shard)
        except Exception:  # pyarrow raises several kinds: any failure means rebuild it
            bad.append(Problem(shard.name, CHANGED))
    return bad


def _prepare_shards(src: Source, name: str, ddir: Path, path: Optional[Path], num_shards: Optional[int],
                    workers: int, progress: ProgressFn, hf_cache: Optional[Path]) -> bool:
    marker = ddir / COMPLETE
    found = damage(ddir)
    recorded = found is not None
    problems = found if recorded else (_legacy_damage(ddir) if marker.exists() else [])
    if marker.exists() and not problems and len(list_shards(name)) >= 2 and not src.needs_more(ddir, num_shards):
        src.check_prepared(_read_manifest(marker), path, name)
        if not recorded:  # prepared by an older version: record what it left
            record_digests(ddir)
        return not recorded

    _writable(ddir)
    if problems and marker.exists() and COMPLETE not in {p.name for p in problems}:
        # A repair rebuilds from the same source: refuse, as an intact cache would, if it changed since.
        src.check_prepared(_read_manifest(marker), path, name)
    if problems:
        # Keep as many training shards as were there, so a repair never shrinks the data.
        kept = {p.name for p in ddir.glob("shard_*.parquet")} - {p.name for p in problems if p.what == EXTRA}
        kept |= {p.name for p in problems if p.what == MISSING}
        num_shards = max(num_shards or 0, sum(1 for n in kept if _SHARD.match(n)) - 1) or None
        hf = hf_cache if hf_cache is not None else _hf_cache()
        for p in problems:
            if p.what != MISSING:
                discard(ddir / p.name, hf if p.what == CHANGED else None)
    (ddir / DIGESTS_NAME).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)  # being built or extended: not complete until build returns
    manifest = src.build(ddir, path=path, num_shards=num_shards, workers=workers, progress=progress)
    if len(list_shards(name)) < 2:
        raise ArError(f"{name} gave fewer than two shards in {ddir}; need training shards and a validation shard")
    tmp = marker.with_name(COMPLETE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    record_digests(ddir)
    return True


def _tokenizer_loads(tdir: Path) -> bool:
    from .tokenizer import Tokenizer

    try:
        Tokenizer.load(tdir)
    except ArError:
        return False
    return True


def _prepare_tokenizer(src: Source, shards: list[Path], tdir: Path, vocab_size: int, progress: ProgressFn) -> bool:
    if (tdir / TOKENIZER_META_NAME).is_file():
        found = damage(tdir)
        if found == []:
            return False
        if found is None and _tokenizer_loads(tdir):  # written, then interrupted before its digests
            record_digests(tdir)
            return True
    # Missing, damaged, or a pickle from an older version (never loaded): train it afresh.
    # Training is deterministic, so the same shards give the same tokenizer.
    _writable(tdir)
    for entry in list(tdir.iterdir()):
        discard(entry)
    from .tokenizer import train_tokenizer

    # The last shard is validation: the tokenizer never sees it.
    texts = training_texts(shards[:-1], src.tokenizer_chars, src.doc_cap)
    train_tokenizer(texts, vocab_size, tdir, progress=progress)
    record_digests(tdir)
    return True


def prepare_data(
    source: str,
    profile: Profile,
    path: Optional[Path] = None,
    num_shards: Optional[int] = None,
    workers: int = 8,
    progress: Optional[ProgressFn] = None,
    hf_cache: Optional[Path] = None,
) -> PrepareReport:
    """Make `source` ready for `profile`: shards in data_dir, tokenizer in tokenizer_dir,
    each folder ending with its digests.json.

    path: the folder for the local source. num_shards: training shards of a remote
    source (climbmix: shards to download, more can be added later; tinystories: the
    number the train file is cut into). hf_cache: the Hugging Face cache to purge of a
    damaged download (default: huggingface_hub's). Raises ArError for every user mistake.
    """
    progress = progress or no_progress
    src, name = resolve_source(source, path)
    ddir = data_dir(name)
    tdir = tokenizer_dir(name, profile.vocab_size)
    did_work = _prepare_shards(src, name, ddir, path, num_shards, workers, progress, hf_cache)
    shards = list_shards(name)
    did_work = _prepare_tokenizer(src, shards, tdir, profile.vocab_size, progress) or did_work
    return PrepareReport(
        source=name, data_dir=ddir, tokenizer_dir=tdir, num_train_shards=len(shards) - 1, did_work=did_work
    )
