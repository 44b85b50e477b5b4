"""The fixed constants that judge every experiment, as named profiles.

A workspace records its profile once (in .autoresearch/config.toml), so every
experiment of one research run is judged by exactly the same constants. The
research agent never edits this file.

The "datacenter" profile holds the upstream constants (tuned for an H100):
MAX_SEQ_LEN 2048, TIME_BUDGET 300 s, EVAL_TOKENS 40*524288, VOCAB_SIZE 8192.
Smaller machines get shorter sequences, fewer eval tokens, a smaller vocabulary
and a lower-entropy dataset, as the upstream author recommends for laptops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ArError


@dataclass(frozen=True)
class Profile:
    name: str
    max_seq_len: int  # context length of every training and evaluation row
    time_budget: int  # seconds of training (wall clock, start-up excluded)
    eval_tokens: int  # validation tokens that val_bpb is averaged over
    vocab_size: int  # BPE vocabulary, special tokens included
    source: str  # the dataset `ar prepare` fetches by default
    description: str

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="datacenter",
            max_seq_len=2048,
            time_budget=300,
            eval_tokens=40 * 524288,
            vocab_size=8192,
            source="climbmix",
            description="NVIDIA data-centre GPUs (H100/H200/A100): the upstream constants",
        ),
        Profile(
            name="laptop",
            max_seq_len=512,
            time_budget=300,
            eval_tokens=2 * 524288,
            vocab_size=4096,
            source="tinystories",
            description="Apple Silicon laptops and consumer GPUs: TinyStories, shorter context",
        ),
        Profile(
            name="tiny",
            max_seq_len=256,
            time_budget=60,
            eval_tokens=128 * 256,
            vocab_size=2048,
            source="builtin",
            description="plain CPUs, CI and smoke tests: the offline built-in corpus",
        ),
    )
}

DEFAULT_PROFILE = "tiny"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ArError(f"unknown profile {name!r}; choose one of: {known}") from None
