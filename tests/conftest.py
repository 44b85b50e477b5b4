"""Shared fixtures: no test touches the user's home directory or inherits their settings."""

from __future__ import annotations

import pytest

_ENV = (
    "AUTORESEARCH_PROFILE",
    "AUTORESEARCH_SOURCE",
    "AUTORESEARCH_TIME_BUDGET",
    "AUTORESEARCH_BACKEND",
    "AUTORESEARCH_HF_ENDPOINT",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Point the cache at a tmp dir and clear every autoresearch setting."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    # huggingface_hub reads its cache folder once, at import: point both it and any
    # subprocess at a tmp dir, so no test reads or fills the user's Hugging Face cache.
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    yield


class FileServer:
    """A local HTTP server for download tests: serves `files` (URL path -> bytes).

    It answers like the Hugging Face Hub, for huggingface_hub: a HEAD request gets the
    file's size, an ETag and an X-Repo-Commit header; a 404 says X-Error-Code
    RepoNotFound (no file under that /resolve/ prefix) or EntryNotFound.

    `plans[path]` is a list of behaviours, one consumed per GET request before the normal
    answer: "500", "429", "truncate" (Content-Length of the whole file, half the bytes),
    "norange" (ignore a Range header), "garbage" (200 with other bytes of the same
    length), "302" (redirect to the same path with a query string). `head_plans[path]`
    does the same for HEAD requests, with any status code ("500", "401", "403").
    Range requests are honoured (206) otherwise; unknown paths are 404. Every GET is
    recorded in `requests` as (path, Range header or None), every HEAD in `heads`.
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}
        self.head_plans: dict[str, list[str]] = {}
        self.requests: list[tuple[str, object]] = []
        self.heads: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def not_found(self, path: str) -> None:
                prefix = path.split("/resolve/")[0] + "/resolve/"
                known = any(p.startswith(prefix) for p in server.files)
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
                self.send_header("X-Repo-Commit", server.COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                import hashlib

                path = self.path.split("?")[0]
                server.heads.append(path)
                plan = server.head_plans.get(path)
                if plan:
                    self.send_response(int(plan.pop(0)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in server.files:
                    self.not_found(path)
                    return
                body = server.files[path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"%s"' % hashlib.sha256(body).hexdigest())
                self.send_header("X-Repo-Commit", server.COMMIT)
                self.end_headers()

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                if path not in server.files:
                    self.not_found(path)
                    return
                body = server.files[path]
                plan = server.plans.get(path)
                step = plan.pop(0) if plan else "ok"
                if step in ("500", "429"):
                    self.send_error(int(step))
                    return
                if step == "302":  # like Hugging Face's resolve URLs, which redirect to a CDN
                    self.send_response(302)
                    self.send_header("Location", path + "?redirected")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if step == "garbage":  # as long as the file, so only validation can tell
                    body = (b"not what you asked for" * (len(body) // 22 + 1))[: len(body)]
                if step == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                start = 0
                if rng and step not in ("norange", "garbage") and rng.startswith("bytes="):
                    start = int(rng[len("bytes=") :].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_files():
    """A FileServer on 127.0.0.1 for the duration of one test."""
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_data_ctx(tmp_path_factory):
    """A prepared cache built once per session from the built-in corpus (3 training
    shards, 1 validation shard, a 512-token tokenizer) and a RunContext on it with a
    test profile: MAX_SEQ_LEN 64, EVAL_TOKENS 2048, VOCAB_SIZE 512."""
    import gzip
    import json
    from importlib import resources

    import pyarrow as pa
    import pyarrow.parquet as pq

    from autoresearch.data.cache import data_dir, shard_name, tokenizer_dir
    from autoresearch.data.context import RunContext
    from autoresearch.data.profiles import Profile
    from autoresearch.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_data_cache")
    corpus = resources.files("autoresearch.data") / "builtin" / "web_bible.jsonl.gz"
    with gzip.open(corpus.open("rb"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    val = texts[::20]
    train = [t for i, t in enumerate(texts) if i % 20]
    ddir = data_dir("testbible", root)
    ddir.mkdir(parents=True)
    third = len(train) // 3
    for i, chunk in enumerate((train[:third], train[third : 2 * third], train[2 * third :], val)):
        pq.write_table(pa.table({"text": chunk}), ddir / shard_name(i), row_group_size=100)
    (ddir / ".complete").write_text("")
    train_tokenizer(train, 512, tokenizer_dir("testbible", 512, root))
    profile = Profile(name="test", max_seq_len=64, time_budget=5, eval_tokens=2048, vocab_size=512,
                      source="testbible", description="unit tests")
    return RunContext(profile=profile, source="testbible", time_budget=5.0, cache=root)
