"""The device a run trains on: resolved from the user's `--device`, and described for its summary."""

from __future__ import annotations

import platform
from typing import Any

import torch

from qagrel_cli.core.config import QagrelError


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA if present, else MPS if present, else CPU; explicit devices are checked."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise QagrelError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise QagrelError(f"device {spec!r} is not available here (CUDA devices: {torch.cuda.device_count()})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QagrelError("device 'mps' is not available here")
    return device


def describe_device(device: torch.device) -> str:
    """The device as a run's summary records it: a GPU by name; a CPU by model, vector instructions and
    threads, since two CPUs of one model name can differ twofold in speed (docs/sweeps.md)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return str(device)
    threads = torch.get_num_threads()
    return (f"cpu ({_cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{threads} thread{'' if threads == 1 else 's'})")


# Instruction-set levels, highest first, as /proc/cpuinfo's flags name them: floating-point results can
# differ between levels (other kernels, other summation orders), so a run records which one it had.
ISA_LEVELS = ("avx512f", "avx2", "avx", "sse4_2")


def machine_record(device: torch.device) -> dict[str, Any]:
    """What a run's summary records of the machine, for telling which results can repeat bitwise: the CPU
    model and its instruction-set level (and the one torch's kernels use), the GPU's name where it trains on
    one, and torch's CPU thread count (docs/usage.md, "Which results repeat bitwise, and where")."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_isa() -> str | None:
    """The highest level of ISA_LEVELS among the CPU's flags in /proc/cpuinfo (Linux x86); None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return next((level for level in ISA_LEVELS if level in flags), "below sse4_2")
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


__all__ = ["resolve_device", "describe_device", "machine_record", "ISA_LEVELS"]
