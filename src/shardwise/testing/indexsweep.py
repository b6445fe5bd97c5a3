"""Global indexes under the simulator's nemesis, checked for consistency.

One run, determined by its seed: a table with a global UNIQUE index (from its
``UNIQUE`` column) and, in half the runs, a second, covering global index built online
while the clients write (``CREATE INDEX ... WITH (scope = 'global')`` mid-run; a build
cut short by a fault runs again after the heal and resumes). Clients insert, update and
delete rows by the distribution column and by the indexed one, alone and in
transactions, over few distinct values (so UNIQUE collisions are frequent), under the
nemesis of ``simnemesis.py`` (moves, joins, leaves, crashes, an isolated server, a lossy
network). Statements may fail (a duplicate, a conflict, a timeout whose outcome is
unknown): whatever happened, at the end, after a heal, every index must equal the index
rebuilt from its table (``index_check.py``), and every lookup through an index must
answer as a scan that cannot use it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shardwise.client import Client
from shardwise.errors import ClientError, ShardwiseError, SqlConstraintError
from shardwise.net.leader import loop_time
from shardwise.testing.cluster import SimCluster
from shardwise.testing.index_check import index_problems
from shardwise.testing.simnemesis import SimNemesis

STATEMENT_DEADLINE_S: Final = 4.0
CREATE: Final = (
    "CREATE TABLE accounts (id INTEGER NOT NULL, email TEXT UNIQUE, handle TEXT, "
    "score INTEGER) WITH (distribution = 'id')"
)
BUILD: Final = "CREATE INDEX by_handle ON accounts (handle) INCLUDE (score) WITH (scope = 'global')"


@dataclass
class IndexSweepOptions:
    groups: int = 3
    clients: int = 3
    duration_s: float = 4.0
    nemesis_pause_s: tuple[float, float] = (0.4, 1.2)
    think_s: tuple[float, float] = (0.01, 0.05)
    ids: int = 30
    emails: int = 10
    handles: int = 6
    build: bool = True
    """Build the second index while the clients write."""


@dataclass
class IndexSweepResult:
    seed: int
    problems: list[str]
    events: list[str]
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {len(self.problems)} problem(s); outcomes {self.outcomes}"]
        lines.extend(f"  {p}" for p in self.problems[:20])
        lines.append("events:")
        lines.extend(f"  {e}" for e in self.events[-40:])
        return "\n".join(lines)


class IndexSweep:
    def __init__(self, seed: int, base_dir: Path, options: IndexSweepOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.cluster = SimCluster(base_dir, groups=options.groups, seed=seed)
        self.nemesis = SimNemesis(self.cluster, self.rng)
        self.stop = asyncio.Event()
        self.outcomes: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    async def run(self) -> IndexSweepResult:
        o = self.options
        async with self.cluster:
            await self.cluster.join(*self.cluster.servers)
            await self.cluster.settled()
            async with self.cluster.client() as admin:
                await admin.sql(CREATE)
            tasks = [self._client(n) for n in range(o.clients)]
            if o.build:
                tasks.append(self._builder())
            problems = await self.nemesis.drive(tasks, o.duration_s, o.nemesis_pause_s, self.stop)
            async with self.cluster.client() as admin:
                if o.build:  # (resumes a build a fault cut short; nothing if it finished)
                    resume = BUILD.replace("INDEX by_handle", "INDEX IF NOT EXISTS by_handle")
                    await admin.sql(resume, deadline_s=60.0)
                problems += await self._check(admin)
        return IndexSweepResult(self.seed, problems, self.nemesis.events, self.outcomes)

    async def _builder(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, self.options.duration_s / 2))
        async with self.cluster.client() as kv:
            try:
                await kv.sql(BUILD, deadline_s=30.0)
                self._count("build done")
            except (ClientError, ShardwiseError) as exc:
                self._count(f"build cut short: {type(exc).__name__}")

    async def _client(self, n: int) -> None:
        o, rng = self.options, random.Random(self.rng.getrandbits(64))
        async with self.cluster.client() as kv:
            while not self.stop.is_set():
                await asyncio.sleep(rng.uniform(*o.think_s))
                statements = self._statements(rng)
                try:
                    if len(statements) == 1:
                        await kv.sql(*statements[0], deadline_s=STATEMENT_DEADLINE_S)
                    else:
                        await self._transaction(kv, statements)
                    self._count("ok")
                except (ClientError, ShardwiseError) as exc:
                    duplicate = isinstance(exc, SqlConstraintError)
                    self._count("duplicate" if duplicate else type(exc).__name__)
                    if kv.in_transaction:
                        await kv.sql("ROLLBACK")  # (drops it: nothing is sent)
        del n

    async def _transaction(self, kv: Client, statements: list[tuple[str, list[object]]]) -> None:
        await kv.sql("BEGIN")
        for statement in statements:
            await kv.sql(*statement, deadline_s=STATEMENT_DEADLINE_S)
        await kv.sql("COMMIT", deadline_s=STATEMENT_DEADLINE_S)

    def _statements(self, rng: random.Random) -> list[tuple[str, list[object]]]:
        count = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        return [self._statement(rng) for _ in range(count)]

    def _statement(self, rng: random.Random) -> tuple[str, list[object]]:
        o = self.options
        row_id = rng.randrange(o.ids)
        email = None if rng.random() < 0.1 else f"e{rng.randrange(o.emails)}"
        handle = (
            None
            if rng.random() < 0.1
            else rng.choice([f"h{rng.randrange(o.handles)}", rng.randrange(o.handles)])
        )
        kind = rng.random()
        if kind < 0.35:
            return (
                "INSERT INTO accounts VALUES (?, ?, ?, ?)",
                [row_id, email, handle, rng.randrange(100)],
            )
        if kind < 0.45:
            other = rng.randrange(o.ids)
            return (
                "INSERT INTO accounts VALUES (?, ?, ?, 1), (?, ?, ?, 2)",
                [row_id, email, handle, other, f"e{rng.randrange(o.emails)}", handle],
            )
        if kind < 0.63:
            return ("UPDATE accounts SET email = ? WHERE id = ?", [email, row_id])
        if kind < 0.73:
            return (
                "UPDATE accounts SET handle = ?, score = score + 1 WHERE id = ?",
                [handle, row_id],
            )
        if kind < 0.75:  # (every shard: one transaction over all 64)
            return ("UPDATE accounts SET score = score + 1 WHERE email = ?", [email])
        if kind < 0.97:
            return ("DELETE FROM accounts WHERE id = ?", [row_id])
        return ("DELETE FROM accounts WHERE email = ?", [email])

    async def _check(self, kv: Client) -> list[str]:
        config = await kv.latest_configuration()
        session = kv.sql_session()

        async def read(keyspace: str, sql: str) -> list[list[tuple[Any, ...]]]:
            return await session.read_every_shard(keyspace, sql, loop_time() + 60.0)

        problems = await index_problems(config, read)
        for e in range(0, self.options.emails, 2):  # (half: each scan reads 64 shards)
            by_index = await kv.sql(
                "SELECT id FROM accounts WHERE email = ? ORDER BY id", [f"e{e}"]
            )
            by_scan = await kv.sql(
                "SELECT id FROM accounts WHERE email || '' = ? ORDER BY id", [f"e{e}"]
            )
            if by_index.rows != by_scan.rows:
                problems.append(
                    f"email e{e}: {by_index.rows} by the index, {by_scan.rows} by a scan"
                )
        if self.options.build and not any(
            i.name == "by_handle" and i.state == "public" for i in config.tables["accounts"].indexes
        ):
            problems.append("the online build never finished")
        return problems


async def run_index_sweep(
    seed: int, base_dir: Path, options: IndexSweepOptions
) -> IndexSweepResult:
    return await IndexSweep(seed, base_dir, options).run()
