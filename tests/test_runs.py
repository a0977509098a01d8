"""The run folder: files written by one process are read whole by another."""
import threading
from pathlib import Path

import pandas as pd

from qagrel_cli.core import run_folder as runs


def test_a_log_read_while_it_is_being_rewritten_is_always_whole(tmp_path: Path):
    # A sweep's status/table reads logs that training processes keep replacing; a
    # reader must see the old file or the new one, never a mix of the two.
    runs.write_log(tmp_path, pd.DataFrame({"epoch": [1]}))
    stop = threading.Event()

    def keep_rewriting() -> None:
        n = 1
        while not stop.is_set():
            n = n % 50 + 1
            runs.write_log(tmp_path, pd.DataFrame({"epoch": range(1, n + 1), "val_acc": [0.5] * n}))

    writer = threading.Thread(target=keep_rewriting)
    writer.start()
    try:
        lengths = {len(runs.read_log(tmp_path)) for _ in range(400)}
    finally:
        stop.set()
        writer.join()
    assert len(lengths) > 1, "the writer must have replaced the file while it was being read"


def test_a_run_folder_without_a_log_reads_as_an_empty_log(tmp_path: Path):
    assert runs.read_log(tmp_path).empty


def test_one_row_per_epoch_keeps_the_last_row_of_an_epoch_logged_twice_in_epoch_order():
    log = pd.DataFrame({"epoch": [1, 2, 3, 2, 3, 4], "val_acc": [0.1, 0.2, 0.3, 0.25, 0.35, 0.4]})
    once = runs.one_row_per_epoch(log)
    assert once["epoch"].tolist() == [1, 2, 3, 4]
    assert once["val_acc"].tolist() == [0.1, 0.25, 0.35, 0.4]
