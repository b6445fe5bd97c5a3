"""``python -m shardwise.shardserver``: one server of a replica group (see
``server.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shardwise.service import parse_peers, replica_arg_parser, replica_config, run_main
from shardwise.shardserver.checker import CHECK_INTERVAL_S
from shardwise.shardserver.server import ShardServer
from shardwise.shardserver.server import __doc__ as server_doc
from shardwise.shardserver.sqlshard import MAX_WRITE_SECONDS, MAX_WRITE_STEPS


def main(argv: Sequence[str] | None = None) -> int:
    parser = replica_arg_parser("python -m shardwise.shardserver", server_doc or "")
    parser.add_argument("--group", required=True, type=int, help="this server's replica group id")
    parser.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a replica of the shard controller (repeat for each)",
    )
    parser.add_argument(
        "--sql-write-max-steps",
        type=int,
        default=MAX_WRITE_STEPS,
        metavar="STEPS",
        help="the most SQLite VM steps one SQL write batch may take on a shard "
        f"(default {MAX_WRITE_STEPS:,}); the leader logs it with each write",
    )
    parser.add_argument(
        "--sql-write-max-seconds",
        type=float,
        default=MAX_WRITE_SECONDS,
        metavar="S",
        help="how long the leader's trial of a SQL write may take before it refuses it "
        f"(default {MAX_WRITE_SECONDS})",
    )
    parser.add_argument(
        "--check-interval",
        type=float,
        default=CHECK_INTERVAL_S,
        metavar="S",
        help="seconds between the consistency checks this server runs while it leads "
        f"(default {CHECK_INTERVAL_S:.0f})",
    )
    args = parser.parse_args(argv)
    config = replica_config(parser, args)
    controllers = parse_peers(parser, args.controller, "--controller")
    if not controllers:
        parser.error("name the controller's replicas with --controller ID=HOST:PORT")
    if args.group <= 0:
        parser.error("--group takes a positive group id")
    if args.sql_write_max_steps < 1:
        parser.error("--sql-write-max-steps takes a positive number")
    if not args.sql_write_max_seconds > 0:
        parser.error("--sql-write-max-seconds takes a positive number")
    if not args.check_interval > 0:
        parser.error("--check-interval takes a positive number")
    steps, seconds = args.sql_write_max_steps, args.sql_write_max_seconds
    return run_main(
        lambda c: ShardServer(
            c,
            args.group,
            controllers,
            sql_write_max_steps=steps,
            sql_write_max_seconds=seconds,
            check_interval_s=args.check_interval,
        ),
        config,
    )


if __name__ == "__main__":
    sys.exit(main())
