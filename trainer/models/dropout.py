"""Dropout whose mask costs a hash, not a random-number generator: the CPU training path.

Why: torch's dropout on a CPU draws every mask element from its Mersenne Twister
(`bernoulli_`, about 10 ns an element, on one core whatever the thread count). On the `paper`
preset that was 35% of an update's time, more than every matrix product of the backward pass.
Here element i of a call is dropped when the top 24 bits of SplitMix64(seed, i) fall below
p·2^24 (`dropout.c`, vectorised by the compiler): 12x faster than `F.dropout` on this machine,
faster than one multiplication in torch, and p within 3e-8 of the rate asked for.

What stays as it was:
- The seed of each call is drawn from torch's default CPU generator, so `torch.manual_seed` and
  the generator state that checkpoints carry decide every mask: a resumed run draws the masks an
  uninterrupted run would have drawn (`trainer.rng`).
- The backward pass recomputes the mask from the seed (nothing is kept per element: less memory
  than torch's dropout, which keeps its mask).
- On a GPU, and for dtypes other than float32 and bfloat16, it is torch's own dropout (fused
  Philox kernels on CUDA are already fast).

The kernel is C, compiled at first use with the machine's C compiler (`$CC`, else `cc`) into a
cache folder (about half a second; `$CAREER_KERNEL_CACHE`, else `~/.cache/career-at-scale`),
keyed by the source, the flags and the CPU's feature flags. Without a compiler it falls back to
torch's dropout and says so once (`kernel_status()` tells which runs).

It is a `torch.library` custom op with its own backward, so `torch.compile` keeps it in its graph.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("career.dropout")

SOURCE = Path(__file__).with_name("dropout.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c99")
#: Mask resolution: 24 random bits per element.
RESOLUTION = 1 << 24
#: Below this many elements a call runs on one thread (a thread hand-off costs ~50 µs).
CHUNK_MIN = 1 << 19


def cache_folder() -> Path:
    configured = os.environ.get("CAREER_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "career-at-scale"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), part of the cache key: `-march=native` code is for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path) -> None:
    """Compile the kernel to `target` (atomically: workers of one machine may race)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler (cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(built, target)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (with one warning) when it cannot be."""
    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                " ".join(FLAGS).encode(),
                _cpu_flags().encode(),
                platform.machine().encode(),
            ]
        )
    ).hexdigest()[:16]
    target = cache_folder() / f"dropout-{key}.so"
    try:
        if not target.exists():
            _build(target)
        library = ctypes.CDLL(str(target))
    except OSError as error:
        log.warning("fast CPU dropout unavailable (%s): using torch's dropout", error)
        return None
    for name in ("dropout_f32", "dropout_bf16"):
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_uint64,
            ctypes.c_int64,
            ctypes.c_uint32,
            ctypes.c_float,
        ]
    return library


def kernel_status(enabled: bool = True) -> str:
    """Which dropout CPU training uses here with `hash_dropout=enabled`: what the resolved
    config's notes report."""
    if not enabled:
        return "torch's dropout (hash_dropout=False)"
    if _library() is None:
        return "torch's dropout (the hash-dropout kernel could not be built)"
    return "hash dropout (C kernel)"


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="career-dropout")


_KERNELS = {torch.float32: "dropout_f32", torch.bfloat16: "dropout_bf16"}


def _run(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """y = x * mask(seed) / (1 - p), in chunks over torch's intra-op threads (ctypes releases
    the GIL); the mask does not depend on the chunking."""
    x = x.contiguous()
    y = torch.empty_like(x)
    function = getattr(_library(), _KERNELS[x.dtype])
    threshold, scale = round(p * RESOLUTION), 1.0 / (1.0 - p)
    n, threads = x.numel(), torch.get_num_threads()
    seed &= (1 << 64) - 1
    if threads == 1 or n < CHUNK_MIN:
        function(x.data_ptr(), y.data_ptr(), n, seed, 0, threshold, scale)
        return y
    step = -(-n // threads)
    size = x.element_size()
    jobs = [
        _pool(threads).submit(
            function,
            x.data_ptr() + start * size,
            y.data_ptr() + start * size,
            min(step, n - start),
            seed,
            start,
            threshold,
            scale,
        )
        for start in range(0, n, step)
    ]
    for job in jobs:
        job.result()
    return y


@torch.library.custom_op("career::hash_dropout", mutates_args=(), device_types="cpu")
def _hash_dropout(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return _run(x, int(seed), p)


@_hash_dropout.register_fake
def _(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output) -> None:
    ctx.seed, ctx.p = inputs[1], inputs[2]


def _backward(ctx, grad: torch.Tensor):
    # The same mask and scale on the gradient: d(x * m / (1 - p)) / dx = m / (1 - p).
    return _hash_dropout(grad, ctx.seed, ctx.p), None, None


_hash_dropout.register_autograd(_backward, setup_context=_setup)


_ENABLED = True


def use(enabled: bool) -> None:
    """Turn the hash kernel on or off for this process (`TrainConfig.hash_dropout`)."""
    global _ENABLED
    _ENABLED = enabled


def available() -> bool:
    """Whether the kernel is on, built and loaded (built now if need be)."""
    return _ENABLED and _library() is not None


# torch.compile takes it as a constant, not traced: what `torch.compiler.assume_constant_result`
# sets, set here without importing torch._dynamo through it (1.2 s at every process start, every
# `career` command and worker). tests/test_fast_paths.py checks the decorator still sets just this.
available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def applies(x: torch.Tensor) -> bool:
    """Whether the hash kernel serves `x` (a CPU float32/bfloat16 tensor, kernel available)."""
    return x.device.type == "cpu" and x.dtype in _KERNELS and available()


def draw_seed() -> torch.Tensor:
    """A seed from torch's default CPU generator (62 random bits)."""
    return torch.randint(0, 1 << 62, (), dtype=torch.int64)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the hash mask where it applies."""
    if not training or p == 0.0:
        return x
    if not applies(x):
        return F.dropout(x, p, training=True)
    return _hash_dropout(x, draw_seed(), p)


def mask(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    """The keep-mask (bool) a call with `seed` draws for `shape` (tests and diagnostics)."""
    ones = torch.ones(shape)
    return _run(ones, seed, p) != 0


class Dropout(nn.Dropout):
    """`nn.Dropout` (no parameters: the same state dict) with the hash mask on CPU (never in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
