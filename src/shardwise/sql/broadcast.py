"""Broadcast joins: the small tables of a join read once and shipped to every shard of the
large one, which joins them with its own rows there.

When the tables of a join are not co-located, the coordinator join reads every table
whole to the coordinator. If all but one are small, moving the small ones is cheaper:
each shard of the large table (the *anchor*) receives their rows with its fragment
(:mod:`shardwise.sql.shipped`), and the statement is planned exactly as a co-located
join in which the shipped tables are reference tables (:mod:`shardwise.sql.colocated`):
each joined row holds one row of the anchor, of one shard, so the shards' answers
together are the answer, and every strategy of a single-table read applies to them:
partial aggregates, grouping by the anchor's distribution column, top-k, pruning by the
anchor's distribution column. The large table never moves.

What each shipped table holds is its scan of the coordinator join
(:func:`~shardwise.sql.join_plan.plan_multi`): only the columns the statement names and
only the rows its conditions can keep, so shipping them changes no answer the
coordinator join would give.

**Choosing.** A join qualifies when it would qualify as co-located with the shipped
tables counted as reference tables (``JOIN``/``LEFT JOIN`` only, the anchor joined by an
inner join, no subquery). Among the tables that may anchor it, the largest by the
catalog's row counts (``ANALYZE``) is tried first, tables never analyzed before all
others, in the order written (the first table of a star join is its fact table). It is
chosen when no shipped table is known to hold more than :data:`BROADCAST_MAX_ROWS` rows
and, when all counts are known, when shipping moves no more rows than the coordinator
join would (the shipped rows times the anchor's shards, against the anchor's rows and
the shipped ones). A table never analyzed may be shipped: at run time its rows past
:data:`BROADCAST_MAX_ROWS` (or :data:`BROADCAST_MAX_BYTES`) turn the read into the
coordinator join, which takes the rows read so far as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from sqlglot import exp

from shardwise.errors import SqlError
from shardwise.sql.catalog import Catalog
from shardwise.sql.colocated import plan_colocated
from shardwise.sql.plans import Broadcast, JoinPlan, TableScan
from shardwise.sql.shipped import MAX_SHIPPED_COLUMNS, MAX_SHIPPED_ROWS, MAX_SHIPPED_TABLES
from shardwise.sql.values import SqlValue

BROADCAST_MAX_ROWS: Final = 10_000
"""Rows of all shipped tables of one broadcast join together (each shard gets them all)."""
BROADCAST_MAX_BYTES: Final = 4 << 20
"""Their bytes as a request carries them (``shipped.shipped_size``): well within one
request frame. (They are also within ``shipped.MAX_SHIPPED_VALUES``.)"""

assert BROADCAST_MAX_ROWS <= MAX_SHIPPED_ROWS


def plan_broadcast(
    select: exp.Select,
    catalog: Catalog,
    values: Mapping[str, SqlValue],
    join: JoinPlan,
    *,
    heads: Sequence[str] = (),
    written: exp.Select | None = None,
) -> Broadcast | None:
    """The broadcast join of ``select`` (whose coordinator join is ``join``), or None
    when none qualifies or it would move more rows than the coordinator join."""
    scans = join.scans
    aliases = [scan.alias for scan in scans]
    if len(set(aliases)) != len(aliases) or len(scans) < 2:
        return None  # (a self-join without aliases, or a subquery naming a table again)
    for anchor in _anchors(scans, catalog):
        for shipped in _shipments(select, scans, anchor, catalog):
            if not 0 < len(shipped) <= MAX_SHIPPED_TABLES:
                continue
            if any(len(scans[i].columns) > MAX_SHIPPED_COLUMNS for i in shipped):
                continue
            sizes = [_rows(scans[i]) for i in shipped]
            known = [rows for rows in sizes if rows is not None]
            if sum(known) > BROADCAST_MAX_ROWS:
                continue
            names = {scans[i].alias: scans[i].name for i in shipped}
            try:
                read = plan_colocated(
                    select, catalog, values, heads=heads, written=written, shipped=names
                )
            except SqlError:  # (the coordinator join, planned already, has the last word)
                continue
            if read is None:
                continue
            if _moves_more(
                sum(known) if len(known) == len(sizes) else None, read.shards, scans[anchor]
            ):
                continue
            return Broadcast(tuple(shipped), read, BROADCAST_MAX_ROWS, BROADCAST_MAX_BYTES)
    return None


def _moves_more(shipped: int | None, shards: Sequence[int], anchor: TableScan) -> bool:
    """Whether shipping ``shipped`` rows to each of ``shards`` is known to move more rows
    than the coordinator join would (the anchor's rows and the shipped ones, once)."""
    anchor_rows = _rows(anchor)
    if shipped is None or anchor_rows is None:
        return False
    return shipped * len(shards) > anchor_rows + shipped


def _rows(scan: TableScan) -> int | None:
    """The rows ``scan`` is expected to read (None: its table was never analyzed)."""
    return scan.read.expected[0][1] if scan.read.expected else None


def _anchors(scans: Sequence[TableScan], catalog: Catalog) -> list[int]:
    """The scans of distributed tables, in the order to try them as the anchor: never
    analyzed first (as written), then the largest first."""
    distributed = [i for i, s in enumerate(scans) if not catalog.table(s.table).is_reference]
    unknown = [i for i in distributed if _rows(scans[i]) is None]
    known = sorted(
        (i for i in distributed if _rows(scans[i]) is not None),
        key=lambda i: -(_rows(scans[i]) or 0),
    )
    return unknown + known


def _shipments(
    select: exp.Select, scans: Sequence[TableScan], anchor: int, catalog: Catalog
) -> list[list[int]]:
    """The sets of scans to ship with ``anchor`` to try, fewest first: all but the
    tables that can stay where they are (a reference table of the anchor's keyspace, a
    table of that keyspace joined on distribution columns to one that stays), then all
    but the anchor and that keyspace's reference tables."""
    keyspace = catalog.table(scans[anchor].table).keyspace
    local_reference = {
        i
        for i, s in enumerate(scans)
        if catalog.table(s.table).is_reference and catalog.table(s.table).keyspace == keyspace
    }
    everything = [i for i in range(len(scans)) if i != anchor and i not in local_reference]
    staying = {anchor} | local_reference | _pinned(select, scans, anchor, catalog)
    fewest = [i for i in range(len(scans)) if i not in staying]
    return [fewest, everything] if fewest != everything else [everything]


def _pinned(
    select: exp.Select, scans: Sequence[TableScan], anchor: int, catalog: Catalog
) -> set[int]:
    """Tables of the anchor's keyspace whose join's ``ON`` equates their distribution
    column with that of a table that stays (the anchor, or one pinned before them):
    co-located with it, they need not move. (The co-located planner checks the rest.)"""
    by_alias = {scan.alias: i for i, scan in enumerate(scans)}
    table = catalog.table(scans[anchor].table)
    staying = {scans[anchor].alias: table}
    pinned: set[int] = set()
    for join in select.args.get("joins") or ():
        index = by_alias.get(join.this.alias_or_name) if isinstance(join.this, exp.Table) else None
        if index is None or index == anchor:
            continue
        mine = catalog.table(scans[index].table)
        if mine.is_reference or mine.keyspace != table.keyspace:
            continue
        on = join.args.get("on")
        for condition in on.find_all(exp.EQ) if on is not None else ():
            left, right = condition.left, condition.right
            if not isinstance(left, exp.Column) or not isinstance(right, exp.Column):
                continue
            for own, other in ((left, right), (right, left)):
                partner = staying.get(other.table)
                if (
                    own.table == scans[index].alias
                    and own.name == mine.distribution_column
                    and partner is not None
                    and other.name == partner.distribution_column
                ):
                    pinned.add(index)
                    staying[scans[index].alias] = mine
    return pinned
