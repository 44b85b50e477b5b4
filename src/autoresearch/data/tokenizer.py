"""BPE tokenizer: trained with rustbpe, run with tiktoken.

Files in a tokenizer folder (cache.tokenizer_dir):
    tokenizer.pkl    the tiktoken.Encoding constructor arguments (a dict), pickled
    token_bytes.npy  int32, per token id: its length in UTF-8 bytes (0 for special
                     tokens); evaluate_bpb divides nats by these to get bits per byte

The split pattern, the four reserved special tokens and the BOS choice follow the
upstream karpathy/autoresearch prepare.py (GPT-4 style pattern with \\p{N}{1,2}).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import ArError
from . import integrity
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

PKL_NAME = "tokenizer.pkl"
TOKEN_BYTES_NAME = "token_bytes.npy"
_ENCODING_NAME = "autoresearch-bpe"
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _token_bytes_table(enc: tiktoken.Encoding) -> np.ndarray:
    # Raw token bytes, not len(decode(...).encode()): a token holding half of a
    # multi-byte character would otherwise count as a 3-byte replacement character,
    # and the per-token lengths would no longer sum to the text's byte length.
    special_ids = {enc.encode_single_token(t) for t in enc.special_tokens_set}
    table = np.zeros(enc.n_vocab, dtype=np.int32)
    for i in range(enc.n_vocab):
        if i not in special_ids:
            table[i] = len(enc.decode_single_token_bytes(i))
    return table


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path,
    progress: ProgressFn | None = None,
) -> None:
    """Train a BPE of exactly `vocab_size` tokens (special tokens included) on `texts`
    and write tokenizer.pkl and token_bytes.npy into `out_dir`."""
    import rustbpe
    import tiktoken

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
    args = {
        "name": _ENCODING_NAME,
        "pat_str": bpe.get_pattern(),
        "mergeable_ranks": ranks,
        "special_tokens": {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)},
    }
    enc = tiktoken.Encoding(**args)
    table = _token_bytes_table(enc)
    # token_bytes first: the presence of tokenizer.pkl is what marks the folder ready.
    _atomic_write(out_dir / TOKEN_BYTES_NAME, lambda f: np.save(f, table))
    _atomic_write(out_dir / PKL_NAME, lambda f: pickle.dump(args, f, protocol=pickle.HIGHEST_PROTOCOL))
    progress("training BPE", 1, 1)


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Tokenizer:
    """A trained tokenizer: encode/decode, the BOS id and the token_bytes table."""

    def __init__(self, enc: tiktoken.Encoding, token_bytes: np.ndarray):
        self.enc = enc
        self.bos_id: int = enc.encode_single_token(BOS_TOKEN)
        self.vocab_size: int = enc.n_vocab
        # A read-only copy, registered: evaluate_bpb divides by these lengths and checks
        # that they are still the ones loaded.
        self.token_bytes: np.ndarray = np.array(token_bytes, dtype=np.int32)
        self.token_bytes.flags.writeable = False
        integrity.register_array(self.token_bytes)

    @classmethod
    def load(cls, ctx_or_dir: Union[RunContext, str, Path]) -> Tokenizer:
        """Load from a RunContext (its profile's tokenizer) or a tokenizer folder."""
        import tiktoken

        from .context import RunContext

        ctx = ctx_or_dir if isinstance(ctx_or_dir, RunContext) else None
        folder = ctx.tokenizer_dir if ctx else Path(ctx_or_dir)
        pkl, tb = folder / PKL_NAME, folder / TOKEN_BYTES_NAME
        if not (pkl.is_file() and tb.is_file()):
            fix = f"run: {ctx.prepare_command()}" if ctx else "train one with train_tokenizer() or `ar prepare`"
            raise ArError(f"no tokenizer in {folder}; {fix}")
        try:
            with open(pkl, "rb") as f:
                obj: Any = pickle.load(f)
            enc = obj if isinstance(obj, tiktoken.Encoding) else tiktoken.Encoding(**obj)
            token_bytes = np.load(tb)
        except (OSError, ValueError, TypeError, pickle.UnpicklingError, EOFError) as e:
            raise ArError(f"the tokenizer in {folder} is unreadable ({e}); delete the folder and prepare again") from None
        if token_bytes.shape != (enc.n_vocab,):
            raise ArError(f"{tb} does not match the tokenizer ({token_bytes.shape[0]} vs {enc.n_vocab} tokens); delete {folder} and prepare again")
        if ctx is not None and enc.n_vocab != ctx.VOCAB_SIZE:
            raise ArError(
                f"the tokenizer in {folder} has {enc.n_vocab} tokens but profile {ctx.profile.name!r} needs "
                f"{ctx.VOCAB_SIZE}; delete the folder and run: {ctx.prepare_command()}"
            )
        return cls(enc, token_bytes.astype(np.int32, copy=False))

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


integrity.protect_module(sys.modules[__name__])
