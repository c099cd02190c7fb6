"""Load-test the gateway in the manner of ghz and perf_analyzer: ``allxai loadtest -h``.

Workers are asyncio tasks over grpc.aio channels. Closed loop (``-c``: that many calls always in flight)
or open loop (``-r``: calls start on a fixed schedule, at most ``-c`` in flight), a sweep over concurrency
levels, a seeded mix of Classify, Explain and ClassifySpecimen over images cycled from folders. Every run
is bounded: by a count or a duration, a deadline per call, and a hard cap on each level's time; ctrl-C stops
at once and still reports what was collected. Options are in ``args``, the scheduler in ``run``,
the statistics in ``stats`` and the renderers in ``report``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from tqdm import tqdm  # type: ignore[import-untyped]

from allxai.client.inputs import IMAGE_SUFFIXES, folder_images
from allxai.client.sdk import MAX_MESSAGE_BYTES
from allxai.loadtest.args import LoadSettings, UsageError, parse_args
from allxai.loadtest.report import render_csv, render_json, render_text
from allxai.loadtest.run import Caller, Plan, run_level
from allxai.loadtest.stats import LevelReport, level_report
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from allxai.v1.diagnosis_pb2_grpc import DiagnosisServiceAsyncStub

#: Exit status when the run was cut short by ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def find_images(paths: Sequence[Path]) -> list[Path]:
    """Image files (by suffix) among ``paths``, folders searched recursively, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += folder_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{path} does not exist")
    if not found:
        suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise UsageError(f"no images ({suffixes}) in {', '.join(map(str, paths))}")
    return found


def _channel(settings: LoadSettings) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # channels with equal arguments would share one TCP connection through the global subchannel pool
        ("grpc.use_local_subchannel_pool", 1),
        # every status is counted as the gateway gave it: no transparent retries hiding failures
        ("grpc.enable_retries", 0),
    ]
    options += settings.security.channel_options()
    credentials = settings.security.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(settings.target, options=options)
    return grpc.aio.secure_channel(settings.target, credentials, options=options)


def make_caller(
    stubs: Sequence[DiagnosisServiceAsyncStub], images: Sequence[Path], settings: LoadSettings
) -> Caller:
    """A caller that sends prepared requests round-robin over ``stubs`` (one per connection)."""
    spec = pb.ModelSpec(name=settings.model)
    data = [pb.Image(data=p.read_bytes(), image_id=p.name) for p in images]
    options = pb.ExplainOptions(num_samples=settings.explain_samples, seed=settings.seed)
    # Requests are built once: serialising them is the client's only per-call work, as with ghz's payloads.
    classify = [pb.ClassifyRequest(image=i, model_spec=spec) for i in data]
    explain = [pb.ExplainRequest(image=i, model_spec=spec, options=options) for i in data]
    specimen = [
        pb.ClassifySpecimenRequest(
            images=[data[(j + k) % len(data)] for k in range(settings.specimen_size)], model_spec=spec
        )
        for j in range(len(data))
    ]
    # With TLS the token travels as the channel's call credentials; without, only where it is allowed.
    metadata = settings.security.metadata() or None
    turn = 0

    async def call(method: str, image: int) -> None:
        nonlocal turn
        stub = stubs[turn % len(stubs)]
        turn += 1
        deadline = settings.deadline
        if method == "classify":
            await stub.Classify(classify[image], timeout=deadline, metadata=metadata)
        elif method == "explain":
            await stub.Explain(explain[image], timeout=deadline, metadata=metadata)
        else:
            await stub.ClassifySpecimen(specimen[image], timeout=deadline, metadata=metadata)

    return call


async def _measure(
    call: Caller, settings: LoadSettings, n_images: int, concurrency: int, stop: asyncio.Event
) -> LevelReport:
    """One level, with a progress bar on stderr; every level replays the same plan."""
    label = f"rate {settings.rate:g}/s" if settings.rate else f"c={concurrency}"
    with tqdm(
        total=settings.total,
        desc=label,
        unit="call",
        file=sys.stderr,
        disable=settings.quiet,
        dynamic_ncols=True,
    ) as bar:
        result = await run_level(
            call,
            Plan(settings.mix, n_images, settings.seed),
            concurrency=concurrency,
            total=settings.total,
            duration=settings.duration,
            rate=settings.rate,
            max_time=settings.max_time,
            stop=stop,
            on_done=lambda _: bar.update(1),
        )
    return level_report(
        result.records,
        concurrency=concurrency,
        rate=settings.rate,
        elapsed=result.elapsed,
        sent=result.sent,
        stopped_by=result.stopped_by,
        bins=settings.bins,
    )


async def _connect(channels: Sequence[grpc.aio.Channel], settings: LoadSettings, stop: asyncio.Event) -> None:
    # fail fast, in one line, rather than report a whole run of UNAVAILABLE
    ready = asyncio.ensure_future(asyncio.gather(*(c.channel_ready() for c in channels)))
    stopper = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {ready, stopper}
    await asyncio.wait(waiters, timeout=settings.deadline, return_when=asyncio.FIRST_COMPLETED)
    connected = ready.done()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    if not connected and not stop.is_set():
        raise UsageError(f"cannot connect to {settings.target} within {settings.deadline:g} s")


async def run(settings: LoadSettings, images: Sequence[Path], stop: asyncio.Event) -> list[LevelReport]:
    """Warm up, then run every level in turn; stops early (reporting what it has) once ``stop`` is set."""
    channels = [_channel(settings) for _ in range(settings.connections)]
    try:
        await _connect(channels, settings, stop)
        call = make_caller([pb_grpc.DiagnosisServiceStub(c) for c in channels], images, settings)
        if settings.warmup:
            # its own plan, so the measured calls are the same whatever the warm-up
            await run_level(
                call,
                Plan(settings.mix, len(images), settings.seed + 1),
                concurrency=settings.levels[0],
                total=settings.warmup,
                duration=None,
                rate=None,
                max_time=settings.max_time,
                stop=stop,
            )
        reports = []
        for concurrency in settings.levels:
            if stop.is_set():
                break
            reports.append(await _measure(call, settings, len(images), concurrency, stop))
        return reports
    finally:
        await asyncio.gather(*(c.close(grace=None) for c in channels))


async def _run_with_signals(settings: LoadSettings, images: Sequence[Path]) -> tuple[list[LevelReport], bool]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        # ctrl-C sets the event rather than raising, so calls in flight are cancelled and the report written
        loop.add_signal_handler(signal.SIGINT, stop.set)
        handled = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not a POSIX loop
        handled = False
    try:
        return await run(settings, images, stop), stop.is_set()
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Load-test a gateway (closed or open loop, a sweep of concurrency levels) and write its report.

    Returns 0 when every call succeeded, 1 when some failed, 2 when it cannot start (bad options, no images,
    no connection within one deadline), 130 after ctrl-C (with the report of what was collected).
    """
    settings = parse_args(argv)
    try:
        images = find_images(settings.images)
        levels, interrupted = asyncio.run(_run_with_signals(settings, images))
    except (UsageError, OSError) as exc:
        print(f"allxai loadtest: error: {exc}", file=sys.stderr)
        return 2
    meta = settings.describe(len(images))
    if settings.output_format == "json":
        text = render_json(levels, meta)
    elif settings.output_format == "csv":
        text = render_csv(levels)
    else:
        text = render_text(levels, meta)
    if settings.output is None:
        sys.stdout.write(text)
    else:
        settings.output.write_text(text, encoding="utf-8")
    for level in levels:
        if level.stopped_by == "max-time":
            print(
                f"allxai loadtest: warning: concurrency {level.concurrency} stopped at the hard cap of "
                f"{settings.max_time:g} s (--max-time)",
                file=sys.stderr,
            )
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if any(level.overall.failed for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
