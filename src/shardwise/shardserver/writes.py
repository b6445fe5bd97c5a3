"""Clients' writes as the group's state machine applies them: KV operations (alone or
batched), SQL write batches, and transactions' commands.

Each applies to a shard only while it is SERVING here (``writable`` hands out its store,
registered in the batch the host is applying); otherwise the shard's answer is
``wrong_group`` with the configuration number. ``statemachine.py`` decodes an entry and
passes the command here; this module changes nothing but the shards' stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from shardwise.errors import ShardLimitError
from shardwise.model.config import Configuration, ShardId
from shardwise.model.kv import KVResult
from shardwise.model.txn import TxnPart, TxnState, TxnVote, check_parts, check_txn_id
from shardwise.shardserver import kvops
from shardwise.shardserver.commands import (
    ClientBatch,
    ClientOp,
    GroupResult,
    SqlWrite,
    SqlWriteResult,
    TxnCommit,
    TxnExpire,
    TxnFence,
    TxnPrepare,
    TxnResolve,
)
from shardwise.shardserver.protocol import SchemaVerdict, keyspace_tables
from shardwise.shardserver.txn import state as txn_state

if TYPE_CHECKING:
    from shardwise.shardserver.store import ShardStore

TxnCommand = TxnPrepare | TxnResolve | TxnFence | TxnExpire | TxnCommit

WRONG_GROUP = "wrong_group"
SCHEMA_CHANGED = "schema_changed"
"""A vote's code for a part planned on other tables (``SqlSchemaChangedError.code``)."""
STALE = "stale"


class WriteApplier:
    """Applies clients' writes to the stores ``writable`` gives out."""

    def __init__(
        self,
        writable: Callable[[ShardId], ShardStore | None],
        serving: Callable[[], list[ShardStore]],
        config_num: Callable[[], int],
        schema_verdict: Callable[[str, int, int], SchemaVerdict],
    ) -> None:
        self._writable = writable
        self._serving = serving
        """Every serving shard's store (a transaction clean-up goes to those that have
        something to clean)."""
        self._config_num = config_num
        self._schema_verdict = schema_verdict
        self.ddl_waiting: set[str] = set()
        """Keyspaces whose next tables wait for prepared transactions to resolve (the
        leader's reconciler says so; not replicated): new SQL prepares there are asked
        to wait, so the DDL is not starved."""

    # --- KV and SQL ----------------------------------------------------------------------

    def client_op(self, index: int, cmd: ClientOp) -> GroupResult:
        store = self._writable(cmd.shard)
        if store is None:
            return GroupResult("wrong_group", self._config_num())
        refused = kvops.refusal(cmd.op)
        if refused:
            return GroupResult("failed", self._config_num(), error=refused)
        result: KVResult | None = store.apply(index, cmd.client_id, cmd.seq, cmd.op)
        return GroupResult("ok", self._config_num(), result)

    def client_batch(self, index: int, cmd: ClientBatch) -> GroupResult:
        """Each operation as :meth:`client_op` would apply it; a shard's operations in
        one call, since they share the entry's index (see ``ShardStore.apply_many``)."""
        results: list[GroupResult | None] = [None] * len(cmd.ops)
        by_shard: dict[ShardId, list[int]] = {}
        num = self._config_num()
        for position, op in enumerate(cmd.ops):
            refused = kvops.refusal(op.op)
            if refused:
                results[position] = GroupResult("failed", num, error=refused)
            else:
                by_shard.setdefault(op.shard, []).append(position)
        for shard, positions in by_shard.items():
            store = self._writable(shard)
            if store is None:
                for position in positions:
                    results[position] = GroupResult("wrong_group", num)
                continue
            ops = [(cmd.ops[p].client_id, cmd.ops[p].seq, cmd.ops[p].op) for p in positions]
            applied = store.apply_many(index, ops)
            for n, position in enumerate(positions):
                results[position] = GroupResult("ok", num, None if applied is None else applied[n])
        done = [r for r in results if r is not None]
        touched = set(by_shard)
        for sql in cmd.sql:  # (see ``ClientBatch.sql``)
            if sql.shard in touched:
                done.append(GroupResult("ignored", num))
                continue
            touched.add(sql.shard)
            done.append(self.sql_write(index, sql))
        for txn in cmd.txns:  # (see ``ClientBatch.txns``)
            shards = shards_of(txn)
            if touched & shards:
                done.append(GroupResult("ignored", num))
                continue
            touched |= shards
            done.append(self.txn(index, txn))
        return GroupResult("ok", num, batch=tuple(done))

    def sql_write(self, index: int, cmd: SqlWrite) -> GroupResult:
        store = self._writable(cmd.shard)
        if store is None:
            return GroupResult("wrong_group", self._config_num())
        verdict = self._schema_verdict(cmd.shard.keyspace, cmd.catalog_num, cmd.schema)
        sql: SqlWriteResult | None = store.apply_sql(
            index, cmd.client_id, cmd.seq, cmd.statements, verdict, max_steps=cmd.max_steps
        )
        return GroupResult("ok", self._config_num(), sql=sql)

    # --- transactions --------------------------------------------------------------------

    def txn(self, index: int, cmd: TxnCommand) -> GroupResult:
        num = self._config_num()
        refused = _refusal(cmd)
        if refused:  # (the door checks it: a leader of another version, or a planted entry)
            return GroupResult("failed", num, error=refused)
        votes: list[TxnVote] = []
        if isinstance(cmd, TxnCommit):
            anchor = self._writable(cmd.parts[0].shard)
            if anchor is None:
                # Nothing recorded: the client asks the shard's new owner with the same
                # sequence number (its sessions say whether this commit applied there).
                return GroupResult("wrong_group", num)
            votes += self._commit(index, cmd, anchor)
        elif isinstance(cmd, TxnExpire):
            # Only the shards that keep final records take part (and enter the batch).
            for serving in self._serving():
                if serving.has_final_txns() and (store := self._writable(serving.shard)):
                    store.txn_expire(index, cmd.now_ms)
        elif isinstance(cmd, TxnPrepare):
            for part in cmd.parts:
                store = self._writable(part.shard)
                if store is None:
                    votes.append(_vote(part.shard, None, None))
                    continue
                if stale_plan := self._planned_elsewhere(part):
                    votes.append(stale_plan)  # (nothing recorded: a retry asks again)
                    continue
                prepared = store.txn_prepare(
                    index, cmd.txn, part, cmd.participants, now_ms=cmd.now_ms, owner=cmd.user
                )
                votes.append(_vote(part.shard, store, prepared))
        else:
            for shard in cmd.shards:
                store = self._writable(shard)
                vote: TxnVote | None = None
                if store is None:
                    pass
                elif isinstance(cmd, TxnResolve):
                    vote = store.txn_resolve(index, cmd.txn, cmd.commit, cmd.user)
                else:
                    vote = store.txn_fence(index, cmd.txn)
                votes.append(_vote(shard, store, vote))
        return GroupResult("ok", num, votes=tuple(votes))

    def _commit(self, index: int, cmd: TxnCommit, anchor: ShardStore) -> tuple[TxnVote, ...]:
        """Every part validated, then every part applied: one entry, all or nothing;
        de-duplicated in the first part's shard, ``anchor`` (see ``TxnCommit``)."""
        anchor_shard = cmd.parts[0].shard
        stores: list[tuple[ShardStore, TxnPart]] = []
        for part in cmd.parts:
            store = anchor if part.shard == anchor_shard else self._writable(part.shard)
            if store is None:
                break
            stores.append((store, part))
        # SQL is tried before any of the entry's transactions begins (see
        # ``TxnStoreMixin.txn_prepare``); nothing changes the shards in between.
        tried = {
            store.shard: store.try_sql(part.sql.statements)
            for store, part in stores
            if part.sql is not None and part.sql.statements and anchor.fresh(index)
        }

        def run() -> tuple[TxnVote, ...]:
            if len(stores) < len(cmd.parts):
                return (TxnVote(cmd.parts[len(stores)].shard, WRONG_GROUP),)
            for part in cmd.parts:
                if stale_plan := self._planned_elsewhere(part):
                    return (stale_plan,)
            rows = 0
            for store, part in stores:
                why = store.txn_conflict(part)
                sql = tried.get(part.shard)
                if not why and sql is not None:
                    why, rows = sql.error, rows + sql.rowcount
                if why:
                    code = txn_state.sql_code(sql) if sql is not None else ""
                    return (TxnVote(part.shard, TxnState.ABORTED, why, code=code),)
            for store, part in stores[1:]:
                store.txn_apply(index, part)
            return (TxnVote(anchor_shard, TxnState.COMMITTED, rowcount=rows),)

        votes = anchor.txn_commit_once(index, cmd.client_id, cmd.seq, cmd.parts[0], run)
        return votes if votes is not None else (TxnVote(anchor_shard, TxnState.COMMITTED),)

    def tables_held(self, old: Configuration, new: Configuration) -> set[str]:
        """The keyspaces whose tables ``new`` changes and where a shard serving here is
        held by a prepared transaction that writes its SQL: the group does not move to ``new``
        until they resolve (its statements were tried on the tables they must meet at
        commit). Deterministic: the locks are the shards' replicated state."""
        if old.tables == new.tables:
            return set()
        held: set[str] = set()
        for store in self._serving():
            keyspace = store.shard.keyspace
            if keyspace in held or store.sql_locked(write=False) is None:  # (exclusive)
                continue
            if keyspace_tables(old.tables, keyspace) != keyspace_tables(new.tables, keyspace):
                held.add(keyspace)
        return held

    def _planned_elsewhere(self, part: TxnPart) -> TxnVote | None:
        """A part whose SQL statements were planned with other tables than the group
        holds (see ``TxnSql``): refused with ``schema_changed``, nothing recorded."""
        sql = part.sql
        if sql is None or not sql.statements:
            return None
        verdict = self._schema_verdict(part.shard.keyspace, sql.catalog_num, sql.schema)
        if not verdict:
            return None
        why = f"the tables of shard {part.shard} are not those the statement was planned with"
        return TxnVote(part.shard, TxnState.ABORTED, why, code=SCHEMA_CHANGED)


def shards_of(cmd: TxnPrepare | TxnResolve | TxnCommit) -> set[ShardId]:
    """The shards a transaction's command changes (its parts', or those it resolves)."""
    if isinstance(cmd, TxnResolve):
        return set(cmd.shards)
    return {part.shard for part in cmd.parts}


def _refusal(cmd: TxnCommand) -> str:
    """Why a logged transaction command cannot apply (the same on every replica; the door
    refuses these before the log): its limits, and a commit's or prepare's parts."""
    try:
        if isinstance(cmd, TxnPrepare | TxnCommit):
            problem = _sql_refusal(cmd.parts)
            if problem:
                return problem
        if isinstance(cmd, TxnCommit):
            if not cmd.parts:
                return "a transaction to commit has no parts"
            check_parts(cmd.parts)
        elif isinstance(cmd, TxnPrepare):
            check_txn_id(cmd.txn)
            if not cmd.participants:
                return "a prepare lists no participants"
            check_parts(cmd.parts, cmd.participants)
        elif isinstance(cmd, TxnResolve | TxnFence):
            check_txn_id(cmd.txn)
    except ShardLimitError as exc:
        return str(exc)
    return ""


def _sql_refusal(parts: tuple[TxnPart, ...]) -> str:
    """Why the SQL of a transaction's parts cannot apply ("" if it can): parameters that
    are not SQLite values (the door refuses them first)."""
    if not any(part.sql for part in parts):
        return ""
    from shardwise.shardserver.sql_checks import check_statement  # noqa: PLC0415 - SQL only

    for part in parts:
        for statement in part.sql.statements if part.sql is not None else ():
            problem = check_statement(statement)
            if problem:
                return problem
    return ""


def _vote(shard: ShardId, store: ShardStore | None, vote: TxnVote | None) -> TxnVote:
    if store is None:
        return TxnVote(shard, WRONG_GROUP)
    # ``None``: the entry was applied before this replay reached it; nobody waits for it.
    return vote if vote is not None else TxnVote(shard, STALE)
