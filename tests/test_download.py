"""The downloader against a local HTTP server: parallel, resumable, retried, validated."""

from __future__ import annotations

import os
import socket

import pytest

from autoresearch.data.download import DownloadJob, download_files
from autoresearch.errors import ArError

FAST = dict(backoff=0.01, timeout=5)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_parallel_download_is_byte_identical_and_reports_all_bytes(http_files, tmp_path):
    files = {f"/f{i}.bin": payload(50_000 + i * 1000, seed=i) for i in range(5)}
    http_files.files.update(files)
    calls = []
    jobs = [DownloadJob(http_files.url(p), tmp_path / "out" / p[1:]) for p in files]
    paths = download_files(jobs, workers=3, progress=lambda *a: calls.append(a), label="download test", **FAST)
    assert paths == [j.dest for j in jobs]
    for p, body in files.items():
        assert (tmp_path / "out" / p[1:]).read_bytes() == body
    assert leftovers(tmp_path) == []
    total = sum(len(b) for b in files.values())
    assert calls[-1] == ("download test", total, total)
    assert all(label == "download test" for label, _, _ in calls)


def test_server_errors_are_retried(http_files, tmp_path):
    body = payload(10_000)
    http_files.files["/a.bin"] = body
    http_files.plans["/a.bin"] = ["500", "429"]
    (dest,) = download_files([DownloadJob(http_files.url("/a.bin"), tmp_path / "a.bin")], **FAST)
    assert dest.read_bytes() == body
    assert http_files.hits("/a.bin") == 3
    assert leftovers(tmp_path) == []


def test_truncated_body_is_resumed_with_range(http_files, tmp_path):
    body = payload(64_000)
    http_files.files["/t.bin"] = body
    http_files.plans["/t.bin"] = ["truncate"]
    (dest,) = download_files([DownloadJob(http_files.url("/t.bin"), tmp_path / "t.bin")], **FAST)
    assert dest.read_bytes() == body
    assert http_files.requests == [("/t.bin", None), ("/t.bin", f"bytes={len(body) // 2}-")]
    assert leftovers(tmp_path) == []


def test_redirects_are_followed_and_keep_the_range_header(http_files, tmp_path):
    body = payload(40_000)
    http_files.files["/h.bin"] = body
    http_files.plans["/h.bin"] = ["302", "truncate", "302"]
    (dest,) = download_files([DownloadJob(http_files.url("/h.bin"), tmp_path / "h.bin")], **FAST)
    assert dest.read_bytes() == body
    assert http_files.requests[-1] == ("/h.bin", f"bytes={len(body) // 2}-")


def test_a_server_that_ignores_range_makes_it_start_over(http_files, tmp_path):
    body = payload(64_000)
    http_files.files["/n.bin"] = body
    http_files.plans["/n.bin"] = ["truncate", "norange"]
    (dest,) = download_files([DownloadJob(http_files.url("/n.bin"), tmp_path / "n.bin")], **FAST)
    assert dest.read_bytes() == body  # not the first half twice
    assert http_files.hits("/n.bin") == 2


def test_a_partial_tmp_from_an_earlier_run_is_resumed(http_files, tmp_path):
    body = payload(30_000)
    http_files.files["/r.bin"] = body
    dest = tmp_path / "r.bin"
    (tmp_path / "r.bin.tmp").write_bytes(body[:12_345])
    download_files([DownloadJob(http_files.url("/r.bin"), dest)], **FAST)
    assert dest.read_bytes() == body
    assert http_files.requests == [("/r.bin", "bytes=12345-")]


def test_existing_files_are_skipped(http_files, tmp_path):
    http_files.files["/s.bin"] = payload(100)
    dest = tmp_path / "s.bin"
    dest.write_bytes(b"already here")
    calls = []
    assert download_files([DownloadJob(http_files.url("/s.bin"), dest)], progress=lambda *a: calls.append(a), **FAST) == [dest]
    assert dest.read_bytes() == b"already here"
    assert http_files.requests == []
    assert calls[-1][1:] == (12, 12)


def test_404_fails_at_once_naming_the_url(http_files, tmp_path):
    url = http_files.url("/missing.bin")
    with pytest.raises(ArError, match="missing.bin.*404"):
        download_files([DownloadJob(url, tmp_path / "m.bin")], retries=5, **FAST)
    assert http_files.hits("/missing.bin") == 1
    assert not (tmp_path / "m.bin").exists()


def test_persistent_failure_raises_after_the_retries(http_files, tmp_path):
    http_files.files["/bad.bin"] = payload(100)
    http_files.plans["/bad.bin"] = ["500"] * 10
    url = http_files.url("/bad.bin")
    with pytest.raises(ArError) as err:
        download_files([DownloadJob(url, tmp_path / "bad.bin")], retries=2, **FAST)
    assert url in str(err.value) and "HTTP 500" in str(err.value) and "3 attempts" in str(err.value)
    assert http_files.hits("/bad.bin") == 3
    assert not (tmp_path / "bad.bin").exists()


def test_one_failure_fails_the_batch_but_keeps_finished_files(http_files, tmp_path):
    http_files.files["/good.bin"] = payload(1000)
    jobs = [DownloadJob(http_files.url("/good.bin"), tmp_path / "good.bin"), DownloadJob(http_files.url("/nope"), tmp_path / "nope")]
    with pytest.raises(ArError, match="/nope"):
        download_files(jobs, workers=1, **FAST)
    assert (tmp_path / "good.bin").read_bytes() == payload(1000)


def test_invalid_content_is_fetched_again(http_files, tmp_path):
    body = payload(5000)
    http_files.files["/v.bin"] = body
    http_files.plans["/v.bin"] = ["garbage"]

    def validate(path):
        if path.read_bytes() != body:
            raise ValueError("bad footer")
        assert path.name.endswith(".tmp")  # validated before the rename

    (dest,) = download_files([DownloadJob(http_files.url("/v.bin"), tmp_path / "v.bin")], validate=validate, **FAST)
    assert dest.read_bytes() == body
    assert http_files.hits("/v.bin") == 2
    # The rejected file was removed, so the second request was a fresh one, not a resume.
    assert http_files.requests[1] == ("/v.bin", None)


def test_content_that_never_validates_is_an_error_without_files_left(http_files, tmp_path):
    http_files.files["/x.bin"] = payload(500)

    def validate(path):
        raise ValueError("Parquet magic bytes not found")

    with pytest.raises(ArError, match="validation: Parquet magic bytes"):
        download_files([DownloadJob(http_files.url("/x.bin"), tmp_path / "x.bin")], validate=validate, retries=1, **FAST)
    assert os.listdir(tmp_path) == []


def test_refused_connection_is_retried_then_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(ArError, match="2 attempts"):
        download_files([DownloadJob(url, tmp_path / "f.bin")], retries=1, **FAST)
