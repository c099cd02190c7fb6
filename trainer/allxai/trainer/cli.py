"""``allxai train``: train a model on a folder-per-class dataset and export it for serving."""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, train, export, and print where the export went."""
    parser = argparse.ArgumentParser(prog="allxai train", description=__doc__)
    parser.add_argument("--data", type=Path, help="dataset root with one sub-folder per class")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="train on N synthetic cell images per class instead of --data",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="model base folder (default %(default)s)"
    )
    parser.add_argument("--name", default="allnet", help="model name (default %(default)s)")
    parser.add_argument("--version", type=int, default=1, help="model version (default %(default)s)")
    parser.add_argument("--arch", default="allnet")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--max-per-class", type=int, default=0, help="use at most N images per class (0: all)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--reports", type=Path, default=None, help="folder for curves, confusion matrix, card"
    )
    args = parser.parse_args(argv)
    if (args.data is None) == (args.synthetic == 0):
        parser.error("give exactly one of --data or --synthetic")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    from allxai.trainer.datasets import DatasetError  # noqa: PLC0415
    from allxai.trainer.train import TrainConfig, train  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="allxai-synthetic-") as tmp:
        data = args.data
        if args.synthetic:
            from allxai.trainer.synthetic import make_dataset  # noqa: PLC0415

            data = make_dataset(Path(tmp), args.synthetic, size=args.input_size, seed=args.seed)
        config = TrainConfig(
            data=data,
            out=args.out,
            name=args.name,
            version=args.version,
            arch=args.arch,
            input_size=args.input_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_per_class=args.max_per_class,
            seed=args.seed,
            reports=args.reports,
        )
        try:
            result = train(config)
        except (DatasetError, ValueError) as exc:
            parser.exit(2, f"allxai train: {exc}\n")
    print(
        f"exported {result.export_path}: test accuracy {result.test_accuracy:.1%} in {result.seconds:.0f} s"
    )
    return 0
