"""The cluster description, and connecting to a cluster by it.

One TOML file (``cluster.toml``) says which processes a cluster has, where each listens,
where the secret and the data are. ``shardwise up`` writes it on first start; for several
machines an operator writes it; every ``shardwise`` command and :func:`connect` read it::

    import shardwise

    with shardwise.connect() as kv:   # ./.shardwise/cluster.toml, as `shardwise up` wrote it
        kv.put("greeting", "hello")

    async with shardwise.connect_async("/srv/shardwise") as kv:   # the asyncio client
        await kv.get("greeting")

The file::

    # paths are relative to this file's directory
    secret_file = "secret"
    data_dir = "data"            # each process keeps its data in data_dir/<name>
    log_dir = "logs"             # `shardwise up` writes each process's log there
    tick_ms = 50

    [controller]                 # the shard controller's replicas
    c1 = { listen = "127.0.0.1:7100", metrics = "127.0.0.1:8100" }

    [groups.1]                   # replica group 1
    join = true                  # `shardwise up` joins it on first start
    g1-1 = { listen = "127.0.0.1:7200", metrics = "127.0.0.1:8200" }

A group server's node id is its ``listen`` address (servers are named by address in
configurations); the names (``c1``, ``g1-1``) are for people: logs, ``shardwise node
--id``, the status table.
"""

from __future__ import annotations

import os
import re
import secrets
import ssl
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from shardwise.errors import ClusterConfigError, ClusterNotFoundError
from shardwise.model.config import MAX_GROUPS, MAX_SERVERS_PER_GROUP
from shardwise.net.auth import Credentials, Login, check_secret
from shardwise.net.certs import CA_CERT, make_ca, make_node_certificate
from shardwise.net.links import Address
from shardwise.net.ports import free_ports
from shardwise.net.tls import TlsFiles, client_context
from shardwise.service import DEFAULT_TICK_MS, MAX_SECRET_FILE_BYTES

if TYPE_CHECKING:
    from shardwise.client import Client, SyncClient

DESCRIPTION_FILE: Final = "cluster.toml"
DEFAULT_CLUSTER_DIR: Final = ".shardwise"
CLUSTER_DIR_ENV: Final = "SHARDWISE_CLUSTER_DIR"
LOOPBACK: Final = "127.0.0.1"

DEFAULT_BASE_PORT: Final = 7100
"""Local layout: controllers at 7100.., group g's servers at 7100 + 100 * g.., each
process's metrics 1000 above its own port."""

METRICS_PORT_OFFSET: Final = 1000
GROUP_PORT_STRIDE: Final = 100
MAX_LOCAL_GROUPS: Final = 9
"""Groups (joined and spare) one ``shardwise up`` lays out by itself: with ports 100 apart
per group and metrics 1000 above, a tenth group's ports would meet the metrics ports."""

MAX_CONTROLLERS: Final = 7
MAX_PROCESSES: Final = 256
SECRET_BYTES: Final = 32
MAX_TICK_MS: Final = 10_000
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Process names are also file names (data and log directories)."""

Role = Literal["controller", "server"]


@dataclass(frozen=True, slots=True)
class Process:
    """One process of the cluster: a controller replica or a group server."""

    name: str
    role: Role
    listen: Address
    group: int = 0
    """The replica group of a server (0 for a controller replica)."""
    metrics: Address | None = None

    @property
    def node_id(self) -> str:
        """The id the process has in Raft and on the wire: its name for a controller
        replica, its ``HOST:PORT`` for a group server."""
        return self.name if self.role == "controller" else format_address(self.listen)


@dataclass(frozen=True, slots=True)
class Group:
    gid: int
    join: bool
    """Whether ``shardwise up`` joins this group on the cluster's first start (a spare
    group runs but owns nothing until ``shardwise group join``)."""
    servers: tuple[Process, ...]

    @property
    def node_ids(self) -> list[str]:
        return [s.node_id for s in self.servers]


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """The ``[tls]`` table: the CA every process and client trusts, and the directory
    with each process's node certificate (``<name>.pem``) and key (``<name>.key``)."""

    ca_file: Path
    cert_dir: Path

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.cert_dir / f"{name}.pem", self.cert_dir / f"{name}.key", self.ca_file)


@dataclass(frozen=True)
class ClusterLayout:
    """A parsed ``cluster.toml``, with every path made absolute."""

    path: Path
    secret_file: Path
    data_dir: Path
    log_dir: Path
    tick_ms: int
    controllers: tuple[Process, ...]
    groups: dict[int, Group]
    tls: ClusterTls | None = None
    """TLS on every connection, when the ``[tls]`` table is there."""

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def processes(self) -> list[Process]:
        return [*self.controllers, *(s for g in self.groups.values() for s in g.servers)]

    @property
    def controller_addresses(self) -> dict[str, Address]:
        return {c.name: c.listen for c in self.controllers}

    def process(self, name: str) -> Process:
        for process in self.processes:
            if process.name == name:
                return process
        known = ", ".join(p.name for p in self.processes)
        raise ClusterConfigError(f"{self.path} has no process {name!r} (it has {known})")

    def by_node_id(self) -> dict[str, Process]:
        return {p.node_id: p for p in self.processes}

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def client_ssl(self) -> ssl.SSLContext | None:
        """How a client dials this cluster's servers: TLS verified against its CA (and
        each server's node certificate checked), or ``None`` for plain TCP."""
        return client_context(self.tls.ca_file) if self.tls is not None else None

    def ensure_certificates(self) -> list[str]:
        """Make the CA and every process's node certificate that are missing (a TLS
        cluster only); the names of the processes given a new one."""
        if self.tls is None:
            return []
        tls = self.tls
        ca_dir = tls.ca_file.parent
        if not tls.ca_file.exists():
            tls.cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            make_ca(ca_dir)
        made = []
        for process in self.processes:
            files = tls.files(process.name)
            if files.cert.exists() and files.key.exists():
                continue
            host = process.listen[0]
            make_node_certificate(
                ca_dir, process.node_id, tls.cert_dir, hosts=[host], stem=process.name
            )
            made.append(process.name)
        return made

    def command(self, name: str, python: str = sys.executable) -> list[str]:
        """The command line that runs process ``name`` (no secret on it: the secret
        travels in a file, where other users of the machine cannot read it)."""
        process = self.process(name)
        common = [
            f"--listen={format_address(process.listen)}",
            f"--data={self.data_dir / process.name}",
            f"--secret-file={self.secret_file}",
            f"--tick-ms={self.tick_ms}",
            *([f"--metrics={format_address(process.metrics)}"] if process.metrics else []),
            *self._tls_args(name),
        ]
        if process.role == "controller":
            peers = [
                f"--peer={c.name}={format_address(c.listen)}"
                for c in self.controllers
                if c.name != name
            ]
            return [python, "-m", "shardwise.controller", f"--id={name}", *common, *peers]
        group = self.groups[process.group]
        peers = [
            f"--peer={s.node_id}={format_address(s.listen)}"
            for s in group.servers
            if s.name != name
        ]
        controllers = [
            f"--controller={c.name}={format_address(c.listen)}" for c in self.controllers
        ]
        return [
            python, "-m", "shardwise.shardserver",
            f"--group={process.group}",
            f"--id={process.node_id}",
            *common, *peers, *controllers,
        ]  # fmt: skip

    def _tls_args(self, name: str) -> list[str]:
        if self.tls is None:
            return []
        files = self.tls.files(name)
        return [f"--tls-cert={files.cert}", f"--tls-key={files.key}", f"--tls-ca={files.ca}"]

    # --- the file --------------------------------------------------------------------

    def to_toml(self) -> str:
        def rel(path: Path) -> str:
            try:
                return str(path.relative_to(self.root))
            except ValueError:
                return str(path)

        def entry(p: Process) -> str:
            fields = [f"listen = {_quote(format_address(p.listen))}"]
            if p.metrics is not None:
                fields.append(f"metrics = {_quote(format_address(p.metrics))}")
            return f"{p.name} = {{ {', '.join(fields)} }}"

        lines = [
            "# A shardwise cluster: every process, where it listens, where its data lives.",
            "# `shardwise up` starts them all on this machine; on several machines run",
            "# `shardwise node --config cluster.toml --id NAME` on each (docs/operations.md).",
            "# Relative paths are relative to this file's directory.",
            f"secret_file = {_quote(rel(self.secret_file))}",
            f"data_dir = {_quote(rel(self.data_dir))}",
            f"log_dir = {_quote(rel(self.log_dir))}",
            f"tick_ms = {self.tick_ms}",
            "",
            "[controller]",
            *(entry(c) for c in self.controllers),
        ]
        if self.tls is not None:
            lines += [
                "",
                "[tls]                        # TLS on every connection (`shardwise cert`)",
                f"ca_file = {_quote(rel(self.tls.ca_file))}",
                f"cert_dir = {_quote(rel(self.tls.cert_dir))}  # <name>.pem and <name>.key",
            ]
        for gid, group in sorted(self.groups.items()):
            lines += ["", f"[groups.{gid}]", f"join = {'true' if group.join else 'false'}"]
            lines += [entry(s) for s in group.servers]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Write the description atomically (a crash leaves the old file or the new)."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(self.to_toml())
        os.replace(temp, self.path)


# --- reading -------------------------------------------------------------------------


def format_address(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def parse_address(text: object, where: str) -> Address:
    if not isinstance(text, str):
        raise ClusterConfigError(f'{where}: expected "HOST:PORT", got {text!r}')
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterConfigError(f'{where}: expected "HOST:PORT", got {text!r}')
    return host, int(port)


def _quote(text: str) -> str:
    # A TOML basic string: backslash and quote escaped, control characters refused
    # (paths and addresses never need them).
    if any(ord(ch) < 0x20 for ch in text):
        raise ClusterConfigError(f"cannot write {text!r} into the description")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ClusterConfigError(
            f"{where}: process name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )


def _process(name: str, value: object, role: Role, group: int, where: str) -> Process:
    _check_name(name, where)
    if not isinstance(value, dict):
        raise ClusterConfigError(f'{where}.{name}: expected {{ listen = "HOST:PORT" }}')
    unknown = set(value) - {"listen", "metrics"}
    if unknown:
        raise ClusterConfigError(f"{where}.{name}: unknown keys {sorted(unknown)}")
    if "listen" not in value:
        raise ClusterConfigError(f"{where}.{name}: no listen address")
    listen = parse_address(value["listen"], f"{where}.{name}.listen")
    metrics = value.get("metrics")
    return Process(
        name,
        role,
        listen,
        group,
        parse_address(metrics, f"{where}.{name}.metrics") if metrics is not None else None,
    )


def parse_layout(path: Path, data: Mapping[str, Any]) -> ClusterLayout:
    """Validate a parsed ``cluster.toml`` (``path`` anchors its relative paths)."""
    root = path.parent
    known = {"secret_file", "data_dir", "log_dir", "tick_ms", "controller", "groups", "tls"}
    unknown = set(data) - known
    if unknown:
        raise ClusterConfigError(f"{path}: unknown keys {sorted(unknown)}")

    def path_of(key: str, default: str) -> Path:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            raise ClusterConfigError(f"{path}: {key} must be a path")
        return (root / value).resolve()

    tick_ms = data.get("tick_ms", DEFAULT_TICK_MS)
    if not isinstance(tick_ms, int) or not 1 <= tick_ms <= MAX_TICK_MS:
        raise ClusterConfigError(f"{path}: tick_ms must be an integer in [1, {MAX_TICK_MS}]")
    table = data.get("controller")
    if not isinstance(table, dict) or not table:
        raise ClusterConfigError(f"{path}: a [controller] table naming its replicas is needed")
    if len(table) > MAX_CONTROLLERS:
        raise ClusterConfigError(f"{path}: at most {MAX_CONTROLLERS} controller replicas")
    controllers = tuple(
        _process(name, value, "controller", 0, "controller") for name, value in table.items()
    )
    groups_table = data.get("groups", {})
    if not isinstance(groups_table, dict):
        raise ClusterConfigError(f"{path}: [groups.N] tables expected")
    if len(groups_table) > MAX_GROUPS:
        raise ClusterConfigError(f"{path}: at most {MAX_GROUPS} groups")
    groups: dict[int, Group] = {}
    for key, value in groups_table.items():
        if not key.isdigit() or int(key) <= 0:
            raise ClusterConfigError(f"{path}: group ids are positive integers, not {key!r}")
        gid = int(key)
        where = f"groups.{gid}"
        if not isinstance(value, dict):
            raise ClusterConfigError(f"{path}: [{where}] must be a table")
        join = value.get("join", True)
        if not isinstance(join, bool):
            raise ClusterConfigError(f"{path}: {where}.join must be true or false")
        servers = tuple(
            _process(name, spec, "server", gid, where)
            for name, spec in value.items()
            if name != "join"
        )
        if not 1 <= len(servers) <= MAX_SERVERS_PER_GROUP:
            raise ClusterConfigError(
                f"{path}: group {gid} needs 1 to {MAX_SERVERS_PER_GROUP} servers"
            )
        groups[gid] = Group(gid, join, servers)
    layout = ClusterLayout(
        path=path,
        secret_file=path_of("secret_file", "secret"),
        data_dir=path_of("data_dir", "data"),
        log_dir=path_of("log_dir", "logs"),
        tick_ms=tick_ms,
        controllers=controllers,
        groups=dict(sorted(groups.items())),
        tls=_tls(path, data.get("tls")),
    )
    _check_unique(path, layout.processes)
    return layout


def _tls(path: Path, table: object) -> ClusterTls | None:
    if table is None:
        return None
    if not isinstance(table, dict) or set(table) - {"ca_file", "cert_dir"}:
        raise ClusterConfigError(f'{path}: [tls] takes ca_file = "FILE" and cert_dir = "DIR"')
    values = [table.get("ca_file", "tls/ca.pem"), table.get("cert_dir", "tls")]
    if not all(isinstance(v, str) and v for v in values):
        raise ClusterConfigError(f"{path}: [tls] ca_file and cert_dir must be paths")
    ca_file, cert_dir = ((path.parent / v).resolve() for v in values)
    return ClusterTls(ca_file, cert_dir)


def _check_unique(path: Path, processes: Iterable[Process]) -> None:
    names: set[str] = set()
    addresses: dict[Address, str] = {}
    for p in processes:
        if p.name in names:
            raise ClusterConfigError(f"{path}: two processes are named {p.name!r}")
        names.add(p.name)
        for address in (p.listen, p.metrics):
            if address is None:
                continue
            if address in addresses:
                raise ClusterConfigError(
                    f"{path}: {p.name} and {addresses[address]} both use {format_address(address)}"
                )
            addresses[address] = p.name
    if len(names) > MAX_PROCESSES:
        raise ClusterConfigError(f"{path}: at most {MAX_PROCESSES} processes")


def load_layout(path: Path) -> ClusterLayout:
    path = path.resolve()
    if not path.is_file():
        raise ClusterNotFoundError(
            f"no cluster description at {path}: start a local cluster with `shardwise up`, "
            f"or point at one with --cluster-dir DIR (or ${CLUSTER_DIR_ENV})"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ClusterConfigError(f"{path}: {exc}") from exc
    return parse_layout(path, data)


def cluster_dir(option: str | Path | None) -> Path:
    """The cluster directory: ``option`` (``--cluster-dir``), else $SHARDWISE_CLUSTER_DIR,
    else ``./.shardwise``."""
    chosen = option or os.environ.get(CLUSTER_DIR_ENV) or DEFAULT_CLUSTER_DIR
    return Path(chosen).expanduser().resolve()


def find_layout(directory: str | Path | None, config: str | Path | None = None) -> ClusterLayout:
    """The description named by ``--config FILE``, else ``cluster.toml`` in the cluster
    directory."""
    if config:
        return load_layout(Path(config).expanduser())
    return load_layout(cluster_dir(directory) / DESCRIPTION_FILE)


# --- the secret ----------------------------------------------------------------------


def read_secret(path: Path) -> bytes:
    """The cluster secret in ``path`` (surrounding whitespace stripped, as the servers
    read it)."""
    try:
        data = path.read_bytes()[: MAX_SECRET_FILE_BYTES + 1]
    except FileNotFoundError:
        raise ClusterConfigError(f"the secret file {path} does not exist") from None
    except OSError as exc:
        raise ClusterConfigError(f"cannot read the secret file {path}: {exc}") from exc
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ClusterConfigError(f"the secret file {path} is over {MAX_SECRET_FILE_BYTES} bytes")
    secret = data.strip()
    try:
        return check_secret(secret)
    except ValueError as exc:
        raise ClusterConfigError(f"the secret file {path}: {exc}") from None


def ensure_secret(path: Path) -> bool:
    """Create a random secret in ``path`` (mode 0600) unless one is there; whether it was
    created. Exclusive creation, so two racing starts cannot both write one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(SECRET_BYTES) + "\n")
    return True


def secret_is_private(path: Path) -> bool:
    """Whether only the owner may read the secret file."""
    try:
        return path.stat().st_mode & 0o077 == 0
    except OSError:
        return False


# --- a local layout ------------------------------------------------------------------
def local_layout(
    root: Path,
    *,
    controllers: int = 3,
    groups: int = 3,
    replicas: int = 3,
    spare_groups: int = 0,
    base_port: int = DEFAULT_BASE_PORT,
    tick_ms: int = DEFAULT_TICK_MS,
    metrics: bool = True,
    tls: bool = False,
) -> ClusterLayout:
    """Every process on loopback under ``root``. ``base_port`` 0: ports the OS picks now
    (the description keeps them, so a restart reuses them). ``tls``: certificates under
    ``root/tls`` (made by :meth:`ClusterLayout.ensure_certificates`)."""
    if not 1 <= controllers <= MAX_CONTROLLERS:
        raise ClusterConfigError(f"--controllers must be in [1, {MAX_CONTROLLERS}]")
    if not 1 <= replicas <= MAX_SERVERS_PER_GROUP:
        raise ClusterConfigError(f"--replicas must be in [1, {MAX_SERVERS_PER_GROUP}]")
    if groups < 0 or spare_groups < 0 or groups + spare_groups > MAX_LOCAL_GROUPS:
        raise ClusterConfigError(
            f"--groups plus --spare-groups must be in [0, {MAX_LOCAL_GROUPS}] for a local cluster"
        )
    if not 1 <= tick_ms <= MAX_TICK_MS:
        raise ClusterConfigError(f"--tick-ms must be in [1, {MAX_TICK_MS}]")
    total_groups = groups + spare_groups
    count = controllers + total_groups * replicas
    if base_port == 0:
        picked = iter(free_ports(count * (2 if metrics else 1)))
        controller_ports = [next(picked) for _ in range(controllers)]
        server_ports = {
            (g, i): next(picked) for g in range(1, total_groups + 1) for i in range(replicas)
        }
        metrics_ports = [next(picked) for _ in range(count)] if metrics else []
    else:
        highest = base_port + GROUP_PORT_STRIDE * total_groups + replicas + METRICS_PORT_OFFSET
        if not base_port >= 1024 or highest > 65535:
            raise ClusterConfigError(
                f"--base-port {base_port} puts ports outside [1024, 65535] (or use 0: any free)"
            )
        controller_ports = [base_port + i for i in range(controllers)]
        server_ports = {
            (g, i): base_port + GROUP_PORT_STRIDE * g + i
            for g in range(1, total_groups + 1)
            for i in range(replicas)
        }
        metrics_ports = [
            port + METRICS_PORT_OFFSET for port in (*controller_ports, *server_ports.values())
        ]
    metric_iter = iter(metrics_ports)

    def metrics_address() -> Address | None:
        return (LOOPBACK, next(metric_iter)) if metrics else None

    root = root.resolve()
    controller_list = tuple(
        Process(f"c{i + 1}", "controller", (LOOPBACK, port), 0, metrics_address())
        for i, port in enumerate(controller_ports)
    )
    group_map = {
        g: Group(
            g,
            g <= groups,
            tuple(
                Process(
                    f"g{g}-{i + 1}", "server", (LOOPBACK, server_ports[g, i]), g, metrics_address()
                )
                for i in range(replicas)
            ),
        )
        for g in range(1, total_groups + 1)
    }
    return ClusterLayout(
        path=root / DESCRIPTION_FILE,
        secret_file=root / "secret",
        data_dir=root / "data",
        log_dir=root / "logs",
        tick_ms=tick_ms,
        controllers=controller_list,
        groups=group_map,
        tls=ClusterTls(root / "tls" / CA_CERT, root / "tls") if tls else None,
    )


# --- connecting ----------------------------------------------------------------------


def credentials(
    layout: ClusterLayout, user: str | None = None, password: str | None = None
) -> Credentials:
    """A user's login if ``user`` is given, else the cluster's secret (from its file)."""
    if user is not None:
        if password is None:
            raise ValueError(f"user {user!r} needs a password")
        return Login(user, password)
    return read_secret(layout.secret_file)


def connect(
    cluster_dir: str | Path | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
    **options: Any,
) -> SyncClient:
    """A blocking client of the cluster described in ``cluster_dir``, logged in as
    ``user`` if given, else holding the cluster secret (``options`` go to
    :class:`~shardwise.client.SyncClient`)."""
    from shardwise.client import SyncClient  # noqa: PLC0415 - the client is heavy; only here

    layout = find_layout(cluster_dir)
    options.setdefault("client_ssl", layout.client_ssl())
    return SyncClient(layout.controller_addresses, credentials(layout, user, password), **options)


def connect_async(
    cluster_dir: str | Path | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
    **options: Any,
) -> Client:
    """An asyncio client of the cluster described in ``cluster_dir`` (as :func:`connect`;
    ``options`` go to :class:`~shardwise.client.Client`)."""
    from shardwise.client import Client  # noqa: PLC0415

    layout = find_layout(cluster_dir)
    options.setdefault("client_ssl", layout.client_ssl())
    return Client(layout.controller_addresses, credentials(layout, user, password), **options)
