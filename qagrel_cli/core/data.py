"""Datasets held whole in memory as uint8 tensors, and the seeded train/val split.

The four datasets are small enough (at most 60000 x 3 x 32 x 32 bytes) to keep
entirely on the training device, which is far faster than a DataLoader with
per-sample PIL transforms. Images stay uint8; training scales each batch to
[0, 1].

Downloads always go through torchvision's dataset classes (with their MD5
checks). Reading is done from the on-disk formats directly, with torchvision's
own IDX parser for the MNIST family, so that a folder in the right format is
accepted even where torchvision's stock loader would refuse it (gzipped MNIST
files, the Debian Fashion-MNIST package, CIFAR copies whose MD5 differs).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from qagrel_cli.core.config import Dataset, InputScaling, QagrelError, dataset_family

# Where the Debian package `dataset-fashion-mnist` puts the four gzipped IDX
# files. A module constant so tests can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# torchvision's folder names: <root>/<name>/raw for the MNIST family,
# <root>/<folder> for CIFAR.
_MNIST_CLASS = {Dataset.mnist: "MNIST", Dataset.fashion_mnist: "FashionMNIST"}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_CIFAR_FOLDER = {Dataset.cifar10: "cifar-10-batches-py", Dataset.cifar100: "cifar-100-python"}
_CIFAR_TRAIN = {Dataset.cifar10: tuple(f"data_batch_{i}" for i in range(1, 6)), Dataset.cifar100: ("train",)}
_CIFAR_TEST = {Dataset.cifar10: ("test_batch",), Dataset.cifar100: ("test",)}
_CIFAR_META = {Dataset.cifar10: ("batches.meta", "label_names"), Dataset.cifar100: ("meta", "fine_label_names")}
# CIFAR-100 is used with its 100 fine labels (the coarse 20 are ignored).
_CIFAR_LABEL_KEY = {Dataset.cifar10: "labels", Dataset.cifar100: "fine_labels"}
_NUM_CLASSES = {Dataset.mnist: 10, Dataset.fashion_mnist: 10, Dataset.cifar10: 10, Dataset.cifar100: 100}

_INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def input_shape(dataset: Dataset) -> tuple[int, int, int]:
    """The shape (C, H, W) of one image of `dataset`."""
    return _INPUT_SHAPES[dataset_family(Dataset(dataset))]


def num_classes(dataset: Dataset) -> int:
    """How many classes `dataset` has (CIFAR-100: its 100 fine labels)."""
    return _NUM_CLASSES[Dataset(dataset)]


_POINT_HINT = "point --data-dir / QAGREL_DATA at a folder that holds {layout}"


def default_data_dir() -> Path:
    """The data folder when none is given: $QAGREL_DATA if set, else ./data (the one place that says so)."""
    env = os.environ.get("QAGREL_DATA")
    return Path(env).expanduser() if env else Path("./data")


@dataclass(frozen=True)
class RawData:
    """One dataset in memory, on the CPU: uint8 images (N, C, H, W), int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class Splits:
    """The training, validation and test sets, already on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, (C, H, W)."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class PixelScaling:
    """uint8 images -> the network's float input: x / 255, then, when fitted, (x - mean) / SD per channel.

    `mean` and `sd` are (..., C, 1, 1) on the data's device; leading dimensions
    (a seed pack's members) give each member its own statistics.
    """

    mean: torch.Tensor | None = None
    sd: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.mean is None:
            return x
        # Out of place: a pack's shared test images broadcast against every member's statistics.
        return (x - self.mean) / self.sd

    @classmethod
    def fit(cls, scaling: InputScaling, train_x: torch.Tensor) -> "PixelScaling":
        """The scaling `scaling` names, with statistics of the training images `train_x` (N, C, H, W)."""
        if InputScaling(scaling) == InputScaling.unit:
            return cls()
        total = torch.zeros(train_x.shape[1], dtype=torch.float64, device=train_x.device)
        squares = torch.zeros_like(total)
        for chunk in train_x.split(4096):  # float64 copies of a few thousand images at a time
            x = chunk.to(torch.float64).div_(255.0)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        count = train_x.shape[0] * train_x.shape[2] * train_x.shape[3]
        mean = total / count
        sd = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
        return cls(mean.float()[:, None, None], sd.float()[:, None, None])

    @classmethod
    def stack(cls, scalings: list["PixelScaling"]) -> "PixelScaling":
        """One scaling for K members' images (K, B, C, H, W), each with its own statistics."""
        if scalings[0].mean is None:
            return cls()
        return cls(torch.stack([s.mean[None] for s in scalings]), torch.stack([s.sd[None] for s in scalings]))


def load_dataset(dataset: Dataset, data_dir: Path | None = None, download: bool = False) -> RawData:
    """Load a whole dataset from `data_dir` (torchvision's layout; default `default_data_dir()`) into CPU tensors.

    With `download=True`, missing files are fetched by torchvision first; files
    already present are never fetched again. Any failure to find, fetch or read
    the data raises a one-line `QagrelError` saying what to do.
    """
    dataset = Dataset(dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():  # local: no download can help
        raise QagrelError(f"the data folder {data_dir} is a file, not a folder: point --data-dir / QAGREL_DATA "
                          f"at the folder that holds {_layout(dataset)}")
    if dataset in _MNIST_CLASS:
        return _load_mnist_family(dataset, data_dir, download)
    return _load_cifar(dataset, data_dir, download)


def make_splits(raw: RawData, seed: int, val_size: int = 1000, train_size: int | None = None,
                device: torch.device | str = "cpu") -> Splits:
    """Split the training set into train and validation by a seeded permutation.

    The first `val_size` indices of `randperm(N)` (CPU generator seeded with
    `seed`) validate and the rest train, so each seed holds out a different
    validation set and the same seed always the same one. `train_size` keeps only
    the first `train_size` of the remaining indices. The test set is the
    dataset's full test split. All tensors are moved to `device`.
    """
    n = int(raw.train_x.shape[0])
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise QagrelError(f"val_size must be an integer >= 0, got {val_size!r}")
    if val_size >= n:
        raise QagrelError(f"val_size {val_size} leaves no training images: the training split has only {n}")
    available = n - val_size
    if train_size is not None:
        if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
            raise QagrelError(f"train_size must be an integer >= 1, got {train_size!r}")
        if train_size > available:
            raise QagrelError(f"train_size {train_size} is more than the {available} training images "
                              f"left after holding out {val_size} for validation")
    # A CPU generator, so a seed gives the same split whatever the device.
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_idx = perm[:val_size]
    train_idx = perm[val_size:] if train_size is None else perm[val_size:val_size + train_size]
    parts = (raw.train_x[train_idx], raw.train_y[train_idx], raw.train_x[val_idx], raw.train_y[val_idx],
             raw.test_x, raw.test_y)
    try:
        moved = [t.to(device) for t in parts]
    except (RuntimeError, AssertionError) as e:  # e.g. cuda asked for on a machine without it
        raise QagrelError(f"cannot move the data to device {str(device)!r}: {_one_line(e)}") from None
    return Splits(*moved, num_classes=raw.num_classes)


# ---------------------------------------------------------------- MNIST family

def _load_mnist_family(dataset: Dataset, data_dir: Path, download: bool) -> RawData:
    raw_dir = data_dir / _MNIST_CLASS[dataset] / "raw"
    files = _find_idx_files(dataset, raw_dir)
    if files is None:
        _refuse_partial_copy(dataset, raw_dir, MNIST_FILES, or_gz=True)
    if files is None and download:
        _download(dataset, data_dir, raw_dir)
        files = _find_idx_files(dataset, raw_dir)
    if files is None:
        raise QagrelError(_missing_message(dataset, raw_dir, MNIST_FILES, or_gz=True))

    from torchvision.datasets.mnist import read_image_file, read_label_file

    train_x = _read_idx(files[0], read_image_file)
    train_y = _read_idx(files[1], read_label_file)
    test_x = _read_idx(files[2], read_image_file)
    test_y = _read_idx(files[3], read_label_file)
    for x, y, name in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != (28, 28):
            raise QagrelError(f"{dataset.value} {name} files in {files[0].parent} disagree: "
                              f"{tuple(x.shape)} images, {tuple(y.shape)} labels (expected N x 28 x 28 and N)")
    _check_labels(dataset, files[0].parent, torch.cat([train_y, test_y]))
    # torchvision's .data is (N, 28, 28); the models want a channel axis.
    return RawData(train_x.unsqueeze(1).contiguous(), train_y, test_x.unsqueeze(1).contiguous(), test_y,
                   _NUM_CLASSES[dataset])


def _find_idx_files(dataset: Dataset, raw_dir: Path) -> list[Path] | None:
    """The four IDX files, plain or .gz, from the first folder that holds all four.

    torchvision's own folder comes first. For Fashion-MNIST the Debian package's
    folder is the fallback; it is read in place (it is system-wide and read-only
    there), not copied into the user's data folder behind their back.
    """
    folders = [raw_dir]
    if dataset == Dataset.fashion_mnist:
        folders.append(DEBIAN_FASHION_MNIST_DIR)
    for folder in folders:
        found = []
        for name in MNIST_FILES:
            plain, gz = folder / name, folder / f"{name}.gz"
            found.append(plain if plain.is_file() else gz if gz.is_file() else None)
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Parse one IDX file with torchvision's reader, decompressing a .gz copy first.

    torchvision's reader only opens plain files, so a .gz file is decompressed
    into a temporary folder that is removed at once (the tensor owns its bytes).
    """
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="qagrel-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return reader(str(plain))
    except (OSError, EOFError, AssertionError, ValueError, TypeError, RuntimeError, KeyError) as e:
        raise QagrelError(f"cannot read {path} ({_one_line(e) or type(e).__name__}); it is not a valid "
                          f"IDX file: delete it and rerun with --download") from None


# ----------------------------------------------------------------------- CIFAR

def _load_cifar(dataset: Dataset, data_dir: Path, download: bool) -> RawData:
    folder = data_dir / _CIFAR_FOLDER[dataset]
    meta_name, meta_key = _CIFAR_META[dataset]
    expected = (*_CIFAR_TRAIN[dataset], *_CIFAR_TEST[dataset], meta_name)
    _refuse_partial_copy(dataset, folder, expected, or_gz=False)
    if download and not _all_files(folder, expected):
        _download(dataset, data_dir, folder)
    if not _all_files(folder, expected):
        raise QagrelError(_missing_message(dataset, folder, expected, or_gz=False))

    meta = _read_pickle(folder / meta_name)
    num_classes = _NUM_CLASSES[dataset]
    if len(meta.get(meta_key, ())) != num_classes:
        raise QagrelError(f"{folder / meta_name} does not list {num_classes} {meta_key}: "
                          f"is {folder} really {dataset.value}?")
    train_x, train_y = _read_cifar_batches(dataset, folder, _CIFAR_TRAIN[dataset])
    test_x, test_y = _read_cifar_batches(dataset, folder, _CIFAR_TEST[dataset])
    _check_labels(dataset, folder, torch.cat([train_y, test_y]))
    return RawData(train_x, train_y, test_x, test_y, num_classes)


def _read_cifar_batches(dataset: Dataset, folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR's python batches exactly as torchvision does, minus its MD5 check.

    torchvision's CIFAR classes refuse any file whose MD5 is not the official
    one, which would also reject a correctly formatted copy (or a test fixture).
    The format is fixed and simple, so it is read here: each pickle holds
    'data', a uint8 (N, 3072) array of row-major R, G and B planes, and the labels.
    Downloads still go through torchvision, which does verify the MD5s.
    """
    label_key = _CIFAR_LABEL_KEY[dataset]
    xs, ys = [], []
    for name in names:
        path = folder / name
        entry = _read_pickle(path)
        data, labels = entry.get("data"), entry.get(label_key)
        if data is None or labels is None:
            raise QagrelError(f"{path} lacks the 'data' or {label_key!r} entry: it is not a "
                              f"{dataset.value} batch; delete the folder and rerun with --download")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise QagrelError(f"{path} holds data of shape {data.shape} ({data.dtype}) and {len(labels)} labels; "
                              f"expected uint8 (N, 3072) and N labels")
        xs.append(data)
        ys.extend(int(v) for v in labels)
    # (N, 3072) planes are already channel-first: reshaping gives NCHW directly
    # (torchvision transposes to NHWC only for PIL).
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs).reshape(-1, 3, 32, 32)))
    return x, torch.tensor(ys, dtype=torch.int64)


def _read_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle, with str keys whatever pickle wrote them.

    The official files are Python 2 pickles: latin1 (as torchvision uses) gives
    str keys and intact numpy arrays; a file pickled by Python 3 from bytes keys
    (b"data") keeps them as bytes, so keys are normalised. Unpickling can run
    code, as with torchvision: only point --data-dir at folders you trust.
    """
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as e:
        raise QagrelError(f"cannot read {path} ({_one_line(e) or type(e).__name__}); "
                          f"delete the folder and rerun with --download") from None
    if not isinstance(obj, dict):
        raise QagrelError(f"{path} is not a CIFAR pickle (holds a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


# ---------------------------------------------------------------------- shared

def _download(dataset: Dataset, data_dir: Path, folder: Path) -> None:
    """Fetch the dataset with torchvision's own class, turning failures into one line."""
    # Imported here: torchvision takes seconds to import, and offline errors should be instant.
    import torchvision.datasets as tvd

    cls = {Dataset.mnist: tvd.MNIST, Dataset.fashion_mnist: tvd.FashionMNIST,
           Dataset.cifar10: tvd.CIFAR10, Dataset.cifar100: tvd.CIFAR100}[dataset]
    created = None  # the topmost folder this download will create, if any
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        created = parent
    try:
        # The test split is the smaller one to parse; the download fetches both.
        cls(root=str(data_dir), train=False, download=True)
    except (OSError, RuntimeError, ValueError, EOFError) as e:  # URLError is an OSError
        if created is not None:  # leave no empty or half-downloaded folders behind
            shutil.rmtree(created, ignore_errors=True)
        raise QagrelError(f"could not download {dataset.value} into {folder} ({_one_line(e)}); "
                          f"check the internet connection, or {_POINT_HINT.format(layout=_layout(dataset))}") from None


def _refuse_partial_copy(dataset: Dataset, folder: Path, expected: tuple[str, ...], or_gz: bool) -> None:
    """A one-line QagrelError naming the missing files when `folder` holds some of the dataset's files but not
    all: a copy lost a file here, which a download (a whole new archive over the rest) is not the way to mend."""
    def present(name: str) -> bool:
        return (folder / name).is_file() or (or_gz and (folder / f"{name}.gz").is_file())

    missing = [name for name in expected if not present(name)]
    if missing and len(missing) < len(expected):
        gz = " (or .gz)" if or_gz else ""
        raise QagrelError(f"{dataset.value} in {folder} lacks {', '.join(missing)}{gz}, and holds the other "
                          f"files: copy the missing file{'s' if len(missing) > 1 else ''} there, or delete the "
                          f"folder to fetch it whole")


def _all_files(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() for n in names)


def _check_labels(dataset: Dataset, folder: Path, labels: torch.Tensor) -> None:
    k = _NUM_CLASSES[dataset]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise QagrelError(f"{dataset.value} labels in {folder} run from {int(labels.min())} to "
                          f"{int(labels.max())}, outside 0..{k - 1}")


def _layout(dataset: Dataset) -> str:
    if dataset in _MNIST_CLASS:
        return f"{_MNIST_CLASS[dataset]}/raw/"
    return f"{_CIFAR_FOLDER[dataset]}/"


def _missing_message(dataset: Dataset, folder: Path, expected: tuple[str, ...], or_gz: bool) -> str:
    names = ", ".join(expected) + (" (or .gz)" if or_gz else "")
    msg = f"{dataset.value} data not found in {folder} (expected {names}); "
    msg += "rerun with --download (needs internet), or " + _POINT_HINT.format(layout=_layout(dataset))
    if dataset == Dataset.fashion_mnist:
        msg += f"; or install the Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST_DIR})"
    return msg


def _one_line(e: BaseException) -> str:
    """An exception's text collapsed to one line (torchvision's are multi-line)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["RawData", "Splits", "PixelScaling", "input_shape", "num_classes", "default_data_dir", "load_dataset", "make_splits", "DEBIAN_FASHION_MNIST_DIR",
           "MNIST_FILES"]
