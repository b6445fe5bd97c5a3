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
from shardwise.service import (
    REQUEST_TIMEOUT_S,
    ReplicaConfig,
    ReplicaService,
    parse_replica_args,
    replica_status_fields,
    run_main,
    through_host,
)

GROUP: Final = 1
"""The Raft group id on the wire: a lone KV group is group 1."""


class KVGroupServer(ReplicaService[KVStateMachine]):
    def __init__(self, config: ReplicaConfig) -> None:
        super().__init__(config, KVStateMachine(), GROUP)
        self.transport.serve(WRITE, self._write)
        self.transport.serve(READ, self._read)
        self.transport.serve(STATUS, self._status)

    async def _write(self, request: WriteRequest, context: CallContext) -> Reply:
        command = encode_command(request.op, client_id=request.client_id, seq=request.seq)
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return Reply(outcome.status, leader=outcome.leader)
        return Reply("ok", result=decode_result(outcome.value))

    async def _read(self, request: ReadRequest, context: CallContext) -> Reply:
        key = request.key
        read = self.host.read(lambda sm: sm.get(key), timeout_s=REQUEST_TIMEOUT_S)
        outcome = await through_host(self.host, read)
        return Reply(outcome.status, leader=outcome.leader, value=outcome.value)

    async def _status(self, request: StatusRequest, context: CallContext) -> StatusReply:
        return StatusReply(**replica_status_fields(self.host.status()))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_replica_args("python -m shardwise.kvgroup", __doc__ or "", argv)
    return run_main(KVGroupServer, config)
