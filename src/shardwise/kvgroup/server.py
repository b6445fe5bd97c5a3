"""One server of a Raft-replicated KV group, as a process: real clock, TCP, disk.

    python -m shardwise.kvgroup --id n1 --listen 127.0.0.1:7001 \\
        --peer n2=127.0.0.1:7002 --peer n3=127.0.0.1:7003 \\
        --data ./data/n1 --secret-file ./secret

It prints ``READY <id> <host>:<port>`` once it listens; SIGTERM or SIGINT stops it
cleanly. See :mod:`shardwise.service` for what every server process shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shardwise.errors import (
    NotLeaderError,
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftTimeoutError,
    ReplicaHaltedError,
    ReplicaStoppedError,
)
from shardwise.kvgroup.protocol import (
    READ,
    STATUS,
    WRITE,
    ReadRequest,
    Reply,
    StatusReply,
    StatusRequest,
    WriteRequest,
)
from shardwise.net.rpc import CallContext
from shardwise.raft.kv import KVStateMachine, decode_result, encode_command
from shardwise.service import ReplicaConfig, ReplicaService, parse_replica_args, run_main

GROUP: Final = 1
"""The Raft group id on the wire: a lone KV group is group 1."""

REQUEST_TIMEOUT_S: Final = 5.0
"""How long a write or read may wait inside the server before answering ``retry``."""

RETRYABLE: Final = (
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftTimeoutError,
    ReplicaStoppedError,
)


class KVGroupServer(ReplicaService[KVStateMachine]):
    def __init__(self, config: ReplicaConfig) -> None:
        super().__init__(config, KVStateMachine(), GROUP)
        self.transport.serve(WRITE, self._write)
        self.transport.serve(READ, self._read)
        self.transport.serve(STATUS, self._status)

    async def _write(self, request: WriteRequest, context: CallContext) -> Reply:
        command = encode_command(request.op, client_id=request.client_id, seq=request.seq)
        try:
            result = await self.host.propose(command, timeout_s=REQUEST_TIMEOUT_S)
        except NotLeaderError as exc:
            return Reply("not_leader", leader=exc.leader)
        except ReplicaHaltedError:
            return Reply("halted")
        except RETRYABLE:
            return Reply("retry", leader=self.host.status().leader)
        return Reply("ok", result=decode_result(result))

    async def _read(self, request: ReadRequest, context: CallContext) -> Reply:
        key = request.key
        try:
            value = await self.host.read(lambda sm: sm.get(key), timeout_s=REQUEST_TIMEOUT_S)
        except NotLeaderError as exc:
            return Reply("not_leader", leader=exc.leader)
        except ReplicaHaltedError:
            return Reply("halted")
        except RETRYABLE:
            return Reply("retry", leader=self.host.status().leader)
        return Reply("ok", value=value)

    async def _status(self, request: StatusRequest, context: CallContext) -> StatusReply:
        s = self.host.status()
        return StatusReply(s.node_id, s.role.value, s.term, s.leader, s.commit, s.applied, s.halted)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_replica_args("python -m shardwise.kvgroup", __doc__ or "", argv)
    return run_main(KVGroupServer, config)
