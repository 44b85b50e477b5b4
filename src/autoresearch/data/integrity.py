"""Run-time integrity of the harness inside the training process, and the result channel.

The training script is written by the research agent and runs in the same Python process
as the harness. Nothing in a process can be hidden from code running in it, so this
module *detects* the usual ways of bending the measurement; it cannot *prevent* a script
written to defeat it (see docs/trust.md for the honest list).

Result channel. The orchestrator (`ar run`, `ar loop`) passes AUTORESEARCH_RESULT_FILE
(a path in a private temporary folder) and AUTORESEARCH_RESULT_KEY (a fresh random key
per run). Importing autoresearch.data removes both from os.environ, so processes the
script starts and code that runs later do not see them. Every evaluate_bpb call appends
one record to that file, signed with HMAC-SHA256 under the key. The orchestrator takes
val_bpb only from a record whose signature checks out: a record written by a child
process, by a previous run or by code that never had the key is refused. A script that
reads the key before importing the harness, or out of this module's memory, could sign
a forged record: the static check of the proposal looks for that, nothing prevents it.

Tamper checks. When the harness modules are imported (before the script's own code has
done anything but its imports), they register their functions, classes and constants
and the torch / mlx / numpy / math functions that evaluate_bpb relies on. evaluate_bpb
compares them again before and after evaluating: a replaced function, a swapped code
object, a changed constant, validation rows or token byte lengths modified in place, all
refuse the result. Functions replaced *before* the harness was imported are caught by an
origin check (a function must come from the module that should define it).

Timestamps. The first training batch and the start of the evaluation, taken with the
monotonic clock captured at import: the orchestrator's budget check uses their
difference.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
import re
import sys
import time
import types
from typing import Any, Iterable, Optional

from ..errors import ArError

RESULT_FILE_ENV = "AUTORESEARCH_RESULT_FILE"
RESULT_KEY_ENV = "AUTORESEARCH_RESULT_KEY"

# Captured at import: a script that later replaces these in their modules does not
# reach the harness (and the replacement is reported by tampering()).
_clock = time.monotonic
_hmac_new = hmac.new
_compare_digest = hmac.compare_digest
_sha256 = hashlib.sha256
_dumps = json.dumps
_loads = json.loads
_os_open, _os_write, _os_close, _getpid = os.open, os.write, os.close, os.getpid


def _take_channel() -> tuple[Optional[str], Optional[bytes]]:
    path = os.environ.pop(RESULT_FILE_ENV, None) or None
    key_hex = os.environ.pop(RESULT_KEY_ENV, None) or None
    try:
        key = bytes.fromhex(key_hex) if key_hex else None
    except ValueError:
        key = None
    return (path, key) if path and key else (None, None)


_channel_path, _key = _take_channel()
_imported_at = _clock()


class _State:
    first_train_batch: Optional[float] = None
    val_split_used = False
    evaluations = 0


# -- signing (shared with the orchestrator, which verifies) ----------------------------


def canonical(record: dict) -> bytes:
    """The bytes a record is signed over: sorted keys, no spaces (stable across a JSON round trip)."""
    return _dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(key: bytes, record: dict) -> str:
    return _hmac_new(key, canonical(record), "sha256").hexdigest()


def read_records(path: str, key: bytes) -> tuple[list[dict], list[str]]:
    """The records of a result file whose signature checks out, and why the others do not."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return [], []
    good, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = _loads(line)
            record, sig = obj["record"], obj["sig"]
        except (ValueError, KeyError, TypeError):
            bad.append(f"line {n} is not a harness record")
            continue
        if not isinstance(record, dict) or not isinstance(sig, str) or not _compare_digest(sign(key, record), sig):
            bad.append(f"line {n} has no valid signature")
            continue
        good.append(record)
    return good, bad


def _write(record: dict) -> None:
    if _channel_path is None or _key is None:
        return  # run by hand (python train.py): nobody to tell
    record = dict(record, pid=_getpid())
    line = _dumps({"record": record, "sig": sign(_key, record)}, sort_keys=True) + "\n"
    fd = _os_open(_channel_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        _os_write(fd, line.encode("utf-8"))
    finally:
        _os_close(fd)


# -- what must not change --------------------------------------------------------------

_MISSING = object()
_protected: list[tuple[str, Any, str, Any, str]] = []  # (label, owner, name, value, fingerprint)
_seen: set[tuple[int, str]] = set()
_import_problems: list[str] = []
_CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
# Dunder methods that decide what an instance does when used or changed (frozen dataclasses).
_GUARDED_DUNDERS = {"__init__", "__call__", "__setattr__", "__delattr__", "__getattribute__", "__getattr__"}


def _code_digest(code: types.CodeType) -> str:
    # Not marshal: its output depends on reference counts, so it changes by itself.
    h = _sha256(code.co_code)
    h.update(repr((code.co_consts, code.co_names, code.co_varnames, code.co_freevars)).encode("utf-8", "replace"))
    return h.hexdigest()


def _fingerprint(value: Any) -> str:
    """What identity alone does not show: a function's code and defaults, a container's
    contents. Builtins and other objects: identity is all there is."""
    if value is _MISSING:
        return "missing"
    if isinstance(value, (classmethod, staticmethod)):
        return "m:" + _fingerprint(value.__func__)
    if isinstance(value, property):
        return "p:" + ",".join(_fingerprint(f) for f in (value.fget, value.fset, value.fdel) if f is not None)
    code = getattr(value, "__code__", None)
    if isinstance(code, types.CodeType):
        return f"f:{_code_digest(code)}:{value.__defaults__!r}:{getattr(value, '__kwdefaults__', None)!r}"
    if isinstance(value, (int, float, str, bytes, bool, tuple, frozenset, dict, list, set, type(None))):
        try:
            return "v:" + _sha256(repr(value).encode("utf-8", "replace")).hexdigest()
        except Exception:  # an exotic repr: identity is what is left
            return "id"
    return "id"


def protect(owner: Any, names: Iterable[str], label: Optional[str] = None) -> None:
    """Remember `owner.<name>` for each name (as found in the owner's own __dict__), to be
    compared by tampering(). The first registration wins, so a reloaded module cannot
    register its replacements as the originals."""
    label = label or getattr(owner, "__name__", type(owner).__name__)
    for name in names:
        key = (id(owner), name)
        if key in _seen:
            continue
        _seen.add(key)
        value = vars(owner).get(name, _MISSING)
        _protected.append((f"{label}.{name}", owner, name, value, _fingerprint(value)))


def protect_module(module: types.ModuleType, exclude: Iterable[str] = ()) -> None:
    """Every function, class (and its methods) and UPPER_CASE constant defined in `module`."""
    skip = set(exclude)
    names = []
    for name, value in list(vars(module).items()):
        if name in skip or name.startswith("__"):
            continue
        if isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == module.__name__:
            names.append(name)
            if isinstance(value, type):
                members = [n for n in vars(value) if not n.startswith("__") or n in _GUARDED_DUNDERS]
                protect(value, members, label=f"{module.__name__}.{name}")
        elif _CONSTANT.match(name):
            names.append(name)
    protect(module, names, label=module.__name__)


def protect_external(module: types.ModuleType, names: Iterable[str], label: Optional[str] = None) -> None:
    """Functions of another library that evaluate_bpb relies on: registered like protect(),
    and checked now to really come from that library (a function replaced before the
    harness was imported would otherwise be taken for the original)."""
    label = label or module.__name__
    names = list(names)
    for name in names:
        value = vars(module).get(name, _MISSING)
        if value is not _MISSING and not _genuine(value, name, module):
            _import_problems.append(f"{label}.{name} was replaced before the harness was imported")
    protect(module, names, label=label)


def _genuine(value: Any, name: str, module: types.ModuleType) -> bool:
    if isinstance(value, type):
        return True  # a class (torch.no_grad): its methods are not ours to judge
    if isinstance(value, types.BuiltinFunctionType):
        own = getattr(value, "__name__", "")  # hashlib.sha256 is "openssl_sha256"
        return own == name or own.endswith("_" + name)
    code = getattr(value, "__code__", None)
    if isinstance(code, types.CodeType):
        root = os.path.dirname(getattr(sys.modules.get(module.__name__.split(".")[0]), "__file__", "") or "")
        return getattr(value, "__name__", None) == name and bool(root) and os.path.abspath(code.co_filename).startswith(root)
    # Other callables (numpy's dispatchers, nanobind functions): their name must match.
    return getattr(value, "__name__", name) == name


def tampering() -> list[str]:
    """What changed since the harness was imported (empty when nothing did)."""
    out = list(_import_problems)
    for label, owner, name, value, fp in _protected:
        now = vars(owner).get(name, _MISSING)
        if now is not value:
            out.append(f"{label} was {'deleted' if now is _MISSING else 'added' if value is _MISSING else 'replaced'}")
        elif _fingerprint(now) != fp:
            out.append(f"{label} was modified")
    return out


# -- evaluation data ---------------------------------------------------------------------

_arrays: dict[int, tuple[Any, str]] = {}  # id -> (the array itself, its digest at creation)


def array_digest(a: Any) -> str:
    """sha256 of a numpy array's dtype, shape and bytes."""
    import numpy as np

    a = np.ascontiguousarray(a)
    h = _sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
    return h.hexdigest()


def register_array(a: Any) -> None:
    """An array the harness made (validation rows, token byte lengths): remember its digest."""
    _arrays[id(a)] = (a, array_digest(a))


def check_array(what: str, a: Any) -> Optional[str]:
    entry = _arrays.get(id(a))
    if entry is None or entry[0] is not a:
        return f"the {what} were not made by the harness"
    if array_digest(a) != entry[1]:
        return f"the {what} were modified in place"
    return None


# -- timestamps ----------------------------------------------------------------------------


def note_batch(split: str) -> None:
    """A data loader served its first batch of `split` (called by loader.iter_rows)."""
    if split == "train" and _State.first_train_batch is None:
        _State.first_train_batch = _clock()
    elif split == "val":
        _State.val_split_used = True


# -- one evaluation --------------------------------------------------------------------------


class Evaluation:
    """The bookkeeping of one evaluate_bpb call; writes exactly one record (ok or refused)."""

    def __init__(self, framework: str):
        _State.evaluations += 1
        self.number = _State.evaluations
        self.started = _clock()
        self.framework = framework
        self.problems = tampering()
        self.data: dict = {}
        self.causality: Optional[dict] = None

    def describe(self, ctx: Any, spec: Any, rows: Any) -> None:
        """The constants and data this evaluation uses (checked by the orchestrator)."""
        token_bytes = spec.tokenizer.token_bytes
        for what, a in (("validation rows", rows), ("token byte lengths", token_bytes)):
            problem = check_array(what, a)
            if problem:
                self.problems.append(problem)
        profile = getattr(ctx, "profile", None)
        self.data = {
            "seq_len": int(rows.shape[1]) - 1,
            "n_rows": int(rows.shape[0]),
            "eval_tokens": int(spec.eval_tokens),
            "vocab": int(spec.tokenizer.vocab_size),
            "rows_sha256": array_digest(rows),
            "token_bytes_sha256": array_digest(token_bytes),
            "profile": getattr(profile, "name", None),
            "time_budget": getattr(ctx, "time_budget", None),
        }
        self._rows, self._token_bytes = rows, token_bytes

    def refuse_if_tampered(self) -> None:
        if self.problems:
            self.refuse("tampered", "; ".join(dict.fromkeys(self.problems)))

    def refuse(self, verdict: str, detail: str) -> None:
        self._write(verdict, None, detail)
        what = "the model is not causal" if verdict == "non-causal" else "the harness was modified at run time"
        raise ArError(f"evaluate_bpb refused the result: {what}: {detail}")

    def finish(self, val_bpb: float) -> float:
        """Check everything again, write the record, hand back val_bpb."""
        self.problems += tampering()
        if self.data:
            for what, a in (("validation rows", self._rows), ("token byte lengths", self._token_bytes)):
                problem = check_array(what, a)
                if problem:
                    self.problems.append(problem)
        self.refuse_if_tampered()
        self._write("ok", float(val_bpb), "")
        return val_bpb

    def _write(self, verdict: str, val_bpb: Optional[float], detail: str) -> None:
        first = _State.first_train_batch
        _write({
            "kind": "eval",
            "n": self.number,
            "verdict": verdict,
            "detail": detail,
            "val_bpb": val_bpb,
            "framework": self.framework,
            "train_seconds": None if first is None else round(self.started - first, 4),
            "eval_seconds": round(_clock() - self.started, 4),
            "startup_seconds": None if first is None else round(first - _imported_at, 4),
            "val_split_used": _State.val_split_used,
            "causality": self.causality,
            **self.data,
        })


# The stdlib and builtins the channel and the evaluation use; this module's own functions.
protect_external(builtins, ["open", "int", "float", "range", "len", "max", "min", "abs", "sum", "isinstance",
                            "getattr", "vars", "dict", "repr"])
protect_external(time, ["monotonic", "time", "perf_counter"])
protect_external(hmac, ["new", "compare_digest"])
protect_external(hashlib, ["sha256"])
protect_external(json, ["dumps", "loads"])
protect_module(sys.modules[__name__], exclude=("_State",))
