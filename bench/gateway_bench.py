"""Gateway benchmark: what Classify through the gateway costs over calling the backend directly.

Target (issue "Production gateway"): at concurrency 1 and 16, the gateway's throughput is at least 90% of
the direct path's, and it adds at most 2 ms to the median latency.

What is compared, over the same untrained ALL-Net SavedModel at 224x224 and the same encoded 224x224 PNG:

- **direct**: in this process, on one asyncio loop, what the gateway itself must do for one Classify and
  nothing more: ``prepare_image`` (decode + resize, on a worker thread as the gateway does) then
  ``EmbeddedBackend.predict`` of the one image (built by ``make_backend`` from default settings: batch 64,
  2 model threads);
- **gateway**: the real gateway, ``python -m allxai.server`` in its own process with default settings
  (interceptors, metrics on a free port, health, reflection, INFO log lines to a file) and the audit trail
  off, called over loopback by a ``grpc.aio`` client in this process;
- **gateway+audit**: the same with ``ALLXAI_AUDIT_PATH`` set and ``fsync`` always (the production setting);
- **grpc floor**: ``bench/grpc_floor.py``, a grpc.aio server in its own process whose Classify returns an
  empty answer at once, called the same way: what any Python gRPC hop costs before doing any work. From it
  the run prints the best ratio a gateway that did nothing could reach at concurrency 1 (direct's median
  over direct's plus the floor's);
- with ``--tfserving`` (on by default; ``--no-tfserving`` to skip): the TensorFlow Serving path, with
  ``tests/support/tfserving_fake.py`` (TensorFlow Serving's real gRPC protocol over the real SavedModel) as
  the model server: **tfs direct** is decode + one ``PredictRequest`` from this process with the
  tensorflow-serving-api stub, **tfs gateway** is Classify through a gateway with ``backend=tfserving``.

Each point is a closed loop of N asyncio tasks (N = 1, 16) for a fixed time, after a warm-up that is not
counted; the modes alternate within each round and the order reverses every round (A B / B A), so load from
other processes on the shared cores falls on both sides. The gateway's figures include the client's own
CPU (it shares the same cores): on separate machines the gateway would look slightly better, not worse.
Prints throughput, median and p99 per mode, their ratios and differences against direct measured in the same
run (PASS/FAIL on the medians over rounds of the same-round comparisons), the CPU time per call of every
process involved (far steadier than wall time when other work shares the cores, and what bounds throughput
once they are saturated), the gateway's own stage times, and writes bench/results/gateway.json. About
3 minutes on 2 cores; ``--quick`` about 40 s. The untrained model is cached under bench/results/cache.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
from gateway_measure import MEDIAN_TARGET_MS, THROUGHPUT_TARGET, Call, Mode, measure, report
from gateway_procs import LISTENING, ROOT, Child, start_gateway, wait_serving
from PIL import Image

from allxai.contract.preprocessing import prepare_image
from allxai.server.app import make_backend
from allxai.server.backends.base import ModelSpec
from allxai.server.settings import Settings
from allxai.trainer.synthetic import make_cell_image
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

SIZE = 224
MODEL = "allnet"
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
AUDIT_ALWAYS = {"ALLXAI_AUDIT_FSYNC": "always"}


# --- inputs ------------------------------------------------------------------------------------------


def ensure_model(cache: Path) -> Path:
    """An untrained ALL-Net at 224 under ``cache/allnet/1`` (timing does not depend on the weights)."""
    if (cache / MODEL / "1" / "saved_model.pb").is_file():
        return cache
    # TensorFlow only when the model must be built: the export is the one heavy step.
    from allxai.trainer.export import export_model  # noqa: PLC0415
    from allxai.trainer.models import build_model  # noqa: PLC0415

    print(f"exporting an untrained ALL-Net {SIZE}x{SIZE} to {cache} ...", flush=True)
    model = build_model(MODEL, 4, (SIZE, SIZE), weights=None)
    card = {
        "class_names": ["Benign", "Early", "Pre", "Pro"],
        "input_size": [SIZE, SIZE],
        "architecture": MODEL,
    }
    export_model(model, cache, MODEL, 1, card, np.zeros((2, SIZE, SIZE, 3), np.uint8))
    return cache


def cell_png() -> bytes:
    """One synthetic 224x224 cell as PNG: the gateway's resize is then a no-op, as for Aria's images."""
    buffer = io.BytesIO()
    Image.fromarray(make_cell_image(3, SIZE, np.random.default_rng(0))).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the modes -------------------------------------------------------------------------------------------


async def direct_embedded(base: Path, png: bytes) -> tuple[Call, Any]:
    """Decode + EmbeddedBackend.predict, built exactly as the gateway builds its backend."""
    backend = make_backend(Settings(model_base_path=base))
    await backend.start()
    info = await backend.resolve(ModelSpec())

    async def call() -> None:
        image = await asyncio.to_thread(prepare_image, png, info.input_size)
        await backend.predict(info, image[None], None)

    return call, backend


def seconds(duration: Any) -> float:
    """A protobuf Duration in seconds."""
    return float(duration.ToNanoseconds()) / 1e9


def classify_call(channel: grpc.aio.Channel, png: bytes) -> Call:
    stub = pb_grpc.DiagnosisServiceStub(channel)
    request = pb.ClassifyRequest(image=pb.Image(data=png))

    async def call() -> tuple[float, float, float]:
        t = (await stub.Classify(request, timeout=30)).timings
        return seconds(t.preprocess), seconds(t.model), seconds(t.total)

    return call


def nothing_call(channel: grpc.aio.Channel, png: bytes) -> Call:
    """Classify against the gRPC floor server: the request travels, nothing is done with it."""
    stub = pb_grpc.DiagnosisServiceStub(channel)
    request = pb.ClassifyRequest(image=pb.Image(data=png))

    async def call() -> None:
        await stub.Classify(request, timeout=30)

    return call


def floor_bound(group: list[Mode], levels: list[int]) -> dict[str, float] | None:
    """At concurrency 1 a call is serial: a gateway that did nothing at all would still add the floor's
    median, so direct / (direct + floor) bounds the throughput ratio any Python gRPC gateway can reach."""
    if 1 not in levels:
        return None
    by_name = {m.name: m.summary(1) for m in group}
    direct, floor = by_name["direct"]["median_ms"], by_name["grpc floor"]["median_ms"]
    bound = direct / (direct + floor)
    print(
        f"\ngRPC floor at concurrency 1: an empty Classify costs {floor:.2f} ms (median), against direct's "
        f"{direct:.2f} ms; a gateway that did nothing could reach a throughput ratio of at most "
        f"{bound:.3f} (target {THROUGHPUT_TARGET:.2f})"
    )
    return {"floor_median_ms": floor, "direct_median_ms": direct, "best_ratio_at_concurrency_1": bound}


def direct_tfserving(channel: grpc.aio.Channel, png: bytes) -> Call:
    """Decode + one PredictRequest to the model server, made the way the gateway's backend makes it."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    async def call() -> None:
        image = await asyncio.to_thread(prepare_image, png, (SIZE, SIZE))
        request = predict_pb2.PredictRequest(output_filter=["probabilities"])
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None]))
        response = await stub.Predict(request, timeout=30)
        tf.make_ndarray(response.outputs["probabilities"])  # as the backend reads it

    return call


# --- running -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, base: Path, png: bytes, work: Path) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    audit_path = work / "audit.jsonl"
    children = [
        start_gateway("gateway", base, work, {}),
        start_gateway("gateway-audit", base, work, {"ALLXAI_AUDIT_PATH": str(audit_path)} | AUDIT_ALWAYS),
        Child("grpc-floor", [sys.executable, str(ROOT / "bench" / "grpc_floor.py")], dict(os.environ), work),
    ]
    results: dict[str, Any] = {}
    try:
        # The direct backend loads while the gateways start (in parallel: start-up is not measured).
        direct, backend = await direct_embedded(base, png)
        targets = [c.address(LISTENING) for c in children]
        for target in targets[:2]:  # the floor server has no health service: bound is ready
            await wait_serving(target)
        channels = [grpc.aio.insecure_channel(t, options=GRPC_OPTIONS) for t in targets]
        client = {"client": os.getpid()}
        group = [
            Mode("direct", direct, "", {"bench": os.getpid()}),
            Mode("gateway", classify_call(channels[0], png), "direct", client | {"gateway": children[0].pid}),
            Mode(
                "gateway+audit",
                classify_call(channels[1], png),
                "direct",
                client | {"gateway": children[1].pid},
            ),
            Mode("grpc floor", nothing_call(channels[2], png), "", client | {"floor": children[2].pid}),
        ]
        print(f"\n== embedded backend: {', '.join(m.name for m in group)}", flush=True)
        await measure(group, levels, args.rounds, args.warmup, args.seconds)
        for channel in channels:
            await channel.close(None)
        await backend.close()
        for child in children:
            child.close()
        children = []
        print()
        results["embedded"] = report(group, levels)
        results["floor"] = floor_bound(group, levels)
        results["audit_records"] = sum(1 for _ in audit_path.open()) if audit_path.exists() else 0

        if args.tfserving:
            results["tfserving"] = await run_tfserving(args, base, png, work, levels)
    finally:
        for child in children:
            child.close()
    return results


async def run_tfserving(
    args: argparse.Namespace, base: Path, png: bytes, work: Path, levels: list[int]
) -> list[dict[str, Any]]:
    fake = Child(
        "tfserving-fake",
        [sys.executable, "-m", "tests.support.tfserving_fake", "--base", str(base)],
        {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        work,
    )
    children = [fake]
    try:
        fake_target = fake.address(r"READY (\d+)")
        gateway = start_gateway(
            "gateway-tfserving",
            base,
            work,
            {
                "ALLXAI_BACKEND": "tfserving",
                "ALLXAI_TFSERVING_TARGET": fake_target,
                "ALLXAI_TFSERVING_MODELS": json.dumps([MODEL]),
            },
        )
        children.append(gateway)
        target = gateway.address(LISTENING)
        await wait_serving(target)
        direct_channel = grpc.aio.insecure_channel(fake_target, options=GRPC_OPTIONS)
        channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        group = [
            Mode(
                "tfs direct",
                direct_tfserving(direct_channel, png),
                "",
                {"bench": os.getpid(), "model server": fake.pid},
            ),
            Mode(
                "tfs gateway",
                classify_call(channel, png),
                "tfs direct",
                {"client": os.getpid(), "gateway": gateway.pid, "model server": fake.pid},
            ),
        ]
        print(
            "\n== TensorFlow Serving backend (tests/support/tfserving_fake.py):",
            ", ".join(m.name for m in group),
        )
        await measure(group, levels, args.rounds, args.warmup, args.seconds)
        await direct_channel.close(None)
        await channel.close(None)
        print()
        return report(group, levels)
    finally:
        for child in reversed(children):
            child.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 s per point")
    # Many short rounds rather than a few long ones: bursts of load from other processes then fall on
    # both sides of many pairs instead of on one side of a few.
    parser.add_argument("--rounds", type=int, default=6, help="rounds per point (each runs every mode once)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per mode per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="uncounted seconds before each window")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--tfserving", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache" / "allnet224")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.3
    started = time.perf_counter()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} at start; "
        f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}\n"
        f"config: ALL-Net {SIZE}x{SIZE} untrained, one {SIZE}x{SIZE} PNG; "
        f"concurrency {args.concurrency}; {args.rounds} rounds x {args.seconds:g} s per mode "
        f"(+{args.warmup:g} s warm-up), order reversed every round; gateway settings: defaults, "
        "metrics on a free port, audit off (gateway) or fsync always (gateway+audit)",
        flush=True,
    )
    base = ensure_model(args.cache)
    png = cell_png()
    with tempfile.TemporaryDirectory(prefix="allxai-gwbench-") as tmp:
        results = asyncio.run(run(args, base, png, Path(tmp)))
    out = {
        "machine": {"cores": os.cpu_count(), "load_average_at_start": load[0]},
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "config": {
            "model": f"{MODEL} {SIZE}x{SIZE} untrained",
            "image_png_bytes": len(png),
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "targets": {"throughput_ratio_min": THROUGHPUT_TARGET, "median_added_ms_max": MEDIAN_TARGET_MS},
        },
        **results,
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{time.perf_counter() - started:.0f} s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
