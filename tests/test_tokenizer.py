"""Tokenizer: training writes an exact-size vocabulary, text round-trips, and the
token_bytes table that val_bpb divides by is right."""

from __future__ import annotations

import numpy as np
import pytest

from autoresearch.data.context import RunContext
from autoresearch.data.profiles import get_profile
from autoresearch.data.tokenizer import BOS_TOKEN, SPECIAL_TOKENS, Tokenizer, train_tokenizer
from autoresearch.errors import ArError

TRICKY = [
    "Hello world! Numbers: 123456789. Unicode: 你好",
    "emoji 😀🎉 family 👩‍👩‍👧‍👦 flag 🇫🇷",
    "日本語のテキストと中文字符，한국어 텍스트",
    "café naïve façade Ærøskøbing ß İstanbul",
    "combining: e\u0301 a\u0308 o\u0302\u0323 and zalgo Z\u0351\u036b\u0343",
    "whitespace   runs\t\t\ttabs\n\n\nnewlines\r\n crlf   \n  trailing   ",
    "",
    " ",
    "literal special text <|reserved_0|> stays text",
]


@pytest.fixture(scope="module")
def tok(tiny_data_ctx):
    return Tokenizer.load(tiny_data_ctx)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # The byte lengths of a text's tokens add up to its UTF-8 length, even where a
    # token holds only part of a multi-byte character.
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_batch_encode_matches_single(tok):
    batch = tok.encode(TRICKY, prepend_bos=True)
    assert batch == tok.encode_batch(TRICKY, prepend_bos=True)
    for text, ids in zip(TRICKY, batch):
        assert ids[0] == tok.bos_id
        assert ids[1:] == tok.encode(text)
        assert tok.decode(ids[1:]) == text


def test_vocab_size_is_exact_and_specials_are_last(tok):
    assert tok.vocab_size == 512
    assert tok.token_bytes.shape == (512,) and tok.token_bytes.dtype == np.int32
    specials = [tok.enc.encode_single_token(s) for s in SPECIAL_TOKENS]
    assert specials == list(range(512 - len(SPECIAL_TOKENS), 512))
    assert tok.bos_id == tok.enc.encode_single_token(BOS_TOKEN)


def test_token_bytes_match_decoding_and_specials_are_zero(tok):
    specials = {tok.enc.encode_single_token(s) for s in SPECIAL_TOKENS}
    for i in range(tok.vocab_size):
        if i in specials:
            assert tok.token_bytes[i] == 0
        else:
            assert tok.token_bytes[i] == len(tok.enc.decode_single_token_bytes(i)) > 0
    assert int((tok.token_bytes == 0).sum()) == len(SPECIAL_TOKENS)
    # Text that spells a special token is encoded as ordinary text, never as the token.
    assert not specials & set(tok.encode("<|reserved_0|>"))


def test_training_writes_exact_vocab_atomically(tmp_path):
    texts = [f"The {w} and the {w}s went {n} times round the {w}yard." for n in range(200) for w in ("cat", "dog", "owl")]
    seen = []
    out = tmp_path / "tok"
    train_tokenizer(iter(texts), 300, out, progress=lambda label, done, total: seen.append((label, done, total)))
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.npy", "tokenizer.pkl"]  # no temp files left
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.token_bytes.shape == (300,)
    assert tok.decode(tok.encode(texts[5])) == texts[5]
    assert ("training BPE", 1, 1) in seen
    assert ("reading texts for the tokenizer", len(texts), len(texts)) in seen


def test_corpus_too_small_for_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(ArError, match="too small for a 4096-token vocabulary"):
        train_tokenizer(["hello world"] * 5, 4096, tmp_path / "tok")
    assert not (tmp_path / "tok" / "tokenizer.pkl").exists()
    with pytest.raises(ArError, match="at least 260"):
        train_tokenizer(["hello"], 100, tmp_path / "tok")


def test_missing_tokenizer_names_the_prepare_command(tmp_path):
    ctx = RunContext(profile=get_profile("tiny"), source="builtin", time_budget=60.0, cache=tmp_path)
    with pytest.raises(ArError, match="ar prepare --source builtin --profile tiny"):
        Tokenizer.load(ctx)
    with pytest.raises(ArError, match="no tokenizer in"):
        Tokenizer.load(tmp_path / "nowhere")


def test_wrong_vocab_for_profile_is_refused(tiny_data_ctx, tmp_path):
    # A 300-token tokenizer sitting where the 512-token profile expects its tokenizer.
    ctx = RunContext(profile=tiny_data_ctx.profile, source="other", time_budget=5.0, cache=tmp_path)
    train_tokenizer(["the cat sat on the mat and the dog sat on the log"] * 50 + [str(i) for i in range(300)],
                    260, ctx.tokenizer_dir)
    with pytest.raises(ArError, match="needs 512"):
        Tokenizer.load(ctx)
