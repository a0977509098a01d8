"""benchmarks/gpu_check.py: the GPU check runs end to end (--quick, on the CPU) and reports every step.

The full check needs a CUDA machine; here its --quick mode runs the same steps
at tiny sizes on real MNIST, once for the module (about a minute on 2 cores),
and the tests read what it wrote. The rest drive the script's pieces directly.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
STEPS = ["environment", "cuda_tests", "train_qagrel", "train_bp", "compare_cpu", "bench_step", "bench_pack"]
CUDA_STEPS = ["cuda_tests", "train_qagrel", "train_bp", "bench_step", "bench_pack"]


gpu_check = load_script(SCRIPT)


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick(mnist_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    return run_script("--quick", "--data-dir", str(mnist_dir), "--out", str(out), timeout=300), out


@pytest.fixture(scope="module")
def report(quick) -> dict:
    return json.loads((quick[1] / "gpu_check.json").read_text())


def step(report: dict, name: str) -> dict:
    return next(s for s in report["steps"] if s["name"] == name)


def test_the_quick_check_passes_without_a_gpu(quick):
    result, _ = quick
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_json_records_every_step_in_order_with_its_status_and_a_one_line_result(report):
    assert [s["name"] for s in report["steps"]] == STEPS
    for s in report["steps"]:
        assert s["status"] in ("passed", "skipped"), s
        assert s["summary"] and "\n" not in s["summary"]
    assert report["passed"] is True and report["mode"] == "quick"


def test_the_summary_has_a_row_per_step_with_its_status(quick, report):
    summary = (quick[1] / "summary.md").read_text()
    for s in report["steps"]:
        assert f"| {s['name']} | {s['status']} |" in summary


def test_the_quick_runs_agree_with_the_committed_cpu_reference(report):
    compare = step(report, "compare_cpu")["details"]
    assert len(compare["rows"]) == 4  # 2 rules x seeds 0-1 x 1 epoch
    assert all(row["abs_diff_pp"] <= row["tolerance_pp"] for row in compare["rows"])


def test_each_training_pack_reports_its_epoch_time_and_samples_per_second(report):
    for rule in ("qagrel", "bp"):
        (epoch,) = step(report, f"train_{rule}")["details"]["epochs"]
        assert epoch["runs"] == 2 and epoch["epoch_seconds"] > 0
        assert epoch["samples_per_second_pack"] == pytest.approx(2 * epoch["samples_per_second_per_run"])


def test_the_benchmarks_figures_are_parsed_into_the_json(report):
    assert {c["arch"] for c in step(report, "bench_step")["details"]["results"]["cases"]} == {"conv", "loccon"}
    assert [r["k"] for r in step(report, "bench_pack")["details"]["results"]["rows"]] == [1, 2]


def test_every_step_that_may_use_cuda_reports_its_own_peak_memory(report):
    for name in CUDA_STEPS:
        peak = step(report, name)["details"]["peak_memory"]
        assert set(peak) == {"max_memory_allocated", "max_memory_reserved"}
        assert (peak["max_memory_allocated"] is None) == (not torch.cuda.is_available())  # null: no CUDA here


def test_the_run_folders_come_back_without_checkpoints(quick):
    assert list((quick[1] / "runs").rglob("log.parquet"))
    assert not list((quick[1] / "runs").rglob("_checkpoint.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_the_full_check_without_cuda_fails_at_the_environment_step_and_skips_the_rest(mnist_dir, tmp_path):
    result = run_script("--data-dir", str(mnist_dir), "--out", str(tmp_path))
    assert result.returncode == 1
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["failed"] + ["skipped"] * (len(STEPS) - 1)
    assert "needs CUDA" in steps[0]["summary"]


def test_a_command_that_hangs_is_killed_at_its_timeout(tmp_path):
    start = time.monotonic()
    rc, _ = gpu_check.run_command([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log", 1,
                                  dict(os.environ))
    assert rc is None and time.monotonic() - start < 10


def check_for(out: Path, seconds_left: float = 60):
    return gpu_check.Check(out=out, data_dir=out, device="cpu", quick=True, sizes=gpu_check.QUICK,
                           deadline=time.monotonic() + seconds_left, reference=out, train_data=out)


def test_a_step_that_fails_is_recorded_and_the_next_step_still_runs(tmp_path):
    def broken(check):
        raise KeyError("no such column")

    def fine(check):
        return gpu_check.Step("fine", "passed", "ok")

    steps = gpu_check.run_steps(check_for(tmp_path), [("broken", broken), ("fine", fine)])
    assert [(s.name, s.status) for s in steps] == [("broken", "failed"), ("fine", "passed")]
    assert "no such column" in steps[0].summary


def test_a_step_left_when_the_budget_is_spent_fails_without_running(tmp_path):
    (result,) = gpu_check.run_steps(check_for(tmp_path, seconds_left=0), [("bench_step", gpu_check.bench_step)])
    assert result.status == "failed" and "budget" in result.summary
    assert not (tmp_path / "logs").exists()


def test_update_docs_replaces_only_the_marked_block(report, tmp_path):
    docs = tmp_path / "performance.md"
    original = (REPO / "docs" / "performance.md").read_text()
    docs.write_text(original)
    gpu_check.update_docs(docs, gpu_check.render(report))
    text = docs.read_text()
    before, after = original.split(gpu_check.DOCS_BEGIN)[0], original.split(gpu_check.DOCS_END)[1]
    assert text.startswith(before) and text.endswith(after)
    assert "| train_qagrel | passed |" in text and "Not measured yet" not in text


def test_until_a_gpu_run_the_docs_say_not_measured():
    block = (REPO / "docs" / "performance.md").read_text().split(gpu_check.DOCS_BEGIN)[1].split(gpu_check.DOCS_END)[0]
    assert "not measured" in block.lower()


def test_from_json_renders_a_report_and_updates_the_docs_without_running_anything(quick, tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text(f"# P\n{gpu_check.DOCS_BEGIN}\nold\n{gpu_check.DOCS_END}\n")
    result = run_script("--from-json", str(quick[1] / "gpu_check.json"), "--update-docs", str(docs))
    assert result.returncode == 0, result.stderr
    assert "| compare_cpu | passed |" in result.stdout and "old" not in docs.read_text()


def test_docs_without_the_markers_are_a_one_line_error(quick, tmp_path):
    docs = tmp_path / "plain.md"
    docs.write_text("# nothing to replace\n")
    result = run_script("--from-json", str(quick[1] / "gpu_check.json"), "--update-docs", str(docs))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "gpu-check:begin" in result.stderr


def test_missing_mnist_is_a_one_line_error(tmp_path):
    result = run_script("--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "MNIST not found" in result.stderr


def fake_mnist(root: Path) -> dict[str, bytes]:
    """Four IDX-named files with distinct contents (prepare_data copies bytes; it does not parse them)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    contents = {name: name.encode() * 50 for name in gpu_check.MNIST_FILES}
    for name, data in contents.items():
        (raw / name).write_bytes(data)
    return contents


def test_prepare_data_writes_gzipped_copies_and_prints_the_device_call(tmp_path, monkeypatch, capsys):
    contents = fake_mnist(tmp_path / "src")
    checkout = (tmp_path / "checkout").resolve()
    monkeypatch.setattr(gpu_check, "REPO", checkout)
    gpu_check.prepare_data(tmp_path / "src", checkout / "gpu-check-data")
    raw = checkout / "gpu-check-data" / "MNIST" / "raw"
    assert {name: gzip.decompress((raw / f"{name}.gz").read_bytes()) for name in contents} == contents
    printed = capsys.readouterr().out
    assert 'carry:     ["gpu-check-data"]' in printed
    assert "python3 benchmarks/gpu_check.py --data-dir gpu-check-data" in printed


def test_prepare_data_outside_the_checkout_is_a_one_line_error(tmp_path):
    fake_mnist(tmp_path / "src")
    result = run_script("--prepare-data", str(tmp_path / "src"), "--data-dir", str(tmp_path / "elsewhere"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "outside the checkout" in result.stderr


def test_the_quick_slice_keeps_the_first_items_under_a_header_that_counts_them():
    idx = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (3, 2, 2)) + bytes(range(12))
    assert gpu_check.slice_idx(idx, 2) == bytes([0, 0, 8, 3]) + b"".join(
        d.to_bytes(4, "big") for d in (2, 2, 2)) + bytes(range(8))


def test_pytest_summary_line_and_counts_are_read_from_its_output():
    output = "....s\n=== short test summary info ===\nSKIPPED [1] x\n5 passed, 1 skipped, 3 deselected in 2.50s\n"
    assert gpu_check.pytest_counts(output) == ("5 passed, 1 skipped, 3 deselected in 2.50s",
                                               {"passed": 5, "skipped": 1, "deselected": 3})
