"""The run folder: what one training run leaves on disk, and how it is written.

Layout of `<run-dir>/`:
  _config.yaml    the TrainConfig (every default filled in)
  log.parquet     one row per finished epoch (+ the config columns on every row)
  _checkpoint.pt  weights, optimizer, RNG states, epoch, early-stopping state
  _weights_best.pt  the network at its best-validation epoch (core/weights.py; rewritten at each new best)
  _weights_last.pt  the network at its last epoch (written when the run ends)
  _summary.json   written once, when the run ends (finished or diverged)
  _error.txt      the error of a run that crashed (sweeps record it)
  _lock           flock-ed by the one process training the run (`try_lock`)

Every file but the log starts with '_' because Arrow skips such files: that
is what lets `pd.read_parquet("results/table1")` read every run's log at once.

Every file is written to a temporary name and renamed into place, so a killed
process leaves either the old file or the new one, never half of one, with the
permissions the umask gives a new file (colleagues on a shared file system can
read results). A run is finished exactly when _summary.json exists
(`is_finished`).

Files are read only through the readers here. A file that exists but cannot be
read (half-copied, garbage, a full disk) raises `DamagedFile`, which names it,
so that every view of a results folder can report it and go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import resource
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import yaml

from qagrel_cli.core.config import CONFIG_FIELDS, FIELDS_ADDED_LATER, QagrelError, TrainConfig

CONFIG_FILE = "_config.yaml"
LOG_FILE = "log.parquet"
CHECKPOINT_FILE = "_checkpoint.pt"
SUMMARY_FILE = "_summary.json"
ERROR_FILE = "_error.txt"
LOCK_FILE = "_lock"
WEIGHTS_BEST_FILE = "_weights_best.pt"
WEIGHTS_LAST_FILE = "_weights_last.pt"
# The weights a run keeps (core/weights.py): large, so never committed and copied only when asked for.
WEIGHTS_FILES = (WEIGHTS_BEST_FILE, WEIGHTS_LAST_FILE)
# Files a run's folder may hold before training writes anything (the lock; a sweep's record of a crash).
LEDGER_FILES = frozenset({LOCK_FILE, ERROR_FILE})
# A finished run is read from these alone: what is kept and copied of it (never the checkpoint or lock).
RESULT_FILES = (CONFIG_FILE, SUMMARY_FILE, LOG_FILE)

# The epoch-log columns, in order; per-layer angles follow: `bp_angle_<layer>` (the rule's update against
# Error-BP's gradient, every run since they were added) and `angle_<layer>` (W against W'^T, where W' starts
# apart from W).
LOG_COLUMNS = ("epoch", "train_reward", "train_loss", "val_acc", "test_acc",
               "epoch_seconds", "samples_per_second", "lr")
ANGLE_PREFIX = "angle_"
BP_ANGLE_PREFIX = "bp_angle_"


class DamagedFile(QagrelError):
    """A run file that exists but cannot be read; the message names it and says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: unreadable ({reason})")
        self.path, self.reason = Path(path), reason


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the mode a plainly created file would (0666 less the umask):
    mkstemp's private 0600 must not survive the rename. A folder that cannot be
    written (read-only, full, missing permissions) is a one-line QagrelError.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise QagrelError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise QagrelError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_config(run_dir: Path, config: TrainConfig) -> None:
    """The run's config (written once, when training starts)."""
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig the run folder was started with; DamagedFile if it cannot be read."""
    path = run_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DamagedFile(path, _reason(err)) from None
    if not isinstance(data, dict):
        raise DamagedFile(path, f"not a mapping of options but {type(data).__name__}")
    # write_config writes every field: a config cut short at a line break still parses as YAML, and its
    # missing fields must not silently take their defaults (another run's settings).
    missing = [name for name in CONFIG_FIELDS if name not in data and name not in FIELDS_ADDED_LATER]
    if missing:
        raise DamagedFile(path, f"lacks {', '.join(missing)}")
    try:
        return TrainConfig.from_dict({k: v for k, v in data.items() if k in CONFIG_FIELDS})
    except QagrelError as err:
        raise DamagedFile(path, str(err)) from None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """The end-of-run record, as strict JSON: a number that is not finite is written as null."""
    text = json.dumps(_finite_or_none(summary), indent=2, allow_nan=False)
    atomic_write_text(run_dir / SUMMARY_FILE, text + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None while it is not finished; DamagedFile if it cannot be read."""
    path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedFile(path, _reason(err)) from None
    if not isinstance(summary, dict) or not {"run_id", "stop_epoch"} <= summary.keys():
        raise DamagedFile(path, "not a qagrel run summary")
    problem = _summary_problem(summary)
    if problem is not None:
        raise DamagedFile(path, problem)
    return summary


def _is_number(value: Any) -> bool:
    """A number that is not infinite: NaN stands for a diverged run's value in summaries written before
    they became strict JSON (null since)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isinf(value)


def _is_accuracy(value: Any) -> bool:
    return value is None or (_is_number(value) and (math.isnan(value) or 0 <= value <= 1))


# What each field of a summary holds, where it is there (older summaries lack some): a view that read a
# wrong type (an epoch "abc", an accuracy 1e400) would crash or show nonsense far from the file's name.
_SUMMARY_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "run_id": ("a run id", lambda v: isinstance(v, str) and bool(v)),
    "stop_epoch": ("an epoch >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "best_epoch": ("an epoch >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    **{name: ("an accuracy in [0, 1] or null", _is_accuracy)
       for name in ("best_val_acc", "test_acc_at_best", "test_acc_at_stop")},
    "final_train_reward": ("a finite number or null", lambda v: v is None or _is_number(v)),
    "wall_seconds": ("seconds >= 0 or null", lambda v: v is None or (_is_number(v) and not v < 0)),
    **{name: ("true or false", lambda v: isinstance(v, bool)) for name in ("converged", "diverged")},
}


def _summary_problem(summary: dict[str, Any]) -> str | None:
    """The first field of `summary` whose value has the wrong type or range, said in words; None if all fit."""
    for name, (what, fits) in _SUMMARY_FIELDS.items():
        if name in summary and not fits(summary[name]):
            return f"{name} is {summary[name]!r}, not {what}"
    return None


def is_finished(run_dir: Path) -> bool:
    """A run is finished exactly when its summary exists (the one test of it)."""
    return (run_dir / SUMMARY_FILE).exists()


def write_log(run_dir: Path, log: pd.DataFrame) -> None:
    atomic_write(run_dir / LOG_FILE, lambda tmp: log.to_parquet(tmp, index=False))


# The columns every view of finished runs reads of a log (one without them is damaged, whatever else it
# holds); a view that reads more names them in its `needs`.
LOG_NEEDS = ("epoch", "test_acc")


def read_log(run_dir: Path, needs: Sequence[str] = ("epoch",)) -> pd.DataFrame:
    """The epoch log (empty DataFrame when no epoch finished yet); DamagedFile if it cannot be read or lacks
    a column of `needs`."""
    path = run_dir / LOG_FILE
    try:
        # One open handle pins one inode: pyarrow given a path stats it and reopens
        # it, and a writer's rename in between hands it a torn file.
        with open(path, "rb") as fh:
            log = pd.read_parquet(fh)
    except FileNotFoundError:
        return pd.DataFrame(columns=list(LOG_COLUMNS))
    except Exception as err:  # pyarrow raises its own ArrowInvalid, OSError and more for a torn file
        raise DamagedFile(path, _reason(err)) from None
    _check_columns(path, log.columns, needs)
    return log


def check_log(run_dir: Path, needs: Sequence[str] = LOG_NEEDS) -> None:
    """DamagedFile if the log exists and its footer cannot be read or lacks a column of `needs`: the check
    `read_log` makes, reading the footer alone (for a view that reads the log's body only to plot)."""
    import pyarrow.parquet as pq

    path = run_dir / LOG_FILE
    try:
        with open(path, "rb") as fh:
            names = pq.read_schema(fh).names
    except FileNotFoundError:
        return
    except Exception as err:  # pyarrow's ArrowInvalid and OSError, among others, for a torn file
        raise DamagedFile(path, _reason(err)) from None
    _check_columns(path, names, needs)


def _check_columns(path: Path, columns: Any, needs: Sequence[str]) -> None:
    missing = [name for name in needs if name not in set(columns)]
    if missing:
        raise DamagedFile(path, f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def one_row_per_epoch(log: pd.DataFrame) -> pd.DataFrame:
    """The log with each epoch once, in order: an epoch logged twice (a resumed run may log one again)
    counts as its last row."""
    return log.drop_duplicates("epoch", keep="last").sort_values("epoch")


def epochs_saved(run_dir: Path) -> int:
    """Epochs in the run's log (0 when there is none yet, or it cannot be read)."""
    import pyarrow.parquet as pq

    try:
        with open(run_dir / LOG_FILE, "rb") as fh:
            return pq.read_metadata(fh).num_rows
    except Exception:  # missing, or torn: either way no epoch can be counted on
        return 0


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


HIDDEN_PREFIXES = (".", "_")  # a folder named so holds no results (`scan_results`)


def scan_results(root: Path, names: Sequence[str] = (CONFIG_FILE,)) -> tuple[list[Path], list[DamagedFile]]:
    """Every file named one of `names` at or below `root`, sorted, and each folder that could not be listed.

    Folders named with a leading '.' or '_' (figures, staging areas, scratch copies) are not entered: none
    of it is a result. A symlinked folder is followed (a results folder assembled
    from links to runs elsewhere), each real folder once, so a link cycle ends. A folder that cannot be
    listed (no permission, gone, an I/O error) comes back as a DamagedFile naming it: a view says which
    folder it left out instead of showing fewer runs without a word.
    """
    root = Path(root)
    found: list[Path] = []
    unreadable: list[DamagedFile] = []
    seen: set[str] = set()

    def note(err: OSError) -> None:
        reason = f"cannot list the folder: {err.strerror or _reason(err)}"
        unreadable.append(DamagedFile(Path(err.filename or root), reason))

    for folder, subfolders, files in os.walk(root, onerror=note, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a second link to a folder already read, or a cycle
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(HIDDEN_PREFIXES)]
        found += [Path(folder) / name for name in names if name in files]
        for name in files:  # a link whose target is gone is listed as a file: say so, it may have been a run
            path = Path(folder) / name
            if not name.startswith(HIDDEN_PREFIXES) and path.is_symlink() and not path.exists():
                unreadable.append(DamagedFile(path, f"a link to {os.readlink(path)}, which does not exist"))
    return sorted(found), unreadable


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder at or below `root` (`scan_results`), sorted; a folder that cannot be listed is left out."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    return [p.parent for p in scan_results(root)[0]]


# ---- the run's lock: one process trains a run at a time (a sweep worker, a Ray driver or `qagrel train`)

def try_lock(run_dir: Path) -> int | None:
    """Take the run's lock without waiting: the open fd (keep it to hold the lock), or None if held elsewhere.

    An flock belongs to the open file, so the kernel drops it when its process dies, even on kill -9:
    a stale lock never blocks anyone. Two opens in one process exclude each other too.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the file we locked must still be the one at the path: its holder may have unlinked it
            if os.fstat(fd).st_ino == os.stat(run_dir / LOCK_FILE).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # a stale file: take the lock on the one there now


def is_locked(run_dir: Path) -> bool:
    """True while a live process holds the run's lock. Writes nothing."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:  # a shared probe: it can only fail against an exclusive holder
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def release_lock(run_dir: Path, fd: int) -> None:
    """Give a run's lock back. The lock file goes too when the run is finished (done is final) or when the
    folder holds nothing else (a run refused before it started leaves no lock behind). A process that
    opened the file before the unlink finds it no longer at the path (`try_lock`)."""
    try:
        nothing_else = [p.name for p in run_dir.iterdir()] == [LOCK_FILE]
    except OSError:
        nothing_else = False
    if is_finished(run_dir) or nothing_else:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


# File descriptors kept free beside the runs' locks: data files, torch's libraries, pipes, the log.
FD_MARGIN = 64


def max_locks() -> int:
    """How many run locks this process can hold at once: its open-file limit less FD_MARGIN."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 30) if soft == resource.RLIM_INFINITY else max(0, soft - FD_MARGIN)


def check_lock_count(count: int) -> None:
    """One-line QagrelError, before anything is written, when `count` runs' locks would not fit in this
    process (one open file each): better than dying half-way with "Too many open files"."""
    if count > max_locks():
        raise QagrelError(f"{count} runs to train together, but this process can hold only {max_locks()} run "
                          f"locks (open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, "
                          f"ulimit -n): train fewer seeds at a time")


@contextlib.contextmanager
def holding_locks(run_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold every run's lock for the block; QagrelError, holding none, if another process trains one of them."""
    check_lock_count(len(run_dirs))
    held: list[tuple[Path, int]] = []
    try:
        for run_dir in run_dirs:
            fd = try_lock(run_dir)
            if fd is None:
                raise QagrelError(f"{run_dir} is being trained by another process (a sweep or qagrel train); "
                                  "wait for it to end, or choose another --out")
            held.append((run_dir, fd))
        yield
    finally:
        for run_dir, fd in reversed(held):
            release_lock(run_dir, fd)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
