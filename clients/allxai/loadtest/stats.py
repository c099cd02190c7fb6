"""Statistics of a load test: plain functions over recorded calls, no I/O (the runner is ``loadtest``).

Throughput, latency percentiles and the histogram are over successful calls only; failed calls are
counted apart, by status code, with their own latency. A server that refuses calls fast would otherwise
look faster and busier than one that answers them. Latencies are in seconds here; the renderers in
``loadreport`` show milliseconds.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Percentiles every summary carries, as (name, q).
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0))

#: Longest error message kept per group: messages are for reading, not for storing request payloads.
MAX_MESSAGE_CHARS = 200

# "images[3].data: ..." and "images[5].data: ..." are one problem: indices do not split a group
_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True)
class CallRecord:
    """One finished call: its start (seconds from the level's start), its latency and its status."""

    method: str
    start: float
    latency: float
    code: str
    message: str = ""


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary of a non-empty set of calls, in seconds."""

    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True)
class Bucket:
    """One histogram bin: ``[low, high)``, the last one closed."""

    low: float
    high: float
    count: int


@dataclass(frozen=True)
class CodeCount:
    """How many calls ended with one status code, and their messages grouped and counted, commonest first."""

    code: str
    count: int
    messages: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Summary:
    """Everything reported for one scope of a level: ``all`` calls, or one method's.

    ``count``: finished calls, failed ones included; ``ok``: those that ended OK. ``rps``, ``latency``
    and ``histogram`` cover the OK calls only; ``failed_latency`` the others, and ``codes`` all of them.
    """

    scope: str
    count: int
    ok: int
    rps: float
    latency: LatencyStats | None
    histogram: list[Bucket]
    codes: list[CodeCount]
    failed_latency: LatencyStats | None = None

    @property
    def failed(self) -> int:
        """Calls that did not end OK."""
        return self.count - self.ok


@dataclass(frozen=True)
class LevelReport:
    """One run at one concurrency (or rate): the overall summary and one per method.

    ``sent`` counts calls started; ``unfinished`` those cancelled in flight when the run was cut short
    (by ctrl-C or the hard time cap), which are not in the statistics.
    """

    concurrency: int
    rate: float | None
    elapsed: float
    sent: int
    unfinished: int
    stopped_by: str
    overall: Summary
    methods: list[Summary] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between order statistics.

    The same definition as ``numpy.percentile``'s default (``method="linear"``), so figures compare with
    other tools' exports analysed in numpy.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0-100, not {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def latency_stats(latencies: Sequence[float]) -> LatencyStats | None:
    """Min, mean, p50/p90/p95/p99 and max; ``None`` for no calls (there is nothing to summarise)."""
    if not latencies:
        return None
    p = {name: percentile(latencies, q) for name, q in PERCENTILES}
    return LatencyStats(
        min=min(latencies),
        mean=math.fsum(latencies) / len(latencies),
        p50=p["p50"],
        p90=p["p90"],
        p95=p["p95"],
        p99=p["p99"],
        max=max(latencies),
    )


def histogram(values: Sequence[float], bins: int = 10) -> list[Bucket]:
    """Equal-width bins from the smallest to the largest value, as ``numpy.histogram(values, bins)`` makes.

    All values equal give one bin; no values give none.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [Bucket(low, high, len(values))]
    step = (high - low) / bins
    edges = [low + i * step for i in range(bins)] + [high]
    counts = [0] * bins
    for value in values:
        # bisect on the edges themselves rather than dividing by the width, so a value on an edge
        # falls in the bin that edge opens, exactly as numpy decides.
        counts[min(bisect_right(edges, value) - 1, bins - 1)] += 1
    return [Bucket(edges[i], edges[i + 1], counts[i]) for i in range(bins)]


def code_distribution(records: Iterable[CallRecord]) -> list[CodeCount]:
    """Calls per status code, OK first then commonest first, each with its messages grouped and counted.

    Messages that differ only in a bracketed index (``images[3]``, ``images[5]``) count as one: ``images[i]``.
    """
    codes: Counter[str] = Counter()
    messages: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        codes[record.code] += 1
        if record.code != "OK":
            messages[record.code][_INDEX.sub("[i]", record.message)[:MAX_MESSAGE_CHARS]] += 1
    ordered = sorted(codes.items(), key=lambda item: (item[0] != "OK", -item[1], item[0]))
    return [
        CodeCount(code, count, tuple(sorted(messages[code].items(), key=lambda m: (-m[1], m[0]))))
        for code, count in ordered
    ]


def summarize(scope: str, records: Sequence[CallRecord], elapsed: float, bins: int = 10) -> Summary:
    """The summary of ``records`` over ``elapsed`` seconds of wall time.

    Throughput and latency are the successful calls' (unlike ghz, which mixes in failures: a fast
    refusal would pull the percentiles down and the throughput up). Failures are counted by status
    code, with their own latency beside.
    """
    ok = [r.latency for r in records if r.code == "OK"]
    failed = [r.latency for r in records if r.code != "OK"]
    return Summary(
        scope=scope,
        count=len(records),
        ok=len(ok),
        rps=len(ok) / elapsed if elapsed > 0 else 0.0,
        latency=latency_stats(ok),
        histogram=histogram(ok, bins),
        codes=code_distribution(records),
        failed_latency=latency_stats(failed),
    )


def level_report(
    records: Sequence[CallRecord],
    *,
    concurrency: int,
    rate: float | None,
    elapsed: float,
    sent: int,
    stopped_by: str,
    bins: int = 10,
) -> LevelReport:
    """The overall summary and one per method (in order of first appearance) for one level's calls."""
    by_method: dict[str, list[CallRecord]] = {}
    for record in records:
        by_method.setdefault(record.method, []).append(record)
    return LevelReport(
        concurrency=concurrency,
        rate=rate,
        elapsed=elapsed,
        sent=sent,
        unfinished=sent - len(records),
        stopped_by=stopped_by,
        overall=summarize("all", records, elapsed, bins),
        methods=[summarize(name, calls, elapsed, bins) for name, calls in by_method.items()],
    )
