"""Names written into SQL text as identifiers. No parser: the shard side uses it too."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier, whatever it holds (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
