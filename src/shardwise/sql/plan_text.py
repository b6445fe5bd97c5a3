"""``EXPLAIN``: a plan as text, one line per row of the result (column ``QUERY PLAN``).

The text is stable (plan fixtures compare it), names the shards touched and why, the SQL
each shard runs with its parameters, and each merge step at the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping

from shardwise.sql.plans import (
    AggregateMerge,
    AnalyzePlan,
    CatalogPlan,
    Fragment,
    InsertSelectPlan,
    JoinPlan,
    LocalEval,
    Plan,
    ReadPlan,
    Repartition,
    RowMerge,
    WritePlan,
)
from shardwise.sql.values import SqlValue

MAX_ROWS_SHOWN = 3
"""Rows of a statement run for each row that EXPLAIN prints (then ``...``)."""

MAX_LISTED_SHARDS = 32
"""Shard lists longer than this are summarised (a keyspace may have thousands)."""


def explain(plan: Plan) -> list[str]:
    if isinstance(plan, ReadPlan):
        return _read(plan)
    if isinstance(plan, JoinPlan):
        return _join(plan)
    if isinstance(plan, WritePlan):
        return _write(plan)
    if isinstance(plan, AnalyzePlan):
        return _analyze(plan)
    if isinstance(plan, InsertSelectPlan):
        columns = ", ".join(plan.columns)
        placed = (
            "written to every shard's copy of the reference table"
            if plan.reference
            else "placed by their distribution values"
        )
        lines = [f"INSERT into {plan.table} ({columns}) of the rows of a read, {placed}"]
        lines.append("  (one transaction outside one), after:")
        read = _join(plan.read) if isinstance(plan.read, JoinPlan) else _read(plan.read)
        return lines + [f"  {line}" for line in read]
    return _catalog(plan)


def _shards(shards: tuple[int, ...] | list[int], total: int) -> str:
    if len(shards) == total and total > 1:
        return f"all {total}"
    shown = ", ".join(str(s) for s in shards[:MAX_LISTED_SHARDS])
    more = f", ... ({len(shards)} in all)" if len(shards) > MAX_LISTED_SHARDS else ""
    return f"{len(shards)} of {total}: {shown}{more}"


def _params(params: Mapping[str, SqlValue]) -> str:
    return ", ".join(f":{k}={v!r}" for k, v in params.items())


def _fragment(fragment: Fragment, indent: str) -> list[str]:
    lines = [f"{indent}{fragment.sql}"]
    if fragment.params:
        lines.append(f"{indent}params: {_params(fragment.params)}")
    if fragment.rows:
        shown = ", ".join(repr(row) for row in fragment.rows[:MAX_ROWS_SHOWN])
        more = len(fragment.rows) - MAX_ROWS_SHOWN
        lines.append(
            f"{indent}for each of {len(fragment.rows)} rows: {shown}{' ...' if more > 0 else ''}"
        )
    return lines


def _read(plan: ReadPlan) -> list[str]:
    if isinstance(plan.merge, LocalEval):
        return ["Local (no table): the coordinator evaluates", *_fragment(plan.merge.query, "  ")]
    lines = [f"Distributed {plan.strategy} read of {plan.table} (keyspace {plan.keyspace})"]
    if plan.index:
        lines.append(f"  global index {plan.index} covers the statement: only the index is read")
    lookup = plan.lookup
    if lookup is not None:
        looked = lookup.read
        lines.append(
            f"  global index {lookup.index} first: {_shards(looked.shards, looked.shard_count)}"
            " of its table read for the matching rows' distribution values, then only"
            f" their shards (of those below; all of them past {lookup.max_matches:,} values)"
        )
        if looked.fragment is not None:
            lines.extend(_fragment(looked.fragment, "    "))
    lines.append(f"  shards: {_shards(plan.shards, plan.shard_count)}")
    if plan.pruned_by:
        lines.append(f"  pruned by: {plan.pruned_by}")
    if plan.expected:
        lines.append(f"  expected rows read: {_expected(plan.expected)}")
    if plan.fragment is not None:
        lines.append("  fragment (each shard):")
        lines.extend(_fragment(plan.fragment, "    "))
    lines.append("  merge:")
    for number, step in enumerate(_merge_steps(plan), 1):
        first, *rest = step.split("\n")
        lines.append(f"    {number}. {first}")
        lines.extend(f"       {line}" for line in rest)
    return lines


def _join(plan: JoinPlan) -> list[str]:
    tables = ", ".join(
        scan.table if scan.alias == scan.table else f"{scan.table} AS {scan.alias}"
        for scan in plan.scans
    )
    lines = [f"Distributed {plan.strategy} read of {tables}"]
    broadcast = plan.broadcast
    if plan.repartition is not None and broadcast is None:
        return lines + _repartition(plan.repartition)
    shipped = broadcast.shipped if broadcast is not None else ()
    for number, scan in enumerate(plan.scans, 1):
        if broadcast is not None and number - 1 not in shipped:
            continue
        columns = ", ".join(name for name, _ in scan.columns)
        lines.append(f"  scan {number}: {scan.table} AS {scan.alias} ({columns}) as {scan.name}")
        lines.extend(f"    {line}" for line in _read(scan.read))
    if broadcast is not None:
        counts = [rows for i in shipped for _, rows in plan.scans[i].read.expected]
        many = "" if None in counts else f" (~{sum(c or 0 for c in counts):,} rows"
        many += f" to each of {len(broadcast.read.shards)} shard(s))" if many else ""
        lines.append(f"  shipped with each fragment of the join{many}, which runs:")
        lines.extend(f"    {line}" for line in _read(broadcast.read))
        if plan.repartition is not None:
            lines.append(
                f"  over {broadcast.max_rows:,} rows or {broadcast.max_bytes:,} bytes to ship:"
                " the repartition join instead:"
            )
            return lines + _repartition(plan.repartition)
        lines.append(
            f"  over {broadcast.max_rows:,} rows or {broadcast.max_bytes:,} bytes to ship:"
            " the coordinator join instead, after reading the other scans:"
        )
    for number, scan in enumerate(plan.scans, 1):
        if broadcast is None or number - 1 in shipped:
            continue
        columns = ", ".join(name for name, _ in scan.columns)
        lines.append(f"  scan {number}: {scan.table} AS {scan.alias} ({columns}) as {scan.name}")
        lines.extend(f"    {line}" for line in _read(scan.read))
    counts = [rows for scan in plan.scans for _, rows in scan.read.expected]
    held = "" if None in counts else f" (at most ~{sum(c or 0 for c in counts):,} rows sent)"
    lines.append(f"  at the coordinator, over the scans{held}:")
    lines.extend(_fragment(plan.final, "    "))
    return lines


def _repartition(parts: Repartition) -> list[str]:
    first, second = parts.keys
    lines = [
        f"  on {first} = {second}, in {parts.steps} step(s) (more if one holds over"
        f" {parts.max_rows:,} rows or {parts.max_bytes:,} bytes, at most {parts.max_steps})"
    ]
    if parts.read.expected:
        lines.append(f"  expected rows read: {_expected(parts.read.expected)}")
    for number, scan in enumerate(parts.scans, 1):
        columns = ", ".join(name for name, _ in scan.columns)
        lines.append(
            f"  scan {number}, the rows of one step: {scan.table} AS {scan.alias} ({columns})"
            f" as {scan.name}"
        )
        lines.extend(f"    {line}" for line in _read(scan.read))
    lines.append(f"  each step, at the coordinator ({parts.read.strategy} of the steps):")
    assert parts.read.fragment is not None
    lines.extend(_fragment(parts.read.fragment, "    "))
    lines.append("  merge of the steps' answers:")
    for number, step in enumerate(_merge_steps(parts.read), 1):
        head, *rest = step.replace("shard", "step").split("\n")
        lines.append(f"    {number}. {head}")
        lines.extend(f"       {line}" for line in rest)
    return lines


def _expected(expected: tuple[tuple[str, int | None], ...]) -> str:
    """``t ~1,000, o not analyzed (ANALYZE counts rows)``."""
    parts = [
        f"{name} ~{rows:,}" if rows is not None else f"{name} not analyzed"
        for name, rows in expected
    ]
    unknown = any(rows is None for _, rows in expected)
    return ", ".join(parts) + (" (ANALYZE counts rows)" if unknown else "")


def _analyze(plan: AnalyzePlan) -> list[str]:
    lines = [f"ANALYZE: count the rows of {', '.join(plan.tables)}, then record the counts"]
    for name, read in zip(plan.tables, plan.reads, strict=True):
        lines.append(f"  {name}:")
        lines.extend(f"    {line}" for line in _read(read))
    return lines


def _merge_steps(plan: ReadPlan) -> list[str]:
    merge = plan.merge
    if isinstance(merge, RowMerge):
        if plan.strategy == "single-shard":
            return ["pass the shard's rows through"]
        steps = []
        if merge.sort:
            keys = ", ".join(
                f"col{k.column + 1} {'DESC' if k.descending else 'ASC'}"
                f" NULLS {'FIRST' if k.nulls_first else 'LAST'}"
                for k in merge.sort
            )
            steps.append(f"k-way merge of sorted shard streams by {keys}")
        else:
            steps.append("concatenate shard rows")
        if merge.distinct:
            steps.append("drop duplicate rows")
        if merge.offset or merge.limit is not None:
            limit = "ALL" if merge.limit is None else str(merge.limit)
            steps.append(f"skip {merge.offset}, keep {limit}")
        hidden = any(k.column >= merge.width for k in merge.sort)
        if hidden:
            steps.append(f"drop hidden sort columns (keep {merge.width})")
        return steps
    assert isinstance(merge, AggregateMerge)
    groups = f"{merge.group_width} group key(s)" if merge.group_width else "one group (no GROUP BY)"
    combined = "; ".join(
        f"{a.label}: {a.kind} over col{','.join(str(c + 1) for c in a.columns)}"
        for a in merge.aggregates
    )
    final = "\n".join(_fragment(merge.final, ""))
    return [
        f"combine partial aggregates by {groups}: {combined or 'none'}",
        f"final query over the merged groups (coordinator SQLite):\n{final}",
    ]


def _write(plan: WritePlan) -> list[str]:
    lines = [f"Distributed {plan.kind} into {plan.table} (keyspace {plan.keyspace})"]
    shards = [b.shard for b in plan.batches]
    lines.append(f"  shards: {_shards(shards, plan.shard_count)}")
    if plan.pruned_by:
        lines.append(f"  routed by: {plan.pruned_by}")
    if plan.maintenance is not None:
        names = ", ".join(t.index.name for t in plan.maintenance.targets)
        lines.append(
            f"  global indexes kept in the same transaction: {names} (the shards record the"
            " rows changed; their entries are deleted and inserted on the index shards)"
        )
    same = all(b.statements == plan.batches[0].statements for b in plan.batches)
    if (plan.kind != "INSERT" or plan.copies > 1) and same and len(plan.batches) > 1:
        rows = f" ({plan.batches[0].rows} row(s))" if plan.kind == "INSERT" else ""
        lines.append(f"  each shard: one atomic batch{rows} of:")
        for statement in plan.batches[0].statements:
            lines.extend(_fragment(statement, "    "))
        return lines
    for batch in plan.batches:
        rows = f", {batch.rows} row(s)" if plan.kind == "INSERT" else ""
        lines.append(
            f"  shard {batch.shard}: one atomic batch of {len(batch.statements)} statement(s){rows}"
        )
        for statement in batch.statements:
            lines.extend(_fragment(statement, "    "))
    return lines


def _catalog(plan: CatalogPlan) -> list[str]:
    op = type(plan.op).__name__
    lines = [f"Catalog change: {op} (through the controller's log)"]
    if plan.skip:
        lines.append("  nothing to do (IF [NOT] EXISTS)")
    lines.append("  every shard of the keyspace then runs:")
    lines.extend(f"    {ddl}" for ddl in plan.shard_ddl)
    return lines
