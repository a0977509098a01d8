"""benchmarks/gpu_sweep.py: a sweep for a fixed time on a borrowed machine, its finished runs brought back.

The GPU is incidental to what is tested here: `run` drives `qagrel sweep` on whatever device
there is, so these tests run it on the CPU with tiny networks.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from types import SimpleNamespace

import pytest
import yaml

from conftest import MNIST_FIXTURE, REPO, assert_one_line_error, load_script
from qagrel_cli.core import run_folder
from qagrel_cli.core.data import MNIST_FILES
from qagrel_cli.sweeps.ledger import RunStatus, run_status

SCRIPT = REPO / "benchmarks" / "gpu_sweep.py"
# Two seeds of a tiny fully connected network: each run takes a second or two.
TINY = {"name": "tiny", "grid": {"dataset": "mnist", "arch": "fc", "fc": "16", "rule": "qagrel", "train_size": 200,
                                 "max_epochs": 1, "device": "cpu"}, "seeds": 2}


gpu_sweep = load_script(SCRIPT)


def script_result(exit_info, capsys) -> SimpleNamespace:
    """The script's exit as a CLI result (exit_code, output) for assert_one_line_error."""
    captured = capsys.readouterr()
    return SimpleNamespace(exit_code=exit_info.value.code, output=captured.out + captured.err)


def archived_runs(archive) -> dict[str, list[str]]:
    with tarfile.open(archive) as tar:
        runs: dict[str, list[str]] = {}
        for name in tar.getnames():
            sweep, run_id, file = name.split("/")
            runs.setdefault(f"{sweep}/{run_id}", []).append(file)
    return {run: sorted(files) for run, files in runs.items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir):
    """One `run` of the tiny sweep to its end: (sweep file, results folder, out folder, report)."""
    root = tmp_path_factory.mktemp("gpu-sweep")
    sweep_file = root / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(TINY))
    report = gpu_sweep.run(sweep_file, data_dir=mnist_dir, results=root / "results", out=root / "out",
                           seconds=300, workers=2, pack=2)
    return sweep_file, root / "results", root / "out", report


def test_run_trains_the_sweep_and_archives_every_run_it_finished_without_checkpoints(finished):
    _, _, out, report = finished
    assert report["runs_finished"] == 2 and report["runs_left"] == 0 and not report["stopped_at_deadline"]
    expected = sorted((run_folder.CONFIG_FILE, run_folder.SUMMARY_FILE, run_folder.LOG_FILE))
    runs = archived_runs(out / gpu_sweep.ARCHIVE)
    assert len(runs) == 2 and all(files == expected for files in runs.values())
    written = json.loads((out / "gpu_sweep.json").read_text())
    assert {r["run_id"] for r in written["runs"]} == {run.split("/")[1] for run in runs}
    assert all(r["status"] == "finished" and r["stop_epoch"] == 1 for r in written["runs"])
    assert "trained 2 run(s)" in (out / "sweep.log").read_text()


def test_runs_already_finished_in_the_results_folder_are_neither_trained_nor_archived(finished, tmp_path, mnist_dir):
    sweep_file, results, _, _ = finished
    report = gpu_sweep.run(sweep_file, data_dir=mnist_dir, results=results, out=tmp_path, seconds=300,
                           workers=1, pack=1)
    assert report["runs_finished"] == 0 and report["runs_left"] == 0
    assert archived_runs(tmp_path / gpu_sweep.ARCHIVE) == {}


def test_run_stops_the_sweep_at_its_deadline_and_archives_no_unfinished_run(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setattr(gpu_sweep, "ARCHIVE_RESERVE_SECONDS", 0)
    monkeypatch.setattr(gpu_sweep, "STOP_GRACE_SECONDS", 20)
    sweep_file = tmp_path / "long.yaml"
    # A conv net's 500 epochs take far longer than the deadline, and 30 s lets the run start even on a busy
    # machine (its worker imports torch and loads the data first).
    sweep_file.write_text(yaml.safe_dump({**TINY, "name": "long", "seeds": 1,
                                          "grid": {**TINY["grid"], "arch": "conv", "fc": "500", "max_epochs": 500,
                                                   "patience": 500}}))
    report = gpu_sweep.run(sweep_file, data_dir=mnist_dir, results=tmp_path / "results", out=tmp_path / "out",
                           seconds=gpu_sweep.STOP_GRACE_SECONDS + 30, workers=1, pack=1)
    assert report["stopped_at_deadline"] and report["runs_finished"] == 0 and report["runs_left"] == 1
    assert archived_runs(tmp_path / "out" / gpu_sweep.ARCHIVE) == {}
    (run_dir,) = (tmp_path / "results" / "long").glob("mnist-*")
    assert run_status(run_dir) in (RunStatus.pending, RunStatus.partial)  # left to resume, not locked


def test_unpack_adds_finished_runs_keeps_those_finished_here_and_replaces_unfinished_ones(finished, tmp_path):
    _, _, out, _ = finished
    archive = out / gpu_sweep.ARCHIVE
    first, second = sorted(archived_runs(archive))
    (tmp_path / first).mkdir(parents=True)
    (tmp_path / first / run_folder.CHECKPOINT_FILE).write_bytes(b"a run trained here, not finished")
    added, kept, running = gpu_sweep.unpack(archive, tmp_path)
    assert (sorted(added), kept, running) == ([first, second], [], [])
    assert not (tmp_path / first / run_folder.CHECKPOINT_FILE).exists()
    assert all(run_status(tmp_path / name) == RunStatus.done for name in (first, second))
    assert gpu_sweep.unpack(archive, tmp_path) == ([], [first, second], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no scratch folder left


def test_unpack_leaves_a_run_being_trained_here_alone_and_exits_1(finished, tmp_path, capsys):
    _, _, out, _ = finished
    archive = out / gpu_sweep.ARCHIVE
    first, second = sorted(archived_runs(archive))
    fd = run_folder.try_lock(tmp_path / first)  # as a sweep worker training it here would
    try:
        assert gpu_sweep.main(["unpack", str(archive), "--results", str(tmp_path)]) == 1
    finally:
        run_folder.release_lock(tmp_path / first, fd)
    assert f"being trained here: {first}" in capsys.readouterr().out
    assert run_status(tmp_path / first) != RunStatus.done and run_status(tmp_path / second) == RunStatus.done


def test_unpack_refuses_an_archive_holding_an_unfinished_run_in_one_line(tmp_path, capsys):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"dataset: mnist\n"
        info = tarfile.TarInfo(f"tiny/run-a/{run_folder.CONFIG_FILE}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SystemExit) as exit_info:
        gpu_sweep.main(["unpack", str(archive), "--results", str(tmp_path / "results")])
    assert_one_line_error(script_result(exit_info, capsys), "tiny/run-a is not a finished run")
    assert not (tmp_path / "results" / "tiny").exists()


def test_prepare_copies_gzipped_mnist_and_cifar10s_image_archive_with_its_builder(tmp_path):
    source = tmp_path / "shared" / "data"
    shutil.copytree(MNIST_FIXTURE / "MNIST", source / "MNIST")
    (source / "cifar10-images.tar.gz").write_bytes(b"images")
    (tmp_path / "shared" / "tools").mkdir()
    (tmp_path / "shared" / "tools" / "build_cifar10.py").write_text("# builds the batches\n")
    dest = tmp_path / "gpu-sweep-data"
    gpu_sweep.prepare(source, dest)
    assert sorted(p.name for p in (dest / "MNIST" / "raw").iterdir()) == sorted(
        f"{name}.gz" for name in MNIST_FILES)
    assert (dest / gpu_sweep.CIFAR_IMAGES).read_bytes() == b"images"
    # The builder finds the archive where it looks for it: <its folder>/../data/.
    assert (dest / gpu_sweep.CIFAR_BUILDER).parent.parent / "data" / "cifar10-images.tar.gz" == \
        dest / gpu_sweep.CIFAR_IMAGES


def test_run_without_cifar10_data_for_a_cifar10_sweep_is_one_line(tmp_path, capsys):
    sweep_file = tmp_path / "cifar.yaml"
    sweep_file.write_text(yaml.safe_dump({**TINY, "grid": {**TINY["grid"], "dataset": "cifar10"}}))
    with pytest.raises(SystemExit) as exit_info:
        gpu_sweep.main(["run", str(sweep_file), "--seconds", "60", "--data-dir", str(tmp_path / "none"),
                        "--out", str(tmp_path / "out")])
    assert_one_line_error(script_result(exit_info, capsys), "run prepare first")
