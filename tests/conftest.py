"""Shared fixtures: where the real MNIST lies, and a tiny-run config factory."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import pytest
import torch

from qagrel_cli import engine
from qagrel_cli.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
# Real MNIST in torchvision's layout: $QAGREL_DATA when set, else ../shared/data beside the checkout.
SHARED_DATA = Path(os.environ.get("QAGREL_DATA") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped where there is no CUDA device, so the whole suite runs anywhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    raw = SHARED_DATA / "MNIST" / "raw"
    # Plain IDX files, or the gzipped copies benchmarks/gpu_check.py --prepare-data writes.
    if not any((raw / name).exists() for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
        pytest.skip(f"real MNIST not found under {SHARED_DATA}")
    return SHARED_DATA


@functools.cache
def load_with_small_test_set(dataset, data_dir, download=False):
    """load_dataset, keeping only the first 500 test images."""
    raw = load_dataset(dataset, data_dir, download)
    return dataclasses.replace(raw, test_x=raw.test_x[:500], test_y=raw.test_y[:500])


@pytest.fixture
def small_mnist(mnist_dir, monkeypatch) -> Path:
    """Real MNIST, but only 500 test images: evaluating 10,000 every epoch would dominate short tests.

    Only for tests that compare runs with each other, never for accuracy claims.
    """
    monkeypatch.setattr(engine, "load_dataset", load_with_small_test_set)
    return mnist_dir
