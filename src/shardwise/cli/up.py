"""``shardwise up``: a whole cluster on this machine, in the foreground, until Ctrl-C.

First start in a directory: write ``cluster.toml`` (from the flags) and a fresh secret,
start every process, join the groups marked ``join``. Later starts: the same description,
secret and data; nothing is joined again (the controller remembers its configurations).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from rich.console import Console

from shardwise.cli.admin import Admin, wait_for_controller, wait_until_settled
from shardwise.cli.render import MoveProgress, connect_hints, processes_table, status_view
from shardwise.cli.supervisor import (
    RUN_FILE,
    ClusterLock,
    Supervisor,
    describe_exit,
    running_elsewhere,
)
from shardwise.clusterfile import (
    DEFAULT_BASE_PORT,
    DEFAULT_CLUSTER_DIR,
    DESCRIPTION_FILE,
    ClusterLayout,
    cluster_dir,
    ensure_secret,
    load_layout,
    local_layout,
    read_secret,
    secret_is_private,
)
from shardwise.errors import ClusterInUseError
from shardwise.net.loop import run
from shardwise.service import DEFAULT_TICK_MS

CONTROLLER_READY_TIMEOUT_S: Final = 60.0
BOOTSTRAP_TIMEOUT_S: Final = 120.0
SETTLE_TIMEOUT_S: Final = 30.0
"""How long to wait for every group to elect a leader (and finish any move) before the
first status table is printed anyway."""
UP_MARKER: Final = "shardwise is up"
"""The line ``shardwise up`` prints once the cluster serves (scripts and tests wait for it)."""


@dataclass(frozen=True)
class UpOptions:
    cluster_dir: str | None = None
    config: str | None = None
    controllers: int = 3
    groups: int = 3
    replicas: int = 3
    spare_groups: int = 0
    base_port: int = DEFAULT_BASE_PORT
    tick_ms: int = DEFAULT_TICK_MS
    metrics: bool = True
    restart: bool = True
    tls: bool = False
    """A new cluster runs TLS: a CA and a node certificate per process under
    ``tls/`` (an existing cluster keeps what its description says)."""
    given: frozenset[str] = frozenset()
    """The sizing flags given on the command line (they only shape a new cluster, so an
    existing one is compared with them)."""


def sizing_differences(options: UpOptions, layout: ClusterLayout) -> list[str]:
    """The sizing flags given that do not match the cluster ``layout`` describes, as
    ``--flag VALUE (the cluster has X)``."""
    spare = sum(1 for g in layout.groups.values() if not g.join)
    sizes = {len(g.servers) for g in layout.groups.values()}
    ports = [p.listen[1] for p in layout.controllers]
    has: dict[str, object] = {
        "controllers": len(layout.controllers),
        "groups": len(layout.groups) - spare,
        "spare_groups": spare,
        "replicas": sizes.pop() if len(sizes) == 1 else "groups of different sizes",
        "tick_ms": layout.tick_ms,
        "base_port": ports[0] if ports else None,
    }
    differences = []
    for name in sorted(options.given & has.keys()):
        wanted = getattr(options, name)
        if name == "base_port" and wanted == 0:
            continue  # "any free ports": whatever the cluster has
        if wanted != has[name]:
            differences.append(f"--{name.replace('_', '-')} {wanted} (the cluster has {has[name]})")
    return differences


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) all stop the cluster as Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # leaves it ignored; `kill -INT` must still stop the cluster.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _layout(options: UpOptions, root: Path, console: Console) -> tuple[ClusterLayout, bool]:
    """The cluster's description and whether it is new."""
    if options.config:
        return load_layout(Path(options.config)), False
    path = root / DESCRIPTION_FILE
    if path.exists():
        layout = load_layout(path)
        differences = sizing_differences(options, layout)
        if options.tls and layout.tls is None:
            differences.append("--tls (the cluster runs plain TCP)")
        if differences:
            console.print(
                f"[yellow]note:[/] {path} exists, so the cluster keeps its layout: "
                f"{'; '.join(differences)}. The sizing flags only shape a new cluster "
                "(`shardwise down --purge` deletes this one to start afresh).",
                soft_wrap=True,
            )
        return layout, False
    layout = local_layout(
        root,
        controllers=options.controllers,
        groups=options.groups,
        replicas=options.replicas,
        spare_groups=options.spare_groups,
        base_port=options.base_port,
        tick_ms=options.tick_ms,
        metrics=options.metrics,
        tls=options.tls,
    )
    layout.write()
    return layout, True


def run_up(options: UpOptions, console: Console) -> None:
    root = (
        Path(options.config).resolve().parent
        if options.config
        else cluster_dir(options.cluster_dir)
    )
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = ClusterLock(root)
    lock.acquire()
    try:
        layout, new = _layout(options, root, console)
        elsewhere = running_elsewhere(layout)
        if elsewhere:
            raise ClusterInUseError(
                f"the cluster in {layout.root} is in use: {', '.join(elsewhere)} already "
                "run on its data, started by something else than `shardwise up` (`shardwise "
                "node`, a service manager). Stop them there first, or start another cluster "
                "with --cluster-dir DIR."
            )
        if ensure_secret(layout.secret_file):
            console.print(f"A new secret for this cluster: {layout.secret_file} (mode 0600)")
        elif not secret_is_private(layout.secret_file):
            console.print(
                f"[yellow]warning:[/] {layout.secret_file} is readable by other users "
                f"(chmod 600 {layout.secret_file})"
            )
        secret = read_secret(layout.secret_file)
        made = layout.ensure_certificates()
        if made and layout.tls is not None:
            console.print(
                f"TLS: node certificates for {len(made)} processes under "
                f"{layout.tls.cert_dir} (CA {layout.tls.ca_file})",
                highlight=False,
            )
        verb = "Starting a new cluster" if new else "Starting the cluster again (data kept)"
        console.print(f"{verb} in {layout.root}: {len(layout.processes)} processes")

        def say(message: str) -> None:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)

        supervisor = Supervisor(layout, lock, say, restart=options.restart)
        with _signals_interrupt():
            try:
                took = supervisor.start_all()
                console.print(f"Every process listens ({took:.1f} s).")
                no_control = supervisor.open_control()
                if no_control:
                    console.print(
                        f"[yellow]note:[/] {no_control}: `shardwise stop/start/restart/down` "
                        "cannot reach this cluster (Ctrl-C still stops it)."
                    )
                console.print(processes_table(layout, supervisor.pids()))
                run(_bootstrap(layout, secret, console, supervisor.pids()))
                default = root == cluster_dir(None) and root.name == DEFAULT_CLUSTER_DIR
                console.print(connect_hints(layout, default))
                console.print(
                    f"Logs: {layout.log_dir}   pids: {layout.root / RUN_FILE}", highlight=False
                )
                # A plain line, never wrapped, that scripts can wait for.
                print(f"{UP_MARKER}: {layout.root}. Ctrl-C stops every process.", flush=True)
                supervisor.supervise()
            except KeyboardInterrupt:
                console.print("\nStopping every process...")
            finally:
                codes = supervisor.stop_all()
                unclean = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
                if unclean:
                    exits = ", ".join(f"{n} {describe_exit(c)}" for n, c in unclean.items())
                    console.print(f"[yellow]stopped; some exits were not clean:[/] {exits}")
                else:
                    console.print(f"Stopped {len(codes)} processes.")
    finally:
        lock.release()


async def _bootstrap(
    layout: ClusterLayout, secret: bytes, console: Console, pids: dict[str, int]
) -> None:
    """Join the groups marked ``join`` on the cluster's first start, then show its state."""
    async with Admin(layout, secret) as admin:
        config = await wait_for_controller(admin, CONTROLLER_READY_TIMEOUT_S)
        to_join = {g.gid: g.node_ids for g in layout.groups.values() if g.join}
        # Configuration 0 means nobody ever changed this controller: a first start. Later
        # starts leave membership alone (an operator may have made groups leave since).
        if config.num == 0 and to_join:
            result = await admin.controller.join(to_join)
            console.print(
                f"First start: groups {', '.join(map(str, to_join))} joined "
                f"(configuration {result.num}, {len(result.moves)} shards placed)"
            )
            with MoveProgress(console, "placing shards", len(result.moves)) as progress:
                await admin.follow(result, progress.update, BOOTSTRAP_TIMEOUT_S)
        snapshot = await wait_until_settled(admin, SETTLE_TIMEOUT_S)
        if not snapshot.settled:
            console.print(
                f"[yellow]note:[/] not every group has settled after {SETTLE_TIMEOUT_S:.0f} s "
                "(see the migrations below and `shardwise logs`)"
            )
        console.print(status_view(snapshot, pids, console.width))
        spare = [gid for gid, g in snapshot.groups.items() if not g.joined]
        if spare:
            console.print(
                f"Running but not joined: group {', '.join(map(str, spare))} "
                f"(`shardwise group join {spare[0]}` gives it shards)"
            )
