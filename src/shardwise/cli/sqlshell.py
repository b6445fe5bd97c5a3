"""``shardwise sql``: a SQL shell on the cluster, interactive or fed by ``-c`` or a pipe.

Statements end with ``;`` and may span lines; a line that starts with a backslash, at
the start of a statement, is a shell command (``\\d``, ``\\d NAME``, ``\\?``, ``\\q``).
Results print as rich tables with their row count and time, ``EXPLAIN`` as its plan's
lines, errors with their kind (a syntax error with a caret under its position), and the
shell goes on. What runs statements is anything with ``sql(text) -> Result`` (a
:class:`~shardwise.client.SyncClient`), so the shell itself needs no cluster to test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Final, Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shardwise.cli.catalog_views import find_table, table_view, tables_view
from shardwise.cli.copy_command import CopyUsageError, RowCopier, parse_copy, run_copy
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.errors import (
    ShardwiseError,
    SqlError,
    SqlExecutionError,
    SqlSyntaxError,
    UnsupportedSqlError,
)
from shardwise.model.config import Configuration
from shardwise.sql.coordinator import EXPLAIN_COLUMN, Result
from shardwise.sql.params import Params

PROMPT: Final = "shardwise=> "
PROMPT_IN_TRANSACTION: Final = "shardwise*> "
"""The prompt while a transaction is open (``BEGIN`` ... ``COMMIT``), as psql's ``=*>``."""
CONTINUATION: Final = "shardwise-> "
"""The prompt while a statement is not finished (no ``;`` yet, or inside a string)."""

HISTORY_FILE: Final = "sql_history"
"""In the cluster directory: the statements typed in the shell, one JSON string a line
(a statement keeps its line breaks, which readline's own file format would split)."""
HISTORY_LENGTH: Final = 1000

DEFAULT_MAX_ROWS: Final = 1000
"""Rows of one result printed (drawing a table of a million rows helps nobody); the
rest are counted."""

ERROR_WINDOW: Final = 100
"""Characters of a long line shown around a syntax error's position."""

HELP: Final = """\
Statements end with ; and may span lines. Shell commands (at the start of a statement):
  \\d          list the tables
  \\d NAME     describe table NAME: columns, distribution column, indexes
  \\copy TABLE [(COLUMNS)] FROM 'FILE' [CSV] [HEADER]
              load a CSV file into TABLE (fast: the bulk path; empty fields are NULL)
  \\?          this help
  \\q          quit (or Ctrl-D); Ctrl-C drops the statement being typed
EXPLAIN <statement> shows the distributed plan; docs/sql.md has the SQL that runs."""

# Offered by Tab, with the tables and columns the client knows.
# fmt: off
KEYWORDS: Final = (
    "ADD", "ALTER", "AND", "AS", "ASC", "AVG", "BETWEEN", "BLOB", "BY", "COLUMN", "COUNT",
    "CREATE", "DEFAULT", "DELETE", "DESC", "DISTINCT", "DROP", "EXISTS", "EXPLAIN", "FIRST",
    "FROM", "GROUP", "HAVING", "IF", "ILIKE", "IN", "INDEX", "INSERT", "INTEGER", "INTO", "IS",
    "KEY", "LAST", "LIKE", "LIMIT", "MAX", "MIN", "NOT", "NULL", "NULLS", "OFFSET", "ON", "OR",
    "ORDER", "PRIMARY", "REAL", "SELECT", "SET", "SUM", "TABLE", "TEXT", "UNIQUE", "UPDATE",
    "VALUES", "WHERE", "WITH",
)
# fmt: on

_LEADING_WORDS: Final = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(\w+)", re.S)
_WRITE_VERBS: Final = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}


class SqlRunner(RowCopier, Protocol):
    """What the shell runs statements with (:class:`~shardwise.client.SyncClient`)."""

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result: ...


class Quit(Exception):  # noqa: N818 - a signal to stop, not an error
    """``\\q``: stop reading statements."""


class _UsageError(Exception):
    """A shell command the shell does not know."""


# --- cutting input into statements -----------------------------------------------------


class StatementSplitter:
    """Cuts text, fed a line at a time, into statements at each ``;`` that is outside a
    string, a quoted identifier and a comment (which may all span lines).

    The statements keep their text as typed, less the ``;`` and surrounding whitespace,
    so a syntax error's line and column point into the text the shell shows."""

    _NORMAL, _STRING, _IDENTIFIER, _BACKTICK, _LINE_COMMENT, _BLOCK_COMMENT = range(6)

    def __init__(self) -> None:
        self._text = ""
        self._scanned = 0
        self._state = self._NORMAL
        self._code = False
        """The buffer has something besides whitespace and comments."""

    @property
    def pending(self) -> bool:
        """A statement has begun and not ended."""
        return self._code or self._state not in (self._NORMAL, self._LINE_COMMENT)

    def feed(self, text: str) -> list[str]:
        """The statements ``text`` completes (comment-only ones are dropped)."""
        self._text += text
        found: list[str] = []
        t, i = self._text, self._scanned
        while i < len(t):
            c = t[i]
            state = self._state
            if state == self._NORMAL:
                if c == ";":
                    if self._code:
                        found.append(t[:i].strip())
                    t, i, self._code = t[i + 1 :], 0, False
                    continue
                if t.startswith("--", i):
                    self._state, i = self._LINE_COMMENT, i + 1
                elif t.startswith("/*", i):
                    self._state, i = self._BLOCK_COMMENT, i + 1
                elif not c.isspace():
                    self._code = True
                    quote = {"'": self._STRING, '"': self._IDENTIFIER, "`": self._BACKTICK}
                    self._state = quote.get(c, self._NORMAL)
            elif state == self._STRING:
                # '' inside a string closes it and opens it again: the same outcome.
                if c == "'":
                    self._state = self._NORMAL
            elif state == self._IDENTIFIER:
                if c == '"':
                    self._state = self._NORMAL
            elif state == self._BACKTICK:
                if c == "`":
                    self._state = self._NORMAL
            elif state == self._LINE_COMMENT:
                if c == "\n":
                    self._state = self._NORMAL
            elif t.startswith("*/", i):
                self._state, i = self._NORMAL, i + 1
            i += 1
        self._text, self._scanned = t, i
        return found

    def flush(self) -> str | None:
        """The unfinished statement, if there is one (at the end of the input), and a
        fresh start."""
        rest = self._text.strip() if self._code else None
        self.reset()
        return rest or None

    def reset(self) -> None:
        self._text, self._scanned, self._state, self._code = "", 0, self._NORMAL, False


def split_statements(text: str) -> list[str]:
    """Every statement in ``text``; the last needs no ``;``."""
    splitter = StatementSplitter()
    statements = splitter.feed(text)
    rest = splitter.flush()
    return [*statements, rest] if rest else statements


# --- drawing results and errors --------------------------------------------------------


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def cell(value: object) -> Text:
    """A value as a cell: never read as rich markup (SQL text is full of brackets)."""
    if value is None:
        return Text("NULL", style="dim italic")
    if isinstance(value, bytes):
        return Text("\\x" + value.hex())
    if isinstance(value, float):
        return Text(repr(value))
    return Text(str(value))


def _leading_words(statement: str, count: int = 3) -> list[str]:
    """The first words of a statement, upper-cased, after any leading comments."""
    match = _LEADING_WORDS.match(statement)
    if match is None:
        return []
    return [w.upper() for w in statement[match.start(1) :].split()[:count]]


def result_view(
    statement: str, result: Result, seconds: float, max_rows: int = DEFAULT_MAX_ROWS
) -> RenderableType:
    """A statement's outcome: a table of its rows, the plan of an EXPLAIN, or what a
    write or DDL statement did; each with its time."""
    took = Text(f" ({duration(seconds)})", style="dim")
    if result.columns == (EXPLAIN_COLUMN,) and _leading_words(statement, 1) == ["EXPLAIN"]:
        # Plain lines, not a table: the plan is indented text whose long SQL lines must
        # stay whole to be copied.
        lines = [Text(EXPLAIN_COLUMN, style="bold")]
        lines += [Text(str(row[0])) for row in result.rows]
        lines.append(Text.assemble(plural(len(result.rows), "line"), took))
        return Group(*lines)
    if result.columns:
        shown = result.rows[:max_rows]
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for index, name in enumerate(result.columns):
            values = [row[index] for row in shown if row[index] is not None]
            numeric = bool(values) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            )
            table.add_column(Text(name), justify="right" if numeric else "left")
        for row in shown:
            table.add_row(*(cell(v) for v in row))
        count = plural(len(result.rows), "row")
        if len(shown) < len(result.rows):
            count += f", the first {len(shown):,} shown (--max-rows)"
        return Group(table, Text.assemble(count, took))
    words = _leading_words(statement)
    if result.rowcount >= 0:
        verb = _WRITE_VERBS.get(words[0] if words else "", "changed")
        return Text.assemble(f"{plural(result.rowcount, 'row')} {verb}", took)
    what = "OK"
    if words and words[0] in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"):
        what = {"START": "BEGIN", "END": "COMMIT", "ABORT": "ROLLBACK"}.get(words[0], words[0])
    if words and words[0] in ("CREATE", "DROP", "ALTER"):
        kind = next((w for w in words[1:] if w in ("TABLE", "INDEX")), "")
        what = f"{words[0]} {kind}".strip()
    return Text.assemble(what, took)


def syntax_pointer(statement: str, line: int, column: int) -> Text:
    """The statement's line ``line`` with a caret under ``column`` (both from 1), as
    psql draws it; a long line is cut to a window around the column."""
    lines = statement.split("\n")
    if not 1 <= line <= len(lines):
        return Text()
    raw = lines[line - 1]
    text = raw.expandtabs(8)
    position = len(raw[: max(0, column - 1)].expandtabs(8))
    start = max(0, min(position - ERROR_WINDOW // 2, len(text) - ERROR_WINDOW))
    shown = text[start : start + ERROR_WINDOW]
    head = "..." if start > 0 else ""
    tail = "..." if start + ERROR_WINDOW < len(text) else ""
    prefix = f"LINE {line}: {head}"
    caret = " " * (len(prefix) + position - start) + "^"
    return Text(f"{prefix}{shown}{tail}\n{caret}")


_CATALOG_HINT: Final = "HINT: \\d lists the tables; \\d NAME describes one."


def error_view(exc: Exception, statement: str | None = None) -> RenderableType:
    """An error as the shell prints it: its kind, its message, and for a syntax error
    where in the statement it is."""
    if isinstance(exc, SqlError):
        head = Text.assemble(("ERROR", "bold red"), f" ({exc.code}): {exc}")
        if isinstance(exc, SqlSyntaxError) and statement is not None:
            return Group(head, syntax_pointer(statement, exc.line, exc.column))
        if (
            isinstance(exc, UnsupportedSqlError)
            and statement is not None
            and _leading_words(statement, 1)[:1] in (["SHOW"], ["DESCRIBE"], ["DESC"])
        ):
            return Group(head, Text(_CATALOG_HINT))
        if isinstance(exc, SqlExecutionError) and exc.shard:
            # Where it failed is a detail: the message itself names the user's table.
            return Group(head, Text(f"DETAIL: on shard {exc.shard}", style="dim"))
        return head
    return Text.assemble(("error: ", "bold red"), str(exc))


# --- the shell -------------------------------------------------------------------------


class Shell:
    """Runs statements and shell commands, printing their outcome to ``out`` and errors
    to ``err``; ``catalog`` gives the configuration ``\\d`` describes (the latest)."""

    def __init__(
        self,
        client: SqlRunner,
        out: Console,
        err: Console,
        *,
        catalog: Callable[[], Configuration | None],
        deadline_s: float | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.client = client
        self.out = out
        self.err = err
        self.catalog = catalog
        self.deadline_s = deadline_s
        self.max_rows = max_rows
        self.splitter = StatementSplitter()
        self._known: Configuration | None = None
        """The last configuration ``\\d`` fetched (for Tab completion)."""
        self._matches: list[str] = []

    # --- one statement ---------------------------------------------------------------

    def execute(self, statement: str) -> ExitCode:
        """Run one statement or shell command and print its outcome; its exit code.
        Raises :class:`Quit` for ``\\q``."""
        try:
            if statement.startswith("\\"):
                self.command(statement)
                return ExitCode.OK
            started = time.perf_counter()
            result = self.client.sql(statement, deadline_s=self.deadline_s)
            seconds = time.perf_counter() - started
        except _UsageError as exc:
            self.err.print(error_view(exc), soft_wrap=True)
            return ExitCode.USAGE
        except ShardwiseError as exc:
            # shardwise's own errors (the statement's, a timeout, the cluster down) are
            # printed and survived; anything else is a bug and keeps its traceback.
            self.err.print(error_view(exc, statement), soft_wrap=True)
            return exit_code_for(exc)
        self.out.print(result_view(statement, result, seconds, self.max_rows))
        return ExitCode.OK

    def command(self, text: str) -> None:
        """A backslash command."""
        name, _, argument = text.rstrip(";").strip().partition(" ")
        argument = argument.strip()
        if name == "\\q":
            raise Quit
        if name in ("\\?", "\\h", "\\help"):
            self.out.print(Text(HELP))
        elif name == "\\copy":
            try:
                started = time.perf_counter()
                written = run_copy(self.client, parse_copy(argument), self.deadline_s)
            except CopyUsageError as exc:  # (with what was written, if it stopped a load)
                raise _UsageError("; ".join([str(exc), *getattr(exc, "__notes__", ())])) from None
            seconds = time.perf_counter() - started
            self.out.print(Text(f"COPY {written}", style="bold"), Text(f"({seconds:.3f} s)"))
        elif name == "\\d":
            config = self._known = self.catalog()
            if argument:
                self.out.print(table_view(find_table(config, argument), config))
            else:
                self.out.print(tables_view(config))
        else:
            raise _UsageError(f"unknown command {name}: \\? lists the commands")

    # --- whole inputs ----------------------------------------------------------------

    def run_text(self, text: str) -> ExitCode:
        """``-c``: one shell command, or statements separated by ``;``, stopping at the
        first that fails; the exit code of that one (0: all ran)."""
        stripped = text.strip()
        statements = [stripped] if stripped.startswith("\\") else split_statements(text)
        if not statements:
            self.err.print(Text.assemble(("error: ", "bold red"), "no statement to run"))
            return ExitCode.USAGE
        with contextlib.suppress(Quit):
            for statement in statements:
                code = self.execute(statement)
                if code != ExitCode.OK:
                    return code
        return ExitCode.OK

    def run_lines(self, lines: Iterable[str]) -> ExitCode:
        """Statements from a pipe or a file: each runs, an error is printed and the rest
        still run (as psql does); the exit code of the first that failed (0: none)."""
        first_failure = ExitCode.OK
        with contextlib.suppress(Quit):
            for line in lines:
                for statement in self._take(line):
                    code = self.execute(statement)
                    first_failure = first_failure or code
            rest = self.splitter.flush()
            if rest:  # the last statement may go without its ;
                code = self.execute(rest)
                first_failure = first_failure or code
        return first_failure

    def prompt(self) -> str:
        if self.splitter.pending:
            return CONTINUATION
        in_transaction = getattr(self.client, "in_transaction", False)
        return PROMPT_IN_TRANSACTION if in_transaction else PROMPT

    def _take(self, line: str) -> list[str]:
        """The statements (or the shell command) ``line`` completes."""
        if not self.splitter.pending and line.lstrip().startswith("\\"):
            self.splitter.reset()  # a comment before a command ends with it
            return [line.strip()]
        return self.splitter.feed(line if line.endswith("\n") else line + "\n")

    def interactive(self, history: Path | None, where: str = "") -> ExitCode:
        """Read statements at a prompt, with line editing and ``history`` (if readline
        is available), until ``\\q`` or Ctrl-D. Errors never end it: the exit code is 0."""
        readline = _readline(self._complete)
        saved = History(readline, history, self.err)
        self.out.print(
            Text.assemble(
                ("shardwise SQL", "bold"),
                f"{' on ' + where if where else ''}: statements end with ;",
                " · \\? for help · \\q to quit",
            )
        )
        typed: list[str] = []
        while True:
            try:
                line = input(self.prompt())
            except EOFError:
                self.out.print()
                break
            except KeyboardInterrupt:
                self.out.print()
                self.splitter.reset()
                typed.clear()
                continue
            typed.append(line)
            statements = self._take(line)
            if not self.splitter.pending:
                saved.add("\n".join(typed))
                typed.clear()
            try:
                for statement in statements:
                    self.execute(statement)
            except KeyboardInterrupt:
                self.err.print(
                    Text.assemble(
                        ("cancelled", "bold yellow"),
                        ": the client stopped waiting (a write may still have been applied)",
                    )
                )
            except Quit:
                break
        return ExitCode.OK

    def _complete(self, text: str, state: int) -> str | None:
        """readline's completer: keywords in the case being typed, table and column
        names as they are."""
        if state == 0:
            names: set[str] = set()
            client_config = getattr(self.client, "configuration", None)
            for config in (self._known, client_config):
                if isinstance(config, Configuration):
                    for table in config.tables.values():
                        names.add(table.name)
                        names.update(c.name for c in table.columns)
            lower = text.lower()
            words = [k.lower() if text.islower() else k for k in KEYWORDS]
            self._matches = sorted(w for w in {*words, *names} if w.lower().startswith(lower))
        return self._matches[state] if state < len(self._matches) else None


# --- line editing and history ----------------------------------------------------------


def _readline(completer: Callable[[str, int], str | None]) -> ModuleType | None:
    """The readline module set up for the shell, if this Python has one."""
    try:
        import readline  # noqa: PLC0415 - only for an interactive shell on a terminal
    except ImportError:
        return None
    readline.set_auto_history(False)  # a statement of many lines is one entry
    readline.set_completer(completer)
    readline.set_completer_delims(" \t\n()[],;.=<>*+-/'\"")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


class History:
    """The statements typed, in readline's history and in a file kept between sessions.

    The file is written after each statement (a shell killed outright loses nothing),
    private (statements hold data), and read again at the next start; a file that
    cannot be written turns saving off with one warning."""

    def __init__(self, readline: ModuleType | None, path: Path | None, err: Console) -> None:
        self._readline = readline
        self._path = path
        self._err = err
        self._entries: list[str] = []
        if path is not None:
            with contextlib.suppress(OSError):
                self._entries = list(_read_history(path))
        if readline is not None:
            for entry in self._entries:
                readline.add_history(entry)

    def add(self, entry: str) -> None:
        if not entry.strip() or (self._entries and self._entries[-1] == entry):
            return
        self._entries = [*self._entries, entry][-HISTORY_LENGTH:]
        if self._readline is not None:
            self._readline.add_history(entry)
        if self._path is None:
            return
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(e) + "\n" for e in self._entries)
        except OSError as exc:
            self._err.print(Text(f"warning: history not saved ({exc}); going on without it"))
            self._path = None


def _read_history(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, str):
                yield entry
