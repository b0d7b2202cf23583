"""Which DeepSpeed accelerator a process uses (the one place `DS_ACCELERATOR` is decided),
whether this CPU computes in bfloat16 natively (what `precision: auto` picks on a CPU), and which
memory allocator training workers run with (`allocator_env`).

DeepSpeed reads `DS_ACCELERATOR` when it is first imported; on a machine without CUDA it would
otherwise warn and guess. Launchers pass `accelerator_env(...)` to the processes they start;
a process that imports DeepSpeed itself calls `select_accelerator()` first.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU = "cpu"
#: CPU feature flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: AVX-512 BF16 (Cooper
#: Lake, Sapphire Rapids and later, Zen 4+) and AMX (Sapphire Rapids+). Without them oneDNN
#: emulates bf16 matmuls and they run slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def accelerator_env(use_gpu: bool) -> dict[str, str]:
    """Environment for training processes: the CPU accelerator unless they train on GPUs."""
    return {} if use_gpu else {"DS_ACCELERATOR": CPU}


def select_accelerator(use_gpu: bool | None = None) -> None:
    """Set `DS_ACCELERATOR` for this process (unless already set); `None`: GPU iff CUDA is there."""
    if use_gpu is None:
        import torch

        use_gpu = torch.cuda.is_available()
    for name, value in accelerator_env(use_gpu).items():
        os.environ.setdefault(name, value)


#: Read the CPU's flags from this file instead of /proc/cpuinfo: `precision: auto` then decides as
#: on that CPU (the test suite runs whole as on a bf16 or an fp32-only machine with it).
CPUINFO_ENV = "CAREER_CPUINFO"


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 feature flags this CPU reports (empty where it has none, or off Linux);
    `cpuinfo`: the file to read (default: `$CAREER_CPUINFO`, else /proc/cpuinfo)."""
    cpuinfo = cpuinfo or os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo"
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [flag for flag in BF16_FLAGS if flag in flags]
    return []


#: `glibc`: training workers keep the C library's malloc (default: jemalloc, `allocator_env`).
ALLOCATOR_ENV = "CAREER_ALLOCATOR"


def allocator_env(jemalloc: str | None = None) -> dict[str, str]:
    """Environment that makes a training worker allocate with jemalloc (`LD_PRELOAD`), the
    library Ray ships for its own servers (`ray/core/libjemalloc.so`); `jemalloc`: its path
    (default: Ray's, found without importing Ray).

    Why: glibc's malloc keeps what a training update frees. Its mmap threshold rises to the size
    of the largest block freed (up to 32 MB), so an update's activations come from the heap
    afterwards, and the heap's free holes stay resident: a `small` worker held 1.2 GB between
    updates and peaked at 1.3 GB where its live memory peaked under 1 GB. jemalloc returns them:
    0.77 GB between updates, 1.0 GB peak, at the same speed (a fixed glibc threshold,
    MALLOC_MMAP_THRESHOLD_, did as well for memory but halved the update rate: every block
    freshly mapped and zeroed). BENCHMARKS.md, "Memory of a training worker".

    Empty (glibc stays) when `$CAREER_ALLOCATOR` is `glibc`, when `LD_PRELOAD` is set already
    (the user's choice), or where Ray's jemalloc is not installed."""
    if os.environ.get(ALLOCATOR_ENV, "").lower() == "glibc" or os.environ.get("LD_PRELOAD"):
        return {}
    if jemalloc is None:
        import importlib.util

        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            return {}
        jemalloc = str(Path(list(spec.submodule_search_locations)[0]) / "core" / "libjemalloc.so")
    return {"LD_PRELOAD": jemalloc} if Path(jemalloc).is_file() else {}
