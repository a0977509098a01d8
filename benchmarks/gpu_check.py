"""The GPU path, checked in one prepared call (issue 12).

    python benchmarks/gpu_check.py --prepare-data ../shared/data      # here: gzipped MNIST into gpu-check-data/
    PYTHONPATH=. python3 benchmarks/gpu_check.py --data-dir gpu-check-data   # on the CUDA machine (< 8 min)
    python benchmarks/gpu_check.py --quick --data-dir DATA            # any machine: the same steps, tiny sizes
    python benchmarks/gpu_check.py --from-json gpu-check/gpu_check.json --update-docs docs/performance.md

One script, ready before a GPU is lent, that runs every check the CUDA path
needs, each as a time-boxed subprocess (a hang costs one step, not the budget),
and writes what it measured to OUT (--out, else $OUT, else ./gpu-check/):
gpu_check.json, summary.md, and each step's output under logs/.

Steps, in this order (correctness first, the most elastic timing last):
  environment   device name, torch, CUDA and cuDNN versions (a subprocess: a CUDA
                initialisation that hangs is cut like any step)
  cuda_tests    `pytest -m cuda` (the tests marked cuda: vmap packs against runs one
                by one on the device, early stopping and resume in a pack, data on
                the device); skipped, not failed, where pytest is not installed
  train_qagrel  `qagrel train --seeds 0-9 --max-epochs 3` on MNIST conv-500, one pack
  train_bp      the same with --rule bp
  compare_cpu   their epoch-1..3 validation accuracies against CPU runs of the same
                configs (benchmarks/gpu_check_reference/, matched by run id)
  bench_step    benchmarks/bench_step.py: qagrel step / plain BP step <= 1.1, loccon / conv <= 3
  bench_pack    benchmarks/bench_pack.py, K = 1, 2, 5, 10: K=10 vmap >= 5x 10 sequential runs

Every CUDA step runs through benchmarks/peak_memory.py, which reports that
process's peak GPU memory. A step that fails, times out or crashes is recorded
as failed and the next step runs; steps left when --budget is spent fail
without running. Exit status: 0 when no step failed (skipped steps are listed
in the summary), 1 otherwise, 2 for bad input.

A seed's CUDA run is not its CPU run replayed: it starts from the same weights,
validation split and data order, but draws its dropout masks and exploration
from a generator on the device (another random stream) and rounds differently
(CUDA convolutions may use TF32). The two are different samples of the same
training, so the comparison allows what a different stream moved the CPU runs
by (measured: benchmarks/gpu_check_reference/README.md): FIRST_EPOCH_TOLERANCE_PP
percentage points of validation accuracy at epoch 1, where Q-AGREL climbs
steeply, TOLERANCE_PP after. It is there to catch gross CUDA-only bugs (members
that learn nothing or far too slowly), not to certify agreement digit by digit:
that is what the cuda tests check, pack against runs one by one on one device.

--quick runs the same steps on whatever device there is, at tiny sizes (seeds
0-1, 1 epoch, 300 training images on a 2,000-image slice of MNIST with 500 test
images; 3 benchmark steps on MNIST-sized input; a conv Q-AGREL pack of K = 1, 2)
so that a CPU-only CI keeps this script working (tests/test_gpu_check.py); its
speed figures are not judged, and it compares with CPU runs of the quick sizes.

This script imports nothing from qagrel_cli: it drives `python -m qagrel_cli`
and the benchmark scripts as subprocesses and reads the run folders' files.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
REFERENCE = BENCHMARKS / "gpu_check_reference"
DEFAULT_DATA = Path("gpu-check-data")
DOCS_BEGIN, DOCS_END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
RULES = ("qagrel", "bp")
# |device - CPU| validation accuracy allowed per seed and epoch, in percentage points. Changing only the
# dropout/exploration stream moved the CPU runs by up to 8.2 points at epoch 1 (Q-AGREL) and 1.2 later.
FIRST_EPOCH_TOLERANCE_PP, TOLERANCE_PP = 20.0, 3.0
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Sizes:
    """How much each step does: the full check on a GPU, or --quick anywhere."""

    seeds: str
    epochs: int
    train_size: int | None
    bench_steps: int
    bench_inputs: str
    pack_ks: str
    pack_archs: str
    pack_rules: str
    pack_min_seconds: float
    pack_rounds: int
    budget_seconds: float


FULL = Sizes(seeds="0-9", epochs=3, train_size=None, bench_steps=150, bench_inputs="mnist,cifar", pack_ks="1,2,5,10",
             pack_archs="conv,loccon,fc", pack_rules="qagrel,bp", pack_min_seconds=0.5, pack_rounds=2,
             budget_seconds=450)
QUICK = Sizes(seeds="0-1", epochs=1, train_size=300, bench_steps=3, bench_inputs="mnist", pack_ks="1,2",
              pack_archs="conv", pack_rules="qagrel", pack_min_seconds=0.05, pack_rounds=1, budget_seconds=300)
# The quick check's MNIST slice: enough for 1,000 validation + 300 training images.
QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES = 2000, 500
# Upper bounds per step, in seconds, so that one hang cannot eat the budget (GPU times not yet measured).
TIMEOUTS = {"environment": 60, "cuda_tests": 120, "train": 100, "bench_step": 60, "bench_pack": 150}


class CheckError(Exception):
    """Bad input: reported as one line, exit status 2."""


class BudgetSpent(Exception):
    """No time left for a step."""


@dataclass(frozen=True)
class Check:
    """What every step needs: where things are, how big, which device, and the deadline."""

    out: Path
    data_dir: Path
    device: str
    quick: bool
    sizes: Sizes
    deadline: float
    reference: Path
    train_data: Path  # what the training steps read: data_dir, or its --quick slice

    @property
    def judged(self) -> bool:
        """Speed targets are judged on the full check only: --quick sizes are too small for speed claims."""
        return not self.quick


@dataclass
class Step:
    """One step's outcome as it goes into gpu_check.json."""

    name: str
    status: str
    summary: str  # one line: what it found, or why it failed
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """A finished (or cut) subprocess: exit status (None when timed out), output, peak GPU memory."""

    rc: int | None
    output: str
    peak: dict[str, int | None] | None
    timeout: float


# ---------------------------------------------------------------- running things

def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with the checkout first on PYTHONPATH so `-m qagrel_cli` needs no install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run_command(command: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run `command` from the checkout, output into `log`; kill its whole process group at `timeout`.

    Returns the exit status (None when it was cut) and the output.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        # Its own session: a timeout kills pytest's or torch's helper processes too, and only those.
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return rc, log.read_text(errors="replace")


def time_left(check: Check, limit: float) -> float:
    """A step's timeout: its own limit, or what is left of the budget if that is less."""
    left = check.deadline - time.monotonic()
    if left < 5:
        raise BudgetSpent(f"not run: the --budget was spent ({max(left, 0):.0f} s left)")
    return min(limit, left)


def run_tool(check: Check, name: str, args: list[str], limit: float, env: dict[str, str] | None = None) -> Outcome:
    """Run `python benchmarks/peak_memory.py PEAK ARGS...` time-boxed; its peak GPU memory comes back too."""
    timeout = time_left(check, limit)
    peak_file = check.out / "peak" / f"{name}.json"
    peak_file.parent.mkdir(parents=True, exist_ok=True)
    peak_file.unlink(missing_ok=True)
    command = [sys.executable, str(BENCHMARKS / "peak_memory.py"), str(peak_file), *args]
    rc, output = run_command(command, check.out / "logs" / f"{name}.log", timeout, child_env(env))
    peak = json.loads(peak_file.read_text()) if peak_file.exists() else None
    return Outcome(rc, output, peak, timeout)


def last_line(output: str) -> str:
    """The last non-empty line of some output, for a one-line reason."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def failure(outcome: Outcome) -> str | None:
    """Why a subprocess failed, in one line, or None when it exited 0."""
    if outcome.rc is None:
        return f"timed out after {outcome.timeout:.0f} s; last output: {last_line(outcome.output)}"
    if outcome.rc != 0:
        return f"exit status {outcome.rc}: {last_line(outcome.output)}"
    return None


def target(name: str, value: float | None, op: str, limit: float, judged: bool) -> dict[str, Any]:
    """A speed target; `met` is None when not judged (or not measured)."""
    met = None if value is None or not judged else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "op": op, "limit": limit, "met": met}


def missed(targets: list[dict[str, Any]]) -> list[str]:
    """The targets judged and not met, as 'name: value (limit)'."""
    return [f"{t['name']}: {t['value']:.2f}x (target {t['op']} {t['limit']}x)" for t in targets if t["met"] is False]


# ---------------------------------------------------------------- the steps

ENV_PROBE = """
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device_name=p.name, device_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                total_memory=p.total_memory, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
print(json.dumps(info))
"""


def probe_environment(check: Check) -> Step:
    """Versions and the device; fails when the check wants CUDA and there is none."""
    rc, output = run_command([sys.executable, "-c", ENV_PROBE], check.out / "logs" / "environment.log",
                             time_left(check, TIMEOUTS["environment"]), child_env())
    if rc != 0:
        return Step("environment", FAILED, "timed out" if rc is None else f"exit status {rc}: {last_line(output)}")
    info = json.loads(last_line(output))
    where = (f"{info['device_name']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}" if info["cuda_available"]
             else f"no CUDA device; {info['cpu']}, {info['cpu_threads']} threads")
    summary = f"{where}; torch {info['torch']}, Python {info['python']}"
    if check.device == "cuda" and not info["cuda_available"]:
        return Step("environment", FAILED, f"the full check needs CUDA and torch sees none ({summary}); "
                    "use --quick on a CPU", details=info)
    return Step("environment", PASSED, summary, details=info)


def pytest_counts(output: str) -> tuple[str, dict[str, int]]:
    """pytest's final summary line and its counts: '3 passed, 1 skipped in 2.0s' -> {'passed': 3, ...}."""
    pattern = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")
    lines = [line.strip(" =") for line in output.splitlines() if pattern.search(line) and " in " in line]
    if not lines:
        return last_line(output), {}
    return lines[-1], {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                       for n, kind in pattern.findall(lines[-1])}


def cuda_tests(check: Check) -> Step:
    """`pytest -m cuda`: on a CUDA machine every one must run and pass."""
    if importlib.util.find_spec("pytest") is None:
        return Step("cuda_tests", SKIPPED, "pytest is not installed here, so the CUDA tests did not run")
    outcome = run_tool(check, "cuda_tests", ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                       TIMEOUTS["cuda_tests"], env={"QAGREL_DATA": str(check.data_dir)})
    line, counts = pytest_counts(outcome.output)
    details = {"pytest": line, "counts": counts, "peak_memory": outcome.peak}
    why = failure(outcome)
    if why:
        return Step("cuda_tests", FAILED, f"{why} ({line})" if counts else why, details=details)
    if check.device == "cuda" and counts.get("skipped"):
        return Step("cuda_tests", FAILED, f"CUDA tests were skipped on a CUDA machine: {line}", details=details)
    return Step("cuda_tests", PASSED, line, details=details)


def train_command(check: Check, rule: str, runs: Path) -> list[str]:
    """The `qagrel train` pack of Table 1's MNIST conv-500 row this check trains."""
    command = ["-m", "qagrel_cli", "train", "--seeds", check.sizes.seeds, "--max-epochs", str(check.sizes.epochs),
               "--rule", rule, "--dataset", "mnist", "--arch", "conv", "--fc", "500", "--device", check.device,
               "--out", str(runs), "--data-dir", str(check.train_data), "--no-download"]
    if check.sizes.train_size:
        command += ["--train-size", str(check.sizes.train_size)]
    return command


def read_runs(runs: Path) -> dict[str, pd.DataFrame]:
    """Each run folder's epoch log (folders without one yet are left out), by run id."""
    return {p.parent.name: pd.read_parquet(p) for p in sorted(runs.glob("*/log.parquet"))}


def pack_epochs(logs: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Per epoch: runs in the pack, the pack's epoch time, samples/s per run and of the whole pack.

    A packed run's time columns are the pack's (every member's epoch took the pack's
    wall time), so the pack trained `runs` x samples_per_second samples a second.
    """
    rows = pd.concat(logs.values()) if logs else pd.DataFrame(columns=["epoch"])
    epochs = []
    for epoch, group in rows.groupby("epoch"):
        per_run = float(group["samples_per_second"].median())
        epochs.append({"epoch": int(epoch), "runs": len(group), "epoch_seconds": float(group["epoch_seconds"].max()),
                       "samples_per_second_per_run": per_run, "samples_per_second_pack": per_run * len(group),
                       "mean_val_acc": float(group["val_acc"].mean())})
    return epochs


def train(check: Check, rule: str) -> Step:
    """One pack of seeds, trained through the CLI; every seed must finish its epochs (vmapped on CUDA)."""
    name, runs = f"train_{rule}", check.out / "runs" / rule
    command = train_command(check, rule, runs)
    outcome = run_tool(check, name, command, TIMEOUTS["train"])
    for checkpoint in runs.glob("*/_checkpoint.pt"):  # runs cut short leave ~20 MB each: keep OUT small
        checkpoint.unlink()
    logs = read_runs(runs)
    strategy = re.search(r"packing \d+ runs \((\w+)\)", outcome.output)
    details = {"command": " ".join(["python", *command]),
               "strategy": strategy.group(1) if strategy else None, "epochs": pack_epochs(logs),
               "val_acc": {run_id: log["val_acc"].tolist() for run_id, log in logs.items()},
               "peak_memory": outcome.peak}
    seeds = len(logs)
    short = [run_id for run_id, log in logs.items() if len(log) < check.sizes.epochs]
    why = failure(outcome) or (f"{len(short)} of {seeds} runs have fewer than {check.sizes.epochs} epochs"
                               if short or not seeds else None)
    if not why and check.device == "cuda" and details["strategy"] != "vmap":
        why = f"the pack ran as {details['strategy']!r}, not vmap"
    last = details["epochs"][-1] if details["epochs"] else None
    epochs = f"{check.sizes.epochs} epoch{'s' if check.sizes.epochs > 1 else ''}"
    found = (f"{seeds} seeds x {epochs} as one pack ({details['strategy']}); last epoch "
             f"{last['epoch_seconds']:.1f} s, {last['samples_per_second_pack']:,.0f} samples/s" if last else "no epoch")
    return Step(name, FAILED if why else PASSED, why or found, details=details)


def tolerance_pp(epoch: int) -> float:
    """The difference allowed at this epoch: the first epoch's steep climb varies most from stream to stream."""
    return FIRST_EPOCH_TOLERANCE_PP if epoch == 1 else TOLERANCE_PP


def compare_with_cpu(check: Check) -> Step:
    """Validation accuracy per seed and epoch against the committed CPU runs of the same run ids."""
    reference = check.reference / ("quick" if check.quick else "full")
    rows, problems = [], []
    for rule in RULES:
        ours = read_runs(check.out / "runs" / rule)
        theirs = {run_id: log for run_id, log in read_runs(reference).items() if run_id in ours}
        if not theirs:
            problems.append(f"no {rule} run matches a reference run in {reference}")
        for run_id, cpu in theirs.items():
            device = ours[run_id].set_index("epoch")["val_acc"]
            for epoch, cpu_acc in zip(cpu["epoch"], cpu["val_acc"]):
                if epoch not in device.index:
                    problems.append(f"{run_id} has no epoch {epoch}")
                    continue
                rows.append({"run_id": run_id, "rule": rule, "seed": int(cpu["seed"].iloc[0]), "epoch": int(epoch),
                             "cpu_val_acc": float(cpu_acc), "device_val_acc": float(device[epoch]),
                             "abs_diff_pp": 100 * abs(float(device[epoch]) - float(cpu_acc)),
                             "tolerance_pp": tolerance_pp(int(epoch))})
    worst = max((r["abs_diff_pp"] for r in rows), default=None)
    details = {"tolerance_pp": {"epoch 1": FIRST_EPOCH_TOLERANCE_PP, "later": TOLERANCE_PP},
               "max_abs_diff_pp": worst, "rows": rows, "reference": str(reference)}
    problems += [f"{r['rule']} seed {r['seed']} epoch {r['epoch']}: {r['abs_diff_pp']:.1f} points apart "
                 f"(tolerance {r['tolerance_pp']:.0f})" for r in rows if r["abs_diff_pp"] > r["tolerance_pp"]]
    if problems:
        return Step("compare_cpu", FAILED, "; ".join(problems), details=details)
    return Step("compare_cpu", PASSED, f"{len(rows)} seed-epochs within tolerance; the largest difference "
                f"{worst:.2f} percentage points", details=details)


def bench_step(check: Check) -> Step:
    """benchmarks/bench_step.py: a Q-AGREL step within 1.1x of a plain BP step, loccon within 3x of conv."""
    results_file = check.out / "bench_step.json"
    outcome = run_tool(check, "bench_step", [str(BENCHMARKS / "bench_step.py"), "--device", check.device,
                                             "--steps", str(check.sizes.bench_steps),
                                             "--inputs", check.sizes.bench_inputs, "--json", str(results_file)],
                       TIMEOUTS["bench_step"])
    results = json.loads(results_file.read_text()) if results_file.exists() else {"cases": [], "loccon_over_conv": {}}
    ratios = [c["qagrel_over_plain"] for c in results["cases"]]
    targets = [target("qagrel step / plain BP step, worst case", max(ratios, default=None), "<=", 1.1, check.judged),
               target("loccon step / conv step, worst case", max(results["loccon_over_conv"].values(), default=None),
                      "<=", 3.0, check.judged)]
    details = {"results": results, "targets": targets, "peak_memory": outcome.peak}
    why = failure(outcome) or "; ".join(missed(targets)) or None
    found = ", ".join(f"{t['name'].split(',')[0]} {t['value']:.2f}x" for t in targets if t["value"] is not None)
    return Step("bench_step", FAILED if why else PASSED, why or found, details=details)


def bench_pack(check: Check) -> Step:
    """benchmarks/bench_pack.py: on CUDA a K=10 vmap pack >= 5x the samples/s of 10 sequential runs."""
    results_file = check.out / "bench_pack.json"
    sizes = check.sizes
    outcome = run_tool(check, "bench_pack", [
        str(BENCHMARKS / "bench_pack.py"), "--device", check.device, "--ks", sizes.pack_ks, "--archs", sizes.pack_archs,
        "--rules", sizes.pack_rules, "--min-seconds", str(sizes.pack_min_seconds), "--rounds", str(sizes.pack_rounds),
        "--json", str(results_file)], TIMEOUTS["bench_pack"])
    results = json.loads(results_file.read_text()) if results_file.exists() else {"rows": []}
    k10 = [r["vmap_over_seq"] for r in results["rows"] if r["k"] == 10]
    # The target is a GPU's: on a CPU packs run in turn (loop), so vmap's speed there decides nothing.
    targets = [target("K=10 vmap pack / 10 sequential runs, worst case", min(k10, default=None), ">=", 5.0,
                      check.judged)] if check.device == "cuda" else []
    details = {"results": results, "targets": targets, "peak_memory": outcome.peak}
    why = failure(outcome) or "; ".join(missed(targets)) or None
    best = max(results["rows"], key=lambda r: r["vmap_over_seq"], default=None)
    found = (f"{len(results['rows'])} cases; vmap / sequential up to {best['vmap_over_seq']:.2f}x "
             f"({best['arch']} {best['rule']} K={best['k']})" if best else "no case measured")
    if k10:
        found += f"; K=10 worst {min(k10):.2f}x"
    return Step("bench_pack", FAILED if why else PASSED, why or found, details=details)


STEPS: list[tuple[str, Callable[[Check], Step]]] = [
    ("environment", probe_environment),
    ("cuda_tests", cuda_tests),
    ("train_qagrel", lambda check: train(check, "qagrel")),
    ("train_bp", lambda check: train(check, "bp")),
    ("compare_cpu", compare_with_cpu),
    ("bench_step", bench_step),
    ("bench_pack", bench_pack),
]


def run_steps(check: Check, steps: list[tuple[str, Callable[[Check], Step]]]) -> list[Step]:
    """Run the steps in order; whatever one does (fail, time out, raise), the next one runs.

    Once the environment step fails, the others are recorded as skipped: without
    the device they would only fail again, slowly.
    """
    done: list[Step] = []
    for name, run in steps:
        if done and done[0].name == "environment" and done[0].status == FAILED:
            done.append(Step(name, SKIPPED, "not run: the environment step failed"))
            continue
        start = time.monotonic()
        try:
            step = run(check)
        except BudgetSpent as err:
            step = Step(name, FAILED, str(err))
        except Exception as err:  # a bug in one step's parsing must not cost the others their turn
            step = Step(name, FAILED, f"{type(err).__name__}: {err}")
        step.seconds = round(time.monotonic() - start, 1)
        print(f"{step.name:13} {step.status:7} {step.seconds:6.1f} s  {step.summary}", flush=True)
        done.append(step)
    return done


# ---------------------------------------------------------------- data

def mnist_files(data_dir: Path) -> list[Path]:
    """The four MNIST IDX files under `data_dir`/MNIST/raw, plain or .gz, or a one-line CheckError."""
    raw = data_dir / "MNIST" / "raw"
    found = [next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None) for name in MNIST_FILES]
    if None in found:
        raise CheckError(f"MNIST not found in {raw}: expected {', '.join(MNIST_FILES)} (or .gz); "
                         "make a copy with --prepare-data ../shared/data")
    return found  # type: ignore[return-value]


def read_bytes(path: Path) -> bytes:
    """A file's contents, gunzipped when it ends in .gz."""
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def prepare_data(source: Path, dest: Path) -> None:
    """Write gzipped copies of `source`'s MNIST into `dest` (inside the checkout) and say how to carry them."""
    files = mnist_files(source)
    try:
        carry = dest.resolve().relative_to(REPO)
    except ValueError:
        raise CheckError(f"--data-dir {dest} is outside the checkout {REPO}: the device call carries only "
                         "paths inside it") from None
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in zip(MNIST_FILES, files):
        # mtime 0: the same data gives the same bytes, whenever it is prepared.
        (raw / f"{name}.gz").write_bytes(gzip.compress(read_bytes(path), compresslevel=9, mtime=0))
    size = sum(p.stat().st_size for p in raw.glob("*.gz")) / 1e6
    print(f"wrote {raw}: 4 gzipped IDX files, {size:.1f} MB (the device call carries at most 64 MB)")
    print("device call, from the repository root:")
    print(f"  command:   PYTHONPATH=. python3 benchmarks/gpu_check.py --data-dir {carry}")
    print(f'  carry:     ["{carry}"]')
    print(f"  timeout_s: {FULL.budget_seconds + 30:.0f}   (the script stops its steps by {FULL.budget_seconds:.0f} s)")
    print("then here, with the files it sent back:")
    print("  python benchmarks/gpu_check.py --from-json FILES_AT/gpu_check.json --update-docs docs/performance.md")


def slice_idx(data: bytes, count: int) -> bytes:
    """The first `count` items of an IDX file (a big-endian header of dimensions, then uint8 items)."""
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    item = 1
    for d in dims[1:]:
        item *= d
    header = data[:4] + b"".join(d.to_bytes(4, "big") for d in [count, *dims[1:]])
    start = 4 + 4 * ndim
    return header + data[start:start + count * item]


def quick_slice(data_dir: Path, dest: Path) -> Path:
    """A small MNIST for --quick: the first 2,000 training and 500 test images (evaluation dominates otherwise)."""
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in zip(MNIST_FILES, mnist_files(data_dir)):
        count = QUICK_TRAIN_IMAGES if name.startswith("train") else QUICK_TEST_IMAGES
        (raw / name).write_bytes(slice_idx(read_bytes(path), count))
    return dest


# ---------------------------------------------------------------- reporting

def fmt_bytes(n: int | None) -> str:
    """Bytes as GiB or MiB; '-' when unknown."""
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_met(met: bool | None) -> str:
    """yes / NO / not judged."""
    return "not judged" if met is None else "yes" if met else "**NO**"


def render(report: dict[str, Any]) -> str:
    """The Markdown summary of a gpu_check.json: steps, targets, the real run, peak GPU memory."""
    steps = report["steps"]
    counts = {s: sum(step["status"] == s for step in steps) for s in (PASSED, FAILED, SKIPPED)}
    env = next((s["details"] for s in steps if s["name"] == "environment"), {})
    device = (f"{env['device_name']} (CUDA {env['cuda']})" if env.get("device_name")
              else f"a CPU ({env.get('cpu', '?')}, {env.get('cpu_threads', '?')} threads)")
    lines = [f"Measured {report['started'][:16].replace('T', ' ')} UTC, `{report['mode']}` mode on {device}, "
             f"torch {env.get('torch', '?')}. Steps: {counts[PASSED]} passed, "
             f"{counts[FAILED]} failed, {counts[SKIPPED]} skipped, in {report['seconds']:.0f} s.", ""]
    if report["mode"] == "quick":
        lines += ["(`--quick`: tiny sizes that keep the script working; not a measurement of the GPU path.)", ""]
    lines += ["| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['summary'].replace('|', '/')} |"
              for s in steps]
    targets = [t for s in steps for t in s["details"].get("targets", [])]
    if targets:
        lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
        lines += [f"| {t['name']} {t['op']} {t['limit']}x | "
                  f"{'-' if t['value'] is None else format(t['value'], '.2f') + 'x'} | {fmt_met(t['met'])} |"
                  for t in targets]
    lines += render_training(steps)
    peaks = [(s["name"], s["details"]["peak_memory"]) for s in steps if s["details"].get("peak_memory")]
    if any(p["max_memory_allocated"] for _, p in peaks):
        lines += ["", "| step | peak GPU memory allocated | reserved |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {fmt_bytes(p['max_memory_allocated'])} | {fmt_bytes(p['max_memory_reserved'])} |"
                  for name, p in peaks]
    return "\n".join(lines) + "\n"


def render_training(steps: list[dict[str, Any]]) -> list[str]:
    """The real run's table: per rule and epoch, the pack's speed and its distance from the CPU runs."""
    compare = next((s["details"] for s in steps if s["name"] == "compare_cpu"), {})
    diffs: dict[tuple[str, int], float] = {}
    for row in compare.get("rows", []):
        key = (row["rule"], row["epoch"])
        diffs[key] = max(diffs.get(key, 0.0), row["abs_diff_pp"])
    lines = ["", "| rule | epoch | runs in pack | epoch s | samples/s per run | samples/s, pack | mean val acc | "
             "max abs diff vs CPU (points) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = 0
    for step in steps:
        if not step["name"].startswith("train_"):
            continue
        rule = step["name"].removeprefix("train_")
        for e in step["details"].get("epochs", []):
            diff = diffs.get((rule, e["epoch"]))
            lines.append(f"| {rule} | {e['epoch']} | {e['runs']} | {e['epoch_seconds']:.1f} | "
                         f"{e['samples_per_second_per_run']:,.0f} | {e['samples_per_second_pack']:,.0f} | "
                         f"{100 * e['mean_val_acc']:.2f} % | {'-' if diff is None else f'{diff:.2f}'} |")
            rows += 1
    if not rows:
        return []
    return lines + ["", f"Tolerance against the CPU, per seed and epoch: {FIRST_EPOCH_TOLERANCE_PP:.0f} percentage "
                    f"points of validation accuracy at epoch 1, {TOLERANCE_PP:.0f} after (a CUDA run draws dropout "
                    "and exploration from another random stream; the comparison catches gross CUDA-only bugs)."]


def update_docs(docs: Path, body: str) -> None:
    """Replace what lies between the gpu-check markers in `docs` with `body`."""
    if not docs.is_file():
        raise CheckError(f"--update-docs: no file {docs}")
    text = docs.read_text()
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise CheckError(f"--update-docs: {docs} has no {DOCS_BEGIN} ... {DOCS_END} block")
    docs.write_text(text[:begin + len(DOCS_BEGIN)] + "\n" + body + text[end:])


def write_report(out: Path, report: dict[str, Any]) -> None:
    """gpu_check.json and summary.md in `out`."""
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text("# GPU check\n\n" + render(report))


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; errors are one line."""
    parser = OneLineErrors(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"holds MNIST/raw/ (plain or .gz); default: $QAGREL_DATA, else {DEFAULT_DATA}")
    parser.add_argument("--out", type=Path, default=None, help="where results go; default: $OUT, else ./gpu-check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device: keeps the script working")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: cuda for the full check; for --quick, cuda when there is one, else cpu")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all steps (default {FULL.budget_seconds:.0f}; --quick "
                        f"{QUICK.budget_seconds:.0f})")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the CPU runs to compare with")
    parser.add_argument("--prepare-data", type=Path, metavar="SRC", default=None,
                        help="write gzipped copies of SRC/MNIST/raw into --data-dir, print the device call, stop")
    parser.add_argument("--update-docs", type=Path, metavar="FILE", default=None,
                        help="also put the summary between the gpu-check markers of FILE")
    parser.add_argument("--from-json", type=Path, metavar="JSON", default=None,
                        help="run nothing: render an existing gpu_check.json (with --update-docs)")
    return parser.parse_args(argv)


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    print(f"gpu_check.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve_device(requested: str, quick: bool) -> str:
    """The device the steps use: the full check is a CUDA check; --quick takes what there is."""
    if requested != "auto":
        return requested
    if not quick:
        return "cuda"
    import torch  # only here: the steps' own processes are what use the device

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every step, then gpu_check.json and summary.md in the output folder; returns the report."""
    sizes = QUICK if args.quick else FULL
    data_dir = (args.data_dir or Path(os.environ.get("QAGREL_DATA") or DEFAULT_DATA)).resolve()
    mnist_files(data_dir)
    out = (args.out or Path(os.environ.get("OUT") or "gpu-check")).resolve()
    shutil.rmtree(out / "runs", ignore_errors=True)  # run folders left from before would be resumed, not trained
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    check = Check(out=out, data_dir=data_dir, device=resolve_device(args.device, args.quick), quick=args.quick,
                  sizes=sizes, deadline=clock + (args.budget or sizes.budget_seconds),
                  reference=args.reference.resolve(),
                  train_data=quick_slice(data_dir, out / "quick-data") if args.quick else data_dir)
    print(f"gpu check ({'quick' if args.quick else 'full'}, {check.device}) -> {out}", flush=True)
    steps = run_steps(check, STEPS)
    report = {"mode": "quick" if args.quick else "full", "device": check.device, "started": started.isoformat(),
              "seconds": round(time.monotonic() - clock, 1), "passed": all(s.status != FAILED for s in steps),
              "sizes": asdict(sizes), "steps": [asdict(s) for s in steps]}
    write_report(out, report)
    print(f"{'all steps passed' if report['passed'] else 'FAILED'}; wrote {out / 'gpu_check.json'} and "
          f"{out / 'summary.md'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Prepare data, render a report, or run the check; the exit status says whether every step passed."""
    args = parse_args(argv)
    try:
        if args.prepare_data:
            prepare_data(args.prepare_data, args.data_dir or DEFAULT_DATA)
            return 0
        if args.from_json:
            try:
                report = json.loads(args.from_json.read_text())
            except (OSError, ValueError) as err:
                raise CheckError(f"--from-json: cannot read {args.from_json}: {err}") from None
            print(render(report), end="")
        else:
            report = run_check(args)
        if args.update_docs:
            update_docs(args.update_docs, render(report))
        return 0 if report["passed"] else 1
    except CheckError as err:
        fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
