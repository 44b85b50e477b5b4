"""BPE tokenizer: trained with rustbpe, run with tiktoken, stored as plain data.

Files in a tokenizer folder (cache.tokenizer_dir), written in this order:
    tokenizer.tiktoken  the mergeable ranks, one "base64(token bytes) rank" line per
                        token, rank order (tiktoken's .tiktoken format)
    token_bytes.npy     int32, per token id: its length in UTF-8 bytes (0 for special
                        tokens); evaluate_bpb divides nats by these to get bits per byte
    tokenizer.json      name, split pattern, special tokens and vocab size; written
                        last, so its presence marks the folder ready

Nothing here is a pickle: a training script may have rewritten these files, and
loading them must not run code. Older versions wrote tokenizer.pkl; it is never
loaded, the error says which `ar prepare` rebuilds the folder.

The split pattern, the four reserved special tokens and the BOS choice follow the
upstream karpathy/autoresearch prepare.py (GPT-4 style pattern with \\p{N}{1,2}).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from ..errors import ArError
from .cache import LEGACY_PICKLE_NAME, RANKS_NAME, TOKEN_BYTES_NAME, TOKENIZER_META_NAME, atomic_write
from .progress import ProgressFn, no_progress

if TYPE_CHECKING:
    import tiktoken

    from .context import RunContext

# Source: karpathy/autoresearch prepare.py (GPT-4 split pattern, numbers in groups of 1-2).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]

META_FORMAT = 1  # tokenizer.json "format"; bump when the files change meaning
_ENCODING_NAME = "autoresearch-bpe"
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials


def dump_ranks(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's .tiktoken format (as tiktoken.load.dump_tiktoken_bpe writes it)."""
    return b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n"
                    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """Read the .tiktoken format strictly. Not tiktoken.load.load_tiktoken_bpe: that one
    reads through a shared cache in the temp folder (keyed by the path, trusted without a
    hash), and checks nothing. Raises ValueError naming the bad line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            tok, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise ValueError(f"line {n} is not 'base64-token rank'") from None
        if tok in ranks:
            raise ValueError(f"line {n} repeats a token")
        ranks[tok] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("the ranks are not 0 .. n-1, each once")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("a single byte has no token (text holding it could not be encoded)")
    return ranks


def token_bytes_table(ranks: dict[bytes, int], n_vocab: int) -> np.ndarray:
    # Raw token bytes, not len(decode(...).encode()): a token holding half of a
    # multi-byte character would otherwise count as a 3-byte replacement character,
    # and the per-token lengths would no longer sum to the text's byte length.
    # Ids past the ranks are the special tokens: 0 bytes of text.
    table = np.zeros(n_vocab, dtype=np.int32)
    for tok, rank in ranks.items():
        table[rank] = len(tok)
    return table


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path,
    progress: ProgressFn | None = None,
) -> None:
    """Train a BPE of exactly `vocab_size` tokens (special tokens included) on `texts`
    and write tokenizer.tiktoken, token_bytes.npy and tokenizer.json into `out_dir`."""
    import rustbpe

    progress = progress or no_progress
    if vocab_size < _MIN_VOCAB:
        raise ArError(f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def counted(it: Iterable[str]) -> Iterator[str]:
        n = 0
        for n, text in enumerate(it, 1):
            yield text
            if n % 1000 == 0:
                progress("reading texts for the tokenizer", n, None)
        progress("reading texts for the tokenizer", n, n)

    progress("training BPE", 0, 1)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(counted(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    if len(ranks) + len(SPECIAL_TOKENS) != vocab_size:
        # rustbpe stops early when no pair occurs twice: the corpus is too small.
        raise ArError(
            f"the training text is too small for a {vocab_size}-token vocabulary (only "
            f"{len(ranks) + len(SPECIAL_TOKENS)} tokens could be learned); use more text or a smaller vocabulary"
        )
    meta = {
        "format": META_FORMAT,
        "name": _ENCODING_NAME,
        "pat_str": bpe.get_pattern(),
        "special_tokens": {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)},
        "vocab_size": vocab_size,
    }
    _encoding(meta, ranks)  # what load() will build: fail here rather than at the first run
    buf = io.BytesIO()
    np.save(buf, token_bytes_table(ranks, vocab_size), allow_pickle=False)
    # tokenizer.json last: its presence is what marks the folder ready.
    (out_dir / TOKENIZER_META_NAME).unlink(missing_ok=True)
    atomic_write(out_dir / RANKS_NAME, dump_ranks(ranks))
    atomic_write(out_dir / TOKEN_BYTES_NAME, buf.getvalue())
    atomic_write(out_dir / TOKENIZER_META_NAME, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    (out_dir / LEGACY_PICKLE_NAME).unlink(missing_ok=True)  # no pickle stays next to the data
    progress("training BPE", 1, 1)


def _encoding(meta: object, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """The tiktoken.Encoding of tokenizer.json + the ranks; ValueError if they disagree."""
    import tiktoken

    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ValueError(f"{TOKENIZER_META_NAME} is not format {META_FORMAT}")
    pat, specials, n = meta.get("pat_str"), meta.get("special_tokens"), meta.get("vocab_size")
    if not isinstance(pat, str) or not isinstance(n, int):
        raise ValueError(f"{TOKENIZER_META_NAME} lacks pat_str or vocab_size")
    # The reserved tokens, right after the ranks: the BOS id and token_bytes depend on it.
    if specials != {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}:
        raise ValueError(f"the special tokens of {TOKENIZER_META_NAME} are not the reserved ones after the ranks")
    if n != len(ranks) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {n} is not the {len(ranks)} ranks plus {len(SPECIAL_TOKENS)} special tokens")
    return tiktoken.Encoding(name=str(meta.get("name") or _ENCODING_NAME), pat_str=pat, mergeable_ranks=ranks,
                             special_tokens=specials, explicit_n_vocab=n)


def prepare_command_for(folder: Path) -> str:
    """The `ar prepare` that builds a tokenizer folder, read from its name (<source>-v<vocab>)."""
    from .context import RunContext
    from .profiles import PROFILES

    m = re.fullmatch(r"(.+)-v(\d+)", Path(folder).name)
    if m:
        source, vocab = m.group(1), int(m.group(2))
        for p in sorted(PROFILES.values(), key=lambda p: p.source != source):  # the source's own profile first
            if p.vocab_size == vocab:
                ctx = RunContext(profile=p, source=source, time_budget=float(p.time_budget), cache=Path(folder).parent.parent)
                return ctx.prepare_command()
    return "ar prepare --source SOURCE --profile PROFILE (the ones that use this tokenizer)"


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Tokenizer:
    """A trained tokenizer: encode/decode, the BOS id and the token_bytes table."""

    def __init__(self, enc: tiktoken.Encoding, token_bytes: np.ndarray):
        self.enc = enc
        self.bos_id: int = enc.encode_single_token(BOS_TOKEN)
        self.vocab_size: int = enc.n_vocab
        # A read-only copy: val_bpb divides by these lengths.
        self.token_bytes: np.ndarray = np.array(token_bytes, dtype=np.int32)
        self.token_bytes.flags.writeable = False

    @classmethod
    def load(cls, ctx_or_dir: Union[RunContext, str, Path]) -> Tokenizer:
        """Load from a RunContext (its profile's tokenizer) or a tokenizer folder. Reads
        only data (JSON, base64 lines, a pickle-free .npy): never unpickles."""
        from .context import RunContext

        ctx = ctx_or_dir if isinstance(ctx_or_dir, RunContext) else None
        folder = ctx.tokenizer_dir if ctx else Path(ctx_or_dir)
        fix = ctx.prepare_command() if ctx else prepare_command_for(folder)
        if not (folder / TOKENIZER_META_NAME).is_file():
            if (folder / LEGACY_PICKLE_NAME).exists():
                raise ArError(
                    f"the tokenizer in {folder} is a pickle from an older ar, which is never loaded (a pickle can run code); "
                    f"rebuild it as data, run: {fix}"
                )
            raise ArError(f"no tokenizer in {folder}; run: {fix}")
        try:
            meta = json.loads((folder / TOKENIZER_META_NAME).read_text(encoding="utf-8"))
            ranks = parse_ranks((folder / RANKS_NAME).read_bytes())
            enc = _encoding(meta, ranks)
            token_bytes = np.load(folder / TOKEN_BYTES_NAME, allow_pickle=False)
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
            raise ArError(f"the tokenizer in {folder} is unreadable ({e}); run: {fix}") from None
        expected = token_bytes_table(ranks, enc.n_vocab)
        if token_bytes.shape != expected.shape or token_bytes.dtype.kind not in "iu" or not np.array_equal(token_bytes, expected):
            # val_bpb divides by these: a table that disagrees with the tokens would skew every result.
            raise ArError(f"{folder / TOKEN_BYTES_NAME} does not match the tokenizer's tokens; run: {fix}")
        if ctx is not None and enc.n_vocab != ctx.VOCAB_SIZE:
            raise ArError(
                f"the tokenizer in {folder} has {enc.n_vocab} tokens but profile {ctx.profile.name!r} needs "
                f"{ctx.VOCAB_SIZE}; run: {fix}"
            )
        return cls(enc, expected)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A content hash: equal for the same vocabulary (keys in-process caches)."""
        h = hashlib.sha1()
        for i in range(self.vocab_size):
            b = self.enc.decode_single_token_bytes(i)
            h.update(len(b).to_bytes(4, "little") + b)
        return h.hexdigest()

    def encode(self, text: str | list[str], prepend_bos: bool = False) -> list[int] | list[list[int]]:
        """Token ids of one text, or of each text of a list (special tokens are never parsed)."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return [self.bos_id, *ids] if prepend_bos else ids
        if isinstance(text, list):
            return self.encode_batch(text, prepend_bos=prepend_bos)
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def encode_batch(self, texts: list[str], prepend_bos: bool = False, num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts on tiktoken's thread pool (it releases the GIL)."""
        rows = self.enc.encode_ordinary_batch(texts, num_threads=num_threads or _default_threads())
        if prepend_bos:
            for row in rows:
                row.insert(0, self.bos_id)
        return rows

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])
