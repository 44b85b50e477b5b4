"""Guards around an experiment: a static look at the proposal, and the workspace before and
after the run.

check_proposal (before anything runs): the proposed editable file is parsed and its
suspicious constructs are compared with those of the current file; only new ones count,
so the template's own summary print is not held against it. Flagged: printing a
`val_bpb:` line, importing or reaching harness internals (anything of autoresearch.data
or autoresearch.loop beyond the public API the templates use), assigning to or
setattr-ing attributes of autoresearch, torch, mlx, numpy, math, time, builtins and
similar modules, `exec`/`eval`/`__import__`/importlib/ctypes/`sys.modules`/frame and
dunder tricks, reading the result channel or a secret from the environment, naming
results.tsv / .git / program.md / .autoresearch / site-packages, setsid / setpgrp /
fork / start_new_session / ignoring SIGTERM, saving or loading state (torch.save,
pickle, ...) and reading the data files or the validation split directly. It catches
the obvious; an obfuscated attempt gets through and meets the run-time checks.

WorkspaceGuard (around each run): before, the workspace must hold nothing but the
committed state (strict, the loop: no changed tracked file, no untracked file Python
could import) and the editable file must be a regular file, not a symbolic link; results.tsv, runs.jsonl, the tracked files and the control files of .git
are copied, everything else is listed. After, every difference is undone where
possible (files restored from the copies, new files removed, a symlink replaced by the
file) and reported; the run is then rejected. A change to the installed harness
(autoresearch/data) cannot be undone safely from here: the run is rejected and the next
run refuses to start.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ArError

# -- the static check ------------------------------------------------------------------------

# What a training script may take from autoresearch.data (what the templates use).
PUBLIC_API = {
    "autoresearch.data": {"load_context", "RunContext"},
    "autoresearch.data.context": {"load_context", "RunContext", "read_workspace_config"},
    "autoresearch.data.torch_io": {"make_dataloader", "evaluate_bpb", "default_device"},
    "autoresearch.data.mlx_io": {"make_dataloader", "evaluate_bpb"},
}
_PRIVATE_ROOTS = ("autoresearch.data", "autoresearch.loop", "autoresearch.cli")
# Modules whose attributes a training script has no business replacing.
_FROZEN_MODULES = ("autoresearch", "math", "builtins", "numpy", "time", "hmac", "hashlib", "json", "marshal", "sys",
                   "os", "random", "secrets", "operator", "functools", "importlib", "pyarrow", "tiktoken", "signal",
                   "subprocess", "mlx", "torch")
# Deeper torch attributes that are settings, not functions (assigning them is normal).
_TORCH_SETTINGS = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.", "torch._functorch.config.",
                   "torch.cuda.matmul.", "torch.set_")
_DUNDERS = {"__dict__", "__code__", "__globals__", "__closure__", "__builtins__", "__subclasses__", "__setattr__",
            "__delattr__", "__getattribute__", "__import__", "__defaults__", "__kwdefaults__", "__func__",
            "__self__", "__bases__", "__mro__", "__class__", "__loader__", "__spec__"}
_BANNED_CALLS = {"exec", "eval", "compile", "__import__", "globals", "vars", "breakpoint"}
_BANNED_MODULES = ("importlib", "ctypes", "inspect", "builtins", "pickle", "shelve", "marshal", "dill", "joblib",
                   "cloudpickle", "pyarrow", "pandas", "mmap", "pty")
_GC_OK = {"gc.collect", "gc.freeze", "gc.disable", "gc.enable", "gc.unfreeze"}  # what the templates do with gc
_SECRET_KEY = re.compile(r"AUTORESEARCH_(RESULT|RUN_ID)|KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
_TEXT_RULES = (
    ("prints val_bpb", re.compile(r"(?<![\w.])val_bpb\s*:")),
    ("names a protected file", re.compile(r"results\.tsv|runs\.jsonl|program\.md|config\.toml|(^|[/\\])\.git([/\\]|$)"
                                          r"|(^|[/\\])\.autoresearch([/\\]|$)|site-packages|dist-packages")),
    ("reads the result channel", re.compile(r"AUTORESEARCH_RESULT|AUTORESEARCH_RUN_ID|/environ\b")),
    ("escapes the process group", re.compile(r"\b(setsid|nohup|disown|daemoni[sz]e)\b")),
    ("reads the data files", re.compile(r"\.parquet\b|tokenizer\.pkl|token_bytes\.npy")),
)
_ESCAPES = {"os.setsid", "os.setpgrp", "os.setpgid", "os.fork", "os.forkpty", "os.daemon",
            "os.posix_spawn", "os.posix_spawnp", "signal.pthread_sigmask", "signal.SIG_IGN"}
_STATE_IO = re.compile(r"^(torch\.(save|load)|numpy\.(save|savez|savez_compressed|load)|mlx\.core\.(save\w*|load)"
                       r"|safetensors\..*)$")
_DATA_NAMES = {"validation_rows", "data_spec", "iter_rows", "make_batches", "make_packer", "val_shard",
               "train_shards", "data_dir", "tokenizer_dir", "token_bytes"}


@dataclass(frozen=True)
class Finding:
    rule: str
    snippet: str  # the construct, normalised (the key that is compared with the old file)
    line: int


class _Scanner(ast.NodeVisitor):
    def __init__(self, source: str):
        self.source = source
        self.aliases: dict[str, str] = {}  # local name -> dotted module or object path
        self.found: list[Finding] = []

    # helpers

    def add(self, rule: str, node: ast.AST, snippet: Optional[str] = None) -> None:
        text = snippet or ast.get_source_segment(self.source, node) or type(node).__name__
        self.found.append(Finding(rule, " ".join(text.split())[:120], getattr(node, "lineno", 0)))

    def dotted(self, node: ast.AST) -> Optional[str]:
        """`F.cross_entropy` -> "torch.nn.functional.cross_entropy" (through import aliases)."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    # imports

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:  # `import torch.nn` binds `torch`
                root = a.name.split(".")[0]
                self.aliases[root] = root
            self._check_module(a.name, node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        self._check_module(mod, node)
        for a in node.names:
            full = f"{mod}.{a.name}"
            self.aliases[a.asname or a.name] = full
            if mod.startswith(_PRIVATE_ROOTS) or mod == "autoresearch":
                if a.name not in PUBLIC_API.get(mod, set()) and full not in PUBLIC_API:
                    self.add("imports harness internals", node, f"from {mod} import {a.name}")
        self.generic_visit(node)

    def _check_module(self, mod: str, node: ast.AST) -> None:
        if mod.startswith(_PRIVATE_ROOTS) and mod not in PUBLIC_API:
            self.add("imports harness internals", node, f"import {mod}")
        if mod.split(".")[0] in _BANNED_MODULES:
            self.add("imports a module for introspection or raw data", node, f"import {mod}")

    # attribute access and calls

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _DUNDERS:
            self.add("reaches into object internals", node, f".{node.attr}")
        path = self.dotted(node)
        if path:
            if path.startswith(_PRIVATE_ROOTS) and not _public(path):
                self.add("reaches harness internals", node, path)
            if path in _ESCAPES:
                self.add("escapes the process group", node, path)
            if path == "sys.modules" or path.startswith("sys._getframe") or path == "os.environ.copy":
                self.add("reaches into the interpreter", node, path)
            if path.startswith("gc.") and path not in _GC_OK:
                self.add("reaches into the interpreter", node, path)
            if _STATE_IO.match(path):
                self.add("saves or loads state (each run starts from scratch)", node, path)
            if node.attr in _DATA_NAMES and path.startswith("autoresearch"):
                self.add("reads the data directly", node, path)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("__builtins__", "__loader__", "__spec__"):
            self.add("reaches into the interpreter", node, node.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        path = self.dotted(func)
        if name in _BANNED_CALLS and name not in self.aliases:
            self.add("runs code built at run time", node, f"{name}(...)")
        if name in ("setattr", "delattr") or path in ("object.__setattr__", "object.__delattr__"):
            target = self.dotted(node.args[0]) if node.args else None
            if target and (target.split(".")[0] in _FROZEN_MODULES or target.startswith("autoresearch")):
                self.add("patches a module", node, f"{name or path}({target}, ...)")
        if path in ("os.getenv", "os.environ.get", "os.environ.pop", "os.getenvb") and node.args:
            self._env_key(node.args[0], node)
        for kw in node.keywords:
            if kw.arg in ("start_new_session", "process_group", "preexec_fn") and not (
                isinstance(kw.value, ast.Constant) and kw.value.value in (False, None)
            ):
                self.add("escapes the process group", node, f"{kw.arg}=...")
            if kw.arg == "split" and isinstance(kw.value, ast.Constant) and kw.value.value == "val":
                self.add("reads the validation split", node, 'split="val"')
        if path and path.endswith(("make_dataloader", "iter_rows", "make_batches")) and len(node.args) >= 5:
            arg = node.args[4 if path.endswith("make_dataloader") else 3]
            if isinstance(arg, ast.Constant) and arg.value == "val":
                self.add("reads the validation split", node, '"val"')
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self.dotted(node.value) == "os.environ":
            self._env_key(node.slice, node)
        self.generic_visit(node)

    def _env_key(self, key: ast.AST, node: ast.AST) -> None:
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and _SECRET_KEY.search(key.value):
            self.add("reads a secret or the result channel from the environment", node, key.value)

    # assignments

    def _target(self, target: ast.AST, node: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, node)
            return
        if isinstance(target, ast.Starred):
            self._target(target.value, node)
            return
        base = target.value if isinstance(target, (ast.Attribute, ast.Subscript)) else None
        if base is None:
            return
        path = self.dotted(target) if isinstance(target, ast.Attribute) else self.dotted(base)
        if not path:
            return
        root = path.split(".")[0]
        if path.startswith(_TORCH_SETTINGS) or path == "os.environ" or path.startswith("os.environ."):
            return
        if root in _FROZEN_MODULES and root in {v.split(".")[0] for v in self.aliases.values()}:
            self.add("patches a module", node, f"{path} = ...")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._target(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._target(t, node)
        self.generic_visit(node)

    # strings

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            for rule, pattern in _TEXT_RULES:
                if pattern.search(node.value):
                    self.add(rule, node, repr(node.value))
        self.generic_visit(node)


def _public(path: str) -> bool:
    """A public module of the harness (or a package on the way to one), a public name of
    one, or an attribute of such a name (RunContext.MAX_SEQ_LEN)."""
    if path in PUBLIC_API or any(m.startswith(path + ".") for m in PUBLIC_API):
        return True
    mod, _, name = path.rpartition(".")
    if mod in PUBLIC_API:
        return name in PUBLIC_API[mod]
    return bool(mod) and mod.startswith(_PRIVATE_ROOTS) and _public(mod)


def findings(source: str) -> list[Finding]:
    """The suspicious constructs of a Python source (by line, when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        out = []
        for n, line in enumerate(source.splitlines(), 1):
            for rule, pattern in _TEXT_RULES:
                if pattern.search(line):
                    out.append(Finding(rule, " ".join(line.split())[:120], n))
        return out
    scanner = _Scanner(source)
    scanner.visit(tree)
    return scanner.found


def check_proposal(editable: str, old: str, new: str) -> Optional[str]:
    """Why the proposed `new` text of the editable file is refused before it runs, or None.
    Only constructs that `old` does not already have count."""
    if not editable.endswith(".py"):
        return None
    before = collections.Counter((f.rule, f.snippet) for f in findings(old))
    fresh = []
    for f in findings(new):
        key = (f.rule, f.snippet)
        if before[key] > 0:
            before[key] -= 1
        else:
            fresh.append(f)
    if not fresh:
        return None
    shown = "; ".join(f"line {f.line}: {f.rule} ({f.snippet})" for f in fresh[:3])
    more = f" and {len(fresh) - 3} more" if len(fresh) > 3 else ""
    return (f"{shown}{more}. {editable} may only train a model and call evaluate_bpb: the metric, the harness, "
            "the workspace and the environment are off limits")


# -- the editable file -------------------------------------------------------------------------


def editable_path(folder: Path, editable: str) -> Path:
    """The editable file's path, refusing a name that leaves the workspace."""
    if Path(editable).name != editable or editable in ("", ".", ".."):
        raise ArError(f"the editable file must be a file name in the workspace, got {editable!r}")
    return Path(folder) / editable


def check_editable(folder: Path, editable: str) -> Path:
    """The editable file, which must be a regular file (a symlink could point anywhere)."""
    path = editable_path(folder, editable)
    if path.is_symlink():
        raise ArError(f"{editable} in {folder} is a symbolic link; replace it with the file itself "
                      f"(`git checkout -- {editable}` if the committed one is a file)")
    return path


def write_editable(folder: Path, editable: str, text: str) -> None:
    """Write the proposal as a regular file, never through a symlink (one is replaced)."""
    path = editable_path(folder, editable)
    if path.is_symlink():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)


# -- the workspace around a run ----------------------------------------------------------------

_IMPORTABLE = (".py", ".pyc", ".pyd", ".so", ".pth", ".dylib")
_COPY_LIMIT = 1 << 20  # .git files up to this size are copied (packs are only listed)


@dataclass(frozen=True)
class _Entry:
    kind: str  # file | dir | link
    size: int
    mtime: int
    mode: int
    data: Optional[bytes] = None
    target: str = ""  # a symlink's target


def _entry(path: Path, copy: bool) -> Optional[_Entry]:
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return _Entry("link", 0, st.st_mtime_ns, st.st_mode, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return _Entry("dir", 0, 0, st.st_mode)
    data = None
    if copy:
        with contextlib.suppress(OSError):
            data = path.read_bytes()
    return _Entry("file", st.st_size, st.st_mtime_ns, st.st_mode, data)


def _walk(root: Path, skip: Iterable[str] = ()) -> Iterable[Path]:
    skip = set(skip)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    p = Path(e.path)
                    if p.relative_to(root).as_posix() in skip:
                        continue
                    yield p
                    if e.is_dir(follow_symlinks=False):
                        stack.append(p)
        except OSError:
            continue


def _git_lines(folder: Path, *args: str) -> list[str]:
    from .workspace import run_git  # git started with the stop signals held (workspace.py)

    return [line for line in run_git(folder, *args, strip=False).split("\0") if line]


def harness_dir() -> Path:
    """The installed harness (autoresearch/data): what every run's measurement executes."""
    from .. import data

    return Path(data.__file__).resolve().parent


def compile_harness() -> None:
    """Write the harness's byte code now, for every optimisation level, so that neither a
    run nor `ar` itself writes it later (which would look like a change to the harness).
    Silently nothing where the package is not writable (then no run can change it either)."""
    import compileall

    with contextlib.suppress(OSError):
        compileall.compile_dir(str(harness_dir()), quiet=2, optimize=[0, 1, 2])


def harness_state() -> dict[str, tuple]:
    root = harness_dir()
    out = {}
    for p in _walk(root):
        if "__pycache__" in p.relative_to(root).parts:
            continue  # Python writes these on first import; the sources are what is checked
        with contextlib.suppress(OSError):
            st = p.lstat()
            if not stat.S_ISDIR(st.st_mode):
                out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


class WorkspaceGuard:
    """Snapshot the workspace before a run; after it, undo and report what the run changed."""

    def __init__(self, folder: Path, editable: str, log_path: Path, *, strict: bool = True,
                 harness_baseline: Optional[dict] = None):
        self.folder = Path(folder).resolve()
        self.editable = editable
        self.log_rel = Path(log_path).resolve().relative_to(self.folder).as_posix() if \
            Path(log_path).resolve().is_relative_to(self.folder) else None
        self.strict = strict
        self.harness_baseline = harness_baseline
        self.files: dict[str, _Entry] = {}
        self.tracked: set[str] = set()
        self.git: dict[str, _Entry] = {}
        self.harness: dict[str, tuple] = {}

    # before

    def before(self) -> None:
        """Check and snapshot. ArError when the run must not start."""
        check_editable(self.folder, self.editable)
        if self.harness_baseline is not None:
            changed = _diff_keys(self.harness_baseline, harness_state())
            if changed:
                raise ArError(f"the installed harness changed since this loop started ({', '.join(changed[:3])} in "
                              f"{harness_dir()}); a run may have tampered with it: reinstall autoresearch "
                              "(pip install --force-reinstall autoresearch) and start again")
        if self.strict:
            # Changed tracked files, and untracked files Python could import (the script's
            # folder is first on sys.path: a stray torch.py would shadow torch). Other
            # untracked files (notes, progress.png) may stay; the run cannot change them.
            dirty = [line[3:] for line in _git_lines(self.folder, "status", "--porcelain", "-z", "--untracked-files=all")
                     if not line.startswith("??") or line.endswith(_IMPORTABLE)]
            if dirty:
                raise ArError(f"{self.folder} has changes besides the committed experiment ({', '.join(dirty[:5])}); "
                              "an experiment runs in the committed workspace only: commit or remove them")
        # Copied: tracked and untracked (not ignored) files, results.tsv and runs.jsonl.
        # Ignored files (logs, a virtualenv) are only listed.
        self.tracked = set(_git_lines(self.folder, "ls-files", "-z", "--cached", "--others", "--exclude-standard"))
        for p in _walk(self.folder, skip=[".git"]):
            rel = p.relative_to(self.folder).as_posix()
            copy = rel in self.tracked or rel in ("results.tsv", ".autoresearch/runs/runs.jsonl")
            always = rel in ("results.tsv", ".autoresearch/runs/runs.jsonl", self.editable)
            e = _entry(p, copy)
            if e is not None and e.kind == "file" and e.size > _COPY_LIMIT and not always:
                e = _entry(p, copy=False)  # a big data file kept in the workspace: listed only
            if e is not None:
                self.files[rel] = e
        git_dir = self.folder / ".git"
        for p in _walk(git_dir):
            rel = p.relative_to(git_dir).as_posix()
            # Control files (HEAD, refs, config, hooks, index, logs) are copied; objects,
            # of which there may be many, only listed (content-addressed: rarely touched).
            e = _entry(p, copy=not rel.startswith("objects/"))
            if e is not None and e.kind == "file" and e.size > _COPY_LIMIT:
                e = _entry(p, copy=False)
            if e is not None:
                self.git[rel] = e
        self.harness = harness_state()

    # after

    def after(self) -> list[str]:
        """Undo what the run changed; one line per thing it did (empty: nothing)."""
        problems: list[str] = []
        self._restore(self.folder, self.files, problems, skip={".git"}, label="")
        self._restore(self.folder / ".git", self.git, problems, skip=set(), label=".git/")
        changed = _diff_keys(self.harness, harness_state())
        if changed:
            problems.append(f"changed the installed harness ({', '.join(changed[:3])}); it was not undone and the "
                            "next run will not start")
        return problems

    def _restore(self, root: Path, before: dict[str, _Entry], problems: list[str], skip: set, label: str) -> None:
        now: dict[str, _Entry] = {}
        for p in _walk(root, skip=skip):
            rel = p.relative_to(root).as_posix()
            e = _entry(p, copy=False)
            if e is not None:
                now[rel] = e
        # New things first, deepest first, so a new folder is empty when it is removed.
        for rel in sorted(set(now) - set(before), key=lambda r: -r.count("/")):
            if label == "" and rel == self.log_rel:
                continue
            path = root / rel
            if now[rel].kind == "dir":
                shutil.rmtree(path, ignore_errors=True)
                if path.exists():
                    continue
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if "/" not in rel or (rel.rsplit("/", 1)[0] in before):
                problems.append(f"created {label}{rel} (removed)")
        for rel, old in sorted(before.items()):
            if label == "" and rel == self.log_rel:
                continue
            cur = now.get(rel)
            if cur is not None and cur.kind == old.kind and cur.target == old.target and (
                old.kind == "dir" or (cur.size, cur.mtime, cur.mode) == (old.size, old.mtime, old.mode)
            ):
                continue
            if cur is not None and old.kind == "dir" and cur.kind == "dir":
                continue
            problems.append(self._put_back(root / rel, old, cur, f"{label}{rel}"))

    @staticmethod
    def _put_back(path: Path, old: _Entry, cur: Optional[_Entry], name: str) -> str:
        what = "deleted" if cur is None else "replaced by a symbolic link" if cur.kind == "link" and old.kind != "link" \
            else "modified"
        try:
            if cur is not None and (cur.kind != old.kind or cur.kind == "link"):
                if cur.kind == "dir":
                    shutil.rmtree(path)
                else:
                    path.unlink()
            if old.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            elif old.kind == "link":
                path.symlink_to(old.target)
            elif old.data is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(old.data)
                os.chmod(path, stat.S_IMODE(old.mode))
                os.utime(path, ns=(old.mtime, old.mtime))
            else:
                return f"{what} {name} (could not be undone)"
        except OSError as e:
            return f"{what} {name} (could not be undone: {e})"
        return f"{what} {name} (restored)"


def _diff_keys(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
