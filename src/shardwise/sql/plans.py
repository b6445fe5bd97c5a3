"""What the planner hands the coordinator: plans as plain, immutable data.

A read is one :class:`Fragment` run on every target shard (the same SQL and parameters
each time) and a merge; a write is a batch of fragments per shard; a catalog change is a
controller command. :func:`shardwise.sql.plan_text.explain` prints any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

from shardwise.model.config import (
    AddColumn,
    CreateIndex,
    CreateTable,
    DropIndex,
    DropTable,
    Keyspace,
    SetIndexState,
    SetStats,
)
from shardwise.sql.ordering import SortKey
from shardwise.sql.shipped import ShippedTable
from shardwise.sql.values import SqlValue

if TYPE_CHECKING:  # (the aggregates module parses: the shard server loads plans without it)
    from shardwise.sql.aggregates import Kind
    from shardwise.sql.catalog import Affinity
    from shardwise.sql.index_tables import IndexMaintenance


@dataclass(frozen=True, slots=True)
class Fragment:
    """SQLite text with named parameters, and their values; a read's may also read
    ``shipped`` tables (a broadcast join's small side, sent along with it)."""

    sql: str
    params: Mapping[str, SqlValue] = field(default_factory=dict)
    shipped: tuple[ShippedTable, ...] = ()
    rows: tuple[tuple[SqlValue, ...], ...] = ()
    """A write only: ``sql`` (``?`` parameters, ``params`` empty) runs for each of these
    rows (``executemany``): an INSERT of parameters, compiled once on each shard."""


@dataclass(frozen=True, slots=True)
class RowMerge:
    """Rows from the shards, concatenated or k-way merged by ``sort`` (each shard sent
    them sorted), then de-duplicated, then ``OFFSET``/``LIMIT``, then cut to ``width``
    columns (the rest are hidden sort keys)."""

    width: int
    sort: tuple[SortKey, ...] = ()
    distinct: bool = False
    offset: int = 0
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class PartialAggregate:
    kind: Kind
    columns: tuple[int, ...]
    """The partial state's columns in a fragment row."""
    label: str


@dataclass(frozen=True, slots=True)
class AggregateMerge:
    """Partial aggregates combined per group, then ``final`` run over the merged groups
    (table ``_sw_merged``: group keys ``_sw_g<i>``, aggregates ``_sw_a<j>``) in the
    coordinator's SQLite, which computes HAVING, expressions, DISTINCT, ORDER BY, LIMIT."""

    group_width: int
    aggregates: tuple[PartialAggregate, ...]
    final: Fragment
    scalar: bool
    """No GROUP BY: one result group even when no row matched."""
    group_types: tuple[str, ...] = ()
    """Each group key's declared type in ``_sw_merged`` ("" for none): the key's own
    affinity (a column's, a CAST's), so HAVING ``a = '5'`` compares as SQLite would on
    the table itself."""


@dataclass(frozen=True, slots=True)
class LocalEval:
    """A statement with no table: the coordinator's SQLite evaluates it."""

    query: Fragment


Merge: TypeAlias = RowMerge | AggregateMerge | LocalEval
Strategy: TypeAlias = Literal[
    "single-shard", "grouped-by-distribution", "scatter-rows", "partial-aggregates", "local"
]


@dataclass(frozen=True, slots=True)
class ReadPlan:
    columns: tuple[str, ...]
    strategy: Strategy
    merge: Merge
    table: str = ""
    keyspace: str = ""
    shards: tuple[int, ...] = ()
    shard_count: int = 0
    fragment: Fragment | None = None
    pruned_by: str = ""
    """Why the shards were narrowed ("" when all are read)."""
    expected: tuple[tuple[str, int | None], ...] = ()
    """Each table the shards read, with the rows they are expected to read of it
    (``Catalog.expected_rows``; None: never analyzed)."""
    lookup: IndexLookup | None = None
    """A global index read first: only the shards of the distribution values it finds
    (among ``shards``) are read."""
    index: str = ""
    """The global index a covering read reads instead of the table (EXPLAIN's)."""


@dataclass(frozen=True, slots=True)
class IndexLookup:
    """The first step of a read through global index ``index``: ``read`` returns the
    distinct distribution values of the entries that may match (one column); the rows
    are on their shards. Past ``max_matches`` values the read goes to every shard of
    the plan instead."""

    index: str
    read: ReadPlan
    keyspace: Keyspace
    distribution_affinity: Affinity
    max_matches: int


@dataclass(frozen=True, slots=True)
class TableScan:
    """One table reference of a multi-table read: its rows, as a single-table ``read``
    gives them, become table ``name`` of the coordinator's SQLite, declared with
    ``columns`` (name and declared type, so values compare as on the shards)."""

    name: str
    table: str
    alias: str
    columns: tuple[tuple[str, str], ...]
    read: ReadPlan


JoinStrategy: TypeAlias = Literal["coordinator-join", "broadcast", "repartition"]


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast join: the ``shipped`` scans (indexes into the plan's) read once, their
    rows sent with ``read``'s fragment to each of its shards, which join them with their
    own rows there. Past ``max_rows`` or ``max_bytes`` shipped, the plan's repartition
    join runs instead if it has one, else its coordinator join (which does not read the
    shipped scans again)."""

    shipped: tuple[int, ...]
    read: ReadPlan
    max_rows: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Repartition:
    """A repartition join, run in steps: step ``k`` of ``n`` reads, from each of the
    two ``scans``, the rows whose join key's part (``shardwise_partition(key, n)``, the
    scans' parameters ``sw_steps`` and ``sw_step``) is ``k``, and runs ``read``'s
    fragment over them at the coordinator (the scans' rows as tables named after them);
    ``read``'s merge then combines the steps' answers as a read's combines its shards'.
    A step holds at most ``max_rows`` rows and ``max_bytes`` bytes; past them the join
    starts again in more steps, at most ``max_steps``."""

    keys: tuple[str, str]
    """The join key of each scan, as written (``s.store_id``)."""
    scans: tuple[TableScan, TableScan]
    read: ReadPlan
    steps: int
    max_rows: int
    max_bytes: int
    max_steps: int


@dataclass(frozen=True, slots=True)
class JoinPlan:
    """A read over several tables (joins, subqueries, ``WITH``): each scan read from its
    shards, then ``final`` (the statement over the scans' tables) at the coordinator;
    or, with ``broadcast`` or ``repartition``, that instead."""

    columns: tuple[str | None, ...]
    """Each select item's result name; None for a ``*`` (named by what it expands to)."""
    strategy: JoinStrategy
    scans: tuple[TableScan, ...]
    final: Fragment
    broadcast: Broadcast | None = None
    repartition: Repartition | None = None


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The statements for one shard, applied together atomically (one log entry)."""

    shard: int
    statements: tuple[Fragment, ...]
    rows: int = 0
    """Rows an INSERT sends to this shard (0 for UPDATE/DELETE)."""


@dataclass(frozen=True, slots=True)
class WritePlan:
    kind: Literal["INSERT", "UPDATE", "DELETE"]
    table: str
    keyspace: str
    shard_count: int
    batches: tuple[ShardBatch, ...]
    pruned_by: str = ""
    copies: int = 1
    """How many shards hold each row: a reference table's every shard. The rows changed
    are the shards' total over this."""
    maintenance: IndexMaintenance | None = None
    """The table's global indexes, kept by this write in the same transaction."""


@dataclass(frozen=True, slots=True)
class InsertSelectPlan:
    """``INSERT INTO table (columns) SELECT ...``: the read runs first, then its rows are
    placed as an INSERT's would be (one statement: in a transaction of its own outside
    one, so what it read is still there when its rows are written)."""

    table: str
    columns: tuple[str, ...]
    read: ReadPlan | JoinPlan
    reference: bool = False
    """The table is a reference table: every row goes to every shard."""


CatalogOp: TypeAlias = (
    CreateTable | DropTable | AddColumn | CreateIndex | DropIndex | SetIndexState | SetStats
)


@dataclass(frozen=True, slots=True)
class CatalogPlan:
    op: CatalogOp
    skip: bool = False
    """``IF [NOT] EXISTS`` found nothing to do: the statement succeeds and changes nothing."""
    shard_ddl: tuple[str, ...] = ()
    """What every shard of the keyspace runs (derived from the catalog, shown by EXPLAIN)."""


@dataclass(frozen=True, slots=True)
class AnalyzePlan:
    """``ANALYZE``: count each table's rows (``reads``, one per table), then record the
    counts (``SetStats``)."""

    tables: tuple[str, ...]
    reads: tuple[ReadPlan, ...]
    created: tuple[int, ...] = ()
    """Each table's ``created_at`` when planned (a table made anew since is not counted)."""


Plan: TypeAlias = ReadPlan | JoinPlan | WritePlan | InsertSelectPlan | CatalogPlan | AnalyzePlan
