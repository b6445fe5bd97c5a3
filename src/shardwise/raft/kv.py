"""A small replicated key-value map: the example :class:`StateMachine` and a test double.

Commands are msgspec Structs in a versioned envelope, so a replica that meets a command it
cannot decode (a bug, or a newer version) stops instead of guessing::

    command = encode_command(Put("k", "v"), client_id="c1", seq=1)
    result = decode_result(await host.propose(command, timeout_s=5.0))

Each client numbers its commands ``seq = 1, 2, 3, ...``. A retried command (same client
id and sequence number, e.g. after a timeout) is applied once and every retry gets the
first result back, which is what makes client retries safe. A command older than the
client's latest one is not applied (``KVResult.stale``). ``client_id=""`` opts out of
de-duplication. The map is kept in memory: its applied index is lost together with its
data, which is exactly the durability the :class:`StateMachine` contract asks for.
"""

from __future__ import annotations

from typing import Final

import msgspec

from shardwise.errors import CommandDecodeError, InvalidKVTypeError, RaftError
from shardwise.model.kv import Append, Delete, Get, KVOp, KVResult, Put, Value, has_bytes
from shardwise.raft.client_sessions import Session, SessionTable

KV_COMMAND_VERSION: Final = 1
"""Version of the command envelope; a replica refuses (halts on) any other."""


class KVCommand(msgspec.Struct, frozen=True, array_like=True):
    """The envelope of every command in the log."""

    version: int
    client_id: str
    seq: int
    op: KVOp


class _Snapshot(msgspec.Struct, frozen=True, array_like=True):
    version: int
    data: dict[str, str]
    sessions: list[Session]
    """Least recently heard-from first, so eviction order survives a restore."""


_encode = msgspec.msgpack.Encoder().encode
_command_decoder = msgspec.msgpack.Decoder(KVCommand)
_result_decoder = msgspec.msgpack.Decoder(KVResult)
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


def encode_command(op: KVOp, *, client_id: str = "", seq: int = 0) -> bytes:
    """The bytes to propose for ``op``; give ``client_id`` and ``seq > 0`` to de-duplicate."""
    if client_id and seq < 1:
        raise ValueError("a de-duplicated command needs seq >= 1")
    if has_bytes(op):  # this map (and its snapshot format) holds str only
        raise InvalidKVTypeError("this key-value group stores str keys and values only")
    return _encode(KVCommand(KV_COMMAND_VERSION, client_id, seq, op))


def decode_command(data: bytes) -> KVCommand:
    try:
        command = _command_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CommandDecodeError(f"undecodable key-value command: {exc}") from exc
    if command.version != KV_COMMAND_VERSION:
        raise CommandDecodeError(f"key-value command version {command.version} is unknown")
    return command


def decode_result(data: bytes) -> KVResult:
    """The result of a proposed command, from the bytes ``RaftHost.propose`` returned."""
    try:
        return _result_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CommandDecodeError(f"undecodable key-value result: {exc}") from exc


class KVStateMachine:
    """An in-memory map from ``str`` keys to ``str`` values, with client de-duplication.

    Read it locally with :meth:`get` / :meth:`items` (inside ``RaftHost.read`` for a
    linearizable read), or through the log by proposing a ``Get``.
    """

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._sessions = SessionTable()
        self._applied = 0

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def items(self) -> dict[str, str]:
        """A copy of the whole map."""
        return dict(self._data)

    def last_seq(self, client_id: str) -> int:
        """The sequence number of the client's latest applied command (0 if none)."""
        return self._sessions.last_seq(client_id)

    # --- the StateMachine protocol -------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, command: bytes) -> bytes:
        if index <= self._applied:
            raise RaftError(f"command {index} applied again (applied index {self._applied})")
        decoded = decode_command(command)  # raises before anything changes
        self._applied = index
        verdict = self._sessions.check(decoded.client_id, decoded.seq)
        if verdict.stale:
            return _encode(KVResult(ok=False, stale=True))
        if verdict.result is not None:
            return verdict.result  # a retry: the first result, not a second apply
        result = _encode(self._execute(decoded.op))
        self._sessions.remember(decoded.client_id, decoded.seq, result)
        return result

    def snapshot(self) -> bytes:
        return _encode(_Snapshot(KV_COMMAND_VERSION, self._data, self._sessions.export()))

    def restore(self, data: bytes, index: int) -> None:
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise CommandDecodeError(f"undecodable key-value snapshot: {exc}") from exc
        if snap.version != KV_COMMAND_VERSION:
            raise CommandDecodeError(f"key-value snapshot version {snap.version} is unknown")
        self._data = dict(snap.data)
        self._sessions = SessionTable(snap.sessions)
        self._applied = index

    # --- internals -----------------------------------------------------------------------

    def _execute(self, op: KVOp) -> KVResult:
        data = self._data
        if has_bytes(op):  # refused by encode_command; never applied, alike everywhere
            return KVResult(ok=False)
        key = _text(op.key)
        if isinstance(op, Get):
            return KVResult(value=data.get(key))
        if isinstance(op, Put):
            data[key] = _text(op.value)
        elif isinstance(op, Append):
            data[key] = data.get(key, "") + _text(op.value)
        elif isinstance(op, Delete):
            data.pop(key, None)
        else:
            if data.get(key) != op.expected:
                return KVResult(ok=False)
            data[key] = _text(op.new)
        return KVResult()


def _text(value: Value) -> str:
    assert isinstance(value, str)  # (has_bytes said so)
    return value
