"""`ar prepare --profile laptop` fetches TinyStories through huggingface_hub from HF_ENDPOINT."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.data.cache import cache_root, list_shards
from autoresearch.data.sources import iter_shard_texts

TS = "/datasets/roneneldan/TinyStories/resolve/main"


def stories(n: int, seed: int) -> list[str]:
    """Varied made-up stories: enough distinct words for a real 4096-token vocabulary."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(2, 9)))  # noqa: E731
    return [f"Once upon a time {word()} met {word()}. " + " ".join(word() for _ in range(60)) + "." for _ in range(n)]


TRAIN = stories(600, seed=1)
VALID = stories(20, seed=2)

runner = CliRunner()


def story_file(stories: list[str]) -> bytes:
    return "".join(f"{s}\n<|endoftext|>\n" for s in stories).encode("utf-8")


@pytest.fixture
def tinystories_hub(http_files, monkeypatch):
    """A local Hub serving a small TinyStories, named by HF_ENDPOINT; the library does not wait between its retries."""
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)
    monkeypatch.setenv("HF_ENDPOINT", http_files.base)
    http_files.files[f"{TS}/TinyStoriesV2-GPT4-train.txt"] = story_file(TRAIN)
    http_files.files[f"{TS}/TinyStoriesV2-GPT4-valid.txt"] = story_file(VALID)
    return http_files


@pytest.fixture
def fast_retries(monkeypatch):
    from autoresearch.data import sources

    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF", 0.01)


def test_ar_prepare_laptop_downloads_tinystories_through_hf_endpoint(tinystories_hub, fast_retries, tmp_path):
    hub = tinystories_hub
    hub.plans[f"{TS}/TinyStoriesV2-GPT4-train.txt"] = ["500", "500"]  # a server that fails twice
    hub.plans[f"{TS}/TinyStoriesV2-GPT4-valid.txt"] = ["truncate"]  # and cuts a body short
    result = runner.invoke(app, ["prepare", "--profile", "laptop", "--num-shards", "2"])
    assert result.exit_code == 0, result.output
    assert "prepared source tinystories for profile laptop" in " ".join(result.stdout.split())
    shards = list_shards("tinystories")
    assert [t for s in shards[:-1] for t in iter_shard_texts(s)] == TRAIN
    assert list(iter_shard_texts(shards[-1])) == VALID  # whole: the cut body was fetched again
    assert hub.hits(f"{TS}/TinyStoriesV2-GPT4-train.txt") == 3
    assert (cache_root() / "tokenizers" / "tinystories-v4096" / "tokenizer.json").is_file()
    # The text files live in the shared Hugging Face cache (HF_HOME, isolated per test).
    assert list((tmp_path / "hf" / "hub").glob("datasets--roneneldan--TinyStories/snapshots/*/*.txt"))

    again = runner.invoke(app, ["prepare", "--profile", "laptop"])
    assert again.exit_code == 0 and "already prepared" in again.stdout


def test_a_missing_dataset_is_one_error_line(tinystories_hub):
    tinystories_hub.files.clear()
    result = runner.invoke(app, ["prepare", "--profile", "laptop"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dataset roneneldan/TinyStories not found" in lines[0] and "404" in lines[0], result.stderr


def test_a_refused_token_is_one_error_line(tinystories_hub):
    tinystories_hub.head_plans[f"{TS}/TinyStoriesV2-GPT4-train.txt"] = ["401"]
    result = runner.invoke(app, ["prepare", "--profile", "laptop"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HTTP 401" in lines[0] and "HF_TOKEN" in lines[0], result.stderr


def test_offline_mode_uses_the_hf_cache_and_says_when_it_lacks_a_file(tinystories_hub, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    result = runner.invoke(app, ["prepare", "--profile", "laptop"])
    assert result.exit_code == 1 and "HF_HUB_OFFLINE is set" in result.stderr
    assert tinystories_hub.requests == [] and tinystories_hub.heads == []
