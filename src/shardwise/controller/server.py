"""The shard controller as a process: one replica of the controller's Raft group.

    python -m shardwise.controller --id c1 --listen 127.0.0.1:7100 \\
        --peer c2=127.0.0.1:7101 --peer c3=127.0.0.1:7102 --data ./data/c1 --secret-file F

Changes go through the log; queries are linearizable reads (ReadIndex), and a query can
*watch*: wait until a configuration newer than a given number exists, so replica groups
learn of a change as soon as it commits instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from shardwise.controller.protocol import (
    CHANGE,
    CONTROLLER_GROUP,
    MAX_WATCH_S,
    QUERY,
    STATUS,
    ChangeReply,
    ChangeRequest,
    QueryReply,
    QueryRequest,
    StatusReply,
    StatusRequest,
)
from shardwise.controller.statemachine import (
    ControllerStateMachine,
    decode_result,
    encode_command,
)
from shardwise.errors import ControllerError
from shardwise.model.config import Configuration
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import CallContext
from shardwise.service import (
    REQUEST_TIMEOUT_S,
    ReplicaConfig,
    ReplicaService,
    parse_replica_args,
    replica_status_fields,
    run_main,
    through_host,
)
from shardwise.storage.interface import RaftStorage


class ControllerServer(ReplicaService[ControllerStateMachine]):
    def __init__(
        self,
        config: ReplicaConfig,
        *,
        transport: Endpoint | None = None,
        storage: RaftStorage | None = None,
    ) -> None:
        super().__init__(
            config,
            ControllerStateMachine(),
            CONTROLLER_GROUP,
            transport=transport,
            storage=storage,
            group_name="the controller",
        )
        self._changed = asyncio.Event()
        self.state_machine.listeners.append(self._on_new_configuration)
        self.transport.serve(CHANGE, self._change)
        self.transport.serve(QUERY, self._query)
        self.transport.serve(STATUS, self._status)

    def _on_new_configuration(self, config: Configuration) -> None:
        self._changed.set()

    async def _change(self, request: ChangeRequest, context: CallContext) -> ChangeReply:
        command = encode_command(request.op, client_id=request.client_id, seq=request.seq)
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return ChangeReply(outcome.status, leader=outcome.leader)
        return ChangeReply("ok", result=decode_result(outcome.value))

    async def _query(self, request: QueryRequest, context: CallContext) -> QueryReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.wait_s, 0.0), MAX_WATCH_S)
        while True:
            self._changed.clear()
            read = self.host.read(lambda sm: sm.query(request.num), timeout_s=REQUEST_TIMEOUT_S)
            try:
                outcome = await through_host(self.host, read)
            except ControllerError as exc:
                return QueryReply("ok", error=exc.code, message=str(exc))
            config = outcome.value
            if config is None:
                return QueryReply(outcome.status, leader=outcome.leader)
            remaining = deadline - loop.time()
            if config.num > request.newer_than or remaining <= 0 or request.num != -1:
                return QueryReply("ok", config=config)
            # A watch: wait for the next configuration to apply here, then read again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _status(self, request: StatusRequest, context: CallContext) -> StatusReply:
        return StatusReply(
            **replica_status_fields(self.host.status()),
            config_num=self.state_machine.latest().num,
        )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_replica_args("python -m shardwise.controller", __doc__ or "", argv)
    return run_main(ControllerServer, config)
