"""`qagrel report DIR`: one Markdown file that says what a folder of runs shows, with its figures beside it.

The sections are the reports of the other commands, drawn by their own renderers (no second copy): the
status (`qagrel status --format markdown`), Table 1 with the Q-AGREL / Error-BP epoch ratios (`qagrel table
--format markdown`, with `--compare paper` the paper beside ours), the milestones (`qagrel milestones
--format markdown`), Figure 3 when both rules are there (`qagrel plot`, written beside the report), and the
provenance: what wrote the report, and what the runs record about what trained them.

Lines of the provenance that change from one writing to the next (the date, this machine, the versions
here) start with a label in `VOLATILE_LABELS`, so a report can be compared with an earlier one without them.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from qagrel_cli.core import run_folder
from qagrel_cli.core.config import RULE_NAMES, QagrelError, Rule
from qagrel_cli.core.provenance import version_line
from qagrel_cli.reports.milestones import MilestoneFormat, milestone_rows
from qagrel_cli.reports.milestones import render as render_milestones
from qagrel_cli.reports.plot import plot
from qagrel_cli.reports.status import status_markdown, status_report
from qagrel_cli.reports.table import build_table
from qagrel_cli.reports.table_formats import TableFormat
from qagrel_cli.reports.table_formats import render as render_table
from qagrel_cli.sweeps.results import Results, read_results

# Provenance lines that differ between two writings of the same report (see the module docstring).
VOLATILE_LABELS = ("written", "qagrel", "torch", "machine", "run dates")
FIGURE3_RULES = {Rule.qagrel.value, Rule.bp.value}


def build_report(directory: Path, out: Path, *, compare: bool = False) -> str:
    """The report of `directory` as Markdown; Figure 3 (if both rules are there) is written beside `out`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QagrelError(f"{directory} is not a folder of runs")
    results = read_results(directory)
    finished = [r for r in results.runs if r.summary is not None]
    if not finished:
        raise QagrelError(f"{directory}: no finished runs to report on")
    source = str(directory)
    sections = [f"# Report: `{source}`", "",
                "## Status", "", status_markdown(status_report(directory)),
                "## Table 1 and the epoch ratios", "",
                render_table(build_table(results.runs, source=source, compare=compare), TableFormat.markdown),
                "## Milestones", "", _milestones(results, source),
                "## Figure 3", "", _figure3(directory, results, out),
                "## Provenance", "", _provenance(results)]
    return "\n".join(sections)


def _milestones(results: Results, source: str) -> str:
    rows = milestone_rows(results)
    return render_milestones(rows, MilestoneFormat.markdown, source=source) if rows else \
        "No finished run with a readable log.\n"


def _figure3(directory: Path, results: Results, out: Path) -> str:
    """Figure 3's image link, drawn into `<report name>_figures/` beside the report, or why there is none."""
    rules = {r.config.rule.value for r in results.runs if r.summary is not None}
    if not FIGURE3_RULES <= rules:
        held = ", ".join(sorted(RULE_NAMES.get(r, r) for r in rules))
        return f"Not drawn: Figure 3 sets Q-AGREL beside Error-BP, and this folder holds finished runs of {held}.\n"
    figures = out.parent / f"{out.stem}_figures"
    plotted = plot(directory, figures)
    link = Path(os.path.relpath(plotted.figure, out.parent)).as_posix()
    csv = Path(os.path.relpath(plotted.csv, out.parent)).as_posix()
    notes = "".join(f"- {note}\n" for note in plotted.notes)
    return f"![Figure 3: {directory}]({link})\n\nThe numbers drawn: [{csv}]({csv}).\n{notes}"


def _provenance(results: Results) -> str:
    """What wrote this report, and what the runs' summaries record of what trained them."""
    summaries = [r.summary for r in results.runs if r.summary is not None]

    def recorded(key: str) -> str:
        values = sorted({str(s.get(key)) for s in summaries if s.get(key) is not None})
        return ", ".join(f"`{v}`" for v in values) if values else "not recorded"

    lines = [f"- written: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- qagrel: {version_line()}",
             f"- torch: {_torch_version()}",
             f"- machine: {platform.node()} ({platform.platform()})",
             f"- run dates: {_run_dates(results)}",
             f"- the runs were trained by qagrel {recorded('qagrel_version')} at commit(s) {recorded('git_commit')}",
             f"- with torch {recorded('torch_version')}",
             f"- on {recorded('device')}"]
    return "\n".join(lines) + "\n"


def _torch_version() -> str:
    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def _run_dates(results: Results) -> str:
    """When the finished runs ended: from their summaries where recorded, else their summary files' times."""
    stamps = []
    for record in results.runs:
        if record.summary is None:
            continue
        if record.summary.get("finished_at"):
            stamps.append(datetime.fromisoformat(str(record.summary["finished_at"])))
        else:
            mtime = (record.path / run_folder.SUMMARY_FILE).stat().st_mtime
            stamps.append(datetime.fromtimestamp(mtime, timezone.utc))
    first, last = (min(stamps).strftime("%Y-%m-%d"), max(stamps).strftime("%Y-%m-%d"))
    days = first if first == last else f"{first} to {last}"
    recorded = any(r.summary and r.summary.get("finished_at") for r in results.runs)
    where = "from the summaries" if recorded else "from the summary files' times"
    return f"{days} ({where})"


__all__ = ["build_report", "VOLATILE_LABELS"]
