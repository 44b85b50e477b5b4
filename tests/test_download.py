"""The Hugging Face downloader against a local Hub-like server: parallel, retried, validated."""

from __future__ import annotations

import os
import socket

import pytest

from autoresearch.data.download import HfFile, fetch_files
from autoresearch.errors import ArError

FAST = dict(backoff=0.01)
REPO = "someone/data"
BASE = f"/datasets/{REPO}/resolve/main"


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    """huggingface_hub sleeps (1 s, 2 s, ...) between its own retries: not in tests."""
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)


@pytest.fixture
def hub(http_files, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", http_files.base)
    return http_files


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".incomplete")))


def test_parallel_download_is_byte_identical_and_reports_all_bytes(hub, tmp_path):
    files = {f"f{i}.bin": payload(50_000 + i * 1000, seed=i) for i in range(5)}
    for name, body in files.items():
        hub.files[f"{BASE}/{name}"] = body
    calls = []
    wanted = [HfFile(REPO, name, dest=tmp_path / "out" / name) for name in files]
    paths = fetch_files(wanted, workers=3, progress=lambda *a: calls.append(a), label="download test", **FAST)
    assert paths == [f.dest for f in wanted]
    for name, body in files.items():
        assert (tmp_path / "out" / name).read_bytes() == body
    assert leftovers(tmp_path) == []
    total = sum(len(b) for b in files.values())
    assert calls[-1] == ("download test", total, total)
    assert all(label == "download test" for label, _, _ in calls)


def test_without_dest_the_file_is_used_from_the_shared_hf_cache(hub, tmp_path):
    hub.files[f"{BASE}/c.txt"] = b"cached text"
    (path,) = fetch_files([HfFile(REPO, "c.txt")], **FAST)
    assert path.read_bytes() == b"cached text"
    assert str(path).startswith(str(tmp_path / "hf" / "hub"))  # HF_HUB_CACHE, isolated per test
    assert fetch_files([HfFile(REPO, "c.txt")], **FAST) == [path]
    assert hub.hits(f"{BASE}/c.txt") == 1  # the second call found it in the cache


def test_autoresearch_hf_endpoint_is_an_alias_of_hf_endpoint(http_files, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_ENDPOINT", http_files.base + "/")
    http_files.files[f"{BASE}/a.txt"] = b"via the alias"
    (dest,) = fetch_files([HfFile(REPO, "a.txt", dest=tmp_path / "a.txt")], **FAST)
    assert dest.read_bytes() == b"via the alias"


def test_server_errors_are_retried(hub, tmp_path):
    body = payload(10_000)
    hub.files[f"{BASE}/a.bin"] = body
    hub.plans[f"{BASE}/a.bin"] = ["500", "500"]
    (dest,) = fetch_files([HfFile(REPO, "a.bin", dest=tmp_path / "a.bin")], **FAST)
    assert dest.read_bytes() == body
    assert hub.hits(f"{BASE}/a.bin") == 3
    assert leftovers(tmp_path) == []


def test_a_hub_whose_metadata_requests_fail_twice_is_retried(hub, tmp_path):
    hub.files[f"{BASE}/m.bin"] = b"metadata first"
    hub.head_plans[f"{BASE}/m.bin"] = ["500", "503"]
    (dest,) = fetch_files([HfFile(REPO, "m.bin", dest=tmp_path / "m.bin")], **FAST)
    assert dest.read_bytes() == b"metadata first"
    assert len(hub.heads) == 3


def test_truncated_body_is_resumed_with_range(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "DOWNLOAD_CHUNK_SIZE", 1000)  # it writes (and resumes) whole chunks: 10 MB by default
    body = payload(64_000)
    hub.files[f"{BASE}/t.bin"] = body
    hub.plans[f"{BASE}/t.bin"] = ["truncate"]
    (dest,) = fetch_files([HfFile(REPO, "t.bin", dest=tmp_path / "t.bin")], **FAST)
    assert dest.read_bytes() == body
    assert hub.requests == [(f"{BASE}/t.bin", None), (f"{BASE}/t.bin", f"bytes={len(body) // 2}-")]
    assert leftovers(tmp_path) == []


def test_a_server_that_ignores_range_makes_it_start_over(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "DOWNLOAD_CHUNK_SIZE", 1000)
    body = payload(64_000)
    hub.files[f"{BASE}/n.bin"] = body
    hub.plans[f"{BASE}/n.bin"] = ["truncate", "norange"]
    (dest,) = fetch_files([HfFile(REPO, "n.bin", dest=tmp_path / "n.bin")], **FAST)
    assert dest.read_bytes() == body  # not the first half twice
    assert hub.hits(f"{BASE}/n.bin") == 2


def test_redirects_are_followed(hub, tmp_path):
    body = payload(40_000)
    hub.files[f"{BASE}/h.bin"] = body
    hub.plans[f"{BASE}/h.bin"] = ["302"]
    (dest,) = fetch_files([HfFile(REPO, "h.bin", dest=tmp_path / "h.bin")], **FAST)
    assert dest.read_bytes() == body


def test_existing_files_are_skipped_without_asking_the_server(hub, tmp_path):
    hub.files[f"{BASE}/s.bin"] = payload(100)
    dest = tmp_path / "s.bin"
    dest.write_bytes(b"already here")
    calls = []
    assert fetch_files([HfFile(REPO, "s.bin", dest=dest)], progress=lambda *a: calls.append(a), **FAST) == [dest]
    assert dest.read_bytes() == b"already here"
    assert hub.requests == [] and hub.heads == []
    assert calls[-1][1:] == (12, 12)


def test_a_missing_file_fails_at_once_naming_it(hub, tmp_path):
    hub.files[f"{BASE}/other.bin"] = b"x"
    with pytest.raises(ArError, match=f"missing.bin not found in dataset {REPO}.*404"):
        fetch_files([HfFile(REPO, "missing.bin", dest=tmp_path / "m.bin")], retries=5, **FAST)
    assert hub.heads == [f"{BASE}/missing.bin"]
    assert not (tmp_path / "m.bin").exists()


def test_a_missing_dataset_fails_at_once_naming_it(hub, tmp_path):
    with pytest.raises(ArError, match="dataset nobody/nothing not found at .*404"):
        fetch_files([HfFile("nobody/nothing", "x.bin")], retries=5, **FAST)
    assert len(hub.heads) == 1


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_token_says_to_set_hf_token(hub, tmp_path, status):
    hub.files[f"{BASE}/g.bin"] = b"gated"
    hub.head_plans[f"{BASE}/g.bin"] = [status] * 10
    with pytest.raises(ArError, match=f"refused access.*HTTP {status}.*HF_TOKEN"):
        fetch_files([HfFile(REPO, "g.bin")], retries=5, **FAST)
    assert hub.requests == []


def test_the_token_is_sent(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    seen = []
    hub.files[f"{BASE}/p.bin"] = b"private"
    original = hub.httpd.RequestHandlerClass.do_HEAD

    def spy(handler):
        seen.append(handler.headers.get("Authorization"))
        original(handler)

    monkeypatch.setattr(hub.httpd.RequestHandlerClass, "do_HEAD", spy)
    fetch_files([HfFile(REPO, "p.bin")], **FAST)
    assert seen == ["Bearer hf_secret"]


def test_persistent_failure_raises_after_the_retries(hub, tmp_path):
    hub.files[f"{BASE}/bad.bin"] = payload(100)
    hub.plans[f"{BASE}/bad.bin"] = ["500"] * 10
    with pytest.raises(ArError) as err:
        fetch_files([HfFile(REPO, "bad.bin", dest=tmp_path / "bad.bin")], retries=2, **FAST)
    message = str(err.value)
    assert f"{hub.base}{BASE}/bad.bin" in message and "HTTP 500" in message and "3 attempts" in message
    assert "\n" not in message
    assert hub.hits(f"{BASE}/bad.bin") == 3
    assert not (tmp_path / "bad.bin").exists()


def test_one_failure_fails_the_batch_but_keeps_finished_files(hub, tmp_path):
    hub.files[f"{BASE}/good.bin"] = payload(1000)
    wanted = [HfFile(REPO, "good.bin", dest=tmp_path / "good.bin"), HfFile(REPO, "nope", dest=tmp_path / "nope")]
    with pytest.raises(ArError, match="nope"):
        fetch_files(wanted, workers=1, **FAST)
    assert (tmp_path / "good.bin").read_bytes() == payload(1000)


def test_invalid_content_is_fetched_again(hub, tmp_path):
    body = payload(5000)
    hub.files[f"{BASE}/v.bin"] = body
    hub.plans[f"{BASE}/v.bin"] = ["garbage"]
    checked = []

    def validate(path):
        checked.append(path)
        if path.read_bytes() != body:
            raise ValueError("bad footer")

    (dest,) = fetch_files([HfFile(REPO, "v.bin", dest=tmp_path / "v.bin")], validate=validate, **FAST)
    assert dest.read_bytes() == body
    assert hub.hits(f"{BASE}/v.bin") == 2
    assert all(p != dest for p in checked)  # validated before it was put in place


def test_content_that_never_validates_is_an_error_without_files_left(hub, tmp_path):
    hub.files[f"{BASE}/x.bin"] = payload(500)

    def validate(path):
        raise ValueError("Parquet magic bytes not found")

    with pytest.raises(ArError, match="validation: Parquet magic bytes"):
        fetch_files([HfFile(REPO, "x.bin", dest=tmp_path / "out" / "x.bin")], validate=validate, retries=1, **FAST)
    assert not (tmp_path / "out").exists()
    blobs = [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert blobs == []  # the rejected file does not stay in the shared cache either


def test_a_hub_that_cannot_be_reached_is_reported_in_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ArError, match=f"cannot reach http://127.0.0.1:{port}{BASE}/f.bin") as err:
        fetch_files([HfFile(REPO, "f.bin", dest=tmp_path / "f.bin")], retries=1, **FAST)
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "f.bin")
