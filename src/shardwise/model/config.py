"""What the shard controller replicates: numbered configurations and the commands that
make the next one. Frozen msgspec Structs, so configurations compare by value, encode
deterministically and decode with validation.

A *shard* is named by its keyspace and index (``ShardId("default", 17)``, written
``default/17``). A *configuration* says which servers form each replica group, which
group owns each shard of each keyspace (group 0: nobody), how each keyspace maps keys to
shards, and the SQL catalog. Configuration 0 has no groups and one keyspace, ``default``,
of 64 shards over an even split of the hash space.
"""

from __future__ import annotations

import re
from typing import Final, Literal, TypeAlias

import msgspec

from shardwise.model.access import (
    ChangeUserRoles,
    CreateUser,
    DropRole,
    DropUser,
    PutRole,
    SetPassword,
)
from shardwise.model.bounds import Int64

NO_GROUP: Final = 0
"""The owner of a shard that no group holds."""

DEFAULT_KEYSPACE: Final = "default"
DEFAULT_SHARDS: Final = 64
MAX_SHARDS_PER_KEYSPACE: Final = 4096
MAX_GROUPS: Final = 1024
MAX_SERVERS_PER_GROUP: Final = 15
MAX_KEYSPACES: Final = 256
MAX_TABLES: Final = 4096
MAX_NAME_LENGTH: Final = 128

SchemeKind: TypeAlias = Literal["hash", "ring", "range"]
Strategy: TypeAlias = Literal["balanced", "ring", "rendezvous"]
STRATEGIES: Final = ("balanced", "ring", "rendezvous")


class Scheme(msgspec.Struct, frozen=True, array_like=True):
    """How a keyspace maps a key to one of its shards.

    * ``hash``: an even split of the 64-bit hash space into ``shards`` ranges (default);
    * ``ring``: the shards placed on a consistent-hash ring with ``vnodes`` points each;
      a key belongs to the next shard clockwise;
    * ``range``: keys in order, cut at ``split_points`` (``shards = len(split_points) + 1``).
    """

    kind: SchemeKind = "hash"
    shards: Int64 = DEFAULT_SHARDS
    vnodes: Int64 = 64
    split_points: tuple[str, ...] = ()


class Keyspace(msgspec.Struct, frozen=True, array_like=True):
    name: str
    scheme: Scheme
    strategy: Strategy = "balanced"
    """How shards are assigned to groups on a join or leave (see ``rebalance.py``)."""


class Column(msgspec.Struct, frozen=True, array_like=True):
    name: str
    type: str


_TYPE_WORD = r"(?!(?i:DEFAULT|NOT)\b)[A-Za-z_][A-Za-z0-9_]*"
_LITERAL = (
    r"NULL|TRUE|FALSE"
    r"|[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
    r"|'(?:[^']|'')*'"
    r"|[xX]'(?:[0-9A-Fa-f]{2})*'"
)
COLUMN_TYPE: Final = re.compile(
    rf"(?P<name>(?:{_TYPE_WORD})(?: {_TYPE_WORD}){{0,2}}"
    r"(?:\(\s*[+-]?\d+\s*(?:,\s*[+-]?\d+\s*)?\))?)?"
    rf"(?: NOT NULL)?(?: DEFAULT (?:{_LITERAL}))?",
    re.S,
)
"""What a column's declaration may be (``Column.type``): a type name of up to three
words, with an optional size, then ``NOT NULL`` and a literal ``DEFAULT``. A shard
pastes it into its DDL, so anything else (a computed default, a generated column, a
collation, a constraint) could make replicas differ or do what no grant allowed."""

_TYPE_KEYWORDS: Final = frozenset(
    {
        "AS", "AUTOINCREMENT", "CHECK", "COLLATE", "CONSTRAINT", "CURRENT_DATE",
        "CURRENT_TIME", "CURRENT_TIMESTAMP", "DEFAULT", "GENERATED", "KEY", "NOT", "NULL",
        "ON", "PRIMARY", "REFERENCES", "UNIQUE",
    }
)  # fmt: skip
"""Words SQLite would read as a column constraint, not a type name."""


def column_type_problem(declaration: str) -> str:
    """Why ``declaration`` is not an acceptable ``Column.type`` ("" if it is)."""
    match = COLUMN_TYPE.fullmatch(declaration)
    name = match["name"] if match is not None else None
    if match is None or any(w.upper() in _TYPE_KEYWORDS for w in (name or "").split()):
        return (
            f"column declaration {declaration[:80]!r}: a type name, NOT NULL and a literal "
            "DEFAULT are all a column may declare"
        )
    return ""


IndexScope: TypeAlias = Literal["local", "global"]
IndexState: TypeAlias = Literal["public", "building"]


class IndexDef(msgspec.Struct, frozen=True, array_like=True):
    """An index of a table. ``local``: each shard indexes its own rows (a SQLite index
    in every shard file). ``global``: a hidden table of the keyspace holding one entry per
    row (its ``columns``, its distribution value, ``include`` and its rowid), distributed
    by the first of ``columns`` (``shardwise.sql.global_index``)."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False
    scope: IndexScope = "local"
    include: tuple[str, ...] = ()
    """Columns a global index also holds, so a query of them alone reads only the index."""
    state: IndexState = "public"
    """``building``: every write maintains it, no read uses it, while its entries for
    the rows written before it existed are filled in; then ``public``."""
    created_at: Int64 = 0
    """The configuration that made the index (the controller sets it): an index dropped
    and made again under its name is another index, to a build and to a shard."""

    @property
    def is_global(self) -> bool:
        return self.scope == "global"


class Table(msgspec.Struct, frozen=True, array_like=True):
    name: str
    keyspace: str
    distribution_column: str
    """The column whose value places each row; empty for a reference table, of which
    every shard of the keyspace holds a full copy."""
    columns: tuple[Column, ...]
    indexes: tuple[IndexDef, ...] = ()
    created_at: Int64 = 0
    """The configuration whose ``CREATE TABLE`` made this table (the controller sets it):
    a table dropped and created again under its name is another table, even to a shard
    that sees both changes at once (one moved while they happened)."""

    @property
    def is_reference(self) -> bool:
        return not self.distribution_column


class ShardId(msgspec.Struct, frozen=True, array_like=True, order=True):
    keyspace: str
    index: Int64

    def __str__(self) -> str:
        return f"{self.keyspace}/{self.index}"


class TableStats(msgspec.Struct, frozen=True, array_like=True):
    """What ``ANALYZE`` counted in a table (the planner's estimates start here)."""

    rows: Int64
    analyzed_at: Int64 = 0
    """The configuration that recorded the count."""


UNRECORDED: Final = -1
"""``Configuration.shard_map_changed_at`` / ``catalog_changed_at`` of a configuration
encoded before they were recorded (the controller derives them again on restore)."""


class Configuration(msgspec.Struct, frozen=True, array_like=True):
    """Configuration ``num``: one sequence for every change. The two ``*_changed_at``
    fields tell a change of the shard map from a change of the catalog (fields at the
    end, with defaults: an older encoding still decodes, an older reader ignores them)."""

    num: Int64
    groups: dict[Int64, tuple[str, ...]]
    """Replica group id -> the servers of the group."""
    keyspaces: dict[str, Keyspace]
    owners: dict[str, tuple[Int64, ...]]
    """Keyspace -> the owning group of each of its shards, by index (0: nobody)."""
    tables: dict[str, Table] = {}
    shard_map_changed_at: Int64 = UNRECORDED
    """The latest configuration (``<= num``) that changed the shard map: the groups, the
    keyspaces or the owner of a shard. DDL makes a configuration too (so that each group
    applies it at one point of its own log, ordered with its writes) but leaves this be."""
    catalog_changed_at: Int64 = UNRECORDED
    """The latest configuration (``<= num``) that changed the SQL catalog (``tables``)."""
    stats: dict[str, TableStats] = {}
    """Table -> its statistics as of its latest ``ANALYZE`` (none: never analyzed). Not
    part of the catalog: a new count changes no table, so no statement planned before it
    is refused for it."""
    index_builds: dict[str, tuple[Int64, ...]] = {}
    """A global index being built (by name: unique in the catalog) -> the base shards
    done so far (``SetIndexState``). Not part of the catalog, as ``stats``: progress
    changes no table."""

    def owner(self, shard: ShardId) -> int:
        return self.owners[shard.keyspace][shard.index]

    def shards_of(self, gid: int) -> list[ShardId]:
        return [
            ShardId(ks, i)
            for ks, owners in self.owners.items()
            for i, owner in enumerate(owners)
            if owner == gid
        ]


def initial_configuration() -> Configuration:
    default = Keyspace(DEFAULT_KEYSPACE, Scheme())
    return Configuration(
        num=0,
        groups={},
        keyspaces={DEFAULT_KEYSPACE: default},
        owners={DEFAULT_KEYSPACE: (NO_GROUP,) * DEFAULT_SHARDS},
        shard_map_changed_at=0,
        catalog_changed_at=0,
    )


# --- commands ------------------------------------------------------------------------


class Join(msgspec.Struct, frozen=True, tag="join"):
    groups: dict[Int64, tuple[str, ...]]


class Leave(msgspec.Struct, frozen=True, tag="leave"):
    gids: tuple[Int64, ...]


class Move(msgspec.Struct, frozen=True, tag="move"):
    shard: ShardId
    gid: Int64


class CreateKeyspace(msgspec.Struct, frozen=True, tag="create_keyspace"):
    keyspace: Keyspace


class Rebalance(msgspec.Struct, frozen=True, tag="rebalance"):
    """Set a keyspace's strategy (all keyspaces when ``keyspace`` is empty) and rebalance."""

    strategy: Strategy
    keyspace: str = ""


class CreateTable(msgspec.Struct, frozen=True, tag="create_table"):
    table: Table


class DropTable(msgspec.Struct, frozen=True, tag="drop_table"):
    name: str


class AddColumn(msgspec.Struct, frozen=True, tag="add_column"):
    table: str
    column: Column


class CreateIndex(msgspec.Struct, frozen=True, tag="create_index"):
    table: str
    index: IndexDef


class DropIndex(msgspec.Struct, frozen=True, tag="drop_index"):
    table: str
    name: str


class SetIndexState(msgspec.Struct, frozen=True, tag="set_index_state"):
    """A global index's build: ``done`` are the base shards whose rows have entries
    (recorded as the build goes, so an interrupted one resumes), ``state`` ``public``
    once all have. ``created_at`` is the table's: a table dropped and created again since
    the build began is refused."""

    table: str
    name: str
    state: IndexState
    created_at: Int64
    done: tuple[Int64, ...] = ()
    index_created_at: Int64 = 0
    """The index's ``created_at``: a build of an index dropped since is refused."""


class SetStats(msgspec.Struct, frozen=True, tag="set_stats"):
    """Record ``ANALYZE``'s row counts: table -> rows."""

    rows: dict[str, Int64]
    created: dict[str, Int64] = {}
    """Table -> the ``created_at`` of the table that was counted: a table dropped and
    created again since is refused, not given the old table's count."""


Op: TypeAlias = (
    Join
    | Leave
    | Move
    | CreateKeyspace
    | Rebalance
    | CreateTable
    | DropTable
    | AddColumn
    | CreateIndex
    | DropIndex
    | SetIndexState
    | SetStats
    | CreateUser
    | DropUser
    | SetPassword
    | ChangeUserRoles
    | PutRole
    | DropRole
)
"""Every controller command. The access commands (``access.py``) change the users and
roles, not the configuration: they leave its number as it is."""

COMMAND_VERSION: Final = 1


class Command(msgspec.Struct, frozen=True, array_like=True):
    """The versioned envelope of every controller command in the log."""

    version: Int64
    client_id: str
    seq: Int64
    op: Op


class MoveInfo(msgspec.Struct, frozen=True, array_like=True):
    shard: ShardId
    source: Int64
    target: Int64


class ChangeResult(msgspec.Struct, frozen=True, array_like=True):
    """What a command returns: the configuration it made (or the latest, if it changed
    nothing), the shard moves it caused, or an error code and message."""

    num: Int64
    moves: tuple[MoveInfo, ...] = ()
    error: str = ""
    message: str = ""
