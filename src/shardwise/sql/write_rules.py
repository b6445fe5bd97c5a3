"""The SQL functions a write may call, and the date and time functions checked as they run.

Every replica of a shard runs the same write statement, so a write may call only functions
whose result depends on their arguments alone and is the same on every machine: an
allow-list (:data:`WRITE_FUNCTIONS`), not a deny-list, so a function added by a newer
SQLite is refused until someone looks at it. Reads are not restricted (a read changes
nothing). The shard enforces the list with SQLite's authorizer (``SQLITE_FUNCTION`` names
the function) before proposing and again when it applies; the coordinator refuses the
same functions before sending. This module is pure (no SQLite, no parser);
``write_functions.py`` applies it to SQLite connections.

Left out on purpose:

* ``random``, ``randomblob``: a value per replica (the coordinator turns them into bound
  values in an INSERT);
* ``changes``, ``last_insert_rowid``, ``total_changes``: a connection's state;
* ``sqlite_version``, ``sqlite_source_id``, ``sqlite_compileoption_*``, ``sqlite_offset``:
  the build or the file's layout, which may differ between replicas;
* ``current_timestamp``, ``current_date``, ``current_time``: the clock (the coordinator
  puts its own instant in their place);
* ``exp``, ``ln``, ``log``, ``log2``, ``log10``, ``pow``, ``power`` and the trigonometric
  functions: libm's results may differ in the last bit between machines (``sqrt``,
  ``ceil``, ``floor``, ``trunc``, ``mod``, ``degrees``, ``radians`` are exact or
  correctly rounded, so they stay);
* ``load_extension``, full-text and R-tree helpers, window functions, ``subtype``;
* shardwise's own aggregates (``shardwise_*``, ``var_*``, ``stddev_*``,
  ``approx_count_distinct``): deterministic, but for reads only.

**Date and time.** ``date``, ``time``, ``datetime``, ``julianday``, ``unixepoch``,
``strftime`` and ``timediff`` are deterministic unless their time value is ``'now'`` (or
missing, which means ``'now'``) or a modifier is ``'localtime'`` or ``'utc'`` (the
machine's time zone). That depends on the values, which may come from a row
(``date(col)`` with a row holding ``'now'``), so a shard replaces them on its connection
(:class:`TimeFunctions`) with functions that check their arguments as they run, refuse in
a write (an error, the same on every replica) and otherwise compute the result with
SQLite's own function, on a private in-memory connection.
"""

from __future__ import annotations

from typing import Final

TIME_FUNCTIONS: Final[dict[str, int]] = {
    "date": 0,
    "time": 0,
    "datetime": 0,
    "julianday": 0,
    "unixepoch": 0,
    "strftime": 1,
    "timediff": 0,
}
"""SQLite's date and time functions, each with the position of its first time value
(``strftime`` takes its format first; ``timediff`` takes two time values)."""

_TWO_TIME_VALUES: Final = frozenset({"timediff"})

ZONE_MODIFIERS: Final = ("localtime", "utc")
"""Modifiers whose result depends on the machine's time zone."""

WRITE_FUNCTIONS: Final = frozenset(
    {
        # core scalars (SQLite's own code: the same result on every machine)
        "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex",
        "ifnull", "iif", "instr", "length", "like", "likelihood", "likely", "lower",
        "ltrim", "max", "min", "nullif", "octet_length", "printf", "quote", "replace",
        "round", "rtrim", "sign", "soundex", "substr", "substring", "trim", "typeof",
        "unhex", "unicode", "unlikely", "upper", "zeroblob",
        # exact or correctly rounded arithmetic
        "ceil", "ceiling", "floor", "trunc", "mod", "pi", "sqrt", "degrees", "radians",
        # aggregates (in a subquery)
        "avg", "count", "group_concat", "string_agg", "sum", "total",
        # JSON
        "->", "->>", "json", "json_array", "json_array_length", "json_error_position",
        "json_extract", "json_group_array", "json_group_object", "json_insert",
        "json_object", "json_patch", "json_pretty", "json_quote", "json_remove",
        "json_replace", "json_set", "json_type", "json_valid", "jsonb", "jsonb_array",
        "jsonb_extract", "jsonb_group_array", "jsonb_group_object", "jsonb_insert",
        "jsonb_object", "jsonb_patch", "jsonb_remove", "jsonb_replace", "jsonb_set",
        # date and time: checked as they run (TimeFunctions)
        *TIME_FUNCTIONS,
    }
)  # fmt: skip
"""The functions a SQL write may call (lower case): see the module's docstring."""


def function_refusal(name: str) -> str:
    """Why a write may not call function ``name`` ("" if it may)."""
    if name.lower() in WRITE_FUNCTIONS:
        return ""
    return (
        f"{name.lower()}() is not allowed in a write: its result may differ between "
        "replicas (see the functions a write may call)"
    )


def time_refusal(name: str, args: tuple[object, ...]) -> str:
    """Why a call of date or time function ``name`` with ``args`` would differ between
    replicas ("" if it would not)."""
    first = TIME_FUNCTIONS[name]
    count = 2 if name in _TWO_TIME_VALUES else 1
    if len(args) < first + count:
        return f"{name}() without a time value reads the clock"
    for value in args[first : first + count]:
        if _text(value).strip() == "now":
            return f"{name}() of 'now' reads the clock"
    for value in args[first + count :]:
        modifier = _text(value)
        for zone in ZONE_MODIFIERS:
            if zone in modifier:
                return f"{name}() with the {zone!r} modifier depends on the server's time zone"
    return ""


def _text(value: object) -> str:
    """The argument as SQLite's date functions read it: a BLOB as its text, and only up
    to the first NUL (they see a C string, so ``'now' || char(0)`` is 'now' to them)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    return value.split("\x00", 1)[0].lower()
