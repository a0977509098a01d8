"""The `qagrel` command line: parses options and calls the library. No logic lives here."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages are plain text: 'qagrel[ray]' or a path with [..] is not markup
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from qagrel_cli.core.config import (Arch, Dataset, Feedback, Init, InputScaling, Optimizer, Padding, QagrelError, Rule,
                                    TrainConfig, Validation, parse_seeds)
from qagrel_cli.core.recipes import Recipe, with_recipe
# Option choices only: these modules load torch and matplotlib lazily, when a command runs.
from qagrel_cli.reports.console import report_console
from qagrel_cli.reports.milestones import MilestoneFormat
from qagrel_cli.reports.plot import AfterStop, Metric, PlotFormat
from qagrel_cli.reports.status import StatusFormat
from qagrel_cli.reports.table import AccuracyAt, Compare, EpochsAt
from qagrel_cli.reports.table_formats import TableFormat

# typer re-exports only BadParameter; its base is click's UsageError (vendored or not).
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _no_flag_metavars(params: list[Any]) -> None:
    """A flag takes no value, so its help shows no type: typer would print `<bool>` beside --quiet and --help."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""


def _one_line_message(err: Exception) -> str:
    """The usage error's message without the validation library's prefix: "Invalid value for '--rule':
    'foo' is not one of 'qagrel', 'bp'.", not "...: Value error, 'foo' ..."."""
    return re.sub(r"(?<=: )Value error, ", "", err.format_message(), count=1)  # type: ignore[attr-defined]


class QagrelCommand(TyperCommand):
    """A command whose help reads as command-line help conventionally does: flags without a type, and
    arguments by their metavar in the usage line (`qagrel sweep [OPTIONS] FILE`, not `{file}`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_flag_metavars(self.params)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)  # made on first use, so it is fixed here, not in __init__
        _no_flag_metavars([option] if option is not None else [])
        return option

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class OneLineErrors(TyperGroup):
    """Report usage errors (bad option values, unknown options) as one line, not a boxed panel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_flag_metavars(self.params)  # --version

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        _no_flag_metavars([option] if option is not None else [])
        return option

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `qagrel`: show the help
                err.show()
                sys.exit(0)
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            console.print(f"[bold red]error:[/] {escape(_one_line_message(err))}{where}", highlight=False,
                          soft_wrap=True)
            sys.exit(2)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="qagrel",
    cls=OneLineErrors,
    help="Reproduce Table 1 of the Q-AGREL paper: biologically plausible deep RL vs error-backpropagation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _print_version(wanted: bool) -> None:
    """--version: the version and git commit, then exit before any command runs."""
    if wanted:
        from qagrel_cli.core.provenance import version_line

        print(version_line())
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", help="Print the qagrel version and git commit, and exit.",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Reproduce Table 1 of the Q-AGREL paper: biologically plausible deep RL vs error-backpropagation."""

DATA_PANEL = "Data"
RULE_PANEL = "Learning rule"
ARCH_PANEL = "Architecture"
RUN_PANEL = "Run"
PROTOCOL_PANEL = "Protocol choices the paper leaves open (docs/reproduction.md)"


def parse_epochs(text: str) -> list[int]:
    """'10,30' -> [10, 30]: epochs (>= 1) for a report, each once, in the order given."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        raise QagrelError(f"--at-epochs takes epochs like 10,30, got {text!r}") from None
    if not epochs or min(epochs) < 1 or len(set(epochs)) != len(epochs):
        raise QagrelError(f"--at-epochs takes distinct epochs >= 1 like 10,30, got {text!r}")
    return epochs


def warn(lines: list[str]) -> None:
    """Print one warning line each (damaged files a command skipped)."""
    for line in lines:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


DataDirOption = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder holding the datasets (torchvision layout, e.g. MNIST/raw/). "
    "Default: $QAGREL_DATA, else ./data.", rich_help_panel=DATA_PANEL, show_default=False)]
DownloadOption = Annotated[bool, typer.Option(
    "--download/--no-download", help="Download missing datasets (needs internet).", rich_help_panel=DATA_PANEL)]


@app.command(cls=QagrelCommand)
def train(
    rule: Annotated[Rule, typer.Option(help="Learning rule: qagrel (Q-AGREL: trial and error), bp "
                                       "(error-backpropagation), fa (feedback alignment) or dfa (direct feedback "
                                       "alignment).", rich_help_panel=RULE_PANEL)] = Rule.qagrel,
    arch: Annotated[Arch, typer.Option(help="conv, loccon (locally connected first layer) or fc (fully connected).",
                                       rich_help_panel=ARCH_PANEL)] = Arch.conv,
    fc: Annotated[Optional[str], typer.Option(
        help="Hidden fully connected sizes, e.g. 500 or 1000,500. Default: 500 (conv/loccon), 1500,1000,500 (fc).",
        rich_help_panel=ARCH_PANEL, show_default=False)] = None,
    dataset: Annotated[Dataset, typer.Option(help="Dataset (CIFAR-100 uses its 100 fine labels).",
                                             rich_help_panel=DATA_PANEL)] = Dataset.mnist,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation, validation split, data order, "
                                                "dropout, exploration. Default: 0.", rich_help_panel=RUN_PANEL,
                                                show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(
        help="Train several seeds as one pack instead of --seed, e.g. 0-9 or 0,3,5: one batched model on a GPU, "
        "each seed its own run folder, named by its run id, under --out (default results/runs/).",
        rich_help_panel=RUN_PANEL, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Learning rate alpha. Default: Table 1's value for this rule, architecture and dataset.",
        rich_help_panel=RULE_PANEL, show_default=False)] = None,
    recipe: Annotated[Optional[Recipe], typer.Option(
        help="A named set of the options below: paper (section 3 as written, the default) or brainprop (the "
        "authors' later code: batch norm, dropout 0.3, same padding, normal init, batch 128, alpha 0.1 halved "
        "every 100 epochs, patience 45, min-delta 0.001, test set as validation set). Options given beside it "
        "win; the run records the values.", rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(
        help="BP only: plain SGD (the literal reading) or Adam. Default: sgd.", rich_help_panel=PROTOCOL_PANEL,
        show_default=False)] = None,
    epsilon: Annotated[float, typer.Option(help="Q-AGREL exploration: probability of a Boltzmann draw instead "
                                           "of the argmax.", rich_help_panel=RULE_PANEL)] = 0.02,
    feedback: Annotated[Feedback, typer.Option(help="Q-AGREL feedback weights W': symmetric (W' = W at start, "
                                               "the paper), random (drawn apart from W, then changed as W is) or "
                                               "fixed (drawn apart from W, never changed).",
                                               rich_help_panel=RULE_PANEL)] = Feedback.symmetric,
    init: Annotated[Optional[Init], typer.Option(
        help="Initial weights: uniform in [-r, r] (the paper; r is --init-range), he (uniform in ±sqrt(6 / "
        "fan-in) per layer) or normal (N(0, SD²); SD is --init-sd). Default: uniform.",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    init_range: Annotated[Optional[float], typer.Option(
        help="With --init uniform: weights start in [-r, r]. Default: 0.02 (conv/loccon), 0.05 (fc).",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    init_sd: Annotated[Optional[float], typer.Option(
        help="With --init normal: the weights' SD. Default: 0.005 (conv/loccon), 0.01 (fc), the authors' later "
        "code's.", rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    input_scaling: Annotated[InputScaling, typer.Option(
        help="Network input: unit (pixels / 255, in [0, 1]: the literal reading) or standardize (then "
        "per-channel mean 0, SD 1 over the run's training split).", rich_help_panel=PROTOCOL_PANEL)
    ] = InputScaling.unit,
    conv_dropout: Annotated[Optional[float], typer.Option(
        help="Conv and loccon nets: the fraction of the strided conv layer's units silenced in training (the "
        "paper's 0.8, the literal reading and the default; 0.2 reads that 0.8 as the probability of keeping a "
        "unit).", rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    batch_norm: Annotated[Optional[bool], typer.Option(
        "--batch-norm/--no-batch-norm", help="Conv and loccon nets: batch normalisation after the ReLU of both "
        "conv/loccon layers, with a learned scale and shift. Default: off (the paper).",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    padding: Annotated[Optional[Padding], typer.Option(
        help="Conv and loccon nets: the first layer's padding, valid (the paper's: Table 1's hidden units, the "
        "default) or same (zero padding: 25088-6272 on MNIST, 32768-8192 on CIFAR).",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Trials per weight update (1 = per-trial learning). Default: 100.", rich_help_panel=RUN_PANEL,
        show_default=False)] = None,
    lr_halve_every: Annotated[Optional[int], typer.Option(
        help="Halve alpha after every N epochs; 0 keeps it (the paper, the default).",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    max_epochs: Annotated[int, typer.Option(help="Stop after this many epochs at most.",
                                            rich_help_panel=RUN_PANEL)] = 500,
    patience: Annotated[Optional[int], typer.Option(
        help="Early stopping: stop when validation accuracy has not increased for this many epochs. Default: 20.",
        rich_help_panel=RUN_PANEL, show_default=False)] = None,
    min_delta: Annotated[Optional[float], typer.Option(
        help="Early stopping: an epoch counts as better only when it beats the best by more than this "
        "accuracy (0.001 = 0.1 points). Default: 0.", rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    validation: Annotated[Optional[Validation], typer.Option(
        help="What early stopping reads: held-out (--val-size training images, the paper's, the default) or "
        "test (the test set as validation set, as the authors' later code; held-out accuracy is still logged).",
        rich_help_panel=PROTOCOL_PANEL, show_default=False)] = None,
    train_size: Annotated[Optional[int], typer.Option(
        help="Train on only N samples (quick looks on a CPU). Default: all but the validation set.",
        rich_help_panel=DATA_PANEL, show_default=False)] = None,
    val_size: Annotated[int, typer.Option(help="Training images held out for validation (early stopping), drawn "
                                          "per seed.", rich_help_panel=DATA_PANEL)] = 1000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps. auto picks CUDA when present.",
                                        rich_help_panel=RUN_PANEL)] = "auto",
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder (with --seeds: the folder holding one run folder per seed). Default: "
        "results/runs/<run-id>. Re-running with the same folder resumes.",
        rich_help_panel=RUN_PANEL, show_default=False)] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """Train one network of Table 1 and record every epoch (resumable; re-run to continue)."""
    from qagrel_cli.core.interrupts import sigterm_interrupts
    from qagrel_cli.core.run_folder import epochs_saved
    from qagrel_cli.core.training import run_folders, train_runs
    from qagrel_cli.reports.summary import print_summary

    run_dirs: list[Path] = []
    try:
        if seed is not None and seeds is not None:
            raise QagrelError("give either --seed or --seeds, not both")
        given = dict(lr=lr, optimizer=optimizer, init=init, init_range=init_range, init_sd=init_sd,
                     conv_dropout=conv_dropout, batch_norm=batch_norm, padding=padding, batch_size=batch_size,
                     lr_halve_every=lr_halve_every, patience=patience, min_delta=min_delta, validation=validation)
        options = {name: value for name, value in given.items() if value is not None}
        config = TrainConfig.from_dict(with_recipe({
            "recipe": recipe.value if recipe else None, "dataset": dataset, "arch": arch, "rule": rule, "fc": fc,
            "seed": seed or 0, "epsilon": epsilon, "feedback": feedback, "input_scaling": input_scaling,
            "max_epochs": max_epochs, "train_size": train_size, "val_size": val_size, "device": device, **options}))
        configs = [config] if seeds is None else [replace(config, seed=s) for s in parse_seeds(seeds)]
        run_dirs = run_folders(configs, out, packed=seeds is not None)
        with sigterm_interrupts():  # a scheduler's stop ends the run as Ctrl-C does
            summaries = train_runs(configs, run_dirs, data_dir=data_dir, download=download, quiet=quiet,
                                   console=console)
    except QagrelError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        if any(epochs_saved(d) for d in run_dirs):
            raise fail("interrupted; every finished epoch is saved: run the same command again to resume", 130)
        raise fail("interrupted before the first epoch ended: nothing was saved", 130)
    for summary, run_dir in zip(summaries, run_dirs):
        print_summary(summary, report_console(), run_dir)
    diverged = [s for s in summaries if s["diverged"]]
    if diverged:
        where = ", ".join(f"seed {s['config']['seed']} at epoch {s['stop_epoch']}" for s in diverged)
        raise fail(f"run diverged ({where}: non-finite loss or weights); try a smaller --lr. "
                   "The log up to then is kept.", 1)


# --- sweep, status, table

SWEEP_PANEL = "Sweep"
TABLE_PANEL = "Table"
ResultsOption = Annotated[Path, typer.Option(
    "--results", help="Results root: runs go to <results>/<sweep name>/<run id>/.", rich_help_panel=SWEEP_PANEL)]


class Executor(str, Enum):
    local = "local"  # worker processes on this machine
    ray = "ray"  # Ray tasks on a Ray cluster (or a Ray instance started here)


RAY_PANEL = "Ray (--executor ray)"


@app.command(cls=QagrelCommand)
def sweep(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Sweep file (YAML), e.g. sweeps/table1.yaml.",
                                         show_default=False)],
    workers: Annotated[int, typer.Option(min=1, help="Runs trained at once, one process each; CPU threads are "
                                         "divided among them, GPUs shared round the runs.",
                                         rich_help_panel=SWEEP_PANEL)] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads per local worker. Default: the "
                                                   "machine's cores divided among the workers; give it when "
                                                   "another sweep shares the machine.",
                                                   rich_help_panel=SWEEP_PANEL, show_default=False)] = None,
    results: ResultsOption = Path("results"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the runs and their state, one line per Table 1 "
                                          "row (--all: per run); write nothing.",
                                          rich_help_panel=SWEEP_PANEL)] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="With --dry-run: time each network here and print "
                                           "the expected compute time of the runs still to train, per "
                                           "executor choice.",
                                           rich_help_panel=SWEEP_PANEL)] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the runs that failed (see their "
                                               "_error.txt) again.", rich_help_panel=SWEEP_PANEL)] = False,
    pack: Annotated[Optional[int], typer.Option(min=1, help="Train up to K runs that differ only in seed as one "
                                                "seed pack per worker. Default: the sweep file's pack:, else 1.",
                                                rich_help_panel=SWEEP_PANEL, show_default=False)] = None,
    executor: Annotated[Executor, typer.Option(help="local: worker processes here; ray: Ray tasks (pip install "
                                               "'qagrel\\[ray]').", rich_help_panel=SWEEP_PANEL)] = Executor.local,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join: auto (the one started on this node "
                                                   "with ray start) or HOST:PORT. Default: start Ray here.",
                                                   rich_help_panel=RAY_PANEL, show_default=False)] = None,
    cpus_per_run: Annotated[float, typer.Option(help="CPUs each Ray task (a run or a pack) asks for.",
                                                rich_help_panel=RAY_PANEL)] = 1.0,
    gpus_per_run: Annotated[float, typer.Option(help="GPUs each Ray task asks for; 0.25 puts four runs on a GPU.",
                                                rich_help_panel=RAY_PANEL)] = 0.0,
    retries: Annotated[int, typer.Option(min=0, help="Times a job whose Ray worker died is sent again, from the "
                                         "checkpoints it shipped back.", rich_help_panel=RAY_PANEL)] = 2,
    every_run: Annotated[bool, typer.Option("--all", help="With --dry-run: list every run, not one line per "
                                            "Table 1 row.", rich_help_panel=SWEEP_PANEL)] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Train a sweep of more than 5000 runs (refused without it: "
                                      "check it with --dry-run first).", rich_help_panel=SWEEP_PANEL)] = False,
    replace_sweep: Annotated[bool, typer.Option("--replace", help="Let this file take over a sweep name that "
                                                "another sweep file used in --results (its runs stay).",
                                                rich_help_panel=SWEEP_PANEL)] = False,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
) -> None:
    """Train every run of a sweep file; run it again to resume (Ctrl-C, kill -9 or a reboot lose no finished epoch)."""
    from qagrel_cli.reports.status import print_plan
    from qagrel_cli.sweeps.orchestrator import run_sweep
    from qagrel_cli.sweeps.sweep_file import check_sweep_name, load_sweep

    try:
        plan = load_sweep(file)
        if not replace_sweep:
            check_sweep_name(plan, results)
        if estimate and not dry_run:
            raise QagrelError("--estimate goes with --dry-run: qagrel sweep FILE --dry-run --estimate")
        if dry_run:
            print_plan(plan, results, report_console(), every_run=every_run)
            if estimate:
                from qagrel_cli.reports.estimate import estimate_sweep, print_estimate, runs_left
                left = runs_left(plan, results)
                print_estimate(estimate_sweep(left, workers=workers, pack=pack or plan.pack, threads=threads),
                               report_console(),
                               not_priced=len(plan.configs) - len(left))
            return
        ray = None
        if executor == Executor.ray:
            from qagrel_cli.sweeps.ray_executor import RayOptions
            ray = RayOptions(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, retries=retries)
        outcome = run_sweep(plan, results, workers=workers, data_dir=data_dir, download=download,
                            retry_failed=retry_failed, console=console, pack=pack, ray=ray, threads=threads,
                            replace=replace_sweep, confirmed=yes)
    except QagrelError as err:
        raise fail(str(err)) from None
    console.print(outcome.describe(), highlight=False, soft_wrap=True)
    if outcome.interrupted:
        raise fail("interrupted; every finished epoch is saved: run the same command again to resume", 130)
    if outcome.failed:
        raise fail("failed runs: " + ", ".join(str(results / plan.name / r / "_error.txt") for r in outcome.failed), 1)


@app.command(cls=QagrelCommand)
def status(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="A sweep's results folder (e.g. "
                                              "results/table1) or a folder of several.")] = Path("results"),
    times: Annotated[bool, typer.Option("--times", help="Add the done runs' measured training time per epoch, "
                                        "per run and in all (to set beside `qagrel sweep --dry-run --estimate`).")
                     ] = False,
    fmt: Annotated[StatusFormat, typer.Option("--format", help="rich (terminal) or markdown (for a report or "
                                              "a lab notebook).")] = StatusFormat.rich,
) -> None:
    """Count done / running / failed / pending runs per Table 1 row."""
    from qagrel_cli.reports.status import print_status, status_markdown, status_report

    try:
        report = status_report(directory, times=times)
    except QagrelError as err:
        raise fail(str(err)) from None
    if fmt == StatusFormat.markdown:
        write_report(status_markdown(report), None)
    else:
        print_status(report, report_console())


@app.command(cls=QagrelCommand)
def collect(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="A results folder a sweep writes into (e.g. "
                                           "/scratch/results/table1), or a folder of several.",
                                           show_default=False)],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Where its finished runs go, at the same places "
                                         "(e.g. results/table1).", show_default=False)],
    with_weights: Annotated[bool, typer.Option("--with-weights", help="Also copy each run's weights at its best "
                                               "and last epoch (_weights_best.pt, _weights_last.pt), for "
                                               "`qagrel eval`; a run finished in DEST gets those it lacks.")
                            ] = False,
) -> None:
    """Copy the finished runs under SOURCE into DEST (config, summary and log; never a checkpoint or a lock).

    A run finished in DEST is kept as it is, an unfinished one replaced; safe to repeat while the sweep runs."""
    from qagrel_cli.sweeps.collect import collect as collect_runs

    try:
        done = collect_runs(source, dest, with_weights=with_weights)
    except QagrelError as err:
        raise fail(str(err)) from None
    warn(done.warnings)
    said = [f"collected {len(done.added)} finished run(s) into {dest}",
            f"{len(done.kept)} already finished there (kept)", f"{len(done.unfinished)} not finished in {source}"]
    said += [f"{len(done.sweep_files)} sweep file(s) copied"] if done.sweep_files else []
    console.print("; ".join(said), highlight=False, soft_wrap=True)
    if done.running:
        raise fail(f"not replaced, being trained in {dest}: " + ", ".join(done.running)
                   + "; stop that process and collect again", 1)


class EvalEpoch(str, Enum):  # the choices of core.weights.WeightsAt, without importing torch for --help
    best = "best"
    last = "last"


class EvalSplit(str, Enum):  # core.evaluate.Split's choices
    test = "test"
    val = "val"


@app.command("eval", cls=QagrelCommand)
def evaluate(
    path: Annotated[Path, typer.Argument(metavar="RUN_OR_FOLDER", help="A run folder, or a folder of runs (each "
                                         "evaluated; per-class accuracy and the confusion matrix pooled).",
                                         show_default=False)],
    epoch: Annotated[EvalEpoch, typer.Option(help="The weights of the best-validation epoch or of the last.")
                     ] = EvalEpoch.best,
    split: Annotated[EvalSplit, typer.Option(help="test, or the run's own held-out validation images (drawn "
                                             "from its seed, as in training).")] = EvalSplit.test,
    confusion: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Also draw the confusion matrix to this .png, .pdf or .svg file.",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
) -> None:
    """Evaluate a run's saved weights again: accuracy, per-class accuracy, and the confusion matrix."""
    from qagrel_cli.core.evaluate import Split, evaluate_run
    from qagrel_cli.core.run_folder import find_run_dirs
    from qagrel_cli.core.weights import WeightsAt
    from qagrel_cli.reports.evaluation import check_confusion_file, draw_confusion, print_evaluations

    try:
        if confusion is not None:
            check_confusion_file(confusion)
        run_dirs = find_run_dirs(path)
        if not run_dirs:
            raise QagrelError(f"{path}: no run folders there")
        evaluations = [evaluate_run(d, WeightsAt(epoch.value), Split(split.value), data_dir=data_dir,
                                    download=download, device=device) for d in run_dirs]
        drawn = draw_confusion(evaluations, confusion) if confusion is not None else None
    except QagrelError as err:
        raise fail(str(err)) from None
    print_evaluations(evaluations, report_console())
    if drawn is not None:
        console.print(f"wrote {drawn}", highlight=False, soft_wrap=True)


@app.command(cls=QagrelCommand)
def export(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A folder of runs (or one run folder).",
                                              show_default=False)],
    tensorboard: Annotated[Path, typer.Option(
        "--tensorboard", metavar="OUT", help="Write one TensorBoard run per run folder here: every logged "
        "metric per epoch, the config as hparams with the final accuracy (pip install -e '.\\[tensorboard]').",
        show_default=False)],
) -> None:
    """Export runs for other tools: to TensorBoard (`tensorboard --logdir OUT`)."""
    from qagrel_cli.reports.export import export_tensorboard

    try:
        done = export_tensorboard(directory, tensorboard)
    except QagrelError as err:
        raise fail(str(err)) from None
    warn(done.warnings)
    unfinished = f" ({done.unfinished} unfinished: curves only, no hparams)" if done.unfinished else ""
    console.print(f"wrote {len(done.runs)} TensorBoard run(s) into {tensorboard}{unfinished}", highlight=False,
                  soft_wrap=True)


def write_report(text: str, out: Path | None) -> None:
    """A report to the file `out` (written whole or not at all, and said in one line), else to standard output."""
    from qagrel_cli.core.run_folder import atomic_write_text

    if out is None:
        sys.stdout.write(text)
        return
    try:
        atomic_write_text(out, text)
    except QagrelError as err:
        raise fail(str(err)) from None
    console.print(f"wrote {out}", highlight=False)


ReportOutOption = Annotated[Optional[Path], typer.Option(
    help="Write to this file instead of the terminal.", rich_help_panel=TABLE_PANEL, show_default=False)]


@app.command(cls=QagrelCommand)
def table(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="A folder of runs, e.g. results/table1 "
                                              "or results/.", show_default=False)],
    fmt: Annotated[TableFormat, typer.Option("--format", help="rich (terminal), markdown, latex (booktabs) or csv.",
                                             rich_help_panel=TABLE_PANEL)] = TableFormat.rich,
    epochs: Annotated[EpochsAt, typer.Option(help="Epochs column: the epoch the stopping criterion was met (stop, "
                                             "the paper's) or of the best validation accuracy (best).",
                                             rich_help_panel=TABLE_PANEL)] = EpochsAt.stop,
    accuracy: Annotated[AccuracyAt, typer.Option(help="Accuracy column: test accuracy at the best-validation epoch "
                                                 "(best, the paper's), at the last epoch (final), or the highest "
                                                 "of any epoch up to the stop (peak: the test set used as "
                                                 "validation set; read from the logs).",
                                                 rich_help_panel=TABLE_PANEL)] = AccuracyAt.best,
    converged_above: Annotated[float, typer.Option(help="A seed converged when it did not diverge and its best "
                                                   "validation accuracy is at least this multiple of chance.",
                                                   rich_help_panel=TABLE_PANEL)] = 2.0,
    compare: Annotated[Optional[Compare], typer.Option(help="Show the paper's Table 1 beside ours, the difference "
                                                       "in paper SDs and the Q-AGREL/BP epoch ratios, for rows "
                                                       "whose runs follow the paper's protocol.",
                                                       rich_help_panel=TABLE_PANEL, show_default=False)] = None,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Read every run as if early stopping had waited "
                                                    "this many epochs: where it would have stopped, replayed from "
                                                    "its log. Runs must have trained with at least this patience.",
                                                    rich_help_panel=TABLE_PANEL, show_default=False)] = None,
    max_epochs: Annotated[Optional[int], typer.Option(min=1, help="Read every run as if it had been stopped after "
                                                      "at most this many epochs, replayed from its log, to set "
                                                      "long runs beside short ones. Runs must have trained with "
                                                      "at least this cap.", rich_help_panel=TABLE_PANEL,
                                                      show_default=False)] = None,
    out: ReportOutOption = None,
) -> None:
    """Table 1 from finished runs: Epochs and Accuracy mean (SD) over seeds per row, in the paper's layout."""
    from qagrel_cli.reports.table import build_table
    from qagrel_cli.reports.table_formats import render, rich_view
    from qagrel_cli.sweeps.results import read_results

    try:
        results = read_results(directory)
        warn(results.warnings())
        result = build_table(results.runs, source=str(directory), epochs_at=epochs, accuracy_at=accuracy,
                             converged_above=converged_above, compare=compare is not None,
                             patience=patience, max_epochs=max_epochs)
    except QagrelError as err:
        raise fail(str(err)) from None
    if out is None and fmt == TableFormat.rich:
        view_console = report_console()
        view_console.print(rich_view(result, view_console))
    else:
        write_report(render(result, fmt), out)


@app.command(cls=QagrelCommand)
def milestones(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="A folder of runs with an epoch budget, "
                                              "e.g. results/protocol.", show_default=False)],
    fmt: Annotated[MilestoneFormat, typer.Option("--format", help="rich (terminal), markdown or csv.",
                                                 rich_help_panel=TABLE_PANEL)] = MilestoneFormat.rich,
    at_epochs: Annotated[Optional[str], typer.Option(
        "--at-epochs", help="Also the test accuracy at these epochs, e.g. 10,30.", rich_help_panel=TABLE_PANEL,
        show_default=False)] = None,
    out: ReportOutOption = None,
) -> None:
    """How far short runs got along the paper's path, per Table 1 row and protocol reading.

    The test accuracy at the paper's implied best epoch, and the epochs to 50% and 90% of its accuracy."""
    from qagrel_cli.reports.milestones import milestone_rows, render
    from qagrel_cli.sweeps.results import read_results

    try:
        epochs = parse_epochs(at_epochs) if at_epochs is not None else []
        results = read_results(directory)
        rows = milestone_rows(results, epochs)
        warn(results.warnings())
        if not rows:
            raise QagrelError(f"{directory}: no finished runs with a readable log yet")
    except QagrelError as err:
        raise fail(str(err)) from None
    write_report(render(rows, fmt, source=str(directory)), out)


@app.command(cls=QagrelCommand)
def report(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A folder of runs, e.g. results/feedback.",
                                              show_default=False)],
    compare: Annotated[Optional[Compare], typer.Option(help="Set the paper's Table 1 beside ours (as `qagrel "
                                                       "table --compare paper`).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="The Markdown file; Figure 3 goes into <its name>_figures/ beside "
                                      "it.")] = Path("report.md"),
) -> None:
    """One Markdown report of a folder of runs: status, Table 1, epoch ratios, milestones, Figure 3, provenance."""
    from qagrel_cli.reports.report import build_report

    try:
        text = build_report(directory, out, compare=compare is not None)
    except QagrelError as err:
        raise fail(str(err)) from None
    write_report(text, out)


# --- plot

FIGURE3_PANEL = "Figure 3 (a folder of runs)"


@app.command(cls=QagrelCommand)
def plot(
    path: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="A folder of runs (e.g. results/table1): "
                                         "Figure 3 over them (one rule's runs alone: their curves). One run "
                                         "folder: its learning curves.",
                                         show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for the figure, or a file name ending in .png, .pdf or .svg. Default: _figures/ in the "
        "folder plotted (beside a single run folder). "
        "The plotted numbers go to a CSV of the same name beside it.", show_default=False)] = None,
    fmt: Annotated[Optional[PlotFormat], typer.Option(
        "--format", help="Image format. Default: the extension of --out, else png.", show_default=False)] = None,
    angles: Annotated[bool, typer.Option(
        "--angles", help="Instead: per layer, the angle between the weights W and the feedback weights W'^T over "
        "epochs (0° = reciprocal, 90° = unrelated), mean ± 2 SD over seeds, for the runs with --feedback random "
        "or fixed (default name <folder>_angles.png). --after-stop and the filters apply; --metric does not.",
        show_default=False)] = False,
    angles_to_bp: Annotated[bool, typer.Option(
        "--angles-to-bp", help="Instead: per layer, the angle between each rule's weight change and Error-BP's "
        "gradient over epochs, on a fixed probe batch (0° = follows backprop), mean ± 2 SD over seeds, one line "
        "style per rule (default name <folder>_angles_to_bp.png).", show_default=False)] = False,
    metric: Annotated[Metric, typer.Option(
        help="train: Q-AGREL reward probability and BP 1 - training error (the paper's Figure 3); "
        "val or test: that accuracy.", rich_help_panel=FIGURE3_PANEL)] = Metric.train,
    after_stop: Annotated[AfterStop, typer.Option(
        help="Seeds that stopped early: hold their last value (every epoch averages all seeds) or drop out "
        "of the mean. The caption says which.", rich_help_panel=FIGURE3_PANEL)] = AfterStop.hold,
    dataset: Annotated[Optional[list[Dataset]], typer.Option(
        help="Only this dataset (repeatable). Default: all.", rich_help_panel=FIGURE3_PANEL,
        show_default=False)] = None,
    arch: Annotated[Optional[list[Arch]], typer.Option(
        help="Only this architecture (repeatable). Default: all.", rich_help_panel=FIGURE3_PANEL,
        show_default=False)] = None,
    fc: Annotated[Optional[list[str]], typer.Option(
        help="Only these hidden sizes, e.g. 500 or 1000,500, or Table 1's 28800-7200-500 (repeatable). "
        "Default: all.", rich_help_panel=FIGURE3_PANEL, show_default=False)] = None,
) -> None:
    """Plot Figure 3 (learning curves, mean ± 2 SD over seeds), one run's curves, or feedback angles.

    Figure 3: Q-AGREL vs BP, one panel per dataset and network. --angles: how far the feedback weights are
    from reciprocal. --angles-to-bp: how far each rule's updates are from backprop's."""
    from qagrel_cli.reports.plot import BP_ANGLES, FEEDBACK_ANGLES
    from qagrel_cli.reports.plot import plot as make_plot

    try:
        if angles and angles_to_bp:
            raise QagrelError("give --angles or --angles-to-bp, not both")
        result = make_plot(path, out, angles=angles or angles_to_bp, metric=metric, after_stop=after_stop, fmt=fmt,
                           datasets=dataset or (), archs=arch or (), fcs=fc or (),
                           angle_kind=BP_ANGLES if angles_to_bp else FEEDBACK_ANGLES)
    except QagrelError as err:
        raise fail(str(err)) from None
    warn(result.warnings)
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    Console().print(f"wrote {result.figure}\nwrote {result.csv}", highlight=False, soft_wrap=True)

