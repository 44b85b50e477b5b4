"""Digests of the prepared cache: recorded by prepare, checked by verify_cache, and every
reported change repaired by the very command the error prints."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.data.cache import cache_root, list_shards
from autoresearch.data.context import RunContext
from autoresearch.data.digests import DigestMemo, file_digest, load_digests, record_digests, verify_cache
from autoresearch.data.prepare import prepare_data
from autoresearch.data.profiles import Profile, get_profile
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import ArError

TINY = get_profile("tiny")
COMMAND = "ar prepare --source builtin --profile tiny"


def builtin_ctx() -> RunContext:
    return RunContext(profile=TINY, source="builtin", time_budget=60.0, cache=cache_root())


def run_printed_command(message: str) -> None:
    """Run the `ar prepare ...` an error message ends with, as a user pasting it would."""
    argv = shlex.split(message.rsplit("run: ", 1)[1])
    assert argv[:2] == ["ar", "prepare"], message
    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, result.output


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_fresh_prepare_records_every_file_and_verifies():
    report = prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    checked = verify_cache(ctx, memo=DigestMemo())
    assert set(checked) == {str(report.data_dir), str(report.tokenizer_dir)}
    shards = {p.name for p in list_shards("builtin")}
    assert set(load_digests(report.data_dir)) == shards | {".complete"}
    assert set(load_digests(report.tokenizer_dir)) == {"tokenizer.tiktoken", "token_bytes.npy", "tokenizer.json"}
    assert not list(cache_root().rglob("*.pkl")) and not list(cache_root().rglob("*.tmp"))


def change_shard(ctx):
    flip_byte(ctx.data_dir / "shard_00003.parquet")  # same size: only the digest can tell
    return ctx.data_dir / "shard_00003.parquet", "was changed"


def truncate_tokenizer(ctx):
    path = ctx.tokenizer_dir / "tokenizer.tiktoken"
    path.write_bytes(path.read_bytes()[:100])
    return path, "was changed"


def validation_copy_sorting_first(ctx):
    # The audit's attack: the validation shard again, under a name that sorts before every
    # training shard, so the model would train on the text it is judged on.
    shards = list_shards("builtin")
    planted = ctx.data_dir / "shard_0.parquet"
    shutil.copyfile(shards[-1], planted)
    assert list_shards("builtin")[0] == planted
    return planted, "was not written by `ar prepare`"


def delete_shard(ctx):
    (ctx.data_dir / "shard_00001.parquet").unlink()
    return ctx.data_dir / "shard_00001.parquet", "is missing"


def delete_token_bytes(ctx):
    (ctx.tokenizer_dir / "token_bytes.npy").unlink()
    return ctx.tokenizer_dir / "token_bytes.npy", "is missing"


def link_instead_of_shard(ctx):
    shard = ctx.data_dir / "shard_00002.parquet"
    shard.rename(ctx.data_dir.parent / "elsewhere.parquet")
    shard.symlink_to(ctx.data_dir.parent / "elsewhere.parquet")  # same bytes, but not a file prepare wrote
    return shard, "is not a plain file"


def pickle_next_to_the_tokenizer(ctx):
    (ctx.tokenizer_dir / "tokenizer.pkl").write_bytes(b"\x80\x04N.")
    return ctx.tokenizer_dir / "tokenizer.pkl", "was not written by `ar prepare`"


@pytest.mark.parametrize("damage", [change_shard, truncate_tokenizer, validation_copy_sorting_first, delete_shard,
                                    delete_token_bytes, link_instead_of_shard, pickle_next_to_the_tokenizer])
def test_each_change_is_reported_with_the_command_that_repairs_it(damage):
    prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    before = verify_cache(ctx, memo=DigestMemo())
    path, what = damage(ctx)
    with pytest.raises(ArError) as err:
        verify_cache(ctx, memo=DigestMemo())
    message = str(err.value)
    assert f"{path} {what}" in message and message.endswith(f"run: {COMMAND}") and "\n" not in message
    run_printed_command(message)
    assert verify_cache(ctx, memo=DigestMemo()) == before  # the same bytes as before, not merely new digests


def test_a_rewritten_digests_file_is_caught_when_pinned():
    prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    pinned = verify_cache(ctx, memo=DigestMemo())
    flip_byte(ctx.data_dir / "shard_00007.parquet")
    record_digests(ctx.data_dir)  # a script covering its tracks
    verify_cache(ctx, memo=DigestMemo())  # on disk, all agrees
    with pytest.raises(ArError, match="digests.json was changed since this session checked it; delete ") as err:
        verify_cache(ctx, pinned=pinned, memo=DigestMemo())
    assert str(err.value).endswith(f"run: {COMMAND}")
    shutil.rmtree(ctx.data_dir)
    run_printed_command(str(err.value))
    assert verify_cache(ctx, pinned=pinned, memo=DigestMemo()) == pinned


def test_an_older_cache_gets_its_digests_without_a_rebuild():
    prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    fingerprint = Tokenizer.load(ctx).fingerprint
    # What an older version left: no digests, and the tokenizer as a pickle.
    for folder in (ctx.data_dir, ctx.tokenizer_dir):
        (folder / "digests.json").unlink()
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        (ctx.tokenizer_dir / name).unlink()
    (ctx.tokenizer_dir / "tokenizer.pkl").write_bytes(b"\x80\x04N.")
    mtimes = {p.name: p.stat().st_mtime_ns for p in list_shards("builtin")}
    with pytest.raises(ArError, match="is a pickle from an older ar; run: ar prepare --source builtin --profile tiny"):
        verify_cache(ctx, memo=DigestMemo())

    report = prepare_data("builtin", TINY)
    assert report.did_work
    assert {p.name: p.stat().st_mtime_ns for p in list_shards("builtin")} == mtimes  # checked and kept
    assert sorted(p.name for p in ctx.tokenizer_dir.iterdir()) == ["digests.json", "token_bytes.npy", "tokenizer.json",
                                                                    "tokenizer.tiktoken"]
    verify_cache(ctx, memo=DigestMemo())
    assert Tokenizer.load(ctx).fingerprint == fingerprint  # retrained to the same vocabulary
    assert not prepare_data("builtin", TINY).did_work


def test_an_older_cache_without_digests_is_reported():
    prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    (ctx.data_dir / "digests.json").unlink()
    with pytest.raises(ArError, match=f"no digests recorded for {ctx.data_dir} .*; run: {COMMAND}$"):
        verify_cache(ctx, memo=DigestMemo())


def test_the_memo_still_sees_a_same_size_rewrite(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    old = path.stat().st_mtime_ns - 10**10
    os.utime(path, ns=(old, old))
    memo = DigestMemo(settle_ns=0)  # remember even what changed just now (the file system clock is fine here)
    first = file_digest(path, memo)
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert memo.get(str(path), key) == first[1]
    with open(path, "r+b") as f:  # in place, same size, and the mtime put back
        f.write(b"b")
    os.utime(path, ns=(old, old))
    second = file_digest(path, memo)
    assert second[0] == first[0] and second != first  # ctime moved on: hashed again


def test_a_file_changed_just_now_is_not_memoized(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"fresh")
    memo = DigestMemo()
    file_digest(path, memo)
    st = path.stat()
    assert memo.get(str(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)) is None


def test_a_damaged_download_is_fetched_again_not_relinked(http_files, monkeypatch):
    # The only monkeypatch: the environment variable that points downloads at the test server.
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base)
    base = "/datasets/karpathy/climbmix-400b-shuffle/resolve/main/"
    for i in (0, 1, 6542):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": [f"the climb {i} went on and on, {j} times over the hill" for j in range(60)]}), buf)
        http_files.files[f"{base}shard_{i:05d}.parquet"] = buf.getvalue()
    profile = Profile(name="tiny", max_seq_len=64, time_budget=5, eval_tokens=512, vocab_size=300,
                      source="climbmix", description="a small vocabulary for a small corpus")
    prepare_data("climbmix", profile, num_shards=2, workers=2)
    ctx = RunContext(profile=profile, source="climbmix", time_budget=5.0, cache=cache_root())
    verify_cache(ctx, memo=DigestMemo())
    shard = ctx.data_dir / "shard_00000.parquet"
    assert shard.stat().st_nlink > 1  # a hard link into the Hugging Face cache: a write in place changes both
    flip_byte(shard)
    with pytest.raises(ArError, match="shard_00000.parquet was changed"):
        verify_cache(ctx, memo=DigestMemo())

    hits = http_files.hits(f"{base}shard_00000.parquet")
    prepare_data("climbmix", profile)
    assert http_files.hits(f"{base}shard_00000.parquet") == hits + 1
    assert shard.read_bytes() == http_files.files[f"{base}shard_00000.parquet"]
    verify_cache(ctx, memo=DigestMemo())
    assert len(list_shards("climbmix")) == 3  # the repair kept both training shards


def test_a_digests_file_that_is_not_one_is_reported_and_rebuilt():
    prepare_data("builtin", TINY)
    ctx = builtin_ctx()
    before = verify_cache(ctx, memo=DigestMemo())
    (ctx.tokenizer_dir / "digests.json").write_text(json.dumps({"format": 1, "files": []}))
    with pytest.raises(ArError, match=f"digests.json is not a digests file; run: {COMMAND}$"):
        verify_cache(ctx, memo=DigestMemo())
    assert prepare_data("builtin", TINY).did_work
    assert verify_cache(ctx, memo=DigestMemo()) == before


def test_a_repair_never_rebuilds_from_a_changed_local_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"part{i}.txt").write_text("<|endoftext|>".join(f"story {i}.{j}: the cat sat on the mat" for j in range(40)))
    profile = Profile(name="tiny", max_seq_len=64, time_budget=5, eval_tokens=512, vocab_size=300,
                      source="local", description="a small vocabulary for a small corpus")
    report = prepare_data("local", profile, path=folder)
    flip_byte(report.data_dir / "shard_00000.parquet")
    (folder / "part9.txt").write_text("new text")
    with pytest.raises(ArError, match="changed since it was prepared"):
        prepare_data("local", profile, path=folder)
    (folder / "part9.txt").unlink()
    assert prepare_data("local", profile, path=folder).did_work
    ctx = RunContext(profile=profile, source=report.source, time_budget=5.0, cache=cache_root(), source_path=str(folder))
    verify_cache(ctx, memo=DigestMemo())
