"""Rewrite the generated blocks of the docs: each is the exact output of the qagrel command it names.

A block in README.md, docs/*.md or results/*.md reads

    <!-- generated: qagrel table results/feedback --format markdown -->
    ...the command's standard output...
    <!-- end generated -->

so a table in the docs is never typed, only regenerated from the committed results. A figure block,

    <!-- generated: qagrel plot results/feedback --metric val -->
    ![qagrel plot results/feedback --metric val](../results/feedback/_figures/feedback_figure3_val.png)
    <!-- end generated -->

names a `qagrel plot` of a folder of runs (the folder first, no --out): the figure and its CSV are
rewritten where the command writes them (`_figures/` in that folder) and the block holds the image
link. A figure is stale when its CSV (the numbers drawn) differs from the command's, or it is
missing; the image itself is not compared, since its pixels depend on matplotlib's version. Usage:

    python docs/regenerate.py            # rewrite every block whose output has changed
    python docs/regenerate.py --check    # change nothing; exit 1 naming each stale block

The tests run the check, so a run committed without regenerating the docs fails them.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from typer.testing import CliRunner  # noqa: E402

from qagrel_cli.cli import app  # noqa: E402  (the package of this checkout)
from qagrel_cli.core.run_folder import atomic_write, is_run_dir  # noqa: E402
from qagrel_cli.reports.plot import FIGURES_FOLDER  # noqa: E402

BEGIN = re.compile(r"^<!-- generated: (.+) -->\n", re.MULTILINE)
END = "<!-- end generated -->\n"
# Reports that are a function of committed run folders alone: no file written, no clock, and in markdown
# no terminal width.
COMMANDS = ("table", "milestones", "status")
FIGURE_COMMAND = "plot"  # writes its figure into the folder plotted; the block holds the image link


class DocsError(Exception):
    """A block that cannot be regenerated: the message is one line naming the file and line."""


@dataclass(frozen=True)
class Block:
    """One generated block: the command, where its output starts and ends in the text, and its line."""

    command: str
    start: int
    end: int
    line: int


def doc_files(root: Path = ROOT) -> list[Path]:
    """The files that may hold generated blocks."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "results").glob("*.md"))]


def blocks(text: str, name: str) -> list[Block]:
    """Every generated block of `text`, in order; `name` labels errors."""
    found = []
    for match in BEGIN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        end = text.find(END, match.end())
        if end < 0 or BEGIN.search(text, match.end(), end):
            raise DocsError(f"{name}:{line}: generated block has no '{END.strip()}' line")
        found.append(Block(match.group(1).strip(), match.end(), end, line))
    return found


@dataclass
class Output:
    """What a block's command produced: the block's new text, and for a figure the files written (in a
    temporary folder) with where they belong and whether the committed copy is stale."""

    text: str
    files: dict[Path, Path] = field(default_factory=dict)  # fresh file -> its place in the checkout
    stale_files: bool = False


def _qagrel(words: list[str], root: Path, command: str, where: str) -> str:
    """Run `qagrel WORDS...` in `root`, in this process (torch is imported once, not once per block);
    its standard output."""
    here = Path.cwd()
    os.chdir(root)  # the commands name folders relative to the checkout
    try:
        done = CliRunner().invoke(app, words)
    finally:
        os.chdir(here)
    if done.exit_code != 0:
        reason = (done.output.strip().splitlines() or [repr(done.exception)])[-1]
        raise DocsError(f"{where}: '{command}' failed (exit {done.exit_code}): {reason}")
    return done.stdout


def run_command(command: str, root: Path, where: str, doc_dir: Path, scratch: Path) -> Output:
    """The output of one block's command, run in `root`: a report's standard output, or a figure written
    into `scratch` with the image link (relative to `doc_dir`, the folder of the doc) as the block's text."""
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "qagrel" or words[1] not in (*COMMANDS, FIGURE_COMMAND):
        raise DocsError(f"{where}: '{command}' is not a qagrel {', '.join(COMMANDS)} or {FIGURE_COMMAND} "
                        "command")
    if _option(words, "--out") is not None:
        raise DocsError(f"{where}: '{command}' names --out; a block's command writes only where it writes "
                        "by default")
    if words[1] != FIGURE_COMMAND:
        if _option(words, "--format") != "markdown":
            raise DocsError(f"{where}: '{command}' needs --format markdown (a terminal table's width is the "
                            "terminal's)")
        # A blank line ends a table or list before the end marker.
        return Output(_qagrel(words[1:], root, command, where).rstrip("\n") + "\n\n")
    plotted = root / words[2] if len(words) > 2 and not words[2].startswith("-") else None
    if plotted is None or not plotted.is_dir() or is_run_dir(plotted):
        raise DocsError(f"{where}: '{command}' must name a folder of runs right after 'plot'")
    fresh = Path(tempfile.mkdtemp(dir=scratch))
    _qagrel([*words[1:], "--out", str(fresh)], root, command, where)
    output = Output("")
    for made in sorted(fresh.iterdir()):
        target = plotted / FIGURES_FOLDER / made.name
        output.files[made] = target
        if made.suffix == ".csv":
            output.stale_files |= not target.exists() or target.read_bytes() != made.read_bytes()
        else:
            output.stale_files |= not target.exists()
            link = Path(os.path.relpath(target, doc_dir)).as_posix()
            output.text += f"![{command}]({link})\n"
    output.text += "\n"
    return output


def _option(words: list[str], name: str) -> str | None:
    """The value a command line gives option `name` (`--name VALUE` or `--name=VALUE`), else None."""
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1] if i + 1 < len(words) else ""
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def regenerate(doc: Path, root: Path = ROOT, check: bool = False) -> list[str]:
    """Bring every block of `doc` up to date (or, with `check`, only compare); returns the stale ones.

    The file is rewritten whole, through a temporary file, and only when a block changed and not `check`;
    stale figures are copied into place only after every block's command has succeeded: a command that
    fails leaves the file and the figures as they were.
    """
    text = doc.read_text(encoding="utf-8")
    name = str(doc.relative_to(root)) if doc.is_relative_to(root) else str(doc)
    stale, pieces, done = [], [], 0
    figures: dict[Path, Path] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for block in blocks(text, name):
            where = f"{name}:{block.line}"
            output = run_command(block.command, root, where, doc.parent, Path(scratch))
            if text[block.start:block.end] != output.text or output.stale_files:
                stale.append(f"{where}: {block.command}")
            if output.stale_files:
                figures.update(output.files)
            pieces += [text[done:block.start], output.text]
            done = block.end
        if check:
            return stale
        for source, target in figures.items():  # whole or not at all, as every qagrel file
            atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    new_text = "".join(pieces) + text[done:]
    if new_text != text:
        atomic_write(doc, lambda tmp: tmp.write_text(new_text, encoding="utf-8"))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    try:
        stale = [name for doc in doc_files() for name in regenerate(doc, check=args.check)]
    except DocsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in stale:
        print(("stale: " if args.check else "rewrote: ") + name)
    if args.check and stale:
        print("run: python docs/regenerate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
