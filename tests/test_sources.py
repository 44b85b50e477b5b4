"""The sources: builtin, climbmix and tinystories (against a local server), local folders."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.data import sources
from autoresearch.data.progress import no_progress
from autoresearch.data.sources import (
    SOURCES,
    get_source,
    iter_shard_texts,
    local_cache_name,
    resolve_source,
    split_documents,
)
from autoresearch.errors import ArError


def texts(path) -> list[str]:
    return list(iter_shard_texts(path))


def parquet_bytes(docs: list[str], column: str = "text") -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({column: docs}), buf)
    return buf.getvalue()


def build(name: str, out, path=None, num_shards=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return get_source(name).build(out, path=path, num_shards=num_shards, workers=4, progress=no_progress)


# --------------------------------------------------------------------------- registry


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ArError) as err:
        get_source("wikipedia")
    assert all(name in str(err.value) for name in ("builtin", "climbmix", "tinystories", "local"))


def test_path_belongs_to_local_only(tmp_path):
    with pytest.raises(ArError, match="--path is only for --source local"):
        resolve_source("builtin", tmp_path)
    with pytest.raises(ArError, match="needs --path"):
        resolve_source("local", None)


def test_local_cache_name_is_sanitised(tmp_path):
    folder = tmp_path / "My Corpus (v2)!"
    folder.mkdir()
    assert local_cache_name(folder) == "local-My-Corpus-v2"
    assert resolve_source("local", folder) == (SOURCES["local"], "local-My-Corpus-v2")
    # An already prepared local source can be named directly, e.g. from a workspace config.
    assert resolve_source("local-My-Corpus-v2", None)[1] == "local-My-Corpus-v2"


# --------------------------------------------------------------------------- builtin


def test_builtin_shards_are_deterministic_round_robin_with_a_distinct_val_shard(tmp_path):
    build("builtin", tmp_path / "a")
    build("builtin", tmp_path / "b")
    a, b = sorted((tmp_path / "a").glob("shard_*.parquet")), sorted((tmp_path / "b").glob("shard_*.parquet"))
    assert [p.name for p in a] == [f"shard_{i:05d}.parquet" for i in range(8)]
    assert [texts(p) for p in a] == [texts(p) for p in b]
    docs = SOURCES["builtin"].documents()
    assert len(docs) > 1000 and docs[0].startswith("Genesis 1")
    for k, shard in enumerate(a):
        assert texts(shard) == docs[k::8]
    val = set(texts(a[-1]))
    train = {t for p in a[:-1] for t in texts(p)}
    assert val and not (val & train)


# --------------------------------------------------------------------------- climbmix

CLIMB = "/datasets/karpathy/climbmix-400b-shuffle/resolve/main"


@pytest.fixture
def climbmix_server(http_files, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base + "/")
    docs = {}
    for i in (0, 1, 2, 6542):
        docs[i] = [f"climbmix shard {i} document {j}" for j in range(5)]
        http_files.files[f"{CLIMB}/shard_{i:05d}.parquet"] = parquet_bytes(docs[i])
    return http_files, docs


def test_climbmix_downloads_train_shards_and_the_pinned_val_shard_last(climbmix_server, tmp_path):
    server, docs = climbmix_server
    out = tmp_path / "climbmix"
    manifest = build("climbmix", out, num_shards=2)
    shards = sorted(out.glob("shard_*.parquet"))
    assert [p.name for p in shards] == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert [texts(p) for p in shards] == [docs[0], docs[1], docs[6542]]
    assert manifest["train_shards"] == 2
    assert server.hits(f"{CLIMB}/shard_00002.parquet") == 0
    assert not list(out.glob("*.tmp"))


def test_climbmix_rejects_a_corrupt_shard_and_fetches_it_again(climbmix_server, tmp_path, monkeypatch):
    server, docs = climbmix_server
    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF", 0.01)
    server.plans[f"{CLIMB}/shard_00000.parquet"] = ["garbage"]
    build("climbmix", tmp_path / "c", num_shards=1)
    assert texts(tmp_path / "c" / "shard_00000.parquet") == docs[0]
    assert server.hits(f"{CLIMB}/shard_00000.parquet") == 2


def test_climbmix_wants_more_only_when_more_shards_are_asked_for(climbmix_server, tmp_path):
    out = tmp_path / "climbmix"
    build("climbmix", out, num_shards=1)
    src = SOURCES["climbmix"]
    assert not src.needs_more(out, None) and not src.needs_more(out, 1)
    assert src.needs_more(out, 3)


# --------------------------------------------------------------------------- tinystories

TS = "/datasets/roneneldan/TinyStories/resolve/main"


def story_file(stories: list[str]) -> bytes:
    return "".join(f"\n{s}\n<|endoftext|>" for s in stories).encode("utf-8")


def test_tinystories_is_converted_into_train_shards_and_a_val_shard(http_files, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base)
    train = [f"Once upon a time there was a cat number {i}. The end. ✓" for i in range(40)]
    valid = [f"Lily found ball {i}." for i in range(6)]
    http_files.files[f"{TS}/TinyStoriesV2-GPT4-train.txt"] = story_file(train)
    http_files.files[f"{TS}/TinyStoriesV2-GPT4-valid.txt"] = story_file(valid)
    out = tmp_path / "tinystories"
    manifest = build("tinystories", out, num_shards=3)
    shards = sorted(out.glob("shard_*.parquet"))
    assert [p.name for p in shards] == [f"shard_{i:05d}.parquet" for i in range(4)]
    per_shard = [texts(p) for p in shards]
    assert all(per_shard[:3]), "every train shard holds stories"
    assert [t for s in per_shard[:3] for t in s] == train  # in order, nothing lost or duplicated
    assert per_shard[3] == valid
    assert manifest == {"train_shards": 3, "train_documents": 40, "val_documents": 6}
    assert not (out / "_download").exists()  # the raw text is removed after conversion


def test_split_documents_streams_across_chunk_boundaries():
    stories = ["alpha beta", "gamma", "", "  ", "délta ünïcode", "last one without separator"]
    raw = "<|endoftext|>".join(stories).encode("utf-8")
    got = list(split_documents(io.BytesIO(raw), chunk=5))
    assert [t for t, _ in got] == ["alpha beta", "gamma", "délta ünïcode", "last one without separator"]
    for text, start in got:  # offsets point at the document's bytes
        assert raw[start:].decode("utf-8").lstrip().startswith(text)
    assert [t for t, _ in split_documents(io.BytesIO(b"one document, no separator\n"))] == ["one document, no separator"]


# --------------------------------------------------------------------------- local


def make_corpus(folder) -> list[list[str]]:
    folder.mkdir()
    pq.write_table(pa.table({"text": ["parquet doc 1", "parquet doc 2"], "id": [1, 2]}), folder / "a.parquet")
    (folder / "b.jsonl").write_text(
        json.dumps({"text": "json doc 1"}) + "\n\n" + json.dumps({"text": "json doc 2", "meta": 3}) + "\n", encoding="utf-8"
    )
    (folder / "c.txt").write_text("a whole file is one document\nwith two lines\n", encoding="utf-8")
    (folder / "d.txt").write_text("story one<|endoftext|>story two<|endoftext|>", encoding="utf-8")
    (folder / "notes.md").write_text("ignored")
    (folder / ".hidden.txt").write_text("ignored")
    return [
        ["parquet doc 1", "parquet doc 2"],
        ["json doc 1", "json doc 2"],
        ["a whole file is one document\nwith two lines"],
        ["story one", "story two"],
    ]


def test_local_folder_gives_one_shard_per_file_in_name_order(tmp_path):
    expected = make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    manifest = build("local", out, path=tmp_path / "corpus")
    shards = sorted(out.glob("shard_*.parquet"))
    assert [texts(p) for p in shards] == expected  # the last file (d.txt) is validation
    assert [name for name, _ in manifest["files"]] == ["a.parquet", "b.jsonl", "c.txt", "d.txt"]


def test_local_rebuild_drops_shards_of_an_earlier_attempt(tmp_path):
    make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    out.mkdir()
    for i in range(6):  # stale shards of a bigger, interrupted build
        (out / f"shard_{i:05d}.parquet").write_bytes(parquet_bytes(["stale"]))
    build("local", out, path=tmp_path / "corpus")
    assert len(list(out.glob("shard_*.parquet"))) == 4


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("x"), "is a file, not a folder"),
        (lambda d: d.mkdir(), "no .parquet, .jsonl or .txt files"),
        (lambda d: (d.mkdir(), (d / "only.txt").write_text("hi")), r"only one file .*only\.txt.*validation"),
    ],
    ids=["missing", "file", "empty", "one-file"],
)
def test_local_folder_errors(tmp_path, setup, message):
    folder = tmp_path / "corpus"
    setup(folder)
    with pytest.raises(ArError, match=message):
        build("local", tmp_path / "out", path=folder)


def bad_folder(tmp_path, name: str, content: bytes):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("fine")
    (folder / name).write_bytes(content)
    return folder


def test_local_corrupt_parquet_is_named(tmp_path):
    folder = bad_folder(tmp_path, "broken.parquet", b"PAR1 this is not really parquet")
    with pytest.raises(ArError, match=r"broken\.parquet is not a readable parquet file"):
        build("local", tmp_path / "out", path=folder)


def test_local_parquet_without_text_column(tmp_path):
    folder = bad_folder(tmp_path, "b.parquet", parquet_bytes(["x"], column="content"))
    with pytest.raises(ArError, match=r"b\.parquet has no 'text' column \(it has: content\)"):
        build("local", tmp_path / "out", path=folder)


def test_local_bad_jsonl_line_names_file_and_line(tmp_path):
    folder = bad_folder(tmp_path, "b.jsonl", b'{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ArError, match=r"b\.jsonl, line 2: not valid JSON"):
        build("local", tmp_path / "out", path=folder)


def test_local_jsonl_without_text_field(tmp_path):
    folder = bad_folder(tmp_path, "b.jsonl", b'{"body": "no text here"}\n')
    with pytest.raises(ArError, match=r"b\.jsonl, line 1: no string field 'text'"):
        build("local", tmp_path / "out", path=folder)


def test_local_non_utf8_and_empty_files(tmp_path):
    folder = bad_folder(tmp_path, "b.txt", b"caf\xe9 latin-1")
    with pytest.raises(ArError, match=r"b\.txt is not UTF-8"):
        build("local", tmp_path / "out", path=folder)
    (folder / "b.txt").write_text("   \n")
    with pytest.raises(ArError, match=r"b\.txt holds no text"):
        build("local", tmp_path / "out", path=folder)


def test_local_prepared_from_another_folder_or_changed_files_is_refused(tmp_path):
    make_corpus(tmp_path / "corpus")
    src = SOURCES["local"]
    manifest = build("local", tmp_path / "out", path=tmp_path / "corpus")
    src.check_prepared(manifest, tmp_path / "corpus", "local-corpus")  # same folder: fine
    src.check_prepared(manifest, None, "local-corpus")
    (tmp_path / "corpus" / "e.txt").write_text("a new file")
    with pytest.raises(ArError, match="changed since it was prepared"):
        src.check_prepared(manifest, tmp_path / "corpus", "local-corpus")
    other = tmp_path / "elsewhere" / "corpus"
    other.parent.mkdir()
    make_corpus(other)
    with pytest.raises(ArError, match="prepared from another folder"):
        src.check_prepared(manifest, other, "local-corpus")
