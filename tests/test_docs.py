"""The documentation: links that lead somewhere, a short front page, and the set-up commands CI runs.

CI (.ci/run) installs the project and runs the tests with the commands the
README's "Install and test" section shows, so the two must not drift apart.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
README_MAX_BYTES = 14_000  # room for the generated table at all 18 MNIST and CIFAR-10 rows (each ~180 bytes), not for prose

FENCE = re.compile(r"^(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target); the target may be followed by a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def doc_pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.lstrip())
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a markdown page; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link in the page's prose (code is not prose)."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken_links(pages: list[Path]) -> list[str]:
    """One line per relative link whose file, or whose #anchor in a markdown file, does not exist."""
    broken = []
    for page in pages:
        for number, target in links(page):
            if not target or EXTERNAL.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.parent.name}/{page.name}:{number}" if page.parent.name == "docs" else f"{page.name}:{number}"
            if not destination.exists():
                broken.append(f"{where}: {target}: no such file")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{where}: {target}: no heading with anchor #{anchor} in {destination.name}")
    return broken


def commands(lines: list[str]) -> list[str]:
    """Shell commands, one per (continued) line, without comments, words normalised by shlex."""
    joined = re.sub(r"\\\n", " ", "\n".join(lines)).splitlines()  # a trailing backslash continues a line
    found = []
    for line in joined:
        words = shlex.split(line, comments=True)
        if words:
            found.append(shlex.join(words))
    return found


def readme_setup_commands() -> list[str]:
    """The commands in the code block of README's "Install and test" section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Install and test\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README has no '## Install and test' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README's 'Install and test' section has no code block"
    return commands(block.group(1).splitlines())


def ci_commands() -> list[str]:
    return commands(CI_SCRIPT.read_text(encoding="utf-8").splitlines())


def the_one(found: list[str], word: str, where: str) -> str:
    matching = [c for c in found if word in c]
    assert len(matching) == 1, f"{where}: expected one command with {word!r}, found {matching}"
    return matching[0]


def test_every_relative_link_in_readme_and_docs_leads_to_an_existing_file_and_heading():
    broken = broken_links(doc_pages())
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_check_reports_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Some `code` here?\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/page.md#some-code-here) [gone](docs/missing.md) [no heading](docs/page.md#nowhere)\n"
        "[web](https://example.org/x) `[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n")
    broken = broken_links(doc_pages(tmp_path))
    assert len(broken) == 2
    assert "docs/missing.md: no such file" in broken[0]
    assert "#nowhere" in broken[1]


def test_readme_is_a_short_front_page():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_test_command_is_the_one_ci_runs():
    assert the_one(readme_setup_commands(), "pytest", "README") == the_one(ci_commands(), "pytest", ".ci/run")


def test_readme_install_command_is_the_one_ci_runs():
    assert the_one(readme_setup_commands(), "pip install", "README") == \
        the_one(ci_commands(), "pip install", ".ci/run")
