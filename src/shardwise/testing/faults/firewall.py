"""Cutting links between servers with nftables (Debian's ``nftables`` package; root).

Everything lives in one table of our own, ``inet shardwise_faults_<name>``: one chain on
the input hook drops packets whose (source, destination) addresses form a cut link.
Healing flushes the chain; closing deletes the table, also at interpreter exit, so a
crashed run leaves no rule behind (``make jepsen`` also deletes stale tables first).
Dropping, rather than rejecting, is what a failed switch does: a connection hangs and
TCP retransmits until the link heals or a timeout gives up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from typing import Final

TABLE_PREFIX: Final = "shardwise_faults_"
NFT_TIMEOUT_S: Final = 10.0
"""A rule change is a netlink round trip; seconds mean nft itself is stuck."""
MAX_CUT_LINKS: Final = 10_000
"""Directed links cut at once: a few dozen servers squared, far above any run's."""


def unavailable_reason() -> str | None:
    """Why partitions cannot run here (``None`` if they can)."""
    if shutil.which("nft") is None:
        return "nft (Debian's nftables) is not installed: `make jepsen-deps` installs it"
    if os.geteuid() != 0:
        return "nftables rules need root"
    probe = f"{TABLE_PREFIX}probe_{os.getpid()}"
    done = run_nft("-f", "-", script=f"add table inet {probe}\ndelete table inet {probe}\n")
    if done.returncode != 0:
        return f"nft cannot add a table: {done.stderr.strip()}"
    return None


def delete_stale_tables() -> list[str]:
    """Delete every table of ours (left by a run that was killed); their names."""
    listed = run_nft("list", "tables")
    names = [
        line.split()[-1]
        for line in listed.stdout.splitlines()
        if line.startswith("table inet ") and line.split()[-1].startswith(TABLE_PREFIX)
    ]
    for name in names:
        nft(f"delete table inet {name}\n")
    return names


def run_nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", *args],
        check=False,
        input=script,
        text=True,
        capture_output=True,
        timeout=NFT_TIMEOUT_S,
    )


def nft(script: str) -> None:
    done = run_nft("-f", "-", script=script)
    if done.returncode != 0:
        raise RuntimeError(f"nft failed: {done.stderr.strip()}\n{script}")


class Firewall:
    """The cut links of one cluster (``name`` keeps clusters' tables apart)."""

    def __init__(self, name: str) -> None:
        self.table = f"{TABLE_PREFIX}{name}"
        self.cut: frozenset[tuple[str, str]] = frozenset()
        self._open = False

    def open(self) -> None:
        nft(
            f"add table inet {self.table}\n"
            f"add chain inet {self.table} input "
            "{ type filter hook input priority -10; policy accept; }\n"
        )
        self._open = True
        atexit.register(self.close)

    def set_cuts(self, links: Iterable[tuple[str, str]]) -> None:
        """Drop exactly the packets from ``a`` to ``b`` for each ``(a, b)`` (addresses),
        replacing the earlier cuts in one transaction."""
        cut = frozenset(links)
        if len(cut) > MAX_CUT_LINKS:
            raise ValueError(f"{len(cut)} links to cut, more than {MAX_CUT_LINKS}")
        script = f"flush chain inet {self.table} input\n"
        if cut:
            pairs = ", ".join(f"{a} . {b}" for a, b in sorted(cut))
            script += f"add rule inet {self.table} input ip saddr . ip daddr {{ {pairs} }} drop\n"
        nft(script)
        self.cut = cut

    def heal(self) -> None:
        self.set_cuts(())

    def close(self) -> None:
        if self._open:
            self._open = False
            atexit.unregister(self.close)
            # Already gone if deleted by hand or by delete_stale_tables.
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                nft(f"delete table inet {self.table}\n")

    def __enter__(self) -> Firewall:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
