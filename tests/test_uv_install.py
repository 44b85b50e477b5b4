"""Installing with uv, as the README's "Install with uv" says, in a fresh copy of this checkout.

The documented path on a Linux CPU box is
`uv venv && uv pip install --torch-backend cpu torch==2.13.0 -e '.[all]'`, then
`uv run ar ...`. PyTorch's CPU index cannot be reached from every machine that runs the
tests, so the install here takes the CPU wheel from a local wheel directory
(`/opt/wheels`, what pip's `find-links` points at) when it has one, and
`--torch-backend cpu` only checks, offline, that uv would fetch torch from the CPU index.
uv does not read pip's configuration: a plain `uv pip install torch` resolves PyPI's
multi-GB CUDA build, so the torch install here is resolved with `--dry-run` first and refused if
it would bring anything but the CPU wheel (the tool install uses the same sources and pin),
and each installed torch must be the pinned CPU build.

Nothing touches the home directory or the checkout: the project files are copied to a
temporary folder (`uv run` writes `.venv` and `uv.lock` there), and uv's cache, tool and
user-config folders live there too.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "2.13.0"
WHEEL_DIRS = (Path("/opt/wheels"),)
VERSION_LINE = "ar (autoresearch) {}"
BUDGET_S = 240.0  # the whole test; it takes well under a minute with a warm machine


def _project_version() -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def _uv() -> str | None:
    try:
        from uv import find_uv_bin  # the `uv` package of the dev extra

        return find_uv_bin()
    except Exception:
        return shutil.which("uv")


def _local_cpu_wheel_dir() -> Path | None:
    """A directory holding the CPU torch wheel for this interpreter and machine, if any."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    arch = platform.machine()
    for d in WHEEL_DIRS:
        pattern = f"torch-{TORCH_PIN}+cpu-{tag}-{tag}-*linux*_{arch}.whl"
        if sys.platform == "linux" and d.is_dir() and any(d.glob(pattern)):
            return d
    return None


class Uv:
    def __init__(self, exe: str, tmp: Path) -> None:
        self.exe = exe
        self.deadline = time.monotonic() + BUDGET_S
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
        env.pop("VIRTUAL_ENV", None)
        env.update(
            UV_CACHE_DIR=str(tmp / "uv-cache"),
            UV_TOOL_DIR=str(tmp / "uv-tools"),
            UV_TOOL_BIN_DIR=str(tmp / "bin"),
            UV_PYTHON_DOWNLOADS="never",  # use this interpreter, never fetch one
            XDG_CONFIG_HOME=str(tmp / "config"),  # no user uv.toml; the project's own is read
            UV_NO_PROGRESS="1",
        )
        self.env = env

    def run(
        self, args: list[str], cwd: Path, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        left = self.deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the uv install took more than {BUDGET_S:.0f} s")
        try:
            proc = subprocess.run(
                args, cwd=cwd, env=self.env, input=input, capture_output=True, text=True,
                timeout=left,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(args)} did not finish within the {BUDGET_S:.0f} s budget")
        if check and proc.returncode != 0:
            cmd = " ".join(args)
            pytest.fail(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def uv(
        self, *args: str, cwd: Path, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return self.run([self.exe, *args], cwd, check, input)


def _copy_project(dest: Path) -> Path:
    """What `git clone` gives a user, from this working tree (edits included)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return dest


def _torch_source(wheels: Path | None) -> list[str]:
    if wheels is not None:
        return ["--find-links", str(wheels)]
    return ["--torch-backend", "cpu"]  # the README's command, needs download.pytorch.org


def _check_cpu_only(plan: subprocess.CompletedProcess) -> None:
    """Refuse, before anything is downloaded, an install that would bring a CUDA torch."""
    text = plan.stdout + plan.stderr
    assert f"torch=={TORCH_PIN}+cpu" in text, text
    assert "nvidia" not in text.lower(), text


def test_uv_pip_install_and_uv_run_from_a_clone(tmp_path):
    exe = _uv()
    if exe is None:
        pytest.skip("uv is not installed (it is in the dev extra: pip install -e '.[dev]')")
    uv = Uv(exe, tmp_path)
    clone = _copy_project(tmp_path / "autoresearch")
    wheels = _local_cpu_wheel_dir()
    py = clone / ".venv" / "bin" / "python"
    expected = VERSION_LINE.format(_project_version())
    timings: dict[str, float] = {}

    def timed(label, fn):
        t = time.monotonic()
        out = fn()
        timings[label] = round(time.monotonic() - t, 1)
        return out

    # uv venv && uv pip install <CPU torch> torch==2.13.0 -e '.[torch]'
    timed("uv venv", lambda: uv.uv("venv", "--python", sys.executable, ".venv", cwd=clone))
    install = [*_torch_source(wheels), f"torch=={TORCH_PIN}", "-e", ".[torch]"]
    plan = timed("dry run", lambda: uv.uv("pip", "install", "--dry-run", *install, cwd=clone))
    _check_cpu_only(plan)
    timed("uv pip install", lambda: uv.uv("pip", "install", *install, cwd=clone))

    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    out = uv.run([str(py), "-c", probe], cwd=clone).stdout.split()
    assert out == [f"{TORCH_PIN}+cpu", "None"], out

    ar = clone / ".venv" / "bin" / "ar"
    assert uv.run([str(ar), "--version"], cwd=clone).stdout.strip() == expected
    assert "ar init" in uv.run([str(ar), "--help"], cwd=clone).stdout

    # `uv run ar ...` from the clone: locks, syncs the project's own dependencies into the
    # same .venv (an inexact sync: the CPU torch stays), then runs the entry point.
    version = timed("uv run", lambda: uv.uv("run", "ar", "--version", cwd=clone))
    assert version.stdout.strip() == expected, version.stdout + version.stderr
    assert "ar init" in uv.uv("run", "ar", "--help", cwd=clone).stdout
    out = uv.uv("run", "python", "-c", probe, cwd=clone).stdout.split()
    assert out == [f"{TORCH_PIN}+cpu", "None"], out
    assert (clone / "uv.lock").is_file()

    # uv tool install: `ar` on PATH, with torch in its environment (ar runs train.py with
    # its own interpreter).
    tool = [*_torch_source(wheels), "--with", f"torch=={TORCH_PIN}", "-e", ".[torch]"]
    timed("uv tool install", lambda: uv.uv("tool", "install", *tool, cwd=clone))
    tool_ar = tmp_path / "bin" / "ar"
    assert uv.run([str(tool_ar), "--version"], cwd=tmp_path).stdout.strip() == expected
    tool_py = tmp_path / "uv-tools" / "autoresearch" / "bin" / "python"
    out = uv.run([str(tool_py), "-c", probe], cwd=tmp_path).stdout.split()
    assert out == [f"{TORCH_PIN}+cpu", "None"], out

    print("uv timings (s):", timings)


def test_torch_backend_cpu_targets_the_cpu_index(tmp_path):
    """The README's `--torch-backend cpu` looks torch up on PyTorch's CPU index, not on
    PyPI. Checked offline with an empty cache: nothing is fetched, the request is logged."""
    exe = _uv()
    if exe is None:
        pytest.skip("uv is not installed (it is in the dev extra: pip install -e '.[dev]')")
    uv = Uv(exe, tmp_path)
    args = ["pip", "compile", "--offline", "-v", "--torch-backend", "cpu",
            "--python-platform", "x86_64-unknown-linux-gnu", "-"]
    proc = uv.uv(*args, cwd=tmp_path, check=False, input=f"torch=={TORCH_PIN}\n")
    text = proc.stdout + proc.stderr
    assert "https://download.pytorch.org/whl/cpu/torch/" in text, text
    assert "pypi.org" not in text, text
