"""How the CLI draws things with rich: the process table, the status view, the hints on
how to connect, and the progress bars of shard moves."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from shardwise.cli.admin import Snapshot
from shardwise.cli.moves import DONE, STAGES, MoveState, human_bytes
from shardwise.clusterfile import ClusterLayout, format_address
from shardwise.model.config import DEFAULT_KEYSPACE, NO_GROUP, Configuration

MAX_PROGRESS_ROWS: Final = 24
"""Moves drawn one bar each; a change moving more (the first join moves every shard)
gets one bar for all of them."""

MAX_SHARD_ROWS: Final = 256
"""Shards listed one by one in the status view; past it, per group totals only."""

MAX_SHARD_COLUMNS: Final = 6
SHARD_CELL_WIDTH: Final = 30
RATE_CELL_WIDTH: Final = 8
"""Added to SHARD_CELL_WIDTH when the map has an ops/s column."""
"""The shard map is drawn as side-by-side column sets, as many as fit the console (each
about this wide, at most MAX_SHARD_COLUMNS), to stay short."""

ROLE_STYLES: Final = {"leader": "bold green", "follower": "", "candidate": "yellow"}


def human_rate(rate: float | None) -> str:
    """Operations per second for a cell: ``-`` unknown, ``0``, ``0.4``, ``12``, ``1,250``."""
    if rate is None:
        return "-"
    if rate == 0:
        return "0"
    if rate < 10:
        return f"{rate:.1f}"
    return f"{rate:,.0f}"


def processes_table(layout: ClusterLayout, pids: Mapping[str, int]) -> Table:
    table = Table(title="Processes", title_justify="left")
    for column in ("name", "role", "listens on", "metrics", "pid", "log"):
        table.add_column(column)
    for p in layout.processes:
        if p.role == "controller":
            role = "controller"
        else:
            joined = layout.groups[p.group].join
            role = f"group {p.group}" + ("" if joined else " (spare)")
        table.add_row(
            p.name,
            role,
            format_address(p.listen),
            f"http://{format_address(p.metrics)}/metrics" if p.metrics else "-",
            str(pids.get(p.name, "-")),
            str(layout.log_file(p.name).relative_to(layout.root)),
        )
    return table


def change_numbers(config: Configuration) -> str:
    """`` (shard map 3, catalog 6)``: the latest configurations that changed each (DDL
    makes configurations too, see docs/operations.md); empty from a controller too old
    to record them."""
    if min(config.shard_map_changed_at, config.catalog_changed_at) < 0:
        return ""
    return f" (shard map {config.shard_map_changed_at}, catalog {config.catalog_changed_at})"


def status_view(
    snapshot: Snapshot, pids: Mapping[str, int] | None = None, width: int = 100
) -> RenderableType:
    """Everything ``shardwise status`` shows; ``width``: the console's, for the shard map."""
    pids = pids or {}
    config = snapshot.config
    leader = next((c.name for c in snapshot.controllers if c.role == "leader"), None)
    joined = sorted(config.groups)
    header = Text.assemble(
        ("Configuration ", ""),
        (str(config.num), "bold"),
        change_numbers(config),
        f" · groups {', '.join(map(str, joined)) or 'none'} joined · ",
        f"{sum(len(o) for o in config.owners.values())} shards · controller leader ",
        (leader or "none", "bold green" if leader else "bold red"),
    )
    for table in sorted(config.tables.values(), key=lambda t: t.name):
        for index in table.indexes:
            if index.state == "building":
                done = len(config.index_builds.get(index.name, ()))
                shards = config.keyspaces[table.keyspace].scheme.shards
                header.append(
                    f"\nBuilding global index {index.name} of {table.name}: {done} of "
                    f"{shards} shards done (CREATE INDEX again resumes an interrupted build)"
                )
    if snapshot.rate_window_s is not None:
        reads = sum(r.reads_per_s or 0.0 for r in snapshot.shards)
        writes = sum(r.writes_per_s or 0.0 for r in snapshot.shards)
        header.append(
            f"\nOperations: {human_rate(reads + writes)}/s ({human_rate(reads)} reads, "
            f"{human_rate(writes)} writes) over the last {snapshot.rate_window_s:.1f} s"
        )

    controllers = Table(title="Controller", title_justify="left")
    for column in ("replica", "address", "role", "term", "commit", "config", "pid"):
        controllers.add_column(column, justify="right" if column in ("term", "commit") else "left")
    for c in snapshot.controllers:
        cs = c.status
        controllers.add_row(
            c.name,
            format_address(c.address),
            Text(c.role, style=ROLE_STYLES.get(c.role, "red")),
            str(cs.term) if cs else "",
            str(cs.commit) if cs else "",
            str(cs.config_num) if cs else "",
            str(pids.get(c.name, "-")),
        )

    groups = Table(title="Replica groups", title_justify="left")
    for column in ("group", "server", "role", "term", "commit", "applied", "config"):
        groups.add_column(column, justify="right" if column in ("term", "commit") else "left")
    groups.add_column("shards", justify="right")
    groups.add_column("keys", justify="right")
    groups.add_column("size", justify="right")
    groups.add_column("pid", justify="right")
    for gid, group in snapshot.groups.items():
        label = str(gid) if group.joined else f"{gid} (not joined)"
        for i, server in enumerate(group.servers):
            s = server.status
            if s is None:
                cells: list[str | Text] = [
                    Text("down", style="bold red"),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            else:
                serving = [i for i in s.shards if i.state == "serving"]
                role = Text("halted", style="bold red") if s.halted else None
                cells = [
                    role or Text(s.role, style=ROLE_STYLES.get(s.role, "")),
                    str(s.term),
                    str(s.commit),
                    str(s.applied),
                    str(s.config_num),
                    str(len(serving)),
                    str(sum(i.keys for i in serving)),
                    human_bytes(sum(i.bytes for i in serving)),
                ]
            groups.add_row(
                label if i == 0 else "",
                server.name,
                *cells,
                str(pids.get(server.name, "-")),
                end_section=i == len(group.servers) - 1,
            )

    parts: list[RenderableType] = [header, controllers, groups, *health_lines(snapshot)]
    parts.append(shard_map(snapshot, width))
    migrations = snapshot.migrations()
    if migrations:
        parts.append(Text("Migrations in flight:", style="bold yellow"))
        parts.extend(Text(f"  {line}") for line in migrations)
    else:
        parts.append(Text("Migrations in flight: none", style="dim"))
    return Group(*parts)


def health_lines(snapshot: Snapshot) -> list[Text]:
    """Halted replicas with their reasons, and each group's last consistency check."""
    lines: list[Text] = []
    for gid, group in snapshot.groups.items():
        for server in group.servers:
            if server.health == "halted" and server.status is not None:
                reason = server.status.halt_reason or "no reason given"
                lines.append(Text(f"group {gid}: {server.name} HALTED: {reason}", style="bold red"))
        check = group.last_check
        if check is None:
            continue
        if check.mismatches:
            for m in check.mismatches:
                lines.append(
                    Text(
                        f"group {gid}: REPLICAS DIFFER on shard {m.shard} at index "
                        f"{check.index}: {', '.join(m.differ)}",
                        style="bold red",
                    )
                )
        else:
            agreed = sum(1 for r in check.replicas if r.state == "ok")
            lines.append(
                Text(
                    f"group {gid}: last check at index {check.index}: {check.shards} shards "
                    f"agree on {agreed} of {len(check.replicas)} replicas",
                    style="dim",
                )
            )
    return lines


def shard_map(snapshot: Snapshot, width: int = 100) -> RenderableType:
    """Every shard's owner, keys, size and (when sampled) operations per second, in as
    many side-by-side columns as fit."""
    rows = snapshot.shards
    rates = snapshot.rate_window_s is not None
    if len(rows) > MAX_SHARD_ROWS:
        totals = Table(title=f"Shards ({len(rows)}; per group)", title_justify="left")
        for column in ("group", "shards", "keys", "size", *(("ops/s",) if rates else ())):
            totals.add_column(column, justify="right")
        by_group: dict[int, list[int]] = {}
        ops: dict[int, float] = {}
        for r in rows:
            entry = by_group.setdefault(r.owner, [0, 0, 0])
            entry[0] += 1
            entry[1] += r.keys
            entry[2] += r.bytes
            ops[r.owner] = ops.get(r.owner, 0.0) + (r.ops_per_s or 0.0)
        for gid, (count, keys, size) in sorted(by_group.items()):
            sums = [str(gid or "none"), str(count), str(keys), human_bytes(size)]
            totals.add_row(*sums, *((human_rate(ops[gid]),) if rates else ()))
        return totals
    cell_width = SHARD_CELL_WIDTH + (RATE_CELL_WIDTH if rates else 0)
    sets = max(1, min(MAX_SHARD_COLUMNS, (width - 2) // cell_width))
    table = Table(
        title="Shards: owner group, keys, size" + (", operations per second" if rates else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
    for _ in range(sets):
        table.add_column("shard", style="bold", justify="right", no_wrap=True)
        table.add_column("group", justify="right", no_wrap=True)
        table.add_column("keys", justify="right", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        if rates:
            table.add_column("ops/s", justify="right", no_wrap=True)
    height = -(-len(rows) // sets)
    for line in range(height):
        cells: list[str | Text] = []
        for col in range(sets):
            index = col * height + line
            if index >= len(rows):
                cells += [""] * (5 if rates else 4)
                continue
            r = rows[index]
            name = str(r.shard.index) if r.shard.keyspace == DEFAULT_KEYSPACE else str(r.shard)
            owner = "-" if r.owner == NO_GROUP else str(r.owner)
            if r.state not in ("serving", "unowned"):
                owner += " ?" if r.state == "unknown" else f" {r.state}"
            style = "" if r.state in ("serving", "unowned") else "yellow"
            cells += [name, Text(owner, style=style), str(r.keys), human_bytes(r.bytes)]
            if rates:
                cells.append(human_rate(r.ops_per_s))
        table.add_row(*cells)
    return table


def _on_path(name: str, executable: Path) -> bool:
    found = shutil.which(name)
    return found is not None and Path(found).resolve() == executable.resolve()


def commands_as_typed() -> tuple[str, str, str]:
    """How a new terminal runs this installation's ``shardwise`` and ``python``: by name
    when the shell finds these, else by full path; and a hint (or ``""``)."""
    python = Path(sys.executable)
    script = python.parent / "shardwise"
    if _on_path("shardwise", script) and _on_path("python", python):
        return "shardwise", "python", ""
    cli = str(script) if script.exists() else f"{python} -m shardwise.cli"
    activate = python.parent / "activate"
    hint = (
        f"# full paths: a new terminal's PATH lacks them (or: source {activate})"
        if activate.exists()
        else "# full paths: a new terminal's PATH lacks them"
    )
    return cli, str(python), hint


def connect_hints(layout: ClusterLayout, default_dir: bool) -> RenderableType:
    flag = "" if default_dir else f" --cluster-dir {layout.root}"
    where = "" if default_dir else f'"{layout.root}"'
    shardwise, python_path, hint = commands_as_typed()
    example = next((p.name for p in layout.processes if p.role == "server"), "c1")
    cli = "\n".join(
        [
            *([hint] if hint else []),
            f"{shardwise} kv put greeting hello{flag}",
            f"{shardwise} kv get greeting{flag}",
            f"{shardwise} status{flag}",
            f"{shardwise} logs --follow{flag}",
            f"{shardwise} restart {example}{flag}   # stop / start / restart one process",
        ]
    )
    python = "\n".join(
        [
            "import shardwise",
            "",
            f"with shardwise.connect({where}) as kv:   # reads its cluster.toml",
            '    kv.put("greeting", "hello")',
            '    print(kv.get("greeting"))',
            "",
            "# asyncio: async with shardwise.connect_async(...) as kv: await kv.get(...)",
        ]
    )
    return Group(
        Panel(Syntax(cli, "bash", theme="ansi_dark"), title="Connect from the shell"),
        Panel(
            Syntax(python, "python", theme="ansi_dark"),
            title=f"Connect from Python ({python_path})",
        ),
    )


class MoveProgress:
    """Live progress bars for a change's shard moves (one per shard, or one for all)."""

    def __init__(self, console: Console, title: str, total: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self._title = title
        self._total = total
        self._tasks: dict[str, TaskID] = {}
        self._each = total <= MAX_PROGRESS_ROWS

    def __enter__(self) -> MoveProgress:
        self._progress.__enter__()
        if not self._each:
            self._tasks["all"] = self._progress.add_task(
                f"{self._title}: {self._total} shards", total=self._total * DONE, note=""
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.__exit__(None, None, None)

    def update(self, states: list[MoveState]) -> None:
        if not self._each:
            done = sum(1 for s in states if s.done)
            pending = next((s.note for s in states if not s.done), "")
            self._progress.update(
                self._tasks["all"],
                completed=sum(s.stage + s.fraction for s in states),
                note=f"{done}/{len(states)} done" + (f" · {pending}" if pending else ""),
            )
            return
        for state in states:
            key = str(state.move.shard)
            if key not in self._tasks:
                source = state.move.source or "none"
                target = state.move.target or "none"
                self._tasks[key] = self._progress.add_task(
                    f"{key}  {source} → {target}", total=DONE, note=""
                )
            self._progress.update(
                self._tasks[key],
                completed=state.stage + state.fraction,
                note=STAGES[state.stage] if state.done else state.note,
            )
