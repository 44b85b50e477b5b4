"""The numpy dataloader core: BOS-aligned best-fit packing that wastes no token, the
train/validation split, epochs, and the fixed validation rows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.data import loader
from autoresearch.data.context import RunContext
from autoresearch.data.loader import BestFitPacker, data_spec, make_batches, validation_rows
from autoresearch.data.profiles import get_profile
from autoresearch.errors import ArError

BOS = 0


def synthetic_docs(lengths, per_batch=7):
    """Documents whose tokens name (doc, position): doc d is [BOS, d*10000+1, d*10000+2, ...]."""
    docs = [[BOS] + [d * 10000 + p for p in range(1, n)] for d, n in enumerate(lengths)]
    for i in range(0, len(docs), per_batch):
        yield docs[i : i + per_batch], 1


def pieces(rows):
    """Split rows at BOS: every piece is (doc, first position, last position)."""
    out = []
    for row in rows:
        starts = np.flatnonzero(row == BOS)
        assert starts[0] == 0, "every row starts with BOS"
        for a, b in zip(starts, list(starts[1:]) + [len(row)]):
            body = row[a + 1 : b]
            body = body[body >= 0]  # -1 marks the unfilled tail of a last, partial row
            if len(body):
                doc = int(body[0]) // 10000
                pos = body % 10000
                assert (body // 10000 == doc).all() and (np.diff(pos) == 1).all(), "a piece is one contiguous span"
                out.append((doc, int(pos[0]), int(pos[-1])))
    return out


def test_packing_keeps_every_token_exactly_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 400, size=300)
    packer = BestFitPacker(synthetic_docs(lengths), BOS, row_len=65, buffer_docs=50)
    out = np.full((2000, 65), -1, dtype=np.int32)
    done = packer.fill_rows(out)
    assert done < len(out)  # the finite stream ran out, and every document was used
    assert (out[:done] >= 0).all(), "full rows hold only real tokens (no padding)"
    covered = defaultdict(list)
    for doc, first, last in pieces(out[: done + 1]):
        covered[doc].append((first, last))
    for doc, n in enumerate(lengths):
        spans = sorted(covered[doc])
        flat = [p for a, b in spans for p in range(a, b + 1)]
        assert flat == list(range(1, n)), f"document {doc} lost or repeated tokens"
    assert packer.tokens_dropped == 0 and packer.bos_added > 0


def test_upstream_policy_drops_remainders():
    lengths = [300] * 40
    ours = BestFitPacker(synthetic_docs(lengths), BOS, row_len=65, buffer_docs=10)
    upstream = BestFitPacker(synthetic_docs(lengths), BOS, row_len=65, buffer_docs=10, keep_remainder=False)
    rows = np.empty((20, 65), dtype=np.int32)
    ours.fill_rows(rows)
    upstream.fill_rows(rows)
    assert ours.tokens_dropped == 0
    assert upstream.tokens_dropped == 20 * (300 - 65)


def test_best_fit_prefers_whole_documents():
    # 65 exactly fills a row; 40 + 25 exactly fill the next one; nothing is cropped.
    packer = BestFitPacker(synthetic_docs([40, 65, 25]), BOS, row_len=65)
    rows = np.empty((2, 65), dtype=np.int32)
    assert packer.fill_rows(rows) == 2
    assert sorted(pieces(rows)) == [(0, 1, 39), (1, 1, 64), (2, 1, 24)]
    assert packer.bos_added == 0


def test_batches_are_bos_aligned_and_shifted(tiny_data_ctx):
    it = make_batches(tiny_data_ctx, batch_size=4)
    tok = data_spec(tiny_data_ctx).tokenizer
    for _ in range(5):
        x, y, epoch = next(it)
        assert x.shape == y.shape == (4, 64) and x.dtype == np.int64 and epoch == 1
        assert x.flags.c_contiguous and y.flags.c_contiguous
        assert (x[:, 0] == tok.bos_id).all()
        assert (x[:, 1:] == y[:, :-1]).all()
        assert ((x >= 0) & (x < tok.vocab_size)).all()
    x32, _, _ = next(make_batches(tiny_data_ctx, batch_size=2, seq_len=16, dtype=np.int32))
    assert x32.shape == (2, 16) and x32.dtype == np.int32


def _texts(path):
    return pq.read_table(path).column("text").to_pylist()


def _first_piece_text(row, tok):
    starts = np.flatnonzero(row == tok.bos_id)
    end = starts[1] if len(starts) > 1 else len(row)
    return tok.decode(row[1:end])


def test_training_never_sees_validation_text(tiny_data_ctx):
    spec = data_spec(tiny_data_ctx)
    train_text = "\n".join(t for p in spec.train_shards for t in _texts(p))
    val_text = "\n".join(_texts(spec.val_shard))
    x, _, _ = next(make_batches(tiny_data_ctx, batch_size=8))
    for row in x:
        piece = _first_piece_text(row, spec.tokenizer)
        assert len(piece) > 20 and piece in train_text and piece not in val_text
    for row in validation_rows(tiny_data_ctx)[:8]:
        piece = _first_piece_text(row, spec.tokenizer)
        assert len(piece) > 20 and piece in val_text and piece not in train_text


def test_epochs_count_passes_over_the_training_split(tiny_data_ctx, tmp_path):
    shard = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": [f"short document number {i}." for i in range(40)]}), shard)
    spec = replace(data_spec(tiny_data_ctx), train_shards=(shard,))
    epochs = [e for _, (_, _, e) in zip(range(60), make_batches(spec, batch_size=4, seq_len=32))]
    assert epochs == sorted(epochs) and epochs[0] == 1
    # The epoch follows the document tokens actually served: all earlier passes are
    # used up, the current one is not finished (crops add at most one BOS per row).
    per_epoch = sum(len(ids) for ids in spec.tokenizer.encode(_texts(shard), prepend_bos=True))
    rows = 60 * 4
    assert (rows * 33 - rows) / per_epoch <= epochs[-1] <= rows * 33 / per_epoch + 1


def test_validation_rows_are_fixed(tiny_data_ctx):
    rows = validation_rows(tiny_data_ctx)
    tok = data_spec(tiny_data_ctx).tokenizer
    assert rows.shape == (2048 // 64, 65) and rows.dtype == np.int32
    assert (rows[:, 0] == tok.bos_id).all()
    assert not rows.flags.writeable
    loader._VAL_CACHE.clear()
    again = validation_rows(tiny_data_ctx)  # rebuilt from the shard, not from the cache
    assert again is not rows and np.array_equal(again, rows)
    assert validation_rows(tiny_data_ctx) is again
    assert validation_rows(tiny_data_ctx, 32).shape == (2048 // 32, 33)


def test_small_validation_shard_is_a_clear_error(tiny_data_ctx):
    spec = replace(data_spec(tiny_data_ctx), eval_tokens=10_000_000)
    with pytest.raises(ArError, match="validation shard .* too small for this profile's EVAL_TOKENS"):
        validation_rows(spec)


def test_user_mistakes_are_clear_errors(tiny_data_ctx, tmp_path):
    unprepared = RunContext(profile=get_profile("tiny"), source="builtin", time_budget=60.0, cache=tmp_path)
    with pytest.raises(ArError, match="ar prepare --source builtin --profile tiny"):
        next(make_batches(unprepared, batch_size=2))
    with pytest.raises(ArError, match="split must be 'train' or 'val'"):
        next(make_batches(tiny_data_ctx, batch_size=2, split="test"))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["no text column"]}), bad)
    with pytest.raises(ArError, match="no 'text' column"):
        next(make_batches(replace(data_spec(tiny_data_ctx), train_shards=(bad,)), batch_size=2))
