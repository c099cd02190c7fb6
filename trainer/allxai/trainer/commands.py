"""``allxai train | evaluate | export | compare | check-run``: the trainer's commands.

Each registers itself in the ``allxai.commands`` entry-point group (pyproject.toml), so the ``allxai``
command finds it when the ``train`` extra is installed. This module imports only the standard library at
import time: the heavy modules are imported by the command that runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _overrides(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def train_main(argv: Sequence[str]) -> int:
    """Train (and cross-validate) as a recipe says, write the reports, export the best model."""
    parser = argparse.ArgumentParser(prog="allxai train", description=train_main.__doc__)
    parser.add_argument("--config", type=Path, help="a TOML recipe, e.g. configs/paper2-allnet-cpu.toml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    parser.add_argument("--data", type=Path, help="dataset root (C-NMC, Aria, or one folder per class)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="N synthetic images per class")
    for flag, kind, what in (
        ("--out", Path, "base folder of the export: <out>/<name>/<version>"),
        ("--name", str, "model name in the export and the gateway"),
        ("--version", int, "model version number of the export"),
        ("--arch", str, "allnet, inceptionv3, resnet101v2, vgg19 or inceptionresnetv2"),
        ("--input-size", int, "square input size in pixels"),
        ("--epochs", int, "training epochs per fold"),
        ("--folds", int, "stratified folds of cross-validation (1: a single split)"),
        ("--max-per-class", int, "use at most this many images per class (a quick run)"),
        ("--reports", Path, "folder for the reports: metrics, curves, confusion matrices, model card"),
    ):
        parser.add_argument(flag, type=kind, default=None, help=f"{what} (default: the recipe's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    from allxai.trainer.config import ConfigError, load_config  # noqa: PLC0415
    from allxai.trainer.datasets import DatasetError  # noqa: PLC0415
    from allxai.trainer.export import ExportError  # noqa: PLC0415
    from allxai.trainer.train import run  # noqa: PLC0415

    values = {
        k: getattr(args, k)
        for k in (
            "out",
            "name",
            "version",
            "arch",
            "input_size",
            "epochs",
            "folds",
            "max_per_class",
            "reports",
            "data",
        )
    }
    with tempfile.TemporaryDirectory(prefix="allxai-synthetic-") as tmp:
        try:
            config = load_config(args.config, _overrides(args.set, parser), **values)
            if args.synthetic:
                from allxai.trainer.synthetic import make_dataset  # noqa: PLC0415

                # A cell recipe crops a part of each field: draw fields larger than its input.
                field = config.input_size * (2 if config.input == "cell" else 1)
                data = make_dataset(Path(tmp), args.synthetic, size=field, seed=config.seed)
                config = config.model_copy(update={"data": data, "layout": "folder"})
            result = run(config)
        except (ConfigError, DatasetError, ExportError, FileNotFoundError, ValueError) as exc:
            parser.exit(2, f"allxai train: {exc}\n")
    val = result.summary.get("accuracy", {})
    print(
        f"validation accuracy {val.get('mean', float('nan')):.1%} ± {val.get('sd', 0):.1%} over folds; "
        f"test accuracy {result.test['accuracy']:.1%}"
        if result.test
        else ""
    )
    print(f"reports in {config.reports}; export: {result.export_path}; {result.seconds:.0f} s")
    return 0


def evaluate_main(argv: Sequence[str]) -> int:
    """Evaluate an exported model (through its serving signature) on a dataset; write a report. With
    --ood, also measure its domain gate and its calls on folders of images from elsewhere."""
    parser = argparse.ArgumentParser(prog="allxai evaluate", description=evaluate_main.__doc__)
    parser.add_argument("--model", type=Path, required=True, help="an export: <base>/<name>/<version>")
    parser.add_argument("--data", type=Path, required=True, help="labelled in-domain images (the test set)")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "cnmc", "aria", "folder"],
        help="how the data is laid out (default: found from the folder)",
    )
    parser.add_argument(
        "--reports", type=Path, default=Path("reports/evaluate"), help="report folder (default %(default)s)"
    )
    parser.add_argument(
        "--card", type=Path, help="model card JSON, for a SavedModel that carries none of its own"
    )
    parser.add_argument(
        "--ood",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="development sets from outside the training domain: folders of images (any layout, read "
        "recursively, unlabelled); needs a model with a domain gate (e.g. the folders of "
        "scripts/domain_suite.py)",
    )
    parser.add_argument(
        "--card-out",
        type=Path,
        metavar="FILE",
        help="write a copy of the model card with the --ood figures under domain.figures.development_sets "
        "(the export is left as it is)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    from allxai.trainer.datasets import DatasetError  # noqa: PLC0415
    from allxai.trainer.evaluate import evaluate_export  # noqa: PLC0415
    from allxai.trainer.ood_eval import table  # noqa: PLC0415

    try:
        report = evaluate_export(
            args.model, args.data, args.layout, args.reports, args.card, args.ood, args.card_out
        )
    except (DatasetError, OSError, ValueError) as exc:
        parser.exit(2, f"allxai evaluate: {exc}\n")
    metrics = report["metrics"]
    domain = report.get("domain")
    if domain is not None:
        print(
            f"domain gate: {domain['in_domain']['flagged']:.1%} of the labelled images out of domain "
            f"(score > {domain['threshold']:.3f})"
        )
    if domain is not None and report.get("ood"):
        print(table(domain["in_domain"], report["ood"], report["class_names"]))
    if args.card_out is not None:
        print(f"model card with the development figures: {args.card_out}")
    print(
        f"accuracy {metrics['accuracy']:.1%}, macro F1 {metrics['macro_f1']:.3f} on {metrics['n']} images; "
        f"report in {args.reports}"
    )
    for line in skipped_lines(report.get("data", {})):
        print(line)
    return 0


def skipped_lines(data: dict[str, object]) -> list[str]:
    """What the evaluation left out of the folder, and why, in words (the report has the full lists)."""
    lines = []
    duplicates = data.get("duplicates_removed")
    if isinstance(duplicates, int) and duplicates:
        lines.append(
            f"left out {duplicates} byte-identical cop{'y' if duplicates == 1 else 'ies'} of other images "
            "(counted once)"
        )
    skipped = data.get("skipped")
    if isinstance(skipped, list) and skipped:
        reasons: dict[str, int] = {}
        for entry in skipped:
            why = str(entry[1]) if isinstance(entry, list | tuple) and len(entry) > 1 else "unknown"
            reasons[why] = reasons.get(why, 0) + 1
        said = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}: {said}")
    return lines


def export_main(argv: Sequence[str]) -> int:
    """Export a checkpoint (the weights a run saved) under the model contract."""
    parser = argparse.ArgumentParser(prog="allxai export", description=export_main.__doc__)
    parser.add_argument("--config", type=Path, help="the recipe the checkpoint was trained with")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field"
    )
    parser.add_argument("--weights", type=Path, required=True, help="e.g. reports/fold1/best.weights.h5")
    parser.add_argument(
        "--card", type=Path, help="model card JSON (default: model_card.json beside the reports)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        help="base folder: <out>/<name>/<version> (default %(default)s)",
    )
    parser.add_argument("--name", default=None, help="model name (default: the recipe's)")
    parser.add_argument("--version", type=int, required=True, help="model version number of the export")
    args = parser.parse_args(argv)

    from allxai.trainer.config import ConfigError, load_config  # noqa: PLC0415
    from allxai.trainer.export import ExportError, export_checkpoint  # noqa: PLC0415

    try:
        config = load_config(
            args.config, _overrides(args.set, parser), out=args.out, name=args.name, version=args.version
        )
        card_path = args.card or config.reports / "model_card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else None
        path = export_checkpoint(config, args.weights, card)
    except (ConfigError, ExportError, OSError, ValueError) as exc:
        parser.exit(2, f"allxai export: {exc}\n")
    print(f"exported {path}")
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """Compare runs (their report folders) in a table shaped like paper 2's table 6."""
    parser = argparse.ArgumentParser(prog="allxai compare", description=compare_main.__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="report folders written by allxai train")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/comparison"),
        help="folder for comparison.md/.csv/.json (default %(default)s)",
    )
    args = parser.parse_args(argv)

    from allxai.trainer.comparison import comparison_row, write_comparison  # noqa: PLC0415

    def row(run: Path) -> dict[str, object]:
        # A run checked by `allxai check-run` adds its figures; an unchecked one shows dashes there.
        check = run / "runcheck.json"
        return comparison_row(
            json.loads((run / "report.json").read_text()),
            json.loads(check.read_text()) if check.is_file() else None,
        )

    try:
        rows = [row(run) for run in args.runs]
    except (OSError, ValueError, KeyError) as exc:
        parser.exit(2, f"allxai compare: {exc}\n")
    written = write_comparison(rows, args.out)
    print((args.out / "comparison.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _shared(name: str) -> Path | None:
    """``../shared/data/<name>`` when it is there (the development sets beside the project)."""
    path = Path("..") / "shared" / "data" / name
    return path if path.is_dir() else None


def check_run_main(argv: Sequence[str]) -> int:
    """Check a trained run beyond accuracy: explanations and foreign normal cells.

    Where LIME puts the weight on held-out test images (white cell, background, corners), and what the
    export, with its domain gate, calls normal white cells from other laboratories (BCCD, wbc-seg)."""
    parser = argparse.ArgumentParser(prog="allxai check-run", description=check_run_main.__doc__)
    parser.add_argument(
        "run", type=Path, help="a report folder written by allxai train (report.json, split.json)"
    )
    parser.add_argument("--cells", type=int, default=40, help="test images to explain (stratified by class)")
    parser.add_argument(
        "--bccd",
        type=Path,
        default=_shared("bccd"),
        help="BCCD folder (default: ../shared/data/bccd if there)",
    )
    parser.add_argument(
        "--wbc-seg",
        type=Path,
        default=_shared("wbc-seg"),
        help="wbc-seg folder (default: ../shared/data/wbc-seg if there)",
    )
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per explanation")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the explanations (default 0)")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.samples < 2:
        parser.error("--cells must be at least 1 and --samples at least 2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    from allxai.trainer.runcheck import check_run, markdown  # noqa: PLC0415

    try:
        check = check_run(
            args.run,
            cells=args.cells,
            bccd=args.bccd,
            wbcseg=args.wbc_seg,
            seed=args.seed,
            num_samples=args.samples,
        )
    except (OSError, ValueError, KeyError) as exc:
        parser.exit(2, f"allxai check-run: {exc}\n")
    print(markdown(check))
    print(f"wrote runcheck.json, runcheck.md and the overlays into {args.run}")
    return 0
