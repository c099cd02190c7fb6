"""The demo: train a small model, serve it with the embedded backend, classify and explain, draw.

Trains the cell-centred ALL-Net recipe (configs/paper2-allnet-cell-cpu.toml: each white cell cut at one
scale, stain-normalised, the surround blanked) on the real Aria et al. images in ../shared/data when they
are there (a few hundred fields per class), otherwise on synthetic cell-like fields; exports it under the
model contract; starts the gateway as a real process; classifies and explains through the ``allxai``
command; writes every picture under ``--out``; stops the gateway with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "paper2-allnet-cell-cpu.toml"
ARIA = ROOT.parent / "shared" / "data" / "aria-all" / "Original"
#: Normal white cells from another laboratory (another microscope, magnification and stain).
FOREIGN = ROOT.parent / "shared" / "data" / "wbc-seg" / "dataset2" / "001.bmp"


def unlike_training(folder: Path) -> list[Path]:
    """Two images the model was not trained for: a photograph of a cat (scikit-image's), and a white cell
    from another laboratory (wbc-seg, where ../shared/data has it; else a cell drawn at another scale and
    stain). The gate flags the cat (no white cell); the cell model answers for the foreign cell."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from skimage import data  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    cat = folder / "cat-photograph.png"
    Image.fromarray(data.chelsea()).save(cat)
    if FOREIGN.is_file():
        return [cat, FOREIGN]
    from allxai.trainer.synthetic import make_cell_image  # noqa: PLC0415

    cell = make_cell_image(0, 64, np.random.default_rng(3))
    foreign = np.asarray(Image.fromarray(cell[..., ::-1]).resize((256, 256)))  # other stain, 4x magnified
    path = folder / "foreign-cell.png"
    Image.fromarray(foreign).save(path)
    return [cat, path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the gateway exited with code {process.returncode}; see its log")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"the gateway was not SERVING within {seconds:.0f} s")


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument(
        "--data", type=Path, default=ARIA, help="folder-per-class images (default: Aria Original)"
    )
    parser.add_argument("--per-class", type=int, default=300, help="images per class to train on")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=64)
    args = parser.parse_args()
    out: Path = args.out.resolve()
    models = out / "models"
    for owned in (models, out / "training", out / "explanations", out / "unlike"):  # fresh each run
        shutil.rmtree(owned, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    allxai = str(bin_dir / "allxai")

    started = time.monotonic()
    train = [
        allxai,
        "train",
        "--config",
        str(RECIPE),
        "--out",
        str(models),
        "--name",
        "allnet",
        "--version",
        "1",
        "--input-size",
        str(args.input_size),
        "--epochs",
        str(args.epochs),
        "--reports",
        str(out / "training"),
    ]
    if args.data.is_dir():
        print(f"== training ALL-Net on the white cells of real images from {args.data}", flush=True)
        train += ["--data", str(args.data), "--max-per-class", str(args.per_class)]
        samples = sorted(p for p in args.data.iterdir() if p.is_dir())
        images = [sorted(folder.iterdir())[len(list(folder.iterdir())) // 2] for folder in samples]
    else:
        print("== no real data found; training ALL-Net on the cells of synthetic fields", flush=True)
        train += ["--synthetic", str(args.per_class // 2)]
        from allxai.trainer.synthetic import CLASSES, make_dataset  # noqa: PLC0415

        sample_dir = make_dataset(out / "sample_images", 1, size=2 * args.input_size, seed=7)
        images = [next((sample_dir / c).iterdir()) for c in CLASSES]
    run(train)
    print(f"== trained and exported in {time.monotonic() - started:.0f} s", flush=True)

    port = free_port()
    metrics_port = free_port()
    target = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "ALLXAI_MODEL_BASE_PATH": str(models),
        "ALLXAI_PORT": str(port),
        "ALLXAI_HOST": "127.0.0.1",
        "ALLXAI_METRICS_PORT": str(metrics_port),
        "ALLXAI_AUDIT_PATH": str(out / "audit.jsonl"),
    }
    log_path = out / "gateway.log"
    print(f"== starting the gateway on {target} (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        gateway = subprocess.Popen([allxai, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(target, gateway, seconds=120)
            run([allxai, "classify", "--target", target, *map(str, images)])
            print(
                "== two images unlike the training data: the cat photograph says OUTSIDE THE TRAINING "
                "DOMAIN (no white cell); the normal white cell from another laboratory is cut, scaled and "
                "stain-normalised like the training cells and answered, often with a prediction set that "
                "includes Benign (docs/cells.md, 'Field against cell', says how often it is right)",
                flush=True,
            )
            run([allxai, "classify", "--target", target, *map(str, unlike_training(out / "unlike"))])
            run(
                [
                    allxai,
                    "explain",
                    "--target",
                    target,
                    str(images[-1]),
                    "--out",
                    str(out / "explanations"),
                    "--seed",
                    "42",
                ]
            )
            # What Prometheus would scrape after these calls; the audit trail is results/audit.jsonl.
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
                (out / "metrics.txt").write_bytes(reply.read())
        finally:
            gateway.send_signal(signal.SIGTERM)
            code = gateway.wait(timeout=60)
    print(f"== gateway stopped (exit code {code})", flush=True)
    print(f"== done in {time.monotonic() - started:.0f} s; pictures:", flush=True)
    for path in sorted(out.rglob("*.png")):
        print("  ", path.relative_to(out.parent) if path.is_relative_to(out.parent) else path)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
