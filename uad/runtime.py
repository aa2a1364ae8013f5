"""Device, precision, seeding and measurement: what every stage sets up the same way."""

from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from uad.config import ConfigError
from uad.resources import available_ram


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) present")
    return device


def describe_device(device: torch.device) -> str:
    """Human-readable name of the device that produced a timing."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def configure_precision(precision: str, device: torch.device) -> None:
    """TF32 matmuls and convolutions for `tf32` and `bf16` (what autocast leaves in fp32, e.g. CFA's
    distances, then runs on tensor cores); `fp32` stays exact fp32."""
    allow = precision in ("tf32", "bf16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast (backbone, DFR's autoencoder, CFA's descriptor) when `precision` is bf16, else a no-op."""
    if precision == "bf16":
        # no weight-cast cache: training steps are replayed as CUDA graphs, which it would break
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def backend_flag(owner: object, name: str, value: bool) -> Iterator[None]:
    """A `torch.backends` switch set for the block and restored after it, also on error: the
    switches are process-wide, and one method's choice must not leak into what runs next."""
    previous = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, previous)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n: tensor cores want channel counts and matmul
    widths in multiples of 8 (bf16) or 4 (tf32), else the GPU picks slow unaligned kernels."""
    return -(-n // multiple) * multiple


def storage_dtype(precision: str) -> torch.dtype:
    """dtype of backbone features kept in memory during fit: bf16 halves it where bf16 is allowed."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def memory_budget(device: torch.device) -> int:
    """Half of what this process can still allocate on `device`, in bytes: the most a cache may take.

    On CUDA it honours a per-process memory fraction (how benchmarks emulate a 24 GB card).
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _d: 1.0)(index)
        allowed = total * fraction - torch.cuda.memory_reserved(device)
        return int(max(0.0, min(free, allowed)) // 2)
    return available_ram() // 2


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Wall time and peak memory of a block: CUDA allocator peak on GPU, process RSS peak on CPU."""
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield result
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            # ru_maxrss is KiB on Linux, bytes on macOS
            scale = 1 if sys.platform == "darwin" else 1024
            result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        result.seconds = time.perf_counter() - start
