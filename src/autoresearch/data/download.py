"""Hugging Face downloads through huggingface_hub: parallel, retried, validated.

The library brings what ML users already configure: HF_ENDPOINT (a mirror;
AUTORESEARCH_HF_ENDPOINT is an alias), HF_TOKEN (gated or private data), HF_HOME /
HF_HUB_CACHE (the shared cache, so a file another tool fetched is not fetched again),
HF_HUB_OFFLINE, and resumption (Range, in 10 MB steps) of a transfer cut off mid-file;
since huggingface_hub 2.x a partial file does not outlive its run. This module adds
what it lacks: several files at once, retries with backoff for the failures it gives up
on (a 5xx on the body, a size mismatch), validation before a file is taken, and one-line
ArErrors instead of its exceptions.

A file wanted at `dest` is validated in the HF cache, hard-linked (or copied) to
`<dest>.tmp` and renamed into place, so an interrupted run never leaves a corrupt file
under its final name. A file already at `dest` is skipped without asking the server.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import ArError
from .progress import ProgressFn

ENDPOINT_ENV = "AUTORESEARCH_HF_ENDPOINT"  # an alias of HF_ENDPOINT, kept for older setups
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class HfFile:
    repo_id: str  # a dataset repository, e.g. "roneneldan/TinyStories"
    filename: str
    dest: Optional[Path] = None  # where the file must end up; None: use it where the HF cache keeps it
    revision: str = "main"


class _Stopped(Exception):
    """Another download failed for good: give up quietly."""


def hf_endpoint() -> Optional[str]:
    """The Hub to ask: AUTORESEARCH_HF_ENDPOINT, else HF_ENDPOINT, else the library's default.

    Read at every call, because huggingface_hub reads HF_ENDPOINT only once, at import.
    """
    value = os.environ.get(ENDPOINT_ENV) or os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def file_url(f: HfFile) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(f.repo_id, f.filename, repo_type="dataset", revision=f.revision, endpoint=hf_endpoint())


class _Tally:
    """Bytes done and expected over all files, reported through one progress label.

    Sizes are known only once a file's transfer starts; until then the total is
    estimated from the mean of the known sizes so the bar stays meaningful.
    """

    def __init__(self, n_files: int, label: str, progress: Optional[ProgressFn], stop: threading.Event):
        self.n_files, self.label, self.progress, self.stop = n_files, label, progress, stop
        self.done: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.lock = threading.Lock()

    def set(self, index: int, done: int, size: Optional[int] = None) -> None:
        with self.lock:
            self.done[index] = done
            if size is not None:
                self.size[index] = size
            if self.progress is None:
                return
            total: Optional[int] = None
            if self.size:
                known = sum(self.size.values())
                total = known + (self.n_files - len(self.size)) * known // len(self.size)
            self.progress(self.label, sum(self.done.values()), total)

    def bar(self, index: int):
        """A tqdm class for huggingface_hub that draws nothing and feeds this tally instead.

        It also stops a transfer when asked (raising from `update`). `update_transfer`
        makes a Xet download report through this one bar rather than two.
        """
        from tqdm import tqdm

        tally = self

        class Bar(tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "disable": True})
                tally.set(index, self.n, self.total)

            def update(self, n=1):
                if tally.stop.is_set():
                    raise _Stopped()  # unwinds the library's transfer; it removes its partial file
                self.n += n
                tally.set(index, self.n, self.total)

            def update_transfer(self, n=1):  # network bytes of a Xet download: update() counts the file's
                pass

            def set_transfer_postfix_str(self, *args, **kwargs):
                pass

        return Bar


def _status(e: BaseException) -> Optional[int]:
    """The HTTP status behind a huggingface_hub error (it often wraps the first one)."""
    seen = 0
    while e is not None and seen < 10:
        response = getattr(e, "response", None)
        if response is not None and getattr(response, "status_code", None):
            return response.status_code
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0] or type(e).__name__


def _final_error(e: Exception, f: HfFile) -> Optional[ArError]:
    """An ArError when retrying cannot help (missing file, refused token, offline, disk), else None."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"dataset {f.repo_id} (revision {f.revision}) at {hf_endpoint() or constants.ENDPOINT}"
    status = _status(e)
    if status in (401, 403):
        return ArError(
            f"{where} refused access to {f.filename} (HTTP {status}): it is gated or private, or the token is wrong; "
            "accept its terms on the Hub and set HF_TOKEN (or run `hf auth login`)"
        )
    if status == 404 and isinstance(e, RepositoryNotFoundError):
        return ArError(f"dataset {f.repo_id} not found at {hf_endpoint() or constants.ENDPOINT} (HTTP 404); check HF_ENDPOINT or AUTORESEARCH_HF_ENDPOINT")
    if status == 404:
        return ArError(f"{f.filename} not found in {where} (HTTP 404); check the name, HF_ENDPOINT or AUTORESEARCH_HF_ENDPOINT")
    if isinstance(e, LocalEntryNotFoundError):
        if constants.is_offline_mode():
            return ArError(f"HF_HUB_OFFLINE is set and {f.filename} of {f.repo_id} is not in the Hugging Face cache; unset it to download")
        # The library has already retried its metadata request with backoff: more attempts would only wait longer.
        cause = f"HTTP {status}" if status else _first_line(e.__cause__ or e)
        return ArError(f"cannot reach {file_url(f)} ({cause}); check your connection, or HF_ENDPOINT, and run it again")
    if isinstance(e, HfHubHTTPError) and status is not None and status not in _RETRY_STATUS:
        return ArError(f"download of {f.filename} from {where} failed: HTTP {status}")
    if isinstance(e, OSError) and e.errno is not None and not isinstance(e, (HfHubHTTPError, ConnectionError)):
        where = e.filename or constants.HF_HUB_CACHE
        return ArError(f"cannot write {where} ({e.strerror or e}); free some disk space or set HF_HOME to another folder")
    return None


def _forget(path: Path) -> None:
    """Remove a rejected file from the HF cache (its snapshot link and the blob behind it)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _place(src: Path, dest: Path) -> Path:
    """Put the cached file at dest: a hard link costs no space; a copy when links fail."""
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            os.link(src.resolve(), tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as e:
        raise ArError(f"cannot write {tmp} ({e.strerror or e}); free some disk space or set AUTORESEARCH_CACHE to another folder") from None
    return dest


def _fetch_one(
    f: HfFile,
    index: int,
    tally: _Tally,
    retries: int,
    backoff: float,
    validate: Optional[Callable[[Path], object]],
) -> Path:
    from huggingface_hub import hf_hub_download

    if f.dest is not None and f.dest.exists():
        size = f.dest.stat().st_size
        tally.set(index, size, size)
        return f.dest
    last = "no attempt made"
    for attempt in range(retries + 1):
        if tally.stop.is_set():
            raise _Stopped()
        if attempt:
            # Exponential backoff with jitter, so parallel workers do not retry in lockstep.
            if tally.stop.wait(backoff * 2 ** (attempt - 1) + random.uniform(0, backoff)):
                raise _Stopped()
        try:
            path = Path(
                hf_hub_download(
                    f.repo_id, f.filename, repo_type="dataset", revision=f.revision, endpoint=hf_endpoint(), tqdm_class=tally.bar(index)
                )
            )
        except _Stopped:
            raise
        except Exception as e:  # the library's errors are OSErrors, httpx errors or ValueErrors: sort them
            final = _final_error(e, f)
            if final is not None:
                raise final from None
            last = f"HTTP {_status(e)}" if _status(e) else _first_line(e)
            continue
        if validate is not None:
            try:
                validate(path)
            except Exception as e:  # any complaint about the content: drop it from the cache, fetch afresh
                _forget(path)
                last = f"downloaded file failed validation: {_first_line(e)}"
                continue
        return _place(path, f.dest) if f.dest is not None else path
    raise ArError(f"download of {file_url(f)} failed after {retries + 1} attempts: {last}; check your connection and run it again")


def fetch_files(
    files: Sequence[HfFile],
    workers: int = 8,
    retries: int = 5,
    backoff: float = 1.0,
    validate: Optional[Callable[[Path], object]] = None,
    progress: Optional[ProgressFn] = None,
    label: str = "download",
) -> list[Path]:
    """Fetch every file (in parallel); return local paths in order: dest, or the HF cache's path.

    `retries` is the number of further attempts after the first; `validate(path)` may
    raise to reject a downloaded file (it is then fetched again). Raises ArError naming
    the file when it cannot be had.
    """
    files = list(files)
    if not files:
        return []
    if not os.environ.get("HF_HUB_VERBOSITY"):
        # The library logs every retry as a warning; our progress and our errors say enough.
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    stop = threading.Event()
    tally = _Tally(len(files), label, progress, stop)
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(files))))
    try:
        futures = [pool.submit(_fetch_one, f, i, tally, retries, backoff, validate) for i, f in enumerate(files)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut in done and fut.exception() is not None and not isinstance(fut.exception(), _Stopped):
                raise fut.exception()  # the first real failure; the others stop at their next chunk
        return [fut.result() for fut in futures]
    finally:
        stop.set()  # also on Ctrl-C: the workers stop at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
