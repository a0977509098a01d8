"""Where a result came from: the qagrel version and the git commit of the source that produced it.

Every run's summary records both (core/run_lifecycle.py), `qagrel --version` prints them, and `qagrel report`
names them for the report's own provenance: one definition of each.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import qagrel_cli


def git_commit() -> str | None:
    """The source tree's commit, when the package runs from a git checkout (None otherwise)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def version_line() -> str:
    """`qagrel 0.1.0 (commit 1a2b3c4d5e6f)`, or `(not a git checkout)` for an installed copy."""
    commit = git_commit()
    return f"qagrel {qagrel_cli.__version__} ({f'commit {commit[:12]}' if commit else 'not a git checkout'})"


__all__ = ["git_commit", "version_line"]
