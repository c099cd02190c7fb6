"""Explain benchmark: the whole gRPC path against lime's explain_instance, in the same run.

For ALL-Net at 224x224 and InceptionV3 at 299x299 (untrained weights: timing does not depend on
them) it measures, over the same SavedModel and image:
- the model floor: the embedded backend alone predicting the same number of images (samples + 1)
  at its best batch size;
- lime 0.2.0.1's ``explain_instance`` with its defaults (quickshift, 1,000 samples, batch 10)
  calling the SavedModel's serving signature directly;
- allxai's Explain through the gateway over gRPC, with the model composing the perturbed images
  (its ``compose`` signature) and with the gateway composing them;
- the bytes a TensorFlow Serving PredictRequest stream would carry per explanation in each mode.
Then, on real cells from ../shared/data with a trained ALL-Net, it checks adaptive sampling
against a 5,000-sample reference. Prints ratios; writes bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

import grpc
import numpy as np
import tensorflow as tf
from lime import lime_image
from PIL import Image
from tensorflow_serving.apis import predict_pb2

from allxai.contract.preprocessing import prepare_image
from allxai.explainer.engine import ExplainSettings, explain
from allxai.explainer.perturb import Composition
from allxai.server.app import Gateway
from allxai.server.backends.embedded import EmbeddedBackend
from allxai.server.settings import Settings as GatewaySettings
from allxai.trainer.export import export_model
from allxai.trainer.models import build_model
from allxai.trainer.synthetic import make_cell_image
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def export_untrained(arch: str, size: int, base: Path) -> None:
    model = build_model(arch, 4, (size, size), weights=None)
    card = {
        "class_names": ["Benign", "Early", "Pre", "Pro"],
        "input_size": [size, size],
        "architecture": arch,
    }
    export_model(model, base, arch, 1, card, np.zeros((2, size, size, 3), np.uint8))


def bench_image(size: int) -> np.ndarray:
    real = DATA / "aria-all" / "Original" / "Pro" / "WBC-Malignant-Pro-401.jpg"
    if real.is_file():
        return prepare_image(real.read_bytes(), (size, size))
    return make_cell_image(3, size, np.random.default_rng(0))


def model_floor(serve: Any, image: np.ndarray, count: int) -> tuple[float, int]:
    """Seconds for the serving signature alone to predict ``count`` images, at its best batch size."""
    best = (float("inf"), 0)
    for batch in (16, 32, 64, 128):
        images = np.repeat(image[None], batch, axis=0)
        serve(images=tf.constant(images))  # warm this batch size
        started = time.perf_counter()
        done = 0
        while done < count:
            n = min(batch, count - done)
            serve(images=tf.constant(images[:n]))
            done += n
        best = min(best, (time.perf_counter() - started, batch))
    return best


def lime_default(serve: Any, image: np.ndarray, seed: int) -> float:
    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(serve(images=tf.constant(batch.astype(np.uint8)))["probabilities"].numpy())

    started = time.perf_counter()
    lime_image.LimeImageExplainer(random_state=seed).explain_instance(
        image, classifier_fn, top_labels=1, num_samples=1000, random_seed=seed
    )
    return time.perf_counter() - started


def request_bytes(inputs: dict[str, np.ndarray], name: str, signature: str) -> int:
    """The size of the TensorFlow Serving PredictRequest that would carry ``inputs``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return int(request.ByteSize())


def wire_bytes(
    image: np.ndarray, samples: int, batch: int, compose_batch: int, n_segments: int, name: str
) -> dict[str, int]:
    """Bytes of the PredictRequests one explanation sends: whole images in batches, or the masks
    in requests of ``compose_batch`` with the image, fill and segments once per request."""
    h, w, _ = image.shape
    gateway = sum(
        request_bytes(
            {"images": np.zeros((min(batch, samples - i), h, w, 3), np.uint8)}, name, "serving_default"
        )
        for i in range(0, samples, batch)
    )
    model = sum(
        request_bytes(
            {
                "image": image,
                "fill": image,
                "segments": np.zeros((h, w), np.int32),
                "masks": np.zeros((min(compose_batch, samples - i), n_segments), np.uint8),
            },
            name,
            "compose",
        )
        for i in range(0, samples, compose_batch)
    )
    return {"gateway_composes": gateway, "model_composes": model}


class RunningGateway:
    """The real gateway with the embedded backend, on its own event loop in a thread."""

    def __init__(self, base: Path, batch: int) -> None:
        self.settings = GatewaySettings(
            model_base_path=base, host="127.0.0.1", port=0, predict_batch_size=batch
        )
        self._stop = threading.Event()
        ready: Future[int] = Future()

        def run() -> None:
            async def main() -> None:
                gateway = Gateway(self.settings, EmbeddedBackend(base, batch_size=batch, threads=2))
                await gateway.start()
                ready.set_result(gateway.port)
                await asyncio.to_thread(self._stop.wait)
                await gateway.stop(grace=1)

            asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self.target = f"127.0.0.1:{ready.result(timeout=300)}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def grpc_explain(
    target: str, png: bytes, seed: int, composition: int, samples: int = 1000
) -> tuple[float, Any]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        request = pb.ExplainRequest(
            image=pb.Image(data=png),
            options=pb.ExplainOptions(num_samples=samples, seed=seed, composition=composition),
        )
        started = time.perf_counter()
        reply = stub.Explain(request, timeout=600)
        return time.perf_counter() - started, reply


def png_of(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def bench_model(arch: str, size: int, repeats: int) -> dict[str, Any]:
    print(f"\n== {arch} at {size}x{size} (untrained weights)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export_untrained(arch, size, base)
        image = bench_image(size)
        serve = tf.saved_model.load(str(base / arch / "1")).signatures["serving_default"]
        floor, batch = model_floor(serve, image, 1001)
        print(f"model floor: {floor:.2f} s for 1,001 images at batch {batch} ({1001 / floor:.0f} images/s)")
        lime_seconds = lime_default(serve, image, seed=0)
        print(f"lime explain_instance, defaults: {lime_seconds:.2f} s")
        gateway = RunningGateway(base, batch)
        try:
            png = png_of(image)
            grpc_explain(gateway.target, png, 0, pb.COMPOSITION_MODEL, samples=64)  # warm the compose path
            grpc_explain(gateway.target, png, 0, pb.COMPOSITION_GATEWAY, samples=64)
            times: dict[str, list[float]] = {"model_composes": [], "gateway_composes": []}
            segments = 0
            for r in range(repeats):
                for mode, key in (
                    (pb.COMPOSITION_MODEL, "model_composes"),
                    (pb.COMPOSITION_GATEWAY, "gateway_composes"),
                ):
                    seconds, reply = grpc_explain(gateway.target, png, r, mode)
                    times[key].append(seconds)
                    segments = reply.explanation.num_segments
        finally:
            gateway.close()
    wire = wire_bytes(image, 1000, batch, 1000, segments, arch)
    out: dict[str, Any] = {
        "model": arch,
        "input": size,
        "floor_seconds": floor,
        "best_batch": batch,
        "lime_seconds": lime_seconds,
        "segments": segments,
        "bytes": wire,
    }
    for key, values in times.items():
        median = statistics.median(values)
        out[key] = {
            "seconds": median,
            "runs": values,
            "vs_lime": lime_seconds / median,
            "vs_floor": median / floor,
        }
        print(
            f"allxai Explain over gRPC, {key.replace('_', ' ')}: {median:.2f} s (median of {len(values)}) "
            f"= {lime_seconds / median:.1f}x faster than lime, {median / floor:.3f}x the model floor; "
            f"{wire[key] / 1e6:.2f} MB to the model server"
        )
    return out


def adaptive_check(model_dir: Path | None, cells: int) -> dict[str, Any] | None:
    """Adaptive sampling against a 5,000-sample reference on real cells, with a trained model."""
    originals = DATA / "aria-all" / "Original"
    if not originals.is_dir():
        print("\n(no ../shared/data: adaptive check skipped)")
        return None
    if model_dir is None or not (model_dir / "saved_model.pb").is_file():
        print("\n(no trained model: run `make demo` first, or pass --trained; adaptive check skipped)")
        return None
    loaded = tf.saved_model.load(str(model_dir))
    card = json.loads(loaded.signatures["model_card"]()["model_card"].numpy().decode())
    size = int(card["input_size"][0])
    serve, compose = loaded.signatures["serving_default"], loaded.signatures["compose"]

    class Local:
        has_composition = True

        async def predict(self, images: np.ndarray) -> np.ndarray:
            return np.asarray(serve(images=tf.constant(images))["probabilities"].numpy())

        async def predict_composed(self, composition: Composition) -> np.ndarray:
            out = compose(
                image=tf.constant(composition.image),
                fill=tf.constant(composition.fill),
                segments=tf.constant(composition.segments),
                masks=tf.constant(composition.masks),
            )
            return np.asarray(out["probabilities"].numpy())

    paths = []
    for folder in sorted(p for p in originals.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        paths += files[:: max(1, len(files) // (cells // 4))][: cells // 4]
    matches, used, overlaps, default_matches, self_matches = [], [], [], [], []
    for i, path in enumerate(paths):
        image = prepare_image(path.read_bytes(), (size, size))
        reference = asyncio.run(explain(image, Local(), ExplainSettings(num_samples=5000, seed=i)))
        label = reference.label_index
        adaptive = asyncio.run(
            explain(image, Local(), ExplainSettings(num_samples=1000, seed=i, adaptive=True), label=label)
        )
        default = asyncio.run(explain(image, Local(), ExplainSettings(num_samples=1000, seed=i), label=label))
        # A second reference from another seed: how often 5,000 samples agree with themselves bounds
        # what any method can reach against one reference.
        again = asyncio.run(
            explain(image, Local(), ExplainSettings(num_samples=5000, seed=i + 100_000), label=label)
        )
        truth = set(reference.top_segments)
        self_matches.append(set(again.top_segments) == truth)
        matches.append(set(adaptive.top_segments) == truth)
        default_matches.append(set(default.top_segments) == truth)
        overlaps.append(len(set(adaptive.top_segments) & truth) / max(1, len(truth)))
        used.append(adaptive.num_samples)
    rate = float(np.mean(matches))
    print(
        f"\n== adaptive sampling on {len(paths)} real Aria cells ({model_dir}, {size}x{size}):\n"
        f"same top-5 superpixels as a 5,000-sample reference for {rate:.0%} of cells, "
        f"with {np.mean(used):.0f} samples on average ({np.mean(used) / 1000:.0%} of the default 1,000; "
        f"max {max(used)})"
    )
    print(
        f"(for comparison: lime's default 1,000 samples of the same stream match the reference for "
        f"{np.mean(default_matches):.0%}; adaptive shares {np.mean(overlaps):.0%} of the reference's top 5 "
        "on average)"
    )
    print(
        f"(the ceiling: two 5,000-sample references with different seeds agree on the top 5 for "
        f"{np.mean(self_matches):.0%} of these cells)"
    )
    return {
        "cells": len(paths),
        "match_rate": rate,
        "mean_samples": float(np.mean(used)),
        "max_samples": max(used),
        "default_1000_match_rate": float(np.mean(default_matches)),
        "mean_top5_overlap": float(np.mean(overlaps)),
        "reference_self_agreement": float(np.mean(self_matches)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="allnet:224,inceptionv3:299")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trained", type=Path, default=ROOT / "results" / "models" / "allnet" / "1")
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "explain.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "models": [],
    }
    for item in args.models.split(","):
        arch, size = item.split(":")
        repeats = args.repeats if arch == "allnet" else 1
        results["models"].append(bench_model(arch, int(size), repeats))
    results["adaptive"] = adaptive_check(args.trained, args.cells)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
