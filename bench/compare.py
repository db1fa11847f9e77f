"""Variants of a request measured in alternating pairs, each compared with its reference.

Each pair (a variant and the variant it is judged against) runs back to back, in turn
reference first and variant first (A B, then B A, ...), round after round, so that whatever
drifts over a run (the machine's other work, caches, the database's size) weighs on both
alike. A ratio is taken within each pair of runs, and what is reported is the median of
those ratios with their min and max, for req/s and for the workers' CPU time per request.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .report import verdict
from .wrk import WrkResult, run_wrk, run_wrk_balanced

MIN_ROUNDS = 5


@dataclass(frozen=True)
class Variant:
    """One way of calling a server: a label, a URL, and the wrk script (the key) it uses."""

    label: str
    url: str
    lua: Path
    goal: float | None  # for its req/s against the first variant's (the baseline's); None: no goal


@dataclass(frozen=True)
class Spread:
    """The median of some pair ratios, with their min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, ratios: Sequence[float]) -> Spread:
        return cls(statistics.median(ratios), min(ratios), max(ratios))

    def __str__(self) -> str:
        return f"{self.median:.2f} (min {self.low:.2f}, max {self.high:.2f})"


@dataclass(frozen=True)
class Pair:
    """A variant judged against a reference, with its goal for req/s (None: no goal)."""

    variant: Variant
    reference: Variant
    goal: float | None


class Comparison:
    """The runs of every pair, round by round: (the variant's run, the reference's)."""

    def __init__(self, runs: dict[tuple[str, str], list[tuple[WrkResult, WrkResult]]]) -> None:
        self.runs = runs

    def _pairs(self, label: str, against: str) -> list[tuple[WrkResult, WrkResult]]:
        if (label, against) in self.runs:
            return self.runs[label, against]
        return [(reference, run) for run, reference in self.runs[against, label]]  # measured the other way round

    def _ratios(self, label: str, against: str, figure: str) -> Spread:
        return Spread.of(
            [
                (getattr(run, figure) or 0.0) / (getattr(reference, figure) or 1.0)
                for run, reference in self._pairs(label, against)
            ]
        )

    def throughput(self, label: str, against: str) -> Spread:
        """``label``'s req/s over ``against``'s, pair by pair."""
        return self._ratios(label, against, "requests_per_sec")

    def cpu(self, label: str, against: str) -> Spread:
        """``label``'s worker CPU time per request over ``against``'s, pair by pair."""
        return self._ratios(label, against, "cpu_us")

    def report(self, label: str, against: str, goal: float | None) -> Spread:
        """Print how ``label`` compares with ``against`` (and its ``goal`` for req/s); its spread."""
        throughput = self.throughput(label, against)
        judged = "no goal" if goal is None else verdict(throughput.median, goal)
        print(f"  {label} / {against}:")
        print(f"    req/s {throughput}  over {len(self._pairs(label, against))} pairs  ({judged})")
        print(f"    worker CPU per request {self.cpu(label, against)}")
        return throughput


def measure_pairs(pairs: Sequence[Pair], *, rounds: int, seconds: int, connections: int, title: str) -> Comparison:
    """Run each pair back to back, in alternating order, ``rounds`` times; print each run, each
    variant's medians, and each pair's ratios. Return the runs."""
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"at least {MIN_ROUNDS} rounds: a median of fewer pairs says little")
    print(
        f"\n== {title}: {rounds} rounds of {len(pairs)} pairs, {seconds} s a run, -c{connections}, in alternating order"
    )
    variants = list({variant.label: variant for pair in pairs for variant in (pair.reference, pair.variant)}.values())
    for variant in variants:  # each worker checks each key with bcrypt once, before any round
        run_wrk(variant.url, variant.lua, connections=connections, seconds=1)
    runs: dict[tuple[str, str], list[tuple[WrkResult, WrkResult]]] = {
        (pair.variant.label, pair.reference.label): [] for pair in pairs
    }
    by_variant: dict[str, list[WrkResult]] = {variant.label: [] for variant in variants}
    for round_number in range(1, rounds + 1):
        for pair in pairs:
            measured = {}
            for variant in (pair.reference, pair.variant) if round_number % 2 else (pair.variant, pair.reference):
                result = run_wrk_balanced(variant.url, variant.lua, connections=connections, seconds=seconds)
                measured[variant.label] = result
                by_variant[variant.label].append(result)
                print(f"  round {round_number}  {variant.label:34} {result.line()}")
                if result.non_2xx:
                    print(
                        f"  !!! WARNING: {result.non_2xx} responses were not 2xx: this run's figure is meaningless !!!"
                    )
            runs[pair.variant.label, pair.reference.label].append(
                (measured[pair.variant.label], measured[pair.reference.label])
            )

    print(f"\n  {'variant (median of its runs)':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'us CPU/req':>11}")
    for label, results in by_variant.items():
        print(
            f"  {label:36} {statistics.median(r.requests_per_sec for r in results):9.1f} "
            f"{statistics.median(r.p50_ms for r in results):8.2f} "
            f"{statistics.median(r.p99_ms for r in results):8.2f} "
            f"{statistics.median(r.cpu_us or 0.0 for r in results):11.1f}"
        )
    comparison = Comparison(runs)
    for pair in pairs:
        comparison.report(pair.variant.label, pair.reference.label, pair.goal)
    return comparison


def measure_overhead(
    variants: Sequence[Variant], *, rounds: int, seconds: int, connections: int, title: str = "1. overhead"
) -> Comparison:
    """Each variant after the first judged against the first (the baseline), in pairs
    (:func:`measure_pairs`)."""
    baseline, *others = variants
    return measure_pairs(
        [Pair(variant, baseline, variant.goal) for variant in others],
        rounds=rounds,
        seconds=seconds,
        connections=connections,
        title=title,
    )
