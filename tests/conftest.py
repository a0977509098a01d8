"""Shared fixtures: where the real MNIST lies, and a tiny-run config factory.

Tests train on real MNIST, found in this order:

1. `$QAGREL_DATA`, if it holds MNIST (`MNIST/raw/`, plain or .gz IDX files);
2. `../shared/data` beside the checkout, if it holds MNIST;
3. `tests/fixtures/mnist-small/`, committed to the repository: the first 2,000
   training and 500 test images of the real MNIST (built by
   tests/fixtures/make_mnist_small.py), so that a fresh clone runs every test.

`QAGREL_TEST_FIXTURE_ONLY=1` skips 1 and 2, so a run of the tests can check
that they pass on the committed subset alone (as a fresh clone does). A test
must therefore fit 2,000 training images: val_size + train_size <= 2,000
(e.g. the default val_size 1000 with train_size <= 1000). A test that needs
more uses `FULL_MNIST` to pick sizes for the data at hand.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from qagrel_cli.core import training
from qagrel_cli.core.data import MNIST_FILES, RawData, Splits, load_dataset, make_splits

REPO = Path(__file__).resolve().parents[1]
MNIST_FIXTURE = REPO / "tests" / "fixtures" / "mnist-small"
MNIST_FIXTURE_SIZES = (2000, 500)  # training, test images in the committed subset


def load_script(path: Path) -> ModuleType:
    """A script outside the package (benchmarks/, docs/) as a module named after its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def holds_mnist(data_dir: Path) -> bool:
    """True when `data_dir/MNIST/raw/` has all four IDX files, plain or gzipped (what qagrel reads)."""
    raw = data_dir / "MNIST" / "raw"
    return all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in MNIST_FILES)


def find_mnist() -> Path:
    """The MNIST folder the tests use: $QAGREL_DATA, else ../shared/data, else the committed subset."""
    if os.environ.get("QAGREL_TEST_FIXTURE_ONLY") != "1":
        candidates = [Path(os.environ["QAGREL_DATA"]).expanduser()] if os.environ.get("QAGREL_DATA") else []
        # Not `else`: a QAGREL_DATA that does not hold MNIST must not hide the shared copy.
        candidates.append(REPO.parent / "shared" / "data")
        for folder in candidates:
            if holds_mnist(folder):
                return folder
    return MNIST_FIXTURE


# A test of `--workers 2` means two workers, on a one-core machine too: no cap to the cores or memory
# (sweeps/capacity.py); the tests of the cap remove this.
os.environ.setdefault("QAGREL_WORKERS_UNCAPPED", "1")

MNIST_DATA = find_mnist()
# False on the committed subset: tests that need more than 2,000 training images size themselves by it.
FULL_MNIST = MNIST_DATA != MNIST_FIXTURE
SHARED_DATA = MNIST_DATA  # the name test modules imported before the fixture existed


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
    if not holds_mnist(MNIST_DATA):  # only if the committed subset was deleted
        pytest.skip(f"real MNIST not found under {MNIST_DATA}")
    return MNIST_DATA


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
    monkeypatch.setattr(training, "load_dataset", load_with_small_test_set)
    return mnist_dir


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI result that failed with exactly one line, `error: ...`, holding every fragment, and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def random_splits(seed: int = 0, n_train: int = 300) -> Splits:
    """MNIST-shaped random images and labels (uint8 1x28x28, 10 classes), split as a run splits them."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_train + 50, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n_train + 50,), generator=gen)
    raw = RawData(images, labels, images[:50], labels[:50], num_classes=10)
    return make_splits(raw, seed, val_size=50)
