"""Histories of transactions, their JSON-lines form, and the bank-workload checker.

A *transaction history* is a sequence of :class:`Txn`: one client transaction each, with
the micro-operations (*mops*) it ran, what they returned, the real-time interval in which
it was outstanding, and its outcome:

* ``ok``: it committed, and what its reads returned is known;
* ``fail``: it certainly did not commit (aborted, refused); its reads mean nothing;
* ``info``: the client never learned the outcome (a timeout, a lost connection). It may
  have committed at any moment after its call, or never; its reads are unknown.

Two workloads are described with four kinds of mop:

* *list-append* (checked by :mod:`shardwise.testing.serializability`): :class:`Append`
  adds an element, unique per key across the whole history, to the end of a key's list;
  :class:`Read` returns the whole list;
* *bank* (checked here, by :func:`check_bank`): :class:`BalanceRead` reads one account's
  balance, :class:`Transfer` moves an amount between two accounts. A transfer that would
  leave its source negative is refused by the database: the transaction ``fail`` s.

Values a client did not observe -- every read of a ``fail`` or ``info`` transaction, say
-- may be ``None``; the checkers ignore reads of transactions that are not ``ok``, and an
``ok`` transaction must have a value for each of its reads.

**JSON lines.** :func:`dump_history` and :func:`load_history` keep a history in a file,
one transaction a line, so that a run of real processes can be saved and checked again::

    {"index": 3, "process": 1, "status": "ok", "call": 1.5, "return": 2.0,
     "mops": [["append", "x", 5], ["r", "x", [1, 5]], ["r", "y", null]]}

(on one line). Mops are ``["append", key, element]``, ``["r", key, [elements] | null]``,
``["balance", account, amount | null]`` and ``["transfer", source, dest, amount]``; keys
and accounts are strings or integers; ``"return": null`` stands for an unknown return
time (``math.inf``), which only an ``info`` transaction may have.

**The bank checker.** Transfers move money, they never create or destroy it, and they are
refused rather than overdraw. So in a serializable history every ``ok`` transaction that
reads every account sees balances summing to the initial total, and no read sees a
negative balance. :func:`check_bank` reports each read that does not (``wrong-total``,
``negative-balance``), and a transaction that read one account twice, with no transfer
in between, and got two different balances (``internal``). It is a cheap invariant check,
not a proof of serializability: it catches lost or doubled transfers and torn reads.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO, get_args

from shardwise.errors import HistoryFormatError

Key = int | str
"""A key of the list-append workload, or an account of the bank workload."""

Process = int | str
"""Who ran a transaction (a client, a worker); only used in explanations."""

TxnStatus = Literal["ok", "fail", "info"]
TXN_STATUSES: Final[tuple[str, ...]] = get_args(TxnStatus)

EXPLAIN_MAX_ANOMALIES: Final = 20
"""How many anomalies :meth:`TxnCheckResult.explain` spells out; the rest are counted."""

SHOW_LIST_ELEMENTS: Final = 8
"""A list read longer than this is shown abbreviated in explanations, its end kept: the
last elements are the ones the dependencies are about."""


def _is_key(value: object) -> bool:
    # bool is an int subclass, but True as a key is almost certainly a bug in the workload.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def show_list(values: Sequence[int]) -> str:
    """``[1, 2, 3]``; longer than :data:`SHOW_LIST_ELEMENTS`, its first element and its
    end: ``[1, ... 3 more, 5, 6, 7, 8, 9, 10]``."""
    if len(values) <= SHOW_LIST_ELEMENTS:
        return "[" + ", ".join(map(str, values)) + "]"
    tail = values[-(SHOW_LIST_ELEMENTS - 2) :]
    return f"[{values[0]}, ... {len(values) - len(tail) - 1} more, {', '.join(map(str, tail))}]"


# --- micro-operations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """Read a key's whole list: ``value`` is what came back (``()`` for a key never
    appended to), or ``None`` if it was not observed."""

    key: Key
    value: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not _is_key(self.key):
            raise HistoryFormatError(f"a key must be a str or an int: {self.key!r}")
        if self.value is not None:
            if not isinstance(self.value, tuple):
                # Lists arrive from JSON and from hand-written tests; keep a hashable tuple.
                if not isinstance(self.value, list):
                    raise HistoryFormatError(f"a read returns a list of ints: {self.value!r}")
                object.__setattr__(self, "value", tuple(self.value))
            if not all(_is_int(element) for element in self.value or ()):
                raise HistoryFormatError(f"a read returns a list of ints: {self.value!r}")

    def __str__(self) -> str:
        shown = "?" if self.value is None else show_list(self.value)
        return f"r({self.key}, {shown})"


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``element`` to ``key``'s list; each (key, element) pair is appended at most
    once in a history, which is what lets a read name the transaction behind each element."""

    key: Key
    element: int

    def __post_init__(self) -> None:
        if not _is_key(self.key):
            raise HistoryFormatError(f"a key must be a str or an int: {self.key!r}")
        if not _is_int(self.element):
            raise HistoryFormatError(f"an appended element must be an int: {self.element!r}")

    def __str__(self) -> str:
        return f"append({self.key}, {self.element})"


@dataclass(frozen=True, slots=True)
class BalanceRead:
    """Read one account's balance (``None``: not observed)."""

    account: Key
    balance: int | None = None

    def __post_init__(self) -> None:
        if not _is_key(self.account):
            raise HistoryFormatError(f"an account must be a str or an int: {self.account!r}")
        if self.balance is not None and not _is_int(self.balance):
            raise HistoryFormatError(f"a balance must be an int: {self.balance!r}")

    def __str__(self) -> str:
        return f"balance({self.account}, {'?' if self.balance is None else self.balance})"


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move ``amount`` (positive) from ``source`` to ``dest``, two different accounts."""

    source: Key
    dest: Key
    amount: int

    def __post_init__(self) -> None:
        if not (_is_key(self.source) and _is_key(self.dest)):
            raise HistoryFormatError(f"accounts must be str or int: {self!r}")
        if self.source == self.dest:
            raise HistoryFormatError(f"a transfer between an account and itself: {self!r}")
        if not _is_int(self.amount) or self.amount <= 0:
            raise HistoryFormatError(f"a transfer moves a positive int amount: {self!r}")

    def __str__(self) -> str:
        return f"transfer({self.source} -> {self.dest}, {self.amount})"


Mop = Read | Append | BalanceRead | Transfer
MOP_TYPES: Final = (Read, Append, BalanceRead, Transfer)


@dataclass(frozen=True, slots=True)
class Txn:
    """One transaction. ``index`` names it (``T<index>`` in explanations) and must be
    unique in a history. Times are in any unit, only their order matters; ``return_time``
    is ``math.inf`` when unknown, which only an ``info`` transaction may have. An ``info``
    transaction's return time is never used for ordering: whatever the client saw, the
    transaction may still commit later."""

    index: int
    process: Process
    status: TxnStatus
    mops: Sequence[Mop]
    call_time: float
    return_time: float = math.inf

    def __post_init__(self) -> None:
        if not _is_int(self.index):
            raise HistoryFormatError(f"a transaction index must be an int: {self.index!r}")
        if not _is_key(self.process):
            raise HistoryFormatError(f"a process must be a str or an int: {self.process!r}")
        if self.status not in TXN_STATUSES:
            raise HistoryFormatError(f"T{self.index}: status must be one of {TXN_STATUSES}")
        object.__setattr__(self, "mops", tuple(self.mops))
        for mop in self.mops:
            if not isinstance(mop, MOP_TYPES):
                raise HistoryFormatError(f"T{self.index}: not a micro-operation: {mop!r}")
        for name in ("call_time", "return_time"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                raise HistoryFormatError(f"T{self.index}: {name} must be a number: {value!r}")
        if not math.isfinite(self.call_time):
            raise HistoryFormatError(f"T{self.index}: call time must be finite")
        if self.return_time < self.call_time:
            raise HistoryFormatError(f"T{self.index}: returns before it is called")
        if self.status != "info" and self.return_time == math.inf:
            raise HistoryFormatError(
                f"T{self.index}: an {self.status} transaction must have a return time"
            )

    @property
    def name(self) -> str:
        return f"T{self.index}"

    def __str__(self) -> str:
        ret = "?" if self.return_time == math.inf else self.return_time
        mops = " ".join(map(str, self.mops))
        return (
            f"{self.name} ({self.status}, process {self.process}, [{self.call_time}, {ret}]) {mops}"
        )


def index_history(history: Iterable[Txn]) -> dict[int, Txn]:
    """The transactions by index, in index order; a duplicate index is a format error."""
    by_index: dict[int, Txn] = {}
    for txn in history:
        if not isinstance(txn, Txn):
            raise HistoryFormatError(f"not a transaction: {txn!r}")
        if txn.index in by_index:
            raise HistoryFormatError(f"two transactions have index {txn.index}")
        by_index[txn.index] = txn
    return dict(sorted(by_index.items()))


# --- results -----------------------------------------------------------------------------


class Verdict(enum.Enum):
    """The outcome of a check; ``UNKNOWN`` when it ran out of time first."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One violation: its type (``G1c``, ``wrong-total``, ...), the transactions it
    involves (for a cycle, in the cycle's order) and a sentence saying why."""

    type: str
    txns: tuple[int, ...]
    explanation: str

    def __str__(self) -> str:
        return f"{self.type}: {self.explanation}"


@dataclass(frozen=True)
class TxnCheckResult:
    """What a transactional checker found. The verdict is ``INVALID`` as soon as one
    anomaly is found, even if the check could not finish; ``UNKNOWN`` only when it did not
    finish and found nothing."""

    verdict: Verdict
    anomalies: tuple[Anomaly, ...] = ()
    transactions: int = 0
    """Transactions in the history."""
    steps: int = 0
    """Cycle-search steps taken (0 for checkers without a search)."""
    complete: bool = True
    """Whether every part of the check ran; see :attr:`note` when not."""
    note: str = ""
    counts: Mapping[str, int] = field(init=False)
    """How many anomalies of each type, in the order they were first found."""

    def __post_init__(self) -> None:
        counts: dict[str, int] = {}
        for anomaly in self.anomalies:
            counts[anomaly.type] = counts.get(anomaly.type, 0) + 1
        object.__setattr__(self, "counts", counts)

    @property
    def types(self) -> set[str]:
        """The anomaly types found."""
        return set(self.counts)

    def of_type(self, kind: str) -> list[Anomaly]:
        return [anomaly for anomaly in self.anomalies if anomaly.type == kind]

    def explain(self) -> str:
        """A human-readable account, for a test failure message or the command line."""
        summary = ", ".join(f"{kind}: {count}" for kind, count in self.counts.items())
        head = f"{self.verdict.value}: {len(self.anomalies)} anomalies in "
        head += f"{self.transactions} transactions"
        lines = [head + (f" ({summary})" if summary else "")]
        if self.note:
            lines.append(self.note)
        lines.extend(f"  {anomaly}" for anomaly in self.anomalies[:EXPLAIN_MAX_ANOMALIES])
        if len(self.anomalies) > EXPLAIN_MAX_ANOMALIES:
            lines.append(f"  ... {len(self.anomalies) - EXPLAIN_MAX_ANOMALIES} more")
        return "\n".join(lines)


def verdict_of(anomalies: Sequence[Anomaly], complete: bool) -> Verdict:
    if anomalies:
        return Verdict.INVALID
    return Verdict.VALID if complete else Verdict.UNKNOWN


# --- JSON lines --------------------------------------------------------------------------


def _mop_to_json(mop: Mop) -> list[Any]:
    if isinstance(mop, Read):
        return ["r", mop.key, None if mop.value is None else list(mop.value)]
    if isinstance(mop, Append):
        return ["append", mop.key, mop.element]
    if isinstance(mop, BalanceRead):
        return ["balance", mop.account, mop.balance]
    return ["transfer", mop.source, mop.dest, mop.amount]


_MOP_ARITY: Final = {"r": 3, "append": 3, "balance": 3, "transfer": 4}


def _mop_from_json(item: object) -> Mop:
    if not isinstance(item, list) or not item or item[0] not in _MOP_ARITY:
        raise HistoryFormatError(f"not a micro-operation: {item!r}")
    if len(item) != _MOP_ARITY[item[0]]:
        raise HistoryFormatError(f"wrong number of fields: {item!r}")
    kind, *args = item
    if kind == "r":
        return Read(args[0], args[1])
    if kind == "append":
        return Append(args[0], args[1])
    if kind == "balance":
        return BalanceRead(args[0], args[1])
    return Transfer(args[0], args[1], args[2])


def format_txn(txn: Txn) -> str:
    """One line of JSON (no newline) for ``txn``."""
    record = {
        "index": txn.index,
        "process": txn.process,
        "status": txn.status,
        "call": txn.call_time,
        "return": None if txn.return_time == math.inf else txn.return_time,
        "mops": [_mop_to_json(mop) for mop in txn.mops],
    }
    return json.dumps(record, separators=(", ", ": "), allow_nan=False)


_FIELDS: Final = frozenset({"index", "process", "status", "call", "return", "mops"})


def parse_txn(line: str) -> Txn:
    """The transaction of one JSON line (see the module docstring)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise HistoryFormatError(f"not JSON: {error}") from None
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise HistoryFormatError(f"a transaction is an object with fields {sorted(_FIELDS)}")
    if not isinstance(record["mops"], list):
        raise HistoryFormatError("mops must be a list")
    ret = record["return"]
    return Txn(
        index=record["index"],
        process=record["process"],
        status=record["status"],
        mops=[_mop_from_json(item) for item in record["mops"]],
        call_time=record["call"],
        return_time=math.inf if ret is None else ret,
    )


def parse_history(lines: Iterable[str], source: str = "<history>") -> list[Txn]:
    """The transactions of JSON lines; blank lines are skipped. A malformed line raises
    :class:`HistoryFormatError` naming ``source`` and the line number."""
    history: list[Txn] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            history.append(parse_txn(line))
        except HistoryFormatError as error:
            raise HistoryFormatError(f"{source}:{number}: {error}") from None
    index_history(history)  # a duplicate index is a format error of the file too
    return history


def write_history(history: Iterable[Txn], out: TextIO) -> None:
    """Write ``history`` to ``out`` as JSON lines."""
    for txn in history:
        out.write(format_txn(txn) + "\n")


def dump_history(history: Iterable[Txn], path: str | Path) -> None:
    """Save ``history`` at ``path`` as JSON lines (see :func:`load_history`)."""
    with open(path, "w", encoding="utf-8") as out:
        write_history(history, out)


def load_history(path: str | Path) -> list[Txn]:
    """The history saved at ``path`` by :func:`dump_history`."""
    with open(path, encoding="utf-8") as lines:
        return parse_history(lines, source=str(path))


# --- the bank workload -------------------------------------------------------------------


def check_bank(history: Iterable[Txn], initial_balances: Mapping[Key, int]) -> TxnCheckResult:
    """Check a bank-workload history against the invariants of the module docstring.

    ``initial_balances`` names every account and its balance before the history. Each
    ``ok`` transaction is cut at its transfers into runs of consecutive balance reads; a
    run that reads every account is summed (reads on either side of a transfer see
    different states, and a transfer inside the transaction itself moves money from one
    to the other). Anomalies are reported in index order.
    """
    accounts = dict(initial_balances)
    if not accounts:
        raise HistoryFormatError("a bank has at least one account")
    for account, balance in accounts.items():
        if not _is_key(account) or not _is_int(balance) or balance < 0:
            raise HistoryFormatError(f"bad initial balance {account!r}: {balance!r}")
    total = sum(accounts.values())
    txns = index_history(history)
    found: list[Anomaly] = []
    for txn in txns.values():
        _validate_bank_txn(txn, accounts)
        if txn.status == "ok":
            found.extend(_bank_anomalies(txn, accounts, total))
    return TxnCheckResult(verdict_of(found, True), tuple(found), transactions=len(txns))


def _validate_bank_txn(txn: Txn, accounts: Mapping[Key, int]) -> None:
    for mop in txn.mops:
        if isinstance(mop, BalanceRead):
            named: tuple[Key, ...] = (mop.account,)
            if txn.status == "ok" and mop.balance is None:
                raise HistoryFormatError(f"{txn.name}: an ok transaction's read has no value")
        elif isinstance(mop, Transfer):
            named = (mop.source, mop.dest)
        else:
            raise HistoryFormatError(f"{txn.name}: {mop} is not a bank operation")
        unknown = [account for account in named if account not in accounts]
        if unknown:
            raise HistoryFormatError(f"{txn.name}: unknown account {unknown[0]!r}")


def _bank_anomalies(txn: Txn, accounts: Mapping[Key, int], total: int) -> list[Anomaly]:
    found: list[Anomaly] = []
    run: dict[Key, int] = {}
    runs: list[dict[Key, int]] = [run]
    for mop in txn.mops:
        if isinstance(mop, Transfer):
            run = {}
            runs.append(run)
            continue
        assert isinstance(mop, BalanceRead) and mop.balance is not None  # validated
        if mop.balance < 0:
            found.append(
                Anomaly(
                    "negative-balance",
                    (txn.index,),
                    f"{txn.name} read account {mop.account} with balance {mop.balance}",
                )
            )
        seen = run.get(mop.account)
        if seen is not None and seen != mop.balance:
            found.append(
                Anomaly(
                    "internal",
                    (txn.index,),
                    f"{txn.name} read account {mop.account} as {seen}, then as "
                    f"{mop.balance}, with no transfer in between",
                )
            )
        run[mop.account] = mop.balance
    for balances in runs:
        if len(balances) == len(accounts) and (seen_total := sum(balances.values())) != total:
            shown = ", ".join(f"{account}={balance}" for account, balance in balances.items())
            found.append(
                Anomaly(
                    "wrong-total",
                    (txn.index,),
                    f"{txn.name} read {shown}: a total of {seen_total}, not {total}",
                )
            )
    return found
