"""SQL text in, one sqlglot statement out, or a typed error that says where.

One statement per call: a script of several could fail half way and leave the first ones
applied, so it is refused whole. ``EXPLAIN`` is peeled off here (sqlglot would parse
``EXPLAIN SELECT`` as an opaque command). Placeholders: ``$1``-style (PostgreSQL),
``?`` (numbered in text order) or ``:name``; :mod:`shardwise.sql.params` binds them.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from typing import Final

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from shardwise.errors import (
    SqlLimitError,
    SqlParameterError,
    SqlSyntaxError,
    UnsupportedSqlError,
)
from shardwise.sql.dialect import DIALECT
from shardwise.sql.values import INT64_MAX

MAX_SQL_CHARS: Final = 1 << 20
"""Longest statement text: a statement rides in one request; bulk loads use many."""

MAX_NESTING_DEPTH: Final = 32
"""Deepest nesting of parentheses, brackets and CASE ... END in a statement. The parser
recurses about twenty Python frames per level, so without a bound deep nesting would
exhaust Python's recursion limit (at about 45 levels) rather than fail clearly."""

_OPENERS: Final = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.CASE})
_CLOSERS: Final = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.END})

# sqlglot logs a warning ("Falling back to parsing as a 'Command'") for statements it
# reads as opaque commands; shardwise refuses those with an error of its own, and a
# library's warnings are not for shardwise's users.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_STATEMENT_WORDS: Final = (
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "EXPLAIN", "WITH",
    "VALUES",
)  # fmt: skip
"""What a statement shardwise runs begins with (for "did you mean")."""

_OTHER_STATEMENT_WORDS: Final = frozenset(
    {"START", "LISTEN", "NOTIFY", "UNLISTEN", "ABORT", "DEALLOCATE", "DISCARD", "CLUSTER",
     "CHECKPOINT", "LOAD", "IMPORT", "SECURITY", "REASSIGN"}
)  # fmt: skip
"""PostgreSQL statements whose first word sqlglot reads as a name: refused as unsupported
statements, not as misspellings."""

_NOT_A_STATEMENT: Final = frozenset(
    {TokenType.VAR, TokenType.IDENTIFIER, TokenType.NUMBER, TokenType.STRING}
)

_HEX_DIGITS_MAX: Final = 16
"""SQLite reads ``0x`` literals of up to 16 significant digits, as 64-bit two's
complement integers (``0xffffffffffffffff`` is -1); longer ones are an error."""

# sqlglot's messages quote its token and class objects; keep only the human part.
_TOKEN_REPR: Final = re.compile(r"<Token token_type: TokenType\.(\w+), text: ([^,]*),.*?>")
_CLASS_REPR: Final = re.compile(r"<class 'sqlglot\.[\w.]*?(\w+)'>")


_NILADIC: Final = frozenset(
    {
        TokenType.CURRENT_TIMESTAMP,
        TokenType.CURRENT_DATE,
        TokenType.CURRENT_TIME,
        TokenType.LOCALTIMESTAMP,
        TokenType.LOCALTIME,
        TokenType.CASE,
    }
)
_SELECT_ENDS: Final = frozenset(
    {
        TokenType.FROM,
        TokenType.WHERE,
        TokenType.GROUP_BY,
        TokenType.HAVING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.OFFSET,
        TokenType.UNION,
        TokenType.EXCEPT,
        TokenType.INTERSECT,
        TokenType.SEMICOLON,
        TokenType.WINDOW,
        TokenType.FETCH,
        TokenType.INTO,
        TokenType.QUALIFY,
    }
)
_WORD: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True, slots=True)
class ParsedStatement:
    statement: exp.Expr
    explain: bool
    text: str
    select_heads: tuple[str, ...] = ()
    """For a SELECT, each select item's function name as written (folded to lower case
    unless quoted), "" for an item that does not start with a call; for naming result
    columns as PostgreSQL does (:mod:`shardwise.sql.colnames`)."""
    analyze: bool = False
    """``EXPLAIN ANALYZE``: run the statement and report what each stage did."""


def parse_statement(sql: str) -> ParsedStatement:
    """Parse exactly one statement, optionally prefixed by ``EXPLAIN``."""
    if len(sql) > MAX_SQL_CHARS:
        raise SqlLimitError("MAX_SQL_CHARS", MAX_SQL_CHARS, "the statement is too long")
    sql, tokens = _tokenize(sql)
    _check_nesting(sql, tokens)
    integers = _hex_integers(sql, tokens)
    if integers != sql:
        sql, tokens = integers, DIALECT().tokenize(integers)
    explain = analyze = False
    offset = 0  # where the statement proper starts in ``sql``
    if tokens and tokens[0].text.upper() == "EXPLAIN":
        # sqlglot's tokens hold what follows EXPLAIN as one opaque token: read it again
        # (from here on, token positions are in ``body``).
        explain = True
        offset = tokens[0].end + 1
        tokens = DIALECT().tokenize(sql[offset:])
        if tokens and tokens[0].text.upper() == "ANALYZE":
            analyze = True
            offset += tokens[0].end + 1
            tokens = DIALECT().tokenize(sql[offset:])
        if tokens and tokens[0].text.upper() == "VERBOSE":
            raise UnsupportedSqlError("EXPLAIN VERBOSE")
    if not tokens:
        line, column = _line_column(sql, len(sql))
        raise SqlSyntaxError("empty statement", line, column)
    body = sql[offset:]
    _check_first_word(sql, tokens[0], offset)
    statements = _parse(body, sql, offset)
    numbered = _number_qmarks(body, tokens)
    if numbered != body:
        statements = _parse(numbered, sql, offset)
    found = [s for s in statements if s is not None]
    if len(found) != 1:
        raise UnsupportedSqlError("more than one statement per call", "send them one by one")
    statement = found[0]
    if isinstance(statement, exp.Command):
        name = _command_name(statement)
        hint = ""
        if name == "CREATE TABLE":
            hint = "declare the distribution column with WITH (distribution = 'column')"
        raise UnsupportedSqlError(f"this form of {name}", hint)
    return ParsedStatement(statement, explain, sql, _select_heads(tokens), analyze)


def _select_heads(tokens: list[Token]) -> tuple[str, ...]:
    """The function name each top-level select item starts with ("" if none)."""
    if not tokens or tokens[0].token_type is not TokenType.SELECT:
        return ()
    rest = tokens[1:]
    while rest and rest[0].token_type in (TokenType.DISTINCT, TokenType.ALL):
        rest = rest[1:]
    items: list[list[Token]] = [[]]
    depth = 0
    for token in rest:
        kind = token.token_type
        if depth == 0 and kind in _SELECT_ENDS:
            break
        if depth == 0 and kind is TokenType.COMMA:
            items.append([])
            continue
        if kind in _OPENERS:
            depth += 1
        elif kind in _CLOSERS:
            depth = max(depth - 1, 0)
        items[-1].append(token)
    return tuple(_head(item) for item in items)


def _head(item: list[Token]) -> str:
    if not item:
        return ""
    first = item[0]
    calls = len(item) > 1 and item[1].token_type is TokenType.L_PAREN
    if first.token_type is TokenType.IDENTIFIER:  # quoted: its case is kept
        return first.text if calls else ""
    if first.token_type in _NILADIC or (calls and _WORD.match(first.text)):
        return first.text.lower()
    return ""


def _check_first_word(sql: str, first: Token, offset: int) -> None:
    """A statement that starts with a name or a value is misspelt there, at its first
    word (as PostgreSQL reports it), not wherever the parser gave up later."""
    word = first.text
    if first.token_type not in _NOT_A_STATEMENT or word.upper() in _OTHER_STATEMENT_WORDS:
        return
    line, column = _line_column(sql, offset + first.start)
    guess = difflib.get_close_matches(word.upper(), _STATEMENT_WORDS, n=1)
    hint = f"; did you mean {guess[0]}?" if guess else ""
    raise SqlSyntaxError(f"{word!r} does not begin a statement{hint}", line, column)


def _check_nesting(sql: str, tokens: list[Token]) -> None:
    depth = 0
    for token in tokens:
        if token.token_type in _OPENERS:
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                line, column = _line_column(sql, token.start)
                raise SqlLimitError(
                    "MAX_NESTING_DEPTH",
                    MAX_NESTING_DEPTH,
                    f"parentheses or CASE nested too deeply at line {line}, column {column}",
                )
        elif token.token_type in _CLOSERS:
            depth = max(depth - 1, 0)


def _hex_integers(sql: str, tokens: list[Token]) -> str:
    """``0x1F`` literals written as the decimal INTEGER SQLite reads them as (sqlglot
    would read them as the blob ``x'1F'``, which a blob literal also is)."""
    out: list[str] = []
    last = 0
    for token in tokens:
        start, end = token.start, token.end + 1
        if token.token_type is not TokenType.HEX_STRING or sql[start : start + 2].lower() != "0x":
            continue
        digits = token.text.lstrip("0")
        if len(digits) > _HEX_DIGITS_MAX:
            line, column = _line_column(sql, start)
            raise SqlSyntaxError(f"hex literal too big: {sql[start:end]}", line, column)
        value = int(digits or "0", 16)
        if value > INT64_MAX:
            value -= 1 << 64
        out.append(sql[last:start])
        # Parenthesised when negative: "5-0xff..." must not become the comment "5--1".
        out.append(str(value) if value >= 0 else f"({value})")
        last = end
    out.append(sql[last:])
    return "".join(out)


def _tokenize(sql: str) -> tuple[str, list[Token]]:
    """The text (maybe respaced, see below) and its tokens."""
    try:
        return sql, DIALECT().tokenize(sql)
    except TokenError:
        pass
    # sqlglot's PostgreSQL tokenizer reads ``$1,$2`` as the start of a dollar-quoted
    # string; a space after each parameter number means the same to PostgreSQL and
    # parses. (Columns after a parameter in a later error then shift by one.)
    spaced = _space_parameters(sql)
    if spaced != sql:
        try:
            return spaced, DIALECT().tokenize(spaced)
        except TokenError:
            pass
    line, column = _line_column(sql, _unterminated_at(sql))
    what = "unterminated string, quoted identifier or comment"
    raise SqlSyntaxError(what, line, column) from None


_PARAMETER: Final = re.compile(r"\$[0-9]+(?=[^0-9\s])")


def _space_parameters(sql: str) -> str:
    """``$n`` followed directly by a symbol gets a space after it, outside strings,
    quoted identifiers and comments."""
    out: list[str] = []
    last = 0
    for start, end in _code_spans(sql):
        out.append(sql[last:start])
        out.append(_PARAMETER.sub(lambda m: m.group() + " ", sql[start:end]))
        last = end
    out.append(sql[last:])
    return "".join(out)


def _code_spans(sql: str) -> list[tuple[int, int]]:
    """The stretches of ``sql`` outside strings, quoted identifiers and comments."""
    spans: list[tuple[int, int]] = []
    i = start = 0
    n = len(sql)
    while i < n:
        end = _skip_quoted(sql, i)
        if end == i:
            i += 1
            continue
        spans.append((start, i))
        i = start = n if end < 0 else end
    spans.append((start, n))
    return spans


def _skip_quoted(sql: str, i: int) -> int:
    """Past the string, quoted identifier or comment starting at ``i``: ``i`` if none
    starts there, -1 if it never ends."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return -1 if end < 0 else end + 2
    if sql[i] in "'\"":
        quote, j = sql[i], i + 1
        while True:
            j = sql.find(quote, j)
            if j < 0:
                return -1
            if sql.startswith(quote * 2, j):  # a doubled quote is an escaped one
                j += 2
                continue
            return j + 1
    return i


def _line_column(sql: str, offset: int) -> tuple[int, int]:
    before = sql[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


def _unterminated_at(sql: str) -> int:
    """Where the string, quoted identifier or comment that never ends begins (the only
    way tokenizing fails); the end of the text if none is found."""
    i, n = 0, len(sql)
    while i < n:
        end = _skip_quoted(sql, i)
        if end < 0:
            return i
        i = i + 1 if end == i else end
    return n


def _parse(body: str, sql: str, offset: int) -> list[exp.Expr | None]:
    try:
        return list(sqlglot.parse(body, read=DIALECT))
    except ParseError as exc:
        raise _syntax_error(exc, offset) from None


def _number_qmarks(body: str, tokens: list[Token]) -> str:
    """``?`` placeholders become ``$1, $2, ...`` in the order they appear in the text
    (sqlglot's tree does not keep that order: ``LIMIT`` comes before ``FROM``). The
    first parse, of the text as written, has already reported any syntax error with
    the user's own line and column."""
    marks = [t for t in tokens if t.token_type is TokenType.PLACEHOLDER and t.text == "?"]
    if not marks:
        return body
    if any(t.token_type is TokenType.PARAMETER for t in tokens):
        raise SqlParameterError("a statement uses either ? or $n placeholders, not both")
    out: list[str] = []
    last = 0
    for number, mark in enumerate(marks, 1):
        start = mark.start
        out.append(body[last:start])
        out.append(f"${number} ")
        last = start + 1
    out.append(body[last:])
    return "".join(out)


def _syntax_error(exc: ParseError, offset: int) -> SqlSyntaxError:
    info = exc.errors[0] if exc.errors else {}
    description = str(info.get("description") or "cannot parse")
    description = _TOKEN_REPR.sub(lambda m: _token_words(m.group(1), m.group(2)), description)
    description = _CLASS_REPR.sub(lambda m: m.group(1), description)
    line = int(info.get("line") or 1)
    column = int(info.get("col") or 1)
    if offset and line == 1:  # the EXPLAIN prefix was cut from the first line
        column += offset
    return SqlSyntaxError(description, line, column)


def _token_words(kind: str, text: str) -> str:
    return "the end of the statement" if kind == "SENTINEL" else repr(text)


def _command_name(command: exp.Command) -> str:
    rest = command.expression
    text = f"{command.this} {rest.name if isinstance(rest, exp.Expr) else rest or ''}"
    words = text.split()
    return " ".join(words[:2]).upper() if words else "this statement"
