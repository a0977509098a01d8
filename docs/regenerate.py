"""Rewrite the generated blocks of the docs: each is the exact output of the qagrel command it names.

A block in README.md, docs/*.md or results/*.md reads

    <!-- generated: qagrel table results/feedback --format markdown -->
    ...the command's standard output...
    <!-- end generated -->

so a table in the docs is never typed, only regenerated from the committed results. Usage:

    python docs/regenerate.py            # rewrite every block whose output has changed
    python docs/regenerate.py --check    # change nothing; exit 1 naming each stale block

The tests run the check, so a run committed without regenerating the docs fails them.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^<!-- generated: (.+) -->\n", re.MULTILINE)
END = "<!-- end generated -->\n"
# Reports that are a function of committed run folders alone: no file written, no clock, no terminal width.
COMMANDS = ("table", "milestones")


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


def run_command(command: str, root: Path, where: str) -> str:
    """The standard output of one `qagrel table|milestones ...` command, run in `root`."""
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "qagrel" or words[1] not in COMMANDS:
        raise DocsError(f"{where}: '{command}' is not a qagrel {' or '.join(COMMANDS)} command")
    if "--out" in words:
        raise DocsError(f"{where}: '{command}' writes a file (--out); a block holds what it prints")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "qagrel_cli", *words[1:]], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DocsError(f"{where}: '{command}' failed (exit {done.returncode}): {reason}")
    return done.stdout.rstrip("\n") + "\n\n"  # a blank line ends a table or list before the end marker


def regenerate(doc: Path, root: Path = ROOT, check: bool = False) -> list[str]:
    """Bring every block of `doc` up to date (or, with `check`, only compare); returns the stale ones.

    The file is rewritten whole, through a temporary file, and only when a block changed and not `check`:
    a command that fails leaves it as it was.
    """
    text = doc.read_text(encoding="utf-8")
    name = str(doc.relative_to(root)) if doc.is_relative_to(root) else str(doc)
    stale, pieces, done = [], [], 0
    for block in blocks(text, name):
        where = f"{name}:{block.line}"
        output = run_command(block.command, root, where)
        if text[block.start:block.end] != output:
            stale.append(f"{where}: {block.command}")
        pieces += [text[done:block.start], output]
        done = block.end
    if stale and not check:
        tmp = doc.with_name(doc.name + ".tmp")
        tmp.write_text("".join(pieces) + text[done:], encoding="utf-8")
        tmp.replace(doc)
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
