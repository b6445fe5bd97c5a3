"""The linearizability checker: Jepsen's etcd histories with known verdicts, hand-written
histories, the Jepsen parser, the command line, and differential tests against a naive
search."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from shardwise.errors import HistoryFormatError
from shardwise.testing.history import (
    load_jepsen_register_history,
    parse_jepsen_register_history,
)
from shardwise.testing.linearizability import (
    BUDGET_CHECK_INTERVAL_STEPS,
    UNKNOWN_OUTPUT,
    CheckResult,
    KvModel,
    KvOp,
    Model,
    Operation,
    RegisterOp,
    Verdict,
    check,
    kv_model,
    main,
    register_model,
)

JEPSEN_DIR_ENV = "SHARDWISE_JEPSEN_DIR"
CHECK_TIMEOUT_S = 20.0  # per history; the slowest Jepsen file takes about 0.1 s


def jepsen_dir() -> Path:
    configured = os.environ.get(JEPSEN_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "jepsen-etcd-histories"


def jepsen_expected() -> dict[str, bool]:
    """File name -> whether it is linearizable; fails (never skips) when the data is absent."""
    expected = jepsen_dir() / "expected.txt"
    if not expected.is_file():
        pytest.fail(
            f"Jepsen histories not found: {expected} is missing. They live in "
            f"../shared/data/jepsen-etcd-histories beside the repository; set {JEPSEN_DIR_ENV} "
            "to point elsewhere."
        )
    verdicts: dict[str, bool] = {}
    for line in expected.read_text().splitlines():
        if line.strip():
            name, verdict = line.split()
            verdicts[name] = verdict == "true"
    return verdicts


def _jepsen_cases() -> list[str]:
    # Collection must not fail outright when the folder is missing: one case stands in for
    # it and fails with the explanation from jepsen_expected().
    folder = jepsen_dir()
    names = sorted(path.name for path in folder.glob("*.log")) if folder.is_dir() else []
    return names or ["<no Jepsen histories>"]


# --- helpers -----------------------------------------------------------------------------


def read() -> RegisterOp:
    return RegisterOp("read")


def write(value: Hashable) -> RegisterOp:
    return RegisterOp("write", value)


def cas(expected: Hashable, new: Hashable) -> RegisterOp:
    return RegisterOp("cas", expected, new)


def done(client: Hashable, input: Any, output: Any, call: float, ret: float) -> Operation:
    return Operation(client, input, output, call, ret)


def timed_out(client: Hashable, input: Any, call: float) -> Operation:
    return Operation(client, input, UNKNOWN_OUTPUT, call)


def verdict(history: list[Operation], model: Model[Any] = register_model) -> Verdict:
    result = check(model, history, timeout=CHECK_TIMEOUT_S)
    assert result.verdict is not Verdict.UNKNOWN, result.explain()
    return result.verdict


LIN = Verdict.LINEARIZABLE
NOT = Verdict.NOT_LINEARIZABLE


def jepsen_text(*events: tuple[int | str, str, str, str]) -> str:
    return "".join(f"INFO  jepsen.util - {p}\t:{t}\t:{f}\t{v}\n" for p, t, f, v in events)


def pathological_history(writers: int = 20) -> list[Operation]:
    """Concurrent writes of distinct values, then a read of a value none of them wrote.

    The read proves the history wrong only after every order of every subset of the writes
    has been ruled out: about ``writers * 2**writers`` configurations, even memoized."""
    history = [done(w, write(w), None, 0, 1) for w in range(writers)]
    history.append(done("reader", read(), -1, 2, 3))
    return history


# --- Jepsen etcd histories ---------------------------------------------------------------


@pytest.mark.parametrize("name", _jepsen_cases())
def test_jepsen_history_gets_its_expected_verdict(name: str) -> None:
    expected = jepsen_expected()
    assert name in expected, f"{name} has no verdict in expected.txt"
    history = load_jepsen_register_history(jepsen_dir() / name)
    result = check(register_model, history, timeout=CHECK_TIMEOUT_S)
    want = LIN if expected[name] else NOT
    assert result.verdict is want, result.explain()


def test_every_expected_jepsen_verdict_has_its_file() -> None:
    missing = [name for name in jepsen_expected() if not (jepsen_dir() / name).is_file()]
    assert not missing


# --- hand-written register histories -----------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert verdict([]) is LIN
    assert verdict([], kv_model) is LIN


def test_sequential_history() -> None:
    history = [
        done(0, read(), None, 0, 1),
        done(0, write(1), None, 2, 3),
        done(1, read(), 1, 4, 5),
        done(1, cas(1, 2), True, 6, 7),
        done(0, cas(1, 3), False, 8, 9),
        done(0, read(), 2, 10, 11),
    ]
    assert verdict(history) is LIN


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    writes = [done(0, write(1), None, 0, 10), done(1, write(2), None, 1, 11)]
    assert verdict([*writes, done(2, read(), 1, 12, 13)]) is LIN
    assert verdict([*writes, done(2, read(), 2, 12, 13)]) is LIN
    # Once both writes are over, successive reads cannot see them in both orders.
    assert verdict([*writes, done(2, read(), 2, 12, 13), done(2, read(), 1, 14, 15)]) is NOT
    # A read concurrent with both may see the first write before the second lands.
    assert verdict([*writes, done(2, read(), 1, 5, 6), done(2, read(), 2, 12, 13)]) is LIN


def test_stale_read_is_reported_with_the_operations_involved() -> None:
    history = [
        done(0, write(1), None, 0, 1),
        done(0, write(2), None, 2, 3),
        done(1, read(), 1, 4, 5),
    ]
    result = check(register_model, history)
    assert result.verdict is NOT
    assert result.partition == 0
    assert result.linearized == tuple(history[:2])
    assert result.stuck == history[2]
    assert "cannot place" in result.explain()


def test_read_of_a_never_written_value() -> None:
    assert verdict([done(0, read(), 7, 0, 1)]) is NOT


def test_operations_that_touch_in_time_count_as_concurrent() -> None:
    # The write returns at 5 and the read is called at 5: the read may come first.
    history = [done(0, write(1), None, 0, 5), done(1, read(), None, 5, 6)]
    assert verdict(history) is LIN


def test_unknown_write_that_later_becomes_visible() -> None:
    history = [
        timed_out(0, write(1), 0),
        done(1, read(), None, 10, 11),
        done(1, read(), 1, 20, 21),
        done(1, read(), 1, 30, 31),
    ]
    assert verdict(history) is LIN


def test_unknown_write_that_never_becomes_visible() -> None:
    history = [timed_out(0, write(1), 0), done(1, read(), None, 10, 11)]
    assert verdict(history) is LIN


def test_unknown_write_cannot_be_seen_before_it_is_called() -> None:
    history = [done(1, read(), 1, 0, 1), timed_out(0, write(1), 2)]
    assert verdict(history) is NOT


def test_unknown_write_takes_effect_once() -> None:
    # Seen, then overwritten: it cannot reappear afterwards.
    history = [
        timed_out(0, write(1), 0),
        done(1, read(), 1, 10, 11),
        done(1, write(2), None, 12, 13),
        done(1, read(), 1, 14, 15),
    ]
    assert verdict(history) is NOT


def test_many_unknown_operations_need_not_be_linearized() -> None:
    history = [timed_out(w, write(w), 0) for w in range(60)]
    history.append(done("reader", read(), None, 1, 2))
    result = check(register_model, history)
    assert result.verdict is LIN
    assert result.steps < 200


def test_identical_unknown_operations_are_not_told_apart() -> None:
    # 40 timed-out writes in two groups of equal values, and a read that none explains:
    # the search must rule out every way to place the writes. Telling the writes of a
    # group apart would make that 2**40 subsets; taken in call order, it is 21 * 21.
    history = [timed_out(w, write(w % 2), 0) for w in range(40)]
    history.append(done("reader", read(), 7, 1, 2))
    result = check(register_model, history, max_steps=100_000)
    assert result.verdict is NOT
    assert result.steps < 50_000  # 18,943 when written


def test_cas() -> None:
    assert verdict([done(0, cas(None, 1), True, 0, 1), done(0, read(), 1, 2, 3)]) is LIN
    assert verdict([done(0, cas(5, 1), True, 0, 1)]) is NOT
    assert verdict([done(0, cas(None, 1), False, 0, 1)]) is NOT
    # A concurrent write explains a failed compare.
    history = [done(0, cas(None, 1), False, 0, 3), done(1, write(2), None, 1, 2)]
    assert verdict(history) is LIN


def test_unknown_cas_applies_only_if_its_compare_holds() -> None:
    history = [
        done(0, write(1), None, 0, 1),
        timed_out(1, cas(1, 2), 2),
        done(0, read(), 2, 3, 4),
    ]
    assert verdict(history) is LIN
    history[1] = timed_out(1, cas(3, 2), 2)
    assert verdict(history) is NOT


def test_operation_rejects_inconsistent_times_and_outputs() -> None:
    with pytest.raises(HistoryFormatError):
        Operation(0, read(), None, 5, 4)
    with pytest.raises(HistoryFormatError):
        Operation(0, read(), None, math.inf, math.inf)
    with pytest.raises(HistoryFormatError):
        Operation(0, read(), 3, 5)  # never returned, yet has an output


# --- the key-value model -----------------------------------------------------------------


def test_kv_operations() -> None:
    history = [
        done(0, KvOp("get", "k"), None, 0, 1),
        done(0, KvOp("put", "k", "a"), None, 2, 3),
        done(0, KvOp("append", "k", "b"), None, 4, 5),
        done(0, KvOp("get", "k"), "ab", 6, 7),
        done(0, KvOp("cas", "k", "ab", "c"), True, 8, 9),
        done(0, KvOp("cas", "k", "ab", "d"), False, 10, 11),
        done(0, KvOp("delete", "k"), None, 12, 13),
        done(0, KvOp("append", "k", "e"), None, 14, 15),
        done(0, KvOp("get", "k"), "e", 16, 17),
        done(0, KvOp("cas", "missing", None, "f"), True, 18, 19),
        done(0, KvOp("get", "missing"), "f", 20, 21),
    ]
    assert verdict(history, kv_model) is LIN


def test_kv_history_is_split_by_key() -> None:
    history = [
        done(0, KvOp("put", "x", 1), None, 0, 1),
        done(1, KvOp("put", "y", 1), None, 0, 1),
        done(0, KvOp("get", "y"), 1, 2, 3),
        done(1, KvOp("get", "x"), 1, 2, 3),
    ]
    parts = kv_model.partition(history)
    assert [{op.input.key for op in part} for part in parts] == [{"x"}, {"y"}]
    assert verdict(history, kv_model) is LIN


def test_kv_violation_names_the_key() -> None:
    history = [
        done(0, KvOp("put", "x", 1), None, 0, 1),
        done(0, KvOp("put", "y", 1), None, 2, 3),
        done(1, KvOp("put", "y", 2), None, 4, 5),
        done(1, KvOp("get", "x"), 1, 6, 7),
        done(0, KvOp("get", "y"), 1, 6, 7),  # stale
    ]
    result = check(kv_model, history)
    assert result.verdict is NOT
    assert {op.input.key for op in result.history} == {"y"}
    assert result.stuck == history[4]


class UnpartitionedKvModel(KvModel):
    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return [list(history)]


def test_kv_partitioning_keeps_independent_keys_cheap() -> None:
    # Per key, concurrent puts and a later get of the first value put: the search must
    # backtrack through the orders of that key's puts. Over the whole history it would
    # backtrack through every other key's puts as well.
    history = []
    for key in range(10):
        history += [done(i, KvOp("put", key, i), None, 0, 1) for i in range(8)]
        history.append(done("reader", KvOp("get", key), 0, 2, 3))
    partitioned = check(kv_model, history)
    assert partitioned.verdict is LIN
    assert partitioned.steps < 30_000  # 23,050 when written
    whole = check(UnpartitionedKvModel(), history, max_steps=4 * partitioned.steps)
    assert whole.verdict is Verdict.UNKNOWN


# --- budget: deadline and step limit -----------------------------------------------------


class FakeClock:
    """Advances one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 1.0
        return self.now


def test_deadline_turns_a_hopeless_search_into_unknown() -> None:
    clock = FakeClock()
    result = check(register_model, pathological_history(), timeout=5.0, clock=clock)
    assert result.verdict is Verdict.UNKNOWN
    assert clock.reads == 7  # at the start, then at each look at the budget until past 5 s
    assert result.partition == 0
    assert result.linearized  # how far it got


def test_step_limit_turns_a_hopeless_search_into_unknown() -> None:
    result = check(register_model, pathological_history(), max_steps=10_000)
    assert result.verdict is Verdict.UNKNOWN
    assert 10_000 < result.steps <= 10_000 + BUDGET_CHECK_INTERVAL_STEPS


def test_a_verdict_reached_within_the_budget_stands() -> None:
    assert check(register_model, pathological_history(8), max_steps=10**6).verdict is NOT


def test_wall_clock_deadline() -> None:
    started = time.monotonic()
    result = check(register_model, pathological_history(), timeout=0.0)
    assert result.verdict is Verdict.UNKNOWN
    assert time.monotonic() - started < 5.0


# --- the Jepsen parser -------------------------------------------------------------------


def test_parse_jepsen_register_history() -> None:
    text = jepsen_text(
        (0, "invoke", "read", "nil"),
        (1, "invoke", "write", "3"),
        (0, "ok", "read", "nil"),
        (2, "invoke", "cas", "[3 4]"),
        (1, "info", "write", ":timed-out"),  # process 1 is retired
        (2, "ok", "cas", "[3 4]"),
        (3, "invoke", "cas", "[nil 1]"),
        (3, "fail", "cas", "[nil 1]"),
        (0, "invoke", "read", "nil"),
        (0, "ok", "read", "4"),
        (5, "invoke", "read", "nil"),
        (5, "info", "read", ":timed-out"),  # may not have happened: explains nothing
        (4, "invoke", "write", "-2"),  # still pending at the end
        (6, "invoke", "read", "nil"),  # likewise, but a read
    )
    assert parse_jepsen_register_history(text.splitlines(), "h.log") == [
        done(0, read(), None, 1, 3),
        timed_out(1, write(3), 2),
        done(2, cas(3, 4), True, 4, 6),
        done(0, read(), 4, 9, 10),
        timed_out(4, write(-2), 13),
    ]


def test_parse_accepts_spaces_blank_lines_and_nemesis() -> None:
    lines = [
        "INFO  jepsen.util - 0   :invoke :write  1",
        "",
        "INFO  jepsen.util - :nemesis\t:info\t:start\tnil",
        "INFO  jepsen.util - 0   :ok     :write  1",
    ]
    assert parse_jepsen_register_history(lines) == [done(0, write(1), None, 1, 4)]


def test_a_retired_process_number_may_be_used_again() -> None:
    text = jepsen_text(
        (1, "invoke", "write", "1"),
        (1, "info", "write", ":timed-out"),
        (1, "invoke", "read", "nil"),
        (1, "ok", "read", "1"),
    )
    history = parse_jepsen_register_history(text.splitlines())
    assert history == [timed_out(1, write(1), 1), done(1, read(), 1, 3, 4)]
    assert verdict(history) is LIN


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([(0, "ok", "read", "1")], "never invoked"),
        ([(0, "invoke", "read", "nil"), (0, "invoke", "read", "nil")], "invoked again"),
        ([(0, "invoke", "read", "nil"), (0, "ok", "write", "1")], "invoked :read"),
        ([(0, "invoke", "write", "x")], "unsupported register value"),
        ([(0, "invoke", "cas", "[1]")], "cas takes"),
        ([(0, "invoke", "cas", "1 2")], "cas takes"),
        ([(0, "invoke", "add", "1")], "unsupported register operation"),
        ([(0, "start", "read", "nil")], "unknown event type"),
        ([("p", "invoke", "read", "nil")], "not a number"),
        ([(0, "invoke", "write", "1"), (0, "ok", "write", "2")], "differs"),
        ([(0, "invoke", "read", "nil"), (0, "ok", "read", ":timed-out")], "unsupported"),
    ],
)
def test_malformed_lines_name_file_and_line(
    events: list[tuple[int | str, str, str, str]], message: str
) -> None:
    lines = jepsen_text(*events).splitlines()
    with pytest.raises(HistoryFormatError, match=rf"^bad\.log:{len(lines)}: .*{message}"):
        parse_jepsen_register_history(lines, "bad.log")


def test_a_line_that_is_not_jepsen() -> None:
    with pytest.raises(HistoryFormatError, match=r"^x:2: not a Jepsen history line"):
        parse_jepsen_register_history(["", "WARN something else"], "x")


# --- command line ------------------------------------------------------------------------


def test_command_line_on_two_files() -> None:
    expected = jepsen_expected()
    good = next(jepsen_dir() / name for name, ok in sorted(expected.items()) if ok)
    bad = next(jepsen_dir() / name for name, ok in sorted(expected.items()) if not ok)
    run = subprocess.run(
        [sys.executable, "-m", "shardwise.testing.linearizability", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout == f"{good} linearizable\n{bad} not-linearizable\n"
    assert run.returncode == 1, run.stderr


@pytest.fixture
def history_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "good": jepsen_text((0, "invoke", "write", "1"), (0, "ok", "write", "1")),
        "bad": jepsen_text((0, "invoke", "read", "nil"), (0, "ok", "read", "1")),
        "malformed": "INFO  jepsen.util - 0\t:ok\t:read\t1\n",
        "hard": jepsen_text(
            *[(p, "invoke", "write", str(p)) for p in range(20)],
            *[(p, "ok", "write", str(p)) for p in range(20)],
            (20, "invoke", "read", "nil"),
            (20, "ok", "read", "-1"),
        ),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.log"
        paths[name].write_text(text)
    return paths


@pytest.mark.parametrize(
    ("names", "status"),
    [
        (["good", "good"], 0),
        (["good", "bad"], 1),
        (["good", "malformed"], 2),
        (["hard"], 2),
        (["malformed", "bad"], 1),  # a definite violation outranks an inconclusive file
    ],
)
def test_command_line_exit_status(
    history_files: dict[str, Path],
    names: list[str],
    status: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    words = {"good": "linearizable", "bad": "not-linearizable"}
    args = ["--timeout", "0", *(str(history_files[name]) for name in names)]
    assert main(args) == status
    out = capsys.readouterr().out
    assert out == "".join(f"{history_files[name]} {words.get(name, 'unknown')}\n" for name in names)


# --- properties --------------------------------------------------------------------------

SMALL_VALUES = st.sampled_from([None, 1, 2])
REGISTER_INPUTS = st.one_of(
    st.just(read()),
    st.builds(write, st.sampled_from([1, 2])),
    st.builds(cas, SMALL_VALUES, st.sampled_from([1, 2])),
)
KEYS = st.sampled_from(["a", "b"])
STRINGS = st.sampled_from(["x", "y"])
KV_INPUTS = st.one_of(
    st.builds(KvOp, st.just("get"), KEYS, st.none(), st.none()),
    st.builds(KvOp, st.just("put"), KEYS, st.one_of(st.none(), STRINGS), st.none()),
    st.builds(KvOp, st.just("append"), KEYS, STRINGS, st.none()),
    st.builds(KvOp, st.just("delete"), KEYS, st.none(), st.none()),
    st.builds(KvOp, st.just("cas"), KEYS, st.one_of(st.none(), STRINGS), STRINGS),
)


def run_register(store: dict[Hashable, Any], op: RegisterOp) -> Any:
    """The real thing the model specifies: one variable."""
    current = store.get("register")
    if op.kind == "write":
        store["register"] = op.value
        return None
    if op.kind == "cas":
        if current == op.value:
            store["register"] = op.new
        return current == op.value
    return current


def run_kv(store: dict[Hashable, Any], op: KvOp) -> Any:
    current = store.get(op.key)
    if op.kind == "put" and op.value is not None:
        store[op.key] = op.value
    elif op.kind == "append":
        store[op.key] = op.value if current is None else current + op.value
    elif op.kind in ("put", "delete"):
        store.pop(op.key, None)
    elif op.kind == "cas":
        if current == op.value:
            store[op.key] = op.new
        return current == op.value
    return current if op.kind == "get" else None


@st.composite
def executed_histories(
    draw: st.DrawFn, inputs: st.SearchStrategy[Any], run: Callable[[dict[Hashable, Any], Any], Any]
) -> list[Operation]:
    """Operations run one at a time against the real object, each at its own instant,
    then recorded with a random interval around that instant; some lose their outcome
    (and some of those never took effect at all)."""
    store: dict[Hashable, Any] = {}
    history = []
    instant = 0
    for client in range(draw(st.integers(0, 14))):
        instant += draw(st.integers(1, 3))
        call = instant - draw(st.integers(0, 8))
        fate = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "lost"]))
        input = draw(inputs)
        if fate == "lost":
            history.append(timed_out(client, input, call))
            continue
        output = run(store, input)
        if fate == "unknown":
            history.append(timed_out(client, input, call))
        else:
            history.append(done(client, input, output, call, instant + draw(st.integers(0, 8))))
    return history


@st.composite
def random_histories(
    draw: st.DrawFn, inputs: st.SearchStrategy[Any], outputs: st.SearchStrategy[Any]
) -> list[Operation]:
    history = []
    for client in range(draw(st.integers(0, 7))):
        input = draw(inputs)
        call = draw(st.integers(0, 10))
        if draw(st.integers(0, 4)) == 0:
            history.append(timed_out(client, input, call))
            continue
        output = draw(st.booleans()) if input.kind == "cas" else draw(outputs)
        history.append(done(client, input, output, call, call + draw(st.integers(0, 5))))
    return history


def brute_force_linearizable(model: Model[Any], history: list[Operation]) -> bool:
    """Try every order consistent with real time, extending one operation at a time, with
    no memoization and no partitioning; unknown outcomes may be left out."""

    def extend(state: Any, placed: frozenset[int]) -> bool:
        if all(i in placed for i, op in enumerate(history) if op.completed):
            return True
        for i, op in enumerate(history):
            if i in placed:
                continue
            if any(
                j not in placed and before.return_time < op.call_time
                for j, before in enumerate(history)
            ):
                continue
            ok, after = model.step(state, op.input, op.output)
            if ok and extend(after, placed | {i}):
                return True
        return False

    return extend(model.init_state(), frozenset())


@given(executed_histories(REGISTER_INPUTS, run_register))
def test_histories_of_a_real_register_are_linearizable(history: list[Operation]) -> None:
    result = check(register_model, history)
    assert result.verdict is LIN, result.explain()


@given(executed_histories(KV_INPUTS, run_kv))
def test_histories_of_a_real_map_are_linearizable(history: list[Operation]) -> None:
    result = check(kv_model, history)
    assert result.verdict is LIN, result.explain()


@given(random_histories(REGISTER_INPUTS, SMALL_VALUES))
def test_register_checker_agrees_with_brute_force(history: list[Operation]) -> None:
    result = check(register_model, history)
    event(result.verdict.value)
    assert (result.verdict is LIN) == brute_force_linearizable(register_model, history)


@given(random_histories(KV_INPUTS, st.sampled_from([None, "x", "y", "xy", "yx"])))
def test_kv_checker_agrees_with_brute_force(history: list[Operation]) -> None:
    result = check(kv_model, history)
    event(result.verdict.value)
    assert (result.verdict is LIN) == brute_force_linearizable(kv_model, history)


def test_results_are_plain_data() -> None:
    result = check(register_model, [done(0, read(), 1, 0, 1)])
    assert isinstance(result, CheckResult)
    assert result.verdict.value == "not-linearizable"
    assert check(register_model, []).explain() == "linearizable after 0 search steps"
