"""What `ar prepare` leaves in the cache, as far as the readiness check looks: for tests
whose training script is a fake that never reads the data."""

from __future__ import annotations

from pathlib import Path


def fake_prepared_data(cache: Path, source: str = "builtin", vocab: int = 2048) -> None:
    d = cache / "data" / source
    d.mkdir(parents=True)
    for i in range(2):
        (d / f"shard_{i:05d}.parquet").write_bytes(b"")
    (d / ".complete").write_text("")
    t = cache / "tokenizers" / f"{source}-v{vocab}"
    t.mkdir(parents=True)
    (t / "tokenizer.pkl").write_bytes(b"")
