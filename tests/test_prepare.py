"""prepare_data and `ar prepare`: shards then tokenizer, idempotent, clear errors."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.data.cache import cache_root, list_shards
from autoresearch.data.prepare import prepare_data, training_texts
from autoresearch.data.profiles import get_profile
from autoresearch.data.sources import iter_shard_texts
from autoresearch.errors import ArError

TINY = get_profile("tiny")


@pytest.fixture
def fake_tokenizer(monkeypatch):
    """Stand in for autoresearch.data.tokenizer: records what it was trained on."""
    calls: list[dict] = []

    def train_tokenizer(texts, vocab_size, out_dir, progress=None):
        docs = list(texts)
        calls.append({"docs": docs, "vocab_size": vocab_size, "out_dir": Path(out_dir)})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "tokenizer.json").write_bytes(b"fake")
        (Path(out_dir) / "token_bytes.npy").write_bytes(b"fake")

    module = types.ModuleType("autoresearch.data.tokenizer")
    module.train_tokenizer = train_tokenizer
    monkeypatch.setitem(sys.modules, "autoresearch.data.tokenizer", module)
    return calls


def corpus(folder: Path, files: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"part{i}.jsonl").write_text(
            "".join(json.dumps({"text": f"file {i} doc {j}"}) + "\n" for j in range(4)), encoding="utf-8"
        )
    return folder


def test_builtin_prepares_once_and_trains_on_training_shards_only(fake_tokenizer):
    calls = []
    report = prepare_data("builtin", TINY, progress=lambda *a: calls.append(a))
    assert report.did_work and report.source == "builtin" and report.num_train_shards == 7
    assert report.data_dir == cache_root() / "data" / "builtin"
    assert report.tokenizer_dir == cache_root() / "tokenizers" / f"builtin-v{TINY.vocab_size}"
    assert (report.data_dir / ".complete").is_file()
    shards = list_shards("builtin")
    assert len(shards) == 8
    (call,) = fake_tokenizer
    assert call["vocab_size"] == TINY.vocab_size and call["out_dir"] == report.tokenizer_dir
    train = [t for p in shards[:-1] for t in iter_shard_texts(p)]
    assert call["docs"] == train  # all of it, and nothing of the validation shard
    assert calls and calls[-1][0] == "build builtin"

    again = prepare_data("builtin", TINY)
    assert not again.did_work and len(fake_tokenizer) == 1
    assert again.num_train_shards == 7


def test_a_new_vocab_size_trains_only_a_new_tokenizer(fake_tokenizer):
    prepare_data("builtin", TINY)
    mtime = (list_shards("builtin")[0]).stat().st_mtime_ns
    report = prepare_data("builtin", get_profile("laptop"))
    assert report.did_work and report.tokenizer_dir.name == "builtin-v4096"
    assert list_shards("builtin")[0].stat().st_mtime_ns == mtime  # shards untouched
    assert [c["vocab_size"] for c in fake_tokenizer] == [TINY.vocab_size, 4096]


def test_an_interrupted_prepare_resumes_with_the_tokenizer(fake_tokenizer, monkeypatch):
    module = sys.modules["autoresearch.data.tokenizer"]
    real = module.train_tokenizer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "train_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data("builtin", TINY)
    assert (cache_root() / "data" / "builtin" / ".complete").exists()
    mtime = list_shards("builtin")[0].stat().st_mtime_ns
    monkeypatch.setattr(module, "train_tokenizer", real)
    report = prepare_data("builtin", TINY)
    assert report.did_work and len(fake_tokenizer) == 1
    assert list_shards("builtin")[0].stat().st_mtime_ns == mtime  # the shards were not built again


def test_training_texts_caps_documents_and_characters(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": ["a" * 50, "b" * 50, "c" * 50]}), shard)
    assert list(training_texts([shard], None, 20)) == ["a" * 20, "b" * 20, "c" * 20]
    assert list(training_texts([shard], 60, None)) == ["a" * 50, "b" * 50]
    assert len(list(training_texts([shard, shard], None, None))) == 6


def test_local_folder_is_cached_under_its_name(fake_tokenizer, tmp_path):
    folder = corpus(tmp_path / "my corpus")
    report = prepare_data("local", TINY, path=folder)
    assert report.source == "local-my-corpus" and report.num_train_shards == 2
    assert report.data_dir == cache_root() / "data" / "local-my-corpus"
    assert {d for c in fake_tokenizer for d in c["docs"]} == {f"file {i} doc {j}" for i in range(2) for j in range(4)}
    assert not prepare_data("local", TINY, path=folder).did_work
    assert not prepare_data("local-my-corpus", TINY).did_work  # by cache name, without the folder
    (folder / "part9.jsonl").write_text('{"text": "new"}\n')
    with pytest.raises(ArError, match="changed since"):
        prepare_data("local", TINY, path=folder)


def test_unprepared_local_name_without_path_says_what_to_run(fake_tokenizer):
    with pytest.raises(ArError, match="ar prepare --source local --path"):
        prepare_data("local-nothing", TINY)


def climbmix_files(server) -> dict[int, list[str]]:
    docs = {}
    for i in (0, 1, 2, 6542):
        docs[i] = [f"climb {i}.{j}" for j in range(3)]
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": docs[i]}), buf)
        server.files[f"/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{i:05d}.parquet"] = buf.getvalue()
    return docs


def test_climbmix_end_to_end_and_extended_with_more_shards(fake_tokenizer, http_files, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base)
    docs = climbmix_files(http_files)
    dc = get_profile("datacenter")
    report = prepare_data("climbmix", dc, num_shards=2, workers=2)
    assert report.did_work and report.num_train_shards == 2
    assert [p.name for p in list_shards("climbmix")][-1] == "shard_06542.parquet"
    assert fake_tokenizer[0]["docs"] == docs[0] + docs[1]

    n = len(http_files.requests)
    assert not prepare_data("climbmix", dc, num_shards=2).did_work
    assert not prepare_data("climbmix", dc).did_work
    assert len(http_files.requests) == n  # nothing fetched again

    more = prepare_data("climbmix", dc, num_shards=3)
    assert more.did_work and more.num_train_shards == 3
    assert [p for p, _ in http_files.requests[n:]] == ["/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_00002.parquet"]
    assert len(fake_tokenizer) == 1  # the tokenizer is kept: results stay comparable


def test_tinystories_end_to_end(fake_tokenizer, http_files, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base)
    base = "/datasets/roneneldan/TinyStories/resolve/main/"
    http_files.files[base + "TinyStoriesV2-GPT4-train.txt"] = b"<|endoftext|>".join(b"story %d" % i for i in range(20))
    http_files.files[base + "TinyStoriesV2-GPT4-valid.txt"] = b"valid 1<|endoftext|>valid 2<|endoftext|>"
    report = prepare_data("tinystories", get_profile("laptop"), num_shards=2)
    assert report.num_train_shards == 2
    assert list(iter_shard_texts(list_shards("tinystories")[-1])) == ["valid 1", "valid 2"]
    assert fake_tokenizer[0]["docs"] == [f"story {i}" for i in range(20)]
    assert not prepare_data("tinystories", get_profile("laptop")).did_work


def test_a_cache_that_cannot_be_written_names_the_folder(fake_tokenizer, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(blocker / "cache"))
    with pytest.raises(ArError, match="AUTORESEARCH_CACHE") as err:
        prepare_data("builtin", TINY)
    assert str(blocker / "cache") in str(err.value)


# --------------------------------------------------------------------------- the CLI

runner = CliRunner()


def ar_prepare(*args: str):
    return runner.invoke(app, ["prepare", *args])


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_prepares_a_local_folder_then_does_nothing(fake_tokenizer, tmp_path):
    folder = corpus(tmp_path / "mycorpus")
    first = ar_prepare("--source", "local", "--path", str(folder))
    assert first.exit_code == 0, first.output
    out = " ".join(first.stdout.split())  # Rich wraps long lines
    assert "prepared source local-mycorpus" in out and "2 train shards + 1 validation shard" in out
    second = ar_prepare("--source", "local", "--path", str(folder))
    assert second.exit_code == 0 and "already prepared source local-mycorpus" in second.stdout
    assert len(fake_tokenizer) == 1


def test_cli_unknown_source(fake_tokenizer):
    assert_one_error_line(ar_prepare("--source", "wikipedia"), "unknown data source 'wikipedia'", "builtin")


def test_cli_local_without_path(fake_tokenizer):
    assert_one_error_line(ar_prepare("--source", "local"), "needs --path")


def test_cli_empty_folder(fake_tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_error_line(ar_prepare("-s", "local", "--path", str(tmp_path / "empty")), "no .parquet, .jsonl or .txt files")


def test_cli_one_file_folder(fake_tokenizer, tmp_path):
    corpus(tmp_path / "one", files=1)
    assert_one_error_line(ar_prepare("-s", "local", "--path", str(tmp_path / "one")), "only one file", "validation")


def test_cli_corrupt_parquet(fake_tokenizer, tmp_path):
    folder = corpus(tmp_path / "c", files=2)
    (folder / "zz.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    assert_one_error_line(ar_prepare("-s", "local", "--path", str(folder)), "zz.parquet is not a readable parquet file")
    assert not (cache_root() / "data" / "local-c" / ".complete").exists()


def test_cli_missing_folder(fake_tokenizer, tmp_path):
    assert_one_error_line(ar_prepare("-s", "local", "--path", str(tmp_path / "nope")), "does not exist")


def test_cli_unwritable_cache(fake_tokenizer, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "a-file" / "cache"))
    assert_one_error_line(ar_prepare("--source", "builtin"), "cannot write to the cache folder", "AUTORESEARCH_CACHE")


# --------------------------------------------------------------------------- the real tokenizer


def test_builtin_with_the_real_tokenizer():
    from autoresearch.data.tokenizer import Tokenizer

    report = prepare_data("builtin", TINY)
    tok = Tokenizer.load(report.tokenizer_dir)
    assert tok.vocab_size == TINY.vocab_size
    text = "In the beginning, God created the heavens and the earth."
    assert tok.decode(tok.encode(text)) == text
    assert not prepare_data("builtin", TINY).did_work
