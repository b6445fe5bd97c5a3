"""The shard controller as a process: one replica of the controller's Raft group.

    python -m shardwise.controller --id c1 --listen 127.0.0.1:7100 \\
        --peer c2=127.0.0.1:7101 --peer c3=127.0.0.1:7102 --data ./data/c1 --secret-file F

Changes go through the log; queries are linearizable reads (ReadIndex), and a query can
*watch*: wait until a configuration newer than a given number exists, so replica groups
learn of a change as soon as it commits instead of polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shardwise.controller.access import change_denied
from shardwise.controller.protocol import (
    ACCESS,
    CHANGE,
    CONTROLLER_GROUP,
    MAX_WATCH_S,
    QUERY,
    STATUS,
    AccessReply,
    AccessRequest,
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
from shardwise.errors import ControllerError, PermissionDeniedError
from shardwise.model.access import AccessCatalog
from shardwise.model.config import ChangeResult, Configuration
from shardwise.model.scram import ScramVerifier
from shardwise.net.endpoint import Endpoint
from shardwise.net.rpc import CallContext
from shardwise.net.wire import PeerRole
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
        self._access_changed = asyncio.Event()
        self.state_machine.listeners.append(self._on_new_configuration)
        self.state_machine.access_listeners.append(lambda _: self._access_changed.set())
        self.transport.serve(CHANGE, self._change)
        self.transport.serve(QUERY, self._query)
        self.transport.serve(STATUS, self._status)
        self.transport.serve(ACCESS, self._access)
        set_user_lookup = getattr(self.transport, "set_user_lookup", None)
        if set_user_lookup is not None:  # a real transport: clients may log in as users
            set_user_lookup(self.find_user)

    def find_user(self, name: str) -> ScramVerifier | None:
        """A user's verifier as this replica knows it: how its transport checks logins."""
        user = self.state_machine.access().user(name)
        return user.verifier if user is not None else None

    def _on_new_configuration(self, config: Configuration) -> None:
        self._changed.set()

    async def _change(self, request: ChangeRequest, context: CallContext) -> ChangeReply:
        machine = self.state_machine
        denied = change_denied(machine.access(), context.user, request.op, machine.latest())
        if denied:
            code = PermissionDeniedError.code
            return ChangeReply(
                "ok", result=ChangeResult(machine.latest().num, error=code, message=denied)
            )
        command = encode_command(request.op, client_id=request.client_id, seq=request.seq)
        outcome = await through_host(self.host, self.host.propose(command, REQUEST_TIMEOUT_S))
        if outcome.value is None:
            return ChangeReply(outcome.status, leader=outcome.leader)
        return ChangeReply("ok", result=decode_result(outcome.value))

    async def _query(self, request: QueryRequest, context: CallContext) -> QueryReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.wait_s, 0.0), MAX_WATCH_S)
        timed_out = False
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
            if config.num > request.newer_than or remaining <= 0 or timed_out or request.num != -1:
                return QueryReply("ok", config=config)
            # A watch: wait for the next configuration to apply here, then read again.
            timed_out = not await _changed_within(self._changed, remaining)

    async def _access(self, request: AccessRequest, context: CallContext) -> AccessReply:
        user = context.user
        if user is not None and not self.state_machine.access().allows_cluster_admin(user):
            return AccessReply(
                "ok",
                error=PermissionDeniedError.code,
                message=f"user {user!r} may not list users: it needs cluster admin",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.wait_s, 0.0), MAX_WATCH_S)
        timed_out = False
        while True:
            self._access_changed.clear()
            read = self.host.read(lambda sm: sm.access(), timeout_s=REQUEST_TIMEOUT_S)
            outcome = await through_host(self.host, read)
            catalog: AccessCatalog | None = outcome.value
            if catalog is None:
                return AccessReply(outcome.status, leader=outcome.leader)
            if catalog.version > request.newer_than or deadline - loop.time() <= 0 or timed_out:
                whole = user is None and context.peer_role is PeerRole.NODE
                return AccessReply("ok", catalog=catalog if whole else catalog.redacted())
            timed_out = not await _changed_within(self._access_changed, deadline - loop.time())

    async def _status(self, request: StatusRequest, context: CallContext) -> StatusReply:
        return StatusReply(
            **replica_status_fields(self.host.status()),
            config_num=self.state_machine.latest().num,
        )


async def _changed_within(changed: asyncio.Event, timeout_s: float) -> bool:
    """Whether ``changed`` is set within ``timeout_s``. A watch that timed out reads once
    more and answers: it must not loop on the clock alone, which may not have moved
    (a timer within the loop's clock resolution runs at once, and a read from the
    leader's lease takes no time at all)."""
    try:
        await asyncio.wait_for(changed.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_replica_args("python -m shardwise.controller", __doc__ or "", argv)
    return run_main(ControllerServer, config)
