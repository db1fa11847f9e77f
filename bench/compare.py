"""Variants of a request measured in alternating rounds, compared pair by pair.

Each round runs every variant once, in order, then the next round in the reverse order (A B C,
then C B A, ...), so that whatever drifts over a run (the machine's other work, caches, the
database's size) weighs on every variant alike. A ratio is taken within each round (the pair of
the variant's run and its reference's), and what is reported is the median of those pair
ratios with their min and max, for req/s and for the workers' CPU time per request.
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


class Comparison:
    """The runs of every variant, round by round."""

    def __init__(self, runs: dict[str, list[WrkResult]]) -> None:
        self.runs = runs

    def throughput(self, label: str, against: str) -> Spread:
        """``label``'s req/s over ``against``'s, pair by pair."""
        pairs = zip(self.runs[label], self.runs[against], strict=True)
        return Spread.of([run.requests_per_sec / reference.requests_per_sec for run, reference in pairs])

    def cpu(self, label: str, against: str) -> Spread:
        """``label``'s worker CPU time per request over ``against``'s, pair by pair."""
        pairs = zip(self.runs[label], self.runs[against], strict=True)
        return Spread.of([(run.cpu_us or 0.0) / (reference.cpu_us or 1.0) for run, reference in pairs])

    def report(self, label: str, against: str, goal: float | None) -> Spread:
        """Print how ``label`` compares with ``against`` (and its ``goal`` for req/s); its spread."""
        throughput = self.throughput(label, against)
        judged = "no goal" if goal is None else verdict(throughput.median, goal)
        print(f"  {label} / {against}:")
        print(f"    req/s {throughput}  over {len(self.runs[label])} pairs  ({judged})")
        print(f"    worker CPU per request {self.cpu(label, against)}")
        return throughput


def measure_overhead(
    variants: Sequence[Variant], *, rounds: int, seconds: int, connections: int, title: str = "1. overhead"
) -> Comparison:
    """Run the variants in alternating rounds; print each run, each variant's medians, and each
    variant against the first (the baseline). Return the runs."""
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"at least {MIN_ROUNDS} rounds: a median of fewer pairs says little")
    print(
        f"\n== {title}: {rounds} rounds x ({', '.join(v.label for v in variants)}), {seconds} s each, -c{connections},"
        " alternating order"
    )
    runs: dict[str, list[WrkResult]] = {variant.label: [] for variant in variants}
    for variant in variants:  # each worker checks each key with bcrypt once, before any round
        run_wrk(variant.url, variant.lua, connections=connections, seconds=1)
    for round_number in range(1, rounds + 1):
        for variant in variants if round_number % 2 else variants[::-1]:
            result = run_wrk_balanced(variant.url, variant.lua, connections=connections, seconds=seconds)
            runs[variant.label].append(result)
            print(f"  round {round_number}  {variant.label:34} {result.line()}")
            if result.non_2xx:
                print(f"  !!! WARNING: {result.non_2xx} responses were not 2xx: this round's figure is meaningless !!!")

    heading = f"variant (median of {rounds})"
    print(f"\n  {heading:36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'us CPU/req':>11}")
    for label, results in runs.items():
        print(
            f"  {label:36} {statistics.median(r.requests_per_sec for r in results):9.1f} "
            f"{statistics.median(r.p50_ms for r in results):8.2f} "
            f"{statistics.median(r.p99_ms for r in results):8.2f} "
            f"{statistics.median(r.cpu_us or 0.0 for r in results):11.1f}"
        )
    comparison = Comparison(runs)
    baseline = variants[0].label
    for variant in variants[1:]:
        comparison.report(variant.label, baseline, variant.goal)
    return comparison
