"""Table 1 as text: for a terminal (rich), GitHub markdown, LaTeX (booktabs, like the paper's) and CSV.

Every format shows the same cells (`_grid`): our mean (SD) per row, with
--compare the paper's value and the difference in paper SDs, then the epoch
ratios; what the cells mean is in qagrel_cli/reports/table.py.
"""

from __future__ import annotations

import csv
import io
import itertools
from enum import Enum

from rich.console import Console, Group, RenderableType
from rich.table import Table

from qagrel_cli.core.config import ARCH_NAMES, DATASET_NAMES
from qagrel_cli.reports.console import fit
from qagrel_cli.reports.rows import TABLE1_FIELDS, format_setting
from qagrel_cli.reports.table import ResultTable, Stat


class TableFormat(str, Enum):
    rich = "rich"
    markdown = "markdown"
    latex = "latex"
    csv = "csv"


def _stat_cell(stat: Stat, decimals: int, star: bool = False) -> str:
    if stat.mean is None:
        return "–"
    sd = "–" if stat.sd is None else f"{stat.sd:.{decimals}f}"
    return f"{stat.mean:.{decimals}f} ({sd})" + ("*" if star else "")


def _diff_cell(diff: float | None) -> str:
    return "–" if diff is None else f"{diff:+.1f}"


def _grid(table: ResultTable) -> tuple[list[str], list[list[str]]]:
    """Headers and display cells shared by the rich, markdown and LaTeX formats.

    With --compare, the paper's value and the difference follow each of our values.
    """
    extras = [f.replace("_", " ") for f in table.extra_fields]
    paper = ["Paper", "Δ [SD]"] if table.compare else []
    headers = ["Dataset", "Rule", "1st layer", "Hidden units", "α", *extras, "Epochs [#]", *paper, "Accuracy [%]",
               *paper, "Seeds"]
    cells = []
    for row in table.rows:
        p = row.paper
        epochs, accuracy = [_stat_cell(row.epochs, 0)], [_stat_cell(row.accuracy, 2, row.star)]
        if table.compare:
            epochs += [_stat_cell(p.epochs, 0), _diff_cell(row.epochs_diff)] if p else ["–", "–"]
            accuracy += ([_stat_cell(p.accuracy, 2, p.seeds_converged < p.seeds), _diff_cell(row.accuracy_diff)]
                         if p else ["–", "–"])
        cells.append([*row.key.cells(), *epochs, *accuracy, f"{row.converged}/{row.finished}"])
    return headers, cells


def _numeric_from(table: ResultTable) -> int:
    """Index of the first numeric (right-aligned) column of `_grid`."""
    return len(TABLE1_FIELDS) + len(table.extra_fields)


def _ratio_grid(table: ResultTable) -> tuple[list[str], list[list[str]]]:
    headers = ["Dataset", "1st layer", *[f.replace("_", " ") for f in table.extra_fields], "Hidden units",
               "Q-AGREL/BP epochs (ours)", "(paper)"]
    cells = [[DATASET_NAMES.get(r.dataset, r.dataset), ARCH_NAMES.get(r.arch, r.arch),
              *[format_setting(v) for _, v in r.extras], ", ".join(r.hidden_units),
              "–" if r.ours is None else f"{r.ours:.2f}", "–" if r.paper is None else f"{r.paper:.2f}"]
             for r in table.ratios]
    return headers, cells


def rich_view(table: ResultTable, console: Console | None = None) -> RenderableType:
    """The table for a terminal, sections per dataset, definitions underneath; fitted to `console`'s width
    (reports/console.py: no word is cut in two) when one is given."""
    headers, cells = _grid(table)
    view = Table(title=f"Table 1 layout: {table.source}" if table.source else None,
                 caption="\n".join(table.notes()), caption_justify="left")
    numeric = _numeric_from(table)
    for i, header in enumerate(headers):  # the settings that name a row are shortened last
        view.add_column(header, justify="right" if i >= numeric else "left", no_wrap=i < numeric)
    for i, line in enumerate(cells):
        last_of_dataset = i + 1 == len(cells) or table.rows[i + 1].key.dataset != table.rows[i].key.dataset
        view.add_row(*line, end_section=last_of_dataset)
    if console is not None:
        fit(view, console, short_headers=_SHORT_HEADERS)
    if not table.ratios:
        return view
    ratio_headers, ratio_cells = _ratio_grid(table)
    ratios = Table(title="Q-AGREL / Error-BP epochs")
    for i, header in enumerate(ratio_headers):
        ratios.add_column(header, no_wrap=i < len(ratio_headers) - 2)
    for line in ratio_cells:
        ratios.add_row(*line)
    if console is not None:
        fit(ratios, console)
    return Group(view, ratios)


# The headers a narrow terminal gets (reports/console.py `fit`).
_SHORT_HEADERS = {"Epochs [#]": "Ep. [#]", "Accuracy [%]": "Acc. [%]"}


def markdown_table(headers: list[str], cells: list[list[str]], numeric_from: int) -> list[str]:
    """A GitHub-flavoured markdown table's lines; columns from `numeric_from` on are right-aligned."""
    align = ["---:" if i >= numeric_from else "---" for i in range(len(headers))]
    return ["| " + " | ".join(line) + " |" for line in [headers, align, *cells]]


def to_markdown(table: ResultTable) -> str:
    """GitHub-flavoured markdown: the table, the definitions as a list, then the epoch ratios."""
    headers, cells = _grid(table)
    # A bare `*` could start emphasis in markdown; escape it everywhere.
    cells = [[c.replace("*", r"\*") for c in line] for line in cells]
    numeric = _numeric_from(table)
    lines = [f"Table 1 layout: `{table.source}`", ""] if table.source else []
    lines += markdown_table(headers, cells, numeric) + [""]
    lines += ["- " + note.replace("*", r"\*") for note in table.notes()]
    if table.ratios:
        ratio_headers, ratio_cells = _ratio_grid(table)
        lines += ["", "Q-AGREL / Error-BP epochs:", ""]
        lines += markdown_table(ratio_headers, ratio_cells, len(ratio_headers) - 2)
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for plain, latex in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                         ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                         ("^", r"\textasciicircum{}"), (">=", r"$\geq$"), ("–", "--"), ("α", r"$\alpha$"),
                         ("Δ", r"$\Delta$")):
        text = text.replace(plain, latex)
    return text


def to_latex(table: ResultTable) -> str:
    """A booktabs table like the paper's: the dataset as a rotated multirow, \\midrule between datasets.

    Needs \\usepackage{booktabs,multirow,graphicx}.
    """
    headers, cells = _grid(table)
    headers = [""] + [_latex_escape(h) for h in headers[1:]]
    numeric = _numeric_from(table)
    spec = "".join("r" if i >= numeric else "l" for i in range(len(headers)))
    out = [r"% qagrel table; needs \usepackage{booktabs,multirow,graphicx}", r"\begin{table}[t]", r"\centering",
           r"\caption{" + _latex_escape(" ".join(table.notes())) + "}", r"\begin{tabular}{" + spec + "}",
           r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    by_dataset = itertools.groupby(zip(table.rows, cells), key=lambda row_cells: row_cells[0].key.dataset)
    blocks = [list(block) for _, block in by_dataset]
    for b, block in enumerate(blocks):
        for j, (_, line) in enumerate(block):
            label = (r"\multirow{" + str(len(block)) + r"}{*}{\rotatebox[origin=c]{90}{"
                     + _latex_escape(line[0]) + "}}") if j == 0 else ""
            out.append(" & ".join([label, *[_latex_escape(c) for c in line[1:]]]) + r" \\")
        out.append(r"\midrule" if b + 1 < len(blocks) else r"\bottomrule")
    out += [r"\end{tabular}"]
    if table.ratios:
        ratio_headers, ratio_cells = _ratio_grid(table)
        out += [r"\par\medskip", r"\begin{tabular}{" + "l" * (len(ratio_headers) - 2) + "rr}", r"\toprule",
                " & ".join(_latex_escape(h) for h in ratio_headers) + r" \\", r"\midrule"]
        out += [" & ".join(_latex_escape(c) for c in line) + r" \\" for line in ratio_cells]
        out += [r"\bottomrule", r"\end{tabular}"]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(table: ResultTable) -> str:
    """One line per row, numbers unformatted, columns named as in the paper's table1.csv."""
    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["dataset", "rule", "first_layer", "hidden_units", "lr", *table.extra_fields, "epochs_mean",
              "epochs_sd", "accuracy_mean", "accuracy_sd", "seeds_converged", "seeds"]
    if table.compare:
        # not_paper_protocol: why a row has no paper values (the settings that differ), empty when it has them.
        header += ["paper_epochs_mean", "paper_epochs_sd", "paper_accuracy_mean", "paper_accuracy_sd",
                   "epochs_diff_sd", "accuracy_diff_sd", "not_paper_protocol"]
    writer.writerow(header)
    for row in table.rows:
        k = row.key
        line = [k.dataset, k.rule, k.arch, k.hidden_units, f"{k.lr:g}", *[format_setting(v) for _, v in k.extras],
                num(row.epochs.mean), num(row.epochs.sd), num(row.accuracy.mean), num(row.accuracy.sd),
                row.converged, row.finished]
        if table.compare:
            p = row.paper
            line += ([num(p.epochs.mean), num(p.epochs.sd), num(p.accuracy.mean), num(p.accuracy.sd)]
                     if p else ["", "", "", ""])
            line += [num(row.epochs_diff), num(row.accuracy_diff), "; ".join(row.differs)]
        writer.writerow(line)
    return buffer.getvalue()


def render(table: ResultTable, fmt: TableFormat, width: int = 160) -> str:
    """The table as text in `fmt` (rich is rendered without colours, for files)."""
    if fmt == TableFormat.rich:
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(rich_view(table, console))
        return console.file.getvalue()
    return {TableFormat.markdown: to_markdown, TableFormat.latex: to_latex, TableFormat.csv: to_csv}[fmt](table)


__all__ = ["TableFormat", "markdown_table", "render", "rich_view", "to_markdown", "to_latex", "to_csv"]
