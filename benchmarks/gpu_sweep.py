"""A sweep on a borrowed GPU machine for a fixed time; its finished runs come back as one archive.

    python benchmarks/gpu_sweep.py prepare ../shared/data                      # here: the data, into gpu-sweep-data/
    PYTHONPATH=. python3 benchmarks/gpu_sweep.py run sweeps/table1-cpu.yaml --seconds 480   # there
    python benchmarks/gpu_sweep.py unpack FILES/finished-runs.tar.gz --results RESULTS        # here again

For a machine lent for minutes (a rented GPU, a short allocation) that reaches no
network and hands back only a few files. `prepare` copies into the checkout what
`run` needs there: gzipped MNIST, and for CIFAR-10 either torchvision's batches
or, smaller, an archive of images with the script that builds the batches from it.
`run` trains the sweep file with `qagrel sweep` (seed packs, several workers
sharing the GPU) into the checkout's results folder, whose committed runs count as
done, and stops it at the deadline (SIGTERM: the sweep stops as on Ctrl-C). It then
writes to OUT (--out, else $OUT, else ./gpu-sweep/):

  finished-runs.tar.gz  every run that finished there: _config.yaml, _summary.json and
                        log.parquet (no checkpoint: an unfinished run stays to be trained)
  gpu_sweep.json        device, seconds, and each finished run's status, stop epoch and wall time
  sweep.log             the sweep's output

`unpack` puts the archive's runs into RESULTS/<sweep name>/<run id>/. A run already
finished there is kept as it is; an unfinished one (a partial run, a checkpoint) is
replaced by the finished run; one that a process here is training now is left alone,
and the exit status is 1: stop that sweep and unpack again.

A seed trained on a GPU is a different sample from the same seed on a CPU (the device
draws its own dropout and exploration stream; benchmarks/gpu_check.py), and its
summary names the device, so a row of mixed devices says which run came from where.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's qagrel_cli, installed or not

from benchmarks.gpu_check import CheckError, mnist_files, read_bytes  # noqa: E402  (after the path)
from qagrel_cli.core import run_folder  # noqa: E402
from qagrel_cli.core.config import QagrelError  # noqa: E402
from qagrel_cli.sweeps.collect import Collected, place_finished_run  # noqa: E402
from qagrel_cli.sweeps.ledger import RunStatus, run_status  # noqa: E402
from qagrel_cli.sweeps.sweep_file import load_sweep  # noqa: E402

DEFAULT_DATA = Path("gpu-sweep-data")
ARCHIVE = "finished-runs.tar.gz"
CIFAR_BATCHES = "cifar-10-batches-py"
# What `prepare` copies for CIFAR-10 when the batches are not there: the image archive and the script that
# builds the batches from it, placed where that script looks (<tools>/../data/<archive>).
CIFAR_IMAGES = Path("data") / "cifar10-images.tar.gz"
CIFAR_BUILDER = Path("tools") / "build_cifar10.py"
STOP_GRACE_SECONDS = 30  # after SIGTERM, for workers to stop and the sweep to say what it did
ARCHIVE_RESERVE_SECONDS = 20  # of --seconds, kept back for the archive and the report


class SweepError(Exception):
    """Bad input: one line, exit status 2."""


# ---------------------------------------------------------------- prepare (here)

def prepare(source: Path, dest: Path) -> None:
    """Copy MNIST (gzipped) and CIFAR-10 (batches, else the image archive and its builder) from `source` to `dest`."""
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in mnist_files(source):
        (raw / f"{path.name.removesuffix('.gz')}.gz").write_bytes(
            path.read_bytes() if path.suffix == ".gz" else gzip.compress(read_bytes(path), compresslevel=6, mtime=0))
    if (source / CIFAR_BATCHES).is_dir():
        shutil.copytree(source / CIFAR_BATCHES, dest / CIFAR_BATCHES, dirs_exist_ok=True)
    elif (source / CIFAR_IMAGES.name).is_file():
        for src, dst in ((source / CIFAR_IMAGES.name, dest / CIFAR_IMAGES),
                         (source.parent / CIFAR_BUILDER, dest / CIFAR_BUILDER)):
            if not src.is_file():
                raise SweepError(f"{src} not found: CIFAR-10's images need the script that builds its batches")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {dest}: {size:.1f} MiB (name it in the device call's carry)")


def build_cifar10(data_dir: Path) -> None:
    """Build CIFAR-10's batches from the carried image archive, unless they are there already."""
    if (data_dir / CIFAR_BATCHES).is_dir():
        return
    builder = data_dir / CIFAR_BUILDER
    if not builder.is_file():
        raise SweepError(f"{data_dir} holds neither {CIFAR_BATCHES}/ nor {CIFAR_BUILDER}: run prepare first")
    if subprocess.run([sys.executable, str(builder), str(data_dir)]).returncode != 0:  # its error is printed above
        raise SweepError(f"{builder} failed: CIFAR-10's batches were not built")


# ---------------------------------------------------------------- run (on the GPU machine)

def run(sweep_file: Path, *, data_dir: Path, results: Path, out: Path, seconds: float, workers: int,
        pack: int) -> dict[str, Any]:
    """Train `sweep_file` until done or `seconds` are spent; write the finished runs' archive and report to `out`."""
    start = time.monotonic()
    sweep_file, data_dir, results = sweep_file.resolve(), data_dir.resolve(), results.resolve()  # the sweep runs in REPO
    sweep = load_sweep(sweep_file)
    if any(c.dataset.value == "cifar10" for c in sweep.configs):
        build_cifar10(data_dir)
    done_before = {c.run_id for c in sweep.configs if run_status(sweep.run_dir(results, c)) == RunStatus.done}
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qagrel_cli", "sweep", str(sweep_file), "--workers", str(workers),
               "--pack", str(pack), "--results", str(results), "--data-dir", str(data_dir), "--no-download"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    deadline = seconds - ARCHIVE_RESERVE_SECONDS - STOP_GRACE_SECONDS - (time.monotonic() - start)
    with open(out / "sweep.log", "w") as log:
        sweep_process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own group: the stop reaches its workers
        try:
            code: int | None = sweep_process.wait(timeout=max(deadline, 1))
            stopped = False
        except subprocess.TimeoutExpired:
            stopped = True
            sweep_process.send_signal(signal.SIGTERM)  # the sweep stops its workers, as on Ctrl-C
            try:
                code = sweep_process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(sweep_process.pid, signal.SIGKILL)
                code = sweep_process.wait()
    finished = [c for c in sweep.configs
                if c.run_id not in done_before and run_folder.is_finished(sweep.run_dir(results, c))]
    runs = []
    with tarfile.open(out / ARCHIVE, "w:gz") as archive:
        for config in finished:
            run_dir = sweep.run_dir(results, config)
            for name in run_folder.RESULT_FILES:  # nothing that resumes a run
                archive.add(run_dir / name, arcname=f"{sweep.name}/{config.run_id}/{name}")
            summary = run_folder.read_summary(run_dir) or {}
            runs.append({key: summary.get(key) for key in ("run_id", "status", "stop_epoch", "test_acc_at_best",
                                                           "wall_seconds", "device")})
    report = {"sweep": sweep.name, "seconds": round(time.monotonic() - start, 1), "stopped_at_deadline": stopped,
              "sweep_exit_status": code, "workers": workers, "pack": pack, "runs_finished": len(finished),
              "runs_left": len(sweep.configs) - len(done_before) - len(finished), "runs": runs}
    (out / "gpu_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(finished)} run(s) finished, {report['runs_left']} left; wrote {out / ARCHIVE}")
    return report


# ---------------------------------------------------------------- unpack (here)

def unpack(archive: Path, results: Path) -> tuple[list[str], list[str], list[str]]:
    """Put the archive's finished runs into `results`: (added, kept because finished here, refused as running here)."""
    with tarfile.open(archive) as tar:  # an unreadable archive: one line, and nothing written
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=results, prefix="_unpack-") as scratch:
            tar.extractall(scratch, filter="data")  # the data filter refuses absolute paths and links out of scratch
            placed = _place_runs(Path(scratch), results, archive)
    return placed.added, placed.kept, placed.running


def _place_runs(scratch: Path, results: Path, archive: Path) -> Collected:
    """Move each extracted run into `results` unless one there is finished or being trained (as `qagrel
    collect` places runs)."""
    runs = {f"{run_dir.parent.name}/{run_dir.name}": run_dir for run_dir in sorted(scratch.glob("*/*"))}
    for name, run_dir in runs.items():  # all checked before any is placed: a bad archive changes nothing
        if not run_folder.is_finished(run_dir):
            raise SweepError(f"{archive}: {name} is not a finished run")
    placed = Collected()
    for name, run_dir in runs.items():
        placed.note(name, place_finished_run(run_dir, results / name))
    return placed


# ---------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    p = verbs.add_parser("prepare", help="copy the data a run needs into the checkout")
    p.add_argument("source", type=Path, help="data folder with MNIST/raw/ and CIFAR-10 (batches or image archive)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DATA)
    r = verbs.add_parser("run", help="train a sweep file until done or --seconds are spent")
    r.add_argument("sweep_file", type=Path)
    r.add_argument("--seconds", type=float, required=True, help="wall time for all of it, archive included")
    r.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    r.add_argument("--results", type=Path, default=REPO / "results")
    r.add_argument("--workers", type=int, default=8, help="sweep workers sharing the GPU (default 8)")
    r.add_argument("--pack", type=int, default=10, help="seeds per pack (default 10)")
    r.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu-sweep/")
    u = verbs.add_parser("unpack", help="put an archive's finished runs into a results folder")
    u.add_argument("archive", type=Path)
    u.add_argument("--results", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verb == "prepare":
            prepare(args.source, args.dest)
        elif args.verb == "run":
            out = args.out or Path(os.environ.get("OUT") or "gpu-sweep")
            run(args.sweep_file, data_dir=args.data_dir, results=args.results, out=out, seconds=args.seconds,
                workers=args.workers, pack=args.pack)
        else:
            added, kept, running = unpack(args.archive, args.results)
            print(f"added {len(added)} finished run(s); kept {len(kept)} already finished here"
                  + (f"; left {len(running)} being trained here: stop that sweep and unpack again" if running else ""))
            for name in running:
                print(f"  being trained here: {name}")
            return 1 if running else 0
    except (SweepError, CheckError, QagrelError, OSError, tarfile.TarError) as err:  # QagrelError: a bad sweep file
        fail(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
