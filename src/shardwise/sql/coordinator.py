"""The coordinator: plans a statement, runs its fragments on the shards in parallel and
merges what comes back.

Consistency: each shard's fragment is linearizable for that shard (the executor reads
behind a ReadIndex barrier), but the fragments of one multi-shard read run at slightly
different moments, so a read over several shards is not a snapshot across them (in a
transaction it is: the commit validates every shard it read). A write to several shards
is atomic: the executor applies its batches together or not at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shardwise.errors import (
    NondeterministicSqlError,
    ShardwiseError,
    SqlConstraintError,
    SqlExecutionError,
    SqlLimitError,
)
from shardwise.model.config import CreateIndex, SetStats, Table
from shardwise.net.loop import gather_or_cancel
from shardwise.sql.catalog import Catalog, affinity, physical_name
from shardwise.sql.determinism import Determinizer, StatementContext
from shardwise.sql.distribution import Router, stored_key
from shardwise.sql.engine import ScanRows, run_final, run_join, run_local
from shardwise.sql.executor import CatalogStore, Row, ShardExecutor
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.index_build import build_index
from shardwise.sql.merge import Budget, MergeLimits, combine_aggregates, merge_rows
from shardwise.sql.param_insert import place_rows
from shardwise.sql.params import Params
from shardwise.sql.plan_text import explain
from shardwise.sql.planner import plan
from shardwise.sql.plans import (
    AggregateMerge,
    AnalyzePlan,
    Broadcast,
    CatalogPlan,
    IndexLookup,
    InsertSelectPlan,
    JoinPlan,
    LocalEval,
    Plan,
    ReadPlan,
    Repartition,
    RowMerge,
    TableScan,
    WritePlan,
)
from shardwise.sql.repartition import REPARTITION_GROWTH, STEP_PARAM, STEPS_PARAM
from shardwise.sql.row_errors import offending_row, shown
from shardwise.sql.shard_schema import create_table_ddl
from shardwise.sql.shipped import MAX_SHIPPED_VALUES, ShippedTable, shipped_size
from shardwise.sql.values import SqlValue
from shardwise.sql.write_functions import refused_function
from shardwise.sql.writes import plan_insert_rows

EXPLAIN_COLUMN = "QUERY PLAN"
MAX_ROWS_READ_BACK = 500
"""Distribution values per read when a refused INSERT's stored rows are read back to
find the row it refused (the error path only)."""
_STEP_LIMITS = frozenset({"max_rows", "max_bytes", "max_reply_bytes"})
"""The limits a step of a repartition join may pass: more steps hold fewer rows."""
FUNCTION_CHECKS_KEPT = 1024
"""Write statements (by table and text) whose function check is kept."""
_SEEDS = random.Random()
"""Each statement's seed (``StatementContext``), unless a coordinator is given its own
generator: one for all, since seeding a generator from the OS costs more than planning
a kept statement does (a client makes a coordinator per statement)."""


@dataclass(frozen=True, slots=True)
class Result:
    columns: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)
    rowcount: int = -1
    """Rows changed by a write (-1 for reads and DDL, as DB-API's ``rowcount``)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Coordinator:
    """Runs SQL over the shards of an executor, with the catalog of a catalog store."""

    def __init__(
        self,
        shards: ShardExecutor,
        catalog: CatalogStore,
        *,
        limits: MergeLimits | None = None,
        wall_clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._shards = shards
        self._catalog = catalog
        self._limits = limits or MergeLimits()
        self._wall_clock = wall_clock
        self._rng = rng or _SEEDS
        self.last_rows_shipped: dict[int, int] = {}
        """Rows each shard sent for the last read (for benchmarks and tests)."""
        self.last_rows_sent = 0
        """Rows the last read sent to the shards (a broadcast join's, once per shard)."""
        self._analysis: list[str] | None = None
        """What each stage did, while an ``EXPLAIN ANALYZE`` runs."""

    def _context(self) -> StatementContext:
        return StatementContext(self._wall_clock(), self._rng.getrandbits(64))

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        self.last_rows_sent = 0
        catalog = await self._catalog.catalog()
        planned = plan(sql, params, catalog, self._context())
        if planned.explain and planned.analyze:
            return await self._analyze(planned.plan)
        if planned.explain:
            return Result((EXPLAIN_COLUMN,), [(line,) for line in explain(planned.plan)])
        current = planned.plan
        if isinstance(current, ReadPlan):
            return await self._read(current)
        if isinstance(current, JoinPlan):
            return await self._join(current)
        if isinstance(current, InsertSelectPlan):
            read = await (
                self._join(current.read)
                if isinstance(current.read, JoinPlan)
                else self._read(current.read)
            )
            if not read.rows:
                return Result((), [], rowcount=0)
            current = plan_insert_rows(current, read.rows, catalog, Determinizer(self._context()))
        if isinstance(current, WritePlan):
            _check_functions(current, catalog)
            return await self._write(current)
        if isinstance(current, AnalyzePlan):
            return await self._count_rows(current)
        return await self._change(current, catalog)

    async def insert_rows(
        self, table: str, columns: Sequence[str] | None, values: Sequence[object]
    ) -> Result:
        """``values`` (row after row) inserted into ``table`` as the INSERT of them as
        parameters would insert them, planned without SQL text (``place_rows``)."""
        catalog = await self._catalog.catalog()
        write, names, checked = place_rows(table, columns, values, catalog)
        try:
            return await self._write(write)
        except SqlExecutionError as exc:
            width = len(names)
            rows = [checked[n : n + width] for n in range(0, len(checked), width)]
            found = await self._offending(catalog.table(write.table), names, rows)
            if found is None:
                raise
            position, why = found
            where = f"row {position + 1} of the INSERT {shown(names, rows[position])}"
            raise type(exc)(f"{why}: {where}", exc.shard) from exc

    async def _offending(
        self, table: Table, columns: list[str], rows: list[list[SqlValue]]
    ) -> tuple[int, str] | None:
        """The first of ``rows`` a shard refused, and why: against the table's definition
        alone, then with the rows stored under the same distribution values."""
        found = offending_row(table, columns, rows)
        if found is None and table.distribution_column in columns:
            at = columns.index(table.distribution_column)
            keys = list(dict.fromkeys(row[at] for row in rows if row[at] is not None))
            column = quote_identifier(table.distribution_column)
            present: list[Row] = []
            try:
                for first in range(0, len(keys), MAX_ROWS_READ_BACK):
                    part = keys[first : first + MAX_ROWS_READ_BACK]
                    marks = ", ".join(f"${n}" for n in range(1, len(part) + 1))
                    name = quote_identifier(table.name)
                    sql = f"SELECT * FROM {name} WHERE {column} IN ({marks})"
                    present += (await self.execute(sql, part)).rows
            except ShardwiseError:
                return None  # (not readable now, e.g. in a failed transaction: unnamed)
            found = offending_row(table, columns, rows, present)
        if found is None:
            return None
        position, why = found
        return position, why.replace(f"{physical_name(table.name)}.", f"{table.name}.")

    async def _analyze(self, planned: Plan) -> Result:
        """``EXPLAIN ANALYZE``: the plan, then the statement run, with the rows each stage
        moved and its time (the loop's clock: virtual in simulations)."""
        assert isinstance(planned, ReadPlan | JoinPlan)  # (the planner refuses the rest)
        self._analysis = []
        started = _now()
        try:
            result = await (
                self._join(planned) if isinstance(planned, JoinPlan) else self._read(planned)
            )
            lines = [*explain(planned), "actual:", *self._analysis]
        finally:
            self._analysis = None
        lines.append(f"  {len(result.rows):,} rows returned in {_ms(_now() - started)}")
        return Result((EXPLAIN_COLUMN,), [(line,) for line in lines])

    def _note(self, line: str) -> None:
        if self._analysis is not None:
            self._analysis.append(line)

    async def _read(
        self,
        read: ReadPlan,
        budget: Budget | None = None,
        stage: str = "",
        quiet: bool = False,
        *,
        snapshot: bool = False,
    ) -> Result:
        merge = read.merge
        if isinstance(merge, LocalEval):
            return Result(read.columns, run_local(merge.query))
        if read.lookup is not None:
            read = await self._looked_up(read, read.lookup)
        assert read.fragment is not None
        fragment = read.fragment
        budget = budget or Budget(self._limits)
        cap = budget.limits.max_rows + 1

        started = _now()
        reader = self._shards.read_snapshot if snapshot else self._shards.read_shards
        parts = await reader(read.keyspace, read.shards, fragment, cap)
        for rows in parts:
            budget.take(rows)
        self.last_rows_shipped = {i: len(p) for i, p in zip(read.shards, parts, strict=True)}
        sent = sum(self.last_rows_shipped.values())
        most = max(self.last_rows_shipped.values(), default=0)
        if not quiet:
            self._note(
                f"  {stage}{len(read.shards)} shard(s) read in {_ms(_now() - started)}: "
                f"{sent:,} rows sent (at most {most:,} from one shard)"
            )
        return _merged(read, parts)

    async def _looked_up(self, read: ReadPlan, lookup: IndexLookup) -> ReadPlan:
        """``read`` narrowed to the shards of the rows global index ``lookup.index``
        finds (every shard of the plan past ``lookup.max_matches`` distinct values)."""
        limits = dataclasses.replace(self._limits, max_rows=lookup.max_matches)
        try:
            # Several index shards are read as of one moment: an entry moving between
            # two of them (its row's value changing) is then seen once, not 0 or 2 times.
            several = len(lookup.read.shards) > 1
            found = await self._read(lookup.read, Budget(limits), stage="index: ", snapshot=several)
        except SqlLimitError:
            self._note(f"  index {lookup.index}: over {lookup.max_matches:,} matches, every shard")
            return read
        router = Router(lookup.keyspace)
        shards = set()
        for (value,) in found.rows:
            key = stored_key(value, lookup.distribution_affinity)
            if key is None:  # (never so for a value that placed its row)
                return read
            shards.add(router.shard_of(key))
        narrowed = tuple(s for s in read.shards if s in shards) or read.shards[:1]
        self._note(
            f"  index {lookup.index}: {len(found.rows):,} distribution value(s), "
            f"{len(narrowed)} shard(s) to read"
        )
        return dataclasses.replace(read, shards=narrowed, lookup=None)

    async def _repartition(self, parts: Repartition) -> Result:
        """The steps of a repartition join, each its rows of both scans joined here,
        then their answers merged; again in more steps if one is past its bounds."""
        steps = parts.steps
        sent: dict[int, int] = {}  # (by every attempt)
        while True:
            started = _now()
            try:
                answers = await self._steps(parts, steps, sent)
            except _StepFullError as full:
                exc = full.limit
                if steps >= parts.max_steps:
                    raise SqlLimitError(
                        "repartition_step_rows",
                        parts.max_rows,
                        f"a step of the repartition join holds more than {parts.max_rows:,}"
                        f" rows or {parts.max_bytes:,} bytes even in {steps} step(s):"
                        f" one value of {parts.keys[0]} = {parts.keys[1]} has too many rows"
                        " (NULL counts as one, on the side a LEFT JOIN keeps)",
                    ) from None
                more = min(parts.max_steps, steps * REPARTITION_GROWTH)
                self._note(f"  {steps} step(s) too few ({exc.limit}): again in {more}")
                steps = more
                continue
            self._note(
                f"  {steps} step(s) in {_ms(_now() - started)}: {sum(sent.values()):,} rows"
                f" of the scans read (by every attempt), {sum(len(a) for a in answers):,} rows"
                " of answers"
            )
            self.last_rows_shipped = sent
            return _merged(parts.read, answers)

    async def _steps(self, parts: Repartition, steps: int, sent: dict[int, int]) -> list[list[Row]]:
        """The answers of ``steps`` steps, the scans' rows counted into ``sent``; raises
        :class:`_StepFullError` when a step's scans pass its bounds."""
        fragment = parts.read.fragment
        assert fragment is not None
        limits = MergeLimits(
            min(parts.max_rows, self._limits.max_rows),
            min(parts.max_bytes, self._limits.max_bytes),
        )
        answers: list[list[Row]] = []
        held = Budget(self._limits, "the steps' answers")  # (all kept until the merge)

        async def scan(read: ReadPlan, budget: Budget) -> Result:
            try:
                result = await self._read(read, budget, quiet=True)
            except SqlLimitError as exc:
                if exc.limit in _STEP_LIMITS:
                    raise _StepFullError(exc) from None
                raise
            for shard, rows in self.last_rows_shipped.items():  # (set by this read, just now)
                sent[shard] = sent.get(shard, 0) + rows
            return result

        for step in range(steps):
            budget = Budget(limits, "a step of the repartition join")
            values = {STEPS_PARAM: steps, STEP_PARAM: step}
            reads = [_with_params(scan.read, values) for scan in parts.scans]
            results = await gather_or_cancel([scan(r, budget) for r in reads])
            scans = [
                ScanRows(scan.name, scan.columns, result.rows)
                for scan, result in zip(parts.scans, results, strict=True)
            ]
            _, rows = run_join(scans, fragment, self._limits.max_rows, self._limits.max_bytes)
            held.take(rows)  # (past it: more steps would not help)
            answers.append(rows)
        return answers

    async def _join(self, join: JoinPlan) -> Result:
        """Every scan read (together, within one budget), then the statement over them;
        or, for a broadcast join, the shipped scans first, then the shards of the
        anchor with their rows (the coordinator join if they are too many)."""
        budget = Budget(self._limits)
        sent: dict[int, int] = {}
        results: dict[int, Result] = {}

        async def scan(index: int, within: Budget = budget) -> None:
            results[index] = await self._read(join.scans[index].read, within, f"scan {index + 1}: ")
            for shard, rows in self.last_rows_shipped.items():  # (set by this read, just now)
                sent[shard] = sent.get(shard, 0) + rows

        broadcast = join.broadcast
        if broadcast is None and join.repartition is not None:
            return await self._repartition(join.repartition)
        if broadcast is not None and broadcast.read.fragment is None:
            return await self._read(broadcast.read)  # (LIMIT 0: nothing to read)
        if broadcast is not None:
            # Read no more than may be shipped: a table never analyzed may be huge.
            capped = Budget(MergeLimits(broadcast.max_rows, broadcast.max_bytes), "the shipment")
            try:
                await gather_or_cancel([scan(i, capped) for i in broadcast.shipped])
            except SqlLimitError as exc:
                if exc.limit not in _STEP_LIMITS:
                    raise
                results.clear()  # (partly read: the fallback reads them again)
                sent.clear()
            tables = tuple(
                _shipped(join.scans[i], results[i].rows) for i in broadcast.shipped if i in results
            )
            count, values, size = shipped_size(tables)
            if results and values <= MAX_SHIPPED_VALUES and size <= broadcast.max_bytes:
                return await self._broadcast(broadcast, tables, sent)
            instead = "repartition" if join.repartition is not None else "coordinator"
            self._note(
                f"  {'the rows' if not results else f'{count:,} rows'} to ship are over the"
                f" broadcast bounds ({broadcast.max_rows:,} rows, {MAX_SHIPPED_VALUES:,}"
                f" values, {broadcast.max_bytes:,} bytes): the {instead} join instead"
            )
            if join.repartition is not None:
                return await self._repartition(join.repartition)
        rest = [i for i in range(len(join.scans)) if i not in results]
        await gather_or_cancel([scan(i) for i in rest])
        self.last_rows_shipped = sent
        scans = [
            ScanRows(scan.name, scan.columns, results[index].rows)
            for index, scan in enumerate(join.scans)
        ]
        started = _now()
        names, rows = run_join(scans, join.final, self._limits.max_rows, self._limits.max_bytes)
        held = sum(len(scan.rows) for scan in scans)
        self._note(
            f"  at the coordinator: {held:,} rows in {len(scans)} table(s) -> {len(rows):,} rows"
            f" in {_ms(_now() - started)}"
        )
        return Result(_result_names(join.columns, names), rows)

    async def _broadcast(
        self, broadcast: Broadcast, tables: tuple[ShippedTable, ...], sent: dict[int, int]
    ) -> Result:
        read = broadcast.read
        assert read.fragment is not None
        rows = sum(len(t.rows) for t in tables)
        self._note(
            f"  broadcast: {rows:,} rows of {len(tables)} table(s) shipped to each of"
            f" {len(read.shards)} shard(s) ({rows * len(read.shards):,} rows sent)"
        )
        fragment = dataclasses.replace(read.fragment, shipped=tables)
        result = await self._read(dataclasses.replace(read, fragment=fragment), stage="join: ")
        self.last_rows_sent = rows * len(read.shards)
        for shard, count in sent.items():
            self.last_rows_shipped[shard] = self.last_rows_shipped.get(shard, 0) + count
        return result

    async def _write(self, write: WritePlan) -> Result:
        changed = await self._shards.write(write.keyspace, write.batches, write.maintenance)
        return Result((), [], rowcount=changed // write.copies)

    async def _count_rows(self, analyze: AnalyzePlan) -> Result:
        """``ANALYZE``: each table's rows counted, then the counts recorded together."""
        counts: dict[str, int] = {}
        for name, read in zip(analyze.tables, analyze.reads, strict=True):
            (count,), *_ = (await self._read(read)).rows
            assert isinstance(count, int)
            counts[name] = count
        if counts:
            await self._catalog.change(
                SetStats(counts, dict(zip(analyze.tables, analyze.created, strict=True)))
            )
        return Result(("table", "rows"), list(counts.items()))

    async def _change(self, change: CatalogPlan, catalog: Catalog) -> Result:
        op = change.op
        local_unique = isinstance(op, CreateIndex) and op.index.unique and not op.index.is_global
        if local_unique and not change.skip:
            assert isinstance(op, CreateIndex)
            await self._check_unique(op, catalog)
        if not change.skip:
            catalog = await self._catalog.change(op)
        if isinstance(op, CreateIndex) and op.index.is_global:
            table = catalog.tables.get(op.table)
            index = (
                next((i for i in table.indexes if i.name == op.index.name), None) if table else None
            )
            if index is not None and index.state == "building":  # (new, or resumed)
                await build_index(self._shards, self._catalog, op.table, index.name, self._note)
        return Result(())

    async def _check_unique(self, op: CreateIndex, catalog: Catalog) -> None:
        """A local UNIQUE index is refused, with the values, while its table holds
        duplicates (every duplicate is in one shard: the columns include the distribution
        column, or the table is a reference table). A duplicate written between this
        check and the shards' applying the index makes that shard skip the index."""
        columns = ", ".join(quote_identifier(c) for c in op.index.columns)
        present = " AND ".join(f"{quote_identifier(c)} IS NOT NULL" for c in op.index.columns)
        sql = (
            f"SELECT {columns} FROM {quote_identifier(op.table)} WHERE {present} "
            f"GROUP BY {columns} HAVING count(*) > 1 LIMIT 1"
        )
        planned = plan(sql, None, catalog, self._context()).plan
        assert isinstance(planned, ReadPlan)
        found = (await self._read(planned)).rows
        if found:
            raise SqlConstraintError(
                f"could not create unique index {op.index.name!r}: table {op.table!r} holds "
                f"more than one row with ({', '.join(op.index.columns)}) = {found[0]!r}"
            )


class _StepFullError(Exception):
    """A step of a repartition join read more than a step may hold."""

    def __init__(self, limit: SqlLimitError) -> None:
        super().__init__(str(limit))
        self.limit = limit


def _merged(read: ReadPlan, parts: list[list[Row]]) -> Result:
    """The shards' (or a repartition join's steps') answers, merged as ``read`` says."""
    merge = read.merge
    if isinstance(merge, RowMerge):
        return Result(read.columns, merge_rows(parts, merge))
    assert isinstance(merge, AggregateMerge)
    groups = combine_aggregates(parts, merge)
    rows = run_final(
        groups, merge.group_width, len(merge.aggregates), merge.final, merge.group_types
    )
    return Result(read.columns, rows)


def _with_params(read: ReadPlan, values: Mapping[str, SqlValue]) -> ReadPlan:
    assert read.fragment is not None
    params = {**read.fragment.params, **values}
    return dataclasses.replace(read, fragment=dataclasses.replace(read.fragment, params=params))


def _shipped(scan: TableScan, rows: list[Row]) -> ShippedTable:
    """A scan's rows as a broadcast join ships them: columns declared by affinity."""
    columns = tuple((name, affinity(type_name)) for name, type_name in scan.columns)
    return ShippedTable(scan.name, columns, rows)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _result_names(planned: tuple[str | None, ...], sqlite_names: list[str]) -> tuple[str, ...]:
    """The planned names, a ``*`` item's columns named as SQLite named them (a column's
    own name, as PostgreSQL names it too)."""
    stars = planned.count(None)
    if stars == 0 and len(planned) == len(sqlite_names):
        return tuple(n for n in planned if n is not None)
    if stars != 1:
        return tuple(sqlite_names)
    width = len(sqlite_names) - (len(planned) - 1)
    names: list[str] = []
    for name in planned:
        if name is None:
            names.extend(sqlite_names[len(names) : len(names) + width])
        else:
            names.append(name)
    return tuple(names)


def _check_functions(write: WritePlan, catalog: Catalog) -> None:
    """Refuse a write that calls a function off the allow-list before anything is sent
    (the shards refuse it too: this says so sooner, and without a shard's name)."""
    table = catalog.table(write.table)
    for text in dict.fromkeys(f.sql for b in write.batches for f in b.statements):
        why = _function_refusal(table, text)
        if why:
            raise NondeterministicSqlError(why)


@functools.lru_cache(maxsize=FUNCTION_CHECKS_KEPT)
def _function_refusal(table: Table, sql: str) -> str:
    """Why ``sql`` on ``table`` is refused for its functions ("" if it is not). SQLite
    asks the authorizer about functions as it prepares a statement, before any value is
    bound, so the answer depends on the text and the table alone: kept, a repeated write
    (a kept plan's) is not prepared again. (Prepared with no values, the binding then
    fails, which ``refused_function`` leaves for the shard.)"""
    return refused_function(create_table_ddl(table), [(sql, ())])
