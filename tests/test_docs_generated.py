"""docs/regenerate.py: every table and figure the docs show from committed results is that command's output."""

from __future__ import annotations

import shutil

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


@pytest.mark.parametrize("command", ["qagrel sweep sweeps/smoke.yaml", "ls results", f"{COMMAND} --out t.md",
                                     "qagrel table results/bp-step", "qagrel status results/bp-step --format rich",
                                     f"{COMMAND} --out=t.md", "qagrel table results/bp-step --format=csv"])
def test_a_command_that_is_not_a_pure_report_in_markdown_is_refused(tmp_path, command):
    doc = tmp_path / "page.md"
    doc.write_text(block(command))
    with pytest.raises(regenerate.DocsError, match=r"page\.md:1: "):
        regenerate.regenerate(doc, ROOT)
    assert doc.read_text() == block(command)


def test_a_status_block_holds_the_status_in_markdown(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(block("qagrel status results/bp-step --times --format markdown"))
    regenerate.regenerate(doc, ROOT)
    assert "Status: `results/bp-step: 2 runs`" in doc.read_text() and "| **total** |" in doc.read_text()


def test_a_failing_command_leaves_the_whole_file_as_it_was(tmp_path):
    doc = tmp_path / "page.md"
    original = block(COMMAND) + block("qagrel table results/no-such-study --format markdown")
    doc.write_text(original)
    with pytest.raises(regenerate.DocsError, match=r"page\.md:4: .*failed \(exit \d+\): .+"):
        regenerate.regenerate(doc, ROOT)
    assert doc.read_text() == original
    assert not list(tmp_path.glob("*.tmp"))


FIGURE = "qagrel plot results/smoke --metric val"


@pytest.fixture
def smoke_checkout(tmp_path):
    """A checkout holding only the committed smoke study and a doc page with a figure block."""
    shutil.copytree(ROOT / "results" / "smoke", tmp_path / "results" / "smoke")
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text("Curves:\n\n" + block(FIGURE, ""))
    return tmp_path


def test_a_figure_block_writes_the_figure_where_the_command_would_and_links_it_from_the_doc(smoke_checkout):
    doc = smoke_checkout / "docs" / "page.md"
    assert regenerate.regenerate(doc, smoke_checkout) == ["docs/page.md:3: " + FIGURE]
    figures = smoke_checkout / "results" / "smoke" / "_figures"
    assert sorted(p.name for p in figures.iterdir()) == ["smoke_figure3_val.csv", "smoke_figure3_val.png"]
    assert block(FIGURE, f"![{FIGURE}](../results/smoke/_figures/smoke_figure3_val.png)\n\n") in doc.read_text()
    assert regenerate.regenerate(doc, smoke_checkout) == []  # now up to date


def test_a_figure_whose_numbers_changed_is_stale_and_check_leaves_it_as_it_was(smoke_checkout):
    doc = smoke_checkout / "docs" / "page.md"
    regenerate.regenerate(doc, smoke_checkout)
    csv = smoke_checkout / "results" / "smoke" / "_figures" / "smoke_figure3_val.csv"
    csv.write_text(csv.read_text().replace("0.", "0.1", 1))
    before = csv.read_text()
    assert regenerate.regenerate(doc, smoke_checkout, check=True) == ["docs/page.md:3: " + FIGURE]
    assert csv.read_text() == before
    assert regenerate.regenerate(doc, smoke_checkout) == ["docs/page.md:3: " + FIGURE]
    assert csv.read_text() != before


def test_a_figure_is_not_stale_for_its_pixels_alone_only_for_its_numbers_or_a_missing_image(smoke_checkout):
    doc = smoke_checkout / "docs" / "page.md"
    regenerate.regenerate(doc, smoke_checkout)
    png = smoke_checkout / "results" / "smoke" / "_figures" / "smoke_figure3_val.png"
    png.write_bytes(b"drawn by another matplotlib")
    assert regenerate.regenerate(doc, smoke_checkout, check=True) == []
    png.unlink()
    assert regenerate.regenerate(doc, smoke_checkout, check=True) == ["docs/page.md:3: " + FIGURE]


@pytest.mark.parametrize("command", [f"{FIGURE} --out elsewhere", "qagrel plot --metric val results/smoke",
                                     "qagrel plot results/smoke/mnist-conv-500-bp-s0-60e9c65a"])
def test_a_figure_block_must_plot_a_folder_of_runs_named_first_without_out(smoke_checkout, command):
    doc = smoke_checkout / "docs" / "page.md"
    doc.write_text(block(command))
    with pytest.raises(regenerate.DocsError, match=r"page\.md:1: "):
        regenerate.regenerate(doc, smoke_checkout)
    assert not (smoke_checkout / "results" / "smoke" / "_figures").exists()


def test_a_failing_command_after_a_figure_block_leaves_the_figures_unwritten(smoke_checkout):
    doc = smoke_checkout / "docs" / "page.md"
    doc.write_text(block(FIGURE) + block("qagrel table results/no-such-study --format markdown"))
    with pytest.raises(regenerate.DocsError, match=r"failed \(exit \d+\)"):
        regenerate.regenerate(doc, smoke_checkout)
    assert not (smoke_checkout / "results" / "smoke" / "_figures").exists()
