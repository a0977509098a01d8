"""The live display of a running sweep: runs done / running / failed / pending, elapsed time, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from qagrel_cli.sweeps.ledger import SweepOutcome


class SweepProgress:
    """The sweep's live bar (runs done / running / failed / pending, elapsed, ETA) and a line per finished run."""

    def __init__(self, console: Console, total: int, outcome: SweepOutcome) -> None:
        self.outcome = outcome
        self.progress = Progress(SpinnerColumn(), TextColumn("runs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console,
                                 speed_estimate_period=7 * 24 * 3600)  # runs take hours: average over the sweep
        self.task = self.progress.add_task("runs", total=total, counts="")

    def __enter__(self) -> "SweepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def show(self, running: int, pending: int) -> None:
        """Refresh the counts."""
        self.progress.update(self.task, counts=(f"done {len(self.outcome.trained)}  running {running}  "
                                                f"failed {len(self.outcome.failed)}  pending {pending}"))

    def note(self, line: str) -> None:
        """A log line above the bar (readable off a terminal too)."""
        self.progress.console.print(line, highlight=False, soft_wrap=True)

    def ran(self, line: str, running: int, pending: int) -> None:
        """One run is over: say how, and advance the bar."""
        self.note(line)
        self.progress.update(self.task, advance=1)
        self.show(running, pending)


__all__ = ["SweepProgress"]
