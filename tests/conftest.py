"""Shared fixtures: where the real MNIST lies, and a tiny-run config factory."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import pytest

from qagrel_cli.core import training as engine
from qagrel_cli.core.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
# Real MNIST in torchvision's layout: $QAGREL_DATA when set, else ../shared/data beside the checkout.
SHARED_DATA = Path(os.environ.get("QAGREL_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
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
