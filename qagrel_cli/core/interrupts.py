"""SIGTERM read as Ctrl-C: a scheduler ending a job (SLURM, Kubernetes, `kill`) stops a run the way a person does.

A command that trains (`qagrel train`, `qagrel sweep`) already handles
KeyboardInterrupt: it keeps every finished epoch, restores the terminal (rich
displays show the cursor again as they exit) and says so in one line. Raising
KeyboardInterrupt on SIGTERM gives a scheduler's stop the same path, instead of
the default of dying at once with the cursor hidden and no word.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["sigterm_interrupts"]
