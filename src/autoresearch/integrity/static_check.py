"""The static check of a proposal: advice, fed back to the model, before anything runs.

check_proposal: the proposed editable file is parsed and its suspicious constructs are
compared with those of the current file; only new ones count, so the template's own
summary print is not held against it. Flagged: printing a `val_bpb:` line, importing or
reaching the tool's internals (anything of autoresearch beyond the public API the
templates use), assigning to or setattr-ing attributes of autoresearch, torch, mlx,
numpy, math, time, builtins and similar modules, `exec`/`eval`/`__import__`/importlib/
ctypes/`sys.modules`/frame and dunder tricks, reading the result channel or a secret from
the environment, naming results.tsv / .git / program.md / .autoresearch / site-packages,
setsid / setpgrp / fork / start_new_session / ignoring SIGTERM, saving or loading state
(torch.save, pickle, ...) and reading the data files or the validation split directly. It
catches the obvious; an obfuscated attempt gets through and meets the run-time checks.
"""

from __future__ import annotations

import ast
import collections
import re
from dataclasses import dataclass
from typing import Optional

# -- the static check ------------------------------------------------------------------------

# What a training script may take from autoresearch.data (what the templates use).
PUBLIC_API = {
    "autoresearch.data": {"load_context", "RunContext"},
    "autoresearch.data.context": {"load_context", "RunContext", "read_workspace_config"},
    "autoresearch.data.torch_io": {"make_dataloader", "evaluate_bpb", "default_device"},
    "autoresearch.data.mlx_io": {"make_dataloader", "evaluate_bpb"},
}
# Everything of the tool but the harness's public API (the backends are public: the templates use them).
_PRIVATE_ROOTS = tuple(f"autoresearch.{p}" for p in ("data", "cli", "loop", "experiment", "journal", "run", "integrity",
                                                    "workspace", "executors", "proposers", "ui"))
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
