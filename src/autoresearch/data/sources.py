"""The data sources `ar prepare` turns into text shards.

Every source writes `shard_NNNNN.parquet` files (one column `text`, one document per
row) into its cache folder; the last shard (in name order) is the validation shard.
`prepare.py` writes the `.complete` marker once `build` has returned.

    builtin      the World English Bible shipped in the package (offline)
    climbmix     the upstream pretraining shards (Hugging Face)
    tinystories  TinyStories V2 (Hugging Face), converted to shards
    local        a folder of .parquet / .jsonl / .txt files; cached as local-<folder>

Remote sources download through huggingface_hub (see download.py): HF_ENDPOINT (or
AUTORESEARCH_HF_ENDPOINT) lets a mirror or a test server stand in for Hugging Face.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from ..errors import ArError
from .download import HfFile, fetch_files
from .cache import shard_name
from .progress import ProgressFn

SEPARATOR = b"<|endoftext|>"
ROW_GROUP_DOCS = 1024  # documents per parquet row group: bounded memory when writing and reading
READ_CHUNK = 4 << 20
DOWNLOAD_BACKOFF = 1.0  # seconds before the first retry (then doubling); tests make it small

# Upstream facts, from karpathy/autoresearch prepare.py: shards come from
# https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{i:05d}.parquet,
# MAX_SHARD = 6542 is the last shard and is pinned as the validation shard, and 10
# training shards are fetched by default. Keeping the upstream file names keeps the
# validation shard last in name order.
CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_MAX_SHARD = 6542
CLIMBMIX_VAL_SHARD = CLIMBMIX_MAX_SHARD
CLIMBMIX_DEFAULT_SHARDS = 10

# TinyStories V2 (GPT-4 generated), Hugging Face dataset roneneldan/TinyStories: two
# text files with stories separated by <|endoftext|> (the train file is about 2 GB).
TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_TRAIN = "TinyStoriesV2-GPT4-train.txt"
TINYSTORIES_VALID = "TinyStoriesV2-GPT4-valid.txt"
TINYSTORIES_DEFAULT_SHARDS = 8

BUILTIN_SHARDS = 8
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".txt")

# Tokenizer training text, as upstream: at most 1e9 characters, each document cut to
# 10,000 characters (karpathy/autoresearch prepare.py, text_iterator).
UPSTREAM_TOKENIZER_CHARS = 1_000_000_000
UPSTREAM_DOC_CAP = 10_000


def shard_path(out: Path, index: int) -> Path:
    return out / shard_name(index)


# --------------------------------------------------------------------------- shards


class ShardWriter:
    """Write one shard in row groups, to `<name>.tmp` first, renamed into place on close."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_suffix(path.suffix + ".tmp")
        self.rows = 0
        self._buf: list[str] = []
        self._writer = None

    def add(self, text: str) -> None:
        self._buf.append(text)
        if len(self._buf) >= ROW_GROUP_DOCS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string())])
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, schema)
        if self._buf:
            self._writer.write_table(pa.table({"text": pa.array(self._buf, pa.string())}, schema=schema))
            self.rows += len(self._buf)
            self._buf = []

    def close(self) -> int:
        self._flush()
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.rows

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_shard(path: Path, texts) -> int:
    with ShardWriter(path) as w:
        for t in texts:
            w.add(t)
    return w.rows


def clear_shards(out: Path) -> None:
    """Remove shards left by an interrupted or older build, so none is taken for validation."""
    for p in list(out.glob("shard_*.parquet")) + list(out.glob("shard_*.parquet.tmp")):
        p.unlink()


def iter_shard_texts(path: Path) -> Iterator[str]:
    """The documents of a shard, one row group at a time."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(columns=["text"], batch_size=ROW_GROUP_DOCS):
        for text in batch.column(0).to_pylist():
            if text:
                yield text


def check_parquet(path: Path) -> None:
    """Raise if path is not a readable parquet file with a `text` column (footer check)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:  # reads the footer: a cut download fails here
        names = pf.schema_arrow.names
    if "text" not in names:
        raise ValueError(f"no 'text' column (columns: {', '.join(names)})")


def split_documents(f: BinaryIO, errors: str = "strict", chunk: int = READ_CHUNK) -> Iterator[tuple[str, int]]:
    """Stream documents separated by <|endoftext|> as (text, byte offset of its start).

    A file without the separator is one document. Splitting bytes is safe for UTF-8:
    the separator is ASCII and never occurs inside a multi-byte character.
    """
    tail, start = b"", 0
    while True:
        data = f.read(chunk)
        if not data:
            break
        parts = (tail + data).split(SEPARATOR)
        tail = parts.pop()
        for part in parts:
            text = part.decode("utf-8", errors).strip()
            if text:
                yield text, start
            start += len(part) + len(SEPARATOR)
    text = tail.decode("utf-8", errors).strip()
    if text:
        yield text, start


# --------------------------------------------------------------------------- sources


class Source:
    """A named source: builds its shards into a cache folder."""

    name = ""
    description = ""
    tokenizer_chars: Optional[int] = UPSTREAM_TOKENIZER_CHARS
    doc_cap: Optional[int] = UPSTREAM_DOC_CAP

    def cache_name(self, path: Optional[Path]) -> str:
        if path is not None:
            raise ArError(f"--path is only for --source local, not for {self.name}")
        return self.name

    def needs_more(self, out: Path, num_shards: Optional[int]) -> bool:
        """True when a prepared folder should still be extended (more shards asked for)."""
        return False

    def check_prepared(self, manifest: dict, path: Optional[Path], cache: str) -> None:
        """Raise if what was prepared does not match what is asked for now."""

    def build(
        self, out: Path, *, path: Optional[Path], num_shards: Optional[int], workers: int, progress: ProgressFn
    ) -> dict:
        """Write the shards into out (which exists); return a manifest kept in `.complete`."""
        raise NotImplementedError


class BuiltinSource(Source):
    name = "builtin"
    description = "the World English Bible shipped in the package (offline, about 4 MB)"
    tokenizer_chars = None  # small: the tokenizer sees all of it
    doc_cap = None

    def documents(self) -> list[str]:
        ref = resources.files("autoresearch.data") / "builtin" / "web_bible.jsonl.gz"
        with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]

    def build(self, out, *, path, num_shards, workers, progress) -> dict:
        docs = self.documents()
        clear_shards(out)
        # Round robin, so every shard (validation included) spans the whole book.
        for k in range(BUILTIN_SHARDS):
            write_shard(shard_path(out, k), docs[k::BUILTIN_SHARDS])
            progress("build builtin", k + 1, BUILTIN_SHARDS)
        return {"documents": len(docs), "shards": BUILTIN_SHARDS}


class ClimbmixSource(Source):
    name = "climbmix"
    description = "the upstream pretraining shards, karpathy/climbmix-400b-shuffle (about 90 MB a shard)"

    @staticmethod
    def train_count(out: Path) -> int:
        return sum(1 for p in out.glob("shard_*.parquet") if p.name != shard_path(out, CLIMBMIX_VAL_SHARD).name)

    def needs_more(self, out, num_shards) -> bool:
        return num_shards is not None and min(num_shards, CLIMBMIX_MAX_SHARD) > self.train_count(out)

    def build(self, out, *, path, num_shards, workers, progress) -> dict:
        n = min(num_shards or CLIMBMIX_DEFAULT_SHARDS, CLIMBMIX_MAX_SHARD)
        ids = list(range(n)) + [CLIMBMIX_VAL_SHARD]
        files = [HfFile(CLIMBMIX_REPO, shard_path(out, i).name, dest=shard_path(out, i)) for i in ids]
        fetch_files(
            files, workers=workers, backoff=DOWNLOAD_BACKOFF, validate=check_parquet, progress=progress, label="download climbmix"
        )
        return {"train_shards": self.train_count(out), "val_shard": CLIMBMIX_VAL_SHARD}


class TinyStoriesSource(Source):
    name = "tinystories"
    description = "TinyStories V2 from roneneldan/TinyStories (about 2 GB of text)"

    def build(self, out, *, path, num_shards, workers, progress) -> dict:
        n = num_shards or TINYSTORIES_DEFAULT_SHARDS
        # The text files stay in the shared Hugging Face cache (read in place, not copied).
        train, valid = fetch_files(
            [HfFile(TINYSTORIES_REPO, name) for name in (TINYSTORIES_TRAIN, TINYSTORIES_VALID)],
            workers=workers,
            backoff=DOWNLOAD_BACKOFF,
            progress=progress,
            label="download tinystories",
        )
        clear_shards(out)
        total = train.stat().st_size + valid.stat().st_size
        done = 0

        def tick(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            progress("convert tinystories", done, total)

        # The train file is cut into n shards by byte position, streamed: memory stays
        # at one read chunk plus one row group.
        size = max(1, train.stat().st_size)
        writer: Optional[ShardWriter] = None
        current, counts = -1, [0] * n
        try:
            with open(train, "rb") as f:
                for text, start in split_documents(_Counting(f, tick), errors="replace"):
                    k = min(n - 1, start * n // size)
                    while current < k:
                        if writer is not None:
                            writer.close()
                        current += 1
                        writer = ShardWriter(shard_path(out, current))
                    writer.add(text)
                    counts[k] += 1
            while current < n - 1:  # shards past the last story still exist, empty
                if writer is not None:
                    writer.close()
                current += 1
                writer = ShardWriter(shard_path(out, current))
            writer.close()
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        if not sum(counts):
            raise ArError(f"{train} holds no stories; delete it and run `ar prepare --source tinystories` again")
        with open(valid, "rb") as f, ShardWriter(shard_path(out, n)) as w:
            for text, _ in split_documents(_Counting(f, tick), errors="replace"):
                w.add(text)
        if not w.rows:
            raise ArError(f"{valid} holds no stories; delete it and run `ar prepare --source tinystories` again")
        return {"train_shards": n, "train_documents": sum(counts), "val_documents": w.rows}


class _Counting:
    """A binary file wrapper that reports the bytes read (for the progress bar)."""

    def __init__(self, f: BinaryIO, tick):
        self.f, self.tick = f, tick

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.tick(len(data))
        return data


def local_cache_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-.")
    return f"local-{name or 'folder'}"


class LocalSource(Source):
    name = "local"
    description = "a folder of your own .parquet (column text), .jsonl (field text) or .txt files"

    def cache_name(self, path: Optional[Path]) -> str:
        if path is None:
            raise ArError("--source local needs --path FOLDER: a folder of .parquet, .jsonl or .txt files")
        return local_cache_name(path)

    @staticmethod
    def files(path: Path) -> list[Path]:
        path = Path(path)
        if not path.exists():
            raise ArError(f"the folder {path} does not exist; give --path a folder of .parquet, .jsonl or .txt files")
        if not path.is_dir():
            raise ArError(f"{path} is a file, not a folder; give --path the folder that holds your .parquet, .jsonl or .txt files")
        try:
            entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        except OSError as e:
            raise ArError(f"cannot read the folder {path} ({e.strerror or e}); check its permissions") from None
        files = [p for p in entries if p.suffix.lower() in LOCAL_SUFFIXES]
        if not files:
            raise ArError(f"no .parquet, .jsonl or .txt files in {path}; put your text there (one document per row, line or file)")
        if len(files) == 1:
            raise ArError(
                f"only one file in {path} ({files[0].name}): need at least two, the training files and one more "
                "for validation (the last one in name order)"
            )
        return files

    @staticmethod
    def manifest(path: Path, files: list[Path]) -> dict:
        return {"path": str(Path(path).resolve()), "files": [[p.name, p.stat().st_size] for p in files]}

    def check_prepared(self, manifest: dict, path: Optional[Path], cache: str) -> None:
        if path is None or not manifest:
            return
        now = self.manifest(path, self.files(path))
        if manifest.get("path") != now["path"]:
            raise ArError(
                f"{cache} was prepared from another folder ({manifest.get('path')}); rename your folder, "
                f"or delete the cache folders named {cache} to prepare it again"
            )
        if manifest.get("files") != now["files"]:
            raise ArError(
                f"the files in {path} changed since it was prepared as {cache}; delete the cache folders named {cache} "
                "(data and tokenizers) to prepare it again, or keep the old files so results stay comparable"
            )

    def build(self, out, *, path, num_shards, workers, progress) -> dict:
        if path is None:
            raise ArError(f"{out.name} is not prepared yet; run: ar prepare --source local --path FOLDER")
        files = self.files(path)
        manifest = self.manifest(path, files)
        clear_shards(out)
        for i, file in enumerate(files):
            if write_shard(shard_path(out, i), local_documents(file)) == 0:
                raise ArError(f"{file} holds no text; remove it or fill it")
            progress(f"build {out.name}", i + 1, len(files))
        return manifest


def local_documents(file: Path) -> Iterator[str]:
    """The documents of one user file, with errors that name the file (and line)."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            yield from _parquet_documents(file)
        elif suffix == ".jsonl":
            yield from _jsonl_documents(file)
        else:
            with open(file, "rb") as f:
                for text, _ in split_documents(f):
                    yield text
    except UnicodeDecodeError:
        raise ArError(f"{file} is not UTF-8 text; convert it to UTF-8") from None
    except PermissionError as e:
        raise ArError(f"cannot read {file} ({e.strerror}); check its permissions") from None


def _parquet_documents(file: Path) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def corrupt(e: Exception) -> ArError:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return ArError(f"{file} is not a readable parquet file ({first})")

    try:
        pf = pq.ParquetFile(file)
    except PermissionError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise corrupt(e) from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise ArError(f"{file} has no 'text' column (it has: {', '.join(names)}); name the document column 'text'")
    try:
        for batch in pf.iter_batches(columns=["text"], batch_size=ROW_GROUP_DOCS):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text
    except (pa.ArrowException, OSError) as e:
        raise corrupt(e) from None


def _jsonl_documents(file: Path) -> Iterator[str]:
    with open(file, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArError(f"{file}, line {lineno}: not valid JSON ({e.msg}); each line must be an object like {{\"text\": \"...\"}}") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ArError(f"{file}, line {lineno}: no string field 'text'; each line must be an object like {{\"text\": \"...\"}}")
            if text.strip():
                yield text


# --------------------------------------------------------------------------- registry

SOURCES: dict[str, Source] = {s.name: s for s in (BuiltinSource(), ClimbmixSource(), TinyStoriesSource(), LocalSource())}


def get_source(name: str) -> Source:
    if name.startswith("local-"):
        return SOURCES["local"]
    try:
        return SOURCES[name]
    except KeyError:
        raise ArError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}") from None


def resolve_source(name: str, path: Optional[Path]) -> tuple[Source, str]:
    """The source and its cache name (`local-<folder>` for a local folder)."""
    source = get_source(name)
    if name.startswith("local-"):
        if path is not None and local_cache_name(path) != name:
            raise ArError(f"--path {path} is cached as {local_cache_name(path)}, not {name}; use --source local --path {path}")
        return source, name
    return source, source.cache_name(path)
