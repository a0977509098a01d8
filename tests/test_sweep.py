"""Sweep files (expansion, validation, run ids), run state and locks, and real sweeps on MNIST.

The real sweeps use a tiny fully connected network on 500 MNIST images, so a
run takes a second or two; most of a test's time is the worker processes
importing torch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from qagrel_cli.core import run_folder as runs
from qagrel_cli.cli import app
from qagrel_cli.core.config import QagrelError, TrainConfig
from qagrel_cli.core.run_folder import is_locked, try_lock
from qagrel_cli.sweeps.ledger import RunStatus, run_status
from qagrel_cli.sweeps.sweep_file import load_sweep
from qagrel_cli.reports.rows import row_key, row_key_fields
from qagrel_cli.reports.table import paper_row, paper_table
from qagrel_cli.core.recipes import follows_brainprop, recipe_label
from qagrel_cli.sweeps.results import RunRecord

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
TINY = {"dataset": "mnist", "arch": "fc", "fc": "32", "rule": "qagrel", "train_size": 500, "val_size": 200,
        "max_epochs": 4, "patience": 10}


def sweep_file(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tiny_sweep(tmp_path: Path, name: str, seeds: int = 2, **grid) -> Path:
    """A sweep of `seeds` tiny runs (override any TrainConfig field through `grid`)."""
    return sweep_file(tmp_path, yaml.safe_dump({"name": name, "grid": {**TINY, **grid}, "seeds": seeds}),
                      f"{name}.yaml")


def expand(text: str, tmp_path: Path) -> list:
    return list(load_sweep(sweep_file(tmp_path, text)).configs)


def qagrel(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m qagrel_cli ...` in its own process group (so a test can kill the sweep with its workers)."""
    return subprocess.Popen([sys.executable, "-m", "qagrel_cli", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"}, **kwargs)


def run_dirs(sweep: Path, results: Path) -> list[Path]:
    plan = load_sweep(sweep)
    return [plan.run_dir(results, c) for c in plan.configs]


def assert_complete_once(run_dir: Path) -> None:
    """Finished, and its log holds epochs 1..stop_epoch exactly once each."""
    summary = runs.read_summary(run_dir)
    assert summary is not None, f"{run_dir.name} is not finished"
    assert list(runs.read_log(run_dir)["epoch"]) == list(range(1, summary["stop_epoch"] + 1))


def assert_no_premature_summary(dirs: list[Path]) -> None:
    """A run that has a summary has its whole log: nothing looks finished before it is."""
    for run_dir in dirs:
        if (run_dir / runs.SUMMARY_FILE).exists():
            assert_complete_once(run_dir)


# ------------------------------------------------------------ expansion

TABLE1_FILES = ["table1.yaml", "table1-literal.yaml", "table1-protocol.yaml"]


@pytest.mark.parametrize("name", TABLE1_FILES)
def test_table1_expands_to_26_rows_times_10_seeds(name):
    configs = load_sweep(REPO / "sweeps" / name).configs
    assert len(configs) == 260
    assert len({c.run_id for c in configs}) == 260


@pytest.mark.parametrize("name", TABLE1_FILES)
def test_table1_rows_are_exactly_the_papers_rows(name):
    records = [RunRecord(Path(), c, None) for c in load_sweep(REPO / "sweeps" / name).configs]
    fields = row_key_fields(records)
    seeds: dict = {}
    for record in records:
        key = row_key(record, fields)
        # A run of the authors' later recipe keeps its own alpha; the rest take Table 1's.
        paper = paper_row(key, any_alpha=follows_brainprop(record.config))
        assert paper is not None, key
        seeds.setdefault(paper.key, []).append(record.config.seed)
    assert set(seeds) == {p.key for p in paper_table()}
    assert all(sorted(s) == list(range(10)) for s in seeds.values())


def readings(name: str) -> set[tuple[str, str, str, str, str, str]]:
    """(rule, first layer, recipe, optimizer, init, input scaling) of every run of a sweep file."""
    return {(c.rule.value, c.arch.value, recipe_label(c), c.optimizer.value, c.init.value, c.input_scaling.value)
            for c in load_sweep(REPO / "sweeps" / name).configs}


def test_table1_literal_trains_every_row_under_the_literal_reading():
    assert {r[2:] for r in readings("table1-literal.yaml")} == {("paper", "sgd", "uniform", "unit")}


def test_table1_protocol_trains_qagrel_literally_and_bp_with_adam_on_conv_nets_and_sgd_on_the_fc_net():
    # The protocol study's conclusion (docs/reproduction.md#conclusion).
    assert readings("table1-protocol.yaml") == {
        ("qagrel", "conv", "paper", "sgd", "uniform", "unit"), ("qagrel", "loccon", "paper", "sgd", "uniform", "unit"),
        ("qagrel", "fc", "paper", "sgd", "uniform", "unit"),
        ("bp", "conv", "paper", "adam", "uniform", "unit"), ("bp", "loccon", "paper", "adam", "uniform", "unit"),
        ("bp", "fc", "paper", "sgd", "uniform", "unit")}


def test_table1_trains_conv_and_loccon_nets_under_the_recipe_with_the_papers_padding_and_stopping():
    # The recipe study's conclusion (docs/reproduction.md#the-authors-later-recipe); the fc net as the protocol study.
    recipe = "brainprop but padding valid, validation held-out"
    assert readings("table1.yaml") == {
        ("qagrel", "conv", recipe, "sgd", "normal", "unit"), ("bp", "conv", recipe, "sgd", "normal", "unit"),
        ("qagrel", "loccon", "brainprop but validation held-out", "sgd", "normal", "unit"),
        ("bp", "loccon", "brainprop but validation held-out", "sgd", "normal", "unit"),
        ("qagrel", "fc", "paper", "sgd", "uniform", "unit"), ("bp", "fc", "paper", "sgd", "uniform", "unit")}


def test_table1_keeps_the_hidden_units_of_table_1():
    records = [RunRecord(Path(), c, None) for c in load_sweep(REPO / "sweeps" / "table1.yaml").configs]
    units = {row_key(r, row_key_fields(records)).hidden_units for r in records}  # as the padding makes them
    assert units == {p.key.hidden_units for p in paper_table()}


def test_every_run_of_table1_cpu_is_a_run_of_one_of_the_table1_files():
    cpu = {c.run_id for c in load_sweep(REPO / "sweeps" / "table1-cpu.yaml").configs}
    table1 = {c.run_id for name in TABLE1_FILES for c in load_sweep(REPO / "sweeps" / name).configs}
    assert cpu <= table1


def test_the_recipe_studys_full_protocol_runs_are_runs_of_table1():
    recipe = {c.run_id for c in load_sweep(REPO / "sweeps" / "recipe.yaml").configs if c.max_epochs == 500
              and c.validation.value == "held-out"}
    table1 = {c.run_id for c in load_sweep(REPO / "sweeps" / "table1.yaml").configs}
    assert len(recipe) == 12 and recipe <= table1


def test_table1_cifar100_is_exactly_the_cifar100_runs_of_table1():
    cifar100 = {c.run_id for c in load_sweep(REPO / "sweeps" / "table1-cifar100.yaml").configs}
    table1 = {c.run_id for c in load_sweep(REPO / "sweeps" / "table1.yaml").configs if c.dataset.value == "cifar100"}
    assert cifar100 == table1 and len(cifar100) == 8 * 10


def test_table1_cpu_runs_the_first_rows_at_10_or_3_seeds_and_every_conv_and_loccon_row_under_table1_at_3():
    seeds = Counter((c.dataset.value, c.arch.value, "-".join(map(str, c.fc)), c.rule.value, c.optimizer.value,
                     recipe_label(c)) for c in load_sweep(REPO / "sweeps" / "table1-cpu.yaml").configs)
    first = {("mnist", "fc", "1500-1000-500", "qagrel", "sgd"): 10, ("mnist", "fc", "1500-1000-500", "bp", "sgd"): 10,
             ("mnist", "conv", "500", "qagrel", "sgd"): 10, ("mnist", "conv", "500", "bp", "adam"): 10,
             ("cifar10", "conv", "500", "qagrel", "sgd"): 3, ("cifar10", "conv", "500", "bp", "adam"): 3,
             ("mnist", "conv", "500", "bp", "sgd"): 3, ("cifar10", "conv", "500", "bp", "sgd"): 3}
    recipe = {"conv": "brainprop but padding valid, validation held-out", "loccon": "brainprop but validation held-out"}
    rest = {(dataset, arch, fc, rule, "sgd", recipe[arch]): 3
            for dataset in ("mnist", "cifar10") for arch in ("conv", "loccon") for fc in ("500", "1000-500")
            for rule in ("qagrel", "bp")}
    assert seeds == {(*key, "paper"): n for key, n in first.items()} | rest


def test_grid_is_the_cartesian_product_of_listed_values(tmp_path):
    configs = expand("grid: {dataset: [mnist, cifar10], arch: [conv, loccon, fc], rule: [qagrel, bp], "
                     "max_epochs: 7}\n", tmp_path)
    assert len(configs) == 12
    assert {c.max_epochs for c in configs} == {7}
    assert len({(c.dataset, c.arch, c.rule) for c in configs}) == 12


def test_seeds_shorthand_is_seeds_zero_to_n_minus_one(tmp_path):
    configs = expand("grid: {rule: [qagrel, bp]}\nseeds: 3\n", tmp_path)
    assert sorted(Counter(c.seed for c in configs).items()) == [(0, 2), (1, 2), (2, 2)]


def test_seeds_list_is_taken_as_given(tmp_path):
    assert {c.seed for c in expand("grid: {rule: bp}\nseeds: [4, 11]\n", tmp_path)} == {4, 11}


def test_include_entry_is_the_grid_with_its_keys_replaced(tmp_path):
    configs = expand("grid: {dataset: [cifar10, cifar100], arch: conv, rule: [qagrel, bp], patience: 5}\n"
                     "include:\n  - {dataset: mnist, arch: fc}\n", tmp_path)
    mnist = [c for c in configs if c.dataset.value == "mnist"]
    assert len(configs) == 6
    assert {(c.arch.value, c.rule.value, c.patience) for c in mnist} == {("fc", "qagrel", 5), ("fc", "bp", 5)}


def test_exclude_drops_runs_matching_all_its_keys_after_defaults_are_filled(tmp_path):
    configs = expand("grid: {dataset: [mnist, cifar10], rule: [qagrel, bp]}\n"
                     "exclude:\n  - {dataset: cifar10, lr: 0.001}\n", tmp_path)  # 0.001: BP's CIFAR default
    assert sorted((c.dataset.value, c.rule.value) for c in configs) == [
        ("cifar10", "qagrel"), ("mnist", "bp"), ("mnist", "qagrel")]


def test_a_run_listed_twice_is_one_run(tmp_path):
    configs = expand("grid: {rule: [qagrel, bp]}\ninclude:\n  - {rule: bp, fc: '500'}\n", tmp_path)
    assert len(configs) == 2  # fc 500 is conv's default: the same run id


def test_runs_start_seed_by_seed_so_every_row_gets_a_first_result_early(tmp_path):
    configs = expand("grid: {rule: [qagrel, bp], arch: [conv, fc]}\nseeds: 2\n", tmp_path)
    assert [c.seed for c in configs] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_scientific_notation_is_read_as_a_number(tmp_path):
    assert expand("grid: {rule: bp, lr: 1e-3}\n", tmp_path)[0].lr == 0.001


def test_name_defaults_to_the_file_name(tmp_path):
    assert load_sweep(sweep_file(tmp_path, "grid: {rule: bp}\n", "my-sweep.yaml")).name == "my-sweep"


def test_run_ids_are_the_same_in_another_process():
    code = ("from qagrel_cli.sweeps.sweep_file import load_sweep\n"
            "print('\\n'.join(c.run_id for c in load_sweep('sweeps/table1-literal.yaml').configs))")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    ids = [c.run_id for c in load_sweep(REPO / "sweeps" / "table1-literal.yaml").configs]
    assert other.stdout.split() == ids
    assert ids[0] == "mnist-conv-500-qagrel-s0-c96e5043"  # and across versions: renaming a run orphans it


# ------------------------------------------------------------ validation

@pytest.mark.parametrize("text, fragments", [
    ("parameters: {lr: {values: [1]}}\n", ["unknown key 'parameters'", "grid"]),
    ("grid: {lrr: 0.1}\n", ["grid: unknown key 'lrr'"]),
    ("grid: {max_epochs: ten}\n", ["grid.max_epochs", "'ten'"]),
    ("grid: {dataset: [mnist, mnsit]}\n", ["grid.dataset", "unknown dataset 'mnsit'", "cifar10"]),
    ("grid: {}\n", ["grid: an empty grid"]),
    ("name: x\n", ["grid: an empty grid"]),
    ("grid: {rule: []}\n", ["grid.rule: an empty list"]),
    ("grid: {rule: bp}\ninclude:\n  - {arch: cnn}\n", ["include[0].arch", "unknown arch 'cnn'"]),
    ("grid: {rule: bp}\nexclude:\n  - {sed: 1}\n", ["exclude[0]: unknown key 'sed'"]),
    ("grid: {rule: bp}\nseeds: -1\n", ["seeds:", "-1"]),
    ("grid: {rule: bp, seed: 1}\nseeds: 3\n", ["either seeds: or grid.seed"]),
    ("grid: {rule: bp}\nexclude:\n  - {rule: bp}\n", ["expands to no runs"]),
    ("grid: {rule: [qagrel, bp], optimizer: adam}\n", ["grid:", "optimizer applies to rule bp, fa, dfa only",
                                                       "'rule': 'qagrel'"]),
    ("grid: {rule: [bp\n", ["not valid YAML"]),
])
def test_invalid_sweep_file_is_one_error_naming_file_key_and_value(tmp_path, text, fragments):
    path = sweep_file(tmp_path, text)
    with pytest.raises(QagrelError) as err:
        load_sweep(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert all(f in message for f in fragments), message
    assert message.count("\n") <= 1


def test_invalid_sweep_file_starts_nothing_and_writes_nothing(tmp_path):
    path = sweep_file(tmp_path, "grid: {dataset: [mnist, mnsit], rule: bp}\n")
    result = runner.invoke(app, ["sweep", str(path), "--results", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert "unknown dataset 'mnsit'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_dry_run_all_lists_every_run_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["sweep", str(REPO / "sweeps" / "table1.yaml"), "--dry-run", "--all",
                                 "--results", str(tmp_path / "results")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "260 runs" in result.stdout and "mnist-fc-1500_1000_500-bp-s9-" in result.stdout
    assert "0 done, 0 running, 0 failed, 0 damaged, 0 partial, 260 pending" in result.stdout
    assert not (tmp_path / "results").exists()


def test_dry_run_shows_a_dash_for_a_setting_the_runs_rule_does_not_read(tmp_path):
    path = sweep_file(tmp_path, "grid: {dataset: mnist}\nseeds: 1\ninclude:\n  - {rule: bp, optimizer: adam}\n")
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--all", "--results", str(tmp_path / "results")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    cells = {line.split("│")[2].strip().split("-")[3]: line.split("│")[3].strip()
             for line in result.stdout.splitlines() if "-s0-" in line}
    assert cells == {"qagrel": "–", "bp": "adam"}


# ------------------------------------------------------------ state, locks

def test_run_state_follows_the_files_in_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    assert run_status(run_dir) == RunStatus.pending
    runs.write_config(run_dir, TrainConfig(seed=0))
    assert run_status(run_dir) == RunStatus.pending
    runs.atomic_write_text(run_dir / runs.LOG_FILE, "")
    assert run_status(run_dir) == RunStatus.partial
    runs.atomic_write_text(run_dir / runs.ERROR_FILE, "boom\n")
    assert run_status(run_dir) == RunStatus.failed
    runs.write_summary(run_dir, {"run_id": "run", "stop_epoch": 1, "status": "finished"})
    assert run_status(run_dir) == RunStatus.done


def test_a_lock_reads_running_while_its_process_lives_and_vanishes_with_it_on_kill_9(tmp_path):
    code = ("import sys, time\nfrom pathlib import Path\nfrom qagrel_cli.core.run_folder import try_lock\n"
            "assert try_lock(Path(sys.argv[1])) is not None\nprint('locked', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(tmp_path) and run_status(tmp_path) == RunStatus.running
        assert try_lock(tmp_path) is None
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(tmp_path)
    fd = try_lock(tmp_path)
    assert fd is not None
    os.close(fd)


# ------------------------------------------------------------ real sweeps

def test_sweep_trains_every_run_and_a_rerun_trains_nothing(tmp_path, mnist_dir):
    sweep, results = tiny_sweep(tmp_path, "twice"), tmp_path / "results"
    args = ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir), "--workers", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "trained 2 run(s)" in first.output
    for run_dir in run_dirs(sweep, results):
        assert_complete_once(run_dir)
        assert not (run_dir / runs.LOCK_FILE).exists()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "trained 0 run(s), 0 failed; skipped 2 already finished" in second.output


def test_failing_run_records_its_error_and_the_others_still_finish(tmp_path, mnist_dir):
    # Seed 1 asks for a device no machine has: training raises when that run starts.
    sweep = sweep_file(tmp_path, yaml.safe_dump({"name": "f", "grid": TINY, "seeds": [0],
                                                 "include": [{"seed": 1, "device": "cuda:99"}]}))
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir),
                                 "--workers", "2"])
    assert result.exit_code == 1
    assert "trained 1 run(s), 1 failed" in result.output
    good, bad = run_dirs(sweep, results)
    assert_complete_once(good)
    assert run_status(bad) == RunStatus.failed
    assert "cuda:99" in (bad / runs.ERROR_FILE).read_text()


def test_failed_runs_are_skipped_unless_retry_failed(tmp_path, mnist_dir):
    sweep, results = tiny_sweep(tmp_path, "retry", seeds=1), tmp_path / "results"
    (run_dir,) = run_dirs(sweep, results)
    runs.atomic_write_text(run_dir / runs.ERROR_FILE, "an earlier crash\n")
    args = ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir)]
    skipped = runner.invoke(app, args)
    assert "1 that failed before (--retry-failed runs them again)" in skipped.output
    assert run_status(run_dir) == RunStatus.failed
    retried = runner.invoke(app, [*args, "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    assert_complete_once(run_dir)
    assert not (run_dir / runs.ERROR_FILE).exists()


def test_run_locked_by_another_live_process_is_skipped_untouched(tmp_path, mnist_dir):
    sweep, results = tiny_sweep(tmp_path, "locked"), tmp_path / "results"
    held, free = run_dirs(sweep, results)
    fd = try_lock(held)  # this test process plays another sweep that is training it
    try:
        result = runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir)])
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    assert "trained 1 run(s)" in result.output and "1 running in another process" in result.output
    assert_complete_once(free)
    assert sorted(p.name for p in held.iterdir()) == [runs.LOCK_FILE]


def test_killed_sweep_resumes_without_losing_or_repeating_an_epoch(tmp_path, mnist_dir):
    sweep, results = tiny_sweep(tmp_path, "killed", max_epochs=8, patience=8), tmp_path / "results"
    dirs = run_dirs(sweep, results)
    args = ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir), "--workers", "2"]
    proc = qagrel(*args)
    deadline = time.monotonic() + 120
    while not any(runs.read_summary(d) is None and len(runs.read_log(d)) >= 1 for d in dirs):
        assert_no_premature_summary(dirs)
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, as a power cut would
    proc.wait()
    assert_no_premature_summary(dirs)
    before = {d: runs.read_log(d) for d in dirs if runs.read_summary(d) is None and (d / runs.LOG_FILE).exists()}
    assert before, "no run was cut off mid-way"

    rerun = qagrel(*args)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    for run_dir in dirs:
        assert_complete_once(run_dir)
    for run_dir, log in before.items():  # the epochs finished before the kill were kept, not redone
        after = runs.read_log(run_dir).iloc[:len(log)]
        assert after[["epoch", "train_loss", "val_acc", "test_acc"]].equals(log[["epoch", "train_loss", "val_acc",
                                                                                 "test_acc"]])


def test_two_sweeps_at_once_train_each_run_exactly_once(tmp_path, mnist_dir):
    sweep, results = tiny_sweep(tmp_path, "twins", seeds=2, max_epochs=10, patience=10, train_size=1000), \
        tmp_path / "results"
    dirs = run_dirs(sweep, results)
    args = ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir)]
    first = qagrel(*args)
    deadline = time.monotonic() + 120
    while not any(is_locked(d) for d in dirs):  # start the second while the first is training a run
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = qagrel(*args)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs

    def count(pattern: str, text: str) -> int:
        return int(re.search(pattern, text).group(1))

    trained = [count(r"trained (\d+) run", out) for out in outputs]
    met_a_lock = [count(r"(\d+) running in another process", out) for out in outputs]
    assert sum(trained) == len(dirs), outputs  # each run trained by exactly one of the two
    assert sum(met_a_lock) >= 1, outputs  # and they really did overlap
    for run_dir in dirs:
        assert_complete_once(run_dir)


def test_smoke_sweep_end_to_end_then_table(tmp_path, mnist_dir):
    smoke = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    # The same sweep, cut to one seed and one epoch on 200 images: the test is of the pipeline.
    smoke["grid"].update(train_size=200, max_epochs=1)
    smoke["seeds"] = 1
    sweep, results = sweep_file(tmp_path, yaml.safe_dump(smoke), "smoke.yaml"), tmp_path / "results"
    ran = runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--data-dir", str(mnist_dir),
                              "--workers", "2"])
    assert ran.exit_code == 0, ran.output
    table = runner.invoke(app, ["table", str(results / "smoke"), "--format", "markdown", "--compare", "paper"])
    assert table.exit_code == 0, table.output
    assert "| MNIST | Q-AGREL | Conv | 21632-5408-500 | 1e+00 |" in table.stdout
    assert "| MNIST | Error-BP | Conv | 21632-5408-500 | 1e-01 |" in table.stdout
    log = pd.read_parquet(results / "smoke")  # every run's log at once, config on every row
    assert len(log) == 2 and set(log["rule"]) == {"qagrel", "bp"} and log["train_size"].eq(200).all()
