"""Hardware detection, backend choice, suggested sizes, peak FLOPS, and `ar hardware`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import autoresearch.backends as backends
from autoresearch.backends import choose, detect
from autoresearch.backends import (
    GpuDevice,
    Hardware,
    choose_backend,
    detect_hardware,
    peak_flops,
    script_for_backend,
    suggest_config,
)
from autoresearch.cli import app
from autoresearch.data.profiles import PROFILES
from autoresearch.errors import ArError

H100 = GpuDevice("NVIDIA H100 80GB HBM3", 79.6, 132)


def apple(brand: str = "Apple M4 Max", memory: float = 64.0, cores=None) -> Hardware:
    gen, tier = detect.parse_apple_brand(brand)
    return Hardware(kind="apple", chip=brand, os_name="Darwin", machine="arm64", apple_generation=gen,
                    apple_tier=tier, memory_gb=memory, gpu_cores=cores, cpu_model=brand, cpu_cores=12)


def nvidia(gpu: GpuDevice = H100) -> Hardware:
    return Hardware(kind="nvidia", chip=gpu.name, os_name="Linux", machine="x86_64", memory_gb=gpu.memory_gb,
                    gpu_cores=gpu.sm_count, gpus=(gpu,), cpu_model="AMD EPYC 9654", cpu_cores=16)


def cpu_box(flags=("avx2", "fma"), mhz=3000.0, cores=4) -> Hardware:
    return Hardware(kind="cpu", chip="Intel Xeon", os_name="Linux", machine="x86_64", cpu_model="Intel Xeon",
                    cpu_cores=cores, cpu_mhz=mhz, cpu_flags=frozenset(flags), memory_gb=16.0)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "brand, expected",
    [
        ("Apple M1", ("M1", "base")),
        ("Apple M2 Pro", ("M2", "pro")),
        ("Apple M3 Max", ("M3", "max")),
        ("Apple M4 Ultra", ("M4", "ultra")),
        ("Apple M1 Max", ("M1", "max")),
        ("Apple M5", ("M5", "base")),
        ("Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_apple_brand(brand, expected):
    assert detect.parse_apple_brand(brand) == expected


def test_parse_nvidia_smi_lines():
    text = "NVIDIA H100 80GB HBM3, 81559 MiB\nNVIDIA GeForce RTX 4090, 24564 MiB\n\n"
    gpus = detect.parse_nvidia_smi(text)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    assert gpus[0].memory_gb == pytest.approx(79.6, abs=0.1)
    assert gpus[1].memory_gb == pytest.approx(24.0, abs=0.1)


def test_parse_nvidia_smi_odd_output():
    assert detect.parse_nvidia_smi("No devices were found\n") == []
    assert detect.parse_nvidia_smi("") == []
    (gpu,) = detect.parse_nvidia_smi("NVIDIA A100-SXM4-40GB, [N/A]\n")
    assert gpu.name == "NVIDIA A100-SXM4-40GB" and gpu.memory_gb is None


CPUINFO = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13 64-Core Processor
cpu MHz		: 2449.998
flags		: fpu vme sse sse2 avx avx2 fma avx512f

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13 64-Core Processor
cpu MHz		: 1500.000
flags		: fpu
"""

CPUINFO_ARM = """\
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer	: 0x41
"""


def test_parse_cpuinfo():
    info = detect.parse_cpuinfo(CPUINFO)
    assert info.model == "AMD EPYC 7B13 64-Core Processor"
    assert info.mhz == pytest.approx(2449.998)
    assert {"avx2", "fma", "avx512f"} <= info.flags
    arm = detect.parse_cpuinfo(CPUINFO_ARM)
    assert arm.model == "" and "asimd" in arm.flags and arm.mhz is None


def test_parse_gpu_cores():
    text = "Graphics/Displays:\n\n    Apple M4 Max:\n\n      Chipset Model: Apple M4 Max\n      Total Number of Cores: 40\n"
    assert detect.parse_gpu_cores(text) == 40
    assert detect.parse_gpu_cores("nothing here") is None


def test_detect_hardware_on_this_machine():
    hw = detect_hardware()
    assert hw.kind in ("apple", "nvidia", "cpu")
    assert hw.chip and hw.cpu_cores >= 1
    shown = hw.describe()
    assert list(shown)[:2] == ["machine", "chip"] and shown["chip"] == hw.chip


def test_detect_survives_failing_probes(monkeypatch):
    def boom(*a, **k):
        raise OSError("no such command")

    monkeypatch.setattr(detect.subprocess, "run", boom)
    monkeypatch.setattr(detect, "_read", lambda path: None)
    hw = detect_hardware()
    assert hw.kind in ("apple", "nvidia", "cpu") and hw.chip


def test_nvidia_detected_through_nvidia_smi(monkeypatch):
    """No CUDA torch, but the driver's nvidia-smi lists the GPU: still an NVIDIA machine."""
    monkeypatch.setattr(detect.platform, "system", lambda: "Linux")
    monkeypatch.setattr(detect, "_nvidia_possible", lambda: True)
    monkeypatch.setattr(detect, "_torch_gpus", lambda: [])
    monkeypatch.setattr(detect.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(detect, "_run", lambda cmd: "NVIDIA L4, 23034 MiB\n" if "nvidia-smi" in cmd[0] else None)
    hw = detect_hardware()
    assert hw.kind == "nvidia" and hw.chip == "NVIDIA L4"
    assert hw.memory_gb == pytest.approx(22.5, abs=0.1)
    assert "NVIDIA L4, 22.5 GB" in hw.describe()["GPU 0"]


def test_import_does_not_load_torch_or_mlx():
    """Importing, suggesting, FLOPS, and detecting on a machine without NVIDIA signs stay light."""
    code = (
        "import sys, autoresearch.backends as b, autoresearch.backends.detect as d\n"
        "from autoresearch.data.profiles import PROFILES\n"
        "d._nvidia_possible = lambda: False\n"
        "hw = b.detect_hardware()\n"
        "b.suggest_config(hw, 'cpu', PROFILES['tiny']); b.peak_flops(hw, 'cpu'); b.script_for_backend('mlx')\n"
        "assert 'torch' not in sys.modules and 'mlx' not in sys.modules, 'heavy import'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- choose_backend


@pytest.fixture
def installed(monkeypatch):
    """Pretend which frameworks are installed and which devices torch sees."""
    state = {"torch": True, "mlx": True, "cuda": False, "mps": False, "cuda_build": True}
    monkeypatch.setattr(choose, "_installed", lambda m: state[m])
    monkeypatch.setattr(choose, "_torch_cuda_available", lambda: state["cuda"])
    monkeypatch.setattr(choose, "_torch_mps_available", lambda: state["mps"])
    monkeypatch.setattr(choose, "_torch_has_cuda_build", lambda: state["cuda_build"])
    return state


def test_auto_prefers_mlx_on_apple(installed):
    installed["mps"] = True
    assert choose_backend(None, apple()) == "mlx"
    assert choose_backend("auto", apple()) == "mlx"


def test_auto_apple_without_mlx_uses_mps(installed):
    installed.update(mlx=False, mps=True)
    assert choose_backend(None, apple()) == "mps"


def test_auto_nvidia_uses_cuda(installed):
    installed["cuda"] = True
    assert choose_backend(None, nvidia()) == "cuda"


def test_auto_nvidia_with_cpu_only_torch_falls_back_to_cpu(installed):
    assert choose_backend(None, nvidia()) == "cpu"


def test_auto_cpu(installed):
    assert choose_backend(None, cpu_box()) == "cpu"
    installed["torch"] = False  # only mlx (its CPU build on Linux)
    assert choose_backend(None, cpu_box()) == "mlx"


def test_auto_with_nothing_installed_says_what_to_install(installed):
    installed.update(torch=False, mlx=False)
    with pytest.raises(ArError, match=r"pip install 'autoresearch\[torch\]'.*whl/cpu"):
        choose_backend(None, cpu_box())
    with pytest.raises(ArError, match=r"autoresearch\[mlx\]"):
        choose_backend(None, apple())


def test_env_var_is_honoured(installed, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_BACKEND", "cpu")
    assert choose_backend(None, apple()) == "cpu"
    monkeypatch.setenv("AUTORESEARCH_BACKEND", "MLX")
    assert choose_backend(None, apple()) == "mlx"
    # An explicit request beats the environment.
    assert choose_backend("cpu", apple()) == "cpu"


def test_unknown_backend_lists_the_choices(installed, monkeypatch):
    with pytest.raises(ArError, match="unknown backend 'tpu'; choose one of: auto, mlx, mps, cuda, cpu"):
        choose_backend("tpu", cpu_box())
    monkeypatch.setenv("AUTORESEARCH_BACKEND", "rocm")
    with pytest.raises(ArError, match="unknown backend 'rocm'"):
        choose_backend(None, cpu_box())


def test_explicit_mlx_not_installed(installed):
    installed["mlx"] = False
    with pytest.raises(ArError, match=r"pip install 'autoresearch\[mlx\]'"):
        choose_backend("mlx", apple())


def test_explicit_torch_backends_not_installed(installed):
    installed["torch"] = False
    with pytest.raises(ArError, match=r"backend mps needs PyTorch.*pip install 'autoresearch\[torch\]'"):
        choose_backend("mps", apple())
    with pytest.raises(ArError, match=r"backend cpu needs PyTorch.*whl/cpu"):
        choose_backend("cpu", cpu_box())
    with pytest.raises(ArError, match=r"backend cuda needs PyTorch"):
        choose_backend("cuda", nvidia())


def test_explicit_cuda_without_a_gpu(installed):
    with pytest.raises(ArError, match="no CUDA device visible"):
        choose_backend("cuda", cpu_box())
    installed["cuda_build"] = False
    with pytest.raises(ArError, match="CPU-only build"):
        choose_backend("cuda", nvidia())
    installed["cuda"] = True
    assert choose_backend("cuda", nvidia()) == "cuda"


def test_explicit_mps_off_apple_or_unavailable(installed):
    with pytest.raises(ArError, match="Apple Silicon"):
        choose_backend("mps", cpu_box())
    with pytest.raises(ArError, match="MPS"):
        choose_backend("mps", apple())  # torch installed but sees no MPS
    installed["mps"] = True
    assert choose_backend("mps", apple()) == "mps"


def test_mlx_on_linux_cpu_is_allowed(installed):
    assert choose_backend("mlx", cpu_box()) == "mlx"


def test_script_for_backend():
    assert script_for_backend("mlx") == "train_mlx.py"
    assert {script_for_backend(b) for b in ("mps", "cuda", "cpu")} == {"train.py"}
    with pytest.raises(ArError, match="unknown backend"):
        script_for_backend("tpu")


# --------------------------------------------------------------------------- suggest


def test_upstream_h100_setting():
    s = suggest_config(nvidia(), "cuda", PROFILES["datacenter"])
    assert (s.depth, s.device_batch_size, s.total_batch_size) == (8, 128, 2**19)


def test_cpu_tiny_setting():
    s = suggest_config(cpu_box(), "cpu", PROFILES["tiny"])
    assert (s.depth, s.device_batch_size, s.total_batch_size) == (2, 16, 16 * 256)
    # MLX's CPU build on Linux is ~15x slower at matmuls: a quarter of the tokens per step.
    m = suggest_config(cpu_box(), "mlx", PROFILES["tiny"])
    assert (m.depth, m.device_batch_size, m.total_batch_size) == (2, 4, 4 * 256)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
@pytest.mark.parametrize("backend", ["mlx", "mps"])
def test_apple_suggestions_grow_with_tier(profile, backend):
    chips = [apple("Apple M2", 16), apple("Apple M2 Pro", 16), apple("Apple M2 Max", 32), apple("Apple M2 Ultra", 64)]
    sizes = [suggest_config(hw, backend, profile) for hw in chips]
    for small, big in zip(sizes, sizes[1:]):
        assert big.depth > small.depth
        assert big.device_batch_size >= small.device_batch_size
        assert big.total_batch_size >= small.total_batch_size
    assert sizes[-1].device_batch_size > sizes[0].device_batch_size


def test_apple_memory_lifts_a_small_tier():
    """A base chip with lots of unified memory gets at least the Pro setting."""
    roomy = suggest_config(apple("Apple M4", 32), "mlx", PROFILES["laptop"])
    pro = suggest_config(apple("Apple M4 Pro", 24), "mlx", PROFILES["laptop"])
    assert roomy == pro


def test_nvidia_suggestions_grow_with_memory():
    small = suggest_config(nvidia(GpuDevice("NVIDIA GeForce RTX 3070", 8.0)), "cuda", PROFILES["datacenter"])
    mid = suggest_config(nvidia(GpuDevice("NVIDIA GeForce RTX 4090", 24.0)), "cuda", PROFILES["datacenter"])
    big = suggest_config(nvidia(), "cuda", PROFILES["datacenter"])
    assert small.depth <= mid.depth <= big.depth
    assert small.total_batch_size < mid.total_batch_size < big.total_batch_size


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
@pytest.mark.parametrize(
    "hw, backend",
    [(nvidia(), "cuda"), (apple(), "mlx"), (apple("Apple M1", 8), "mps"), (cpu_box(), "cpu"), (apple(), "cpu")],
    ids=["h100", "m4max", "m1", "cpu", "apple-cpu"],
)
def test_total_batch_is_whole_passes(hw, backend, profile):
    s = suggest_config(hw, backend, profile)
    per_pass = s.device_batch_size * profile.max_seq_len
    assert s.device_batch_size >= 1 and s.total_batch_size >= per_pass
    assert s.total_batch_size % per_pass == 0


# --------------------------------------------------------------------------- flops


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA A10", 125.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA GeForce RTX 3090", 71.0),
        ("NVIDIA GeForce RTX 3090 Ti", 80.0),
    ],
)
def test_nvidia_datasheet_bf16(name, tflops):
    value, approximate = peak_flops(nvidia(GpuDevice(name, 80.0)), "cuda")
    assert value == pytest.approx(tflops * 1e12) and approximate is False


def test_nvidia_fp32_and_unknown_gpu():
    assert peak_flops(nvidia(), "cuda", dtype="fp32") == (pytest.approx(67e12), False)
    value, approximate = peak_flops(nvidia(GpuDevice("NVIDIA Quadro Mystery", 16.0)), "cuda")
    assert value > 0 and approximate is True
    with pytest.raises(ValueError):
        peak_flops(nvidia(), "cuda", dtype="int8")


def test_mig_slice_gets_its_share():
    """A MIG slice reports fewer SMs than the full chip: its peak is scaled and marked approximate."""
    value, approximate = peak_flops(nvidia(GpuDevice("NVIDIA H100 80GB HBM3", 10.0, 16)), "cuda")
    assert value == pytest.approx(989.5e12 * 16 / 132) and approximate is True


def test_apple_flops_are_approximate_and_grow_with_tier():
    values = [peak_flops(apple(f"Apple M3{t}"), "mlx") for t in ("", " Pro", " Max", " Ultra")]
    assert all(approx for _, approx in values)
    assert [v for v, _ in values] == sorted(v for v, _ in values) and values[0][0] < values[-1][0]
    # Detected core counts are used: Apple's own M1 figure is 2.6 TFLOPS for 8 GPU cores.
    assert peak_flops(apple("Apple M1", 16, cores=8), "mps")[0] == pytest.approx(2.6e12, rel=0.02)


def test_cpu_flops_estimate():
    value, approximate = peak_flops(cpu_box(flags=("avx2", "fma"), mhz=3000.0, cores=4), "cpu")
    assert approximate is True and value == pytest.approx(4 * 3.0e9 * 32)
    wide = peak_flops(cpu_box(flags=("avx512f",), mhz=3000.0, cores=4), "cpu")[0]
    assert wide > value
    # MLX on a Linux CPU is a CPU; PyTorch CPU on a Mac is the Mac's CPU, not its GPU.
    assert peak_flops(cpu_box(), "mlx") == peak_flops(cpu_box(), "cpu")
    assert peak_flops(apple(), "cpu")[0] < peak_flops(apple(), "mlx")[0]


# --------------------------------------------------------------------------- ar hardware


def run_cli(*args: str):
    return CliRunner().invoke(app, ["hardware", *args], env={"COLUMNS": "120"})


def test_ar_hardware_on_this_machine():
    hw = detect_hardware()
    res = run_cli()
    assert res.exit_code == 0, res.output
    expected = choose_backend(None, hw)
    assert f"backend        {expected}" in res.output or f"backend {expected}" in " ".join(res.output.split())
    assert hw.chip in res.output
    assert "DEPTH=" in res.output and "TFLOP/s" in res.output


def test_ar_hardware_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(backends, "detect_hardware", lambda: cpu_box())
    monkeypatch.setattr(choose, "_installed", lambda m: m == "torch")
    res = run_cli()
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    assert "backend cpu" in words and "(approximate)" in words
    assert "DEPTH=2 DEVICE_BATCH_SIZE=16 TOTAL_BATCH_SIZE=4096" in words


def test_ar_hardware_cuda_here_is_one_line_error():
    if detect_hardware().kind == "nvidia":
        pytest.skip("this machine has an NVIDIA GPU")
    res = run_cli("--backend", "cuda")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output


def test_ar_hardware_env_var(monkeypatch):
    monkeypatch.setattr(backends, "detect_hardware", lambda: cpu_box())
    res = CliRunner().invoke(app, ["hardware"], env={"COLUMNS": "120", "AUTORESEARCH_BACKEND": "tpu"})
    assert res.exit_code == 1 and "unknown backend 'tpu'" in res.output
