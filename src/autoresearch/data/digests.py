"""Digests of the prepared cache: recorded by `ar prepare`, checked before each run.

Training scripts are untrusted and, until runs are sandboxed, could rewrite files in the
cache: a changed validation shard or token_bytes table would shift val_bpb for every
later experiment, and an extra shard sorting first among the training shards would put
validation text into training. So `ar prepare` ends each folder it fills (a source's data
folder, a tokenizer folder) with a digests.json holding the size and sha256 of every
other entry in it, and verify_cache() reports the first entry that was changed, is
missing, was added or is not a plain file, with the `ar prepare` command that repairs it.

Limits. digests.json lives in the same cache: a script that rewrites a shard *and* its
digests.json passes the check on disk. Keep what the first verify_cache() of a session
returns and pass it back as `pinned`: such a rewrite is then caught for the rest of the
session. A change made while a run is in progress is seen before the next run, not during it.

Speed. Every file is hashed once per process, then again only when its identity (device,
inode, size, mtime_ns, ctime_ns) changes. Any write changes ctime, which an unprivileged
process cannot set back (os.utime sets mtime only). Files changed in the last 2 seconds
are never memoized: a coarse file-system clock could give a second write within the
same tick the same times (git's "racily clean" rule). The residual: a file system whose
clock is coarser than that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import ArError
from .cache import DIGESTS_NAME, atomic_write

if TYPE_CHECKING:
    from .context import RunContext

DIGESTS_FORMAT = 1
MISSING = "is missing"
CHANGED = "was changed"
EXTRA = "was not written by `ar prepare`"
NOT_A_FILE = "is not a plain file"
_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Digests = dict[str, tuple[int, str]]  # file name -> (size, sha256 hex)


@dataclass(frozen=True)
class Problem:
    name: str  # an entry of the folder
    what: str  # MISSING, CHANGED, EXTRA, NOT_A_FILE or "cannot be read (...)"


class DigestMemo:
    """sha256 of files this process has hashed, keyed by what any rewrite changes."""

    def __init__(self, settle_ns: int = _RACY_NS) -> None:
        self.settle_ns = settle_ns  # files changed more recently than this are not remembered
        self._known: dict[str, tuple[tuple[int, ...], str]] = {}

    def get(self, path: str, key: tuple[int, ...]) -> Optional[str]:
        hit = self._known.get(path)
        return hit[1] if hit is not None and hit[0] == key else None

    def put(self, path: str, key: tuple[int, ...], digest: str) -> None:
        self._known[path] = (key, digest)


_process_memo = DigestMemo()


def file_digest(path: Path, memo: Optional[DigestMemo] = None) -> Optional[tuple[int, str]]:
    """(size, sha256 hex) of a plain file; None for anything else (a link, a folder, a pipe).
    Raises OSError when the file cannot be read."""
    try:
        # O_NOFOLLOW: a link is reported, not followed; O_NONBLOCK: a planted pipe cannot hang us.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if os.path.islink(path):
            return None
        raise e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = memo.get(str(path), key) if memo is not None else None
        if known is not None:
            return st.st_size, known
        h, size = hashlib.sha256(), 0
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        digest = h.hexdigest()
        after = os.fstat(fd)
        unchanged = key == (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
        if memo is not None and unchanged and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > memo.settle_ns:
            memo.put(str(path), key, digest)
        return size, digest


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(folder) if name != DIGESTS_NAME)
    except (FileNotFoundError, NotADirectoryError):
        return []


def record_digests(folder: Path, memo: Optional[DigestMemo] = None) -> Digests:
    """Hash every entry of `folder` and write digests.json there (atomically). Called by
    `ar prepare` once the folder is complete."""
    files: Digests = {}
    for name in _entries(folder):
        got = file_digest(folder / name, memo)
        if got is None:
            raise ArError(f"{folder / name} is not a plain file; remove it and run `ar prepare` again")
        files[name] = got
    body = {"format": DIGESTS_FORMAT, "algorithm": "sha256",
            "files": {name: {"size": size, "sha256": sha} for name, (size, sha) in files.items()}}
    atomic_write(folder / DIGESTS_NAME, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return files


def load_digests(folder: Path) -> Optional[Digests]:
    """The digests recorded for `folder`; None when none were (an older ar prepared it).
    Raises ArError when digests.json is there but not a digests file."""
    path = folder / DIGESTS_NAME
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise ArError(f"cannot read {path} ({e.strerror or e})") from None
    try:
        body = json.loads(raw)
        if body.get("format") != DIGESTS_FORMAT or body.get("algorithm") != "sha256":
            raise ValueError
        files: Digests = {}
        for name, d in body["files"].items():
            size, sha = d["size"], d["sha256"]
            if "/" in name or name in ("", ".", "..", DIGESTS_NAME) or type(size) is not int or not _SHA256.match(sha):
                raise ValueError
            files[name] = (size, sha)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArError(f"{path} is not a digests file") from None
    return files


def folder_problems(folder: Path, expected: Digests, memo: Optional[DigestMemo] = None) -> list[Problem]:
    """How `folder` differs from `expected`, in name order; [] when it holds exactly those files."""
    present = set(_entries(folder))
    problems = []
    for name in sorted(present | set(expected)):
        if name not in present:
            problems.append(Problem(name, MISSING))
        elif name not in expected:
            problems.append(Problem(name, EXTRA))
        else:
            try:
                st = os.lstat(folder / name)
                if stat.S_ISREG(st.st_mode) and st.st_size != expected[name][0]:
                    got: Optional[tuple[int, str]] = (st.st_size, "")  # another size: no need to hash it
                else:
                    got = file_digest(folder / name, memo)
            except OSError as e:
                problems.append(Problem(name, f"cannot be read ({e.strerror or e})"))
                continue
            if got is None:
                problems.append(Problem(name, NOT_A_FILE))
            elif got != expected[name]:
                problems.append(Problem(name, CHANGED))
    return problems


def verify_cache(ctx: RunContext, *, pinned: Optional[dict[str, Digests]] = None,
                 memo: Optional[DigestMemo] = _process_memo) -> dict[str, Digests]:
    """Check the data and tokenizer folders `ctx` uses against the digests `ar prepare`
    recorded; raise ArError naming the first difference and the command that repairs it.

    Returns the digests checked, keyed by folder: pass them as `pinned` to later calls
    of the same session, so a rewritten digests.json is caught too. memo=None hashes
    every file afresh."""
    ctx.check_prepared()
    fix = ctx.prepare_command()
    checked: dict[str, Digests] = {}
    for folder in (ctx.data_dir, ctx.tokenizer_dir):
        try:
            expected = load_digests(folder)
        except ArError as e:
            raise ArError(f"{e}; run: {fix}") from None
        if expected is None:
            raise ArError(f"no digests recorded for {folder} (prepared by an older ar); run: {fix}")
        if pinned is not None and pinned.get(str(folder)) != expected:
            # `ar prepare` trusts digests.json, so it cannot repair this one: start the folder afresh.
            raise ArError(f"{folder / DIGESTS_NAME} was changed since this session checked it; delete {folder} and run: {fix}")
        problems = folder_problems(folder, expected, memo)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            first = problems[0]
            raise ArError(f"the prepared cache was changed: {folder / first.name} {first.what}{more}; run: {fix}")
        checked[str(folder)] = expected
    return checked


def prepared_shards(data_dir: Path) -> Optional[list[Path]]:
    """The shards `ar prepare` recorded for a data folder, in order (the last is the validation
    shard), whether or not this process can see them: a sandboxed run has the validation
    shard hidden. None when no digests were recorded."""
    try:
        recorded = load_digests(data_dir)
    except ArError:
        return None
    if recorded is None:
        return None
    return [data_dir / name for name in sorted(recorded) if name.startswith("shard_") and name.endswith(".parquet")]
