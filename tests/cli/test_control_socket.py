"""Review of ``shardwise up``'s control socket (``cli/control.py``): nobody but its owner
may ever connect, not even in the instant between ``bind`` and ``chmod``."""

from __future__ import annotations

import os
import selectors
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardwise.cli.control import ControlServer


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that lets the group write new files (Debian's and Ubuntu's default for
    users with a group of their own)."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_the_socket_is_private_from_the_moment_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    """The socket was made with the umask's mode (0775 here: the group may connect) and
    only then narrowed to 0600; ``shardwise up`` over an existing cluster directory that
    is not 0700 (``shardwise up`` makes it 0700 only when it creates it) left a window in
    which another user could send ``down``."""
    modes: list[int] = []
    chmod = os.chmod

    def watching_chmod(path: object, mode: int, *args: object, **kwargs: object) -> None:
        modes.append(stat.S_IMODE(os.stat(path).st_mode))  # type: ignore[arg-type]
        chmod(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", watching_chmod)  # (control.py calls os.chmod)
    root = tmp_path / "cluster"
    root.mkdir(mode=0o755)
    with selectors.DefaultSelector() as selector:
        server = ControlServer(root, selector)
        assert server.open() is None
        try:
            mode = stat.S_IMODE(os.stat(server.path).st_mode)
            assert mode & 0o077 == 0, oct(mode)
            assert all(m & 0o077 == 0 for m in modes), [oct(m) for m in modes]
        finally:
            server.close()
