"""benchmarks/bench_workers.py: one worker's step alone and beside the others, for each network of a sweep."""

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_workers.py"
TINY_SWEEP = """
name: tiny
grid: {dataset: mnist, arch: fc, fc: "20", rule: [qagrel, bp]}
seeds: 3
"""


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_each_distinct_network_of_the_sweep_is_timed_alone_and_beside_the_other_worker(tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY_SWEEP)
    result = bench(str(sweep), "--workers", "2", "--threads", "1", "--steps", "2", "--rounds", "1",
                   "--json", str(tmp_path / "w.json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "w.json").read_text())
    # 6 runs, 2 networks: the seeds share a network
    assert [n["network"] for n in figures["networks"]] == ["MNIST Full 20 Q-AGREL", "MNIST Full 20 Error-BP sgd"]
    for n in figures["networks"]:
        assert n["alone_ms"] > 0 and n["beside_ms"] > 0
        assert n["beside_over_alone"] == n["beside_ms"] / n["alone_ms"]
    assert (figures["workers"], figures["threads"]) == (2, 1)


def test_a_missing_sweep_file_is_a_one_line_error(tmp_path):
    result = bench(str(tmp_path / "nowhere.yaml"))
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_one_worker_is_refused_since_the_estimate_already_times_it(tmp_path):
    result = bench(str(tmp_path / "any.yaml"), "--workers", "1")
    assert result.returncode == 2 and "--workers: at least 2" in result.stderr
