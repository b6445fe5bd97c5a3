"""A replicated service in one process: Raft host, disk, TCP transport, state machine.

Every shardwise server process (a KV group, the shard controller) is one of these with its
own state machine and RPC handlers. It owns the wiring that must be the same everywhere:
the data directory, the authenticated transport, the Raft host bound to its group id, a
``READY <id> <host>:<port>`` line once it listens (so supervisors and tests know), and a
clean stop on SIGTERM or SIGINT. The secret comes from a file or ``SHARDWISE_SECRET``,
never from the command line, where every user of the machine could read it. With
``--tls-cert``/``--tls-key``/``--tls-ca`` the transport runs TLS both ways and a peer must
present the node certificate of the id it claims (``net/tls.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from shardwise.errors import (
    NotLeaderError,
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftTimeoutError,
    ReplicaHaltedError,
    ReplicaStoppedError,
    ShardwiseError,
)
from shardwise.model.replies import Status
from shardwise.net.endpoint import Endpoint
from shardwise.net.links import Address
from shardwise.net.loop import run
from shardwise.net.tls import TlsFiles
from shardwise.net.transport import Transport
from shardwise.raft.host import HostOptions, HostStatus, RaftHost
from shardwise.raft.messages import Membership
from shardwise.raft.ready import RaftConfig
from shardwise.raft.statemachine import StateMachine
from shardwise.raft.worker import WorkerThread
from shardwise.storage.file import FileStorage
from shardwise.storage.interface import RaftStorage
from shardwise.storage.space import DiskFullError

logger = logging.getLogger(__name__)

DEFAULT_TICK_MS: Final = 50
"""50 ms ticks: heartbeats every 50 ms, elections after 0.5-1 s without a leader."""

DEFAULT_SNAPSHOT_EVERY: Final = 10_000
MAX_SECRET_FILE_BYTES: Final = 4096
FOLLOWER_APPLY_BATCH: Final = 256
"""Committed entries a follower may hold back to apply together (see ``HostOptions``)."""

S = TypeVar("S", bound=StateMachine)
T = TypeVar("T")


@dataclass(frozen=True)
class ReplicaConfig:
    node_id: str
    listen: Address
    peers: dict[str, Address]
    data_dir: Path
    secret: bytes
    tick_ms: int = DEFAULT_TICK_MS
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    metrics: Address | None = None
    """Where to serve Prometheus metrics over HTTP (``None``: not at all)."""
    tls: TlsFiles | None = None
    """This server's node certificate and key and the cluster CA: TLS on its listener and
    its outbound connections, and peers must prove their node id (``net/tls.py``).
    ``None``: plain TCP, where holding the secret is enough to act as any node."""


REQUEST_TIMEOUT_S: Final = 5.0
"""How long a request may wait inside a server before it answers ``retry``."""

RETRYABLE: Final = (
    ProposalDroppedError,
    ProposalOutcomeUnknownError,
    RaftTimeoutError,
    ReplicaStoppedError,
)
"""Host errors after which the client should try again (a write with the same sequence
number, which the de-duplication table makes safe)."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a request to the Raft host came to, in the terms of a service reply."""

    status: Status
    leader: str | None = None
    value: T | None = None


async def through_host(host: RaftHost[Any], work: Awaitable[T]) -> Outcome[T]:
    """Await a host operation and turn the host's errors into a reply status."""
    try:
        value = await work
    except NotLeaderError as exc:
        return Outcome("not_leader", exc.leader)
    except ReplicaHaltedError:
        return Outcome("halted")
    except DiskFullError:
        return Outcome("disk_full")
    except RETRYABLE:
        return Outcome("retry", host.status().leader)
    return Outcome("ok", value=value)


class ReplicaService(Generic[S]):
    """Storage, transport and a Raft host around ``state_machine``, for group ``group``."""

    def __init__(
        self,
        config: ReplicaConfig,
        state_machine: S,
        group: int,
        *,
        transport: Endpoint | None = None,
        storage: RaftStorage | None = None,
        group_name: str | None = None,
    ) -> None:
        """``transport`` and ``storage`` default to the real ones (TCP, files under
        ``data_dir``); simulations pass in-memory ones with the same interfaces.
        ``group_name`` is what the logs call the group (default ``group N``)."""
        self.config = config
        self.group = group
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage if storage is not None else FileStorage(config.data_dir / "raft")
        self.transport: Endpoint = (
            transport
            if transport is not None
            else Transport(
                config.node_id,
                config.secret,
                peers=config.peers,
                listen=config.listen,
                server_ssl=config.tls.server_context() if config.tls else None,
                client_ssl=config.tls.client_context() if config.tls else None,
            )
        )
        self.state_machine = state_machine
        # Real storage fsyncs on a thread of its own (cheaper than asyncio.to_thread);
        # storage passed in (a simulation's) keeps the host's default, which a virtual-
        # time loop runs inline.
        self._worker = WorkerThread(f"storage-{config.node_id}") if storage is None else None
        self.host: RaftHost[S] = RaftHost(
            config.node_id,
            Membership(frozenset({config.node_id, *config.peers})),
            self.storage,
            state_machine,
            self.transport.raft_sender(group),
            config=RaftConfig(lease_reads=True),
            options=HostOptions(
                tick_interval_s=config.tick_ms / 1000,
                snapshot_every=config.snapshot_every,
                sync_in_loop_unless_leading=True,
                follower_apply_batch=FOLLOWER_APPLY_BATCH,
            ),
            run_blocking=asyncio.to_thread if self._worker is None else self._worker,
            group_name=group_name or f"group {group}",
        )
        self.transport.on_raft(group, self.host.deliver)

    async def start(self) -> None:
        await self.transport.start()
        await self.host.start()

    async def stop(self) -> None:
        await self.host.stop()
        if self._worker is not None:
            self._worker.close()
        await self.transport.close()


def parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def read_secret(path: str | None) -> bytes:
    if path:
        data = Path(path).read_bytes()[: MAX_SECRET_FILE_BYTES + 1]
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise SystemExit(f"secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        return data.strip()
    env = os.environ.get("SHARDWISE_SECRET")
    if not env:
        raise SystemExit("no secret: pass --secret-file or set SHARDWISE_SECRET")
    return env.encode()


def replica_arg_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every server process takes; a service adds its own to the parser."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--id", required=True, help="this server's node id")
    parser.add_argument("--listen", required=True, type=parse_address, help="HOST:PORT")
    parser.add_argument(
        "--peer", action="append", default=[], metavar="ID=HOST:PORT", help="another replica"
    )
    parser.add_argument("--data", required=True, type=Path, help="data directory")
    parser.add_argument("--secret-file", help="file holding the cluster's shared secret")
    parser.add_argument("--tick-ms", type=int, default=DEFAULT_TICK_MS)
    parser.add_argument("--snapshot-every", type=int, default=DEFAULT_SNAPSHOT_EVERY)
    parser.add_argument(
        "--metrics", type=parse_address, help="HOST:PORT to serve Prometheus metrics on"
    )
    tls = parser.add_argument_group(
        "TLS", "all three, or none (plain TCP); `shardwise cert` makes them"
    )
    tls.add_argument("--tls-cert", type=Path, help="this server's node certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="the cluster CA's certificate (PEM)")
    return parser


def tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TlsFiles | None:
    """The ``--tls-*`` options: all three (each an existing file) or none."""
    given = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        parser.error(f"TLS needs --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}")
    for flag, value in given.items():
        if not value.is_file():
            parser.error(f"{flag} {value}: no such file")
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


def parse_peers(
    parser: argparse.ArgumentParser, specs: Sequence[str], flag: str
) -> dict[str, Address]:
    """``ID=HOST:PORT`` options into a mapping (a usage error otherwise)."""
    peers: dict[str, Address] = {}
    for spec in specs:
        node, sep, address = spec.partition("=")
        if not sep or not node:
            parser.error(f"{flag} takes ID=HOST:PORT, got {spec!r}")
        try:
            peers[node] = parse_address(address)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{flag} {spec!r}: {exc}")
    return peers


def replica_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ReplicaConfig:
    return ReplicaConfig(
        node_id=args.id,
        listen=args.listen,
        peers=parse_peers(parser, args.peer, "--peer"),
        data_dir=args.data,
        secret=read_secret(args.secret_file),
        tick_ms=args.tick_ms,
        snapshot_every=args.snapshot_every,
        metrics=args.metrics,
        tls=tls_files(parser, args),
    )


def parse_replica_args(prog: str, description: str, argv: Sequence[str] | None) -> ReplicaConfig:
    parser = replica_arg_parser(prog, description)
    return replica_config(parser, parser.parse_args(argv))


async def serve_until_signalled(
    build: Callable[[ReplicaConfig], ReplicaService[S]], config: ReplicaConfig
) -> None:
    service = build(config)  # inside the loop: the transport and host belong to it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def stop_on(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_on, sig)
    await service.start()
    exporter = None
    try:
        if config.metrics is not None:
            from shardwise.metrics import start_metrics  # noqa: PLC0415 - only when asked for

            exporter = start_metrics(service, config.metrics)
        host, port = service.transport.address
        print(f"READY {service.config.node_id} {host}:{port}", flush=True)
        await stop.wait()
        logger.info("%s: stopping (%s)", config.node_id, received[0])
    finally:
        if exporter is not None:
            exporter.stop()
        await service.stop()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (time, level, logger, node, message, exception), so a
    process's log file can be filtered and joined with others by machine."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "node": self.node_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(node_id: str) -> None:
    """Logs to stderr at ``SHARDWISE_LOG`` (default WARNING), as JSON lines when
    ``SHARDWISE_LOG_FORMAT=json`` (what `shardwise up` asks of its processes), else as
    plain text."""
    handler = logging.StreamHandler()
    if os.environ.get("SHARDWISE_LOG_FORMAT") == "json":
        handler.setFormatter(JsonLogFormatter(node_id))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("SHARDWISE_LOG", "WARNING"), handlers=[handler])


def run_main(build: Callable[[ReplicaConfig], ReplicaService[S]], config: ReplicaConfig) -> int:
    configure_logging(config.node_id)
    try:
        run(serve_until_signalled(build, config))  # on uvloop when it is installed
    except ShardwiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def replica_status_fields(status: HostStatus) -> dict[str, Any]:
    """The :class:`ReplicaStatus` fields of a host's status, as keyword arguments."""
    return {
        "node_id": status.node_id,
        "role": status.role.value,
        "term": status.term,
        "leader": status.leader,
        "commit": status.commit,
        "applied": status.applied,
        "halted": status.halted,
    }
