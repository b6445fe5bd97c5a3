"""Transactions under the simulator's nemesis, checked for serializability.

One run, determined by its seed, in the simulator (:class:`SimCluster` on virtual time),
under the nemesis of ``simnemesis.py`` (moves, joins, leaves, crashes, an isolated
server, a lossy network), with two workloads at once:

* **list-append**: transactions of one to four reads and appends over a few keys (an
  append reads the key's list and writes it back longer; every element is unique per
  key), checked by the dependency-graph checker (``serializability.py``): no G0, G1a,
  G1b, G1c, G-single or G2 cycle, with real-time edges (strict serializability);
Now and then (``client_deaths``) a client dies mid-commit: it prepares some groups and
never resolves (:func:`prepare_and_die`), so the participants' recovery must settle it.

* **bank**: transfers between accounts (refused when the source would go negative)
  and reads of every account, checked by ``txn_history.check_bank``: every read sees
  the initial total, no balance is ever negative.

A transaction that commits is ``ok``; one refused by a conflict is ``fail`` (it changed
nothing); one whose outcome the client never learnt (a timeout) is ``info``. At the end
everything heals and a final read of every key joins each history.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shardwise.client import Client
from shardwise.client.txn import Transaction
from shardwise.errors import ClientError
from shardwise.model.txn import TransactionConflictError, new_txn_id
from shardwise.net.leader import CallDeadline, loop_time
from shardwise.shardserver.protocol import TXN_PREPARE, TxnPrepareRequest
from shardwise.testing.cluster import Cluster, SimCluster
from shardwise.testing.serializability import check_list_append
from shardwise.testing.simnemesis import SimNemesis
from shardwise.testing.txn_history import (
    Append,
    BalanceRead,
    Mop,
    Read,
    Transfer,
    Txn,
    TxnCheckResult,
    TxnStatus,
    Verdict,
    check_bank,
)

TXN_DEADLINE_S: Final = 4.0
"""One transaction's deadline; past it the outcome is unknown (``info``)."""
INITIAL_BALANCE: Final = 100


@dataclass
class TxnSweepOptions:
    groups: int = 3
    clients: int = 4
    keys: int = 6
    accounts: int = 5
    duration_s: float = 12.0
    nemesis_pause_s: tuple[float, float] = (0.3, 1.5)
    think_s: tuple[float, float] = (0.01, 0.06)
    client_deaths: float = 0.05
    """The share of transactions whose client dies mid-commit (:func:`prepare_and_die`)."""
    join_all: bool = False
    """Start with every group joined (transactions span groups from the start)."""


@dataclass
class TxnSweepResult:
    seed: int
    appends: TxnCheckResult
    bank: TxnCheckResult
    transactions: int
    committed: int
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.appends.verdict is Verdict.VALID
            and self.bank.verdict is Verdict.VALID
            and not self.problems
        )

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: list-append {self.appends.verdict.value}, bank "
            f"{self.bank.verdict.value}; {self.transactions} transactions, "
            f"{self.committed} committed",
            *self.problems,
        ]
        for name, result in (("list-append", self.appends), ("bank", self.bank)):
            if result.verdict is not Verdict.VALID:
                lines += [f"{name}:", result.explain()]
        lines += ["nemesis:", *(f"  {e}" for e in self.events)]
        return "\n".join(lines)


def _list(value: str | bytes | None) -> tuple[int, ...]:
    text = value.decode() if isinstance(value, bytes) else (value or "")
    return tuple(int(x) for x in text.split(",") if x)


async def prepare_and_die(tx: Transaction, rng: random.Random) -> None:
    """A client that dies mid-commit: it sends the prepares of some of the transaction's
    groups (perhaps all, perhaps none) and never resolves; its participants' recovery
    must settle it (committed only if every participant prepared)."""
    call = CallDeadline.starting_now("a commit cut short", loop_time() + TXN_DEADLINE_S)
    parts = await tx.parts(call)
    if not parts:
        return
    protocol = tx.protocol
    groups, _ = await protocol.participants.by_group(parts, call)
    chosen = rng.sample(groups, rng.randint(0, len(groups)))
    participants, txn = tuple(parts), new_txn_id()
    for group in chosen:
        request = TxnPrepareRequest(txn, participants, tuple(parts[s] for s in group))
        with contextlib.suppress(ClientError):
            await protocol.router.call(group[0], TXN_PREPARE, request, call)


def _balance(value: str | bytes | None) -> int:
    """An account's balance: absent until first written, it starts at the initial one."""
    return INITIAL_BALANCE if value is None else int(value)


async def run_txn_sweep(
    seed: int, base_dir: Path, options: TxnSweepOptions | None = None
) -> TxnSweepResult:
    """One seeded run; call it on a virtual-time loop. See the module docstring."""
    return await TxnSweep(seed, base_dir, options or TxnSweepOptions()).run()


class TxnWorkloads:
    """The two workloads and their histories, on any :class:`Cluster` (the simulator's
    in :class:`TxnSweep`, real processes in ``tests/shardserver/test_txn_processes.py``):
    :meth:`client` runs one client until :attr:`stop`, :meth:`final_reads` adds the
    final reads, :meth:`verdict` checks both histories."""

    def __init__(self, seed: int, cluster: Cluster, options: TxnSweepOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.cluster = cluster
        self.keys = [f"list{i}" for i in range(options.keys)]
        self.accounts = [f"acct{i}" for i in range(options.accounts)]
        self.appends: list[Txn] = []
        self.bank: list[Txn] = []
        self._next_element: dict[str, int] = {}
        self.stop = asyncio.Event()

    # --- the workloads ---------------------------------------------------------------

    async def client(self, n: int) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        async with self.cluster.client(deadline_s=TXN_DEADLINE_S, first_seq=0) as kv:
            while not self.stop.is_set():
                if rng.random() < 0.6:
                    await self._list_append(kv, n, rng)
                else:
                    await self._banking(kv, n, rng)
                await asyncio.sleep(rng.uniform(*self.options.think_s))

    def _element(self, key: str) -> int:
        self._next_element[key] = self._next_element.get(key, 0) + 1
        return self._next_element[key]

    async def _list_append(self, kv: Client, n: int, rng: random.Random) -> None:
        planned: list[tuple[str, str]] = [
            (rng.choice(("r", "append")), rng.choice(self.keys)) for _ in range(rng.randint(1, 4))
        ]
        mops: list[Mop] = []

        async def body(tx: Transaction) -> None:
            mops.clear()
            for kind, key in planned:
                current = _list(await tx.get(key))
                if kind == "r":
                    mops.append(Read(key, current))
                else:
                    element = self._element(key)
                    tx.put(key, ",".join(str(x) for x in (*current, element)))
                    mops.append(Append(key, element))

        dies = rng.random() < self.options.client_deaths
        await self._run(kv, n, body, mops, self.appends, abandon=rng if dies else None)

    async def _banking(self, kv: Client, n: int, rng: random.Random) -> None:
        mops: list[Mop] = []
        if rng.random() < 0.4:

            async def body(tx: Transaction) -> None:
                mops.clear()
                for account in self.accounts:
                    mops.append(BalanceRead(account, _balance(await tx.get(account))))

        else:
            source, dest = rng.sample(self.accounts, 2)
            amount = rng.randint(1, 30)

            async def body(tx: Transaction) -> None:
                mops.clear()
                have = _balance(await tx.get(source))
                mops.append(BalanceRead(source, have))
                if have >= amount:
                    tx.put(source, str(have - amount))
                    tx.put(dest, str(_balance(await tx.get(dest)) + amount))
                    mops.append(Transfer(source, dest, amount))

        dies = rng.random() < self.options.client_deaths
        await self._run(kv, n, body, mops, self.bank, abandon=rng if dies else None)

    async def _run(
        self,
        kv: Client,
        n: int,
        body: Callable[[Transaction], Awaitable[None]],
        mops: list[Mop],
        history: list[Txn],
        *,
        abandon: random.Random | None = None,
    ) -> None:
        """One attempt (no retry: an aborted attempt is a ``fail`` of the history);
        ``abandon``: the client dies mid-commit (see :func:`prepare_and_die`)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        status: TxnStatus = "ok"
        try:
            tx = kv.transaction()
            await body(tx)
            if abandon is not None:
                await prepare_and_die(tx, abandon)
                status = "info"
            else:
                await tx.commit()
        except TransactionConflictError:
            status = "fail"
        except ClientError:
            status = "info"
        end = loop.time()
        kept = [m for m in mops if status == "ok" or not isinstance(m, Read | BalanceRead)]
        if status == "info":  # reads of an unknown transaction say nothing
            kept = [m for m in kept if isinstance(m, Append | Transfer)]
        returned = end if status != "info" else math.inf
        history.append(Txn(len(history), n, status, tuple(kept), start, returned))

    # --- the end -------------------------------------------------------------------

    async def final_reads(self) -> list[str]:
        """Every list and every account read in one transaction each (the cluster healed);
        the problems found."""
        problems: list[str] = []
        async with self.cluster.client(first_seq=0, deadline_s=60.0) as kv:
            lists: list[Mop] = []

            async def read_all(tx: Transaction) -> None:
                lists[:] = [Read(key, _list(await tx.get(key))) for key in self.keys]

            await self._run(kv, -1, read_all, lists, self.appends)
            balances: list[Mop] = []

            async def read_accounts(tx: Transaction) -> None:
                balances[:] = [BalanceRead(a, _balance(await tx.get(a))) for a in self.accounts]

            await self._run(kv, -1, read_accounts, balances, self.bank)
        for history in (self.appends, self.bank):
            if history[-1].status != "ok":
                problems.append(f"the final read did not commit: {history[-1]}")
        return problems

    def verdict(self, problems: list[str], events: list[str]) -> TxnSweepResult:
        initial: dict[int | str, int] = {a: INITIAL_BALANCE for a in self.accounts}
        appends = check_list_append(self.appends, realtime=True, timeout=120.0)
        bank = check_bank(self.bank, initial)
        every = [*self.appends, *self.bank]
        committed = sum(t.status == "ok" for t in every)
        return TxnSweepResult(self.seed, appends, bank, len(every), committed, events, problems)


class TxnSweep:
    """One run in the simulator (see the module docstring)."""

    def __init__(self, seed: int, base_dir: Path, options: TxnSweepOptions) -> None:
        self.options = options
        self.cluster = SimCluster(base_dir, groups=options.groups, seed=seed)
        self.workloads = TxnWorkloads(seed, self.cluster, options)
        self.nemesis = SimNemesis(self.cluster, self.workloads.rng)

    async def run(self) -> TxnSweepResult:
        o, w = self.options, self.workloads
        async with self.cluster:
            clients = [w.client(n) for n in range(o.clients)]
            problems = await self.nemesis.drive(
                clients, o.duration_s, o.nemesis_pause_s, w.stop, join_all=o.join_all
            )
            problems += await w.final_reads()
        return w.verdict(problems, self.nemesis.events)
