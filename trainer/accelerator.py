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


#: `jemalloc`: training workers allocate with jemalloc (`allocator_env`); unset or `glibc`: the C
#: library's malloc.
ALLOCATOR_ENV = "CAREER_ALLOCATOR"
ALLOCATORS = ("glibc", "jemalloc")


def allocator_env(allocator: str | None = None, jemalloc: str | None = None) -> dict[str, str]:
    """Environment for a training worker's memory allocator: `LD_PRELOAD` of the jemalloc Ray
    ships for its own servers (`ray/core/libjemalloc.so`) when `allocator` (default:
    `$CAREER_ALLOCATOR`) is `jemalloc`, else nothing (glibc); `jemalloc`: the library's path
    (default: Ray's, found without importing Ray).

    The trade (BENCHMARKS.md, "Memory of a training worker"): glibc's malloc keeps what an
    update frees (its mmap threshold rises to the largest block freed, up to 32 MB, so activations
    come from the heap, whose free holes stay resident): a `paper` worker at 16,000 job-years per
    update peaked at 2.6 GB, 1.8 GB with jemalloc. But jemalloc made `paper`'s updates 1.4x
    slower here (`small`'s not), and a fixed glibc threshold (MALLOC_MMAP_THRESHOLD_) halved the
    update rate, so glibc stays the default and jemalloc is the choice of a node short of memory.
    Nothing either where `LD_PRELOAD` is set already (the user's own choice) or where Ray's
    jemalloc is not installed."""
    allocator = (allocator or os.environ.get(ALLOCATOR_ENV) or "glibc").lower()
    if allocator not in ALLOCATORS:
        raise ValueError(
            f"{ALLOCATOR_ENV} must be one of {', '.join(ALLOCATORS)}, not {allocator!r}"
        )
    if allocator == "glibc" or os.environ.get("LD_PRELOAD"):
        return {}
    if jemalloc is None:
        import importlib.util

        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            return {}
        jemalloc = str(Path(list(spec.submodule_search_locations)[0]) / "core" / "libjemalloc.so")
    return {"LD_PRELOAD": jemalloc} if Path(jemalloc).is_file() else {}
