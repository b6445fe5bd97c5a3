"""One run of the fault harness: a cluster of real processes, clients, faults, a verdict.

    python -m shardwise.testing.faults [--seed N] [--duration S] [--lose-unsynced] ...

The run (its seed fixes every choice of the nemesis and the clients; the processes'
timing is real) starts an :class:`AddressedCluster`, joins group 1, and runs clients of
the register and set workloads (``workload.py``) while the nemesis injects one fault at a
time (``nemesis.py``: hold it, heal it, let the cluster recover) and, on a task of its
own, joins, leaves and moves shards. At the end it heals everything, restarts what is
down, waits for the cluster to settle, reads every key, and checks: the register history
must be linearizable, every acknowledged insert must be in its set, none twice.

Unavailability: for each call, how long until its key next answered a call (any
client's); a fault's unavailability is the longest such wait among the calls made while
it was on or in the recovery time after it (changes made meanwhile count too).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from shardwise.errors import ShardwiseError
from shardwise.testing.faults import full_disks
from shardwise.testing.faults.cluster import AddressedCluster
from shardwise.testing.faults.disk import crash_disk
from shardwise.testing.faults.firewall import Firewall, delete_stale_tables, unavailable_reason
from shardwise.testing.faults.nemesis import CHANGES, Injected, Nemesis
from shardwise.testing.faults.workload import Recorder, Workload, lost_and_doubled
from shardwise.testing.history import KvOp, kv_model
from shardwise.testing.linearizability import CheckResult, Verdict, check

CALL_DEADLINE_S: Final = 3.0
"""A client call's deadline: past it the outcome is unknown. Longer than an election
(0.5-1 s at the 50 ms tick) so that most calls through a fault still succeed."""
SETTLE_TIMEOUT_S: Final = 120.0
FINAL_READ_DEADLINE_S: Final = 30.0
CHECK_TIMEOUT_S: Final = 120.0
"""The checker's time budget: past it the verdict is "unknown", never wrong."""
SYNCED_MARKS: Final = "1"


@dataclass
class RunOptions:
    seed: int = 1
    duration_s: float = 60.0
    """Workload time under the nemesis (the start and the final checks come on top)."""
    groups: int = 2
    clients: int = 5
    registers: int = 6
    sets: int = 2
    think_s: float = 0.03
    fault_s: tuple[float, float] = (2.0, 4.0)
    """How long a fault is held."""
    recover_s: float = 2.0
    """Quiet time after a heal, before the next fault."""
    change_every_s: tuple[float, float] = (3.0, 6.0)
    kinds: list[str] | None = None
    """The nemeses to use (default: all there can be); each is used once before any is
    used again, in a seeded order."""
    lose_unsynced: bool = True
    plant_follower_skips_fsync: bool = False
    """The control run's planted bug (see ``storage/segments.py``)."""
    tear_synced: bool = False
    disk_faults: bool = True
    """Give each shard server a small disk of its own (a tmpfs) that the nemesis fills."""


@dataclass
class FaultRecord:
    kind: str
    what: str
    start: float
    end: float = 0.0
    found: str = ""


@dataclass
class RunResult:
    seed: int
    operations: int = 0
    unknown: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    changes: list[FaultRecord] = field(default_factory=list)
    verdict: Verdict = Verdict.UNKNOWN
    check: CheckResult | None = None
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unavailability: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    t0: float = 0.0
    """Loop time at the start (the log shows times from it)."""

    @property
    def anomalies(self) -> int:
        return int(self.verdict is Verdict.NOT_LINEARIZABLE) + len(self.doubled)

    @property
    def ok(self) -> bool:
        return (
            self.verdict is Verdict.LINEARIZABLE
            and not self.lost
            and not self.doubled
            and not self.problems
        )

    def table(self) -> str:
        counts: dict[str, int] = {}
        for record in [*self.faults, *self.changes]:
            counts[record.kind] = counts.get(record.kind, 0) + 1
        lines = [
            f"seed {self.seed}: {self.operations} operations ({self.unknown} unknown), "
            f"{len(self.faults)} faults, {len(self.changes)} changes, {self.elapsed_s:.0f} s",
            f"{'fault':<20} {'injected':>8} {'longest unavailability':>24}",
        ]
        for kind in sorted(counts):
            worst = self.unavailability.get(kind, 0.0)
            lines.append(f"{kind:<20} {counts[kind]:>8} {worst:>22.2f} s")
        lines.append(f"linearizability: {self.verdict.value}")
        lines.append(f"anomalies: {self.anomalies}    lost writes: {len(self.lost)}")
        lines += [f"skipped: {s}" for s in self.skipped]
        lines += [f"problem: {p}" for p in self.problems]
        lines += [f"lost: {x}" for x in self.lost[:20]] + [f"twice: {x}" for x in self.doubled]
        if self.check is not None and self.verdict is not Verdict.LINEARIZABLE:
            lines.append(self.check.explain())
        return "\n".join(lines)

    def log(self) -> str:
        return "\n".join(
            f"{r.start - self.t0:8.2f}-{r.end - self.t0:8.2f} {r.kind} {r.what} {r.found}".rstrip()
            for r in sorted([*self.faults, *self.changes], key=lambda r: r.start)
        )


class Injects(Protocol):
    """A nemesis (this harness's, or a peer's in ``bench/``)."""

    async def inject(self, kind: str) -> Injected: ...


async def hold_fault(
    nemesis: Injects, kind: str, rng: random.Random, options: RunOptions
) -> FaultRecord:
    """Inject ``kind``, hold it ``options.fault_s``, heal it: its record, whose window
    runs on through the recovery time after it."""
    loop = asyncio.get_running_loop()
    record = FaultRecord(kind, "", loop.time())
    injected = await nemesis.inject(kind)
    record.what = injected.what
    await asyncio.sleep(rng.uniform(*options.fault_s))
    record.found = await injected.undo()
    record.end = loop.time() + options.recover_s
    return record


def longest_waits(recorder: Recorder, windows: list[FaultRecord], until: float) -> dict[str, float]:
    """Per kind, the longest a call made in one of its windows waited for its key to
    answer (see the module docstring)."""
    answered: dict[str, list[float]] = {}
    for attempt in recorder.attempts:
        if attempt.done is not None:
            answered.setdefault(attempt.key, []).append(attempt.done)
    for times in answered.values():
        times.sort()
    worst: dict[str, float] = {}
    for window in windows:
        for attempt in recorder.attempts:
            if not window.start <= attempt.call < window.end:
                continue
            times = answered.get(attempt.key, [])
            i = bisect.bisect_left(times, attempt.call)
            wait = (times[i] if i < len(times) else until) - attempt.call
            worst[window.kind] = max(worst.get(window.kind, 0.0), wait)
    return worst


class FaultRun:
    def __init__(self, base_dir: Path, options: RunOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        marks = "follower-skips-fsync" if options.plant_follower_skips_fsync else SYNCED_MARKS
        self.cluster = AddressedCluster(
            base_dir,
            groups=options.groups,
            synced_marks=marks if options.lose_unsynced else "",
        )
        self.result = RunResult(options.seed)
        self.recorder = Recorder()
        reason = unavailable_reason()
        self.firewall = None if reason else Firewall(f"{self.cluster.net}")
        if reason:
            self.result.skipped.append(f"partitions: {reason}")
        self.disks: full_disks.SmallDisks | None = None
        if options.disk_faults and (reason := full_disks.unavailable_reason()) is None:
            c = self.cluster
            self.disks = full_disks.SmallDisks(
                {s: c.data_dir(s) for g in sorted(c.servers) for s in c.servers[g]}
            )
        elif options.disk_faults:
            self.result.skipped.append(f"full disks: {reason}")
        self.nemesis = Nemesis(
            self.cluster,
            self.firewall,
            random.Random(self.rng.getrandbits(64)),
            lose_unsynced=options.lose_unsynced,
            tear_synced=options.tear_synced,
            disks=self.disks,
        )
        self.workload = Workload(self.recorder, options.registers, options.sets, options.think_s)

    def _now(self) -> float:
        """Loop time: the clock of the clients' records too."""
        return asyncio.get_running_loop().time()

    async def _refresh_joined(self) -> None:
        with contextlib.suppress(ShardwiseError):
            self.nemesis.joined = set((await self.cluster.configuration()).groups)

    async def _changes(self, stop: asyncio.Event) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(*self.options.change_every_s))
            if stop.is_set():
                return
            record = FaultRecord(rng.choice(CHANGES), "", self._now())
            try:
                record.kind, record.what = await self.nemesis.change(record.kind)
            except ShardwiseError as exc:
                record.what = f"failed: {type(exc).__name__}"
            record.end = self._now() + self.options.recover_s
            self.result.changes.append(record)
            await self._refresh_joined()

    async def _faults(self, end: float) -> None:
        possible = self.nemesis.kinds()
        kinds = [k for k in self.options.kinds or possible if k in possible]
        queue: list[str] = []
        while self._now() < end:
            if not queue:
                queue = list(kinds)
                self.rng.shuffle(queue)
            kind = queue.pop(0)
            record = await hold_fault(self.nemesis, kind, self.rng, self.options)
            self.result.faults.append(record)
            await asyncio.sleep(self.options.recover_s)

    async def run(self) -> RunResult:
        c = self.cluster
        started = time.monotonic()
        if self.firewall is not None:
            self.firewall.open()
        try:
            if self.disks is not None:
                self.disks.mount()
            async with c:
                self.result.t0 = self._now()
                await c.join(1)
                await self._refresh_joined()
                await c.settled()
                if self.options.plant_follower_skips_fsync:
                    await self._reboot_cleanly()
                await self._workload()
                await self._finish()
        finally:
            if self.firewall is not None:
                self.firewall.close()
            if self.disks is not None:
                self.disks.close()
        history = [op for op in self.recorder.history if op.input.key in self.workload.registers]
        self.result.operations = len(self.recorder.attempts)
        self.result.unknown = self.recorder.unknown
        result = check(kv_model, history, timeout=CHECK_TIMEOUT_S)
        self.result.verdict, self.result.check = result.verdict, result
        self.result.elapsed_s = time.monotonic() - started
        return self.result

    async def _reboot_cleanly(self) -> None:
        """Restart every server without losing anything, once, in the control run: with
        the planted bug a follower's first election records a commit index that no synced
        entry backs, so without this its first crash ends in a refusal to start rather
        than in the lost writes the control run is to show (see ``disk.py``: what is on
        disk at a restart counts as durable)."""
        for server in self.cluster.every_server():
            await self.cluster.crash(server)
            crash_disk(
                self.cluster.raft_dir(server),
                self.rng,
                lose_unsynced=False,
                tear=False,
                tear_synced=False,
            )
            await self.cluster.restart(server)
        await self.cluster.settled()

    async def _workload(self) -> None:
        o, c = self.options, self.cluster
        stop_changes = asyncio.Event()
        clients = []
        async with contextlib.AsyncExitStack() as stack:
            for n in range(o.clients):
                kv = await stack.enter_async_context(
                    c.client(deadline_s=CALL_DEADLINE_S, first_seq=0, client_id=f"jepsen-{n}")
                )
                rng = random.Random(self.rng.getrandbits(64))
                clients.append(asyncio.create_task(self.workload.client(kv, n, rng)))
            changes = asyncio.create_task(self._changes(stop_changes))
            try:
                await self._faults(self._now() + o.duration_s)
            finally:
                stop_changes.set()
                self.workload.stop.set()
                await asyncio.gather(changes, *clients, return_exceptions=True)
        self.result.unavailability = longest_waits(
            self.recorder, [*self.result.faults, *self.result.changes], self._now()
        )

    async def _finish(self) -> None:
        c = self.cluster
        if self.firewall is not None:
            self.firewall.heal()
        if self.disks is not None:
            for server in sorted(self.disks.filled):
                self.disks.heal(server)
        for server in sorted(c.paused):
            await c.resume(server)
        self.result.problems += [f"no restart: {f}" for f in self.nemesis.restart_failures]
        for server in c.every_server():
            if not c.running(server):
                try:
                    await c.restart(server)
                except (RuntimeError, TimeoutError) as exc:
                    line = c.last_log_line(server)
                    self.result.problems.append(f"{server} did not restart: {exc}: {line}")
        try:
            await c.settled(SETTLE_TIMEOUT_S)
        except TimeoutError as exc:
            self.result.problems.append(f"did not settle: {exc}")
        final: dict[str, str | None] = {}
        async with c.client(deadline_s=FINAL_READ_DEADLINE_S, client_id="jepsen-final") as kv:
            for key in [*self.workload.registers, *self.workload.sets]:
                value = await self.workload.register(kv, "final", KvOp("get", key))
                if value is not None and not isinstance(value, str):
                    self.result.problems.append(f"final read of {key} failed")
                    continue
                final[key] = value
        self.result.lost, self.result.doubled = lost_and_doubled(self.recorder, final)


async def run_faults(base_dir: Path, options: RunOptions) -> RunResult:
    """One run (see the module docstring)."""
    return await FaultRun(base_dir, options).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardwise.testing.faults")
    parser.add_argument("--seed", type=int, action="append", help="repeatable (default: 1)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(".jepsen"), help="data and logs")
    parser.add_argument("--kinds", help="comma-separated nemeses (default: all)")
    parser.add_argument("--no-lose-unsynced", action="store_true")
    parser.add_argument(
        "--plant-follower-skips-fsync",
        action="store_true",
        help="the control run: followers acknowledge before fsync (must be caught)",
    )
    args = parser.parse_args(argv)
    if unavailable_reason() is None:
        delete_stale_tables()
    failed = 0
    for seed in args.seed or [1]:
        options = RunOptions(
            seed=seed,
            duration_s=args.duration,
            groups=args.groups,
            kinds=args.kinds.split(",") if args.kinds else None,
            lose_unsynced=not args.no_lose_unsynced,
            plant_follower_skips_fsync=args.plant_follower_skips_fsync,
        )
        run_dir = args.dir / f"seed-{seed}-{int(time.time())}"
        result = asyncio.run(run_faults(run_dir, options))
        print(result.log())
        print(result.table())
        print(f"data and server logs: {run_dir}")
        sys.stdout.flush()
        failed += not result.ok
    return 1 if failed else 0
