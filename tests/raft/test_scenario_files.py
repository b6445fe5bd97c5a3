"""Scenario files for the Raft core, in the spirit of etcd-raft's ``testdata``: a few
nodes driven by a script of steps, each followed by the output it must produce.

A file in ``scenarios/`` is a list of steps. A step is a line ``> command args``;
the lines after it, up to the next step, are what it must print. ``#`` starts a
comment line. The commands:

==================  ===============================================================
``cluster a b c``   founding members of one group (each a ``RaftNode``, seed 0)
``tick a [n]``      tick node ``a`` once (or ``n`` times)
``propose a data``  ``a`` proposes the command ``data``
``read a ctx``      ``a`` asks for a linearizable read with context ``ctx``
``restart a [n]``   restart ``a`` from its term, vote and log, less its last ``n``
                    entries (synced data the disk lost)
``isolate a``       drop every message to or from ``a`` until ``heal``
``heal``            end every isolation
``deliver``         process every node's Readies and deliver their messages until
                    the group is quiet; prints each message and each read answered
``status``          each node's role, term, leader, commit and applied indexes
==================  ===============================================================

Set ``SHARDWISE_REWRITE_SCENARIOS=1`` to write the outputs the code produces into the
files (then read the diff: it is the change of behaviour).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from shardwise.raft import Membership, Message, RaftNode
from shardwise.storage.types import HardState, LogEntry, SnapshotMeta

SCENARIOS = Path(__file__).parent / "scenarios"
REWRITE = os.environ.get("SHARDWISE_REWRITE_SCENARIOS") == "1"
HIDDEN_FIELDS = frozenset({"term", "sender", "to"})


def describe_value(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    if isinstance(value, SnapshotMeta):
        return f"{value.index}@{value.term}"
    if isinstance(value, tuple) and all(isinstance(e, LogEntry) for e in value):
        return "[" + " ".join(f"{e.index}@{e.term}" for e in value) + "]"
    return str(value)


def describe(m: Message, dropped: bool) -> str:
    """One line: sender, receiver, tag, term, and the fields that differ from their
    defaults."""
    parts = [f"{m.sender}->{m.to}", str(type(m).__struct_config__.tag), f"term={m.term}"]
    for field in msgspec.structs.fields(m):
        value = getattr(m, field.name)
        if field.name in HIDDEN_FIELDS or value == field.default:
            continue
        parts.append(field.name if value is True else f"{field.name}={describe_value(value)}")
    return " ".join(parts) + (" (dropped)" if dropped else "")


class Group:
    def __init__(self, names: list[str]) -> None:
        membership = Membership(frozenset(names))
        self.nodes = {name: RaftNode(name, membership) for name in names}
        self.isolated: set[str] = set()

    def run(self, command: str, args: list[str]) -> list[str]:
        if command == "tick":
            for _ in range(int(args[1]) if len(args) > 1 else 1):
                self.nodes[args[0]].tick()
        elif command == "propose":
            self.nodes[args[0]].propose(args[1].encode())
        elif command == "read":
            self.nodes[args[0]].read_index(args[1].encode())
        elif command == "restart":
            self.restart(args[0], int(args[1]) if len(args) > 1 else 0)
        elif command == "isolate":
            self.isolated.add(args[0])
        elif command == "heal":
            self.isolated.clear()
        elif command == "deliver":
            return self.deliver()
        elif command == "status":
            return [
                f"{n.id} {n.role.value} term={n.term} leader={n.leader} "
                f"commit={n.log.committed} applied={n.log.applied}"
                for n in self.nodes.values()
            ]
        else:
            raise ValueError(f"unknown command {command!r}")
        return []

    def restart(self, name: str, lose: int) -> None:
        """A new incarnation of ``name`` on what its disk holds: the log (in memory here:
        persisting is a no-op) without its last ``lose`` entries."""
        old = self.nodes[name]
        entries = old.log.entries[: len(old.log.entries) - lose]
        commit = min(old.log.committed, entries[-1].index if entries else 0)
        self.nodes[name] = RaftNode(
            name,
            old.membership,
            hard_state=HardState(old.term, old.vote, commit),
            entries=entries,
        )

    def deliver(self) -> list[str]:
        """Readies are handled as a host would (the log stays in memory: persisting is
        a no-op); then every message goes out, in order, and the rounds repeat."""
        out: list[str] = []
        while True:
            messages: list[Message] = []
            for node in self.nodes.values():
                while node.has_ready():
                    ready = node.ready()
                    messages += [*ready.early_messages, *ready.messages]
                    out += [
                        f"{node.id} read {s.context.decode()} at {s.index}"
                        for s in ready.read_states
                    ]
                    out += [f"{node.id} read {c.decode()} dropped" for c in ready.dropped_reads]
                    node.advance(ready)
            if not messages:
                return out
            for m in messages:
                dropped = bool({m.sender, m.to} & self.isolated)
                out.append(describe(m, dropped))
                if not dropped:
                    self.nodes[m.to].step(m)


def run_scenario(text: str) -> str:
    """Run the steps of ``text``; return it with each step's output as the code gives it."""
    result: list[str] = []
    group: Group | None = None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            result.append(line)
        elif line.startswith("> "):
            command, *args = line[2:].split()
            result.append(line)
            if command == "cluster":
                group = Group(args)
            else:
                assert group is not None, "a scenario starts with `> cluster ...`"
                result += group.run(command, args)
        # other lines are expected output: replaced by what the step printed
    return "\n".join(result) + "\n"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    expected = path.read_text()
    actual = run_scenario(expected)
    if REWRITE:
        path.write_text(actual)
        return
    assert actual == expected, f"{path.name}: the steps' output changed; see the diff"


def test_a_wrong_expectation_fails() -> None:
    """The control: an output line that does not match what the step prints is caught."""
    text = "> cluster a b c\n> status\na leader term=9 leader=a commit=0 applied=0\n"
    assert run_scenario(text) != text
