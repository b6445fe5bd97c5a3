"""A controller entry that cannot be applied is the same failed answer on every replica,
never a halt; only a command of a newer version than the code halts."""

from __future__ import annotations

import msgspec
import pytest

from shardwise.controller.statemachine import (
    ControllerStateMachine,
    decode_result,
    encode_command,
)
from shardwise.errors import CommandVersionError
from shardwise.model.config import COMMAND_VERSION, Join


def test_undecodable_and_unappliable_commands_are_answered_alike() -> None:
    replicas = [ControllerStateMachine() for _ in range(2)]
    join = encode_command(Join({1: ("127.0.0.1:1",)}), client_id="c", seq=1)
    for sm in replicas:
        failed = decode_result(sm.apply(1, b"\x93garbage"))
        assert failed.error == "controller" and sm.applied_index() == 1
        assert decode_result(sm.apply(2, join)).error == ""
    assert replicas[0].snapshot() == replicas[1].snapshot()


def test_an_error_of_the_command_in_its_execution_is_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sm = ControllerStateMachine()

    def broken(*_: object) -> None:
        raise ValueError("a value the edge should have refused")

    monkeypatch.setattr(sm, "_execute", broken)
    join = encode_command(Join({1: ("127.0.0.1:1",)}), client_id="c", seq=1)
    result = decode_result(sm.apply(1, join))
    assert result.error == "controller" and "refused" in result.message
    assert decode_result(sm.apply(2, join)) == result  # a retry: the recorded answer


def test_a_command_of_a_newer_version_halts() -> None:
    sm = ControllerStateMachine()
    newer = msgspec.msgpack.encode([COMMAND_VERSION + 1, "c", 1, ["future_op"]])
    with pytest.raises(CommandVersionError):
        sm.apply(1, newer)
    assert sm.applied_index() == 0
