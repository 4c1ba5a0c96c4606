"""Which device a run uses, and its name as results record it."""
from __future__ import annotations

import functools
import platform

import torch

from .errors import LambenchError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...; anything else is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LambenchError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, xpu, ...: lambench trains and measures on these two
        raise LambenchError(f"--device {name}: lambench runs on cpu or cuda only; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LambenchError(f"--device {name} asked for, but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LambenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def device_name(device: torch.device, processes: int = 1) -> str:
    """The GPU's name; on the CPU, its model and the threads torch uses (``cpu (AMD EPYC, 2 threads)``): times
    from two CPUs, or one CPU at two thread counts, are never taken for one machine's. Work shared by several
    processes (torchrun, a job of several tasks) names them: ``2 × NVIDIA H100 80GB HBM3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        name = f"cpu ({_cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"
    return name if processes == 1 else f"{processes} × {name}"


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # Linux: platform.processor() is often empty there
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown model"
