"""The list-append serializability checker: a hand-made history for each anomaly class,
valid histories, the JSON-lines form, the command line, the search budget, and property
tests: serial executions (valid by construction) are always valid, planted anomalies are
always caught, and whatever the checker calls invalid a brute-force search cannot
serialize."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from shardwise.errors import HistoryFormatError
from shardwise.testing.serializability import check_list_append, main
from shardwise.testing.txn_graph import (
    RT,
    RW,
    WR,
    WW,
    Budget,
    DependencyGraph,
    cycle_class,
    strongly_connected_components,
)
from shardwise.testing.txn_history import (
    Append,
    BalanceRead,
    Key,
    Read,
    Txn,
    TxnCheckResult,
    TxnStatus,
    Verdict,
    dump_history,
    format_txn,
    load_history,
    parse_history,
    parse_txn,
)

# --- helpers -----------------------------------------------------------------------------


def a(key: Key, element: int) -> Append:
    return Append(key, element)


def r(key: Key, *elements: int) -> Read:
    return Read(key, tuple(elements))


def txn(
    index: int,
    *mops: Read | Append,
    status: TxnStatus = "ok",
    call: float | None = None,
    ret: float | None = None,
) -> Txn:
    """A transaction; by default each in its own time slot, in index order (serial)."""
    start = 10.0 * index if call is None else call
    end = start + 1 if ret is None else ret
    return Txn(index, index % 3, status, mops, start, math.inf if status == "info" else end)


def check(history: Sequence[Txn], realtime: bool = False) -> TxnCheckResult:
    result = check_list_append(history, realtime=realtime)
    assert result.complete, result.explain()
    return result


def only(result: TxnCheckResult, kind: str) -> tuple[int, ...]:
    """The transactions of the one anomaly reported, which must be of type ``kind``."""
    assert result.verdict is Verdict.INVALID, result.explain()
    assert [anomaly.type for anomaly in result.anomalies] == [kind], result.explain()
    return result.anomalies[0].txns


def assert_valid(history: Sequence[Txn], realtime: bool = True) -> None:
    for strict in {False, realtime}:
        result = check(history, realtime=strict)
        assert result.verdict is Verdict.VALID, result.explain()


# --- anomalies, one history each ---------------------------------------------------------


def test_g0_write_cycle() -> None:
    # T1 and T2 both append to x and y, and the final read sees them in opposite orders.
    history = [
        txn(1, a("x", 1), a("y", 1)),
        txn(2, a("x", 2), a("y", 2)),
        txn(3, r("x", 1, 2), r("y", 2, 1)),
    ]
    result = check(history)
    assert set(only(result, "G0")) == {1, 2}
    text = result.anomalies[0].explanation
    assert "T2 appended 2 to x after T1's 1 (ww)" in text
    assert "T1 appended 1 to y after T2's 2 (ww)" in text


def test_g1a_aborted_read() -> None:
    history = [txn(1, a("x", 1), status="fail"), txn(2, r("x", 1))]
    result = check(history)
    assert only(result, "G1a") == (2, 1)
    assert "failed" in result.anomalies[0].explanation


def test_g1b_intermediate_read() -> None:
    history = [txn(1, a("x", 1), a("x", 2)), txn(2, r("x", 1)), txn(3, r("x", 1, 2))]
    assert only(check(history), "G1b") == (2, 1)
    # A transaction may see its own intermediate state.
    assert_valid([txn(1, a("x", 1), r("x", 1), a("x", 2)), txn(2, r("x", 1, 2))])


def test_g1c_circular_information_flow() -> None:
    history = [
        txn(1, a("x", 1), r("y", 1), call=0, ret=5),
        txn(2, a("y", 1), r("x", 1), call=0, ret=5),
    ]
    result = check(history)
    assert set(only(result, "G1c")) == {1, 2}
    assert "(wr)" in result.anomalies[0].explanation


def test_g_single_read_skew() -> None:
    history = [
        txn(1, a("x", 1), a("y", 1), call=0, ret=5),
        txn(2, r("x"), r("y", 1), call=0, ret=5),
        txn(3, r("x", 1), r("y", 1)),
    ]
    result = check(history)
    assert set(only(result, "G-single")) == {1, 2}
    text = result.anomalies[0].explanation
    assert "T2 read x=[] without T1's 1 (rw)" in text
    assert "T2 read y=[1], ending in T1's 1 (wr)" in text


def test_g2_write_skew() -> None:
    history = [
        txn(1, r("x"), a("y", 1), call=0, ret=5),
        txn(2, r("y"), a("x", 1), call=0, ret=5),
        txn(3, r("x", 1), r("y", 1)),
    ]
    result = check(history)
    assert set(only(result, "G2")) == {1, 2}
    assert result.anomalies[0].explanation.count("(rw)") == 2


def test_incompatible_order() -> None:
    history = [txn(1, a("x", 1)), txn(2, a("x", 2)), txn(3, r("x", 1, 2)), txn(4, r("x", 2, 1))]
    result = check(history)
    assert set(only(result, "incompatible-order")) == {3, 4}
    assert "disagree at position 0" in result.anomalies[0].explanation


def test_internal_inconsistency() -> None:
    assert only(check([txn(1, r("x"), a("x", 1), r("x"))]), "internal") == (1,)
    # Without an earlier read, a read must still end with the transaction's own appends.
    history = [txn(1, a("x", 1)), txn(2, a("x", 2), r("x", 1)), txn(3, r("x", 1, 2))]
    assert only(check(history), "internal") == (2,)
    # Two reads of one key, nothing appended in between, must agree.
    history = [txn(1, a("x", 1)), txn(2, r("x"), r("x", 1), call=5, ret=15)]
    assert "internal" in check(history).types


def test_duplicate_elements() -> None:
    history = [txn(1, a("x", 1)), txn(2, r("x", 1, 1))]
    result = check(history)
    assert only(result, "duplicate") == (2,)
    assert "element 1 more than once" in result.anomalies[0].explanation


def test_garbage_element() -> None:
    history = [txn(1, a("x", 1)), txn(2, r("x", 1, 9))]
    result = check(history)
    assert only(result, "garbage") == (2,)
    assert "element 9 that no transaction appended" in result.anomalies[0].explanation


def test_realtime_g_single_stale_read() -> None:
    # T2 starts after T1 has committed yet does not see its append: serializable (T2
    # first), not strictly serializable.
    history = [txn(1, a("x", 1)), txn(2, r("x")), txn(3, r("x", 1))]
    assert check(history).verdict is Verdict.VALID
    result = check(history, realtime=True)
    assert set(only(result, "G-single-realtime")) == {1, 2}
    assert "T1 returned at 11.0 before T2 was called at 20.0 (realtime)" in str(result.anomalies[0])


def test_transactions_that_touch_in_time_are_concurrent() -> None:
    # T1 returns at 11 and T2 is called at 11: T2 may still be serialized first.
    history = [txn(1, a("x", 1), call=10, ret=11), txn(2, r("x"), call=11), txn(3, r("x", 1))]
    assert_valid(history)


def test_realtime_g0_and_g1c() -> None:
    # The final read orders T2's append before T1's, which returned before T2 began.
    g0 = [txn(1, a("x", 2)), txn(2, a("x", 1)), txn(3, r("x", 1, 2))]
    assert check(g0).verdict is Verdict.VALID
    assert set(only(check(g0, realtime=True), "G0-realtime")) == {1, 2}
    # T1 reads an element T2 appends only after T1 has returned: a read from the future.
    g1c = [txn(1, r("x", 1)), txn(2, a("x", 1))]
    assert check(g1c).verdict is Verdict.VALID
    assert set(only(check(g1c, realtime=True), "G1c-realtime")) == {1, 2}


def test_realtime_never_hides_a_serializability_cycle() -> None:
    history = [
        txn(1, a("x", 1), a("y", 1)),
        txn(2, a("x", 2), a("y", 2)),
        txn(3, r("x", 1, 2), r("y", 2, 1)),
    ]
    assert set(only(check(history, realtime=True), "G0")) == {1, 2}


def test_each_component_is_reported_once_with_its_most_severe_class() -> None:
    # One component holding a G0 and a G2 cycle between the same transactions, and an
    # unrelated G1c elsewhere.
    history = [
        txn(1, a("x", 1), a("y", 1), r("z"), call=0, ret=5),
        txn(2, a("x", 2), a("y", 2), a("z", 1), r("w"), call=0, ret=5),
        txn(3, r("x", 1, 2), r("y", 2, 1), r("z", 1), a("w", 1)),
        txn(4, a("u", 1), r("v", 1), call=0, ret=5),
        txn(5, a("v", 1), r("u", 1), call=0, ret=5),
    ]
    result = check(history)
    assert result.counts == {"G0": 1, "G1c": 1}, result.explain()
    assert {frozenset(anomaly.txns) for anomaly in result.anomalies} == {
        frozenset({1, 2}),
        frozenset({4, 5}),
    }


# --- valid histories ---------------------------------------------------------------------


def test_empty_history_is_valid() -> None:
    assert_valid([])
    assert check([]).explain() == "valid: 0 anomalies in 0 transactions"


def test_serial_history_is_valid() -> None:
    assert_valid(
        [
            txn(1, r("x"), a("x", 1), r("x", 1)),
            txn(2, a("x", 2), a("y", 1)),
            txn(3, r("x", 1, 2), r("y", 1), a("y", 2), r("y", 1, 2)),
        ]
    )


def test_concurrent_history_is_valid() -> None:
    # Concurrent transactions may be serialized in an order unlike their calls.
    assert_valid(
        [
            txn(1, a("x", 1), call=0, ret=10),
            txn(2, r("x"), a("y", 1), call=1, ret=11),
            txn(3, r("x", 1), r("y", 1), call=12, ret=13),
        ]
    )


def test_info_and_fail_transactions() -> None:
    assert_valid(
        [
            txn(1, a("x", 1)),
            txn(2, a("x", 2), Read("y"), status="info"),  # committed: seen below
            txn(3, a("x", 3), status="info"),  # never seen: may not have committed
            txn(4, a("x", 4), r("y", 5, 6), status="fail"),  # its read means nothing
            txn(5, r("x", 1, 2)),
        ]
    )


def test_info_transaction_may_commit_after_its_client_gave_up() -> None:
    history = [txn(1, a("x", 1), status="info"), txn(2, r("x")), txn(3, r("x", 1))]
    assert_valid(history)


# --- malformed histories -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([txn(1, a("x", 1)), txn(1, a("x", 2))], "two transactions have index 1"),
        ([txn(1, a("x", 1)), txn(2, a("x", 1))], "appended to x twice"),
        ([txn(1, a("x", 1), a("x", 1))], "appended to x twice"),
        ([txn(1, Read("x"))], "has no value"),
        ([Txn(1, 0, "ok", [BalanceRead("a", 1)], 0, 1)], "not a list-append operation"),
    ],
)
def test_malformed_histories_are_rejected(history: list[Txn], message: str) -> None:
    with pytest.raises(HistoryFormatError, match=message):
        check_list_append(history)


def test_transactions_are_validated() -> None:
    with pytest.raises(HistoryFormatError, match="must have a return time"):
        Txn(1, 0, "ok", [], 0)
    with pytest.raises(HistoryFormatError, match="returns before"):
        Txn(1, 0, "ok", [], 5, 4)
    with pytest.raises(HistoryFormatError, match="status"):
        Txn(1, 0, "done", [], 0, 1)  # type: ignore[arg-type]
    with pytest.raises(HistoryFormatError, match="list of ints"):
        Read("x", ("1",))  # type: ignore[arg-type]
    with pytest.raises(HistoryFormatError, match="str or an int"):
        Append(True, 1)


# --- JSON lines and the command line -----------------------------------------------------


def test_json_lines_round_trip(tmp_path: Path) -> None:
    history = [
        txn(1, a("x", 1), r("x", 1), a(7, 2)),
        txn(2, r("x"), Read(7), status="info", call=3.5),
        txn(3, a("x", 2), status="fail"),
    ]
    path = tmp_path / "h.jsonl"
    dump_history(history, path)
    assert load_history(path) == history
    line = format_txn(history[1])
    assert '"return": null' in line
    assert '["r", 7, null]' in line
    assert parse_txn(line) == history[1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{", "not JSON"),
        ('{"index": 1}', "fields"),
        (
            '{"index": 1, "process": 0, "status": "ok", "call": 0, "return": 1, '
            '"mops": [["write", "x", 1]]}',
            "not a micro-operation",
        ),
        (
            '{"index": 1, "process": 0, "status": "ok", "call": 0, "return": null, "mops": []}',
            "return time",
        ),
    ],
)
def test_malformed_json_lines_name_their_line(line: str, message: str) -> None:
    with pytest.raises(HistoryFormatError, match=rf"h\.jsonl:2: .*{message}"):
        parse_history(["", line], source="h.jsonl")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    valid, invalid, stale, broken = (tmp_path / n for n in ("v", "i", "s", "b"))
    dump_history([txn(1, a("x", 1)), txn(2, r("x", 1))], valid)
    dump_history([txn(1, a("x", 1), status="fail"), txn(2, r("x", 1))], invalid)
    dump_history([txn(1, a("x", 1)), txn(2, r("x")), txn(3, r("x", 1))], stale)
    broken.write_text("not json\n")
    assert main([str(valid)]) == 0
    assert main([str(valid), str(broken)]) == 2
    assert main([str(broken), str(invalid), "--explain"]) == 1
    assert main([str(stale)]) == 0
    assert main([str(stale), "--realtime"]) == 1
    out, err = capsys.readouterr()
    assert f"{valid} valid" in out
    assert f"{invalid} invalid" in out
    assert f"{broken} unknown" in out
    assert "G1a" in err


def test_command_line_runs_as_a_module(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    dump_history([txn(1, a("x", 1)), txn(2, r("x", 2))], path)
    run = subprocess.run(
        [sys.executable, "-m", "shardwise.testing.serializability", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout == f"{path} invalid\n"


# --- the budget --------------------------------------------------------------------------


def ring(n: int) -> list[Txn]:
    """A G-single through ``n`` transactions: T(i) appends to key i and reads key i-1 with
    T(i-1)'s append in it (wr), and the last one also reads key 0 without T0's (rw)."""
    history = [txn(0, a(0, 1), call=0, ret=5)]
    for i in range(1, n):
        mops: list[Read | Append] = [a(i, 1), r(i - 1, 1), *([r(0)] if i == n - 1 else [])]
        history.append(txn(i, *mops, call=0, ret=5))
    history.append(txn(n, *(r(i, 1) for i in range(n))))
    return history


def test_ring_is_one_g_single() -> None:
    result = check(ring(30))
    assert only(result, "G-single") == (29, *range(29))
    explanation = result.anomalies[0].explanation
    assert explanation.startswith("T29 -> T0 -> T1 -> T2 -> T3 -> ... 20 more -> T25 -> ")
    assert "T29 read 0=[] without T0's 1 (rw)" in explanation
    assert "... 20 more edges" in explanation


def test_out_of_search_budget_still_reports_a_cycle() -> None:
    result = check_list_append(ring(30), max_steps=5)
    assert result.verdict is Verdict.INVALID
    assert not result.complete
    assert "ran out of budget" in result.explain()
    assert result.anomalies[0].type in {"G-single", "G2"}


def test_timeout_while_building_the_graph_is_unknown() -> None:
    ticks = itertools.count()
    history = [txn(i, a("x", i)) for i in range(3000)]
    history.append(txn(3000, r("x", *range(3000))))
    result = check_list_append(history, timeout=0.5, clock=lambda: float(next(ticks)))
    assert result.verdict is Verdict.UNKNOWN, result.explain()
    assert "timed out" in result.explain()
    assert check(history).verdict is Verdict.VALID


# --- the graph module --------------------------------------------------------------------


def test_tarjan_finds_nested_and_separate_components() -> None:
    graph: DependencyGraph[None] = DependencyGraph()
    for source, target in [(1, 2), (2, 3), (3, 1), (3, 4), (4, 5), (5, 4), (6, 7), (7, 7)]:
        graph.add(source, target, WW, None)
    assert strongly_connected_components(graph, WW, Budget()) == [[1, 2, 3], [4, 5]]
    assert strongly_connected_components(graph, WR, Budget()) == []
    # Deep chains do not overflow the recursion limit.
    chain: DependencyGraph[None] = DependencyGraph()
    for i in range(20_000):
        chain.add(i, i + 1, WW, None)
    chain.add(20_000, 0, WW, None)
    assert len(strongly_connected_components(chain, WW, Budget())[0]) == 20_001


def test_cycle_classes() -> None:
    assert cycle_class([WW, WW]) == "G0"
    assert cycle_class([WW, WR]) == "G1c"
    assert cycle_class([RW, WR, WW]) == "G-single"
    assert cycle_class([RW, RW]) == "G2"
    assert cycle_class([RW, RT]) == "G-single-realtime"
    assert cycle_class([WW, RT]) == "G0-realtime"


# --- property tests ----------------------------------------------------------------------

KEYS = ("x", "y", "z")


@st.composite
def serial_histories(draw: st.DrawFn, max_txns: int = 20) -> list[Txn]:
    """A serial execution of random list-append transactions against a model, dressed up:
    each transaction's interval contains its point in the serial order (so real time agrees
    with it), some fail (no effect), some are ``info`` (effect or not, reads unknown).

    It starts with a transaction appending two elements to each key and ends with two
    reading every key, so that planted anomalies always have material to work with."""
    keys = KEYS[: draw(st.integers(1, len(KEYS)))]
    state: dict[Key, tuple[int, ...]] = {key: () for key in keys}
    next_element = itertools.count(1)
    bodies: list[tuple[TxnStatus, list[Read | Append]]] = [
        ("ok", [a(key, next(next_element)) for key in keys for _ in range(2)])
    ]
    for _ in range(draw(st.integers(0, max_txns))):
        status: TxnStatus = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
        plan = draw(
            st.lists(st.tuples(st.booleans(), st.sampled_from(keys)), min_size=1, max_size=4)
        )
        bodies.append(
            (status, [a(key, next(next_element)) if write else Read(key) for write, key in plan])
        )
    bodies += [("ok", [Read(key) for key in keys])] * 2

    history: list[Txn] = []
    indexes = draw(st.permutations(range(len(bodies))))
    for point, (status, mops) in enumerate(bodies):
        # An info transaction may or may not have taken effect; a failed one did not.
        applies = status == "ok" or (status == "info" and draw(st.booleans()))
        done: list[Read | Append] = []
        view = dict(state)
        for mop in mops:
            if isinstance(mop, Append):
                view[mop.key] = (*view[mop.key], mop.element)
                done.append(mop)
            else:
                done.append(Read(mop.key, view[mop.key] if status == "ok" else None))
        if applies:
            state = view
        call = 10 * point - draw(st.integers(0, 25))
        ret = math.inf if status == "info" else 10 * point + draw(st.integers(0, 25))
        history.append(Txn(indexes[point], point % 4, status, done, call, ret))
    return history


@given(serial_histories())
def test_serial_executions_are_valid(history: list[Txn]) -> None:
    assert_valid(history)
    assert parse_history(format_txn(t) for t in history) == history


def ok_reads(history: Sequence[Txn]) -> list[tuple[int, int]]:
    """(position in history, position in mops) of every ok read."""
    return [
        (i, j)
        for i, t in enumerate(history)
        if t.status == "ok"
        for j, mop in enumerate(t.mops)
        if isinstance(mop, Read)
    ]


def with_read(history: list[Txn], at: tuple[int, int], value: tuple[int, ...]) -> list[Txn]:
    i, j = at
    old = history[i]
    mops = list(old.mops)
    mop = mops[j]
    assert isinstance(mop, Read)
    mops[j] = Read(mop.key, value)
    changed = Txn(old.index, old.process, old.status, mops, old.call_time, old.return_time)
    return [*history[:i], changed, *history[i + 1 :]]


def read_at(history: Sequence[Txn], at: tuple[int, int]) -> Read:
    mop = history[at[0]].mops[at[1]]
    assert isinstance(mop, Read)
    return mop


def reorder_plant(
    data: st.DataObject,
    history: list[Txn],
    edit: Callable[[tuple[int, ...], int], tuple[int, ...]],
) -> list[Txn]:
    """Edit a read at a position ``p`` (not its last element) that another read of the key
    also covers: the two then disagree at ``p``, whatever else the edit does."""
    reads = ok_reads(history)
    candidates = [
        (at, p)
        for at in reads
        for p in range(len(read_at(history, at).value or ()) - 1)
        if any(
            other != at
            and read_at(history, other).key == read_at(history, at).key
            and len(read_at(history, other).value or ()) > p
            for other in reads
        )
    ]
    at, p = data.draw(st.sampled_from(candidates))
    value = read_at(history, at).value
    assert value is not None
    return with_read(history, at, edit(value, p))


@given(serial_histories(), st.data())
def test_planted_anomalies_are_caught(history: list[Txn], data: st.DataObject) -> None:
    draw = data.draw
    plant = draw(st.sampled_from(["drop", "swap", "aborted", "duplicate", "garbage"]))
    if plant == "drop":
        planted = reorder_plant(data, history, lambda v, p: v[:p] + v[p + 1 :])
        expected = "incompatible-order"
    elif plant == "swap":
        planted = reorder_plant(data, history, lambda v, p: (*v[:p], v[p + 1], v[p], *v[p + 2 :]))
        expected = "incompatible-order"
    else:
        at = draw(st.sampled_from(ok_reads(history)))
        read = read_at(history, at)
        value = read.value or ()
        fresh = 1 + max(m.element for t in history for m in t.mops if isinstance(m, Append))
        if plant == "aborted":
            failed = Txn(max(t.index for t in history) + 1, 9, "fail", [a(read.key, fresh)], 0, 1)
            planted = [*with_read(history, at, (*value, fresh)), failed]
            expected = "G1a"
        elif plant == "duplicate":
            value = value or (fresh,)
            planted = with_read(history, at, (*value, value[0]))
            expected = "duplicate"
        else:
            planted = with_read(history, at, (*value, fresh))
            expected = "garbage"
    for realtime in (False, True):
        result = check(planted, realtime=realtime)
        assert result.verdict is Verdict.INVALID, result.explain()
        assert expected in result.types, result.explain()


@st.composite
def skewed_histories(draw: st.DrawFn) -> tuple[list[Txn], str]:
    """A serial history with a classic anomaly spliced in before its final reads (which
    are redone to see it), and the class it must be reported as.

    * ``write-skew``: A reads k1 and appends to k2, B reads k2 and appends to k1, both from
      the same snapshot (a G2; a G-single when k1 = k2, a lost update);
    * ``read-skew``: W appends to k1 and k2; R reads k1 before W and k2 after (a G-single).
    """
    history = draw(serial_histories())
    *body, final, _ = history
    state = {m.key: m.value or () for m in final.mops if isinstance(m, Read)}
    keys = sorted(state, key=str)
    k1, k2 = draw(st.permutations(keys))[:2] if len(keys) > 1 else (keys[0], keys[0])
    e1 = 1 + max(m.element for t in history for m in t.mops if isinstance(m, Append))
    e2 = e1 + 1
    first = max(t.index for t in history) + 1
    kind = draw(st.sampled_from(["write-skew", "read-skew"] if k1 != k2 else ["write-skew"]))
    call, ret = final.call_time - 2, final.call_time - 1
    if kind == "write-skew":
        spliced = [
            txn(first, Read(k1, state[k1]), a(k2, e1), call=call, ret=ret),
            txn(first + 1, Read(k2, state[k2]), a(k1, e2), call=call, ret=ret),
        ]
        state[k2] += (e1,)
        state[k1] += (e2,)
        expected = "G2" if k1 != k2 else "G-single"
    else:
        spliced = [
            txn(first, a(k1, e1), a(k2, e2), call=call, ret=ret),
            txn(first + 1, Read(k1, state[k1]), Read(k2, (*state[k2], e2)), call=call, ret=ret),
        ]
        state[k1] += (e1,)
        state[k2] += (e2,)
        expected = "G-single"
    finals = [
        Txn(
            t.index,
            t.process,
            t.status,
            [Read(k, state[k]) for k in state],
            t.call_time,
            t.return_time,
        )
        for t in history[-2:]
    ]
    return [*body, *spliced, *finals], expected


@given(skewed_histories())
def test_spliced_cycles_are_caught_with_their_class(generated: tuple[list[Txn], str]) -> None:
    history, expected = generated
    for realtime in (False, True):
        result = check(history, realtime=realtime)
        assert result.counts == {expected: 1}, result.explain()


# --- soundness against a brute-force search ----------------------------------------------


def brute_force_serializable(history: Sequence[Txn], realtime: bool) -> bool:
    """Whether some order of the ok transactions and of a subset of the info ones, applied
    to empty lists, gives every ok read its value (respecting real time if asked)."""
    oks = [t for t in history if t.status == "ok"]
    infos = [t for t in history if t.status == "info"]
    for size in range(len(infos) + 1):
        for chosen in itertools.combinations(infos, size):
            for order in itertools.permutations([*oks, *chosen]):
                if realtime and any(
                    later.status == "ok" and later.return_time < earlier.call_time
                    for i, earlier in enumerate(order)
                    for later in order[i + 1 :]
                ):
                    continue
                if _explains(order):
                    return True
    return False


def _explains(order: Sequence[Txn]) -> bool:
    state: dict[Key, tuple[int, ...]] = {}
    for t in order:
        for mop in t.mops:
            if isinstance(mop, Append):
                state[mop.key] = (*state.get(mop.key, ()), mop.element)
            elif t.status == "ok" and isinstance(mop, Read) and state.get(mop.key, ()) != mop.value:
                return False
    return True


@st.composite
def mutated_small_histories(draw: st.DrawFn) -> list[Txn]:
    """A small serial history (its seed and final reads included: at most 6 transactions)
    with up to two reads replaced by a near miss of their true value."""
    history = draw(serial_histories(max_txns=3))
    for _ in range(draw(st.integers(0, 2))):
        reads = ok_reads(history)
        at = draw(st.sampled_from(reads))
        value = read_at(history, at).value or ()
        elements = sorted(m.element for t in history for m in t.mops if isinstance(m, Append))
        candidates = [value[:-1], value[1:], (*value, *elements[:1]), tuple(reversed(value))]
        candidates += [value[:i] + value[i + 1 :] for i in range(len(value))]
        candidates += [(*value, e) for e in elements if e not in value]
        history = with_read(history, at, draw(st.sampled_from(candidates)))
    return history


@given(mutated_small_histories(), st.booleans())
def test_what_is_reported_invalid_cannot_be_serialized(history: list[Txn], realtime: bool) -> None:
    # Sound, not complete: a serializable history is never called invalid, but a stale
    # read that no other read contradicts goes unnoticed.
    result = check(history, realtime=realtime)
    if brute_force_serializable(history, realtime):
        assert result.verdict is Verdict.VALID, result.explain()
    else:
        event(f"not serializable, found {sorted(result.types)}")
