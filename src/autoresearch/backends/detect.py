"""What machine are we on: Apple Silicon, NVIDIA GPUs, or a plain CPU.

`detect_hardware()` never raises: every probe (sysctl, system_profiler, nvidia-smi,
torch.cuda, /proc) is guarded and a failed one just leaves its field empty. The parsing
of what those probes print lives in small pure functions so it can be tested with
sample strings from machines we do not have.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional

PROBE_TIMEOUT_S = 5.0  # system_profiler can take a second or two; never hang `ar hardware`
APPLE_TIERS = ("base", "pro", "max", "ultra")  # smallest to largest


@dataclass(frozen=True)
class GpuDevice:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_gb: Optional[float] = None
    sm_count: Optional[int] = None  # streaming multiprocessors (only torch tells)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    mhz: Optional[float] = None
    flags: frozenset = field(default_factory=frozenset)  # ISA features, e.g. {"avx2", "fma"}


@dataclass(frozen=True)
class Hardware:
    kind: str  # "apple" | "nvidia" | "cpu"
    chip: str  # what to call the machine: "Apple M4 Max", "NVIDIA H100 80GB HBM3", the CPU model
    os_name: str = ""  # platform.system(): "Darwin", "Linux", "Windows"
    machine: str = ""  # platform.machine(): "arm64", "x86_64"
    apple_generation: Optional[str] = None  # "M1".."M5"
    apple_tier: Optional[str] = None  # one of APPLE_TIERS
    memory_gb: Optional[float] = None  # memory a model trains in: unified (Apple), GPU 0 (NVIDIA), RAM (CPU)
    gpu_cores: Optional[int] = None  # Apple GPU cores, or GPU 0's SM count
    gpus: tuple = ()  # GpuDevice per NVIDIA GPU
    cpu_model: str = ""
    cpu_cores: int = 1  # cores this process may run on
    cpu_mhz: Optional[float] = None
    cpu_flags: frozenset = field(default_factory=frozenset)
    system_memory_gb: Optional[float] = None

    @property
    def apple_name(self) -> Optional[str]:
        """'M4 Max', 'M1' (base), or None off Apple Silicon."""
        if not self.apple_generation:
            return None
        tier = self.apple_tier or "base"
        return self.apple_generation if tier == "base" else f"{self.apple_generation} {tier.capitalize()}"

    def describe(self) -> dict:
        """Label -> value, in display order, for `ar hardware`."""
        out: dict = {}
        out["machine"] = {"apple": "Apple Silicon", "nvidia": "NVIDIA GPU", "cpu": "CPU only"}.get(self.kind, self.kind)
        out["chip"] = self.chip
        if self.kind == "apple":
            if self.apple_name:
                out["generation"] = self.apple_name
            if self.memory_gb:
                out["unified memory"] = f"{self.memory_gb:.0f} GB"
            if self.gpu_cores:
                out["GPU cores"] = self.gpu_cores
        if self.kind == "nvidia":
            for i, gpu in enumerate(self.gpus):
                mem = f", {gpu.memory_gb:.1f} GB" if gpu.memory_gb else ""
                sms = f", {gpu.sm_count} SMs" if gpu.sm_count else ""
                out[f"GPU {i}"] = f"{gpu.name}{mem}{sms}"
        cpu = self.cpu_model or "unknown"
        if self.cpu_mhz:
            cpu += f" @ {self.cpu_mhz / 1000:.2f} GHz"
        out["CPU"] = f"{cpu} ({self.cpu_cores} cores)"
        if self.kind != "apple" and self.system_memory_gb:
            out["system memory"] = f"{self.system_memory_gb:.1f} GB"
        out["OS"] = f"{self.os_name} {self.machine}".strip()
        return out


# ---------------------------------------------------------------------------------------
# Pure parsing


def parse_apple_brand(brand: str) -> tuple[Optional[str], Optional[str]]:
    """'Apple M3 Max' -> ('M3', 'max'); 'Apple M1' -> ('M1', 'base'); other text -> (None, None)."""
    m = re.search(r"\bM(\d{1,2})(?:\s+(Pro|Max|Ultra))?\b", brand or "", re.IGNORECASE)
    if not m:
        return None, None
    return f"M{int(m.group(1))}", (m.group(2) or "base").lower()


def parse_nvidia_smi(text: str) -> list[GpuDevice]:
    """Lines of `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`.

    e.g. 'NVIDIA H100 80GB HBM3, 81559 MiB'. Lines that are not of that shape ("No devices
    were found", blank) are skipped; an unreadable memory ("[N/A]") becomes None.
    """
    devices = []
    for line in (text or "").splitlines():
        name, sep, mem = line.rpartition(",")
        name = name.strip()
        if not sep or not name:
            continue
        m = re.match(r"\s*([\d.]+)\s*(MiB|GiB|MB|GB)?\s*$", mem, re.IGNORECASE)
        memory_gb = None
        if m:
            value = float(m.group(1))
            unit = (m.group(2) or "MiB").lower()
            memory_gb = value / 1024 if unit in ("mib", "mb") else value
        elif "n/a" not in mem.lower() and "not supported" not in mem.lower():
            continue  # not a name,memory line at all
        devices.append(GpuDevice(name=name, memory_gb=memory_gb))
    return devices


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor block of Linux /proc/cpuinfo: model, MHz, ISA flags (x86 'flags', ARM 'Features')."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if fields:
                break  # the other processors repeat the first
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or fields.get("processor", "")
    if model.isdigit():  # ARM kernels put the index in "processor"
        model = ""
    mhz = None
    try:
        mhz = float(fields["cpu mhz"])
    except (KeyError, ValueError):
        pass
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    return CpuInfo(model=model, mhz=mhz, flags=flags)


def parse_gpu_cores(text: str) -> Optional[int]:
    """'Total Number of Cores: 40' in `system_profiler SPDisplaysDataType` output."""
    m = re.search(r"Total Number of Cores:\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# Probes (each returns None / empty on any failure)


def _run(cmd: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _system_memory_gb() -> Optional[float]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (AttributeError, ValueError, OSError):
        return None


def _linux_max_mhz() -> Optional[float]:
    """The rated maximum clock; /proc/cpuinfo shows the current one, which idles low."""
    text = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return float(text) / 1000 if text else None  # kHz
    except ValueError:
        return None


def _nvidia_possible() -> bool:
    """Cheap signs of an NVIDIA driver, so machines without one never pay for importing torch."""
    return bool(
        shutil.which("nvidia-smi")
        or os.path.exists("/proc/driver/nvidia")
        or glob.glob("/dev/nvidia[0-9]*")
        or os.path.exists("/usr/lib/wsl/lib/nvidia-smi")
    )


def _torch_gpus() -> list[GpuDevice]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(GpuDevice(props.name, props.total_memory / 1024**3, props.multi_processor_count))
        return gpus
    except Exception:  # a broken driver or a CPU-only build: fall back to nvidia-smi
        return []


def _smi_gpus() -> list[GpuDevice]:
    exe = shutil.which("nvidia-smi") or ("/usr/lib/wsl/lib/nvidia-smi" if os.path.exists("/usr/lib/wsl/lib/nvidia-smi") else None)
    if not exe:
        return []
    return parse_nvidia_smi(_run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"]) or "")


def _cpu_info(os_name: str) -> CpuInfo:
    if os_name == "Linux":
        info = parse_cpuinfo(_read("/proc/cpuinfo") or "")
        mhz = _linux_max_mhz() or info.mhz
        return CpuInfo(model=info.model or platform.processor() or platform.machine(), mhz=mhz, flags=info.flags)
    if os_name == "Darwin":
        brand = (_run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip()
        return CpuInfo(model=brand or platform.processor() or platform.machine())
    return CpuInfo(model=platform.processor() or platform.machine())


def detect_hardware() -> Hardware:
    """Probe this machine. Never raises: what cannot be found stays None/empty."""
    try:
        return _detect()
    except Exception:  # a probe we did not foresee failing must not break `ar`
        return Hardware(kind="cpu", chip=platform.processor() or platform.machine() or "unknown CPU",
                        os_name=platform.system(), machine=platform.machine(), cpu_cores=_cpu_cores())


def _detect() -> Hardware:
    os_name, machine = platform.system(), platform.machine()
    cpu = _cpu_info(os_name)
    common = dict(
        os_name=os_name,
        machine=machine,
        cpu_model=cpu.model,
        cpu_cores=_cpu_cores(),
        cpu_mhz=cpu.mhz,
        cpu_flags=cpu.flags,
        system_memory_gb=_system_memory_gb(),
    )

    if os_name == "Darwin" and machine == "arm64":
        generation, tier = parse_apple_brand(cpu.model)
        memory = None
        memsize = _run(["sysctl", "-n", "hw.memsize"])
        if memsize and memsize.strip().isdigit():
            memory = int(memsize.strip()) / 1024**3
        cores = parse_gpu_cores(_run(["system_profiler", "SPDisplaysDataType"]) or "")
        common["system_memory_gb"] = memory or common["system_memory_gb"]
        return Hardware(
            kind="apple",
            chip=cpu.model or "Apple Silicon",
            apple_generation=generation,
            apple_tier=tier,
            memory_gb=common["system_memory_gb"],
            gpu_cores=cores,
            **common,
        )

    if os_name != "Darwin" and _nvidia_possible():
        gpus = _torch_gpus() or _smi_gpus()
        if gpus:
            return Hardware(
                kind="nvidia",
                chip=gpus[0].name,
                memory_gb=gpus[0].memory_gb,
                gpu_cores=gpus[0].sm_count,
                gpus=tuple(gpus),
                **common,
            )

    return Hardware(kind="cpu", chip=cpu.model or machine or "unknown CPU", memory_gb=common["system_memory_gb"], **common)
