"""What `ar prepare` leaves in the cache, as far as the readiness and digest checks look:
for tests whose training script is a fake that never reads the data."""

from __future__ import annotations

from pathlib import Path

from autoresearch.data.digests import record_digests


def fake_prepared_data(cache: Path, source: str = "builtin", vocab: int = 2048) -> None:
    d = cache / "data" / source
    d.mkdir(parents=True)
    for i in range(2):
        (d / f"shard_{i:05d}.parquet").write_bytes(b"")
    (d / ".complete").write_text("")
    record_digests(d)
    t = cache / "tokenizers" / f"{source}-v{vocab}"
    t.mkdir(parents=True)
    (t / "tokenizer.json").write_bytes(b"")
    record_digests(t)
