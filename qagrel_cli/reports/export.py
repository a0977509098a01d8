"""`qagrel export DIR --tensorboard OUT`: a folder of runs as TensorBoard runs, for those who browse results there.

Each run folder becomes one TensorBoard run (`OUT/<its path below DIR>`): every metric its log records,
per epoch (the columns training writes, `LOG_COLUMNS`, and the per-layer angles), and, for a finished
run, its config as hparams with its final accuracies as the hparams' metrics. TensorBoard is an optional
dependency (`pip install -e '.[tensorboard]'`); torch writes the event files (`SummaryWriter`).

A run is written into a staging folder beside its place and moved there whole, replacing what an earlier
export wrote, so exporting again gives the same runs, not doubled curves, and a killed export leaves no
half run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError
from qagrel_cli.sweeps.results import RunRecord, read_results

TENSORBOARD_MISSING = ("qagrel export --tensorboard needs TensorBoard, an optional extra: "
                       "pip install -e '.[tensorboard]'")
STAGING_PREFIX = "_export-"  # '_': never read as a run
# A finished run's results, as its hparams' metrics (TensorBoard's HPARAMS tab sorts runs by them).
SUMMARY_METRICS = ("test_acc_at_best", "best_val_acc", "test_acc_at_stop", "best_epoch", "stop_epoch")


@dataclass
class Exported:
    """What `export_tensorboard` wrote: one TensorBoard run folder per run, and the runs it left out."""

    runs: list[Path] = field(default_factory=list)
    unfinished: int = 0  # exported without hparams (no final accuracy yet)
    warnings: list[str] = field(default_factory=list)


def summary_writer() -> Any:
    """torch's SummaryWriter class, or a one-line QagrelError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise QagrelError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def metric_columns(columns: Any) -> list[str]:
    """The log's per-epoch metrics: training's columns and the per-layer angles (not the config's columns)."""
    return [c for c in columns if c in run_folder.LOG_COLUMNS and c != "epoch"
            or c.startswith((run_folder.ANGLE_PREFIX, run_folder.BP_ANGLE_PREFIX))]


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config as TensorBoard hparams take it: numbers, strings and booleans (None and lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


def export_tensorboard(directory: Path, out: Path) -> Exported:
    """One TensorBoard run per run folder below `directory`, written under `out`."""
    writer_class = summary_writer()  # before anything is read or written
    directory, out = Path(directory), Path(out)
    results = read_results(directory)
    readable = [r for r in results.runs if r.log_readable and run_folder.is_run_dir(r.path)]
    if not readable:
        raise QagrelError(f"{directory}: no run folders with a readable log there")
    done = Exported(warnings=results.warnings())
    for record in readable:
        log = run_folder.one_row_per_epoch(run_folder.read_log(record.path))
        if log.empty:
            continue
        name = record.path.relative_to(directory) if record.path != directory else Path(record.config.run_id)
        target = out / name
        _write_run(writer_class, record, log, target)
        done.runs.append(target)
        done.unfinished += record.summary is None
    return done


def _write_run(writer_class: Any, record: RunRecord, log: Any, target: Path) -> None:
    """Write one run's event files in a staging folder beside `target`, then move them into place whole."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=STAGING_PREFIX) as staging:
            writer = writer_class(log_dir=staging)
            for row in log.to_dict("records"):
                for column in metric_columns(log.columns):
                    if row[column] == row[column]:  # NaN (an angle of a diverged epoch) is no point
                        writer.add_scalar(column, float(row[column]), int(row["epoch"]))
            if record.summary is not None:
                metrics = {f"final/{k}": float(record.summary[k]) for k in SUMMARY_METRICS
                           if record.summary.get(k) is not None}
                writer.add_hparams(hparams(record.config.to_dict()), metrics, run_name=".")
            writer.close()
            if target.exists():
                shutil.rmtree(target)
            Path(staging).rename(target)
            Path(staging).mkdir()  # for TemporaryDirectory's cleanup
    except OSError as err:
        raise QagrelError(f"cannot write {target}: {err.strerror or err}") from None


__all__ = ["export_tensorboard", "Exported", "TENSORBOARD_MISSING", "metric_columns"]
