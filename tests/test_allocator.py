"""Keeping freed CPU memory for reuse: glibc's malloc is told so; elsewhere nothing happens."""
import ctypes.util
import platform

import pytest

from qagrel_cli.core import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_glibc_accepts_the_thresholds_every_time():
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()


def test_a_system_without_a_c_library_to_load_is_left_alone(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_memory() is False


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:  # a C library like macOS's: it loads, but has no mallopt
        def __init__(self, name: str) -> None:
            pass

        def __getattr__(self, attr: str):
            raise AttributeError(attr)

    monkeypatch.setattr(allocator.ctypes, "CDLL", NoMallopt)
    assert allocator.keep_freed_memory() is False
