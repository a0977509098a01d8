"""Loading the four datasets from disk, the one-line errors, and the seeded split."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from qagrel_cli.core import data
from qagrel_cli.core.config import Dataset, QagrelError
from qagrel_cli.core.data import MNIST_FILES, RawData, default_data_dir, load_dataset, make_splits

from conftest import FULL_MNIST, MNIST_FIXTURE_SIZES


# ----------------------------------------------------------------- helpers

@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to open a network connection."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX (MNIST) file: magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_folder(folder: Path, n_train: int, n_test: int, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    for name, array in zip(MNIST_FILES, arrays):
        payload = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


def _dump(path: Path, obj, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _cifar_batch(n: int, labels, str_keys: bool = False, **extra) -> dict:
    """A batch in the real format: uint8 (n, 3072) R, G, B planes, row-major."""
    data = (np.arange(n * 3072) % 251).astype(np.uint8).reshape(n, 3072)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    out = {key("data"): data, key(extra.pop("label_key", "labels")): list(labels)}
    out.update({key(k): v for k, v in extra.items()})
    return out


def _write_cifar10(root: Path, per_batch: int = 20, str_keys: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        _dump(folder / f"data_batch_{i}", _cifar_batch(per_batch, labels, str_keys))
    _dump(folder / "test_batch", _cifar_batch(per_batch, [j % 10 for j in range(per_batch)], str_keys))
    _dump(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    return folder


def _write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [(7 * j + 3) % 100 for j in range(n)]
        coarse = [f // 5 for f in fine]
        _dump(folder / name, _cifar_batch(n, fine, label_key="fine_labels", coarse_labels=coarse))
    _dump(folder / "meta", {b"fine_label_names": [f"f{k}".encode() for k in range(100)],
                            b"coarse_label_names": [f"k{k}".encode() for k in range(20)]})
    return folder


def _tiny_raw(n: int = 1500, n_test: int = 30) -> RawData:
    """Every training image unique and tied to its label: label i, pixels (i // 256, i % 256)."""
    idx = torch.arange(n)
    x = torch.stack([idx // 256, idx % 256, idx % 7, idx % 3], dim=1).to(torch.uint8).view(n, 1, 2, 2)
    test_x = torch.zeros(n_test, 1, 2, 2, dtype=torch.uint8)
    return RawData(x, idx.to(torch.int64), test_x, torch.zeros(n_test, dtype=torch.int64), num_classes=n)


@pytest.fixture(scope="module")
def real_mnist(mnist_dir) -> RawData:
    return load_dataset(Dataset.mnist, mnist_dir, download=False)


# ---------------------------------------------------------------- data dir

def test_default_data_dir_is_qagrel_data_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("QAGREL_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_default_data_dir_is_dot_data_when_unset(monkeypatch):
    monkeypatch.delenv("QAGREL_DATA", raising=False)
    assert default_data_dir() == Path("./data")


# ---------------------------------------------------------------- MNIST family

def test_mnist_loads_real_files_offline(real_mnist):
    # The full MNIST, or the committed subset of it (tests/conftest.py), gzipped.
    n_train, n_test = (60000, 10000) if FULL_MNIST else MNIST_FIXTURE_SIZES
    assert real_mnist.train_x.shape == (n_train, 1, 28, 28)
    assert real_mnist.test_x.shape == (n_test, 1, 28, 28)
    assert real_mnist.train_x.dtype == torch.uint8 and real_mnist.test_x.dtype == torch.uint8
    assert real_mnist.train_y.dtype == torch.int64 and real_mnist.train_y.shape == (n_train,)
    assert real_mnist.test_y.shape == (n_test,)
    assert set(real_mnist.train_y.unique().tolist()) == set(range(10))
    assert set(real_mnist.test_y.unique().tolist()) == set(range(10))
    assert real_mnist.num_classes == 10
    assert real_mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels


def test_mnist_loads_gzipped_raw_files(tmp_path, no_network):
    _write_idx_folder(tmp_path / "MNIST" / "raw", n_train=12, n_test=5, gz=True)
    raw = load_dataset(Dataset.mnist, tmp_path)
    assert raw.train_x.shape == (12, 1, 28, 28) and raw.test_x.shape == (5, 1, 28, 28)
    assert raw.train_y.tolist() == [j % 10 for j in range(12)]


def test_fashion_mnist_loads_debian_package_when_raw_folder_missing(tmp_path, no_network):
    if not all((data.DEBIAN_FASHION_MNIST_DIR / f"{n}.gz").is_file() for n in MNIST_FILES):
        pytest.skip(f"Debian package dataset-fashion-mnist not installed ({data.DEBIAN_FASHION_MNIST_DIR})")
    raw = load_dataset(Dataset.fashion_mnist, tmp_path, download=False)
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert raw.num_classes == 10
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert raw.train_y.bincount().tolist() == [6000] * 10
    assert raw.test_y.bincount().tolist() == [1000] * 10
    assert not (tmp_path / "FashionMNIST").exists()  # read in place, nothing copied


def test_fashion_mnist_prefers_data_dir_over_debian_package(tmp_path):
    _write_idx_folder(tmp_path / "FashionMNIST" / "raw", n_train=8, n_test=3)
    raw = load_dataset(Dataset.fashion_mnist, tmp_path)
    assert raw.train_x.shape == (8, 1, 28, 28) and raw.test_x.shape == (3, 1, 28, 28)


def test_fashion_mnist_missing_everywhere_names_both_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.fashion_mnist, tmp_path / "d")
    message = str(err.value)
    assert str(tmp_path / "d" / "FashionMNIST" / "raw") in message
    assert "dataset-fashion-mnist" in message and "\n" not in message


def test_truncated_idx_file_raises_one_line_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _write_idx_folder(folder, n_train=4, n_test=2)
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.mnist, tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------- CIFAR

def test_cifar10_loads_real_format_folder_with_other_checksums(tmp_path, no_network):
    _write_cifar10(tmp_path, per_batch=20)
    raw = load_dataset(Dataset.cifar10, tmp_path)
    assert raw.train_x.shape == (100, 3, 32, 32) and raw.test_x.shape == (20, 3, 32, 32)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert raw.num_classes == 10
    # Batches are read in order 1..5: image 20 is batch 2's first, label (2 + 0) % 10.
    assert raw.train_y[:3].tolist() == [1, 2, 3] and raw.train_y[20].item() == 2
    assert raw.test_y.tolist() == [j % 10 for j in range(20)]


def test_cifar10_pixel_lands_on_its_channel_row_and_column(tmp_path):
    folder = _write_cifar10(tmp_path, per_batch=20)
    batch = _cifar_batch(20, [0] * 20)
    batch[b"data"][:] = 0
    # Image 3, green plane (channel 1), row 5, column 7 -- the file's layout is [R(1024) G(1024) B(1024)].
    batch[b"data"][3, 1 * 1024 + 5 * 32 + 7] = 200
    batch[b"data"][3, 2 * 1024 + 0 * 32 + 31] = 99  # blue, row 0, last column
    _dump(folder / "data_batch_1", batch)
    x = load_dataset(Dataset.cifar10, tmp_path).train_x
    assert x[3, 1, 5, 7].item() == 200 and x[3, 2, 0, 31].item() == 99
    assert int(x[:20].sum()) == 299  # nothing else in batch 1 is lit


def test_cifar10_python2_style_str_keys_load(tmp_path):
    _write_cifar10(tmp_path, per_batch=4, str_keys=True)
    raw = load_dataset(Dataset.cifar10, tmp_path)
    assert raw.train_x.shape == (20, 3, 32, 32)


def test_cifar100_uses_fine_labels_and_100_classes(tmp_path, no_network):
    _write_cifar100(tmp_path, n_train=40, n_test=20)
    raw = load_dataset(Dataset.cifar100, tmp_path)
    assert raw.train_x.shape == (40, 3, 32, 32) and raw.test_x.shape == (20, 3, 32, 32)
    assert raw.num_classes == 100
    assert raw.train_y.tolist() == [(7 * j + 3) % 100 for j in range(40)]
    assert raw.test_y.tolist() == [(7 * j + 3) % 100 for j in range(20)]


def test_cifar100_meta_with_wrong_class_count_is_rejected(tmp_path):
    # A cifar-100 meta listing 10 names means the wrong data was put there.
    folder = _write_cifar100(tmp_path)
    _dump(folder / "meta", {b"fine_label_names": [b"x"] * 10})
    with pytest.raises(QagrelError, match="100 fine_label_names"):
        load_dataset(Dataset.cifar100, tmp_path)


def test_corrupt_cifar_batch_raises_one_line_error(tmp_path):
    folder = _write_cifar10(tmp_path, per_batch=4)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # a truncated pickle
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.cifar10, tmp_path)
    assert "test_batch" in str(err.value) and "\n" not in str(err.value)


def test_download_is_skipped_when_files_are_present(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def fail(self):
        raise AssertionError("download attempted although the files are there")
    monkeypatch.setattr(tvd.CIFAR10, "download", fail)
    _write_cifar10(tmp_path, per_batch=4)
    assert load_dataset(Dataset.cifar10, tmp_path, download=True).train_x.shape == (20, 3, 32, 32)


# -------------------------------------------------------------- missing data

def test_missing_mnist_offline_raises_one_line_error_naming_folder_and_files(tmp_path, no_network):
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.mnist, tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "--download" in message and "QAGREL_DATA" in message


def test_missing_cifar100_offline_error_lists_expected_files(tmp_path, no_network):
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.cifar100, tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-100-python") in message and "\n" not in message
    assert all(name in message for name in ("train", "test", "meta"))


def test_mnist_download_failure_becomes_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):  # what torchvision raises once every mirror failed
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")
    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.mnist, tmp_path, download=True)
    message = str(err.value)
    assert "\n" not in message and "could not download mnist" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "Name or service not known" in message


def test_cifar_download_failure_becomes_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(tvd.CIFAR10, "download", offline)  # CIFAR100 inherits it
    with pytest.raises(QagrelError) as err:
        load_dataset(Dataset.cifar100, tmp_path, download=True)
    assert "could not download cifar100" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- make_splits

def test_make_splits_holds_out_val_size_and_trains_on_the_rest():
    s = make_splits(_tiny_raw(1500), seed=0)
    assert s.val_x.shape == (1000, 1, 2, 2) and s.val_y.shape == (1000,)
    assert s.train_x.shape == (500, 1, 2, 2) and s.train_y.shape == (500,)
    assert s.input_shape == (1, 2, 2) and s.num_classes == 1500


def test_make_splits_val_and_train_are_disjoint_and_cover_the_training_set():
    s = make_splits(_tiny_raw(1500), seed=3, val_size=200)
    train, val = set(s.train_y.tolist()), set(s.val_y.tolist())
    assert not train & val
    assert train | val == set(range(1500))


def test_make_splits_keeps_each_image_with_its_label():
    s = make_splits(_tiny_raw(1500), seed=1, val_size=100)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y)):
        ids = x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()
        assert torch.equal(ids, y)


def test_make_splits_same_seed_gives_identical_split():
    a, b = make_splits(_tiny_raw(), seed=7), make_splits(_tiny_raw(), seed=7)
    assert torch.equal(a.val_y, b.val_y) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.val_x, b.val_x)


def test_make_splits_different_seed_holds_out_different_validation_set():
    a, b = make_splits(_tiny_raw(), seed=0, val_size=100), make_splits(_tiny_raw(), seed=1, val_size=100)
    assert set(a.val_y.tolist()) != set(b.val_y.tolist())


def test_make_splits_train_size_keeps_a_prefix_of_the_rest_and_same_val():
    full = make_splits(_tiny_raw(1500), seed=2, val_size=300)
    small = make_splits(_tiny_raw(1500), seed=2, val_size=300, train_size=50)
    assert small.train_y.shape == (50,)
    assert torch.equal(small.train_y, full.train_y[:50])
    assert torch.equal(small.val_y, full.val_y)


def test_make_splits_keeps_uint8_images_and_the_whole_test_set():
    s = make_splits(_tiny_raw(1500, n_test=30), seed=0, device=torch.device("cpu"))
    assert s.train_x.dtype == s.val_x.dtype == s.test_x.dtype == torch.uint8
    assert s.train_y.dtype == s.val_y.dtype == s.test_y.dtype == torch.int64
    assert s.test_x.shape == (30, 1, 2, 2) and s.test_y.shape == (30,)


def test_make_splits_rejects_train_size_larger_than_available():
    with pytest.raises(QagrelError, match="train_size 501"):
        make_splits(_tiny_raw(1500), seed=0, val_size=1000, train_size=501)


def test_make_splits_accepts_train_size_equal_to_available():
    assert make_splits(_tiny_raw(1500), seed=0, train_size=500).train_y.shape == (500,)


def test_make_splits_rejects_val_size_not_below_training_set():
    with pytest.raises(QagrelError, match="val_size 1500"):
        make_splits(_tiny_raw(1500), seed=0, val_size=1500)


@pytest.mark.cuda
def test_make_splits_moves_every_tensor_to_the_device():
    s = make_splits(_tiny_raw(), seed=0, device="cuda")
    for t in (s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y):
        assert t.is_cuda
    assert s.train_x.dtype == torch.uint8
