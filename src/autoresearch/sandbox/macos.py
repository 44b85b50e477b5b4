"""The macOS sandbox: a Seatbelt profile run with /usr/bin/sandbox-exec.

UNTESTED ON A MAC: only the profile's text is tested (tests/test_sandbox.py, on Linux).
See docs/sandbox.md for what to check first on a Mac.

The profile starts closed, `(deny default)` (the shape of the Chromium-derived policy of
OpenAI's Codex CLI and of Anthropic's sandbox-runtime), then opens what Python, PyTorch
and MLX/Metal need:
- processes: fork and exec; signals and process info only within the sandbox;
- reads: everything except the home dirs (/Users and $HOME), /Volumes, the host's temp
  dirs and the hidden paths; the readonly and writable mounts and the private tmp are
  readable again wherever they are;
- writes: the writable mounts and the private tmp only (and /dev/null);
- Metal: IOKit (the GPU user-client classes differ per GPU and macOS version, so all of
  IOKit, which is a kernel surface, not a way to files or the network) and a short list
  of mach services (a mach service can act outside the sandbox, so no blanket allow);
- network: none (AF_UNIX sockets inside the private tmp only) unless asked for.
Exclusions are written as `require-not` inside the allows, so no allow ever covers a
hidden path whatever precedence Seatbelt gives to later rules; the explicit denies at the
end say it again. Strings are escaped (backslash, double quote); control characters are
refused.

There is no private mount on macOS: the private tmp is a fresh dir made by `command()`
under the system temp dir (the OS cleans it up; the caller may remove it after the run).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from autoresearch.sandbox import Mounts, Unavailable

SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # never one from PATH
# Host locations these may name are not readable: unset, so tools fall back to HOME.
UNSET = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")
READ_DENIED = ("/Users", "/Volumes", "/private/tmp")  # plus $HOME and the host temp dir

MACH_SERVICES = (
    "com.apple.system.opendirectoryd.libinfo",  # getpwuid() and friends
    "com.apple.system.opendirectoryd.membership",
    "com.apple.system.logger",
    "com.apple.logd",
    "com.apple.system.notification_center",
    "com.apple.bsd.dirhelper",  # confstr(_CS_DARWIN_USER_TEMP_DIR)
    "com.apple.cfprefsd.daemon",  # CFPreferences, read by Foundation and Metal
    "com.apple.cfprefsd.agent",
    "com.apple.PowerManagement.control",
    "com.apple.gpumemd.source",  # Metal's GPU memory accounting
)
XPC_SERVICES = ("com.apple.MTLCompilerService",)  # Metal compiles shaders out of process
NETWORK_MACH_SERVICES = (  # DNS and TLS, only with network=True
    "com.apple.SystemConfiguration.DNSConfiguration",
    "com.apple.SystemConfiguration.configd",
    "com.apple.networkd",
    "com.apple.trustd.agent",
    "com.apple.SecurityServer",
    "com.apple.ocspd",
)
SYSCTL_PREFIXES = ("hw.", "machdep.cpu.", "kern.os", "vm.loadavg")
SYSCTL_NAMES = ("kern.version", "kern.hostname", "kern.argmax", "kern.maxfilesperproc", "kern.usrstack64",
                "kern.secure_kernel", "sysctl.proc_cputype", "kern.boottime")


def quote(path) -> str:
    """A path as a Seatbelt string literal."""
    text = str(path)
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise ValueError(f"a sandbox path may not hold control characters: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _real(p) -> str:
    return os.path.realpath(p)  # Seatbelt sees resolved paths (/tmp is /private/tmp)


def _inside_any(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _under(paths: Sequence[str], not_under: Sequence[str]) -> str:
    """A filter: inside one of `paths`, inside none of `not_under`."""
    inside = " ".join(f"(subpath {quote(p)})" for p in paths)
    if not not_under:
        return f"(require-any {inside})"
    outside = " ".join(f"(require-not (literal {quote(p)})) (require-not (subpath {quote(p)}))" for p in not_under)
    return f"(require-all (require-any {inside}) {outside})"


def profile(mounts: Mounts, *, tmp: Path, home: Optional[Path] = None, host_tmp: Optional[Path] = None) -> str:
    """The Seatbelt profile text for `mounts`, with `tmp` as the private tmp dir."""
    home = home if home is not None else Path.home()
    host_tmp = host_tmp if host_tmp is not None else Path(tempfile.gettempdir())
    hidden = [_real(p) for p in mounts.hidden]
    ro = [_real(p) for p in mounts.readonly]
    rw = [_real(p) for p in mounts.writable if _real(p) not in ro] + [_real(tmp)]  # readonly wins
    denied_reads = list(READ_DENIED) + [_real(home), _real(host_tmp)] + hidden
    out = [
        "(version 1)",
        "(deny default)",
        "; processes: children inherit this profile",
        "(allow process-fork)",
        "(allow process-exec)",
        "(allow signal (target same-sandbox))",
        "(allow process-info* (target same-sandbox))",
        "; system information, preferences, shared memory",
        "(allow sysctl-read "
        + " ".join(f"(sysctl-name-prefix {quote(p)})" for p in SYSCTL_PREFIXES) + " "
        + " ".join(f"(sysctl-name {quote(n)})" for n in SYSCTL_NAMES) + ")",
        "(allow user-preference-read)",
        "(allow ipc-posix-shm)",
        "(allow ipc-posix-sem)",
        "; Metal (GPU)",
        "(allow iokit-open)",
        "(allow iokit-get-properties)",
        "(allow mach-lookup "
        + " ".join(f"(global-name {quote(s)})" for s in MACH_SERVICES) + " "
        + " ".join(f"(xpc-service-name {quote(s)})" for s in XPC_SERVICES) + ")",
        "; reads: not the homes, other volumes, the host temp dirs, nor the hidden paths",
        f"(allow file-read* {_under(['/'], denied_reads)})",
        f"(allow file-read-metadata {_under(['/'], hidden)})",  # stat() of a path's parents
        f"(allow file-read* {_under(ro + rw, hidden)})",
        "; writes: the writable mounts and the private tmp only",
        f"(allow file-write* {_under(rw, hidden + [r for r in ro if _inside_any(r, rw)])})",
        '(allow file-write-data (literal "/dev/null") (literal "/dev/zero") (literal "/dev/dtracehelper"))',
        '(allow file-ioctl (literal "/dev/dtracehelper"))',
    ]
    if mounts.network:
        out += ["; network: allowed",
                "(allow network*)",
                "(allow system-socket)",
                "(allow mach-lookup " + " ".join(f"(global-name {quote(s)})" for s in NETWORK_MACH_SERVICES) + ")"]
    else:
        out += ["; network: none ((deny default) already says so; said again for whoever edits this)",
                "(deny network*)",
                "; AF_UNIX sockets in the private tmp (multiprocessing, torch_shm_manager)",
                "(allow system-socket (socket-domain AF_UNIX))",
                f"(allow network-bind (local unix-socket (subpath {quote(_real(tmp))})))",
                f"(allow network-outbound (remote unix-socket (subpath {quote(_real(tmp))})))"]
    if hidden:
        out += ["; hidden: no read, write or stat, whatever came before",
                "(deny file-read* file-write* "
                + " ".join(f"(literal {quote(h)}) (subpath {quote(h)})" for h in hidden) + ")"]
    return "\n".join(out) + "\n"


class Seatbelt:
    name = "seatbelt"

    def __init__(self, binary: str = SANDBOX_EXEC, tmp_root: Optional[Path] = None):
        self.binary = binary
        self.tmp_root = tmp_root  # where the private tmp dirs are made (default: the system's)

    def command(self, argv: Sequence[str], *, cwd: Path, mounts: Mounts) -> list[str]:
        """sandbox-exec with the profile, then env to point HOME and TMPDIR at the private
        tmp. Start it with Popen(cwd=cwd, ...): sandbox-exec does not change dir."""
        tmp = Path(tempfile.mkdtemp(prefix="ar-sandbox-", dir=self.tmp_root))
        (tmp / "home").mkdir()
        text = profile(mounts, tmp=tmp)
        unset = [a for name in UNSET for a in ("-u", name)]
        return [self.binary, "-p", text, "/usr/bin/env", *unset, f"HOME={tmp / 'home'}", f"TMPDIR={tmp}/", *argv]


def probe(binary: str = SANDBOX_EXEC) -> Union[Seatbelt, Unavailable]:
    """Run /usr/bin/true under a trivial profile once."""
    try:
        done = subprocess.run([binary, "-p", "(version 1)(allow default)", "/usr/bin/true"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Unavailable(f"{binary} did not run ({e}): it ships with macOS; is this macOS?")
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Unavailable(f"sandbox-exec cannot start a sandbox ({error}): a sandboxed parent "
                           "(an IDE's, an agent's) cannot nest one; run ar from a plain terminal")
    return Seatbelt(binary)
