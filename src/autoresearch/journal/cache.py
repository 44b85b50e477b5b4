"""A cache of the joined journal for `ar results`, so a repeat call parses nothing.

Parsing runs.jsonl (JSON, one record per line) is most of what `ar results` does on a
long journal. The cache keeps, per row, only what the table shows (the row, its budget,
backend, worker, LLM usage and sandbox), in columns, in one file of three lines:

  1. the stamp (below) and the workspace's settings (budget, default backend);
  2. the tally of all rows (queries.Tally) and the rows a partial view holds: every row
     that counts (all the best needs) and the latest TAIL rows (all a terminal or
     --last shows): `ar results` without --json or a pipe decodes no further;
  3. the other rows, decoded only when every row is asked for.

Its entries have no journal records (`UNREAD`): report, show and the loop read the journal
itself (queries.history). A miss answers from the data it writes, so both are the same.

Never stale: the stamp names the size, mtime, ctime and inode of results.tsv, runs.jsonl
and config.toml as they were before they were read, and the code that read them; the cache
is used only while all of them are still so. A file changed during the read leaves no
cache behind. As git does with its index, a file whose ctime is not older than the cache's
mtime (changed in the tick the cache was written, on a coarse-timestamp file system) makes
it stale. Written whole or not at all (a temporary file renamed over it); anything
unexpected in it is a miss, never an error. When only the journal changed, the settings
come from the stale cache's first line (reading config.toml imports much of ar).

Where: under the cache root (AUTORESEARCH_CACHE, default ~/.cache/autoresearch), in
results/, one file per workspace folder. Not in the workspace: a file that appears there
during a run (`ar results` while `ar loop` trains) is one the run's guard would take for
the run's doing (integrity/workspace_guard.py).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping
from itertools import repeat
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from autoresearch.journal.files import ResultRow
from autoresearch.journal.queries import Entry, Tally, history, tally_of

FORMAT = 1  # raise when the layout changes
TAIL = 500  # the latest rows line 2 holds: more than a terminal shows; a longer --last decodes line 3
_COLUMNS = ("number", "commit", "val_bpb", "memory_gb", "status", "description", "budget", "backend", "worker", "usage",
            "recovered", "sandbox")
_SOURCES = {"results": "results.tsv", "runs": ".autoresearch/runs/runs.jsonl", "config": ".autoresearch/config.toml"}
# The code whose answers the cache keeps (parsing, the join, the tally, the workspace's
# settings): an edit or an upgrade of any of it makes every cache stale.
_CODE = ("journal/files.py", "journal/queries.py", "journal/cache.py", "workspace/config.py", "data/context.py")
_PACKAGE = Path(__file__).resolve().parent.parent
_KEEP_DAYS = 30  # a cache not rewritten for this long is removed when another is written

Settings = Optional[tuple[float, str]]  # the workspace's budget and default backend; None: no workspace config


class _Unread(Mapping):
    """The record of an entry read through the cache, which keeps no records: reading it is
    a bug, said at once rather than answered with an empty record."""

    def _refuse(self, *_):
        raise RuntimeError("entries from journal/cache.py carry no journal records; read them with queries.history")

    __getitem__ = __iter__ = __len__ = _refuse
    __eq__ = object.__eq__
    __hash__ = object.__hash__


UNREAD: Mapping = _Unread()


class Journal(NamedTuple):
    """The journal as a partial view (ui.view.View.partial) holds it."""

    settings: Settings
    known: list[Entry]  # every entry that counts, and every one from number `first` on
    first: int
    tally: Tally  # of every entry
    load: Callable[[], list[Entry]]  # every entry


def cached_history(folder: Path, settings: Callable[[], Settings]) -> Journal:
    """The workspace's settings (`settings()`, called only when config.toml changed) and its
    journal, from the cache where it is fresh; else read, joined and cached."""
    folder = Path(folder)
    stamp = _stamp(folder)
    path = _cache_path(stamp["folder"]) if stamp else None
    old = _load(path, stamp, folder) if path else _Old()
    if old.journal is not None:
        return old.journal
    found = old.settings if old.same_settings else settings()
    lines = _lines(folder, stamp, found)
    if path:
        _save(path, stamp, lines, folder)
    return _journal(found, lines[1], lambda: lines[2], None)


def _lines(folder: Path, stamp: Optional[dict], found: Settings) -> list[dict]:
    """The cache's three lines, from the journal itself."""
    budget, backend = found or (0.0, "")
    entries = history(folder, budget=budget, backend=backend)
    first = max(1, len(entries) - TAIL + 1)
    known, rest = [], []
    for e in entries:
        (known if e.number >= first or e.counts else rest).append(e)
    part = {"first": first, "tally": vars(tally_of(entries)), **_columns(known)}
    return [{"stamp": stamp, "settings": found}, part, _columns(rest)]


def cache_dir() -> Path:
    """results/ under the cache root: data/cache.py's cache_root(), without importing the
    data package (the judge's session, the profiles) that `ar results` otherwise never needs."""
    root = os.environ.get("AUTORESEARCH_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "autoresearch") / "results"


def _cache_path(folder: str) -> Optional[Path]:
    # Named by checksums of the folder's path (hashlib's import alone costs more than a hit);
    # two folders that share a name only overwrite each other: the stamp names the folder.
    key = os.fsencode(folder)
    try:
        return cache_dir() / f"{zlib.crc32(key):08x}{zlib.adler32(key):08x}.json"
    except (RuntimeError, KeyError):  # no home folder to find the cache in: no cache
        return None


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _stamp(folder: Path) -> Optional[dict]:
    """What the cache must match: the folder, the sources' and the code's stats (None: do not cache)."""
    out = {"format": FORMAT}
    try:
        out["folder"] = str(folder.resolve())
        out["code"] = [_stat(_PACKAGE / rel)[1:3] for rel in _CODE]
        for name, rel in _SOURCES.items():
            try:
                out[name] = _stat(folder / rel)
            except FileNotFoundError:
                if name == "results":
                    return None  # the read says what is wrong
                out[name] = None
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop
        return None
    return out


class _Old:
    """What the cache file holds: the journal if fresh; the settings if config.toml is unchanged."""

    journal: Optional[Journal] = None
    settings: Settings = None
    same_settings = False


def _load(path: Path, stamp: dict, folder: Path) -> _Old:
    """The cache at `path`, checked against `stamp`, a line at a time: a stale cache is never
    decoded past its first line, a fresh one past its second until every row is asked for."""
    old = _Old()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                return old  # someone else's file (a shared cache root): never trusted
            header = json.loads(f.readline())
            was = header["stamp"]
            # As git does: a file changed in the tick the cache was written in may have changed after it.
            settled = {name: stamp[name] is None or stamp[name][3] < st.st_mtime_ns for name in _SOURCES}
            if all(was[k] == stamp[k] for k in ("format", "folder", "code", "config")) and settled["config"]:
                found = header["settings"]
                old.settings, old.same_settings = (None if found is None else (found[0], found[1])), True
            if was != stamp or not all(settled.values()):
                return old
            part = json.loads(f.readline())
            rest = f.read()
        found = old.settings
        old.journal = _journal(found, part, lambda: json.loads(rest), lambda: _lines(folder, None, found))
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        old.journal = None  # no cache, or not one we wrote: a miss
    return old


def _journal(found: Settings, part: dict, rest: Callable[[], dict], again: Optional[Callable[[], list[dict]]]) -> Journal:
    """The journal from line 2 and, when every row is asked for, line 3 (`rest()`); `again()`:
    the lines from the journal itself, should line 3 be damaged (never so written)."""
    t = part["tally"]
    t = Tally(**{**t, "groups": [(b, k) for b, k in t["groups"]]})
    known = _entries(part)

    def load() -> list[Entry]:
        try:
            others = _entries(rest())
        except (ValueError, LookupError, TypeError):
            if again is None:
                raise
            lines = again()
            return sorted(_entries(lines[1]) + _entries(lines[2]), key=_number)
        return sorted(known + others, key=_number)  # two runs in order: sorted() merges them

    return Journal(found, known, part["first"], t, load)


def _save(path: Path, stamp: dict, lines: list[dict], folder: Path) -> None:
    """Write the cache whole (a temporary file renamed over it), if no source changed meanwhile."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        # one JSON document a line: JSON escapes every newline in a value
        data = "\n".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) for line in lines).encode("utf-8")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        # checked after the write, so a change from now on is newer than the cache's mtime
        if _stamp(folder) == stamp:
            os.replace(tmp, path)
            _prune(path.parent)
            return
    except (OSError, ValueError, TypeError):  # no room, no permission; a value JSON cannot hold
        pass
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    """Remove caches not written for a month (of workspaces moved or deleted since): rebuilt if needed."""
    cutoff = time.time() - _KEEP_DAYS * 86400
    with os.scandir(folder) as found:
        for entry in found:
            try:
                if entry.name.endswith((".json", ".tmp")) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass


def _number(e: Entry) -> int:
    return e.number


def _columns(entries: list[Entry]) -> dict:
    return {
        "number": [e.number for e in entries],
        "commit": [e.row.commit for e in entries],
        "val_bpb": [e.row.val_bpb for e in entries],
        "memory_gb": [e.row.memory_gb for e in entries],
        "status": [e.row.status for e in entries],
        "description": [e.row.description for e in entries],
        "budget": [e.budget for e in entries],
        "backend": [e.backend for e in entries],
        "worker": [e.worker for e in entries],
        "usage": [e.usage for e in entries],
        "recovered": [e.recovered for e in entries],
        "sandbox": [e.sandbox for e in entries],
    }


def _entries(c: dict) -> list[Entry]:
    """Entries from the columns. tuple.__new__ over zip, as NamedTuple's _make does, without a
    Python call per row: a long journal's entries in half the time."""
    n = len(c["number"])
    if not all(isinstance(c[k], list) and len(c[k]) == n for k in _COLUMNS):
        raise ValueError("columns of different lengths")  # not a cache we wrote: a miss
    new = tuple.__new__
    rows = list(map(new, repeat(ResultRow), zip(c["commit"], c["val_bpb"], c["memory_gb"], c["status"], c["description"])))
    return list(map(new, repeat(Entry), zip(c["number"], rows, c["budget"], c["backend"], c["worker"], c["usage"],
                                            c["recovered"], repeat(UNREAD), c["sandbox"])))
