"""Run one server module from its own loopback address, for the fault harness.

    python -m shardwise.testing.faults.serve IP [KEY=VALUE ...] -- MODULE ARGS...

Linux routes all of 127/8 to ``lo``, but a connection to 127.0.0.x leaves from 127.0.0.1
unless the socket is bound first, and the harness cuts links by source and destination
address. So this wrapper makes every outgoing connection of the process leave from
``IP`` (``asyncio.open_connection`` is how the transport dials; uvloop keeps working),
sets the ``KEY=VALUE`` environment variables (before any of shardwise is imported: the
storage reads its test-only switches at import), and runs ``MODULE`` as ``__main__``.

It imports nothing of shardwise itself: importing the storage here would read the
environment before the variables are set.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from typing import Any


def _dial_from(ip: str) -> None:
    original = asyncio.open_connection

    async def open_connection(host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("local_addr") is None and str(host).startswith("127."):
            kwargs["local_addr"] = (ip, 0)
        return await original(host, port, **kwargs)

    asyncio.open_connection = open_connection


def main(argv: list[str]) -> None:
    if "--" not in argv or len(argv) < 3:
        raise SystemExit("usage: serve IP [KEY=VALUE ...] -- MODULE ARGS...")
    split = argv.index("--")
    ip, settings = argv[0], argv[1:split]
    module, *args = argv[split + 1 :]
    for setting in settings:
        key, _, value = setting.partition("=")
        os.environ[key] = value
    _dial_from(ip)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
