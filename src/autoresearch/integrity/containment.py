"""What the experiment process may inherit, and finding every process it started.

Environment: built from an allow-list (clean_env), so LLM API keys and other secrets of
the `ar` process never reach the training script.

Processes: the runner starts the script in its own process group and signals the group.
A process that calls setsid()/setpgid() (a daemon, a detached server) leaves the group,
and a group kill misses it. ProcessTracker walks the process table (psutil) while the run
lasts (every POLL_SECONDS) and remembers every descendant of the script (by parent pid)
and every process of our user that carries the run's marker (RUN_ID_ENV) in its
environment; at the end those still alive are killed. psutil reads another process's
environment on Linux and on macOS alike. On Linux the `ar` process is also a child
subreaper while runs are active, so a descendant whose parent exits is re-parented to
`ar` (not to init) and stays findable; macOS has no subreaper (the orphan goes to
launchd), so there it is found by its marker or as a child of a process already tracked.

Residual gap: a process that detaches and drops its environment (exec with an empty one)
between two polls (on Linux only while another run is active at the same time, i.e.
parallel workers; on macOS at any time), or one that is started by something that is not
a descendant (a user service manager, cron, ssh to localhost), is not found.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import psutil

RUN_ID_ENV = "AUTORESEARCH_RUN_ID"
POLL_SECONDS = 0.2 if sys.platform.startswith("linux") else 0.5

# -- the environment -----------------------------------------------------------------------

_ALLOW_NAMES = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TMP", "TEMP",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "SYSTEMROOT",
}
_ALLOW_PREFIXES = (
    "LC_", "PYTHON", "CUDA_", "NVIDIA_", "HIP_", "ROCM_", "HSA_", "OMP_", "MKL_", "KMP_", "OPENBLAS_",
    "AUTORESEARCH_", "TORCH", "PYTORCH_", "MLX", "METAL_", "MTL_", "TRITON_", "NCCL_", "XDG_", "COVERAGE_",
)
# Whatever its prefix, a variable whose name looks like a secret is dropped.
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE", re.IGNORECASE)
# The judge's socket and the run marker are the orchestrator's, set per run, never inherited.
_CHANNEL = ("AUTORESEARCH_JUDGE_FD", RUN_ID_ENV)


def allowed_name(name: str) -> bool:
    if _SECRET.search(name) or name in _CHANNEL:
        return False
    return name in _ALLOW_NAMES or name.startswith(_ALLOW_PREFIXES)


def clean_env(base: Mapping[str, str], extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The allow-listed part of `base`, then `extra` (the run's own settings) on top."""
    env = {k: v for k, v in base.items() if allowed_name(k)}
    env.update(extra or {})
    return env


# -- the process table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    start: float  # psutil's create_time: with the pid, tells a process from a later one given the same pid
    cmd: str
    zombie: bool = False


_ATTRS = ["ppid", "create_time", "name", "status"]


def process_table(zombies: bool = False) -> dict[int, Proc]:
    """Every live process (and the zombies, if asked)."""
    out = {}
    # A fresh psutil.Process per pid rather than psutil.process_iter, whose shared cache
    # (and the `info` it sets on cached objects) is not safe for the trackers of parallel
    # workers polling in several threads at once.
    for pid in psutil.pids():
        try:
            info = psutil.Process(pid).as_dict(_ATTRS)  # a field it may not read is None
            pgid = os.getpgid(pid)  # psutil has no process group; the call is cheap on Linux and macOS
        except (psutil.NoSuchProcess, OSError):  # gone since the listing
            continue
        zombie = info["status"] == psutil.STATUS_ZOMBIE
        if info["ppid"] is None or info["status"] == psutil.STATUS_DEAD or (zombie and not zombies):
            continue
        out[pid] = Proc(pid, info["ppid"], pgid, info["create_time"] or 0.0, info["name"] or "", zombie)
    return out


def _same(p: Proc) -> bool:
    """`p` is still alive and is the same process (not a reused pid)."""
    try:
        now = psutil.Process(p.pid)
        return now.status() != psutil.STATUS_ZOMBIE and now.create_time() == p.start
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may not look closer


def _has_marker(pid: int, run_id: str) -> bool:
    """The process is of our user and carries the run's marker. psutil reads the environment
    a process was started with (Linux: /proc/<pid>/environ; macOS: sysctl KERN_PROCARGS2,
    same user only), so unsetting the variable later does not hide it; an exec with an
    empty environment does."""
    try:
        proc = psutil.Process(pid)
        return proc.uids().effective == os.getuid() and proc.environ().get(RUN_ID_ENV) == run_id
    except (psutil.Error, OSError):  # gone, not ours to read, or a kernel thread
        return False


# -- the subreaper (Linux) -------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36
_reaper_lock = threading.Lock()
_reaper_users = 0


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _subreaper():
    global _reaper_users
    with _reaper_lock:
        _reaper_users += 1
        if _reaper_users == 1:
            _set_subreaper(True)
    try:
        yield
    finally:
        with _reaper_lock:
            _reaper_users -= 1
            if _reaper_users == 0:
                _set_subreaper(False)


_active_lock = threading.Lock()
_active: set[int] = set()  # root pids of the runs in progress


class ProcessTracker:
    """Remembers every process of one run while it lasts; `kill_strays` ends them."""

    def __init__(self, root_pid: int, run_id: str, interval: float = POLL_SECONDS):
        self.root = root_pid
        self.run_id = run_id
        self.interval = interval
        self.tracked: dict[int, Proc] = {}
        self._seen: set[tuple[int, float]] = set()  # (pid, start) whose environment was read
        self._root_start: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._reaper = _subreaper()

    def start(self) -> "ProcessTracker":
        self._reaper.__enter__()
        with _active_lock:
            _active.add(self.root)
        self.poll()
        self._thread.start()
        return self

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.ident is not None:  # started (a Ctrl-C can land inside start())
            self._thread.join()
        self.reap()
        with _active_lock:
            _active.discard(self.root)
        self._reaper.__exit__(None, None, None)

    def reap(self) -> None:
        """Collect the run's processes that the subreaper made our children and that have
        exited (zombies keep their process group 'alive' and would pile up). The script
        itself is left to its Popen."""
        me = os.getpid()
        with _active_lock:
            alone = len(_active) <= 1
        for p in process_table(zombies=True).values():
            if not p.zombie or p.ppid != me or p.pid == self.root:
                continue
            ours = p.pid in self.tracked or (alone and self._orphan(p))
            if ours:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)

    def __enter__(self) -> "ProcessTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        table = process_table()
        root = table.get(self.root)
        if root is not None and self._root_start is None:
            self._root_start = root.start
        children: dict[int, list[Proc]] = {}
        for p in table.values():
            children.setdefault(p.ppid, []).append(p)
        found = [root] if root is not None else []
        # Still-alive processes seen before count as roots too: a child of a tracked
        # process that was itself re-parented is found through them.
        found += [table[pid] for pid, p in list(self.tracked.items()) if pid in table and table[pid].start == p.start]
        me = os.getpid()
        with _active_lock:
            alone = len(_active) == 1
        for p in children.get(me, []):
            if alone and self._orphan(p):
                found.append(p)
        for p in table.values():
            key = (p.pid, p.start)
            if key in self._seen:
                continue
            self._seen.add(key)  # each process's environment is read once
            if p.pid != me and _has_marker(p.pid, self.run_id):
                found.append(p)
        stack = list(found)
        while stack:
            p = stack.pop()
            if p.pid == me:
                continue
            self.tracked.setdefault(p.pid, p)
            stack.extend(c for c in children.get(p.pid, []) if c.pid not in self.tracked)

    def _orphan(self, p: Proc) -> bool:
        """A child of ours that is an orphan of this run, re-parented by the subreaper: not
        the script, started after it, and outside our own process group (a process the
        script started cannot join it: it is in another session), unlike the git
        commands `ar` itself runs."""
        return (p.pid != self.root and self._root_start is not None and p.start >= self._root_start
                and p.pgid != os.getpgrp())

    def strays(self) -> list[Proc]:
        """Tracked processes still alive outside the script's process group (the group
        itself is the runner's to stop)."""
        self.poll()
        table = process_table()
        out = []
        for p in self.tracked.values():
            now = table.get(p.pid)
            if p.pid != self.root and now is not None and now.start == p.start and now.pgid != self.root:
                out.append(now)
        return out

    def kill_strays(self) -> list[Proc]:
        """SIGKILL every stray (they are past the group's SIGTERM and grace); the ones killed."""
        killed = []
        for p in self.strays():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p)
        deadline = time.monotonic() + 2.0
        for p in killed:
            self._reap(p, deadline)
        return killed

    def _reap(self, p: Proc, deadline: float) -> None:
        """Wait for a killed process; collect it if the subreaper made it our child."""
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:  # not our child: init reaps it
                if not _same(p):
                    return
                pid = 0
            if pid == p.pid:
                return
            time.sleep(0.01)


def describe(procs: Iterable[Proc]) -> str:
    return ", ".join(f"pid {p.pid} ({p.cmd})" for p in procs)
