"""Load-test reports as text (in the manner of ghz), JSON and CSV: pure functions from reports to strings.

Calls/s and latency are the successful calls'; failed calls are reported apart, by status code.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from allxai.loadtest.stats import Bucket, LatencyStats, LevelReport, Summary

#: Widest histogram bar, in characters.
BAR_WIDTH = 40

_STAT_NAMES = ("min", "mean", "p50", "p90", "p95", "p99", "max")

CSV_COLUMNS = (
    "concurrency",
    "rate",
    "method",
    "count",
    "ok",
    "failed",
    "rps",
    *(f"{name}_ms" for name in _STAT_NAMES),
    "codes",
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _latency_ms(stats: LatencyStats | None) -> dict[str, float | None]:
    return {name: (_ms(getattr(stats, name)) if stats else None) for name in _STAT_NAMES}


def _codes_line(summary: Summary) -> str:
    return ";".join(f"{c.code}:{c.count}" for c in summary.codes)


def summary_dict(summary: Summary) -> dict[str, Any]:
    """A JSON-ready summary; latencies in milliseconds, of the OK calls (the failed ones' apart)."""
    return {
        "method": summary.scope,
        "count": summary.count,
        "ok": summary.ok,
        "failed": summary.failed,
        "rps": round(summary.rps, 3),
        "latency_ms": _latency_ms(summary.latency),
        "failed_latency_ms": _latency_ms(summary.failed_latency),
        "histogram_ms": [
            {"low": _ms(b.low), "high": _ms(b.high), "count": b.count} for b in summary.histogram
        ],
        "codes": [
            {
                "code": c.code,
                "count": c.count,
                "messages": [{"message": m, "count": n} for m, n in c.messages],
            }
            for c in summary.codes
        ],
    }


def report_dict(levels: Sequence[LevelReport], meta: dict[str, Any]) -> dict[str, Any]:
    """The whole report as one JSON-ready dictionary: the run's settings and one entry per level."""
    return {
        **meta,
        "levels": [
            {
                "concurrency": level.concurrency,
                "rate": level.rate,
                "elapsed_s": round(level.elapsed, 6),
                "sent": level.sent,
                "unfinished": level.unfinished,
                "stopped_by": level.stopped_by,
                "overall": summary_dict(level.overall),
                "methods": [summary_dict(s) for s in level.methods],
            }
            for level in levels
        ],
    }


def render_json(levels: Sequence[LevelReport], meta: dict[str, Any]) -> str:
    """The report as indented JSON."""
    return json.dumps(report_dict(levels, meta), indent=2) + "\n"


def render_csv(levels: Sequence[LevelReport]) -> str:
    """One row per level and scope: the ``all`` row of each level first, then one per method."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for level in levels:
        for summary in (level.overall, *level.methods):
            latency = _latency_ms(summary.latency)
            writer.writerow(
                [
                    level.concurrency,
                    "" if level.rate is None else level.rate,
                    summary.scope,
                    summary.count,
                    summary.ok,
                    summary.failed,
                    round(summary.rps, 3),
                    *("" if latency[name] is None else latency[name] for name in _STAT_NAMES),
                    _codes_line(summary),
                ]
            )
    return buffer.getvalue()


def histogram_lines(buckets: Sequence[Bucket]) -> list[str]:
    """Text bars like ghz's: each bin's upper bound in ms, its count, and a bar scaled to the largest bin."""
    if not buckets:
        return ["  (no calls)"]
    most = max(b.count for b in buckets)
    count_width = len(str(most))
    labels = [f"{b.high * 1000.0:.3f}" for b in buckets]
    label_width = max(len(label) for label in labels)
    lines = []
    for bucket, label in zip(buckets, labels, strict=True):
        # a bin with calls always shows, however small beside the largest
        bar = "∎" * max(round(BAR_WIDTH * bucket.count / most), 1 if bucket.count else 0)
        lines.append(f"  {label:>{label_width}} [{bucket.count:>{count_width}}] |{bar}")
    return lines


def _cells(stats: LatencyStats | None, names: Sequence[str] = _STAT_NAMES) -> str:
    latency = _latency_ms(stats)
    return "".join(f"{'-' if latency[n] is None else f'{latency[n]:.1f}':>9}" for n in names)


def _table(summaries: Sequence[Summary]) -> list[str]:
    # rps and latency over the OK calls: a refusal in 2 ms is not a fast answer.
    header = f"  {'method':<18}{'ok':>7}{'rps':>9}" + "".join(f"{n:>9}" for n in _STAT_NAMES)
    lines = [header + "  (ms, OK calls)"]
    lines += [f"  {s.scope:<18}{s.ok:>7}{s.rps:>9.1f}{_cells(s.latency)}" for s in summaries]
    failing = [s for s in summaries if s.failed]
    if failing:
        lines += ["", "Failed calls (not in the figures above):"]
        lines.append(f"  {'method':<18}{'failed':>7}{'':>9}" + "".join(f"{n:>9}" for n in _STAT_NAMES))
        lines += [f"  {s.scope:<18}{s.failed:>7}{'':>9}{_cells(s.failed_latency)}" for s in failing]
    return lines


def _codes_table(scopes: Sequence[Summary]) -> list[str]:
    # one column per scope; each code's messages (counted over all calls) under its row
    per_scope = [{c.code: c.count for c in s.codes} for s in scopes]
    lines = [f"  {'status code':<20}" + "".join(f"{s.scope:>18}" for s in scopes)]
    for code in scopes[0].codes:
        cells = "".join(f"{counts.get(code.code, '-'):>18}" for counts in per_scope)
        lines.append(f"  {code.code:<20}{cells}")
        lines.extend(f"    {n:>6} x {m or '(no message)'}" for m, n in code.messages)
    return lines


def _level_title(level: LevelReport) -> str:
    mode = (
        f"rate {level.rate:g}/s, at most {level.concurrency} in flight"
        if level.rate
        else (f"concurrency {level.concurrency}")
    )
    cut = f", {level.unfinished} cancelled in flight" if level.unfinished else ""
    o = level.overall
    failed = f", {o.failed} failed" if o.failed else ""
    return (
        f"{mode}: {o.count} calls in {level.elapsed:.2f} s: {o.ok} OK, {o.rps:.1f}/s{failed} "
        f"(stopped by {level.stopped_by}{cut})"
    )


def render_level(level: LevelReport) -> str:
    """One level as text: the table, the status codes with their messages, and a histogram per scope."""
    scopes = [level.overall, *level.methods]
    lines = [_level_title(level), "", "Latency:", *_table(scopes), "", *_codes_table(scopes)]
    for s in scopes:
        lines += ["", f"Latency histogram, {s.scope} (ms, OK calls):", *histogram_lines(s.histogram)]
    return "\n".join(lines) + "\n"


def render_text(levels: Sequence[LevelReport], meta: dict[str, Any]) -> str:
    """The report as text: a header, a sweep table when there are several levels, then every level."""
    target, images, mix = meta.get("target", "?"), meta.get("images", "?"), meta.get("mix", "")
    parts = [f"allxai load test of {target}: {images} images, mix {mix}\n"]
    if len(levels) > 1:
        rows = [
            f"  {'concurrency':>11}{'ok':>7}{'rps':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'failed':>8}"
            "  (ms, OK calls)"
        ]
        for level in levels:
            o = level.overall
            cells = _cells(o.latency, ("p50", "p90", "p99"))
            rows.append(f"  {level.concurrency:>11}{o.ok:>7}{o.rps:>9.1f}{cells}{o.failed:>8}")
        parts.append("Sweep:\n" + "\n".join(rows) + "\n")
    parts.extend(render_level(level) for level in levels)
    return "\n".join(parts)
