"""The `qagrel` command line: parses options and calls the library. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from qagrel_cli.config import Arch, Dataset, Feedback, Optimizer, QagrelError, Rule, TrainConfig

app = typer.Typer(
    name="qagrel",
    help="Reproduce Table 1 of the Q-AGREL paper: biologically plausible deep RL vs error-backpropagation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def main_callback() -> None:
    """Reproduce Table 1 of the Q-AGREL paper: biologically plausible deep RL vs error-backpropagation."""

DATA_PANEL = "Data"
RULE_PANEL = "Learning rule"
ARCH_PANEL = "Architecture"
RUN_PANEL = "Run"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


DataDirOption = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder holding the datasets (torchvision layout, e.g. MNIST/raw/). "
    "Default: $QAGREL_DATA, else ./data.", rich_help_panel=DATA_PANEL, show_default=False)]
DownloadOption = Annotated[bool, typer.Option(
    "--download/--no-download", help="Download missing datasets (needs internet).", rich_help_panel=DATA_PANEL)]


@app.command()
def train(
    rule: Annotated[Rule, typer.Option(help="Learning rule: Q-AGREL (trial and error) or error-backpropagation.",
                                       rich_help_panel=RULE_PANEL)] = Rule.qagrel,
    arch: Annotated[Arch, typer.Option(help="conv, loccon (locally connected first layer) or fc (fully connected).",
                                       rich_help_panel=ARCH_PANEL)] = Arch.conv,
    fc: Annotated[Optional[str], typer.Option(
        help="Hidden fully connected sizes, e.g. 500 or 1000,500. Default: 500 (conv/loccon), 1500,1000,500 (fc).",
        rich_help_panel=ARCH_PANEL, show_default=False)] = None,
    dataset: Annotated[Dataset, typer.Option(help="Dataset (CIFAR-100 uses its 100 fine labels).",
                                             rich_help_panel=DATA_PANEL)] = Dataset.mnist,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, validation split, data order, dropout, "
                                      "exploration.", rich_help_panel=RUN_PANEL)] = 0,
    lr: Annotated[Optional[float], typer.Option(
        help="Learning rate alpha. Default: Table 1's value for this rule, architecture and dataset.",
        rich_help_panel=RULE_PANEL, show_default=False)] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="BP only: plain SGD (the paper) or Adam.",
                                                 rich_help_panel=RULE_PANEL)] = Optimizer.sgd,
    epsilon: Annotated[float, typer.Option(help="Q-AGREL exploration: probability of a Boltzmann draw instead "
                                           "of the argmax.", rich_help_panel=RULE_PANEL)] = 0.02,
    feedback: Annotated[Feedback, typer.Option(help="Q-AGREL feedback weights W': symmetric (W' = W at start, "
                                               "the paper) or random (drawn independently).",
                                               rich_help_panel=RULE_PANEL)] = Feedback.symmetric,
    init_range: Annotated[Optional[float], typer.Option(
        help="Weights start uniform in [-r, r]. Default: 0.02 (conv/loccon), 0.05 (fc).",
        rich_help_panel=ARCH_PANEL, show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Trials per weight update (1 = per-trial learning).",
                                            rich_help_panel=RUN_PANEL)] = 100,
    max_epochs: Annotated[int, typer.Option(help="Stop after this many epochs at most.",
                                            rich_help_panel=RUN_PANEL)] = 500,
    patience: Annotated[int, typer.Option(help="Early stopping: stop when validation accuracy has not "
                                          "increased for this many epochs.", rich_help_panel=RUN_PANEL)] = 20,
    train_size: Annotated[Optional[int], typer.Option(
        help="Train on only N samples (quick looks on a CPU). Default: all but the validation set.",
        rich_help_panel=DATA_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps. auto picks CUDA when present.",
                                        rich_help_panel=RUN_PANEL)] = "auto",
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder. Default: results/runs/<run-id>. Re-running with the same folder resumes.",
        rich_help_panel=RUN_PANEL, show_default=False)] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """Train one network of Table 1 and record every epoch (resumable; re-run to continue)."""
    from qagrel_cli.engine import train as run_training
    from qagrel_cli.report import print_summary

    try:
        config = TrainConfig(dataset=dataset, arch=arch, rule=rule, fc=fc, seed=seed, lr=lr, optimizer=optimizer,
                             epsilon=epsilon, feedback=feedback, init_range=init_range, batch_size=batch_size,
                             max_epochs=max_epochs, patience=patience, train_size=train_size, device=device)
        summary = run_training(config, out, data_dir=data_dir, download=download, quiet=quiet, console=console)
    except QagrelError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; the last finished epoch is saved: run the same command again to resume", 130)
    print_summary(summary, Console())
    if summary["diverged"]:
        raise fail(f"run diverged at epoch {summary['stop_epoch']} (non-finite loss or weights); "
                   "try a smaller --lr. The log up to then is kept.", 1)


# --- sweep, status, table commands go here ---


# --- plot command goes here ---


def main() -> None:  # pragma: no cover - console-script shim
    app(prog_name="qagrel")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
