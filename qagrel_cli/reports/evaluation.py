"""`qagrel eval`, shown: the runs' accuracy beside what their logs recorded, per-class accuracy, and the
confusion matrix as a figure. The evaluation itself is core's (qagrel_cli/core/evaluate.py); this module
only draws what it returns, summed over the runs given (one run is the usual case)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from rich.console import Console
from rich.table import Table

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import QagrelError
from qagrel_cli.reports.console import fit

if TYPE_CHECKING:
    from qagrel_cli.core.evaluate import Evaluation

CONFUSION_FORMATS = (".png", ".pdf", ".svg")
ANNOTATED_CLASSES = 20  # counts are written in the cells up to this many classes (CIFAR-100's 100 would not fit)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Each class's fraction of its images answered right (None for a class without images)."""
    totals = confusion.sum(dim=1)
    return [None if int(n) == 0 else float(confusion[c, c]) / int(n) for c, n in enumerate(totals)]


def pooled_confusion(evaluations: Sequence[Evaluation]) -> torch.Tensor:
    """The runs' confusion matrices summed (one run: its own)."""
    return torch.stack([e.confusion for e in evaluations]).sum(dim=0)


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.2f} %"


def runs_table(evaluations: Sequence[Evaluation]) -> Table:
    """One row per run: the epoch evaluated, the accuracy now, and the log's at that epoch."""
    split = evaluations[0].split.value
    table = Table(title=f"{split} accuracy", title_justify="left")
    for name, justify in (("run", "left"), ("epoch", "right"), ("accuracy", "right"), ("logged", "right")):
        table.add_column(name, justify=justify, no_wrap=name == "run")  # type: ignore[arg-type]
    for e in evaluations:
        table.add_row(e.run_id, f"{e.at.value} ({e.epoch})", _percent(e.accuracy), _percent(e.logged_accuracy))
    return table


def class_table(evaluations: Sequence[Evaluation]) -> Table:
    """Per class: images and the fraction answered right, pooled over the runs."""
    confusion = pooled_confusion(evaluations)
    pooled = "" if len(evaluations) == 1 else f", {len(evaluations)} runs pooled"
    table = Table(title=f"per-class {evaluations[0].split.value} accuracy{pooled}", title_justify="left")
    for name in ("class", "images", "accuracy"):
        table.add_column(name, justify="right")
    for c, accuracy in enumerate(per_class_accuracy(confusion)):
        table.add_row(str(c), str(int(confusion[c].sum())), _percent(accuracy))
    return table


def print_evaluations(evaluations: Sequence[Evaluation], console: Console) -> None:
    """Both tables."""
    console.print(fit(runs_table(evaluations), console))
    console.print(fit(class_table(evaluations), console))


def check_confusion_file(out: Path) -> None:
    """Refuse a figure name matplotlib would not know, before any evaluation runs."""
    if out.suffix.lower() not in CONFUSION_FORMATS:
        raise QagrelError(f"--confusion takes a file name ending in {', '.join(CONFUSION_FORMATS)}, got {out}")


def draw_confusion(evaluations: Sequence[Evaluation], out: Path) -> Path:
    """The (pooled) confusion matrix, each row as fractions of its class, written atomically to `out`."""
    check_confusion_file(out)
    from matplotlib.figure import Figure  # no pyplot (reports/plot.py says why); slow to import

    confusion = pooled_confusion(evaluations)
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    classes = confusion.shape[0]
    size = 3 + 0.45 * min(classes, 30)
    fig = Figure(figsize=(size, size), layout="constrained", dpi=150)
    ax = fig.add_subplot()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the class")
    if classes <= ANNOTATED_CLASSES:
        ax.set_xticks(range(classes))
        ax.set_yticks(range(classes))
        for t in range(classes):
            for a in range(classes):
                ax.text(a, t, str(int(confusion[t, a])), ha="center", va="center", fontsize="x-small",
                        color="white" if rates[t, a] > 0.5 else "black")
    e = evaluations[0]
    who = e.run_id if len(evaluations) == 1 else f"{len(evaluations)} runs"
    ax.set_title(f"{who}\n{e.split.value} set, {e.at.value} weights", fontsize="small")
    ax.set_xlabel("answer (argmax)")
    ax.set_ylabel("true class")
    run_folder.atomic_write(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lower()[1:]))
    return out


__all__ = ["check_confusion_file", "per_class_accuracy", "pooled_confusion", "runs_table", "class_table",
           "print_evaluations", "draw_confusion"]
