"""A small HTTP downloader (stdlib only): parallel, resumable, retried, validated.

Every file is written to `<dest>.tmp` and renamed into place only once it is complete
(and, when asked, validated), so an interrupted run never leaves a corrupt file under
its final name. A file already at `dest` is skipped; a partial `.tmp` is resumed with
an HTTP Range request.
"""

from __future__ import annotations

import http.client
import os
import random
import ssl
import threading
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import ArError
from .progress import ProgressFn

CHUNK = 1 << 20
USER_AGENT = "autoresearch-downloader"

# Errors worth another attempt: the network, the server having a bad moment, a cut body.
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


@dataclass(frozen=True)
class DownloadJob:
    url: str
    dest: Path


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""


class _Stopped(Exception):
    """Another download failed for good: give up quietly."""


def _tmp_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".tmp")


class _Tally:
    """Bytes done and expected over all jobs, reported through one progress label.

    Sizes are known only once a job's response arrives; until then the total is
    estimated from the mean of the known sizes so the bar stays meaningful.
    """

    def __init__(self, n_jobs: int, label: str, progress: Optional[ProgressFn]):
        self.n_jobs, self.label, self.progress = n_jobs, label, progress
        self.done: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.lock = threading.Lock()

    def set(self, job: int, done: int, size: Optional[int] = None) -> None:
        with self.lock:
            self.done[job] = done
            if size is not None:
                self.size[job] = size
            if self.progress is None:
                return
            total: Optional[int] = None
            if self.size:
                known = sum(self.size.values())
                total = known + (self.n_jobs - len(self.size)) * known // len(self.size)
            self.progress(self.label, sum(self.done.values()), total)


def _attempt(url: str, tmp: Path, timeout: float, report: Callable[[int, Optional[int]], None], stop: threading.Event) -> None:
    """Fetch url into tmp (resuming what is there); raise _Retry for transient trouble."""
    offset = tmp.stat().st_size if tmp.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our partial file does not fit the server's: start over
            tmp.unlink(missing_ok=True)
            raise _Retry("HTTP 416 for a resumed download") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise ArError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the address (or AUTORESEARCH_HF_ENDPOINT)") from None
    except _TRANSIENT as e:
        raise _Retry(str(getattr(e, "reason", e)) or type(e).__name__) from None
    with resp:
        resumed = offset > 0 and resp.status == 206
        if not resumed:
            offset = 0  # a plain 200 sends the whole file again
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = offset + expected if expected is not None else None
        got = 0
        report(offset, total)
        with open(tmp, "ab" if resumed else "wb") as f:
            while True:
                if stop.is_set():
                    raise _Stopped()
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # every read error is the network's
                    raise _Retry(f"connection lost after {offset + got} bytes ({type(e).__name__})") from None
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
                report(offset + got, total)
        if expected is not None and got < expected:
            raise _Retry(f"truncated body: {got} of {expected} bytes")


def _download_one(
    job: DownloadJob,
    index: int,
    tally: _Tally,
    retries: int,
    backoff: float,
    timeout: float,
    validate: Optional[Callable[[Path], object]],
    stop: threading.Event,
) -> Path:
    dest = Path(job.dest)
    if dest.exists():
        size = dest.stat().st_size
        tally.set(index, size, size)
        return dest
    tmp = _tmp_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArError(f"cannot create the folder {dest.parent} ({e.strerror or e}); set AUTORESEARCH_CACHE to a writable folder") from None
    last = "no attempt made"
    for attempt in range(retries + 1):
        if stop.is_set():
            raise _Stopped()
        if attempt:
            # Exponential backoff with jitter, so parallel workers do not retry in lockstep.
            if stop.wait(backoff * 2 ** (attempt - 1) + random.uniform(0, backoff)):
                raise _Stopped()
        try:
            _attempt(job.url, tmp, timeout, lambda done, total: tally.set(index, done, total), stop)
            if validate is not None:
                try:
                    validate(tmp)
                except Exception as e:  # any complaint about the content: fetch it afresh
                    tmp.unlink(missing_ok=True)
                    raise _Retry(f"downloaded file failed validation: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            os.replace(tmp, dest)
            return dest
        except _Retry as e:
            last = str(e)
        except OSError as e:  # the local disk, not the network: retrying will not help
            raise ArError(f"cannot write {tmp} ({e.strerror or e}); free some disk space or set AUTORESEARCH_CACHE to another folder") from None
    raise ArError(f"download of {job.url} failed after {retries + 1} attempts: {last}; check your connection and run it again (it resumes)")


def download_files(
    jobs: Sequence[DownloadJob],
    workers: int = 8,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    validate: Optional[Callable[[Path], object]] = None,
    progress: Optional[ProgressFn] = None,
    label: str = "download",
) -> list[Path]:
    """Download every job to its dest in parallel; return the dest paths in job order.

    `retries` is the number of further attempts after the first; `validate(tmp_path)`
    may raise to reject a downloaded file (it is then fetched again). Raises ArError
    naming the URL when a file cannot be had.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    tally = _Tally(len(jobs), label, progress)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    try:
        futures = [
            pool.submit(_download_one, job, i, tally, retries, backoff, timeout, validate, stop) for i, job in enumerate(jobs)
        ]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut in done and fut.exception() is not None and not isinstance(fut.exception(), _Stopped):
                raise fut.exception()  # the first real failure; the others stop at their next chunk
        return [fut.result() for fut in futures]
    finally:
        stop.set()  # also on Ctrl-C: the workers stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
