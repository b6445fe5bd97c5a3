"""Repartition joins: two tables joined on columns that neither is distributed by, both
too large to ship, joined part by part of their join key's values.

Rows whose join keys are equal are in the same part (``shardwise_partition(key, n)``, a
hash of the value as SQLite stores it), so the join of the whole tables is the union of
the joins of their parts: the tables are *co-located on the join key* across the parts,
as they would be across shards were both distributed by it. The statement is therefore
planned exactly as a co-located join (:mod:`shardwise.sql.colocated`) over two virtual
tables distributed by the join key, and each part plays a shard: its fragment runs over
the part's rows, and the merge that combines shards' answers (rows, top-k, partial
aggregates) combines the parts'.

The parts run one **step** at a time, at the coordinator: a step reads from the shards
the rows of both tables whose key falls in it (each shard computes the part of its own
rows, so a row is read in exactly one step and the join moves no more rows than the two
tables' scans hold), joins them in the coordinator's SQLite and keeps only the step's
answer (partial states when the statement aggregates). A step holds at most
:data:`REPARTITION_STEP_ROWS` rows and :data:`REPARTITION_STEP_BYTES` bytes: the
number of steps comes from ``ANALYZE``'s counts, and a step that would hold more starts
the join again in :data:`REPARTITION_GROWTH` times as many, up to
:data:`MAX_REPARTITION_STEPS`; past that (one key value with more rows than a step may
hold) the statement fails with a limit error rather than take the coordinator's memory.

Why at the coordinator and not on the shards: with no channel from shard to shard, a
part joined on a shard would reach it through the coordinator, moving every row twice.

What qualifies: two distributed tables, ``JOIN`` or ``LEFT JOIN``, an ``ON`` with an
equality of one column of each, of the same affinity, INTEGER or TEXT (so values equal
in SQLite are stored alike and hash alike), no subquery; and either table never
analyzed, or together more rows than one step holds (otherwise one step is the
coordinator join itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

from sqlglot import exp

from shardwise.errors import SqlError
from shardwise.model.config import Column, Keyspace, Scheme, Table
from shardwise.sql.aggregates import PARTITION_FUNCTION
from shardwise.sql.bind import conjuncts
from shardwise.sql.catalog import Catalog, physical_name
from shardwise.sql.colocated import plan_colocated
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.plans import Fragment, JoinPlan, Repartition, TableScan
from shardwise.sql.values import SqlValue

REPARTITION_STEP_ROWS: Final = 250_000
"""Rows of both tables one step may hold at the coordinator."""
REPARTITION_STEP_BYTES: Final = 64 << 20
"""Their bytes (strings and blobs by length, other values 8)."""
MAX_REPARTITION_STEPS: Final = 256
REPARTITION_GROWTH: Final = 8
"""A step past its bounds starts the join again in this many times as many steps."""

STEPS_PARAM: Final = "sw_steps"
STEP_PARAM: Final = "sw_step"
_KEYSPACE: Final = "_sw_parts"
_JOIN_KEY_AFFINITIES: Final = ("INTEGER", "TEXT")


def plan_repartition(
    select: exp.Select,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    join: JoinPlan,
    *,
    heads: Sequence[str] = (),
    written: exp.Select | None = None,
) -> Repartition | None:
    """The repartition join of ``select`` (whose coordinator join is ``join``), or None
    when it does not qualify."""
    joins = select.args.get("joins") or []
    scans = join.scans
    if len(scans) != 2 or len(joins) != 1 or scans[0].alias == scans[1].alias:
        return None
    tables = [catalog.table(scan.table) for scan in scans]
    if any(t.is_reference for t in tables):
        return None
    keys = _join_keys(joins[0].args.get("on"), scans, catalog)
    if keys is None:
        return None
    rows = [_rows(scan) for scan in scans]
    known = [r for r in rows if r is not None]
    if len(known) == len(rows) and sum(known) <= REPARTITION_STEP_ROWS:
        return None  # (one step: the coordinator join is the same work)
    virtual = Catalog(
        {
            scan.name: Table(scan.name, _KEYSPACE, key, tuple(Column(*c) for c in scan.columns))
            for scan, key in zip(scans, keys, strict=True)
        },
        {_KEYSPACE: Keyspace(_KEYSPACE, Scheme("hash", 2))},
    )
    renamed = select.copy()
    by_alias = {scan.alias: scan for scan in scans}
    for node in [renamed.args["from_"].this, renamed.args["joins"][0].this]:
        if not isinstance(node, exp.Table) or node.alias_or_name not in by_alias:
            return None
        alias = node.alias_or_name
        node.replace(
            exp.Table(
                this=exp.to_identifier(by_alias[alias].name, quoted=True),
                alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)),
            )
        )
    try:
        read = plan_colocated(renamed, virtual, values, heads=heads, written=written)
    except SqlError:  # (the coordinator join, planned already, has the last word)
        return None
    if read is None or read.fragment is None or read.strategy == "single-shard":
        return None  # (single-shard: the key is pinned to one value, one step's worth)
    expected = tuple(
        (s.table if s.alias == s.table else f"{s.table} AS {s.alias}", r)
        for s, r in zip(scans, rows, strict=True)
    )
    label = read.table.removeprefix("co-located join ")
    read = dataclasses.replace(read, table=label, expected=expected, pruned_by="")
    total = sum(known) if len(known) == len(rows) else 0
    room = REPARTITION_STEP_ROWS * 2 // 3  # (steps are uneven: a third to spare)
    steps = min(MAX_REPARTITION_STEPS, max(1, -(-total // room)))
    # A NULL key matches nothing: its rows matter only on the side a LEFT JOIN keeps.
    kept = (joins[0].args.get("side") or "").upper() == "LEFT"
    stepped = (_stepped(scans[0], keys[0], nulls=kept), _stepped(scans[1], keys[1], nulls=False))
    return Repartition(
        (f"{scans[0].alias}.{keys[0]}", f"{scans[1].alias}.{keys[1]}"),
        stepped,
        read,
        steps,
        REPARTITION_STEP_ROWS,
        REPARTITION_STEP_BYTES,
        MAX_REPARTITION_STEPS,
    )


def _rows(scan: TableScan) -> int | None:
    return scan.read.expected[0][1] if scan.read.expected else None


def _join_keys(
    on: exp.Expr | None, scans: Sequence[TableScan], catalog: Catalog
) -> tuple[str, str] | None:
    """The first equality of ``on``'s conjuncts between a column of each scan's table,
    of one affinity that places equal values alike (each scan's column name)."""
    if on is None:
        return None
    for condition in conjuncts(on):
        if not isinstance(condition, exp.EQ):
            continue
        left, right = condition.left, condition.right
        if not isinstance(left, exp.Column) or not isinstance(right, exp.Column):
            continue
        sides = [_owner(left, scans, catalog), _owner(right, scans, catalog)]
        if None in sides or sides[0] == sides[1]:
            continue
        found = {sides[0]: left.name, sides[1]: right.name}
        affinities = {
            _affinity(catalog, scans[i].table, found[i])
            for i in (0, 1)  # (both resolved: sides hold 0 and 1)
        }
        if len(affinities) == 1 and affinities <= set(_JOIN_KEY_AFFINITIES):
            return found[0], found[1]
    return None


def _owner(column: exp.Column, scans: Sequence[TableScan], catalog: Catalog) -> int | None:
    """Which scan's table ``column`` names (None: neither, or both could)."""
    if column.table:
        owners = [i for i, s in enumerate(scans) if s.alias == column.table]
    else:
        owners = [
            i
            for i, s in enumerate(scans)
            if any(c.name == column.name for c in catalog.table(s.table).columns)
        ]
    if len(owners) != 1:
        return None
    if not any(name == column.name for name, _ in scans[owners[0]].columns):
        return None
    return owners[0]


def _affinity(catalog: Catalog, table: str, column: str) -> str:
    return next(c.affinity for c in catalog.columns(catalog.table(table)) if c.name == column)


def _stepped(scan: TableScan, key: str, *, nulls: bool) -> TableScan:
    """``scan`` reading only the rows of one step (its parameters name which), named as
    the step's fragment reads it; rows with a NULL key only if ``nulls`` (all in one
    step: a GROUP BY of the key makes them one group)."""
    fragment = scan.read.fragment
    assert fragment is not None  # (a table's scan always reads its shards)
    quoted = quote_identifier(key)
    step = f"{PARTITION_FUNCTION}({quoted}, :{STEPS_PARAM}) = :{STEP_PARAM}"
    present = "" if nulls else f" AND {quoted} IS NOT NULL"
    sql = f"SELECT * FROM ({fragment.sql}) WHERE {step}{present}"
    read = dataclasses.replace(scan.read, fragment=Fragment(sql, fragment.params))
    return TableScan(physical_name(scan.name), scan.table, scan.alias, scan.columns, read)
