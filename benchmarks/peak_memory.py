"""Run a Python module or script as `__main__`, then write the process's peak GPU memory as JSON.

    python benchmarks/peak_memory.py PEAK.json -m MODULE [ARGS...]     # e.g. -m qagrel_cli train ...
    python benchmarks/peak_memory.py PEAK.json SCRIPT.py [ARGS...]     # e.g. benchmarks/bench_pack.py ...

torch.cuda.max_memory_allocated only sees its own process, so benchmarks/gpu_check.py
starts each of its CUDA steps through this wrapper: the step runs exactly as it
would from the command line (same argv, same exit status) and PEAK.json says
{"max_memory_allocated": bytes, "max_memory_reserved": bytes}, both null where
CUDA is not available and 0 where the step never touched it. PEAK.json is
written at exit, so a step that fails still reports its peak; a step killed by
a timeout reports none.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path

import torch


def peak_memory() -> dict[str, int | None]:
    """Peak bytes allocated and reserved by torch's CUDA allocator in this process."""
    if not torch.cuda.is_available():
        return {"max_memory_allocated": None, "max_memory_reserved": None}
    if not torch.cuda.is_initialized():  # querying would start a CUDA context only to read zeros
        return {"max_memory_allocated": 0, "max_memory_reserved": 0}
    return {"max_memory_allocated": torch.cuda.max_memory_allocated(),
            "max_memory_reserved": torch.cuda.max_memory_reserved()}


def main() -> None:
    """Parse `PEAK.json (-m MODULE | SCRIPT) ARGS...`, register the report and run the target."""
    usage = "usage: peak_memory.py PEAK.json (-m MODULE | SCRIPT.py) [ARGS...]"
    args = sys.argv[1:]
    if len(args) < 2 or (args[1] == "-m" and len(args) < 3):
        sys.exit(usage)
    out = Path(args[0])
    atexit.register(lambda: out.write_text(json.dumps(peak_memory()) + "\n"))
    if args[1] == "-m":
        sys.argv = [args[2], *args[3:]]
        runpy.run_module(args[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args[1:]
        runpy.run_path(args[1], run_name="__main__")


if __name__ == "__main__":
    main()
