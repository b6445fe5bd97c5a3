"""Unavailability under faults: shardwise against etcd, the same faults, in one run.

    python bench/faults.py                 # 180 s of faults on each system (about 7 min)
    python bench/faults.py --quick         # a short smoke run (30 s each, shorter holds)
    python bench/faults.py --seed 2 --duration 300 --systems etcd --kinds pause-leader

First the fault harness (``shardwise.testing.faults``) runs on shardwise with only the
nemeses etcd can be given the same way: the partitions (``partition-halves``,
``partition-bridge``, ``isolate-leader``, ``one-way-leader``), pauses (SIGSTOP) and
crashes (``kill -9``, restarted on the same data) of a leader or a follower. It runs one
replica group of 3 (plus the 3-replica controller, which the partitions cut too: it is
part of the cluster), with no configuration changes during the faults, so that one group
stands against one etcd cluster. Then 3 etcd members (``etcd_faults.py``) get the same
faults in the same order (each held for a time drawn from the harness's range, with the
same recovery time after it), under the harness's own workload (``Workload``: 5 clients, 6
registers and 2 sets, the same think time and per-call deadline), recorded with its
``Recorder`` and measured with its ``longest_waits``: for each fault, the longest a call
made during it (or its recovery time) waited until its key answered a call again. Both
register histories are checked for linearizability and both sets for lost inserts.

Election settings: shardwise's servers tick every 50 ms with an election timeout of 10
ticks (randomized in [10, 20) ticks, so 0.5-1 s), a heartbeat every tick, PreVote and
CheckQuorum. etcd gets the same (``--heartbeat-interval=50 --election-timeout=500``:
etcd also randomizes in [1, 2) election timeouts) and ``--pre-vote=true`` (its default
from 3.5; CheckQuorum is always on). Needs root, nftables (``make jepsen-deps``) and
Debian's etcd-server (``make bench-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import inspect
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, cast

from etcd_faults import (
    EtcdFirewall,
    EtcdKv,
    EtcdMembers,
    GuardedFirewall,
    choose_net,
    nat_unavailable_reason,
)
from etcd_faults import delete_stale_tables as delete_stale_etcd_tables
from shardwise.client import Client
from shardwise.raft.ready import RaftConfig
from shardwise.testing.faults.cluster import AddressedCluster
from shardwise.testing.faults.firewall import unavailable_reason
from shardwise.testing.faults.nemesis import Injected
from shardwise.testing.faults.run import (
    CALL_DEADLINE_S,
    CHECK_TIMEOUT_S,
    FINAL_READ_DEADLINE_S,
    SETTLE_TIMEOUT_S,
    FaultRun,
    RunOptions,
    RunResult,
    hold_fault,
    longest_waits,
)
from shardwise.testing.faults.workload import Recorder, Workload, lost_and_doubled
from shardwise.testing.history import KvOp, kv_model
from shardwise.testing.linearizability import check

KINDS: Final = (
    "partition-halves",
    "partition-bridge",
    "isolate-leader",
    "one-way-leader",
    "pause-leader",
    "pause-follower",
    "crash-leader",
    "crash-follower",
)
NO_CHANGES: Final = (1e9, 1e9)
"""``RunOptions.change_every_s`` that makes no configuration change during the run."""

TICK_MS: Final[int] = inspect.signature(AddressedCluster).parameters["tick_ms"].default
RAFT: Final = RaftConfig()
ETCD_HEARTBEAT_MS: Final = TICK_MS * RAFT.heartbeat_ticks
ETCD_ELECTION_MS: Final = TICK_MS * RAFT.election_ticks


def options_for(seed: int, duration_s: float, quick: bool, kinds: list[str]) -> RunOptions:
    options = RunOptions(
        seed=seed, duration_s=duration_s, groups=1, kinds=kinds, change_every_s=NO_CHANGES
    )
    if quick:  # as the harness's own test: every kind about once in 30 s
        options.fault_s, options.recover_s = (1.0, 2.0), 1.5
    if hasattr(options, "disk_faults"):
        options.disk_faults = False  # etcd keeps its data on the ordinary disk: so does shardwise
    return options


# --- shardwise -----------------------------------------------------------------------


async def run_shardwise(base: Path, options: RunOptions) -> tuple[RunResult, Recorder, int]:
    """The harness's run (``run_faults``) with its firewall's table renamed (see
    ``GuardedFirewall``); the result, its calls, and how often the table was found gone."""
    fault_run = FaultRun(base, options)
    guarded = GuardedFirewall(f"{fault_run.cluster.net}")
    if fault_run.firewall is not None:
        fault_run.firewall = fault_run.nemesis.firewall = guarded
    result = await fault_run.run()
    return result, fault_run.recorder, guarded.lost_table


# --- etcd ----------------------------------------------------------------------------


class EtcdNemesis:
    """The harness's nemeses (``faults/nemesis.py``), on one etcd cluster."""

    def __init__(self, members: EtcdMembers, firewall: EtcdFirewall, rng: random.Random) -> None:
        self.members = members
        self.firewall = firewall
        self.rng = rng
        self.restart_failures: list[str] = []

    async def _leader(self) -> str:
        return await self.members.leader() or self.rng.choice(self.members.names)

    async def _follower(self) -> str:
        leader = await self._leader()
        return self.rng.choice([n for n in self.members.names if n != leader])

    def _cut(self, sides: Iterable[set[str]]) -> None:
        """Only members on a common side talk (sides may overlap: a bridge)."""
        ips = self.members.hosts
        side_sets = list(sides)
        self.firewall.set_cuts(
            (ips[a], ips[b])
            for a in ips
            for b in ips
            if a != b and not any(a in side and b in side for side in side_sets)
        )

    async def _heal(self) -> str:
        self.firewall.heal()
        return ""

    async def inject(self, kind: str) -> Injected:
        m, names = self.members, self.members.names
        if kind == "partition-halves":
            minority = {self.rng.choice(names)}
            self._cut([minority, set(names) - minority])
            return Injected(kind, f"minority {sorted(minority)}", self._heal)
        if kind == "partition-bridge":
            a, b, c = self.rng.sample(names, 3)
            self._cut([{a, b}, {b, c}])
            return Injected(kind, f"bridge {b}", self._heal)
        if kind in ("isolate-leader", "one-way-leader"):
            leader = await self._leader()
            ip, others = m.hosts[leader], [m.hosts[n] for n in names if n != leader]
            links = [(ip, o) for o in others]
            if kind == "isolate-leader":
                links += [(o, ip) for o in others]
            self.firewall.set_cuts(links)
            return Injected(kind, f"leader {leader}", self._heal)
        victim = await (self._leader() if kind.endswith("leader") else self._follower())
        if kind.startswith("pause"):
            await m.pause(victim)

            async def resume() -> str:
                await m.resume(victim)
                return ""

            return Injected(kind, victim, resume)
        await m.crash(victim)

        async def restart() -> str:
            try:
                await m.restart(victim)
            except (RuntimeError, TimeoutError) as exc:
                self.restart_failures.append(f"{victim}: {exc}")
            return ""

        return Injected(kind, victim, restart)


class EtcdRun:
    """The harness's run (``FaultRun``) on etcd: ``plan`` is the kinds to inject, in
    order (the shardwise run's); without one, each kind once in a seeded order, again and
    again until the duration is up, as the harness does."""

    def __init__(self, base: Path, options: RunOptions, plan: list[str] | None) -> None:
        self.options = options
        self.plan = plan
        self.rng = random.Random(options.seed)
        self.members = EtcdMembers(
            base, choose_net(), heartbeat_ms=ETCD_HEARTBEAT_MS, election_ms=ETCD_ELECTION_MS
        )
        uids = {self.members.hosts[n]: uid for n, uid in self.members.uids.items()}
        self.firewall = EtcdFirewall(uids, self.members.net)
        self.nemesis = EtcdNemesis(
            self.members, self.firewall, random.Random(self.rng.getrandbits(64))
        )
        self.result = RunResult(options.seed)
        self.recorder = Recorder()
        self.workload = Workload(self.recorder, options.registers, options.sets, options.think_s)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _next_kind(self, queue: list[str]) -> str:
        if self.plan is not None:
            return self.plan[len(self.result.faults)]
        if not queue:
            queue += self.options.kinds or KINDS
            self.rng.shuffle(queue)
        return queue.pop(0)

    def _more(self, end: float) -> bool:
        if self.plan is not None:
            return len(self.result.faults) < len(self.plan)
        return self._now() < end

    async def _faults(self, end: float) -> None:
        queue: list[str] = []
        while self._more(end):
            kind = self._next_kind(queue)
            record = await hold_fault(self.nemesis, kind, self.rng, self.options)
            self.result.faults.append(record)
            await asyncio.sleep(self.options.recover_s)

    async def run(self) -> RunResult:
        o, started = self.options, time.monotonic()
        self.firewall.open()
        try:
            await self.members.start()
            self.result.t0 = self._now()
            await self.members.settled(SETTLE_TIMEOUT_S)
            kvs = [EtcdKv(self.members.addresses, n, CALL_DEADLINE_S) for n in range(o.clients)]
            clients = []
            for n, kv in enumerate(kvs):
                rng = random.Random(self.rng.getrandbits(64))
                # EtcdKv has the calls of Client that Workload makes.
                clients.append(asyncio.create_task(self.workload.client(cast(Client, kv), n, rng)))
            try:
                await self._faults(self._now() + o.duration_s)
            finally:
                self.workload.stop.set()
                await asyncio.gather(*clients, return_exceptions=True)
                for kv in kvs:
                    await kv.close()
            self.result.unavailability = longest_waits(
                self.recorder, self.result.faults, self._now()
            )
            await self._finish()
        finally:
            await self.members.close()
            self.firewall.close()
        history = [op for op in self.recorder.history if op.input.key in self.workload.registers]
        self.result.operations = len(self.recorder.attempts)
        self.result.unknown = self.recorder.unknown
        verdict = check(kv_model, history, timeout=CHECK_TIMEOUT_S)
        self.result.verdict, self.result.check = verdict.verdict, verdict
        if self.firewall.lost_table:
            self.result.problems.append(f"nft table deleted by others {self.firewall.lost_table}x")
        self.result.elapsed_s = time.monotonic() - started
        return self.result

    async def _finish(self) -> None:
        m = self.members
        self.result.problems += [f"no restart: {f}" for f in self.nemesis.restart_failures]
        self.firewall.heal()
        for name in sorted(m.paused):
            await m.resume(name)
        for name in m.names:
            if not m.running(name):
                try:
                    await m.restart(name)
                except (RuntimeError, TimeoutError) as exc:
                    self.result.problems.append(f"{name} did not restart: {exc}")
        try:
            await m.settled(SETTLE_TIMEOUT_S)
        except TimeoutError as exc:
            self.result.problems.append(str(exc))
        kv = EtcdKv(m.addresses, 0, FINAL_READ_DEADLINE_S)
        final: dict[str, str | None] = {}
        for key in [*self.workload.registers, *self.workload.sets]:
            value = await self.workload.register(cast(Client, kv), "final", KvOp("get", key))
            if value is not None and not isinstance(value, str):
                self.result.problems.append(f"final read of {key} failed")
                continue
            final[key] = value
        await kv.close()
        self.result.lost, self.result.doubled = lost_and_doubled(self.recorder, final)


# --- the report ----------------------------------------------------------------------


def etcd_version() -> str:
    done = subprocess.run(
        [shutil.which("etcd") or "etcd", "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.splitlines()[0] if done.stdout else "etcd (version unknown)"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, load average {load}"
    )


def comparison(results: dict[str, RunResult], kinds: list[str]) -> str:
    ours, peer = results.get("shardwise"), results.get("etcd")
    lines = [
        "| fault | injected (shardwise / etcd) | shardwise | etcd | shardwise / etcd |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        counts, worst = [], []
        for result in (ours, peer):
            n = sum(f.kind == kind for f in result.faults) if result else 0
            counts.append(str(n) if result else "-")
            seconds = result.unavailability.get(kind) if result and n else None
            worst.append(seconds)
        shown = [f"{s:.2f} s" if s is not None else "-" for s in worst]
        a, b = worst
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        lines.append(f"| {kind} | {' / '.join(counts)} | {shown[0]} | {shown[1]} | {ratio} |")
    return "\n".join(lines)


def fault_log(result: RunResult, recorder: Recorder) -> str:
    """The run's faults, each with the call that waited longest (``longest_waits`` per
    fault rather than per kind): when it was made, on which key, and how it ended."""
    answered: dict[str, list[float]] = {}
    for attempt in recorder.attempts:
        if attempt.done is not None:
            answered.setdefault(attempt.key, []).append(attempt.done)
    for times in answered.values():
        times.sort()
    until = max((t[-1] for t in answered.values()), default=0.0)
    lines = []
    for r in result.faults:
        wait, worst = 0.0, None
        for attempt in recorder.attempts:
            if r.start <= attempt.call < r.end:
                times = answered.get(attempt.key, [])
                i = bisect.bisect_left(times, attempt.call)
                waited = (times[i] if i < len(times) else until) - attempt.call
                if waited > wait:
                    wait, worst = waited, attempt
        line = f"{r.start - result.t0:8.2f}-{r.end - result.t0:8.2f} {r.kind} {r.what}"
        if worst is not None:
            ended = f"answered in {worst.done - worst.call:.2f} s" if worst.done else "failed"
            line += (
                f" | longest {wait:.2f} s: a call at {worst.call - result.t0:.2f} on "
                f"{worst.key} ({ended})"
            )
        lines.append(line)
    return "\n".join(lines)


def summary(name: str, result: RunResult, lost_table: int = 0) -> str:
    faults = len(result.faults)
    line = (
        f"{name}: {result.operations} operations ({result.unknown} unknown), {faults} faults "
        f"in {result.elapsed_s:.0f} s; {result.verdict.value}, {len(result.lost)} lost, "
        f"{len(result.doubled)} doubled"
    )
    if lost_table:
        line += f"; WARNING: its nft table was deleted by another run {lost_table}x"
    return line + "".join(f"\n  problem: {p}" for p in result.problems)


async def run(args: argparse.Namespace, base: Path) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    options = options_for(args.seed, args.duration, args.quick, args.kinds)
    results: dict[str, RunResult] = {}
    lost_table = 0
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()}", flush=True)
    if "shardwise" in args.systems:
        ours, calls, lost_table = await run_shardwise(base / "shardwise", options)
        results["shardwise"] = ours
        print(f"\n## shardwise\n{fault_log(ours, calls)}\n{ours.table()}", flush=True)
    if "etcd" in args.systems:
        plan = [f.kind for f in results["shardwise"].faults] if results else None
        etcd = EtcdRun(base / "etcd", options, plan)
        results["etcd"] = await etcd.run()
        print(f"\n## etcd\n{fault_log(results['etcd'], etcd.recorder)}\n{results['etcd'].table()}")
    print(f"\n# {time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()}")
    print(
        f"seed {args.seed}, {args.duration:.0f} s of faults, each held "
        f"{options.fault_s[0]:g}-{options.fault_s[1]:g} s, {options.recover_s:g} s of "
        f"recovery; {options.clients} clients, {options.registers} registers + "
        f"{options.sets} sets, think {options.think_s * 1000:.0f} ms, deadline "
        f"{CALL_DEADLINE_S:.0f} s per call\n"
        f"shardwise: tick {TICK_MS} ms, election timeout {RAFT.election_ticks}-"
        f"{2 * RAFT.election_ticks} ticks ({ETCD_ELECTION_MS}-{2 * ETCD_ELECTION_MS} ms), "
        f"heartbeat {ETCD_HEARTBEAT_MS} ms, PreVote {RAFT.pre_vote}, CheckQuorum "
        f"{RAFT.check_quorum}; 1 group of 3 + 3 controllers\n"
        f"etcd: {etcd_version()}, --heartbeat-interval={ETCD_HEARTBEAT_MS} "
        f"--election-timeout={ETCD_ELECTION_MS} (randomized {ETCD_ELECTION_MS}-"
        f"{2 * ETCD_ELECTION_MS} ms) --pre-vote=true; 3 members\n"
    )
    print(comparison(results, args.kinds) + "\n")
    for name, result in results.items():
        print(summary(name, result, lost_table if name == "shardwise" else 0))
    few = {
        f"{name} {kind}"
        for name, result in results.items()
        for kind in args.kinds
        if sum(f.kind == kind for f in result.faults) < 2
    }
    if few:
        print(f"injected fewer than twice (a longer --duration helps): {', '.join(sorted(few))}")
    return 0 if all(r.ok for r in results.values()) else 1


def missing(systems: list[str]) -> str | None:
    if reason := unavailable_reason():
        return f"partitions cannot run: {reason} (run as root after `make jepsen-deps`)"
    if "etcd" in systems and shutil.which("etcd") is None:
        return "etcd is not installed: `make bench-deps` installs Debian's etcd-server"
    if "etcd" in systems:
        return nat_unavailable_reason()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--duration", type=float, help="seconds of faults per system (default 180, quick 30)"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--systems", default="shardwise,etcd", help="comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help="a subset of the faults")
    parser.add_argument("--dir", type=Path, help="data and logs (default: a temporary dir)")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    if unknown := set(args.systems) - {"shardwise", "etcd"}:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    args.kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    if args.duration is None:
        args.duration = 30.0 if args.quick else 180.0
    if reason := missing(args.systems):
        print(reason, file=sys.stderr)
        return 2
    delete_stale_etcd_tables()
    base = args.dir or Path(tempfile.mkdtemp(prefix="shardwise-faults-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # etcd's members run as users of their own (etcd_faults.py)
    code = 130
    try:
        code = asyncio.run(run(args, base))
    except asyncio.CancelledError:
        print("stopped", file=sys.stderr)
    finally:
        if args.dir is None and code == 0:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"data and logs: {base}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
