"""What the benchmark scripts share: writing their measurements as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qagrel_cli.core.run_folder import atomic_write_text


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Write `results` to `path` (when given), atomically: a run cut short leaves the last whole file."""
    if path is not None:
        atomic_write_text(path, json.dumps(results, indent=2) + "\n")
