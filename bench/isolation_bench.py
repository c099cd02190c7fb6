"""Classify isolated from explanations: its latency idle and while explanations keep the model busy.

Target (issue 15): Classify's p99 while explanations run is at most its idle p99 plus the time of one
explanation batch (``ALLXAI_EXPLAIN_MODEL_BATCH_SIZE`` images through the model).

It starts the real gateway (``python -m allxai.server``, default settings, the benchmark's untrained
ALL-Net 224) and, in one run, alternates phases of ``--seconds`` each over ``--rounds`` rounds:

- **idle**: one closed loop of Classify calls (concurrency 1), nothing else;
- **loaded**: the same loop while ``--explanations`` StreamExplain calls of ``--samples`` samples run
  back to back (each restarted when it ends; a phase starts once each has sent its first progress).

The batch time is measured in the same run: the server's own model time (``timings.model``) of a
ClassifySpecimen of one batch of images, median of 5. Prints p50 and p99 per phase, the batch time and
PASS/FAIL. Other load on the shared cores falls on both phases alike, since they alternate. About 1.5 min:

    .venv/bin/python bench/isolation_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
from gateway_bench import cell_png, ensure_model, seconds
from gateway_procs import LISTENING, ROOT, start_gateway, wait_serving

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

BATCH = 16  # the default ALLXAI_EXPLAIN_MODEL_BATCH_SIZE: an explanation's batch (--batch)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def classify_loop(stub: pb_grpc.DiagnosisServiceStub, png: bytes, duration: float) -> list[float]:
    """Latencies (s) of Classify calls made one after another for ``duration`` seconds."""
    request = pb.ClassifyRequest(image=pb.Image(data=png))
    out: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        started = time.perf_counter()
        await stub.Classify(request, timeout=60)
        out.append(time.perf_counter() - started)
    return out


async def explain_forever(
    stub: pb_grpc.DiagnosisServiceStub, png: bytes, samples: int, running: asyncio.Event
) -> None:
    """StreamExplain calls back to back; ``running`` is set once the first has sent progress."""
    options = pb.ExplainOptions(num_samples=samples, seed=1)
    request = pb.StreamExplainRequest(request=pb.ExplainRequest(image=pb.Image(data=png), options=options))
    while True:
        async for _ in stub.StreamExplain(request, timeout=600):
            running.set()


async def explain_seconds(stub: pb_grpc.DiagnosisServiceStub, png: bytes, samples: int, busy: bool) -> float:
    """How long one explanation takes alone, or (``busy``) beside Classify calls made back to back: the
    price explanations pay for Classify's priority."""
    options = pb.ExplainOptions(num_samples=samples, seed=2)
    request = pb.ExplainRequest(image=pb.Image(data=png), options=options)
    stop = asyncio.Event()

    async def classify_until_stopped() -> None:
        classify = pb.ClassifyRequest(image=pb.Image(data=png))
        while not stop.is_set():
            await stub.Classify(classify, timeout=60)

    pressure = asyncio.create_task(classify_until_stopped()) if busy else None
    started = time.perf_counter()
    await stub.Explain(request, timeout=600)
    took = time.perf_counter() - started
    stop.set()
    if pressure is not None:
        await pressure
    return took


async def batch_seconds(stub: pb_grpc.DiagnosisServiceStub, png: bytes, size: int) -> float:
    """The model's time for one batch of ``BATCH`` images (the server's own figure), median of 5."""
    request = pb.ClassifySpecimenRequest(images=[pb.Image(data=png)] * size)
    times = [seconds((await stub.ClassifySpecimen(request, timeout=120)).timings.model) for _ in range(5)]
    return statistics.median(times)


async def run(target: str, args: argparse.Namespace) -> dict[str, list[float]]:
    png = cell_png()
    found: dict[str, list[float]] = {"idle": [], "loaded": [], "batch": [], "alone": [], "beside": []}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        await classify_loop(stub, png, 2.0)  # warm-up, not counted
        found["batch"].append(await batch_seconds(stub, png, args.batch))
        for round_ in range(args.rounds):
            found["idle"] += await classify_loop(stub, png, args.seconds)
            events = [asyncio.Event() for _ in range(args.explanations)]
            tasks = [asyncio.create_task(explain_forever(stub, png, args.samples, e)) for e in events]
            await asyncio.gather(*(e.wait() for e in events))
            found["loaded"] += await classify_loop(stub, png, args.seconds)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await task
            found["batch"].append(await batch_seconds(stub, png, args.batch))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
        found["alone"].append(await explain_seconds(stub, png, args.samples, busy=False))
        found["beside"].append(await explain_seconds(stub, png, args.samples, busy=True))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--explanations", type=int, default=2, help="explanations running while loaded")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=BATCH, help="ALLXAI_EXPLAIN_MODEL_BATCH_SIZE")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache" / "allnet224")
    args = parser.parse_args()
    base = ensure_model(args.cache)
    with tempfile.TemporaryDirectory() as logs:
        gateway = start_gateway(
            "gateway",
            base,
            Path(logs),
            {"ALLXAI_ENABLE_METRICS": "false", "ALLXAI_EXPLAIN_MODEL_BATCH_SIZE": str(args.batch)},
        )
        try:
            target = gateway.address(LISTENING)
            asyncio.run(wait_serving(target))
            print(
                f"Classify (concurrency 1) idle and beside {args.explanations} explanations of "
                f"{args.samples} samples; {args.rounds} rounds of {args.seconds:g} s each, alternated"
            )
            found = asyncio.run(run(target, args))
        finally:
            gateway.close()
    batch = statistics.median(found["batch"])
    print(f"one batch of {args.batch} images through the model: {batch * 1000:.0f} ms (median over the run)")
    print("| load | calls | Classify p50 | Classify p99 |")
    print("|---|---|---|---|")
    for phase in ("idle", "loaded"):
        lat = found[phase]
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        print(f"| {phase} | {len(lat)} | {p50:.1f} ms | {p99:.1f} ms |")
    alone, beside = found["alone"][0], found["beside"][0]
    print(
        f"one explanation of {args.samples} samples: {alone:.1f} s alone, {beside:.1f} s beside Classify "
        f"calls made back to back (ratio {beside / alone:.1f}: what Classify's priority costs explanations)"
    )
    idle99, load99 = percentile(found["idle"], 99), percentile(found["loaded"], 99)
    ok = load99 <= idle99 + batch
    print(
        f"{'PASS' if ok else 'FAIL'}: loaded p99 {load99 * 1000:.0f} ms <= idle p99 {idle99 * 1000:.0f} ms "
        f"+ one batch {batch * 1000:.0f} ms = {(idle99 + batch) * 1000:.0f} ms "
        f"(ratio loaded/idle p99 {load99 / idle99:.2f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
