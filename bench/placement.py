"""Placement algorithms side by side, with uhashring as the peer, in one run.

    python bench/placement.py                 # the full run recorded in docs/benchmarks.md
    python bench/placement.py --quick         # a small smoke run (the test suite uses it)

Prints markdown tables: lookup speed (single string keys and batches of pre-hashed keys),
build time and memory, load spread (peak-to-mean) at N = 10, 100 and 1000 nodes, and the
fraction of keys moved by joins and leaves against the ideal 1/(N+1). Writes a PNG of the
load spread per algorithm. Machines here are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from uhashring import HashRing as PeerRing

from shardwise.placement import (
    BoundedLoadRing,
    HashRing,
    JumpHash,
    Maglev,
    Rendezvous,
    stable_hash_batch,
)

SEED = 20261127


@dataclass
class Algo:
    """One contender: how to build it over N nodes and how it answers lookups."""

    name: str
    build: Callable[[list[str]], Any]
    single: Callable[[Any], Callable[[str], str]]
    batch: Callable[[Any], Callable[[npt.NDArray[np.uint64]], npt.NDArray[Any]]] | None
    vnodes: int | None = None


def ring_algo(vnodes: int) -> Algo:
    return Algo(
        f"ring V={vnodes}",
        lambda nodes: HashRing(nodes, vnodes),
        lambda r: r.lookup,
        lambda r: r.lookup_batch,
        vnodes,
    )


def bounded_single(ring: BoundedLoadRing) -> Callable[[str], str]:
    assign: Callable[[str], str] = ring.assign
    return assign


ALGOS = [
    ring_algo(1),
    ring_algo(100),
    ring_algo(160),  # the default, and uhashring's: the like-for-like comparison
    ring_algo(256),
    Algo("rendezvous", Rendezvous, lambda r: r.lookup, lambda r: r.lookup_batch),
    Algo("jump", JumpHash, lambda r: r.lookup, lambda r: r.lookup_batch),
    Algo("maglev", Maglev, lambda r: r.lookup, lambda r: r.lookup_batch),
    Algo("bounded c=1.25", lambda n: BoundedLoadRing(n, 1.25, 100), bounded_single, None),
    Algo("uhashring (peer)", PeerRing, lambda r: r.get_node, None),
]


def best_rate(fn: Callable[[], object], count: int, rounds: int = 3) -> float:
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def nodes_of(n: int) -> list[str]:
    return [f"10.0.{i // 256}.{i % 256}:7000" for i in range(n)]


def owners_of(algo: Algo, placed: Any, keys: list[str], hashes: npt.NDArray[np.uint64]) -> Any:
    """Owner of every key, as a numpy array of names (batch path when there is one)."""
    if algo.batch is not None and not isinstance(placed, BoundedLoadRing):
        return np.asarray(placed.nodes)[algo.batch(placed)(hashes)]
    lookup = algo.single(placed)
    return np.asarray([lookup(k) for k in keys])


def measure_build(algo: Algo, n: int) -> tuple[Any, float, int]:
    """Build over n nodes: the structure, build time (ms) and memory held (bytes).

    Time and memory come from separate builds: tracing allocations slows Python code
    (Maglev's table fill most of all) and would inflate the build time.
    """
    nodes = nodes_of(n)
    start = time.perf_counter()
    placed = algo.build(nodes)
    build_ms = (time.perf_counter() - start) * 1000
    tracemalloc.start()
    traced = algo.build(nodes)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del traced
    return placed, build_ms, memory


def time_single(algo: Algo, placed: Any, keys: list[str], nodes: int) -> float:
    """Seconds for one pass of single-key lookups (bounded-load: assigns on a fresh ring)."""
    if isinstance(placed, BoundedLoadRing):
        ring = algo.build(nodes_of(nodes))
        start = time.perf_counter()
        for k in keys:
            ring.assign(k)
        return time.perf_counter() - start
    lookup = algo.single(placed)
    start = time.perf_counter()
    for k in keys:
        lookup(k)
    return time.perf_counter() - start


def measure_speed(
    keys: list[str], hashes: npt.NDArray[np.uint64], n: int, rounds: int = 5
) -> dict[str, dict[str, Any]]:
    """Every algorithm's rates. Rounds are interleaved across algorithms, and each keeps
    its best round, so a burst of noise on this shared machine hits them all alike."""
    built = {a.name: measure_build(a, n) for a in ALGOS}
    best = dict.fromkeys(built, math.inf)
    for _ in range(rounds):
        for algo in ALGOS:
            elapsed = time_single(algo, built[algo.name][0], keys, n)
            best[algo.name] = min(best[algo.name], elapsed)
    out: dict[str, dict[str, Any]] = {}
    for algo in ALGOS:
        placed, build_ms, memory = built[algo.name]
        batch = None
        if algo.batch is not None:
            fn = algo.batch(placed)
            batch = best_rate(lambda fn=fn: fn(hashes), len(hashes))  # type: ignore[misc]
        single = len(keys) / best[algo.name]
        out[algo.name] = {"single": single, "batch": batch, "build_ms": build_ms, "memory": memory}
    return out


def peak_to_mean(algo: Algo, n: int, keys: list[str], hashes: npt.NDArray[np.uint64]) -> float:
    placed = algo.build(nodes_of(n))
    owners = owners_of(algo, placed, keys, hashes)
    _, counts = np.unique(owners, return_counts=True)
    counts = np.concatenate([counts, np.zeros(n - len(counts))])
    return float(counts.max() / counts.mean())


def gamma_peak_theory(n: int, vnodes: int, rng: np.random.Generator) -> float:
    """Expected peak-to-mean of a ring: the max of n Gamma(V) arc totals over their mean.

    A node's share is the sum of V exponential gaps, so its relative spread is 1/sqrt(V);
    the peak of n such shares is estimated here by simulation (200 draws).
    """
    draws = rng.gamma(vnodes, size=(200, n))
    return float((draws.max(axis=1) / draws.mean(axis=1)).mean())


def moved_fractions(
    algo: Algo, start_n: int, joins: int, keys: list[str], hashes: Any
) -> tuple[float, float]:
    """Mean moved fraction over ``joins`` joins from start_n, and one leave, over the ideal."""
    nodes = nodes_of(start_n + joins)
    ratios = []
    current = owners_of(algo, algo.build(nodes[:start_n]), keys, hashes)
    for n in range(start_n + 1, start_n + joins + 1):
        nxt = owners_of(algo, algo.build(nodes[:n]), keys, hashes)
        ratios.append(float((current != nxt).mean()) / (1 / n))
        current = nxt
    # A leave: the last node goes (the only one jump hash can remove), N+1 -> N.
    before = owners_of(algo, algo.build(nodes[: start_n + 1]), keys, hashes)
    after = owners_of(algo, algo.build(nodes[:start_n]), keys, hashes)
    leave = float((before != after).mean()) / (1 / (start_n + 1))
    return statistics.fmean(ratios), leave


def draw_spread(spreads: dict[str, npt.NDArray[Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the full run draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(spreads)
    ax.boxplot([spreads[n] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("keys per node / mean")
    ax.set_title("Load spread, N = 100 nodes, 1M keys (ring V=1 left out: peaks near 6x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass
class Sizes:
    keys: int
    single: int
    nodes: list[int]
    joins: int
    move_keys: int


def print_header() -> None:
    machine = platform.processor() or platform.machine()
    print(
        f"# placement benchmark ({time.strftime('%Y-%m-%d')}, {machine}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, seed {SEED})\n"
    )


def print_lookups(sizes: Sizes, keys: list[str], raw_hashes: npt.NDArray[np.uint64]) -> None:
    print(
        f"## Lookups (N = 100 nodes; {sizes.single:,} string keys; "
        f"batch of {sizes.keys:,} hashes)\n"
    )
    print(
        "| algorithm | single lookups/s | vs uhashring | batch lookups/s | build ms | memory KiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    speed = measure_speed(keys[: sizes.single], raw_hashes, 100)
    peer = speed["uhashring (peer)"]["single"]
    for name, s in speed.items():
        batch = f"{s['batch']:,.0f}" if s["batch"] else "n/a"
        print(
            f"| {name} | {s['single']:,.0f} | {s['single'] / peer:.2f}x | {batch} | "
            f"{s['build_ms']:,.1f} | {s['memory'] / 1024:,.0f} |"
        )


def print_spread(sizes: Sizes, keys: list[str], hashes: npt.NDArray[np.uint64]) -> None:
    print(f"\n## Load spread: peak-to-mean keys per node ({sizes.keys:,} keys)\n")
    print("| algorithm | " + " | ".join(f"N={n}" for n in sizes.nodes) + " |")
    print("|---|" + "---:|" * len(sizes.nodes))
    for algo in ALGOS:
        row = [peak_to_mean(algo, n, keys, hashes) for n in sizes.nodes]
        print(f"| {algo.name} | " + " | ".join(f"{p:.3f}" for p in row) + " |")

    print_ring_theory(sizes)


def print_ring_theory(sizes: Sizes, rings: int = 5) -> None:
    """Ring spread from exact arc lengths (no key-sampling noise), averaged over rings.

    One ring's peak is a single draw of a maximum, which for small V varies by tens of
    percent; the theory is an expectation, so we compare it with a mean over ``rings``
    rings of different node names.
    """
    print(
        f"\n## Ring against theory (exact shares, mean over {rings} rings per cell): "
        "peak-to-mean, and relative std against 1/sqrt(V)\n"
    )
    header = " | ".join(f"N={n} peak (theory)" for n in sizes.nodes)
    print(f"| vnodes | {header} | rel. std at N={max(sizes.nodes)} (1/sqrt(V)) |")
    print("|---:|" + "---:|" * (len(sizes.nodes) + 1))
    theory_rng = np.random.default_rng(SEED + 1)
    for v in (1, 100, 256):
        cells = []
        cv = 0.0
        for n in sizes.nodes:
            peaks, cvs = [], []
            for r in range(rings):
                ring = HashRing([f"ring{r}-{name}" for name in nodes_of(n)], v)
                shares = np.array(list(ring.shares().values()))
                peaks.append(shares.max() / shares.mean())
                cvs.append(shares.std() / shares.mean())
            theory = gamma_peak_theory(n, v, theory_rng)
            cells.append(f"{statistics.fmean(peaks):.3f} ({theory:.3f})")
            cv = statistics.fmean(cvs)
        print(f"| {v} | " + " | ".join(cells) + f" | {cv:.4f} ({1 / math.sqrt(v):.4f}) |")


def print_moves(sizes: Sizes, keys: list[str], hashes: npt.NDArray[np.uint64]) -> None:
    print(
        f"\n## Keys moved ({sizes.move_keys:,} keys; mean over {sizes.joins} joins "
        "from N=100, then one leave)\n"
    )
    print("| algorithm | join: moved / ideal | leave: moved / ideal |")
    print("|---|---:|---:|")
    mk, mh = keys[: sizes.move_keys], hashes[: sizes.move_keys]
    for algo in ALGOS:
        join, leave = moved_fractions(algo, 100, sizes.joins, mk, mh)
        note = " (rebuilt)" if isinstance(algo.build(["a"]), BoundedLoadRing) else ""
        print(f"| {algo.name}{note} | {join:.3f} | {leave:.3f} |")


def draw(keys: list[str], hashes: npt.NDArray[np.uint64], png: Path) -> None:
    spreads = {}
    for algo in ALGOS:
        if algo.vnodes == 1:
            continue  # its spread (peaks near 6x) would flatten every other box
        owners = owners_of(algo, algo.build(nodes_of(100)), keys, hashes)
        _, counts = np.unique(owners, return_counts=True)
        spreads[algo.name] = counts / counts.mean()
    png.parent.mkdir(parents=True, exist_ok=True)
    draw_spread(spreads, png)
    print(f"\nload spread drawn to {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--png", type=Path, default=Path("docs/img/placement-spread.png"))
    args = parser.parse_args()
    if args.quick:
        sizes = Sizes(keys=20_000, single=5_000, nodes=[10, 100], joins=3, move_keys=20_000)
    else:
        sizes = Sizes(1_000_000, 200_000, [10, 100, 1000], joins=20, move_keys=200_000)

    rng = np.random.default_rng(SEED)
    keys = [f"user:{int(x)}" for x in rng.integers(0, 2**40, sizes.keys)]
    hashes = stable_hash_batch(keys)
    raw_hashes = rng.integers(0, 2**64, sizes.keys, dtype=np.uint64)

    print_header()
    print_lookups(sizes, keys, raw_hashes)
    print_spread(sizes, keys, hashes)
    print_moves(sizes, keys, hashes)
    if not args.quick:
        draw(keys, hashes, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
