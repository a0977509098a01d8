"""`qagrel report DIR`: one Markdown file of the other commands' reports, checked against a golden copy.

The golden file is the report of the committed results/feedback with its volatile provenance lines (the
date, this machine, the versions here: `VOLATILE_LABELS`) blanked. After a deliberate change to any report
it renders, rewrite it with

    python tests/test_report.py --rewrite
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, when run as a script
from conftest import REPO, assert_one_line_error  # noqa: E402
from qagrel_cli.cli import app  # noqa: E402
from qagrel_cli.reports.report import VOLATILE_LABELS  # noqa: E402

GOLDEN = REPO / "tests" / "golden" / "feedback_report.md"
VOLATILE = re.compile(rf"^- ({'|'.join(re.escape(label) for label in VOLATILE_LABELS)}): .*$", re.MULTILINE)
runner = CliRunner()


def normalised(text: str) -> str:
    """The report with each volatile provenance line's value replaced by '…'."""
    return VOLATILE.sub(r"- \1: …", text)


def feedback_report(out: Path) -> str:
    """The report of the committed results/feedback (named as from the checkout's root), normalised."""
    import os

    here = Path.cwd()
    os.chdir(REPO)
    try:
        result = runner.invoke(app, ["report", "results/feedback", "--compare", "paper", "--out", str(out)])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    return normalised(out.read_text())


def test_the_report_of_the_committed_feedback_study_is_the_golden_one(tmp_path):
    assert feedback_report(tmp_path / "report.md") == GOLDEN.read_text()


def test_its_table_is_what_qagrel_table_renders(tmp_path, monkeypatch):
    report = feedback_report(tmp_path / "report.md")
    monkeypatch.chdir(REPO)
    table = runner.invoke(app, ["table", "results/feedback", "--compare", "paper", "--format", "markdown"])
    assert table.stdout in report


def test_a_folder_of_both_rules_gets_figure_3_beside_the_report(mnist_dir, tmp_path):
    from qagrel_cli.core.config import TrainConfig
    from qagrel_cli.core.training import train

    root = tmp_path / "sweep"
    for rule in ("qagrel", "bp"):
        config = TrainConfig(rule=rule, arch="fc", fc="16", train_size=300, max_epochs=2, device="cpu")
        train(config, root / config.run_id, data_dir=mnist_dir, quiet=True)
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "out" / "r.md")])
    assert result.exit_code == 0, result.output
    [figure] = (tmp_path / "out" / "r_figures").glob("*.png")
    assert f"](r_figures/{figure.name})" in (tmp_path / "out" / "r.md").read_text()


def test_a_folder_without_finished_runs_is_one_line_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert_one_line_error(result)
    assert not (tmp_path / "r.md").exists()


if __name__ == "__main__":
    if sys.argv[1:] != ["--rewrite"]:
        sys.exit("usage: python tests/test_report.py --rewrite")
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        GOLDEN.write_text(feedback_report(Path(scratch) / "report.md"))
    print(f"rewrote {GOLDEN}")
