"""docs/regenerate.py: every table the docs show from committed results is that command's output, to the letter."""

from __future__ import annotations

import pytest

from conftest import REPO as ROOT, load_script

regenerate = load_script(ROOT / "docs" / "regenerate.py")
COMMAND = "qagrel table results/bp-step --format markdown"


def block(command: str, body: str = "old table\n") -> str:
    return f"<!-- generated: {command} -->\n{body}<!-- end generated -->\n"


def test_every_generated_block_in_the_docs_is_the_output_of_its_command():
    stale = [name for doc in regenerate.doc_files() for name in regenerate.regenerate(doc, check=True)]
    assert not stale, "stale generated blocks (run: python docs/regenerate.py):\n" + "\n".join(stale)


def test_a_stale_block_is_rewritten_with_the_output_and_the_text_around_it_kept(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\nBefore.\n\n" + block(COMMAND) + "\nAfter.\n")
    assert regenerate.regenerate(doc, ROOT) == [f"{doc}:5: {COMMAND}"]
    text = doc.read_text()
    assert text.startswith("# Page\n\nBefore.\n\n<!-- generated: ") and text.endswith("<!-- end generated -->\n\nAfter.\n")
    assert "old table" not in text and "| MNIST | Error-BP | Conv | 21632-5408-500 | 1e+00 |" in text
    assert regenerate.regenerate(doc, ROOT) == []  # now up to date


def test_check_names_a_stale_block_and_changes_nothing(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(block(COMMAND))
    assert regenerate.regenerate(doc, ROOT, check=True) == [f"{doc}:1: {COMMAND}"]
    assert doc.read_text() == block(COMMAND)


def test_a_block_without_its_end_marker_is_an_error_naming_its_line(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("text\n<!-- generated: " + COMMAND + " -->\nrows\n" + block(COMMAND))
    with pytest.raises(regenerate.DocsError, match=r"page\.md:2: generated block has no"):
        regenerate.regenerate(doc, ROOT)


@pytest.mark.parametrize("command", ["qagrel sweep sweeps/smoke.yaml", "ls results", f"{COMMAND} --out t.md"])
def test_a_command_that_is_not_a_pure_report_is_refused(tmp_path, command):
    doc = tmp_path / "page.md"
    doc.write_text(block(command))
    with pytest.raises(regenerate.DocsError, match=r"page\.md:1: "):
        regenerate.regenerate(doc, ROOT)
    assert doc.read_text() == block(command)


def test_a_failing_command_leaves_the_whole_file_as_it_was(tmp_path):
    doc = tmp_path / "page.md"
    original = block(COMMAND) + block("qagrel table results/no-such-study --format markdown")
    doc.write_text(original)
    with pytest.raises(regenerate.DocsError, match=r"page\.md:4: .*failed \(exit \d+\): .+"):
        regenerate.regenerate(doc, ROOT)
    assert doc.read_text() == original
    assert not list(tmp_path.glob("*.tmp"))
