"""Keep freed CPU memory for the next training step instead of handing it back to the OS.

Every training step frees and allocates again the same large tensors
(activity maps, feedback, weight changes: megabytes each). glibc's malloc
serves blocks that large with mmap and gives them back with munmap or trims
them off the heap, so each step pays again for fresh, zeroed pages: on the
2-core machine this was written on, 10-20 % of a conv step, for Q-AGREL and BP
alike. Raising the mmap and trim thresholds keeps freed blocks in the heap,
where the next step reuses them. This is what PyTorch's CPU performance
guide gets from preloading jemalloc or tcmalloc, done here with one libc call.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit. Blocks larger
# than that are rare here (a CIFAR conv layer's activity for a batch of 100 is 11.5 MB).
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
TRIM_THRESHOLD = 1 << 30  # free heap above this much is returned to the OS


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed large blocks for reuse; False where there is no glibc mallopt.

    Process-wide and idempotent. Memory use stays at the training loop's peak
    instead of rising and falling with every step.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no libc to load, or one without mallopt (macOS); musl's returns 0
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
