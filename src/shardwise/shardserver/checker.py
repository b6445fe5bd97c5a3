"""The leader's side of the consistency check: log a ``CheckShards``, collect every
replica's digests at its index (``shard.digests``), compare, and say loudly what differs.

It runs every ``--check-interval`` seconds while this replica leads
(:data:`CHECK_INTERVAL_S` by default) and on demand (``shard.check``, which
``shardwise check`` calls); one check at a time (a request during a check waits for it).
A mismatch is logged at ERROR, counted (``mismatches_found``, exported as a metric) and
kept as the last outcome that ``shard.status`` reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from shardwise.errors import NetError, NotLeaderError, ReplicaHaltedError, ShardwiseError
from shardwise.model.config import ShardId
from shardwise.service import REQUEST_TIMEOUT_S, through_host
from shardwise.shardserver.checks import ShardChecks
from shardwise.shardserver.commands import CheckShards, decode_result, encode
from shardwise.shardserver.protocol import (
    DIGESTS,
    CheckOutcome,
    CheckReply,
    CheckRequest,
    DigestsReply,
    DigestsRequest,
    ReplicaDigests,
    ShardDigest,
    ShardMismatch,
    server_address,
)

if TYPE_CHECKING:
    from shardwise.net.endpoint import Endpoint
    from shardwise.net.rpc import CallContext
    from shardwise.raft.host import RaftHost
    from shardwise.raft.hosting.options import HostStatus
    from shardwise.shardserver.statemachine import ShardGroupStateMachine

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S: Final = 600.0
"""How often a leader checks its group (``--check-interval``): each check copies up to
``MAX_CHECK_BYTES`` per replica, so every ten minutes costs little, and a divergence is
found within minutes of its cause rather than never."""

COLLECT_TIMEOUT_S: Final = 30.0
"""How long the leader waits for every replica's digests (a follower applies the entry
a moment after the leader, then hashes up to ``MAX_CHECK_BYTES``)."""

DIGESTS_CALL_TIMEOUT_S: Final = 2.0
COLLECT_POLL_S: Final = 0.1

HALT_WATCH_S: Final = 0.5
"""How often a server looks whether its replica halted, to say so on its standard output
(``HALTED <id> <reason>``) for ``shardwise up``'s supervisor."""


class Checker:
    """Runs the group's consistency checks while this replica leads."""

    def __init__(
        self,
        gid: int,
        node_id: str,
        host: RaftHost[ShardGroupStateMachine],
        *,
        transport: Endpoint,
        checks: ShardChecks,
        replicas: Callable[[], Sequence[str]],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"the check interval is positive, not {interval_s}")
        self.gid = gid
        self.node_id = node_id
        self.host = host
        self.transport = transport
        self.checks = checks
        self.replicas = replicas
        """The group's servers (node ids) to collect from, this one included."""
        self.interval_s = interval_s
        self.last: CheckOutcome | None = None
        self.checks_run = 0
        self.mismatches_found = 0
        self._running: asyncio.Task[CheckOutcome] | None = None
        self._known: set[str] = set()

    # --- the RPCs --------------------------------------------------------------------

    async def serve_check(self, request: CheckRequest, context: CallContext) -> CheckReply:
        """``shard.check``: for cluster nodes and holders of the cluster secret only (a
        check copies every shard: not for every user)."""
        if context.user is not None:
            return CheckReply("forbidden")
        outcome = await through_host(self.host, self.run_once())
        return CheckReply(outcome.status, outcome.leader, outcome.value)

    async def serve_digests(self, request: DigestsRequest, context: CallContext) -> DigestsReply:
        if context.user is not None:
            return DigestsReply("forbidden")
        return digests_reply(self.checks, request.index, self.host.status())

    async def watch_halt(self) -> None:
        """Print ``HALTED <node id> <reason>`` once, when the replica halts."""
        while True:
            status = self.host.status()
            if status.halted:
                reason = " ".join(status.halt_reason.split()) or "unknown"
                print(f"HALTED {self.node_id} {reason}", flush=True)
                return
            await asyncio.sleep(HALT_WATCH_S)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            status = self.host.status()
            if status.leader != self.node_id or status.halted:
                continue
            try:
                await self.run_once()
            except (NotLeaderError, ReplicaHaltedError):
                continue
            except ShardwiseError as exc:
                logger.warning("group %d: the periodic consistency check failed: %s", self.gid, exc)

    async def run_once(self) -> CheckOutcome:
        """Check the group now (or join the check under way). Raises ``NotLeaderError``
        and the host's other errors when the entry cannot be logged."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run(), name="consistency-check")
        return await asyncio.shield(self._running)

    async def _run(self) -> CheckOutcome:
        value = await self.host.propose(encode(CheckShards()), REQUEST_TIMEOUT_S)
        index = decode_result(value).index
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COLLECT_TIMEOUT_S
        replicas = sorted(set(self.replicas()) | {self.node_id})
        found = await asyncio.gather(*(self._collect(r, index, deadline) for r in replicas))
        outcome = compare(self.gid, index, found)
        self.last = outcome
        self.checks_run += 1
        self.mismatches_found += len(outcome.mismatches)
        for m in outcome.mismatches:
            held = ", ".join(f"{node} has {digest[:12]}" for node, digest in m.digests.items())
            logger.error(
                "group %d: REPLICAS DIFFER on shard %s at index %d: %s (differing: %s)",
                self.gid,
                m.shard,
                index,
                held,
                ", ".join(m.differ),
            )
        if not outcome.mismatches:
            logger.info(
                "group %d: consistency check at index %d: %d shards agree on %d replicas",
                self.gid,
                index,
                outcome.shards,
                sum(1 for r in outcome.replicas if r.state == "ok"),
            )
        return outcome

    async def _collect(self, node: str, index: int, deadline: float) -> ReplicaDigests:
        loop = asyncio.get_running_loop()
        reply: DigestsReply | None = None
        while True:
            reply = await self._ask(node, index)
            if reply is not None and (reply.status != "ok" or not reply.pending):
                break
            if reply is None and node == self.node_id:
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(COLLECT_POLL_S)
        if reply is None:
            return ReplicaDigests(node, "unreachable")
        if reply.status == "halted":
            return ReplicaDigests(node, "halted", error=reply.error)
        if reply.status != "ok":
            return ReplicaDigests(node, "missing", error=reply.error)
        if reply.pending:
            return ReplicaDigests(node, "pending", reply.digests, reply.skipped, reply.error)
        return ReplicaDigests(node, "ok", reply.digests, reply.skipped, reply.error)

    async def _ask(self, node: str, index: int) -> DigestsReply | None:
        if node == self.node_id:
            return digests_reply(self.checks, index, self.host.status())
        if node not in self._known:
            self.transport.set_peer(node, server_address(node))
            self._known.add(node)
        try:
            return await self.transport.call(
                node, DIGESTS, DigestsRequest(index), timeout_s=DIGESTS_CALL_TIMEOUT_S
            )
        except (NetError, TimeoutError):
            return None


def digests_reply(checks: ShardChecks, index: int, status: HostStatus) -> DigestsReply:
    """What this replica answers for the check at ``index``."""
    if status.halted:
        return DigestsReply("halted", error=status.halt_reason)
    check = checks.result(index)
    if check is None and status.applied < index:
        return DigestsReply("ok", pending=1)  # not applied here yet: ask again
    if check is None:
        return DigestsReply("missing", error=f"no check at index {index} here")
    digests = [ShardDigest(s, d) for s, d in sorted(check.digests.items())]
    return DigestsReply("ok", check.pending, digests, sorted(check.skipped), check.error)


ABSENT: Final = "absent"


def compare(gid: int, index: int, replicas: Sequence[ReplicaDigests]) -> CheckOutcome:
    """Compare the digests of the replicas that gave all of theirs, shard by shard."""
    complete = [r for r in replicas if r.state == "ok"]
    by_shard: dict[ShardId, dict[str, str]] = {}
    for r in complete:
        for d in r.digests:
            by_shard.setdefault(d.shard, {})[r.node_id] = d.digest
    mismatches: list[ShardMismatch] = []
    compared = 0
    for shard, held in sorted(by_shard.items()):
        for r in complete:
            # A shard one replica serves and another does not is a divergence too,
            # unless the other skipped it (its budget) or could not hash it (its error).
            if r.node_id not in held and shard not in r.skipped and not r.error:
                held[r.node_id] = ABSENT
        if len(held) < 2:
            continue
        compared += 1
        counts = Counter(held.values())
        if len(counts) == 1:
            continue
        top = counts.most_common()
        tie = top[0][1] == top[1][1]
        differ = sorted(n for n, d in held.items() if tie or d != top[0][0])
        mismatches.append(ShardMismatch(shard, dict(sorted(held.items())), differ))
    return CheckOutcome(gid, index, time.time(), compared, list(replicas), mismatches)
