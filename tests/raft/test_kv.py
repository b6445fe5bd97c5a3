"""The example key-value state machine: operations, de-duplication, snapshots, refusal."""

from __future__ import annotations

import msgspec
import pytest

from shardwise.errors import CommandDecodeError, RaftError
from shardwise.model.kv import Append, Cas, Delete, Get, KVOp, KVResult, Put
from shardwise.raft import client_sessions
from shardwise.raft.kv import (
    KV_COMMAND_VERSION,
    KVCommand,
    KVStateMachine,
    decode_command,
    decode_result,
    encode_command,
)
from shardwise.raft.statemachine import StateMachine


class Replica:
    """Applies commands at consecutive indexes, as the host would."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()

    def run(self, op: KVOp, client: str = "", seq: int = 0) -> KVResult:
        index = self.sm.applied_index() + 1
        return decode_result(self.sm.apply(index, encode_command(op, client_id=client, seq=seq)))


def test_it_is_a_state_machine() -> None:
    machine: StateMachine = KVStateMachine()
    assert machine.applied_index() == 0


def test_operations() -> None:
    r = Replica()
    assert r.run(Get("k")) == KVResult(value=None)
    r.run(Put("k", "a"))
    r.run(Append("k", "b"))
    r.run(Append("new", "x"))
    assert r.run(Get("k")).value == "ab"
    assert r.run(Cas("k", "zz", "c")) == KVResult(ok=False)
    assert r.run(Cas("k", "ab", "c")).ok
    assert r.run(Cas("absent", None, "y")).ok
    r.run(Delete("new"))
    r.run(Delete("never there"))
    assert r.sm.items() == {"k": "c", "absent": "y"}
    assert r.sm.applied_index() == 10


def test_a_retry_returns_the_first_result_and_applies_once() -> None:
    r = Replica()
    first = r.run(Append("k", "x"), "c1", 1)
    r.run(Append("k", "x"), "c2", 1)  # another client's seq 1 is its own
    again = r.run(Append("k", "x"), "c1", 1)
    assert again == first
    assert r.sm.get("k") == "xx"
    got = r.run(Get("k"), "c1", 2)
    r.run(Put("k", "changed"), "c2", 2)
    assert r.run(Get("k"), "c1", 2) == got  # the retried read answers as it first did
    assert r.run(Put("k", "old"), "c1", 1) == KVResult(ok=False, stale=True)
    assert r.sm.get("k") == "changed"
    assert r.sm.last_seq("c1") == 2


def test_commands_without_a_client_are_never_deduplicated() -> None:
    r = Replica()
    r.run(Append("k", "x"))
    r.run(Append("k", "x"))
    assert r.sm.get("k") == "xx"
    with pytest.raises(ValueError, match="seq"):
        encode_command(Get("k"), client_id="c", seq=0)


def test_a_snapshot_restores_data_and_sessions() -> None:
    r = Replica()
    for seq in range(1, 4):
        r.run(Append("k", str(seq)), f"c{seq}", 1)
    data = r.sm.snapshot()
    other = KVStateMachine()
    other.restore(data, 10)  # the index may be past the last command (no-ops after it)
    assert other.applied_index() == 10
    assert other.items() == {"k": "123"}
    assert decode_result(other.apply(11, encode_command(Append("k", "1"), client_id="c1", seq=1)))
    assert other.get("k") == "123"  # the retry was recognized after the restore


def test_the_least_recently_heard_client_is_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_sessions, "MAX_SESSIONS", 2)
    r = Replica()
    r.run(Append("k", "a"), "old", 1)
    r.run(Append("k", "b"), "mid", 1)
    r.run(Append("k", "a"), "old", 1)  # a retry counts as being heard from
    r.run(Append("k", "c"), "new", 1)
    assert (r.sm.last_seq("old"), r.sm.last_seq("mid"), r.sm.last_seq("new")) == (1, 0, 1)
    restored = KVStateMachine()
    restored.restore(r.sm.snapshot(), r.sm.applied_index())
    restored.apply(10, encode_command(Append("k", "d"), client_id="newest", seq=1))
    assert restored.last_seq("old") == 0  # eviction order survived the snapshot


@pytest.mark.parametrize(
    "command",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode(["not", "a", "command"]),
        msgspec.msgpack.encode(KVCommand(KV_COMMAND_VERSION + 1, "", 0, Get("k"))),
        msgspec.msgpack.encode([KV_COMMAND_VERSION, "", 0, ["drop_table", "k"]]),
    ],
)
def test_an_undecodable_command_is_refused_without_changing_anything(command: bytes) -> None:
    sm = KVStateMachine()
    with pytest.raises(CommandDecodeError):
        sm.apply(1, command)
    assert sm.applied_index() == 0
    with pytest.raises(CommandDecodeError):
        decode_command(command)


def test_applying_an_index_twice_is_refused() -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_command(Put("k", "v")))
    with pytest.raises(RaftError, match="again"):
        sm.apply(1, encode_command(Put("k", "w")))
    assert sm.get("k") == "v"


def test_a_bad_snapshot_or_result_is_refused() -> None:
    with pytest.raises(CommandDecodeError):
        KVStateMachine().restore(b"\x00junk", 3)
    with pytest.raises(CommandDecodeError):
        decode_result(b"\xc1")
