"""`qagrel plot`: the paper's Figure 3 over a folder of runs, or the learning curves of one run;
`--angles`: how far the feedback weights W' are from W^T over epochs (docs/feedback.md).

Figure 3 (section 4 of the paper) shows, for CIFAR10 and CIFAR100, the training reward
probability of Q-AGREL networks and 1 - training error of error-backpropagation networks
over epochs, as mean +/- 2 SD over 10 seeds. Both are the log's `train_reward` column.

Seeds stop at different epochs (early stopping). By default a stopped seed holds its last
value, so every point of a curve averages the same networks; with `after_stop="drop"` it
leaves the mean instead and n shrinks. Every figure's caption says which.

The angle figure shows, per layer, the angle between W and W'^T that runs with random or fixed
feedback log every epoch (`angle_<layer>`, rules.alignment_angles), aggregated over seeds alike.
It also draws diverged runs, up to the epoch before they diverged (the angles of finite weights:
how far a network aligned before it blew up is part of the answer), and such a seed leaves the
mean there instead of holding its last value.

Each figure gets a CSV beside it (same name, `.csv`) holding exactly the plotted numbers.
Only unfinished and diverged runs are left out of Figure 3 (unfinished ones of the angle figure);
the caption counts them.

Matplotlib is used through `Figure` objects, never pyplot: pyplot is the only part that picks
a GUI backend and keeps global figures, so without it plotting is headless (Agg renders the
PNG) and leaves no state behind in a caller's process.
"""

from __future__ import annotations

import functools
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from qagrel_cli.core import run_folder
from qagrel_cli.core.run_folder import ANGLE_PREFIX, BP_ANGLE_PREFIX
from qagrel_cli.core.config import (CONFIG_FIELDS, DATASET_NAMES, RULE_NAMES, Arch, Dataset, QagrelError,
                                    Padding, Rule, parse_fc, reads, rule_info)
from qagrel_cli.core.recipes import LABELLED_FIELDS, follows_brainprop, recipe_label
from qagrel_cli.reports.rows import readings_order, setting_order, settings
from qagrel_cli.sweeps.results import RunRecord, read_results

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn (it is slow to import)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class Metric(str, Enum):
    train = "train"  # Q-AGREL reward probability / BP 1 - training error: the paper's Figure 3
    val = "val"
    test = "test"


class AfterStop(str, Enum):
    hold = "hold"  # a seed that stopped early keeps its last value
    drop = "drop"  # ... or leaves the mean


class PlotFormat(str, Enum):
    png = "png"
    pdf = "pdf"
    svg = "svg"


METRIC_COLUMN = {Metric.train: "train_reward", Metric.val: "val_acc", Metric.test: "test_acc"}
METRIC_LABEL = {Metric.train: "P(reward) or 1 − error (train)", Metric.val: "validation accuracy",
                Metric.test: "test accuracy"}
FIGURES_FOLDER = "_figures"  # beside the runs plotted; '_' keeps it out of pd.read_parquet(<results folder>)
# One colour per reading (variant) and one line style per rule (its record's): a reading that both rules
# ran (e.g. one recipe) has one colour, and a rule keeps its style however many readings a panel holds.
_VARIANT_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#bcbd22", "#7f7f7f")
# Config fields that name the panel or the rule, or only tell seeds apart. Any other field that
# differs between runs of one rule in one panel (lr, feedback, ...) gives that rule one curve per value:
# pooling such runs as if they were seeds would report a spread that no single setting has. The padding
# names the panel because it sets the hidden units that title it.
_NOT_VARIANT = frozenset({"dataset", "arch", "fc", "padding", "rule", "seed", "device"})
# Settings a recipe label names (recipes.recipe_label): a curve of a recipe's run is labelled by it.
_RECIPE_NAMED = frozenset({*LABELLED_FIELDS, "init_range"})
CSV_COLUMNS = ("panel", "dataset", "arch", "hidden_units", "rule", "variant", "epoch", "n", "mean", "sd",
               "lower", "upper")
# The angle figures: one curve per (feedback mode, layer), or per (rule, layer) for the angles to Error-BP's
# gradient (whose CSV has `rule` for `feedback`). The variant column names any other setting (rule included
# in the first) that differs between the runs of a panel, for the same reason as Figure 3's; empty in the
# feedback study, whose runs differ only in feedback and seed.
ANGLE_CSV_COLUMNS = ("panel", "dataset", "arch", "hidden_units", "feedback", "variant", "layer", "epoch", "n", "mean",
                     "sd", "lower", "upper")
# The log's per-layer angle columns: angle_0 (input side) to angle_<L-1> (output), bp_angle_ likewise.


@dataclass(frozen=True)
class AngleKind:
    """One of the two angle figures: which log columns it reads, what its curves are grouped by, its words."""

    prefix: str  # the log's per-layer columns: <prefix><layer>
    group_by: str  # the setting that gets one line style per value
    name: str  # the figure's default file-name part
    title: str
    ylabel: str
    what: str  # the caption's first sentences
    missing: str  # the error when no run logged these angles


FEEDBACK_ANGLES = AngleKind(
    ANGLE_PREFIX, "feedback", "angles", "Feedback weights W' vs W^T (alignment angle)",
    r"angle between $W$ and $W'^T$ (degrees)",
    "Angle between each layer's feedforward weights W and the transpose of its feedback weights W' (the flattened "
    "tensors, W' stored in W's index order): 0° = W' equals W^T up to a positive scale (the paper's strict "
    "reciprocity); 90° (dashed) = unrelated, as two independent random draws are. Layer 0 is the input side.",
    "angles between W and W'^T (angle_<layer> columns): only runs with --feedback random or fixed (or rule fa) do")
BP_ANGLES = AngleKind(
    BP_ANGLE_PREFIX, "rule", "angles_to_bp", "Each rule's weight change vs Error-BP's gradient",
    "angle to Error-BP's negative gradient (degrees)",
    "Per layer, the angle between the rule's weight change and Error-BP's negative gradient for the same weights, "
    "measured each epoch on a fixed probe batch of 100 validation images without dropout (Q-AGREL with its own "
    "action draws; before any optimizer): 0° = the rule follows backprop's gradient; 90° (dashed) = unrelated. "
    "Layer 0 is the input side.",
    "update angles to Error-BP's gradient (bp_angle_<layer> columns): runs trained before they were logged "
    "have none")
# Layer colours (the angle figure) and one line style per curve group (feedback mode, or rule and reading);
# "--" is kept for the 90° reference. Six styles: the rules study draws five groups in one panel.
_LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_CURVE_STYLES = ("-", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))


@dataclass(frozen=True)
class Plotted:
    """What `plot` wrote, what it left out (one line each, e.g. '2 unfinished runs not shown'), and one
    warning per damaged file it skipped."""

    figure: Path
    csv: Path
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Run:
    """A finished run to plot: its config (as plain values) and epoch log."""

    record: RunRecord
    log: pd.DataFrame

    @functools.cached_property  # read for every field of every run when curves are grouped
    def config(self) -> dict[str, Any]:
        """The run's settings as plain values (init_range None where it follows from init and arch)."""
        return settings(self.record.config)

    @property
    def fc(self) -> tuple[int, ...]:
        return self.record.config.fc

    @property
    def hidden_units(self) -> str:
        """Table 1's 'hidden units', e.g. 28800-7200-500."""
        return self.record.hidden_units

    @property
    def diverged(self) -> bool:
        return bool(self.record.summary and self.record.summary.get("diverged"))

    @property
    def angle_layers(self) -> list[int]:
        """The layers whose angle between W and W'^T the log holds (none with symmetric feedback)."""
        return self.layers_with(ANGLE_PREFIX)

    def layers_with(self, prefix: str) -> list[int]:
        """The layers whose `<prefix><layer>` angle column the log holds."""
        return sorted(int(c[len(prefix):]) for c in self.log.columns
                      if c.startswith(prefix) and c[len(prefix):].isdigit())

    def curve(self, column: str) -> pd.Series:
        """`column` indexed by epoch (a resumed run may log an epoch twice: its last value counts).

        A diverged run's angles end before its stop epoch: weights that stopped being finite have no
        angle (runs logged before rules.alignment_angles wrote NaN there hold 0)."""
        log = run_folder.one_row_per_epoch(self.log)
        if self.diverged and "angle_" in column:  # either angle: of finite weights only
            log = log[log["epoch"] < int(self.record.summary["stop_epoch"])]
        return pd.Series(log[column].to_numpy(dtype=float), index=log["epoch"].astype(int).to_numpy())


def plot(path: Path, out: Path | None = None, *, angles: bool = False, metric: Metric = Metric.train,
         after_stop: AfterStop = AfterStop.hold, fmt: PlotFormat | None = None,
         datasets: Sequence[Dataset] = (), archs: Sequence[Arch] = (), fcs: Sequence[str] = (),
         angle_kind: AngleKind = FEEDBACK_ANGLES) -> Plotted:
    """Plot one run folder's learning curves, or Figure 3 over every run below `path` (Q-AGREL beside Error-BP
    when both are there; one rule's runs alone get their curves, mean +/- 2 SD over seeds); with `angles`, the
    angle between W and W'^T per layer over epochs instead (of that run, or of the runs below `path`), or with
    `angle_kind=BP_ANGLES` the angle of each rule's weight change to Error-BP's gradient.

    `out` is a folder or a file name ending in .png, .pdf or .svg; by default the figure goes beside
    the runs, into `_figures/` of the folder plotted (of the folder holding it, for one run folder),
    named after that folder (`<folder>_figure3.png`, `<folder>_angles.png`) or the run id
    (`<run id>.png`, `<run id>_angles.png`). `metric` applies to Figure 3 only; `after_stop` and the
    filters (`datasets`, `archs`, `fcs`: hidden sizes like '1000,500' or Table 1's '28800-7200-1000-500')
    to Figure 3 and the angle figure.
    """
    path = Path(path)
    if not path.exists():
        raise QagrelError(f"{path} does not exist")
    single = run_folder.is_run_dir(path)
    if single and not angles:
        config = run_folder.read_config(path)
        out_file, fmt = _output_file(out, path.resolve().parent / FIGURES_FOLDER, config.run_id, fmt)
        return plot_run(path, out_file, fmt)
    if single:
        runs, notes, warnings = [_one_run(path)], [], []
    else:
        runs, notes, warnings = _finished_runs(path, with_diverged=angles,
                                               needs=("epoch",) if angles else ("epoch", METRIC_COLUMN[metric]),
                                               wanted=_selection(datasets, archs, fcs))
    filters = [a.value for a in archs] + [d.value for d in datasets] + [f.replace(",", "-") for f in fcs]
    drop = ["drop"] if after_stop == AfterStop.drop else []
    if angles:
        kind = angle_kind
        with_angles = [r for r in runs if r.layers_with(kind.prefix)]
        if not with_angles:
            raise QagrelError(f"no run in {path} logged {kind.missing}")
        if without := len(runs) - len(with_angles):
            notes = [*notes, f"{_runs(without)} with symmetric feedback (0° throughout) not shown." if kind is
                     FEEDBACK_ANGLES else f"{_runs(without)} without these angles in their logs not shown."]
        unmeasured = [r for r in with_angles if r.curve(f"{kind.prefix}{r.layers_with(kind.prefix)[0]}").empty]
        if unmeasured:  # diverged in epoch 1: no epoch with finite weights
            notes = [*notes, f"{_runs(len(unmeasured))} that diverged in the first epoch not shown (no finite "
                             "weights to measure)."]
            with_angles = [r for r in with_angles if r not in unmeasured]
            if not with_angles:
                raise QagrelError(f"every run in {path} that logged angles diverged in its first epoch: no angle "
                                  "of finite weights to plot")
        if single:
            stem = f"{with_angles[0].record.config.run_id}_{kind.name}"
            folder = path.resolve().parent / FIGURES_FOLDER
        else:
            stem, folder = "_".join([path.resolve().name, kind.name, *filters, *drop]), path / FIGURES_FOLDER
        out_file, fmt = _output_file(out, folder, stem, fmt)
        plotted = plot_angles(with_angles, out_file, fmt, after_stop=after_stop, notes=notes, kind=kind)
        return Plotted(plotted.figure, plotted.csv, [*plotted.notes, *warnings])
    name_parts = [path.resolve().name, "figure3"]
    name_parts += [] if metric == Metric.train else [metric.value]
    out_file, fmt = _output_file(out, path / FIGURES_FOLDER, "_".join(name_parts + filters + drop), fmt)
    plotted = plot_figure3(runs, out_file, fmt, metric=metric, after_stop=after_stop, notes=notes)
    return Plotted(plotted.figure, plotted.csv, plotted.notes, warnings)


def aggregate(curves: Sequence[pd.Series], after_stop: AfterStop = AfterStop.hold, *,
              never_held: Sequence[int] = ()) -> pd.DataFrame:
    """Per epoch: n, mean, sample SD (ddof=1), and the band mean +/- 2 SD over `curves` (Series indexed by epoch).

    hold: a curve that ends early keeps its last value to the last epoch of the longest curve, so n is
    constant; drop: it leaves the mean after its last epoch. The curves numbered in `never_held` (diverged
    runs) leave it in either case. sd, lower and upper are NaN where n < 2.
    """
    wide = pd.concat(list(curves), axis=1, keys=range(len(curves)))
    wide = wide.reindex(range(1, int(wide.index.max()) + 1))
    if after_stop == AfterStop.hold:
        held = [k for k in range(len(curves)) if k not in set(never_held)]
        wide[held] = wide[held].ffill()
    mean, sd = wide.mean(axis=1), wide.std(axis=1, ddof=1)
    return pd.DataFrame({"epoch": wide.index, "n": wide.count(axis=1).to_numpy(), "mean": mean.to_numpy(),
                         "sd": sd.to_numpy(), "lower": (mean - 2 * sd).to_numpy(), "upper": (mean + 2 * sd).to_numpy()})


def plot_figure3(runs: Sequence[_Run], out_file: Path, fmt: PlotFormat, *, metric: Metric,
                 after_stop: AfterStop, notes: Sequence[str] = ()) -> Plotted:
    """Draw one panel per dataset (columns) and architecture/hidden-units group (rows); write figure and CSV."""
    fig, panels, width = _panel_grid(runs)
    # One label and one colour per rule and reading across all panels, so a colour means the same everywhere.
    # A reading is the values of the settings that differ between one rule's runs in a panel, for every rule
    # alike (alpha differs between rules by Table 1, not between readings), so one reading of both rules is
    # one label and one colour; a rule is labelled only by the settings it reads.
    differing = sorted({f for _, group in panels for rule_runs in _by_rule(group).values() for f in _varying(rule_runs)},
                       key=CONFIG_FIELDS.index)
    fields = {rule: [f for f in differing if reads(rule, f)] for rule in _by_rule(runs)}
    # The labels as each panel draws them (a recipe's label names its padding, which splits panels, not curves).
    labels = list(dict.fromkeys(variant for _, group in panels for rule, rule_runs in _by_rule(group).items()
                                for variant in _variants(rule_runs, fields[rule])))
    colors = {variant: _VARIANT_COLORS[k % len(_VARIANT_COLORS)] for k, variant in enumerate(labels)}
    tables = []
    for ax, panel_runs in panels:
        tables.append(_draw_panel(ax, panel_runs, METRIC_COLUMN[metric], after_stop, fields, colors))
        ax.set_ylabel(METRIC_LABEL[metric])
    what = {Metric.train: "Q-AGREL: probability of reward on the training trials (exploration included); "
                          "Error-BP: 1 − training error.",
            Metric.val: "Validation accuracy.", Metric.test: "Test accuracy."}[metric]
    rules = sorted({str(r.config["rule"]) for r in runs}, key=lambda r: setting_order("rule", r))
    title = figure3_title(rules, sorted({f for _, group in panels for f in _varying(group)}))
    caption = " ".join([what, _BAND_SENTENCE, "Bands are drawn within [0, 1] (the CSV holds them whole).",
                        _stop_sentence(after_stop), *notes])
    fig.suptitle(title, fontsize="large")
    fig.supxlabel(textwrap.fill(caption, width=int(16 * width)), fontsize="small")
    table = pd.concat(tables, ignore_index=True)[list(CSV_COLUMNS)]
    return _save(fig, table, out_file, fmt, list(notes))


def figure3_title(rules: Sequence[str], varying: Sequence[str]) -> str:
    """The title of a Figure 3 over runs of `rules` (in table order); `varying`: the settings that differ
    between the runs of a panel, named when there is one rule (e.g. the feedback study)."""
    if len(rules) > 1:
        if set(rules) == {"qagrel", "bp"}:  # the paper's figure
            return "Q-AGREL (trial and error) vs error-backpropagation"
        names = [RULE_NAMES.get(r, r) for r in rules]
        return f"{', '.join(names[:-1])} and {names[-1]}"
    by = f" by {', '.join(varying)}" if varying else ": learning curves"
    return f"{RULE_NAMES.get(rules[0], rules[0])}{by}"


def plot_angles(runs: Sequence[_Run], out_file: Path, fmt: PlotFormat, *, after_stop: AfterStop,
                notes: Sequence[str] = (), kind: AngleKind = FEEDBACK_ANGLES) -> Plotted:
    """Per layer, the angles of `kind` over epochs (by default between W and W'^T): one panel per dataset and
    architecture/hidden-units group, one curve per layer and feedback mode (or rule) (mean +/- 2 SD over
    seeds); write figure and CSV.

    `runs` must all have the angle columns of `kind`.
    """
    fig, panels, width = _panel_grid(runs)
    tables = [_draw_angle_panel(ax, panel_runs, after_stop, kind) for ax, panel_runs in panels]
    what = kind.what
    diverged = sum(1 for r in runs if r.diverged)
    diverged_sentence = ([f"Diverged runs ({diverged}) are drawn up to the epoch before they diverged, then "
                          "leave the mean (the CSV's n counts the seeds in it)."] if diverged else [])
    caption = " ".join([what, _BAND_SENTENCE, _stop_sentence(after_stop), *diverged_sentence, *notes])
    fig.suptitle(kind.title, fontsize="large")
    fig.supxlabel(textwrap.fill(caption, width=int(16 * width)), fontsize="small")
    columns = [kind.group_by if c == "feedback" else c for c in ANGLE_CSV_COLUMNS]
    table = pd.concat(tables, ignore_index=True)[columns]
    return _save(fig, table, out_file, fmt, list(notes))


def plot_run(run_dir: Path, out_file: Path, fmt: PlotFormat) -> Plotted:
    """One run's train reward rate (or BP train accuracy), validation and test accuracy per epoch, best-val marked."""
    run = _one_run(run_dir)
    record, summary, config = run.record, run.record.summary, run.config
    curves = {c: run.curve(c) for c in ("train_reward", "val_acc", "test_acc")}
    table = pd.DataFrame({"epoch": curves["val_acc"].index, **{c: s.to_numpy() for c, s in curves.items()}})
    # The epoch the model is kept from (its test accuracy is Table 1's): training's when finished, else
    # the first best validation accuracy so far.
    if summary is not None and summary.get("best_epoch") in curves["val_acc"].index:
        best = int(summary["best_epoch"])
    else:
        best = int(curves["val_acc"].idxmax()) if curves["val_acc"].notna().any() else None
    table["best_val"] = table["epoch"] == best

    fig = _figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    train_label = "train reward rate" if config.get("rule") == Rule.qagrel.value else "train accuracy (1 − error)"
    for column, label in (("train_reward", train_label), ("val_acc", "validation accuracy"),
                          ("test_acc", "test accuracy")):
        ax.plot(table["epoch"], table[column], marker="." if len(table) < 30 else None, label=label)
    if best is not None:
        best_val = float(curves["val_acc"][best])
        ax.axvline(best, color="grey", linestyle=":", label=f"best validation {best_val:.4f} (epoch {best})")
        ax.plot([best], [best_val], marker="o", markersize=8, markerfacecolor="none", color="black")
    _style_axes(ax)
    ax.set_ylabel("fraction")
    ax.set_title(record.config.run_id, fontsize="medium")
    last = int(table["epoch"].iloc[-1])
    status = ("still running" if summary is None else
              "diverged" if summary.get("diverged") else "finished")
    fig.supxlabel(f"{RULE_NAMES.get(config.get('rule'), config.get('rule'))}, {status} after epoch {last}. "
                  "Circle: best validation accuracy (the epoch the model is kept from).", fontsize="small")
    return _save(fig, table, out_file, fmt, [])


def _one_run(run_dir: Path) -> _Run:
    """One run folder, finished or not (its curves so far), as a _Run."""
    record = RunRecord(run_dir, run_folder.read_config(run_dir), run_folder.read_summary(run_dir))
    run = _Run(record, run_folder.read_log(run_dir))
    if run.log.empty:
        raise QagrelError(f"{run_dir} has no finished epoch yet; nothing to plot")
    return run


def _finished_runs(root: Path, *, with_diverged: bool = False, needs: Sequence[str] = ("epoch",),
                   wanted: Callable[[RunRecord], bool] | None = None) -> tuple[list[_Run], list[str], list[str]]:
    """The finished runs below `root` that are `wanted` (all by default; diverged ones only `with_diverged`), a
    caption note for each kind of wanted run left out, and a warning naming each damaged file."""
    results = read_results(root)
    if not results.runs and not results.damaged:
        raise QagrelError(f"no runs in {root} (no run folder with a _config.yaml at or below it)")
    records = [r for r in results.runs if wanted is None or wanted(r)]
    if wanted is not None and not any(r.summary is not None for r in records):
        raise QagrelError(f"no finished runs in {root} match the chosen datasets, architectures and fc sizes")
    runs, left_out = [], defaultdict(int)
    lacking: list[str] = []  # logs read here that could not be plotted, named as read_results names the rest
    for record in records:
        if record.summary is None:
            left_out["unfinished"] += 1  # its curve would end at wherever training happens to be now
        elif record.summary.get("diverged") and not with_diverged:
            left_out["diverged"] += 1  # non-finite values would poison the mean
        elif not record.log_readable:
            left_out["damaged"] += 1
        else:
            try:
                log = run_folder.read_log(record.path, needs=needs)
            except run_folder.DamagedFile as err:  # lacks the plotted column, or damaged since read_results
                left_out["damaged"] += 1
                lacking.append(f"unreadable log (its run is not plotted) {err.path}: {err.reason}")
                continue
            if log.empty:
                left_out["empty"] += 1
            else:
                runs.append(_Run(record, log))
    left_out["damaged"] += sum(1 for d in results.damaged if d.file.name != run_folder.LOG_FILE)
    notes = [f"{_runs(n, f'{kind} run')} not shown." for kind, n in left_out.items() if n]
    if not runs:
        raise QagrelError(f"no finished runs in {root} ({', '.join(f'{n} {k}' for k, n in left_out.items() if n)})")
    return runs, notes, results.warnings(log_note="its run is not plotted") + lacking


def _selection(datasets: Sequence[Dataset], archs: Sequence[Arch], fcs: Sequence[str]
               ) -> Callable[[RunRecord], bool] | None:
    """Whether a run matches every given filter; None when no filter is given. Applied before runs are sorted
    into shown and left out, so the caption counts only the runs of the figure's selection."""
    if not (datasets or archs or fcs):
        return None
    wanted_fc = [(parse_fc(f), f.replace(",", "-")) for f in fcs]

    def wanted(record: RunRecord) -> bool:
        config = record.config
        return ((not datasets or config.dataset in datasets) and (not archs or config.arch in archs)
                and (not fcs or any(config.fc == sizes or record.hidden_units == text for sizes, text in wanted_fc)))
    return wanted


def _draw_panel(ax: Axes, runs: Sequence[_Run], column: str, after_stop: AfterStop, fields: dict[str, list[str]],
                colors: dict[str, str]) -> pd.DataFrame:
    """Mean line and +/- 2 SD band per rule (its line style) and variant (its values of `fields[rule]`,
    coloured by `colors`) on `ax`; returns the plotted numbers."""
    panel = _panel_columns(ax, runs[0])
    tables = []
    for rule, rule_runs in _by_rule(runs).items():
        for variant, group in _variants(rule_runs, fields[rule]).items():
            stats = aggregate([r.curve(column) for r in group], after_stop)
            color = colors[variant]
            label = f"{RULE_NAMES.get(rule, rule)}{f' ({variant})' if variant else ''}, n={len(group)}"
            ax.plot(stats["epoch"], stats["mean"], color=color, linestyle=rule_info(rule).line, label=label)
            # Drawn within [0, 1], where every metric of this figure lives; the CSV keeps the band as computed.
            ax.fill_between(stats["epoch"], stats["lower"].clip(0, 1), stats["upper"].clip(0, 1), color=color,
                            alpha=0.25, linewidth=0)
            tables.append(stats.assign(**panel, rule=rule, variant=variant))
    _style_axes(ax)
    return pd.concat(tables, ignore_index=True)


def _draw_angle_panel(ax: Axes, runs: Sequence[_Run], after_stop: AfterStop,
                      kind: AngleKind = FEEDBACK_ANGLES) -> pd.DataFrame:
    """Mean line and +/- 2 SD band per layer and feedback mode (or rule: `kind.group_by`) and variant on `ax`,
    a dashed line at 90°; returns the plotted numbers."""
    panel = _panel_columns(ax, runs[0])
    ax.axhline(90, color="grey", linestyle="--", linewidth=1)
    tables = []
    for curves, (value, variant, members) in enumerate(_angle_curves(runs, kind.group_by)):
        style = _CURVE_STYLES[curves % len(_CURVE_STYLES)]
        shown = RULE_NAMES.get(value, value) if kind.group_by == "rule" else value
        for layer in members[0].layers_with(kind.prefix):  # one panel, one architecture: the same layers
            stats = aggregate([r.curve(f"{kind.prefix}{layer}") for r in members], after_stop,
                              never_held=[k for k, r in enumerate(members) if r.diverged])
            color = _LAYER_COLORS[layer % len(_LAYER_COLORS)]
            label = f"layer {layer}, {shown}{f' ({variant})' if variant else ''}, n={len(members)}"
            ax.plot(stats["epoch"], stats["mean"], color=color, linestyle=style, label=label)
            ax.fill_between(stats["epoch"], stats["lower"], stats["upper"], color=color, alpha=0.2, linewidth=0)
            tables.append(stats.assign(**panel, **{kind.group_by: value}, variant=variant, layer=layer))
    # From 0 (reciprocal) to past the 90° line, and past any band above it (anti-aligned weights reach 180°).
    ax.set_ylim(0, max([100.0, *(float(t["upper"].max()) + 5 for t in tables if t["upper"].notna().any())]))
    ax.set_ylabel(kind.ylabel)
    _style_axes(ax)
    return pd.concat(tables, ignore_index=True)


def _angle_curves(runs: Sequence[_Run], group_by: str) -> list[tuple[str, str, list[_Run]]]:
    """One angle panel's curves: (value of `group_by`, variant label, runs) for each group of seeds.

    By rule, as in Figure 3, a rule's variants are named by the settings that differ between its own runs
    and that it reads (FA has no feedback mode; alpha differs between rules by Table 1). By feedback mode,
    the variants are the settings, the rule among them, that differ anywhere in the panel."""
    if group_by == "rule":
        return [(rule, variant, group) for rule, rule_runs in _by_rule(runs).items()
                for variant, group in _variants(rule_runs, [f for f in _varying(rule_runs) if reads(rule, f)]).items()]
    curves = []
    for variant, group in _variants(runs, _varying(runs, (_NOT_VARIANT - {"rule"}) | {group_by})).items():
        by_value: dict[str, list[_Run]] = defaultdict(list)
        for run in group:
            by_value[str(run.config[group_by])].append(run)
        values = sorted(by_value, key=lambda f: setting_order(group_by, f))
        curves += [(value, variant, by_value[value]) for value in values]
    return curves


def _panel_grid(runs: Sequence[_Run]) -> tuple[Figure, list[tuple[Axes, list[_Run]]], float]:
    """A figure with one panel per dataset (columns) and architecture/hidden-units group (rows), panels with no
    runs hidden; returns it, each drawn panel with its runs (row by row), and the figure's width in inches."""
    panels = _panels(runs)
    columns = sorted({d for d, _, _, _ in panels}, key=lambda d: setting_order("dataset", d))
    rows = sorted({(a, fc, pad) for _, a, fc, pad in panels},
                  key=lambda g: (setting_order("arch", g[0]), g[1], setting_order("padding", g[2])))
    width = max(6.4, 4.6 * len(columns))  # one panel alone still has room for the title and caption
    fig = _figure(figsize=(width, 3.5 * len(rows) + 0.7))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    drawn = []
    for i, (arch, fc, padding) in enumerate(rows):
        for j, dataset in enumerate(columns):
            if (dataset, arch, fc, padding) in panels:
                drawn.append((axes[i][j], panels[(dataset, arch, fc, padding)]))
            else:
                axes[i][j].set_axis_off()  # e.g. the fc networks were only run on MNIST
    return fig, drawn, width


def _panels(runs: Sequence[_Run]) -> dict[tuple[str, str, tuple[int, ...], str], list[_Run]]:
    """The runs by panel: (dataset, arch, fc sizes, first layer's padding), which give the hidden units."""
    panels: dict[tuple[str, str, tuple[int, ...], str], list[_Run]] = defaultdict(list)
    for run in runs:
        panels[(str(run.config["dataset"]), str(run.config["arch"]), run.fc, str(run.config["padding"]))].append(run)
    return panels


def _panel_columns(ax: Axes, first: _Run) -> dict[str, str]:
    """Title `ax` with the panel's dataset, architecture and hidden units; returns the CSV's panel columns."""
    dataset, arch = str(first.config["dataset"]), str(first.config["arch"])
    ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)}\n{arch} {first.hidden_units}", fontsize="medium")
    # The padding names the panel only where it is not the paper's (valid): Table 1's panels keep their names.
    padding = "" if str(first.config["padding"]) == Padding.valid.value else f"-{first.config['padding']}"
    return {"panel": f"{dataset}-{arch}-{'-'.join(map(str, first.fc))}{padding}", "dataset": dataset, "arch": arch,
            "hidden_units": first.hidden_units}


def _by_rule(runs: Sequence[_Run]) -> dict[str, list[_Run]]:
    """The runs by rule, in Table 1's order of rules."""
    groups: dict[str, list[_Run]] = defaultdict(list)
    for run in runs:
        groups[str(run.config["rule"])].append(run)
    return {rule: groups[rule] for rule in sorted(groups, key=lambda r: setting_order("rule", r))}


def _varying(runs: Sequence[_Run], ignore: frozenset[str] = _NOT_VARIANT) -> list[str]:
    """The config fields, other than those in `ignore`, whose values differ between `runs`."""
    return [f for f in CONFIG_FIELDS if f not in ignore and len({repr(r.config.get(f)) for r in runs}) > 1]


def _variants(runs: Sequence[_Run], fields: Sequence[str]) -> dict[str, list[_Run]]:
    """Group runs by their values of `fields`: 'lr=0.1' -> runs; the defaults (the literal reading) first.
    Where any of the runs follows the authors' later recipe, every group is named by its recipe label
    ('brainprop but padding valid', 'paper') and the other fields that differ."""
    groups: dict[tuple, list[_Run]] = defaultdict(list)
    for run in runs:
        groups[tuple((f, run.config.get(f)) for f in fields)].append(run)
    by_recipe = any(follows_brainprop(run.record.config) for run in runs)
    return {_variant_label(values, groups[values][0], by_recipe): groups[values]
            for values in sorted(groups, key=lambda values: readings_order(values))}


def _variant_label(values: tuple[tuple[str, Any], ...], run: _Run, by_recipe: bool) -> str:
    """'lr=0.1, optimizer=adam'; `by_recipe`, the run's recipe label and the settings it does not name."""
    if not values or not by_recipe:
        return ", ".join(f"{f}={v}" for f, v in values)
    rest = [f"{f}={v}" for f, v in values if f not in _RECIPE_NAMED]
    return ", ".join([recipe_label(run.record.config), *rest])


_LEGEND_LINE_INCHES = 0.2  # one line of a small-font legend, with its spacing
# Non-breaking spaces keep "± 2 SD" on one line when a caption wraps.
_BAND_SENTENCE = "Line: mean over seeds; band: mean\u00a0±\u00a02\u00a0SD."


def _runs(n: int, what: str = "run") -> str:
    """'1 run', '3 runs': a count of runs for a caption note."""
    return f"{n} {what}{'s' if n != 1 else ''}"


def _stop_sentence(after_stop: AfterStop) -> str:
    """The caption's account of seeds that stopped early."""
    return ("Seeds that stopped early hold their last value." if after_stop == AfterStop.hold
            else "Seeds that stopped early drop out of the mean (n falls; no band where n < 2).")


def _output_file(out: Path | None, default_folder: Path, default_stem: str, fmt: PlotFormat | None
                 ) -> tuple[Path, PlotFormat]:
    """Resolve `--out` (a folder, or a file whose extension gives the format) and `--format`."""
    suffix = out.suffix.lower().lstrip(".") if out is not None and not out.is_dir() else ""
    if suffix:
        if suffix not in {f.value for f in PlotFormat}:
            raise QagrelError(f"--out {out}: give a folder, or a file name ending in .png, .pdf or .svg")
        if fmt is not None and fmt.value != suffix:
            raise QagrelError(f"--format {fmt.value} contradicts the extension of --out {out}")
        return out, PlotFormat(suffix)
    fmt = fmt or PlotFormat.png
    return (out if out is not None else default_folder) / f"{default_stem}.{fmt.value}", fmt


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: see the module docstring

    return Figure(figsize=figsize, layout="constrained", dpi=150)


def _style_axes(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # Under the panel, not on it: with several readings a legend inside would hide the curves.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False)


def _make_room_for_legends(fig: Figure) -> None:
    """Grow the figure by the legend lines under its tallest panel legend per row of panels, and by the lines
    of its caption, so the panels keep their height however many curves a legend lists and the caption
    never overlaps the last legend."""
    lines: dict[int, int] = defaultdict(int)
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            row = ax.get_subplotspec().rowspan.start
            lines[row] = max(lines[row], len(legend.get_texts()))
    width, height = fig.get_size_inches()
    caption = len(fig.get_supxlabel().splitlines()) if lines else 0
    fig.set_size_inches(width, height + _LEGEND_LINE_INCHES * (sum(n + 1 for n in lines.values()) + caption))


def _save(fig: Figure, table: pd.DataFrame, out_file: Path, fmt: PlotFormat, notes: list[str]) -> Plotted:
    """Write the figure and its numbers (same name, .csv) atomically."""
    _make_room_for_legends(fig)
    # Constrained layout places the legends under the panels only from the second layout on: settle it first,
    # or the last legend lines fall onto the caption.
    fig.draw_without_rendering()
    csv = out_file.with_suffix(".csv")
    run_folder.atomic_write(out_file, lambda tmp: fig.savefig(tmp, format=fmt.value))
    run_folder.atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
    return Plotted(out_file, csv, notes)


__all__ = ["plot", "plot_figure3", "plot_angles", "plot_run", "aggregate", "Metric", "AfterStop", "PlotFormat",
           "Plotted"]
