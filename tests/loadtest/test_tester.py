"""The load tester: statistics against numpy, options, the scheduler, and runs against the real gateway."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from allxai.loadtest.args import DEFAULT_TOTAL, parse_args, parse_mix, parse_seconds
from allxai.loadtest.report import BAR_WIDTH, histogram_lines, render_csv, render_json, render_text
from allxai.loadtest.run import Plan, run_level
from allxai.loadtest.stats import (
    Bucket,
    CallRecord,
    code_distribution,
    histogram,
    latency_stats,
    level_report,
    percentile,
)
from allxai.loadtest.tester import find_images, main
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway

# ---- statistics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentiles_equal_numpys(n: int) -> None:
    values = list(np.random.default_rng(n).lognormal(-3, 1, n))
    for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=1e-15)


def test_percentile_refuses_no_values_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0-100"):
        percentile([1.0], 101)


def test_latency_stats_equal_numpys() -> None:
    values = list(np.random.default_rng(3).exponential(0.05, 500))
    stats = latency_stats(values)
    assert stats is not None
    assert stats.min == min(values) and stats.max == max(values)
    assert stats.mean == pytest.approx(np.mean(values), rel=1e-12)
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max
    assert latency_stats([]) is None


@pytest.mark.parametrize("bins", [1, 5, 10, 13])
def test_histogram_bins_equal_numpys(bins: int) -> None:
    values = list(np.random.default_rng(bins).gamma(2.0, 0.01, 400))
    counts, edges = np.histogram(values, bins)
    buckets = histogram(values, bins)
    assert [b.count for b in buckets] == counts.tolist()
    assert [b.low for b in buckets] + [buckets[-1].high] == pytest.approx(edges.tolist(), rel=1e-12)


def test_histogram_values_on_edges_fall_as_numpys_do() -> None:
    values = [float(v) for v in range(11)]  # with 5 bins every edge is a value; the last bin is closed
    assert [b.count for b in histogram(values, 5)] == np.histogram(values, 5)[0].tolist() == [2, 2, 2, 2, 3]
    assert histogram([0.2, 0.2, 0.2], 10) == [Bucket(0.2, 0.2, 3)]
    assert histogram([], 10) == []


def test_code_distribution_groups_and_counts_messages() -> None:
    records = [CallRecord("Classify", 0, 0.01, "OK")] * 3 + [
        CallRecord("Classify", 0, 0.01, "INVALID_ARGUMENT", "image.data: cannot decode"),
        CallRecord("Explain", 0, 0.01, "INVALID_ARGUMENT", "image.data: cannot decode"),
        CallRecord("Explain", 0, 0.01, "INVALID_ARGUMENT", "options.num_samples: too many"),
        CallRecord("Explain", 0, 0.01, "UNAVAILABLE", "x" * 500),
        CallRecord("ClassifySpecimen", 0, 0.01, "INVALID_ARGUMENT", "images[3].data: cannot decode"),
        CallRecord("ClassifySpecimen", 0, 0.01, "INVALID_ARGUMENT", "images[12].data: cannot decode"),
    ]
    codes = code_distribution(records)
    assert [(c.code, c.count) for c in codes] == [("OK", 3), ("INVALID_ARGUMENT", 5), ("UNAVAILABLE", 1)]
    assert codes[0].messages == ()
    assert codes[1].messages == (
        ("image.data: cannot decode", 2),
        ("images[i].data: cannot decode", 2),
        ("options.num_samples: too many", 1),
    )
    assert codes[2].messages == (("x" * 200, 1),)


def test_level_report_per_method_and_renderers() -> None:
    records = [CallRecord("Classify", i * 0.01, 0.01 + i * 0.001, "OK") for i in range(30)] + [
        CallRecord("Explain", 0.05, 0.5, "OK"),
        CallRecord("Explain", 0.06, 0.02, "RESOURCE_EXHAUSTED", "too many explanations"),
    ]
    level = level_report(records, concurrency=4, rate=None, elapsed=2.0, sent=34, stopped_by="count", bins=5)
    assert level.overall.count == 32 and level.unfinished == 2
    assert (level.overall.ok, level.overall.failed, level.overall.rps) == (31, 1, 15.5)
    assert [(s.scope, s.count, s.failed) for s in level.methods] == [("Classify", 30, 0), ("Explain", 2, 1)]
    assert sum(b.count for b in level.overall.histogram) == 31

    meta = {"target": "t:1", "images": 3, "mix": "classify=0.9,explain=0.1"}
    text = render_text([level, level], meta)
    assert "Sweep:" in text and "RESOURCE_EXHAUSTED" in text and "1 x too many explanations" in text
    assert "Latency histogram, Explain (ms, OK calls):" in text and "2 cancelled in flight" in text
    assert "32 calls in 2.00 s: 31 OK, 15.5/s, 1 failed" in text and "Failed calls" in text
    data = json.loads(render_json([level], meta))
    assert data["target"] == "t:1" and data["levels"][0]["overall"]["latency_ms"]["max"] == 500.0
    rows = list(csv.DictReader(io.StringIO(render_csv([level]))))
    assert [r["method"] for r in rows] == ["all", "Classify", "Explain"]
    assert (rows[2]["count"], rows[2]["ok"], rows[2]["failed"]) == ("2", "1", "1")
    assert rows[2]["codes"] == "OK:1;RESOURCE_EXHAUSTED:1" and rows[2]["min_ms"] == "500.0"


def test_failures_are_reported_apart_from_throughput_and_latency() -> None:
    # Fast refusals must not make the server look fast: 10 answers of 100 ms, 30 refusals of 1 ms.
    records = [CallRecord("Classify", i * 0.1, 0.1, "OK") for i in range(10)] + [
        CallRecord("Classify", 0.01 * i, 0.001, "UNAVAILABLE" if i % 3 else "DEADLINE_EXCEEDED", "down")
        for i in range(30)
    ]
    level = level_report(records, concurrency=2, rate=None, elapsed=2.0, sent=40, stopped_by="count")
    o = level.overall
    assert (o.count, o.ok, o.failed) == (40, 10, 30)
    assert o.rps == pytest.approx(5.0)  # OK calls per second, not 20
    assert (
        o.latency is not None and o.latency.min == pytest.approx(0.1) and o.latency.p50 == pytest.approx(0.1)
    )
    assert o.failed_latency is not None and o.failed_latency.max == pytest.approx(0.001)
    assert sum(b.count for b in o.histogram) == 10
    assert [(c.code, c.count) for c in o.codes] == [
        ("OK", 10),
        ("UNAVAILABLE", 20),
        ("DEADLINE_EXCEEDED", 10),
    ]
    summary = json.loads(render_json([level], {}))["levels"][0]["overall"]
    assert (summary["ok"], summary["failed"], summary["rps"]) == (10, 30, 5.0)
    assert summary["latency_ms"]["p99"] == pytest.approx(100.0)
    assert summary["failed_latency_ms"]["p50"] == pytest.approx(1.0)
    # All calls failed: no latency and no throughput to show, but every failure counted.
    refused = level_report(records[10:], concurrency=2, rate=None, elapsed=1.0, sent=30, stopped_by="count")
    assert refused.overall.latency is None and refused.overall.rps == 0.0 and refused.overall.failed == 30
    assert "0 OK, 0.0/s, 30 failed" in render_text([refused], {})


def test_histogram_bars_scale_to_the_largest_bin() -> None:
    lines = histogram_lines(histogram([0.001] * 8 + [0.002] * 4 + [0.004], 3))
    bars = [line.split("|")[1] for line in lines]
    assert [len(b) for b in bars] == [BAR_WIDTH, BAR_WIDTH // 2, 5]
    assert lines[0].strip().startswith("2.000 [8] |")


# ---- options ---------------------------------------------------------------------------------------------


def test_defaults_bound_every_run(tmp_path: Path) -> None:
    settings = parse_args([str(tmp_path)])
    assert settings.total == DEFAULT_TOTAL and settings.duration is None and settings.levels == [4]
    assert settings.max_time == 600 and not settings.security.uses_tls and settings.mix == {"classify": 1.0}
    timed = parse_args([str(tmp_path), "-z", "2m", "-t", "500ms"])
    assert timed.total is None and timed.duration == 120 and timed.max_time == 120.5


def test_mix_and_durations_parse() -> None:
    assert parse_mix("classify=0.9, Explain=0.1") == pytest.approx({"classify": 0.9, "explain": 0.1})
    assert parse_mix("classify=3,explain=1,specimen=0") == {"classify": 0.75, "explain": 0.25}
    assert parse_mix("explain") == {"explain": 1.0}
    assert [parse_seconds(t) for t in ("30", "30s", "250ms", "1.5m", "1h")] == [30, 30, 0.25, 90, 3600]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "classify=0.9,predict=0.1"], "unknown method 'predict'"),
        (["--mix", "classify=lots"], "not a number"),
        (["--mix", "classify=0,explain=0"], "needs a positive weight"),
        (["--mix", "classify=-1"], "must be a finite number >= 0"),
        (["--mix", "classify=1,classify=2"], "appears twice"),
        (["-n", "10", "-z", "5s"], "not allowed with argument"),
        (["-n", "0"], "must be from 1 to"),
        (["--seed", str(2**63)], "--seed: must be from 0 to 4294967295"),
        (["--explain-samples", "3e9"], "--explain-samples: not an integer"),
        (["--explain-samples", "3000000000"], "--explain-samples: must be from 1 to 2147483647"),
        (["-z", "soon"], "not a duration"),
        (["-c", "2", "--sweep", "1,2"], "not allowed with argument"),
        (["--sweep", "1,0"], "at least 1"),
        (["--sweep", "1,2", "-r", "10"], "cannot be combined with --rate"),
        (["--tls-cert", "c.pem"], "needs its key"),
        (["--warmup", "-1"], "--warmup: must be from 0 to"),
    ],
)
def test_bad_options_exit_with_a_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([str(tmp_path), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_tls_and_token_options_are_the_allxai_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    settings = parse_args([str(tmp_path), "--tls-ca", "ca.pem", "--token-file", str(token_file)])
    assert settings.security.uses_tls and settings.security.token == "s3cret"
    assert "s3cret" not in json.dumps(settings.describe(1))
    monkeypatch.setenv("ALLXAI_TOKEN", "t")
    plain = parse_args([str(tmp_path), "--plaintext-token"])
    assert not plain.security.uses_tls and plain.security.metadata() == (("authorization", "Bearer t"),)
    with pytest.raises(SystemExit) as exited:
        parse_args([str(tmp_path)])  # $ALLXAI_TOKEN without TLS: refused, as by allxai and the watcher
    assert exited.value.code == 2 and "clear text" in capsys.readouterr().err


def test_an_output_file_that_cannot_be_written_stops_the_run_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exited:
        parse_args([str(tmp_path), "-o", str(tmp_path / "file" / "r.txt")])
    assert exited.value.code == 2 and "--output: cannot make the folder" in capsys.readouterr().err
    # A missing folder is made at once, so the report written after the run has somewhere to go.
    assert parse_args([str(tmp_path), "-o", str(tmp_path / "new" / "r.txt")]).output is not None
    assert (tmp_path / "new").is_dir()


def test_images_are_found_recursively_by_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.PNG", "a/b/y.tiff", "a/b/z.jpeg", "a/notes.txt", "w.bmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])] == [
        "a/b/y.tiff",
        "a/b/z.jpeg",
        "a/x.PNG",
        "w.bmp",
    ]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    assert main([str(empty), "-q"]) == 2
    assert "no images (bmp, jpeg, jpg, png, tif, tiff) in" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_plan_is_seeded_and_follows_the_mix() -> None:
    mix = {"classify": 0.9, "explain": 0.1}
    first = [Plan(mix, 3, seed=7).next() for _ in range(1)]
    a, b = Plan(mix, 3, seed=7), Plan(mix, 3, seed=7)
    calls = [a.next() for _ in range(5000)]
    assert calls == [b.next() for _ in range(5000)] and calls[0] == first[0]
    assert [image for _, image in calls[:7]] == [0, 1, 2, 0, 1, 2, 0]
    share = sum(method == "explain" for method, _ in calls) / len(calls)
    assert 0.08 < share < 0.12


# ---- the scheduler, with a stand-in for the gateway -------------------------------------------------------


class FakeServer:
    """Answers after ``delay`` seconds and remembers how many calls were in flight at once."""

    def __init__(self, delay: float, fail_every: int = 0) -> None:
        self.delay, self.fail_every = delay, fail_every
        self.in_flight = self.most_in_flight = self.calls = 0

    async def __call__(self, method: str, image: int) -> None:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.fail_every and number % self.fail_every == 0:
            empty = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, empty, empty, details="bad image")


def _plan() -> Plan:
    return Plan({"classify": 1.0}, 2, 0)


async def test_closed_loop_keeps_concurrency_in_flight_and_records_codes() -> None:
    server = FakeServer(0.01, fail_every=4)
    result = await run_level(
        server, _plan(), concurrency=3, total=20, duration=None, rate=None, max_time=10, stop=asyncio.Event()
    )
    assert result.sent == len(result.records) == 20 and result.stopped_by == "count"
    assert server.most_in_flight == 3
    assert [(c.code, c.count) for c in code_distribution(result.records)] == [
        ("OK", 15),
        ("INVALID_ARGUMENT", 5),
    ]


async def test_open_loop_starts_calls_on_schedule() -> None:
    server = FakeServer(0.05)
    result = await run_level(
        server, _plan(), concurrency=100, total=20, duration=None, rate=200, max_time=10, stop=asyncio.Event()
    )
    assert len(result.records) == 20 and result.stopped_by == "count"
    # calls overlap (each takes 10 schedule slots), and each one's start is its slot, not when it got going
    assert server.most_in_flight > 5
    assert sorted(r.start for r in result.records) == pytest.approx([i / 200 for i in range(20)], abs=1e-9)
    assert result.elapsed >= 0.095 + 0.05  # no upper bound: a busy machine may be slower, not wrong


async def test_open_loop_counts_queueing_behind_the_limit_as_latency() -> None:
    result = await run_level(
        FakeServer(0.05),
        _plan(),
        concurrency=1,
        total=4,
        duration=None,
        rate=100,
        max_time=10,
        stop=asyncio.Event(),
    )
    latencies = sorted(r.latency for r in result.records)
    assert latencies[-1] >= 4 * 0.05 - 0.03 - 0.005  # the last one waited for the three before it


async def test_duration_mode_stops_issuing_after_the_duration() -> None:
    result = await run_level(
        FakeServer(0.01),
        _plan(),
        concurrency=2,
        total=None,
        duration=0.2,
        rate=None,
        max_time=5,
        stop=asyncio.Event(),
    )
    assert result.stopped_by == "duration" and result.elapsed >= 0.2
    # Every call started within the duration: the start is stamped with the clock read that let it start
    # (two reads used to differ by microseconds, enough to fail on a loaded machine).
    assert all(r.start < 0.2 for r in result.records) and len(result.records) == result.sent


class HangsAfter:
    """Answers the first ``answered`` calls at once; later ones hang until cancelled. When ``hanging``
    calls hang at once it sets ``stop``: the stop then comes mid-call whatever the machine's speed."""

    def __init__(self, answered: int, hanging: int, stop: asyncio.Event) -> None:
        self.answered, self.hanging, self.stop = answered, hanging, stop
        self.calls = self.hung = 0

    async def __call__(self, method: str, image: int) -> None:
        self.calls += 1
        if self.calls <= self.answered:
            return
        self.hung += 1
        if self.hung == self.hanging:
            self.stop.set()
        await asyncio.Event().wait()  # never answered: only cancellation ends it


async def test_the_hard_cap_and_a_stop_cancel_calls_in_flight() -> None:
    # Calls that never end: the cap alone must end the level (it would hang otherwise).
    capped = await run_level(
        HangsAfter(0, 0, asyncio.Event()),
        _plan(),
        concurrency=2,
        total=5,
        duration=None,
        rate=None,
        max_time=0.2,
        stop=asyncio.Event(),
    )
    assert capped.stopped_by == "max-time" and capped.records == [] and capped.sent == 2
    # A stop while both workers are mid-call: those two are cancelled, sent but not recorded.
    stop = asyncio.Event()
    stopped = await run_level(
        HangsAfter(4, 2, stop),
        _plan(),
        concurrency=2,
        total=None,
        duration=None,
        rate=None,
        max_time=120,
        stop=stop,
    )
    assert stopped.stopped_by == "interrupt"
    assert len(stopped.records) == 4 and stopped.sent == 6
    assert all(r.code == "OK" for r in stopped.records)


async def test_a_failure_other_than_an_rpc_status_surfaces() -> None:
    async def broken(method: str, image: int) -> None:
        raise KeyError(method)

    with pytest.raises(KeyError):
        await run_level(
            broken,
            _plan(),
            concurrency=1,
            total=1,
            duration=None,
            rate=None,
            max_time=5,
            stop=asyncio.Event(),
        )


# ---- against the real gateway ------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path, cell_png: bytes) -> Path:
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for name in ("a.png", "b.png", "more/c.png"):
        (folder / name).write_bytes(cell_png)
    return folder


def _check_summary(summary: dict[str, Any]) -> None:
    latency = summary["latency_ms"]
    assert sum(c["count"] for c in summary["codes"]) == summary["count"]
    assert summary["ok"] + summary["failed"] == summary["count"]
    assert sum(b["count"] for b in summary["histogram_ms"]) == summary["ok"]
    assert (
        latency["min"]
        <= latency["p50"]
        <= latency["p90"]
        <= latency["p95"]
        <= latency["p99"]
        <= latency["max"]
    )
    assert latency["min"] <= latency["mean"] <= latency["max"]


def test_a_mix_against_the_gateway(gateway: RunningGateway, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = [
        str(images),
        "--target",
        gateway.target,
        "-n",
        "24",
        "-c",
        "4",
        "--warmup",
        "2",
        "--connections",
        "2",
    ]
    mix = ["--mix", "classify=0.75,explain=0.25", "--explain-samples", "20", "--seed", "3"]
    assert main([*args, *mix, "-q", "--format", "json", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 3 and report["mix"] == "classify=0.75,explain=0.25"
    (level,) = report["levels"]
    overall = level["overall"]
    assert (
        overall["count"] == level["sent"] == 24
        and level["unfinished"] == 0
        and level["stopped_by"] == "count"
    )
    assert overall["codes"] == [{"code": "OK", "count": 24, "messages": []}]
    methods = {m["method"]: m for m in level["methods"]}
    assert set(methods) == {"Classify", "Explain"} and methods["Explain"]["count"] >= 2
    assert sum(m["count"] for m in methods.values()) == 24
    for summary in (overall, *methods.values()):
        _check_summary(summary)
    # Explain does far more work than Classify
    assert methods["Explain"]["latency_ms"]["p50"] > methods["Classify"]["latency_ms"]["p50"]


def test_a_sweep_as_csv_and_text(
    gateway: RunningGateway, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.csv"
    args = [str(images), "--target", gateway.target, "-n", "12", "--sweep", "1,2", "-q"]
    assert main([*args, "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["concurrency"], r["method"], r["count"], r["ok"]) for r in rows] == [
        ("1", "all", "12", "12"),
        ("1", "Classify", "12", "12"),
        ("2", "all", "12", "12"),
        ("2", "Classify", "12", "12"),
    ]
    assert all(float(r["p50_ms"]) <= float(r["p99_ms"]) <= float(r["max_ms"]) for r in rows)
    assert main([*args, "--mix", "specimen", "--specimen-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "Sweep:" in text and "concurrency 2: 12 calls" in text and "ClassifySpecimen" in text
    assert "Latency histogram, all (ms, OK calls):" in text and "∎" in text


def test_an_undecodable_image_shows_in_the_codes(
    gateway: RunningGateway, images: Path, tmp_path: Path
) -> None:
    (images / "more" / "broken.png").write_bytes(b"this is not a picture")
    out = tmp_path / "report.json"
    args = [str(images), "--target", gateway.target, "-z", "1s", "-r", "20", "-q", "--format", "json"]
    assert main([*args, "-o", str(out)]) == 1  # some calls failed
    (level,) = json.loads(out.read_text())["levels"]
    overall = level["overall"]
    _check_summary(overall)
    # open loop: calls are due at i / 20 s for as long as that is under 1 s
    assert (
        level["stopped_by"] == "duration" and level["rate"] == 20 and overall["count"] == level["sent"] == 20
    )
    codes = {c["code"]: c for c in overall["codes"]}
    assert set(codes) == {"OK", "INVALID_ARGUMENT"}
    # four images cycled in their sorted order (a, b, more/broken, more/c): every fourth call from the third
    assert codes["INVALID_ARGUMENT"]["count"] == 5
    ((message, count),) = [(m["message"], m["count"]) for m in codes["INVALID_ARGUMENT"]["messages"]]
    assert message.startswith("image") and count == codes["INVALID_ARGUMENT"]["count"]


def test_an_unreachable_target_fails_fast(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    assert main([str(images), "--target", f"127.0.0.1:{port}", "-t", "500ms", "-q"]) == 2
    assert time.perf_counter() - started < 5
    assert f"cannot connect to 127.0.0.1:{port} within 0.5 s" in capsys.readouterr().err


def test_ctrl_c_stops_and_still_reports(gateway: RunningGateway, images: Path) -> None:
    command = [sys.executable, "-m", "allxai.loadtest.tester", str(images), "--target", gateway.target]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # its progress bar says when calls run
    process = subprocess.Popen(
        [*command, "-z", "60s", "-c", "2", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None and process.stdout is not None
    stderr: list[bytes] = []
    calls_done = threading.Event()

    def read_stderr(fd: int) -> None:
        while chunk := os.read(fd, 4096):
            stderr.append(chunk)
            if re.search(rb"c=2: [1-9][0-9]*call", b"".join(stderr)):
                calls_done.set()

    reader = threading.Thread(target=read_stderr, args=(process.stderr.fileno(),), daemon=True)
    reader.start()
    try:
        assert calls_done.wait(timeout=30), b"".join(stderr).decode()
        process.send_signal(signal.SIGINT)
        # It ends well before its 60 s duration; how soon depends on the machine's load, so no clock.
        assert process.wait(timeout=20) == 130, b"".join(stderr).decode()
    finally:
        process.kill()
        process.wait(timeout=60)
        reader.join(timeout=5)
        process.stderr.close()
    with process.stdout:
        (level,) = json.loads(process.stdout.read())["levels"]
    assert level["stopped_by"] == "interrupt" and level["elapsed_s"] < 60
    assert level["overall"]["count"] > 0 and level["sent"] == level["overall"]["count"] + level["unfinished"]


# ---- TLS and the bearer token, against a stand-in server that checks them ---------------------------------


class _CheckingServicer(pb_grpc.DiagnosisServiceServicer):
    def Classify(  # noqa: N802  (the RPC's name)
        self, request: pb.ClassifyRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyResponse:
        if dict(context.invocation_metadata()).get("authorization") != "Bearer s3cret":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid token")
        return pb.ClassifyResponse(image_id=request.image.image_id)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "allxai-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_DiagnosisServiceServicer_to_server(_CheckingServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    yield f"127.0.0.1:{port}", tmp_path / "ca.pem"
    server.stop(grace=None)


def test_tls_with_a_bearer_token(
    tls_server: tuple[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, ca = tls_server
    out = tmp_path / "tls.json"
    args = [
        str(images),
        "--target",
        target,
        "--tls-ca",
        str(ca),
        "--tls-server-name",
        "gateway.test",
        "-n",
        "6",
        "-q",
    ]
    monkeypatch.setenv("ALLXAI_TOKEN", "s3cret")
    assert main([*args, "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["levels"][0]["overall"]["codes"][0] == {
        "code": "OK",
        "count": 6,
        "messages": [],
    }
    monkeypatch.setenv("ALLXAI_TOKEN", "wrong")
    assert main([*args, "--format", "json", "-o", str(out)]) == 1
    overall = json.loads(out.read_text())["levels"][0]["overall"]
    assert (overall["ok"], overall["failed"], overall["rps"]) == (0, 6, 0.0)
    assert set(overall["latency_ms"].values()) == {None}  # refusals are not latency
    (code,) = overall["codes"]
    assert code == {
        "code": "UNAUTHENTICATED",
        "count": 6,
        "messages": [{"message": "no valid token", "count": 6}],
    }
