"""Global indexes as tables: the hidden table that holds an index's entries, where each
entry lives, and the statements that keep the entries equal to the rows.

A global index ``i`` of table ``t`` is a table of ``t``'s keyspace, ``_sw_gi_i``
(physical ``sql__sw_gi_i``, in every shard file, created from the catalog as ``t`` is:
:mod:`shardwise.sql.shard_schema`), **distributed by the index's first column**: one
entry per row of ``t`` whose first indexed column is not NULL, holding the indexed
columns, ``t``'s distribution column, the ``INCLUDE`` columns and the row's rowid
(``_sw_row``), declared with ``t``'s types so each value is stored exactly as in ``t``.
So every entry for one value is in one shard: a lookup of ``col = v`` reads one shard,
and a UNIQUE index is a UNIQUE SQLite index there. Each base shard also has a local
index on the indexed columns, so the second step of a lookup (the base shards of the
matches) is cheap.

An entry names its row by (distribution value, rowid): unique in the table (rows with one
distribution value share a shard, and rowids are unique in a shard file), and stable, as
shards move whole (a future merge of two shards must renumber colliding rowids and
their entries; a split keeps them). Writes keep the entries (:class:`IndexMaintenance`:
the changes the shard recorded, ``shardwise.sql.capture``, become deletes and inserts of
entries in the same transaction); a build fills in the entries of older rows
(:func:`backfill_statements`), idempotently.

No parser here: the shard server loads this module for its schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shardwise.errors import SqlCatalogError, SqlConstraintError
from shardwise.model.config import Column, IndexDef, Keyspace, Table
from shardwise.model.sql import RowCapture
from shardwise.placement import Key
from shardwise.sql.catalog import Affinity, ColumnSpec, affinity, physical_name
from shardwise.sql.distribution import Router, stored_key
from shardwise.sql.identifiers import quote_identifier
from shardwise.sql.plans import Fragment, ShardBatch
from shardwise.sql.values import INT64_MAX, INT64_MIN, MAX_PARAMS, SqlValue

INDEX_TABLE_PREFIX: Final = "_sw_gi_"
TOMBSTONE_TABLE_PREFIX: Final = "_sw_gt_"
ROW_COLUMN: Final = "_sw_row"
ROW_NAMES: Final = ("rowid", "_rowid_", "oid")
"""SQLite's names of a rowid; a column of the same name shadows one."""
MAX_CAPTURED_COLUMNS: Final = 256
"""Columns a write records of each row it changes in a table with global indexes (the
union of their entries' columns): ``CREATE INDEX`` refuses more."""
ENTRIES_PER_STATEMENT: Final = 200
"""Entries one generated statement inserts or deletes (several make a shard's batch)."""


def index_table_name(index: IndexDef) -> str:
    return INDEX_TABLE_PREFIX + index.name


def tombstone_table_name(index: IndexDef) -> str:
    return TOMBSTONE_TABLE_PREFIX + index.name


def global_indexes(table: Table, *, public: bool = False) -> tuple[IndexDef, ...]:
    """``table``'s global indexes (``public``: only those reads may use)."""
    return tuple(i for i in table.indexes if i.is_global and (not public or i.state == "public"))


def entry_columns(table: Table, index: IndexDef) -> tuple[str, ...]:
    """The base columns an entry holds, in order: indexed, distribution, included."""
    names = [*index.columns]
    for name in (table.distribution_column, *index.include):
        if name not in names:
            names.append(name)
    return tuple(names)


def row_name(table: Table) -> str | None:
    """A name of the rowid no column of ``table`` shadows (None: all are columns)."""
    taken = {c.name.lower() for c in table.columns}
    return next((name for name in ROW_NAMES if name not in taken), None)


def index_table(table: Table, index: IndexDef) -> Table:
    """The hidden table of global index ``index`` of ``table``: its entries' columns with
    ``table``'s types (not its NOT NULL or DEFAULT), distributed by the first indexed
    column; a local index on the indexed columns (UNIQUE for a UNIQUE index) and a
    unique one on the row each entry names."""
    types = {c.name: ColumnSpec.from_model(c).type_name for c in table.columns}
    columns = [Column(name, types[name]) for name in entry_columns(table, index)]
    columns.append(Column(ROW_COLUMN, "INTEGER"))
    return Table(
        index_table_name(index),
        table.keyspace,
        index.columns[0],
        tuple(columns),
        (
            IndexDef("keys", index.columns, unique=index.unique),
            IndexDef("row", (table.distribution_column, ROW_COLUMN), unique=True),
        ),
        created_at=table.created_at,
    )


def tombstone_table(table: Table, index: IndexDef) -> Table:
    """While ``index`` is being built: the rows whose entry a write deleted, per index
    shard (distribution value, rowid), so the build does not make again an entry for a
    row it read before the write changed it."""
    types = {c.name: ColumnSpec.from_model(c).type_name for c in table.columns}
    distribution = table.distribution_column
    return Table(
        tombstone_table_name(index),
        table.keyspace,
        distribution,
        (Column(distribution, types[distribution]), Column(ROW_COLUMN, "INTEGER")),
        (IndexDef("row", (distribution, ROW_COLUMN), unique=True),),
        created_at=table.created_at,
    )


def base_local_index(index: IndexDef) -> IndexDef:
    """The local index each base shard keeps for a global index (the lookup's second
    step reads the base shards of the matches by it)."""
    return IndexDef(f"{INDEX_TABLE_PREFIX}{index.name}", index.columns)


def hidden_tables(tables: Mapping[str, Table]) -> dict[str, str]:
    """Physical name of each global index table -> the logical name of its base table
    (a grant on a table covers its indexes)."""
    return {
        physical_name(name(index)): table.name
        for table in tables.values()
        for index in global_indexes(table)
        for name in (index_table_name, tombstone_table_name)
    }


LAST_KEY: Final = b"\xff" * 64
"""A placement key after every text: where a key-range keyspace puts a BLOB of a TEXT
column (SQLite orders every BLOB after every TEXT, so a range on the column that takes
in BLOBs reaches the last shard)."""


def entry_key(value: SqlValue, column_affinity: Affinity, *, ordered: bool = False) -> Key | None:
    """Where an entry whose first indexed value is ``value`` (as stored) lives: the
    value's placement key where it has one (so a lookup ``col = v`` finds it as pruning
    finds a distribution value), else a key no other storage class gives; None for NULL,
    which is not indexed (``col = NULL`` matches nothing, and NULLs are never equal)."""
    if value is None:
        return None
    if ordered and column_affinity == "TEXT" and not isinstance(value, str):
        return LAST_KEY
    if isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        value = int(value)  # (an untyped column's 0.0 equals 0: SQLite compares numbers)
    key = stored_key(value, column_affinity)
    if key is not None:
        return key
    if isinstance(value, float):
        return b"\x00f" + repr(value).encode()
    if isinstance(value, str | bytes):
        return value
    return repr(value)


@dataclass(frozen=True, slots=True)
class _Target:
    index: IndexDef
    table: Table
    """The index's hidden table."""
    positions: tuple[int, ...]
    """Where each entry column is in the capture's columns."""
    key_affinity: Affinity
    distribution: int
    """The distribution column's position among the entry's columns."""
    tombstones: Table | None = None
    """While the index is being built: where its deletes leave tombstones."""


def _typed(values: Iterable[Any]) -> tuple[tuple[type, Any], ...]:
    return tuple((type(v), v) for v in values)


@dataclass(frozen=True, slots=True)
class IndexMaintenance:
    """How a write to ``table`` keeps its global indexes: what the shard records
    (``capture``) and the entry statements that follow from it (:meth:`batches`)."""

    table: str
    capture: RowCapture
    targets: tuple[_Target, ...]
    keyspace: Keyspace

    @classmethod
    def of(cls, table: Table, keyspace: Keyspace) -> IndexMaintenance | None:
        """For a write to ``table``; None if it has no global index."""
        indexes = global_indexes(table)
        if not indexes:
            return None
        row = row_name(table)
        if row is None:  # (refused by ALTER TABLE: a write must never skip its indexes)
            raise SqlCatalogError(f"table {table.name!r} hides its rowid from its indexes")
        columns: list[str] = []
        for index in indexes:
            columns.extend(c for c in entry_columns(table, index) if c not in columns)
        types = {c.name: ColumnSpec.from_model(c).affinity for c in table.columns}
        targets = []
        for index in indexes:
            names = entry_columns(table, index)
            targets.append(
                _Target(
                    index,
                    index_table(table, index),
                    tuple(columns.index(n) for n in names),
                    types[index.columns[0]],
                    names.index(table.distribution_column),
                    tombstone_table(table, index) if index.state == "building" else None,
                )
            )
        capture = RowCapture(physical_name(table.name), row, tuple(columns))
        return cls(table.name, capture, tuple(targets), keyspace)

    def violation(self, error: SqlConstraintError) -> SqlConstraintError:
        """A shard's constraint error on an index table, in the index's terms."""
        message = error.detail.lower()
        for target in self.targets:
            columns = ", ".join(
                f"{physical_name(target.table.name)}.{c}" for c in target.index.columns
            )
            if target.index.unique and message.endswith(columns.lower()):
                columns = ", ".join(target.index.columns)
                return SqlConstraintError(
                    f"duplicate key value violates unique index {target.index.name!r} of "
                    f"table {self.table!r} ({columns}): another row has these values",
                    error.shard,
                )
        return error

    def touches(self, columns: Iterable[str]) -> bool:
        """Whether an UPDATE of ``columns`` can change an entry."""
        return bool(set(columns) & set(self.capture.columns))

    def batches(self, captured: Sequence[Sequence[tuple[Any, ...]]]) -> list[ShardBatch]:
        """The entry statements for the changes ``captured`` (each base shard's rows
        ``(sign, rowid, *columns)``), per index shard: the entries of rows gone or
        changed deleted, then those of rows new or changed inserted. A row changed and
        changed back, or updated without changing its entry, costs nothing."""
        router = Router(self.keyspace)
        deletes: dict[int, list[tuple[_Target, tuple[Any, ...]]]] = {}
        inserts: dict[int, list[tuple[_Target, tuple[Any, ...]]]] = {}
        for target in self.targets:
            gone: Counter[tuple[object, ...]] = Counter()
            new: Counter[tuple[object, ...]] = Counter()
            images: dict[tuple[object, ...], tuple[Any, ...]] = {}
            for rows in captured:
                for sign, rowid, *values in rows:
                    entry = (*(values[p] for p in target.positions), rowid)
                    typed = _typed(entry)
                    images[typed] = entry
                    (new if sign > 0 else gone)[typed] += 1
            kept = gone & new
            for side, into in ((gone, deletes), (new, inserts)):
                for change, count in sorted((side - kept).items(), key=lambda kv: repr(kv[0])):
                    entry = images[change]
                    key = entry_key(entry[0], target.key_affinity, ordered=router.ordered)
                    if key is None:
                        continue  # (a NULL first column: no entry)
                    shard = router.shard_of(key)
                    into.setdefault(shard, []).extend([(target, entry)] * count)
        batches = []
        for shard in sorted(set(deletes) | set(inserts)):
            statements = [
                *_deletes(deletes.get(shard, [])),
                *_inserts(inserts.get(shard, [])),
            ]
            batches.append(ShardBatch(shard, tuple(statements)))
        return batches


def _grouped(
    entries: Sequence[tuple[_Target, tuple[Any, ...]]],
) -> list[tuple[_Target, list[tuple[Any, ...]]]]:
    by_index: dict[str, tuple[_Target, list[tuple[Any, ...]]]] = {}
    for target, entry in entries:
        by_index.setdefault(target.index.name, (target, []))[1].append(entry)
    return [by_index[name] for name in sorted(by_index)]


def _chunks(rows: list[tuple[Any, ...]]) -> Iterable[list[tuple[Any, ...]]]:
    width = max((len(r) for r in rows), default=1)
    per = max(1, min(ENTRIES_PER_STATEMENT, MAX_PARAMS // width))
    for start in range(0, len(rows), per):
        yield rows[start : start + per]


def _values(rows: list[tuple[Any, ...]], params: dict[str, SqlValue]) -> str:
    tuples = []
    for row in rows:
        names = []
        for value in row:
            name = f"e{len(params)}"
            params[name] = value
            names.append(f":{name}")
        tuples.append(f"({', '.join(names)})")
    return ", ".join(tuples)


def _deletes(entries: Sequence[tuple[_Target, tuple[Any, ...]]]) -> list[Fragment]:
    out = []
    for target, rows in _grouped(entries):
        table = quote_identifier(physical_name(target.table.name))
        keys = f"({quote_identifier(target.table.columns[target.distribution].name)}, {ROW_COLUMN})"
        for chunk in _chunks(rows):
            params: dict[str, SqlValue] = {}
            pairs = _values([(e[target.distribution], e[-1]) for e in chunk], params)
            out.append(Fragment(f"DELETE FROM {table} WHERE {keys} IN (VALUES {pairs})", params))
            if target.tombstones is not None:  # (being built: see backfill_statements)
                tombs = quote_identifier(physical_name(target.tombstones.name))
                out.append(Fragment(f"INSERT OR IGNORE INTO {tombs} {keys} VALUES {pairs}", params))
    return out


def _inserts(
    entries: Sequence[tuple[_Target, tuple[Any, ...]]], *, only_new: bool = False
) -> list[Fragment]:
    out = []
    for target, rows in _grouped(entries):
        table = quote_identifier(physical_name(target.table.name))
        names = ", ".join(quote_identifier(c.name) for c in target.table.columns)
        for chunk in _chunks(rows):
            params: dict[str, SqlValue] = {}
            values = _values(chunk, params)
            if not only_new:
                out.append(Fragment(f"INSERT INTO {table} ({names}) VALUES {values}", params))
                continue
            # A build's entries: only those of rows no write has touched since the
            # index began (a write made the entry, or deleted it and left a tombstone).
            assert target.tombstones is not None, "a build's index is being built"
            tombs = quote_identifier(physical_name(target.tombstones.name))
            width = len(target.table.columns)
            distribution = quote_identifier(target.table.columns[target.distribution].name)
            row = (
                f"{distribution} = v.column{target.distribution + 1} "
                f"AND {ROW_COLUMN} = v.column{width}"
            )
            out.append(
                Fragment(
                    f"INSERT INTO {table} ({names}) SELECT * FROM (VALUES {values}) AS v "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {row}) "
                    f"AND NOT EXISTS (SELECT 1 FROM {tombs} WHERE {row})",
                    params,
                )
            )
    return out


def backfill_read(table: Table, index: IndexDef, after: int, limit: int) -> Fragment | None:
    """The read of a build's next rows of one base shard: rowid and entry columns of
    the rows past rowid ``after``, in rowid order (None: the table has no rowid name)."""
    row = row_name(table)
    if row is None:
        return None
    columns = ", ".join(quote_identifier(c) for c in entry_columns(table, index))
    return Fragment(
        f"SELECT {row}, {columns} FROM {quote_identifier(physical_name(table.name))} "
        f"WHERE {row} > :after ORDER BY {row} LIMIT :limit",
        {"after": after, "limit": limit},
    )


def backfill_statements(
    table: Table, index: IndexDef, keyspace: Keyspace, rows: Sequence[tuple[Any, ...]]
) -> list[ShardBatch]:
    """Entries for ``rows`` (read by :func:`backfill_read`), per index shard, each
    inserted unless its row has one already (written since the index began)."""
    target = _Target(
        index,
        index_table(table, index),
        (),
        affinity(ColumnSpec.from_model(_column(table, index.columns[0])).type_name),
        entry_columns(table, index).index(table.distribution_column),
        tombstone_table(table, index),
    )
    router = Router(keyspace)
    by_shard: dict[int, list[tuple[_Target, tuple[Any, ...]]]] = {}
    for rowid, *values in rows:
        key = entry_key(values[0], target.key_affinity, ordered=router.ordered)
        if key is not None:
            by_shard.setdefault(router.shard_of(key), []).append((target, (*values, rowid)))
    return [
        ShardBatch(shard, tuple(_inserts(by_shard[shard], only_new=True)))
        for shard in sorted(by_shard)
    ]


def _column(table: Table, name: str) -> Column:
    return next(c for c in table.columns if c.name == name)
