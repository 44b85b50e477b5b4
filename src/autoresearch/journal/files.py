"""results.tsv (the upstream log users know) and runs.jsonl (the detail behind it): files.

Queries over both (the best, the summary) are in journal.py.

results.tsv: a header and one tab-separated row per experiment:

    commit  val_bpb   memory_gb  status   description
    a1b2c3d 0.997900  44.0       keep     baseline

7-character commit, val_bpb with 6 decimals (0.000000 for a crash), memory in GB with
one decimal (0.0 for a crash), status keep|discard|crash.

Durability: each row is one os.write of the whole line on an O_APPEND descriptor, then
fsync, so concurrent appends never interleave and rows already written are never
touched. A write cut short by a crash can only leave the *last* line without its newline.
Reading treats such a last line that does not parse as torn and skips it; the next
append cuts it off before writing. A last line without a newline that does parse (a
hand edit) is a complete row and is kept.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from autoresearch.errors import ArError

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
STATUSES = ("keep", "discard", "crash")
_COMMIT = re.compile(r"^[0-9a-f]{4,40}$")


class ResultRow(NamedTuple):  # a tuple: 10,000 rows build 5x faster than a frozen dataclass
    commit: str
    val_bpb: float  # 0.0 for a crash
    memory_gb: float  # 0.0 for a crash
    status: str  # keep | discard | crash
    description: str

    def to_line(self) -> str:
        desc = " ".join(self.description.replace("\t", " ").splitlines()).strip()
        return f"{self.commit[:7]}\t{self.val_bpb:.6f}\t{self.memory_gb:.1f}\t{self.status}\t{desc}\n"

    def as_dict(self) -> dict:
        return {
            "commit": self.commit,
            "val_bpb": self.val_bpb,
            "memory_gb": self.memory_gb,
            "status": self.status,
            "description": self.description,
        }


def _parse_row(line: str) -> ResultRow:
    """One data line -> ResultRow; ValueError says why not."""
    fields = line.split("\t", 4)
    if len(fields) < 4:
        raise ValueError(f"expected 5 tab-separated columns ({HEADER.replace(chr(9), ', ')}), found {len(fields)}")
    commit, bpb, mem, status = fields[0].strip(), fields[1].strip(), fields[2].strip(), fields[3].strip()
    desc = fields[4].strip() if len(fields) == 5 else ""
    if not _COMMIT.match(commit):
        raise ValueError(f"commit {commit!r} is not a short git hash")
    try:
        val_bpb = float(bpb)
    except ValueError:
        raise ValueError(f"val_bpb {bpb!r} is not a number") from None
    try:
        memory_gb = float(mem)
    except ValueError:
        raise ValueError(f"memory_gb {mem!r} is not a number") from None
    if not (math.isfinite(val_bpb) and val_bpb >= 0):
        raise ValueError(f"val_bpb {bpb!r} is not a finite number >= 0 (crashes are written as 0.000000)")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return ResultRow(commit, val_bpb, memory_gb, status, desc)


def read_results(path: Path) -> list[ResultRow]:
    """All rows of a results.tsv; a clear error naming the line for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArError(
            f"no {path.name} in {path.parent}; run `ar init <tag>` there first"
        ) from None
    except UnicodeDecodeError:
        raise ArError(f"{path} is not a UTF-8 text file; is it a results.tsv?") from None
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")  # the last element is an unterminated line (or "")
    if lines[0].rstrip("\r") != HEADER:
        raise ArError(
            f"{path} line 1: expected the header {HEADER!r} (tab-separated), found {lines[0][:80]!r}; "
            "is this an autoresearch results.tsv?"
        )
    rows: list[ResultRow] = []
    last = len(lines) - 1
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            rows.append(_parse_row(line))
        except ValueError as e:
            if torn_tail and number - 1 == last:
                break  # an append cut short: the row was never complete
            raise ArError(f"{path} line {number}: {e}; fix or delete that line") from None
    return rows


def create_results(path: Path) -> bool:
    """Create results.tsv with its header row; False if it already exists (checked)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        read_results(path)  # refuse a foreign file early, with the line that is wrong
        return False
    try:
        os.write(fd, (HEADER + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _drop_torn_tail(fd: int) -> None:
    """Cut an unterminated last line that does not parse (an append cut short)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    chunk = min(size, 64 * 1024)
    tail = os.pread(fd, chunk, size - chunk)
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    if cut < 0 and chunk < size:
        return  # a line over 64 KiB is not ours to judge
    last = tail[cut + 1 :].decode("utf-8", "replace")
    try:
        if last.rstrip("\r") != HEADER:
            _parse_row(last.rstrip("\r"))
    except ValueError:
        os.ftruncate(fd, size - chunk + cut + 1)
        return
    os.write(fd, b"\n")  # a complete hand-written row without its newline


def _durable_append(path: Path, data: bytes, fix_tail=None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: to inspect the tail
    try:
        if fix_tail is not None:
            fix_tail(fd)
        os.write(fd, data)  # one write: O_APPEND makes it land whole at the end
        os.fsync(fd)
    finally:
        os.close(fd)


def append_result(path: Path, row: ResultRow) -> None:
    """Append one row durably (creating the file with its header if needed)."""
    if row.status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.status!r}")
    create_results(path)
    _durable_append(path, row.to_line().encode("utf-8"), _drop_torn_tail)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def append_run_record(path: Path, record: dict) -> None:
    """Append one JSON object as a line of runs.jsonl, with the same durability."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_json_safe(record), ensure_ascii=False, sort_keys=True) + "\n"

    def fix_tail(fd: int) -> None:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # never glue a record onto a torn one

    _durable_append(path, line.encode("utf-8"), fix_tail)


def read_run_records(path: Path, events: Optional[Sequence[str]] = None) -> list[dict]:
    """All records of runs.jsonl (with `events`: only the records of those events); lines
    that are not JSON objects (torn) are skipped."""
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if events is not None:
        # A record's line holds its event's name: skip parsing the others ("proposing",
        # "started", "run": most of a long journal, and most of `ar results`' time).
        lines = [line for line in lines if _names_one(line, events)]
    for obj in _parse_lines(lines):
        if isinstance(obj, dict) and (events is None or obj.get("event") in events):
            out.append(obj)
    return out


def _parse_lines(lines: list[str]) -> list:
    """Each line's JSON value; a line that is not JSON (torn) is left out."""
    try:
        # One parse of them all as an array is twice as fast as a parse per line, and the
        # same answer when it finds one value per line: a torn append (the start of one
        # object) either breaks the array or swallows the next line and leaves it short.
        # Only lines hand-edited into fragments of each other could tell the two apart.
        values = json.loads("[" + ",".join(lines) + "]")
        if len(values) == len(lines):
            return values
    except ValueError:
        pass
    values = []
    for line in lines:
        try:
            values.append(json.loads(line))
        except ValueError:
            continue
    return values


def _names_one(line: str, names: Sequence[str]) -> bool:
    for name in names:  # a plain loop: a generator per line costs more than the test itself
        if name in line:
            return True
    return False
