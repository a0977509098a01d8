"""The end-of-run summary that `qagrel train` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qagrel_cli.reports.console import fit


def print_summary(summary: dict[str, Any], console: Console, run_dir: Path | None = None) -> None:
    """Print the end-of-run summary: where the run is, stop epoch, best validation, test accuracy, time."""
    cfg = summary["config"]
    table = Table(title=f"{summary['run_id']}  ({summary['status']})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if run_dir is not None:  # where its log, summary and weights are: what `qagrel eval` and `plot` take
        table.add_row("run folder", str(run_dir))
    table.add_row("rule / arch", f"{cfg['rule']} / {cfg['arch']} {summary['hidden_units']}  (alpha {cfg['lr']:g})")
    table.add_row("stop epoch", str(summary["stop_epoch"]))
    table.add_row("best epoch", str(summary["best_epoch"]))
    on_test = cfg.get("validation") == "test"  # early stopping read the test set (the authors' later recipe)
    table.add_row("best test accuracy (validation set)" if on_test else "best validation accuracy",
                  _percent(summary["best_val_acc"]))
    table.add_row("test accuracy at best epoch", _percent(summary["test_acc_at_best"]))
    table.add_row("test accuracy at stop", _percent(summary["test_acc_at_stop"]))
    table.add_row("converged", "yes" if summary["converged"] else "no")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s on {summary['device']}")
    console.print(fit(table, console))


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.2f} %"
