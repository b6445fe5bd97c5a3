"""``shardwise sql`` and the operation rates of ``shardwise status``, without a cluster:
the shell over a scripted stand-in for the client, the rates over made-up server reports.
(``test_up.py`` runs both against a real cluster.)"""

from __future__ import annotations

import builtins
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from shardwise import errors
from shardwise.cli.admin import ControllerState, GroupState, ServerState, Snapshot, _shard_rows
from shardwise.cli.exits import ExitCode, exit_code_for
from shardwise.cli.render import human_rate, status_view
from shardwise.cli.sqlshell import (
    CONTINUATION,
    PROMPT,
    Shell,
    StatementSplitter,
    split_statements,
    syntax_pointer,
)
from shardwise.model.config import Column, Configuration, IndexDef, ShardId, Table
from shardwise.shardserver.protocol import ShardInfo, StatusReply
from shardwise.sql import EXPLAIN_COLUMN, Result
from shardwise.sql.params import Params

# --- cutting input into statements -----------------------------------------------------


def test_statements_end_at_semicolons_outside_strings_identifiers_and_comments() -> None:
    text = (
        "SELECT 'a;b', \"c;d\" FROM t; -- a comment; still one\n"
        "INSERT INTO t VALUES ('it''s; fine') /* ; */ ;\n"
        "SELECT 1"
    )
    assert split_statements(text) == [
        "SELECT 'a;b', \"c;d\" FROM t",
        "-- a comment; still one\nINSERT INTO t VALUES ('it''s; fine') /* ; */",
        "SELECT 1",
    ]
    assert split_statements(" ; -- only a comment;\n /* and another */ ;") == []


def test_a_statement_may_span_lines_strings_included() -> None:
    splitter = StatementSplitter()
    assert splitter.feed("SELECT 'one\n") == []
    assert splitter.pending
    assert splitter.feed("two;' AS x\n") == []  # the ; is inside the string
    assert splitter.feed("FROM t; SELECT\n") == ["SELECT 'one\ntwo;' AS x\nFROM t"]
    assert splitter.pending
    assert splitter.flush() == "SELECT"
    assert not splitter.pending
    assert splitter.feed("-- nothing but a comment\n") == []
    assert not splitter.pending
    assert splitter.feed("/* a comment; on\n") == []
    assert splitter.pending  # a line starting with \ here is not a shell command
    assert splitter.feed("two lines */\n") == []
    assert not splitter.pending
    assert splitter.flush() is None


def test_the_caret_points_at_the_column_of_the_line() -> None:
    pointer = syntax_pointer("SELECT *\nFROM t WHERE a = = 1", 2, 18).plain.split("\n")
    assert pointer == ["LINE 2: FROM t WHERE a = = 1", " " * 25 + "^"]
    assert pointer[0][pointer[1].index("^")] == "="
    # Tabs are expanded in both lines alike; a long line is cut around the column.
    tabbed = syntax_pointer("\tSELEC 1", 1, 6).plain.split("\n")
    assert tabbed[0][tabbed[1].index("^")] == "C"
    long_line = "SELECT " + ", ".join(f"c{i}" for i in range(200)) + " FRM t"
    cut = syntax_pointer(long_line, 1, long_line.index("FRM") + 3).plain.split("\n")
    assert cut[0].startswith("LINE 1: ...") and len(cut[0]) < 120
    assert cut[0][cut[1].index("^")] == "M"
    assert syntax_pointer("SELECT", 5, 1).plain == ""


# --- the shell over a stand-in client -----------------------------------------------------


class FakeClient:
    """Answers statements from a script: a Result, or an error to raise."""

    def __init__(self, answers: dict[str, Result | Exception]) -> None:
        self.answers = answers
        self.ran: list[str] = []
        self.configuration: Configuration | None = None

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        self.ran.append(query)
        answer = self.answers[query]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def copy_rows(
        self,
        table: str,
        columns: Sequence[str] | None,
        rows: Iterable[Sequence[object]],
        *,
        deadline_s: float | None = None,
    ) -> int:
        loaded = [list(row) for row in rows]
        self.ran.append(f"copy {table} {columns} {loaded}")
        return len(loaded)


ITEMS = Table(
    "items",
    "default",
    "id",
    (
        Column("id", "INTEGER NOT NULL"),
        Column("name", "TEXT NOT NULL DEFAULT 'n/a'"),
        Column("price", "REAL"),
    ),
    (IndexDef("items_pkey", ("id",), unique=True), IndexDef("by_name", ("name",))),
)
CONFIG = Configuration(1, {}, {}, {}, {"items": ITEMS})


def make_shell(client: FakeClient, max_rows: int = 1000) -> tuple[Shell, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    shell = Shell(
        client,
        Console(file=out, width=100, color_system=None),
        Console(file=err, width=100, color_system=None),
        catalog=lambda: CONFIG,
        max_rows=max_rows,
    )
    return shell, out, err


SYNTAX = errors.SqlSyntaxError("Invalid expression / Unexpected token", 2, 7)
ANSWERS: dict[str, Result | Exception] = {
    "SELECT * FROM items": Result(
        ("id", "name", "price"), [(1, "[bold]apple[/]", 1.5), (2, None, None), (3, "x", 0.1)]
    ),
    "SELECT data FROM blobs": Result(("data",), [(b"\x01\xff",)]),
    "INSERT INTO items VALUES (1, 'a', 2)": Result((), [], 1),
    "DELETE FROM items": Result((), [], 3),
    "CREATE TABLE t (id INTEGER) WITH (distribution = 'id')": Result(()),
    "EXPLAIN SELECT * FROM items": Result(
        (EXPLAIN_COLUMN,), [("Distributed read of items",), ("  shards: all 8",)]
    ),
    "SELECT *\nFROM items WHERE": SYNTAX,
    "SELECT * FROM nothing": errors.SqlCatalogError("there is no table 'nothing'"),
    "SELECT slow FROM items": errors.ClientTimeoutError("no answer within 10 s"),
}


def test_results_print_as_tables_with_their_count_and_time() -> None:
    shell, out, _ = make_shell(FakeClient(ANSWERS))
    assert shell.run_text("SELECT * FROM items;") == ExitCode.OK
    printed = out.getvalue()
    assert "[bold]apple[/]" in printed  # data is never read as markup
    assert "NULL" in printed
    assert "0.1" in printed
    assert "3 rows (" in printed and " ms)" in printed
    for statement, expected in [
        ("SELECT data FROM blobs", "\\x01ff"),
        ("INSERT INTO items VALUES (1, 'a', 2)", "1 row inserted ("),
        ("DELETE FROM items", "3 rows deleted ("),
        ("CREATE TABLE t (id INTEGER) WITH (distribution = 'id')", "CREATE TABLE ("),
    ]:
        shell, out, _ = make_shell(FakeClient(ANSWERS))
        assert shell.run_text(statement) == ExitCode.OK
        assert expected in out.getvalue(), statement


def test_explain_prints_the_plan_lines_as_they_are() -> None:
    shell, out, _ = make_shell(FakeClient(ANSWERS))
    assert shell.run_text("EXPLAIN SELECT * FROM items") == ExitCode.OK
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["QUERY PLAN", "Distributed read of items", "  shards: all 8"]
    assert lines[3].startswith("2 lines (")


def test_max_rows_limits_what_is_printed_not_what_is_counted() -> None:
    shell, out, _ = make_shell(FakeClient(ANSWERS), max_rows=1)
    shell.run_text("SELECT * FROM items")
    assert "3 rows, the first 1 shown" in out.getvalue()
    assert "0.1" not in out.getvalue()


def test_c_stops_at_the_first_failure_with_its_exit_code() -> None:
    client = FakeClient(ANSWERS)
    shell, _, err = make_shell(client)
    text = "DELETE FROM items; SELECT * FROM nothing; SELECT * FROM items"
    assert shell.run_text(text) == ExitCode.SQL
    assert client.ran == ["DELETE FROM items", "SELECT * FROM nothing"]
    assert "ERROR (catalog): there is no table 'nothing'" in err.getvalue()
    shell, _, err = make_shell(FakeClient(ANSWERS))
    assert shell.run_text("SELECT slow FROM items") == ExitCode.TIMEOUT
    assert "error: no answer within 10 s" in err.getvalue()
    assert shell.run_text(" ;  ") == ExitCode.USAGE


def test_a_syntax_error_shows_a_caret_and_the_pipe_goes_on() -> None:
    client = FakeClient(ANSWERS)
    shell, out, err = make_shell(client)
    lines = ["SELECT *\n", "FROM items WHERE;\n", "DELETE FROM items;\n", "\\q\n", "never run"]
    assert shell.run_lines(lines) == ExitCode.SQL  # the first failure's code
    assert client.ran == ["SELECT *\nFROM items WHERE", "DELETE FROM items"]
    shown = err.getvalue().splitlines()
    assert shown[0].startswith("ERROR (syntax): syntax error at line 2, column 7")
    assert shown[1:3] == ["LINE 2: FROM items WHERE", " " * 14 + "^"]
    assert "3 rows deleted" in out.getvalue()


def test_backslash_d_lists_and_describes_tables() -> None:
    shell, out, err = make_shell(FakeClient(ANSWERS))
    assert shell.run_lines(["\\d\n", "\\d ITEMS;\n"]) == ExitCode.OK
    printed = out.getvalue()
    assert "items_pkey, by_name" in printed
    assert "Table items · keyspace default · distributed by id" in printed
    name_row = next(line for line in printed.splitlines() if line.split()[:1] == ["name"])
    assert name_row.split() == ["name", "TEXT", "not", "null", "'n/a'"]
    id_row = next(line for line in printed.splitlines() if line.split()[:1] == ["id"])
    assert id_row.split()[-1] == "distribution"
    assert shell.run_text("\\d nothing") == ExitCode.SQL
    assert "there is no table 'nothing'" in err.getvalue()
    assert shell.run_text("\\x") == ExitCode.USAGE
    assert "unknown command \\x" in err.getvalue()


def test_backslash_copy_loads_a_csv_file_through_the_bulk_path(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,name\n1,apple\n2,\n")
    client = FakeClient(ANSWERS)
    shell, out, err = make_shell(client)
    assert shell.run_text(f"\\copy items (id, name) FROM '{path}' CSV HEADER") == ExitCode.OK
    assert client.ran == ["copy items ('id', 'name') [['1', 'apple'], ['2', None]]"]
    assert "COPY 2" in out.getvalue()
    assert shell.run_text("\\copy items TO 'x.csv'") == ExitCode.USAGE
    assert "usage: \\copy TABLE" in err.getvalue()
    assert shell.run_text(f"\\copy items FROM '{tmp_path / 'missing.csv'}'") == ExitCode.USAGE
    assert "cannot read" in err.getvalue()
    assert shell.run_text("\\?") == ExitCode.OK
    assert "\\copy TABLE" in out.getvalue()


def scripted_input(
    monkeypatch: pytest.MonkeyPatch, typed: list[str | type[BaseException]]
) -> list[str]:
    """``input()`` answering from ``typed`` (an exception class is raised, as readline
    does for Ctrl-C and Ctrl-D); the prompts it was given."""
    prompts: list[str] = []
    lines: Iterator[str | type[BaseException]] = iter(typed)

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        line = next(lines, EOFError)
        if isinstance(line, str):
            return line
        raise line

    monkeypatch.setattr(builtins, "input", fake_input)
    return prompts


def test_the_interactive_loop_keeps_history_and_survives_errors_and_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = FakeClient(ANSWERS)
    shell, out, err = make_shell(client)
    history = tmp_path / "sql_history"
    typed: list[str | type[BaseException]] = [
        "SELECT *",
        "FROM items WHERE;",  # a syntax error: printed, the shell goes on
        "DELETE FROM",
        KeyboardInterrupt,  # drops the unfinished statement
        "DELETE FROM items;",
        "\\d",
        # Ctrl-D ends it
    ]
    prompts = scripted_input(monkeypatch, typed)
    assert shell.interactive(history) == ExitCode.OK
    assert client.ran == ["SELECT *\nFROM items WHERE", "DELETE FROM items"]
    assert prompts == [PROMPT, CONTINUATION, PROMPT, CONTINUATION, PROMPT, PROMPT, PROMPT]
    assert "LINE 2: FROM items WHERE" in err.getvalue()
    assert "3 rows deleted" in out.getvalue()
    saved = [json.loads(line) for line in history.read_text().splitlines()]
    assert saved == ["SELECT *\nFROM items WHERE;", "DELETE FROM items;", "\\d"]
    assert history.stat().st_mode & 0o777 == 0o600  # statements hold data
    # The next session starts with it, and \q ends that one.
    shell, _, _ = make_shell(FakeClient(ANSWERS))
    scripted_input(monkeypatch, ["\\q", "DELETE FROM items;"])
    assert shell.interactive(history) == ExitCode.OK
    assert [json.loads(line) for line in history.read_text().splitlines()] == [*saved, "\\q"]


def test_a_sql_error_has_its_own_exit_code() -> None:
    assert exit_code_for(errors.SqlConstraintError("UNIQUE", "default/1")) == ExitCode.SQL
    assert exit_code_for(SYNTAX) == ExitCode.SQL
    assert exit_code_for(errors.ClientTimeoutError("x")) == ExitCode.TIMEOUT


# --- operation rates -------------------------------------------------------------------------

SHARD = ShardId("default", 0)
OTHER = ShardId("default", 1)


def reply(node: str, role: str, counts: dict[ShardId, tuple[int, int]]) -> StatusReply:
    shards = [ShardInfo(s, "serving", 1, 4096, reads=r, writes=w) for s, (r, w) in counts.items()]
    return StatusReply(
        node_id=node,
        role=role,
        term=1,
        leader=None,
        commit=1,
        applied=1,
        halted=False,
        gid=1,
        config_num=1,
        shards=shards,
    )


def snapshot(taken_at: float, *replies: StatusReply | None) -> Snapshot:
    config = Configuration(1, {1: ("a", "b", "c")}, {}, {"default": (1, 1)})
    servers = [
        ServerState(node, 1, None, r) for node, r in zip(("a", "b", "c"), replies, strict=True)
    ]
    groups = {1: GroupState(1, True, servers)}
    result = Snapshot(config, [ControllerState("c1", ("h", 1), None)], groups, taken_at=taken_at)
    result.shards = _shard_rows(config, groups)
    return result


def test_rates_come_from_per_server_deltas_across_leader_changes_and_restarts() -> None:
    before = snapshot(
        10.0,
        reply("a", "leader", {SHARD: (100, 40), OTHER: (7, 0)}),
        reply("b", "follower", {SHARD: (50, 10), OTHER: (0, 0)}),
        None,  # down at the first sample: what it counts is left out
    )
    assert before.rate_window_s is None
    after = snapshot(
        12.0,
        # a served 20 reads and 4 writes, then lost the lead to b, which served 30 and 6.
        reply("a", "follower", {SHARD: (120, 44), OTHER: (7, 0)}),
        reply("b", "leader", {SHARD: (80, 16), OTHER: (0, 0)}),
        reply("c", "follower", {SHARD: (999, 999)}),
    )
    after.add_rates(before)
    assert after.rate_window_s == 2.0
    rows = {r.shard: r for r in after.shards}
    assert (rows[SHARD].reads_per_s, rows[SHARD].writes_per_s) == (25.0, 5.0)
    assert rows[SHARD].ops_per_s == 30.0
    assert (rows[SHARD].reads, rows[SHARD].writes) == (120 + 80 + 999, 44 + 16 + 999)
    assert rows[OTHER].ops_per_s == 0.0
    # b restarted: its counter went down, so all it counts now was served in the window.
    a, b = reply("a", "follower", {SHARD: (120, 44)}), reply("b", "leader", {SHARD: (5, 1)})
    restarted = snapshot(13.0, a, b, None)
    restarted.add_rates(after)
    assert restarted.shards[0].reads_per_s == 5.0


def test_status_shows_each_shards_rate_when_sampled() -> None:
    before = snapshot(0.0, reply("a", "leader", {SHARD: (0, 0), OTHER: (0, 0)}), None, None)
    after = snapshot(0.5, reply("a", "leader", {SHARD: (600, 25), OTHER: (1, 0)}), None, None)
    assert "ops/s" not in render(after)
    after.add_rates(before)
    shown = render(after)
    assert "Operations: 1,252/s (1,202 reads, 50 writes) over the last 0.5 s" in shown
    assert "ops/s" in shown
    row = next(line for line in shown.splitlines() if line.split()[:2] == ["0", "1"])
    assert row.split() == ["0", "1", "1", "4.0", "KiB", "1,250", "1", "1", "1", "4.0", "KiB", "2.0"]
    assert after.to_json()["shards"][1]["reads_per_s"] == 2.0
    assert [human_rate(r) for r in (None, 0, 0.25, 12.4, 1250)] == ["-", "0", "0.2", "12", "1,250"]


def render(view: Snapshot) -> str:
    printed = io.StringIO()
    Console(file=printed, width=120, color_system=None).print(status_view(view, {}, 120))
    return printed.getvalue()


# --- the shell over the real SQL layer (issue 18, points 8 to 10) -----------------------


class LocalSqlClient:
    """The shell's client over the real planner and coordinator, on in-process shards."""

    def __init__(self) -> None:
        from shardwise.model.config import Keyspace, Scheme  # noqa: PLC0415
        from shardwise.sql import Coordinator, LocalShards  # noqa: PLC0415

        self.shards = LocalShards([Keyspace("default", Scheme(shards=4))])
        self.coordinator = Coordinator(self.shards, self.shards)
        self.configuration: Configuration | None = None

    def sql(
        self, query: str, params: Params | None = None, *, deadline_s: float | None = None
    ) -> Result:
        import asyncio  # noqa: PLC0415

        return asyncio.run(self.coordinator.execute(query, params))


@pytest.fixture
def real_shell() -> Iterator[tuple[Shell, io.StringIO, io.StringIO]]:
    client = LocalSqlClient()
    shell, out, err = make_shell(client)  # type: ignore[arg-type]
    create = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT) WITH (distribution = 'id')"
    assert shell.run_text(f"{create}; INSERT INTO users VALUES (1, 'ada')") == ExitCode.OK
    yield shell, out, err
    client.shards.close()


def test_result_columns_are_named_as_postgresql_names_them(
    real_shell: tuple[Shell, io.StringIO, io.StringIO],
) -> None:
    shell, out, _ = real_shell
    queries = {
        "SELECT now(), CURRENT_TIMESTAMP, 1 + 1, id::text FROM users": (
            ["now", "current_timestamp", "?column?", "id"]
        ),
        "SELECT approx_count_distinct(name), count(*), max(name) AS shout FROM users": (
            ["approx_count_distinct", "count", "shout"]
        ),
    }
    for query, names in queries.items():
        out.seek(0)
        out.truncate()
        assert shell.run_text(query) == ExitCode.OK
        header = next(line for line in out.getvalue().splitlines() if names[0] in line)
        assert header.split() == names
        assert "%(" not in out.getvalue() and "APPROX_DISTINCT" not in out.getvalue()


def test_show_tables_points_at_backslash_d_without_library_warnings(
    real_shell: tuple[Shell, io.StringIO, io.StringIO],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    shell, _, err = real_shell
    assert shell.run_text("SHOW TABLES") == ExitCode.SQL
    shown = err.getvalue()
    assert "SHOW TABLES is not supported" in shown
    assert "\\d lists the tables" in shown
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]
    assert "Falling back" not in capfd.readouterr().err + shown


def test_the_caret_points_at_a_misspelt_first_word(
    real_shell: tuple[Shell, io.StringIO, io.StringIO],
) -> None:
    shell, _, err = real_shell
    assert shell.run_lines(["SELEC name FROM users;\n"]) == ExitCode.SQL
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("ERROR (syntax): syntax error at line 1, column 1:")
    assert "did you mean SELECT?" in lines[0]
    assert lines[1] == "LINE 1: SELEC name FROM users"
    assert lines[2] == " " * len("LINE 1: ") + "^"


def test_a_global_index_being_built_shows_its_progress_in_the_shell_and_status() -> None:
    from shardwise.cli.catalog_views import table_view  # noqa: PLC0415
    from shardwise.model.config import Keyspace, Scheme  # noqa: PLC0415

    building = IndexDef("by_name", ("name",), scope="global", include=("id",), state="building")
    table = Table("items", "default", "id", (Column("id", "INTEGER"), Column("name", "TEXT")),
                  (IndexDef("items_pkey", ("id",), unique=True), building))  # fmt: skip
    config = Configuration(
        7,
        {1: ("a", "b", "c")},
        {"default": Keyspace("default", Scheme(shards=8))},
        {"default": (1,) * 8},
        {"items": table},
        index_builds={"by_name": (0, 1, 2)},
    )
    printed = io.StringIO()
    Console(file=printed, width=160, color_system=None).print(table_view(table, config))
    row = next(line for line in printed.getvalue().splitlines() if "by_name" in line)
    assert row.split() == [
        "by_name", "name", "global", "id", "building:", "3", "of", "8", "shards", "done"
    ]  # fmt: skip
    view = snapshot(0.0, None, None, None)
    view.config = config
    assert "Building global index by_name of items: 3 of 8 shards done" in render(view)
