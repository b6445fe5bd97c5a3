"""Group commit in the Raft log: entries/s and fsyncs/s against the batch size.

    python bench/raft_log.py                      # in a temporary directory
    python bench/raft_log.py --dir /mnt/ssd/tmp   # on the disk the log would live on
    python bench/raft_log.py --quick              # a smoke run of well under a second

Appends entries of 100 bytes in batches of B with one ``sync()`` per batch, for B in
(1, 16, 256), and prints a markdown table. Each batch size stops after N entries or its
share of the time budget, whichever comes first, so the whole run stays near 10 s.

The last row repeats B=16 with the commit index changing on every sync, as on a busy
follower: the hard-state file is then replaced too (temp, fsync, rename, fsync of the
directory), which is the price of keeping the hard state out of the log.

Temporary directories are often on tmpfs, where fsync is free: pass ``--dir`` to measure a
real disk.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shardwise.storage import HardState, LogEntry
from shardwise.storage.file import FileStorage

ENTRY_BYTES = 100
BATCH_SIZES = (1, 16, 256)


@dataclass
class Result:
    label: str
    entries: int
    seconds: float
    fsyncs: int

    def row(self) -> str:
        rate = self.entries / self.seconds
        fsync_rate = self.fsyncs / self.seconds
        per_batch = f"{self.fsyncs / max(1, self.entries):.3f}"
        return (
            f"| {self.label:<18} | {self.entries:>8} | {self.seconds:>6.2f} | {rate:>11,.0f} "
            f"| {fsync_rate:>9,.0f} | {per_batch:>12} |"
        )


def run(directory: Path, batch: int, max_entries: int, budget_s: float, commit: bool) -> Result:
    """Append up to ``max_entries`` in batches of ``batch``, one sync each, for at most
    ``budget_s`` seconds (checked between batches)."""
    payload = bytes(ENTRY_BYTES)
    with FileStorage(directory) as storage:
        next_index = 1
        fsyncs_before = storage.fsyncs
        start = time.perf_counter()
        deadline = start + budget_s
        while next_index <= max_entries and time.perf_counter() < deadline:
            stop = min(next_index + batch, max_entries + 1)
            storage.append([LogEntry(i, 1, payload) for i in range(next_index, stop)])
            next_index = stop
            if commit:
                storage.set_hard_state(HardState(term=1, vote="n1", commit=next_index - 1))
            storage.sync()
        seconds = time.perf_counter() - start
        fsyncs = storage.fsyncs - fsyncs_before
    label = f"B={batch}" + (" + hard state" if commit else "")
    return Result(label, next_index - 1, seconds, fsyncs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000, help="N: entries per run")
    parser.add_argument("--seconds", type=float, default=10.0, help="total time budget")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the log")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N and budget")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries, args.seconds = 512, 0.5
    configs = [(batch, False) for batch in BATCH_SIZES] + [(16, True)]
    budget_s = args.seconds / len(configs)
    print(f"python {platform.python_version()} on {platform.machine()}, {ENTRY_BYTES}-byte entries")
    print(f"at most {args.entries} entries or {budget_s:.1f} s per row\n")
    print("| batch              |  entries |      s |   entries/s |  fsyncs/s | fsyncs/entry |")
    print("| ------------------ | -------: | -----: | ----------: | --------: | -----------: |")
    with tempfile.TemporaryDirectory(prefix="raft-log-bench-", dir=args.dir) as root:
        for number, (batch, commit) in enumerate(configs):
            result = run(Path(root) / str(number), batch, args.entries, budget_s, commit)
            print(result.row())
            sys.stdout.flush()


if __name__ == "__main__":
    main()
