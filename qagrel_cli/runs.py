"""The run folder: what one training run leaves on disk, and how it is written.

Layout of `<run-dir>/`:
  _config.yaml    the resolved TrainConfig (plus run_id)
  log.parquet     one row per finished epoch (+ the config columns on every row)
  _checkpoint.pt  weights, optimizer, RNG states, epoch, early-stopping state
  _summary.json   written once, when the run ends (finished or diverged)
  _error.txt      the error of a run that crashed (sweeps record it)

Every file but the log starts with '_' because Arrow skips such files: that
is what lets `pd.read_parquet("results/table1")` read every run's log at once.

Every file is written to a temporary name and renamed into place, so a killed
process leaves either the old file or the new one, never half of one. A run is
finished exactly when _summary.json exists.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

CONFIG_FILE = "_config.yaml"
LOG_FILE = "log.parquet"
CHECKPOINT_FILE = "_checkpoint.pt"
SUMMARY_FILE = "_summary.json"
ERROR_FILE = "_error.txt"
LOCK_FILE = "_lock"

# The epoch-log columns, in order (alignment angles `angle_<layer>` follow when recorded).
LOG_COLUMNS = ("epoch", "train_reward", "train_loss", "val_acc", "test_acc",
               "epoch_seconds", "samples_per_second", "lr")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / CONFIG_FILE).read_text())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None while it is not finished."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_log(run_dir: Path, log: pd.DataFrame) -> None:
    atomic_write(run_dir / LOG_FILE, lambda tmp: log.to_parquet(tmp, index=False))


def read_log(run_dir: Path) -> pd.DataFrame:
    """The epoch log (empty DataFrame when no epoch finished yet)."""
    try:
        # One open handle pins one inode: pyarrow given a path stats it and reopens
        # it, and a writer's rename in between hands it a torn file.
        with open(run_dir / LOG_FILE, "rb") as fh:
            return pd.read_parquet(fh)
    except FileNotFoundError:
        return pd.DataFrame(columns=list(LOG_COLUMNS))


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder at or below `root`, sorted."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    return sorted(p.parent for p in root.rglob(CONFIG_FILE) if not p.parent.name.startswith((".", "_")))
