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
    # Data only, no pickle, and no temp files left.
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.npy", "tokenizer.json", "tokenizer.tiktoken"]
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.token_bytes.shape == (300,)
    assert tok.decode(tok.encode(texts[5])) == texts[5]
    assert ("training BPE", 1, 1) in seen
    assert ("reading texts for the tokenizer", len(texts), len(texts)) in seen


def test_corpus_too_small_for_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(ArError, match="too small for a 4096-token vocabulary"):
        train_tokenizer(["hello world"] * 5, 4096, tmp_path / "tok")
    assert not (tmp_path / "tok" / "tokenizer.json").exists()
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


# --------------------------------------------------------------------------- stored as data, never as a pickle

import base64  # noqa: E402
import pickle  # noqa: E402

from autoresearch.data.tokenizer import parse_ranks  # noqa: E402


class Payload:
    """Unpickling this creates `marker`: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def trained(folder):
    texts = [f"The {w} and the {w}s went {n} times round the {w}yard." for n in range(200) for w in ("cat", "dog", "owl")]
    train_tokenizer(iter(texts), 300, folder)
    return texts


def test_round_trip_from_the_data_files(tmp_path):
    texts = trained(tmp_path / "tok")
    lines = (tmp_path / "tok" / "tokenizer.tiktoken").read_bytes().splitlines()
    assert len(lines) == 300 - len(SPECIAL_TOKENS)
    # tiktoken's .tiktoken format: "base64(token bytes) rank", in rank order.
    assert [int(line.split()[1]) for line in lines] == list(range(len(lines)))
    assert [base64.b64decode(line.split()[0]) for line in lines[:256]] == [bytes([b]) for b in range(256)]
    tok, again = Tokenizer.load(tmp_path / "tok"), Tokenizer.load(tmp_path / "tok")
    assert parse_ranks(b"\n".join(lines)) == {tok.enc.decode_single_token_bytes(i): i for i in range(len(lines))}
    meta = (tmp_path / "tok" / "tokenizer.json").read_text()
    assert '"vocab_size": 300' in meta and "<|reserved_0|>" in meta
    assert tok.fingerprint == again.fingerprint
    for text in texts[:5] + TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert not list((tmp_path / "tok").glob("*.pkl"))


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    ctx = RunContext(profile=get_profile("tiny"), source="builtin", time_budget=60.0, cache=tmp_path)
    folder = ctx.tokenizer_dir
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (folder / "tokenizer.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (folder / "token_bytes.npy").write_bytes(b"")
    ctx.data_dir.mkdir(parents=True)  # the data is there: only the tokenizer is old
    for name in ("shard_00000.parquet", "shard_00001.parquet", ".complete"):
        (ctx.data_dir / name).write_bytes(b"")
    for load in (lambda: Tokenizer.load(ctx), lambda: Tokenizer.load(folder), ctx.check_prepared):
        with pytest.raises(ArError, match="pickle from an older ar.*run: ar prepare --source builtin --profile tiny$"):
            load()
    # Next to a real tokenizer, the pickle is simply ignored.
    trained(folder)
    (folder / "tokenizer.pkl").write_bytes(pickle.dumps(Payload(marker)))
    Tokenizer.load(folder)
    assert not marker.exists()


def test_a_pickle_inside_token_bytes_is_refused(tmp_path):
    trained(tmp_path / "tok")
    marker = tmp_path / "pwned"
    np.save(tmp_path / "tok" / "token_bytes.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ArError, match="is unreadable .*run: ar prepare"):
        Tokenizer.load(tmp_path / "tok")
    assert not marker.exists()


@pytest.mark.parametrize("name,damage,message", [
    ("tokenizer.tiktoken", lambda b: b.replace(b" 7\n", b" 9999\n", 1), "the ranks are not 0 .. n-1"),
    ("tokenizer.tiktoken", lambda b: b + b"!!notbase64 300\n", "is not 'base64-token rank'"),
    ("tokenizer.json", lambda b: b.replace(b'"vocab_size": 300', b'"vocab_size": 301'), "vocab_size 301"),
    ("tokenizer.json", lambda b: b[:10], "is unreadable"),
])
def test_damaged_tokenizer_files_are_clear_errors(tmp_path, name, damage, message):
    trained(tmp_path / "builtin-v300")
    path = tmp_path / "builtin-v300" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ArError, match=message) as err:
        Tokenizer.load(tmp_path / "builtin-v300")
    assert "run: ar prepare" in str(err.value)


def test_token_bytes_that_disagree_with_the_tokens_are_refused(tmp_path):
    trained(tmp_path / "tok")
    table = np.load(tmp_path / "tok" / "token_bytes.npy")
    table[100] += 1  # would skew every val_bpb
    np.save(tmp_path / "tok" / "token_bytes.npy", table)
    with pytest.raises(ArError, match="token_bytes.npy does not match the tokenizer's tokens"):
        Tokenizer.load(tmp_path / "tok")
