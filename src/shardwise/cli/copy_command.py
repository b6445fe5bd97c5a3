"""``\\copy`` in the SQL shell: a CSV file loaded into a table through the bulk path
(``Client.copy_rows``), as psql's ``\\copy ... FROM`` loads one.

    \\copy TABLE [(COLUMN, ...)] FROM 'PATH' [CSV] [HEADER]

The file is read on the client, a chunk at a time (any size). Each field is a value as
text, which the column's type converts as an INSERT of that text would (``'42'`` into an
INTEGER column is 42); an empty field is NULL, quoted or not (Python's csv module tells
them apart no more than that; psql keeps ``""`` as an empty string). The format is always
CSV (psql's default is tab-separated text: write ``CSV``). ``HEADER`` skips the first
line; a UTF-8 byte order mark is dropped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

MAX_CSV_FIELD_CHARS: Final = 16 << 20
"""Longest field a CSV file may hold (the csv module's own default is 128 KiB)."""

_COPY: Final = re.compile(
    r"""^\s*(?P<table>[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")+")\s*
        (?:\((?P<columns>(?:[^)"]|"(?:[^"]|"")*")*)\)\s*)?
        FROM\s+(?:'(?P<quoted>(?:[^']|'')*)'|(?P<bare>\S+))
        (?P<options>(?:\s+\w+)*)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_OPTIONS: Final = frozenset({"CSV", "HEADER", "WITH"})
_COLUMN_NAME: Final = re.compile(r'"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*')
_COLUMN_LIST: Final = re.compile(
    rf"\s*(?:{_COLUMN_NAME.pattern})\s*(?:,\s*(?:{_COLUMN_NAME.pattern})\s*)*"
)


class CopyUsageError(ValueError):
    """A ``\\copy`` command that does not parse, or a file that cannot be read."""


class RowCopier(Protocol):
    def copy_rows(
        self,
        table: str,
        columns: Sequence[str] | None,
        rows: Iterator[Sequence[object]],
        *,
        deadline_s: float | None = None,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class CopyCommand:
    table: str
    columns: tuple[str, ...] | None
    path: Path
    header: bool


def parse_copy(argument: str) -> CopyCommand:
    """The parts of ``\\copy``'s argument."""
    found = _COPY.match(argument)
    if found is None:
        raise CopyUsageError(
            "usage: \\copy TABLE [(COLUMN, ...)] FROM 'FILE' [CSV] [HEADER] "
            "(from a file only: TO and STDIN are not supported)"
        )
    options = {word.upper() for word in found["options"].split()}
    if unknown := options - _OPTIONS:
        raise CopyUsageError(f"\\copy does not know the option(s) {', '.join(sorted(unknown))}")
    columns = None
    if found["columns"] is not None:
        if _COLUMN_LIST.fullmatch(found["columns"]) is None:
            raise CopyUsageError("\\copy: a column list is names separated by commas")
        columns = tuple(_name(c) for c in _COLUMN_NAME.findall(found["columns"]))
    path = found["quoted"].replace("''", "'") if found["quoted"] is not None else found["bare"]
    return CopyCommand(_name(found["table"]), columns, Path(path), "HEADER" in options)


def run_copy(client: RowCopier, command: CopyCommand, deadline_s: float | None) -> int:
    """Load the command's file; the rows written."""
    try:
        source = command.path.open(newline="", encoding="utf-8-sig")  # (a BOM: dropped)
    except OSError as exc:
        raise CopyUsageError(f"\\copy cannot read {command.path}: {exc.strerror}") from None
    with source:
        rows = _rows(source, command)
        return client.copy_rows(command.table, command.columns, rows, deadline_s=deadline_s)


def _rows(source: Iterator[str], command: CopyCommand) -> Iterator[Sequence[object]]:
    csv.field_size_limit(MAX_CSV_FIELD_CHARS)
    reader = csv.reader(source)
    try:
        if command.header:
            next(reader, None)
        for line in reader:
            yield [field if field != "" else None for field in line]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CopyUsageError(f"\\copy: {command.path}, line {reader.line_num}: {exc}") from None


def _name(text: str) -> str:
    """A name as SQL reads it: quoted, exactly; bare, lower case."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text.lower()
