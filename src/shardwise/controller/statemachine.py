"""The shard controller's replicated state machine: every configuration ever made.

Commands arrive through the controller group's Raft log, in a versioned envelope with the
client's id and sequence number (a retried command applies once). Each accepted change
appends configuration ``n + 1``; a refused one changes nothing and answers with an error
code. Queries do not go through the log: they read :meth:`ControllerStateMachine.query`
inside a linearizable ReadIndex read.

Every configuration also records the latest configuration that changed the shard map
(groups, keyspaces, owners) and the latest that changed the catalog (tables), derived
here by comparing each configuration with the one before it (:func:`with_change_numbers`),
so DDL, which must be a numbered configuration (each group applies it at one point of its
own log, ordered with its writes), does not look like a change of the shard map.

Everything here is deterministic: dicts are rebuilt in sorted order, the balancer does
not depend on input order, and no clock or randomness is read, so every replica (and two
controllers fed the same commands in any dict order) build identical configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from shardwise.controller.access import ACCESS_OPS, change_access
from shardwise.controller.rebalance import rebalance_keyspace
from shardwise.errors import (
    CatalogError,
    CommandDecodeError,
    CommandVersionError,
    ControllerError,
    GroupExistsError,
    InvalidQueryError,
    InvalidServersError,
    KeyspaceExistsError,
    OrphanedShardsError,
    ShardwiseError,
    UnknownGroupError,
    UnknownKeyspaceError,
    UnknownShardError,
)
from shardwise.model.access import AccessCatalog, AccessOp
from shardwise.model.bounds import Int64
from shardwise.model.catalog_changes import (
    building,
    changed_tables,
    check_name,
    index_state,
    table_named,
)
from shardwise.model.config import (
    COMMAND_VERSION,
    MAX_GROUPS,
    MAX_KEYSPACES,
    MAX_SERVERS_PER_GROUP,
    MAX_SHARDS_PER_KEYSPACE,
    MAX_TABLES,
    NO_GROUP,
    STRATEGIES,
    UNRECORDED,
    ChangeResult,
    Command,
    Configuration,
    CreateIndex,
    CreateKeyspace,
    Join,
    Leave,
    Move,
    MoveInfo,
    Op,
    Rebalance,
    SetIndexState,
    SetStats,
    TableStats,
    initial_configuration,
)
from shardwise.model.schemes import check_scheme
from shardwise.raft.client_sessions import Session, SessionTable

_encode = msgspec.msgpack.Encoder().encode
_command_decoder = msgspec.msgpack.Decoder(Command)

MAX_CONFIGURATIONS: Final = 1_000_000
"""Configurations kept queryable. Each is small (one group id per shard), so a million is
a few hundred MiB at most; past it the controller refuses changes rather than forget."""


class _Snapshot(msgspec.Struct, frozen=True, array_like=True):
    version: Int64
    configs: list[Configuration]
    sessions: list[Session]
    access: AccessCatalog = AccessCatalog()
    """Users and roles (absent from snapshots written before there were any)."""


def encode_command(op: Op, *, client_id: str = "", seq: int = 0) -> bytes:
    """The bytes to propose for ``op``; give ``client_id`` and ``seq > 0`` to de-duplicate."""
    if client_id and seq < 1:
        raise ValueError("a de-duplicated command needs seq >= 1")
    return _encode(Command(COMMAND_VERSION, client_id, seq, op))


def decode_result(data: bytes) -> ChangeResult:
    try:
        return msgspec.msgpack.decode(data, type=ChangeResult)
    except msgspec.DecodeError as exc:
        raise CommandDecodeError(f"undecodable controller result: {exc}") from exc


class ControllerStateMachine:
    def __init__(self) -> None:
        self._configs: list[Configuration] = [initial_configuration()]
        self._sessions = SessionTable()
        self._applied = 0
        self._access = AccessCatalog()
        self.access_listeners: list[Callable[[AccessCatalog], None]] = []
        """Called with each new access catalog as it is applied."""
        self.listeners: list[Callable[[Configuration], None]] = []
        """Called with each new configuration as it is applied (the server's watches).
        Listeners must not fail: the state machine's replicas must stay identical."""

    # --- queries -------------------------------------------------------------------------

    def latest(self) -> Configuration:
        return self._configs[-1]

    def access(self) -> AccessCatalog:
        """The users and roles, as of the last applied entry."""
        return self._access

    def query(self, num: int = -1) -> Configuration:
        """Configuration ``num``; the latest for -1 or any number past the latest."""
        if num < -1:
            raise InvalidQueryError(f"configuration numbers start at 0 (-1: latest), not {num}")
        if num == -1 or num >= len(self._configs):
            return self._configs[-1]
        return self._configs[num]

    # --- the StateMachine protocol -------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, command: bytes) -> bytes:
        try:
            decoded = _command_decoder.decode(command)
        except msgspec.DecodeError as exc:
            if _version(command) > COMMAND_VERSION:  # newer than this code: halt
                raise CommandVersionError(f"undecodable controller command: {exc}") from exc
            # The same bytes on every replica: the same answer, and nothing changes.
            self._applied = index
            failed = ChangeResult(self.latest().num, error="controller", message=f"{exc}")
            return _encode(failed)
        if decoded.version != COMMAND_VERSION:
            raise CommandVersionError(f"controller command version {decoded.version} is unknown")
        self._applied = index
        verdict = self._sessions.check(decoded.client_id, decoded.seq)
        if verdict.result is not None:
            return verdict.result
        if verdict.stale:
            return _encode(ChangeResult(self.latest().num, error="stale", message="superseded"))
        if isinstance(decoded.op, ACCESS_OPS):
            encoded = _encode(self._change_access(decoded.op))
            self._sessions.remember(decoded.client_id, decoded.seq, encoded)
            return encoded
        try:
            config, moves = self._execute(decoded.op)  # (pure: raises before any change)
        except ControllerError as exc:
            result = ChangeResult(self.latest().num, error=exc.code, message=str(exc))
        except (ShardwiseError, ValueError, TypeError, OverflowError) as exc:
            # A command the edge checks should have refused: the same on every replica.
            result = ChangeResult(self.latest().num, error="controller", message=f"{exc}")
        else:
            if config is self.latest():  # (nothing to change: no new configuration)
                result = ChangeResult(config.num, tuple(moves))
            elif len(self._configs) >= MAX_CONFIGURATIONS:
                result = ChangeResult(self.latest().num, error="full", message="too many configs")
            else:
                config = with_change_numbers(self.latest(), config)
                self._configs.append(config)
                result = ChangeResult(config.num, tuple(moves))
                for listener in self.listeners:
                    listener(config)
        encoded = _encode(result)
        self._sessions.remember(decoded.client_id, decoded.seq, encoded)
        return encoded

    def _change_access(self, op: AccessOp) -> ChangeResult:
        try:
            self._access = change_access(self._access, op)
        except ControllerError as exc:
            return ChangeResult(self.latest().num, error=exc.code, message=str(exc))
        for listener in self.access_listeners:
            listener(self._access)
        return ChangeResult(self.latest().num)

    def snapshot(self) -> bytes:
        return _encode(
            _Snapshot(COMMAND_VERSION, self._configs, self._sessions.export(), self._access)
        )

    def restore(self, data: bytes, index: int) -> None:
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise CommandDecodeError(f"undecodable controller snapshot: {exc}") from exc
        self._configs = fill_change_numbers(snap.configs)
        self._sessions = SessionTable(snap.sessions)
        self._access = snap.access
        self._applied = index

    # --- commands ------------------------------------------------------------------------

    def _execute(self, op: Op) -> tuple[Configuration, list[MoveInfo]]:
        latest = self.latest()
        if isinstance(op, Join):
            return self._join(latest, op)
        if isinstance(op, Leave):
            return self._leave(latest, op)
        if isinstance(op, Move):
            return self._move(latest, op)
        if isinstance(op, Rebalance):
            return self._rebalance(latest, op)
        if isinstance(op, CreateKeyspace):
            return self._create_keyspace(latest, op)
        if isinstance(op, SetStats):
            return _with_stats(latest, op), []
        if isinstance(op, SetIndexState):
            tables, builds = index_state(latest.tables, latest.keyspaces, latest.index_builds, op)
            return _next(latest, tables=tables, index_builds=builds), []
        assert not isinstance(op, AccessOp), "access commands leave the configuration be"
        tables = changed_tables(latest.tables, latest.keyspaces, op, latest.num + 1)
        stats = {name: s for name, s in latest.stats.items() if name in tables}  # (dropped)
        builds = building(tables, latest.index_builds)
        if isinstance(op, CreateIndex) and op.index.state == "building":
            builds[op.index.name] = ()
        return _next(latest, tables=tables, stats=stats, index_builds=builds), []

    def _join(self, latest: Configuration, op: Join) -> tuple[Configuration, list[MoveInfo]]:
        if not op.groups:
            raise InvalidServersError("join names no groups")
        for gid, servers in op.groups.items():
            if gid <= NO_GROUP:
                raise UnknownGroupError(f"group ids are positive, not {gid}")
            if gid in latest.groups:
                raise GroupExistsError(f"group {gid} has already joined")
            _check_servers(gid, servers)
        if len(latest.groups) + len(op.groups) > MAX_GROUPS:
            raise InvalidServersError(f"at most {MAX_GROUPS} groups")
        groups = {**latest.groups, **{g: tuple(s) for g, s in op.groups.items()}}
        return _rebalanced(latest, groups)

    def _leave(self, latest: Configuration, op: Leave) -> tuple[Configuration, list[MoveInfo]]:
        if not op.gids:
            raise UnknownGroupError("leave names no groups")
        if len(set(op.gids)) != len(op.gids):
            raise UnknownGroupError("leave names a group twice")
        for gid in op.gids:
            if gid not in latest.groups:
                raise UnknownGroupError(f"group {gid} has not joined")
        groups = {g: s for g, s in latest.groups.items() if g not in op.gids}
        if not groups:
            # Every shard would go to nobody, and a shard gained from nobody starts empty:
            # the data would be lost. Refuse rather than drop it.
            raise OrphanedShardsError(
                f"leaving {sorted(op.gids)} would leave every shard with no group; "
                "join another group first"
            )
        return _rebalanced(latest, groups)

    def _move(self, latest: Configuration, op: Move) -> tuple[Configuration, list[MoveInfo]]:
        owners = latest.owners.get(op.shard.keyspace)
        if owners is None or not 0 <= op.shard.index < len(owners):
            raise UnknownShardError(f"there is no shard {op.shard}")
        if op.gid not in latest.groups:
            raise UnknownGroupError(f"group {op.gid} has not joined")
        source = owners[op.shard.index]
        changed = (*owners[: op.shard.index], op.gid, *owners[op.shard.index + 1 :])
        moves = [MoveInfo(op.shard, source, op.gid)] if source != op.gid else []
        return _next(latest, owners={**latest.owners, op.shard.keyspace: changed}), moves

    def _rebalance(
        self, latest: Configuration, op: Rebalance
    ) -> tuple[Configuration, list[MoveInfo]]:
        if op.strategy not in STRATEGIES:
            raise ControllerError(f"unknown strategy {op.strategy!r}")
        names = [op.keyspace] if op.keyspace else sorted(latest.keyspaces)
        keyspaces = dict(latest.keyspaces)
        for name in names:
            if name not in keyspaces:
                raise UnknownKeyspaceError(f"there is no keyspace {name!r}")
            keyspaces[name] = msgspec.structs.replace(keyspaces[name], strategy=op.strategy)
        return _rebalanced(_next(latest, keyspaces=keyspaces, bump=False), latest.groups)

    def _create_keyspace(
        self, latest: Configuration, op: CreateKeyspace
    ) -> tuple[Configuration, list[MoveInfo]]:
        keyspace = op.keyspace
        check_name(keyspace.name, "keyspace")
        if keyspace.name in latest.keyspaces:
            raise KeyspaceExistsError(f"keyspace {keyspace.name!r} exists")
        if len(latest.keyspaces) >= MAX_KEYSPACES:
            raise KeyspaceExistsError(f"at most {MAX_KEYSPACES} keyspaces")
        if keyspace.strategy not in STRATEGIES:
            raise ControllerError(f"unknown strategy {keyspace.strategy!r}")
        check_scheme(keyspace.scheme, MAX_SHARDS_PER_KEYSPACE)
        base = _next(
            latest,
            keyspaces={**latest.keyspaces, keyspace.name: keyspace},
            owners={**latest.owners, keyspace.name: (NO_GROUP,) * keyspace.scheme.shards},
            bump=False,
        )
        return _rebalanced(base, latest.groups)


def with_change_numbers(previous: Configuration, config: Configuration) -> Configuration:
    """``config`` (the one after ``previous``) with the numbers of the latest
    configurations that changed its shard map and its catalog."""
    map_changed = (config.groups, config.keyspaces, config.owners) != (
        previous.groups,
        previous.keyspaces,
        previous.owners,
    )
    return msgspec.structs.replace(
        config,
        shard_map_changed_at=config.num if map_changed else previous.shard_map_changed_at,
        catalog_changed_at=(
            config.num if config.tables != previous.tables else previous.catalog_changed_at
        ),
    )


def fill_change_numbers(configs: list[Configuration]) -> list[Configuration]:
    """``configs`` (every configuration from 0, in order) with the change numbers derived
    again wherever they are missing: a snapshot written before they were recorded gets
    exactly the numbers its log would have given them."""
    filled: list[Configuration] = []
    for config in configs:
        if UNRECORDED not in (config.shard_map_changed_at, config.catalog_changed_at):
            filled.append(config)
        elif filled:
            filled.append(with_change_numbers(filled[-1], config))
        else:
            first = config.num  # configuration 0: everything began there
            filled.append(
                msgspec.structs.replace(
                    config, shard_map_changed_at=first, catalog_changed_at=first
                )
            )
    return filled


def _check_servers(gid: int, servers: tuple[str, ...]) -> None:
    if not servers:
        raise InvalidServersError(f"group {gid} has no servers")
    if len(set(servers)) != len(servers):
        raise InvalidServersError(f"group {gid} lists a server twice")
    if len(servers) > MAX_SERVERS_PER_GROUP or any(not s for s in servers):
        raise InvalidServersError(f"group {gid}: 1-{MAX_SERVERS_PER_GROUP} non-empty names")


def _next(latest: Configuration, *, bump: bool = True, **changes: object) -> Configuration:
    """A copy of ``latest`` with ``changes``, numbered next (``bump=False``: same number,
    for an intermediate step of one change), its dicts in sorted order."""
    config = msgspec.structs.replace(latest, **changes)
    return Configuration(
        num=latest.num + 1 if bump else latest.num,
        groups=dict(sorted(config.groups.items())),
        keyspaces=dict(sorted(config.keyspaces.items())),
        owners=dict(sorted(config.owners.items())),
        tables=dict(sorted(config.tables.items())),
        stats=dict(sorted(config.stats.items())),
        index_builds=dict(sorted(config.index_builds.items())),
    )


def _rebalanced(
    latest: Configuration, groups: dict[int, tuple[str, ...]]
) -> tuple[Configuration, list[MoveInfo]]:
    gids = sorted(groups)
    owners: dict[str, tuple[int, ...]] = {}
    moves: list[MoveInfo] = []
    for name, keyspace in sorted(latest.keyspaces.items()):
        owners[name], moved = rebalance_keyspace(keyspace, latest.owners[name], gids)
        moves.extend(moved)
    return _next(latest, groups=groups, owners=owners), moves


def _with_stats(latest: Configuration, op: SetStats) -> Configuration:
    """``latest`` with ``op``'s counts (``latest`` itself when they are its own)."""
    if not op.rows or len(op.rows) > MAX_TABLES:
        raise CatalogError(f"statistics for 1 to {MAX_TABLES} tables")
    stats = dict(latest.stats)
    for name, rows in op.rows.items():
        table = table_named(latest.tables, name)
        if rows < 0:
            raise CatalogError(f"a row count is never negative ({name!r}: {rows})")
        if op.created.get(name, table.created_at) != table.created_at:
            raise CatalogError(
                f"table {name!r} was dropped and created again while ANALYZE counted it: "
                "run ANALYZE again"
            )
        known = stats.get(name)
        if known is None or known.rows != rows:
            stats[name] = TableStats(rows, latest.num + 1)
    return latest if stats == latest.stats else _next(latest, stats=stats)


def _version(command: bytes) -> int:
    """The envelope version of a command that does not decode (0 if it has none)."""
    try:
        envelope = msgspec.msgpack.decode(command)
    except msgspec.DecodeError:
        return 0
    if isinstance(envelope, list) and envelope and isinstance(envelope[0], int):
        return envelope[0]
    return 0
