"""The bank-workload checker: hand-made histories, generated serial executions (always
valid) and planted anomalies (always caught)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardwise.errors import HistoryFormatError
from shardwise.testing.txn_history import (
    Append,
    BalanceRead,
    Key,
    Mop,
    Transfer,
    Txn,
    TxnStatus,
    Verdict,
    check_bank,
    dump_history,
    load_history,
)

BANK: dict[Key, int] = {"a": 10, "b": 10, "c": 0}


def txn(index: int, *mops: Mop, status: TxnStatus = "ok") -> Txn:
    ret = math.inf if status == "info" else 10.0 * index + 1
    return Txn(index, 0, status, mops, 10.0 * index, ret)


def reads(**balances: int) -> list[BalanceRead]:
    return [BalanceRead(account, balance) for account, balance in balances.items()]


def test_valid_history() -> None:
    history = [
        txn(1, *reads(a=10, b=10, c=0)),
        txn(2, Transfer("a", "c", 4)),
        txn(3, Transfer("c", "b", 5), status="fail"),  # refused: c would go negative
        txn(4, Transfer("b", "a", 1), status="info"),
        txn(5, *reads(c=4, a=6, b=10)),  # the info transfer did not happen (yet)
        txn(6, *reads(a=7)),  # now it has; a partial read is not summed
        txn(7, BalanceRead("a"), status="info"),
    ]
    result = check_bank(history, BANK)
    assert result.verdict is Verdict.VALID, result.explain()
    assert result.transactions == 7


def test_wrong_total() -> None:
    history = [txn(1, Transfer("a", "b", 3)), txn(2, *reads(a=7, b=10, c=0))]
    result = check_bank(history, BANK)
    assert result.verdict is Verdict.INVALID
    assert [(x.type, x.txns) for x in result.anomalies] == [("wrong-total", (2,))]
    assert "a total of 17, not 20" in result.explain()


def test_negative_balance() -> None:
    history = [txn(1, *reads(a=-2, b=22, c=0)), txn(2, *reads(c=-1))]
    result = check_bank(history, BANK)
    assert [(x.type, x.txns) for x in result.anomalies] == [
        ("negative-balance", (1,)),
        ("negative-balance", (2,)),
    ]


def test_reads_either_side_of_a_transfer_are_not_summed_together() -> None:
    history = [
        txn(1, *reads(a=10), Transfer("a", "b", 5), *reads(b=15, c=0)),
        txn(2, *reads(a=5, b=15), Transfer("b", "c", 1), *reads(a=5, b=14, c=1)),
    ]
    assert check_bank(history, BANK).verdict is Verdict.VALID
    # ... but a whole run on either side is.
    history = [txn(1, *reads(a=10, b=10, c=0), Transfer("a", "b", 5), *reads(a=5, b=10, c=0))]
    assert check_bank(history, BANK).counts == {"wrong-total": 1}


def test_an_account_read_twice_differently() -> None:
    history = [txn(1, *reads(a=10), *reads(a=9))]
    result = check_bank(history, BANK)
    assert [(x.type, x.txns) for x in result.anomalies] == [("internal", (1,))]


def test_reads_of_transactions_that_are_not_ok_are_ignored() -> None:
    history = [txn(1, *reads(a=-5, b=0, c=0), status="fail"), txn(2, *reads(a=99), status="info")]
    assert check_bank(history, BANK).verdict is Verdict.VALID


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([txn(1, *reads(z=1))], "unknown account 'z'"),
        ([txn(1, Transfer("a", "z", 1))], "unknown account 'z'"),
        ([txn(1, BalanceRead("a"))], "has no value"),
        ([txn(1, Append("a", 1))], "not a bank operation"),
    ],
)
def test_malformed_bank_histories(history: list[Txn], message: str) -> None:
    with pytest.raises(HistoryFormatError, match=message):
        check_bank(history, BANK)


def test_malformed_bank_arguments() -> None:
    with pytest.raises(HistoryFormatError):
        check_bank([], {})
    with pytest.raises(HistoryFormatError):
        check_bank([], {"a": -1})
    with pytest.raises(HistoryFormatError, match="itself"):
        Transfer("a", "a", 1)
    with pytest.raises(HistoryFormatError, match="positive"):
        Transfer("a", "b", 0)


def test_bank_histories_round_trip(tmp_path: Path) -> None:
    history = [
        txn(1, *reads(a=10, b=10), Transfer("a", "b", 2)),
        txn(2, Transfer(1, 2, 3), BalanceRead(1), status="info"),
    ]
    dump_history(history, tmp_path / "bank.jsonl")
    assert load_history(tmp_path / "bank.jsonl") == history
    assert '["transfer", "a", "b", 2]' in (tmp_path / "bank.jsonl").read_text()


# --- generated histories -----------------------------------------------------------------


@st.composite
def bank_histories(draw: st.DrawFn) -> tuple[list[Txn], dict[Key, int]]:
    """A serial run of the bank against a model, with overlapping times, refused
    transfers failing, and ``info`` transfers that did or did not happen. It ends with a
    read of every account."""
    accounts = [f"acct{i}" for i in range(draw(st.integers(2, 5)))]
    initial: dict[Key, int] = {name: draw(st.integers(0, 20)) for name in accounts}
    balances = dict(initial)
    history: list[Txn] = []
    count = draw(st.integers(0, 25))
    for point in range(count + 1):
        kind = (
            "read-all"
            if point == count
            else draw(st.sampled_from(["read", "transfer"] * 2 + ["read-all"]))
        )
        status: TxnStatus = "ok"
        mops: list[Mop] = []
        if kind == "transfer":
            source, dest = draw(st.permutations(accounts))[:2]
            amount = draw(st.integers(1, 10))
            # An ok transfer may read every account before and after it, in one transaction.
            audited = draw(st.booleans())
            before = [BalanceRead(name, balances[name]) for name in accounts]
            mops.append(Transfer(source, dest, amount))
            if balances[source] < amount:
                status = "fail"
            else:
                status = draw(st.sampled_from(["ok", "ok", "info"]))
                if status == "ok" or draw(st.booleans()):
                    balances[source] -= amount
                    balances[dest] += amount
            if audited and status == "ok":
                after = [BalanceRead(name, balances[name]) for name in accounts]
                mops = [*before, *mops, *after]
        else:
            names = (
                accounts
                if kind == "read-all"
                else draw(st.lists(st.sampled_from(accounts), min_size=1, max_size=6))
            )
            mops.extend(BalanceRead(name, balances[name]) for name in draw(st.permutations(names)))
        call = 10 * point - draw(st.integers(0, 25))
        ret = math.inf if status == "info" else 10 * point + draw(st.integers(0, 25))
        history.append(Txn(point, point % 3, status, mops, call, ret))
    return history, initial


def full_reads(history: list[Txn], accounts: int) -> list[int]:
    """Positions of the ok transactions that read every account and transfer nothing."""
    return [
        i
        for i, t in enumerate(history)
        if t.status == "ok"
        and all(isinstance(m, BalanceRead) for m in t.mops)
        and len({m.account for m in t.mops if isinstance(m, BalanceRead)}) == accounts
    ]


def with_balances(t: Txn, change: dict[Key, int]) -> Txn:
    """``t`` with the balances it read of some accounts changed by ``change``."""
    mops = [
        BalanceRead(m.account, (m.balance or 0) + change.get(m.account, 0))
        if isinstance(m, BalanceRead)
        else m
        for m in t.mops
    ]
    # Every read of an account changes alike: one read twice still agrees with itself.
    return Txn(t.index, t.process, t.status, mops, t.call_time, t.return_time)


@given(bank_histories())
def test_serial_bank_runs_are_valid(generated: tuple[list[Txn], dict[Key, int]]) -> None:
    history, initial = generated
    result = check_bank(history, initial)
    assert result.verdict is Verdict.VALID, result.explain()


@given(bank_histories(), st.data())
def test_planted_bank_anomalies_are_caught(
    generated: tuple[list[Txn], dict[Key, int]], data: st.DataObject
) -> None:
    history, initial = generated
    at = data.draw(st.sampled_from(full_reads(history, len(initial))))
    planted = history[at]
    seen = {m.account: m.balance or 0 for m in planted.mops if isinstance(m, BalanceRead)}
    if data.draw(st.booleans()):
        # Money appears or vanishes: a lost or doubled transfer.
        account = data.draw(st.sampled_from(sorted(seen)))
        delta = data.draw(st.integers(1, 5)) * data.draw(st.sampled_from([-1, 1]))
        if seen[account] + delta < 0:
            delta = -delta  # keep it a pure total violation
        change, expected = {account: delta}, "wrong-total"
    else:
        # The total is right but an account is overdrawn: a transfer that should have
        # been refused.
        debit, credit = data.draw(st.permutations(sorted(seen)))[:2]
        overdraft = seen[debit] + data.draw(st.integers(1, 5))
        change, expected = {debit: -overdraft, credit: overdraft}, "negative-balance"
    history = [*history[:at], with_balances(planted, change), *history[at + 1 :]]
    result = check_bank(history, initial)
    assert result.verdict is Verdict.INVALID
    assert set(result.counts) == {expected}, result.explain()
    assert all(anomaly.txns == (planted.index,) for anomaly in result.anomalies)


def test_the_generator_makes_interesting_histories() -> None:
    # Guards against a generator that silently stops making transfers or refusals.
    kinds: set[str] = set()

    @settings(max_examples=40, database=None)
    @given(bank_histories())
    def collect(generated: tuple[list[Txn], dict[Key, int]]) -> None:
        for t in generated[0]:
            kinds.add(f"{t.status}-{type(t.mops[0]).__name__}")
            if len({type(m) for m in t.mops}) > 1:
                kinds.add(f"{t.status}-BalanceRead-Transfer")

    collect()
    assert {"ok-Transfer", "fail-Transfer", "info-Transfer", "ok-BalanceRead"} <= kinds
    assert "ok-BalanceRead-Transfer" in kinds
